"""
Operating a real ``twistd tunnelgw``: the admin listener (health, Prometheus
metrics with checked values, live sessions, closing one), JSON log lines and
a graceful drain on SIGTERM.
"""

from __future__ import annotations

import http.client as http_client
import json
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from support import GatewayProcess, TcpServer, echo, wait_until


@pytest.fixture(scope="module")
def backend() -> Iterator[TcpServer]:
    with TcpServer(echo) as server:
        yield server


def http(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    """Status and body of a plain HTTP request to the admin listener."""
    # A script's POST has no body (a form body is what browsers send: it needs the page's token).
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return 0.0


def test_admin_health_metrics_sessions_and_close(tmp_path: Path, backend: TcpServer) -> None:
    """Metrics count sessions, bytes, failures and connects; /sessions lists a live one; POST closes it with 1008."""
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
AdminListen tcp:port=0:interface=127.0.0.1
LogFormat json
ProxyPass /echo {backend.endpoint}
"""
    with GatewayProcess(config, tmp_path) as gw:
        admin = gw.port(1)
        assert http(admin, "/healthz") == (200, "ok\n")
        assert http(admin, "/")[0] == 200
        assert http(admin, "/nothing")[0] == 404
        assert http(admin, "/../../etc/passwd")[0] == 404
        # DNS rebinding: a page at rebind.example:PORT reaching the admin listener is refused.
        conn = http_client.HTTPConnection("127.0.0.1", admin, timeout=5)
        conn.request("GET", "/sessions", headers={"Host": f"rebind.example:{admin}"})
        assert conn.getresponse().status == 403
        conn.close()
        with pytest.raises(InvalidStatus):
            connect(f"ws://127.0.0.1:{gw.port()}/echo", subprotocols=["nope"], open_timeout=5)
        with connect(f"ws://127.0.0.1:{gw.port()}/echo", open_timeout=5) as ws:
            ws.send(b"12345")
            assert ws.recv(timeout=5) == b"12345"
            status, body = http(admin, "/sessions")
            sessions = json.loads(body)["sessions"]
            assert status == 200 and len(sessions) == 1
            live = sessions[0]
            assert live["route"] == "/echo" and live["bytes_up"] == 5 and live["bytes_down"] == 5
            text = http(admin, "/metrics")[1]
            assert metric(text, "tunnelgw_sessions_live", route="/echo") == 1
            assert metric(text, "tunnelgw_bytes_total", route="/echo", direction="up") == 5
            assert metric(text, "tunnelgw_bytes_total", route="/echo", direction="down") == 5
            assert metric(text, "tunnelgw_backend_connect_seconds_count", route="/echo") == 1
            assert metric(text, "tunnelgw_handshake_failures_total", route="/echo", reason="subprotocol",
                          status="400") == 1
            assert http(admin, f"/sessions/{live['session']}/close")[0] == 405
            assert http(admin, "/sessions/nosuchsession/close", "POST")[0] == 404
            assert http(admin, f"/sessions/{live['session']}/close", "POST")[0] == 200
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            assert ws.close_code == 1008
        assert wait_until(lambda: backend.open_count == 0, timeout=5)
        text = http(admin, "/metrics")[1]
        assert metric(text, "tunnelgw_sessions_live", route="/echo") == 0
        assert metric(text, "tunnelgw_sessions_total", route="/echo") == 1
        assert metric(text, "tunnelgw_bytes_total", route="/echo", direction="up") == 5
        assert json.loads(http(admin, "/sessions")[1]) == {"sessions": []}
        ends = [json.loads(line) for line in gw.log().splitlines()
                if line.startswith("{") and '"session end' in line]
        assert len(ends) == 1
        assert ends[0]["close_code"] == 1008 and ends[0]["bytes_up"] == 5 and ends[0]["session"] == live["session"]


def test_sigterm_drains_then_closes_with_1001(tmp_path: Path, backend: TcpServer) -> None:
    """On SIGTERM: no new connections, live sessions keep working until ShutdownTimeout, then close 1001."""
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
AdminListen tcp:port=0:interface=127.0.0.1
ShutdownTimeout 2
ProxyPass /echo {backend.endpoint}
"""
    gw = GatewayProcess(config, tmp_path).start()
    try:
        port, admin = gw.port(), gw.port(1)
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=5) as ws:
            gw.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            signalled = time.monotonic()
            gw.wait_log("draining 1 session")

            def refused() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return False
                except OSError:
                    return True

            assert wait_until(refused, timeout=2)
            assert http(admin, "/healthz") == (503, "draining\n")
            ws.send(b"during drain")
            assert ws.recv(timeout=2) == b"during drain"
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=8)
            assert ws.close_code == 1001
            assert 1.8 < time.monotonic() - signalled < 5
        # twistd re-raises the signal that stopped it once shutdown completed.
        assert gw.proc.wait(10) in (0, -signal.SIGTERM)  # type: ignore[union-attr]
        assert "Server Shut Down" in gw.log()
        assert wait_until(lambda: backend.open_count == 0, timeout=5)
    finally:
        gw.stop()


def test_sigterm_ends_early_when_sessions_finish(tmp_path: Path, backend: TcpServer) -> None:
    """A drain ends as soon as the last session ends, well before ShutdownTimeout."""
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
ShutdownTimeout 30
ProxyPass /echo {backend.endpoint}
"""
    gw = GatewayProcess(config, tmp_path).start()
    try:
        with connect(f"ws://127.0.0.1:{gw.port()}/echo", open_timeout=5):
            gw.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            gw.wait_log("draining 1 session")
        started = time.monotonic()
        assert gw.proc.wait(10) in (0, -signal.SIGTERM)  # type: ignore[union-attr]
        assert time.monotonic() - started < 3
    finally:
        gw.stop()
