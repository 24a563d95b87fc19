"""The newcomer's paths: the embedded default, the example config, the embedding example."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.sync.client import connect

from support import REPO, GatewayProcess, subprocess_env, twistd_command, wait_until


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def readme_text_example() -> str:
    """README's one-line WebSocket client for the embedded default's echo route."""
    import re

    match = re.search(r"^    (python -c .*ws://127\.0\.0\.1:8080/echo.*)$", (REPO / "README.rst").read_text(), re.M)
    assert match, "README shows a one-line client for ws://127.0.0.1:8080/echo"
    return match.group(1)


def test_embedded_default_works(tmp_path: Path) -> None:
    """`twistd -n tunnelgw` with no config serves the demo page and relays ws://127.0.0.1:8080/echo, README's example included."""
    import fcntl

    # Shared with tests/test_release.py's README test (and other checkouts): both need 8080.
    lock = open("/tmp/tunnelgw-default-ports.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    assert port_free(8080) and port_free(8081), "the embedded default needs loopback ports 8080 and 8081 free"
    log = open(tmp_path / "default.log", "wb")
    proc = subprocess.Popen(twistd_command("-n", "--pidfile=", "tunnelgw"), stdout=log, stderr=subprocess.STDOUT,
                            env=subprocess_env(), cwd=tmp_path)
    try:
        assert wait_until(lambda: "port=8081))" in (tmp_path / "default.log").read_text(), 20), \
            (tmp_path / "default.log").read_text()
        import urllib.request

        page = urllib.request.urlopen("http://127.0.0.1:8080/", timeout=5).read().decode()
        assert "tunnelgw demo" in page and '"/echo"' in page
        with connect("ws://127.0.0.1:8080/echo", subprotocols=["binary"], open_timeout=5) as ws:
            ws.send(b"hello, desktop")
            assert ws.recv(timeout=5) == b"hello, desktop"
        # README's command-line example, run as written, shows the typed text as text.
        env = subprocess_env()  # `python` is this interpreter, as in README's activated venv
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
        out = subprocess.run(["bash", "-c", readme_text_example()], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=60)
        assert out.returncode == 0 and out.stdout == "hello, desktop\n" and not out.stderr, out.stdout + out.stderr
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
        lock.close()


def test_example_config_starts_and_relays(tmp_path: Path) -> None:
    """examples/tunnelgw.conf is valid and its echo route relays (its ports moved to free ones)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        echo_port = s.getsockname()[1]
    text = (REPO / "examples" / "tunnelgw.conf").read_text()
    assert text.count("8081") == 3  # the comment, DemoBackend and ProxyPass
    text = (text.replace("tcp:port=8080:", "tcp:port=0:").replace("tcp:port=9090:", "tcp:port=0:")
            .replace("8081", str(echo_port)).replace("examples/topologies/", f"{REPO}/examples/topologies/")
            .replace("/var/tmp/tunnelgw-recordings ", f"{tmp_path / 'recordings'} "))
    with GatewayProcess(text, tmp_path) as gw:
        with connect(f"ws://127.0.0.1:{gw.port()}/echo", open_timeout=5) as ws:
            ws.send(b"example")
            assert ws.recv(timeout=5) == b"example"


def test_embedding_example(tmp_path: Path) -> None:
    """examples/embed.py serves its own page and relays sessions through the mounted gateway resource."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "embed.log", "wb")
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "embed.py"), str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env=subprocess_env(), cwd=tmp_path)
    try:
        assert wait_until(lambda: "application listening" in (tmp_path / "embed.log").read_text(), 20)
        import urllib.request

        assert b"My application" in urllib.request.urlopen(f"http://127.0.0.1:{port}/?token=embedSECRET1",
                                                           timeout=5).read()
        with connect(f"ws://127.0.0.1:{port}/desktops/echo", open_timeout=5) as ws:
            ws.send(b"embedded")
            assert ws.recv(timeout=5) == b"embedded"
        import urllib.error

        with pytest.raises(urllib.error.HTTPError):  # 426: a plain request on the WebSocket path
            urllib.request.urlopen(f"http://127.0.0.1:{port}/desktops/echo?token=embedSECRET2", timeout=5)
        # The application's access lines go through the gateway's redaction (its own page's too).
        assert wait_until(lambda: (tmp_path / "embed.log").read_text().count("GET /") >= 2, 10)
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
    text = (tmp_path / "embed.log").read_text()
    assert "embedSECRET" not in text and "GET /desktops/echo?token=tok:" in text, text


def test_startup_heap_is_frozen_once_the_reactor_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """twistd tunnelgw collects and freezes what start-up made, once the reactor runs (after every listener)."""
    import gc

    from twisted.internet import reactor

    from tunnelgw import tap

    triggers: list[tuple[str, str, object]] = []
    monkeypatch.setattr(reactor, "addSystemEventTrigger",
                        lambda phase, event, f, *args: triggers.append((phase, event, f)))
    options = tap.Options()
    options.parseOptions([])
    tap.makeService(options)
    assert ("after", "startup", tap.freeze_startup_heap) in triggers
    try:
        tap.freeze_startup_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
