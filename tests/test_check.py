"""``twistd tunnelgw --check``: everything a start checks, every problem in one pass, the examples with and without extras."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from support import REPO, GatewayProcess, RedisServer, free_port, free_ports, subprocess_env, twistd_command
from tunnelgw.core.config import ConfigError
from tunnelgw.service import load_config

#: A sitecustomize that makes ``import redis`` fail as it does where the pool extra is not installed.
NO_REDIS = '''
import sys

class _NoRedis:
    """Refuses redis as a missing package."""

    def find_spec(self, name, path=None, target=None):
        if name == "redis" or name.startswith("redis."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoRedis())
'''

#: The gateway configurations of examples/ (the other files there are front proxies, units and data).
EXAMPLE_CONFIGS = sorted([REPO / "examples/tunnelgw.conf", *(REPO / "examples/topologies").glob("*.conf")])


def run_env(tmp_path: Path, redis: bool) -> dict[str, str]:
    """subprocess_env, with redis made impossible to import unless redis is True."""
    env = subprocess_env()
    if not redis:
        blocker = tmp_path / "no-redis"
        blocker.mkdir(exist_ok=True)
        (blocker / "sitecustomize.py").write_text(NO_REDIS)
        env["PYTHONPATH"] = f"{blocker}:{env['PYTHONPATH']}"
    return env


def check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``twistd tunnelgw --config config --check`` from the repository root."""
    return subprocess.run(twistd_command("-n", "tunnelgw", "--config", str(config), "--check"), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_blocker_stands_for_a_missing_package(tmp_path: Path) -> None:
    """The sitecustomize used below really makes ``import redis`` fail in a child process (and only there)."""
    probe = ["-c", "import redis"]
    import sys

    assert subprocess.run([sys.executable, *probe], env=run_env(tmp_path, redis=True)).returncode == 0
    out = subprocess.run([sys.executable, *probe], env=run_env(tmp_path, redis=False), capture_output=True, text=True)
    assert out.returncode == 1 and "No module named 'redis'" in out.stderr


@pytest.mark.parametrize("config", EXAMPLE_CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("redis", [True, False], ids=["with-pool-extra", "without-pool-extra"])
def test_every_example_checks_or_names_the_extra(config: Path, redis: bool, tmp_path: Path) -> None:
    """Each example config passes --check; without redis, exactly the lines that need it name the extra."""
    out = check(config, run_env(tmp_path, redis))
    text = config.read_text()
    needs = [n for n, line in enumerate(text.splitlines(), 1)
             if re.match(r"\s*(Pool|OwnerSource)\s|\s*TokenSource\s+\S+\s+redis\s", line, re.I)]
    if redis or not needs:
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().endswith("configuration OK"), out.stdout
        assert "Traceback" not in out.stderr
        return
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert [int(l.split(":")[1]) for l in lines] == needs, lines
    assert all("needs the Python package 'redis'" in l and "pip install 'tunnelgw[pool]'" in l for l in lines)
    # The file itself says which extra it needs, in its first lines.
    assert "pip install '.[pool]'" in "\n".join(text.splitlines()[:5]) or config.name != "tunnelgw.conf"


def example_copy(tmp_path: Path, redis_port: int) -> str:
    """examples/tunnelgw.conf with free ports for its fixed ones and absolute paths for its relative ones."""
    text = (REPO / "examples/tunnelgw.conf").read_text()
    for fixed, port in zip(("8080", "8081", "9090"), free_ports(3)):
        text = re.sub(rf"\b{fixed}\b", str(port), text)
    text = text.replace(" examples/", f" {REPO}/examples/").replace(":6379/", f":{redis_port}/")
    # The recordings' folder does not exist yet: the start makes it (as it makes /var/tmp/tunnelgw-recordings).
    folder = tmp_path / "recordings"
    return text.replace("/var/tmp/tunnelgw-recordings ", f"{folder} ")


def test_main_example_starts_with_the_extra(tmp_path: Path) -> None:
    """examples/tunnelgw.conf (its ports moved to free ones) starts and echoes, with a real Redis for its pool."""
    from support import session_status

    redis = RedisServer(tmp_path / "redis").start()
    try:
        with GatewayProcess(example_copy(tmp_path, redis.port), tmp_path) as gw:
            assert session_status(f"ws://127.0.0.1:{gw.port(0)}/echo") == 101
            assert "Traceback" not in gw.log()
            assert ((tmp_path / "recordings").stat().st_mode & 0o777) == 0o700  # made by the start
    finally:
        redis.stop()


def test_main_example_without_the_extra_names_it_at_start(tmp_path: Path) -> None:
    """Without the redis package, a start of examples/tunnelgw.conf exits 1 naming the extra, no traceback."""
    conf = tmp_path / "gw.conf"
    conf.write_text(example_copy(tmp_path, free_port()))
    out = subprocess.run(twistd_command("-n", "--pidfile=", "tunnelgw", "--config", str(conf)), cwd=tmp_path,
                         env=run_env(tmp_path, redis=False), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out
    assert "Traceback" not in out.stdout + out.stderr
    assert re.search(r"gw\.conf:\d+: Pool needs the Python package 'redis', which is not installed: "
                     r"pip install 'tunnelgw\[pool\]'", out.stderr), out.stderr


MIXED = """\
Listen tcp:port=18080:interface=127.0.0.1
ProxyPass /a tcp:hst=127.0.0.1:port=5900
Lisen tcp:port=1
Alias /files {tmp}/no-such-folder
Limit sessions=abc
ProxyPass /b tcp:host=127.0.0.1:port=5901 auth=nope
Recording {tmp}/no-parent/recordings
AccessLog {tmp}/no-folder/access.log
"""


def test_mixed_problems_come_in_one_pass_in_line_order(tmp_path: Path) -> None:
    """Syntax and semantic problems (bad endpoint, missing folders) are all reported at once, in line order, with hints."""
    conf = tmp_path / "mixed.conf"
    conf.write_text(MIXED.format(tmp=tmp_path))
    with pytest.raises(ConfigError) as caught:
        load_config(str(conf), MemoryReactorClock(), without_sockets=True)
    lines = str(caught.value).splitlines()
    assert [int(l.split(":")[1]) for l in lines] == [2, 3, 4, 5, 6, 7, 8], lines
    assert "unknown parameter 'hst' (expected tcp:host=HOST:port=PORT" in lines[0]
    assert "unknown directive 'Lisen' (did you mean Listen?" in lines[1]
    assert "Alias folder" in lines[2] and "not an existing folder" in lines[2]
    assert "sessions must be a whole number" in lines[3]
    assert "no AuthPortal named 'nope'" in lines[4]
    assert "Recording folder" in lines[5]
    assert "AccessLog: the folder" in lines[6] and "does not exist" in lines[6]
    # The command line says the same, in the same order.
    out = check(conf, subprocess_env())
    assert out.returncode == 1 and out.stderr.strip().splitlines() == lines


def test_tls_backend_strings_checked_with_their_files(tmp_path: Path) -> None:
    """tls: backends: bad parameters, a missing trustRoots folder and an unreadable client certificate, each at its line."""
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    conf = tmp_path / "tls.conf"
    conf.write_text("Listen tcp:port=18080:interface=127.0.0.1\n"
                    "ProxyPass /a tls:desk.example:5901\n"
                    "ProxyPass /b tls:desk.example:5901:hst=1\n"
                    f"ProxyPass /c tls:desk.example:5901:trustRoots={tmp_path}/none\n"
                    f"ProxyPass /d tls:desk.example:5901:trustRoots={roots}\n"
                    f"ProxyPass /e tls:desk.example:5901:certificate={tmp_path}/gw.pem\n"
                    "ProxyPass /f tls:desk.example\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(conf), MemoryReactorClock(), without_sockets=True)
    lines = str(caught.value).splitlines()
    assert [int(l.split(":")[1]) for l in lines] == [3, 4, 5, 6, 7], lines
    assert "unknown parameter 'hst'" in lines[0] and "expected tls:HOST:PORT" in lines[0]
    assert "cannot read trustRoots folder" in lines[1] and "No such file" in lines[1]
    assert "bad.pem" in lines[2] and "bad certificate" in lines[2]
    assert "cannot read certificate" in lines[3] and "gw.pem" in lines[3]
    assert "missing parameter 'port'" in lines[4]


def test_unreachable_redis_is_a_warning(tmp_path: Path) -> None:
    """--check warns (exit 0) for a Redis server that refuses, naming its line."""
    port = free_port()
    conf = tmp_path / "pool.conf"
    conf.write_text(f"Listen tcp:port=1:interface=127.0.0.1\nGatewayURL ws://127.0.0.1:1\n"
                    f"Pool redis://127.0.0.1:{port}/0 name=gw1\n")
    out = check(conf, subprocess_env())
    assert out.returncode == 0, out.stderr
    assert re.search(rf"pool\.conf:3: warning: Pool: Redis at 127\.0\.0\.1:{port} is not reachable", out.stderr)


@pytest.mark.parametrize("config", [c for c in EXAMPLE_CONFIGS if c.name != "tunnelgw.conf"], ids=lambda p: p.name)
def test_every_other_example_starts(config: Path, tmp_path: Path) -> None:
    """Each topology example starts as written (its fixed ports moved to free ones, its files found from the checkout)."""
    text = config.read_text()
    fixed = sorted(set(re.findall(r"port=(\d+)", text)))
    for port, free in zip(fixed, free_ports(len(fixed))):
        text = re.sub(rf"\b{port}\b", str(free), text)
    text = text.replace(" examples/", f" {REPO}/examples/")
    with GatewayProcess(text, tmp_path) as gw:
        assert len(gw.ports) == len(re.findall(r"^(Listen|DemoBackend) ", text, re.M))
        assert "Traceback" not in gw.log()
