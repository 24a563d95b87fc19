"""
Fault injection against a real ``twistd tunnelgw``: clients that stop
answering, backends that hang, slowloris handshakes.  Each test checks the
backend side too: its connection must end (EOF or reset) within the interval.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from rawws import RawClient
from support import GatewayProcess, TcpServer, echo, wait_until


_TCP_CLOSE, _TCP_CLOSE_WAIT = 7, 8  # Linux tcpi_state values: reset / peer sent FIN


class Peek:
    """
    Handler: a hung backend that never reads nor writes; notes when the
    gateway's end closed, from the kernel's TCP state (FIN or reset
    received), without reading anything.
    """

    def __init__(self) -> None:
        self.ended: list[float] = []

    def __call__(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] in (_TCP_CLOSE, _TCP_CLOSE_WAIT):
                self.ended.append(time.monotonic())
                break
            time.sleep(0.02)  # polling the kernel's state, not synchronising
        conn.close()


class Flood:
    """Handler: writes to the gateway until it cannot; notes when the connection ended."""

    def __init__(self) -> None:
        self.ended: list[float] = []

    def __call__(self, conn: socket.socket) -> None:
        chunk = b"x" * 65536
        try:
            while True:
                conn.sendall(chunk)
        except OSError:
            pass
        self.ended.append(time.monotonic())
        conn.close()


@pytest.fixture()
def tmp(tmp_path: Path) -> Path:
    return tmp_path


def test_client_that_stops_answering_loses_session_and_backend(tmp: Path) -> None:
    """A client that reads nothing and never pongs is dropped within ping+pong, and its backend sees EOF."""
    peek, flood = Peek(), Flood()
    with TcpServer(peek) as quiet, TcpServer(flood) as noisy:
        config = f"""
Listen tcp:port=0:interface=127.0.0.1
KeepAlive ping=1 pong=0.5
ProxyPass /quiet {quiet.endpoint}
ProxyPass /noisy {noisy.endpoint}
"""
        with GatewayProcess(config, tmp) as gw:
            clients = [RawClient(gw.port(), "/quiet"), RawClient(gw.port(), "/noisy")]
            assert all(c.response is not None and c.response.status_code == 101 for c in clients)
            started = time.monotonic()
            # From here on the clients read nothing and answer nothing.
            assert wait_until(lambda: len(peek.ended) == 1 and len(flood.ended) == 1, timeout=8)
            assert peek.ended[0] - started < 1 + 0.5 + 1.5
            assert flood.ended[0] - started < 1 + 0.5 + 1.5 + 5  # plus BACKEND_CLOSE_GRACE for a flooded queue
            assert wait_until(lambda: quiet.open_count == 0 and noisy.open_count == 0, timeout=2)
            gw.wait_log(r"session ping timeout session=\w+ .*\n(.|\n)*session ping timeout session=\w+")
            gw.wait_log(r"session end .*path=/quiet.*close_reason='ping timeout")
            for client in clients:
                client.close()


def test_client_that_answers_pings_keeps_its_session(tmp: Path) -> None:
    """A live client that answers pings but sends no data keeps its session past several ping intervals."""
    with TcpServer(echo) as backend:
        config = f"""
Listen tcp:port=0:interface=127.0.0.1
KeepAlive ping=0.5 pong=0.3
ProxyPass /echo {backend.endpoint}
"""
        with GatewayProcess(config, tmp) as gw:
            client = RawClient(gw.port(), "/echo")
            deadline = time.monotonic() + 2.5
            pings = 0
            while time.monotonic() < deadline:
                pings += sum(1 for f in client.frames(timeout=0.3) if f.opcode.name == "PING")
            assert pings >= 3
            client.send_binary(b"still here")
            assert any(f.data == b"still here" for f in client.frames())
            assert backend.open_count == 1
            client.close()
            assert wait_until(lambda: backend.open_count == 0, timeout=5)


def test_hung_backend_ends_by_idle_timeout(tmp: Path) -> None:
    """A backend that accepts but never reads or writes is closed by the idle timeout; the client gets 1001."""
    peek = Peek()
    with TcpServer(peek) as hung:
        config = f"""
