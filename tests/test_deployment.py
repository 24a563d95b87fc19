"""An operator's first deployment: signals, twistd logging, --check with systemd, units, metrics."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from support import REPO, GatewayProcess, require_tool, subprocess_env, twistd_command, wait_until

def _echo_config(tmp: Path, extra: str = "") -> str:
    """A gateway with the built-in echo service on a free port, routed at /echo."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return (f"Listen tcp:port=0:interface=127.0.0.1\nDemoBackend echo tcp:port={port}:interface=127.0.0.1\n"
            f"ProxyPass /echo tcp:host=127.0.0.1:port={port}\n{extra}")


def test_second_sigint_closes_sessions_with_1001(tmp_path: Path) -> None:
    """The first Ctrl-C drains and says how to force; the second closes the session with 1001 and exits 0."""
    gw = GatewayProcess(_echo_config(tmp_path, "ShutdownTimeout 60\n"), tmp_path).start()
    try:
        with connect(f"ws://127.0.0.1:{gw.port()}/echo", open_timeout=5) as ws:
            ws.send(b"held")
            assert ws.recv(timeout=5) == b"held"
            gw.proc.send_signal(signal.SIGINT)  # type: ignore[union-attr]
            gw.wait_log(r"press Ctrl-C again")
            gw.wait_log(r"draining 1 session")
            ws.send(b"still")
            assert ws.recv(timeout=5) == b"still"  # the drain lets the session run
            gw.proc.send_signal(signal.SIGINT)  # type: ignore[union-attr]
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            assert ws.close_code == 1001
        assert gw.proc.wait(15) == 0  # type: ignore[union-attr]
    finally:
        gw.stop()
    assert "ReactorNotRunning" not in gw.log() and "Traceback" not in gw.log(), gw.log()


def test_json_log_honours_logfile(tmp_path: Path) -> None:
    """With LogFormat json, twistd --logfile receives JSON lines, and no 'Starting factory' reprs."""
    logfile = tmp_path / "gw-json.log"
    config = tmp_path / "gw.conf"
    config.write_text(_echo_config(tmp_path, "LogFormat json\nShutdownTimeout 1\n"))
    out = open(tmp_path / "stdout.log", "wb")
    proc = subprocess.Popen(twistd_command("-n", "--pidfile=", "--logfile", str(logfile), "tunnelgw",
                                           "--config", str(config)),
                            stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=tmp_path)
    try:
        assert wait_until(lambda: logfile.exists() and logfile.read_text().count("listening on") >= 2, 20), \
            (logfile.read_text() if logfile.exists() else "") + (tmp_path / "stdout.log").read_text()
        port = int(re.search(r"gw.conf:1: listening on .* port=(\d+)\)", logfile.read_text()).group(1))
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=5) as ws:
            ws.send(b"x")
            assert ws.recv(timeout=5) == b"x"
        assert wait_until(lambda: "session end" in logfile.read_text(), 10)
    finally:
        proc.terminate()
        proc.wait(15)
        out.close()
    lines = [line for line in logfile.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert any(r.get("close_code") for r in records if "session end" in r["message"])
    assert not any("Starting factory" in r["message"] or " at 0x" in r["message"] for r in records), lines
    assert (tmp_path / "stdout.log").read_text().strip() == ""


def _run_check(tmp: Path, config: str) -> subprocess.CompletedProcess[str]:
    path = tmp / "check.conf"
    path.write_text(config)
    env = subprocess_env()
    env.pop("LISTEN_FDS", None)
    env.pop("LISTEN_PID", None)
    return subprocess.run(twistd_command("tunnelgw", "--config", str(path), "--check"), capture_output=True,
                          text=True, env=env, timeout=60, cwd=tmp)


def test_check_accepts_socket_activated_listener(tmp_path: Path) -> None:
    """--check passes `Listen systemd:domain=INET:index=0` with no inherited sockets, and rejects a bad one."""
    ok = _run_check(tmp_path, "Listen systemd:domain=INET:index=0\nProxyPass /x tcp:host=127.0.0.1:port=5901\n")
    assert ok.returncode == 0 and "configuration OK" in ok.stdout, ok.stdout + ok.stderr
    bad = _run_check(tmp_path, "Listen systemd:domain=BOGUS:index=0\nProxyPass /x tcp:host=127.0.0.1:port=5901\n")
    assert bad.returncode == 1 and "check.conf:1:" in bad.stderr and "BOGUS" in bad.stderr, bad.stderr


def test_systemd_units_verify(tmp_path: Path) -> None:
    """examples/systemd units pass systemd-analyze verify (twistd path pointed at this machine's)."""
    analyze = require_tool("systemd-analyze")
    twistd = shutil.which("twistd")
    assert twistd, "twistd is on PATH when tunnelgw is installed"
    service = (REPO / "examples/systemd/tunnelgw.service").read_text()
    assert "ExecStart=/opt/tunnelgw/bin/twistd" in service and "ExecReload=/bin/kill -HUP $MAINPID" in service
    (tmp_path / "tunnelgw.service").write_text(service.replace("/opt/tunnelgw/bin/twistd", twistd))
    shutil.copy(REPO / "examples/systemd/tunnelgw.socket", tmp_path / "tunnelgw.socket")
    result = subprocess.run([analyze, "verify", str(tmp_path / "tunnelgw.socket"), str(tmp_path / "tunnelgw.service")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "tunnelgw" not in result.stderr, result.stderr
    assert "systemd:domain=INET:index=0" in (REPO / "docs/operations.rst").read_text()


def test_systemd_worker_template_units_verify(tmp_path: Path) -> None:
    """examples/systemd tunnelgw@.socket (ReusePort=yes) and tunnelgw@.service pass systemd-analyze verify as instance 1."""
    analyze = require_tool("systemd-analyze")
    twistd = shutil.which("twistd")
    assert twistd, "twistd is on PATH when tunnelgw is installed"
    service = (REPO / "examples/systemd/tunnelgw@.service").read_text()
    socket_unit = (REPO / "examples/systemd/tunnelgw@.socket").read_text()
    assert "Requires=tunnelgw@%i.socket" in service and "ReusePort=yes" in socket_unit
    (tmp_path / "tunnelgw@.service").write_text(service.replace("/opt/tunnelgw/bin/twistd", twistd))
    (tmp_path / "tunnelgw@.socket").write_text(socket_unit)
    result = subprocess.run([analyze, "verify", str(tmp_path / "tunnelgw@1.socket"), str(tmp_path / "tunnelgw@1.service")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "tunnelgw" not in result.stderr, result.stderr


def _exported(text: str) -> set[str]:
    """Metric names in a Prometheus text exposition."""
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M)}


def test_metrics_process_build_info_and_dashboard(tmp_path: Path) -> None:
    """/metrics has process_*, python_info and tunnelgw_build_info; the Grafana dashboard uses only exported names."""
    import tunnelgw

    config = _echo_config(tmp_path, "AdminListen tcp:port=0:interface=127.0.0.1\nKeepAlive ping=0.3 pong=0.2\n")
    with GatewayProcess(config, tmp_path) as gw:
        with connect(f"ws://127.0.0.1:{gw.port()}/echo", open_timeout=5) as ws:
            ws.send(b"m")
            ws.recv(timeout=5)

            # A measured round trip, and a session long enough for its bytes/s to be observed when it ends.
            def measured() -> bool:
                listed = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{gw.port(2)}/sessions", timeout=5).read())
                return any("round_trip_ms" in s and float(s["duration"]) >= 1.0 for s in listed["sessions"])

            assert wait_until(measured, 10)
        gw.wait_log("session end")
        with pytest.raises(InvalidStatus):  # one handshake failure, so that its counter has a sample
            connect(f"ws://127.0.0.1:{gw.port()}/echo", subprotocols=["nope"], open_timeout=5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{gw.port(2)}/metrics", timeout=5).read().decode()
    names = _exported(text)
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names
    assert f'tunnelgw_build_info{{version="{tunnelgw.__version__}"}} 1.0' in text
    dashboard = json.loads((REPO / "examples/grafana/tunnelgw-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {n for e in exprs for n in re.findall(r"\b((?:tunnelgw|process|python)_[a-z_]+)\b", e)}
    assert used and used <= names, used - names