Listen tcp:port=0:interface=127.0.0.1
KeepAlive ping=0
Timeout idle=30
ProxyPass /hung {hung.endpoint} idletimeout=1
"""
        with GatewayProcess(config, tmp) as gw:
            started = time.monotonic()
            with connect(f"ws://127.0.0.1:{gw.port()}/hung", open_timeout=5) as ws:
                ws.send(b"nobody reads this")
                with pytest.raises(Exception):
                    ws.recv(timeout=5)
                assert ws.close_code == 1001
                assert "idle" in (ws.close_reason or "")
            assert wait_until(lambda: len(peek.ended) == 1, timeout=5)
            assert 0.9 < peek.ended[0] - started < 1.25 + 2
            gw.wait_log(r"session idle timeout session=\w+ seconds=1\b")


def test_slowloris_times_out_while_others_connect(tmp: Path) -> None:
    """Clients dribbling their request head are cut at the handshake deadline; others open sessions meanwhile."""
    with TcpServer(echo) as backend:
        config = f"""
Listen tcp:port=0:interface=127.0.0.1
Timeout handshake=1.5
ProxyPass /echo {backend.endpoint}
"""
        with GatewayProcess(config, tmp) as gw:
            head = f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nX-Pad: {'a' * 200}\r\n".encode()
            slow = [socket.create_connection(("127.0.0.1", gw.port()), timeout=5) for _ in range(8)]
            started = time.monotonic()
            cut: dict[int, float] = {}
            sessions = 0
            position = 0
            while len(cut) < len(slow) and time.monotonic() - started < 6:
                for i, s in enumerate(slow):
                    if i in cut:
                        continue
                    try:
                        s.sendall(head[position % len(head):position % len(head) + 1])
                    except OSError:
                        cut[i] = time.monotonic() - started
                position += 1
                if sessions < 3 and time.monotonic() - started > 0.3 * (sessions + 1):
                    with connect(f"ws://127.0.0.1:{gw.port()}/echo", open_timeout=2) as ws:
                        ws.send(b"ping")
                        assert ws.recv(timeout=2) == b"ping"
                    sessions += 1
                time.sleep(0.05)  # the slow clients' pace, not synchronisation
            assert sessions == 3
            assert len(cut) == len(slow), cut
            assert all(1.4 < t < 3.5 for t in cut.values()), cut
            for s in slow:
                s.close()
            assert gw.log().count("handshake timed out") == len(slow)


def test_backend_connections_carry_tcp_keepalive(tmp: Path) -> None:
    """The gateway's socket to a TCP backend runs a keepalive timer with the configured idle time (seen by ss)."""
    import subprocess

    from support import require_tool

    ss = require_tool("ss")
    with TcpServer(echo) as backend:
        config = f"""
Listen tcp:port=0:interface=127.0.0.1
KeepAlive tcpidle=77 tcpinterval=5 tcpcount=2
ProxyPass /echo {backend.endpoint}
"""
        with GatewayProcess(config, tmp) as gw:
            with connect(f"ws://127.0.0.1:{gw.port()}/echo", open_timeout=5) as ws:
                ws.send(b"x")
                assert ws.recv(timeout=5) == b"x"
                out = subprocess.run([ss, "-tnoH", "state", "established", f"dport = :{backend.port}"],
                                     capture_output=True, text=True, timeout=10).stdout
            assert "timer:(keepalive," in out, out
            import re

            timer = re.search(r"timer:\(keepalive,(?:(\d+)min)?([\d.]+)sec", out)
            assert timer, out
            seconds = int(timer.group(1) or 0) * 60 + float(timer.group(2))
            assert 60 < seconds <= 77, out
