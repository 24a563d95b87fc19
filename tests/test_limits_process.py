"""
Each limit of a real ``twistd tunnelgw`` answers with its documented status:
503 for session limits (global, per route, per client address), 429 for the
handshake rate, 431 for a request head too large, close 1009 for frames and
messages too large.  Client addresses are distinct loopback addresses.
"""

from __future__ import annotations

import socket
from typing import Any, Iterator

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from support import GatewayProcess, TcpServer, echo, wait_until


@pytest.fixture(scope="module")
def backend() -> Iterator[TcpServer]:
    with TcpServer(echo) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, backend: TcpServer) -> Iterator[GatewayProcess]:
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
Limit sessions=3 perclient=2 rate=4/s headers=2048 frame=1000 message=3000
ProxyPass /one {backend.endpoint} maxsessions=1
ProxyPass /echo {backend.endpoint}
"""
    with GatewayProcess(config, tmp_path_factory.mktemp("limits")) as gw:
        yield gw


def open_ws(gw: GatewayProcess, path: str, source: str) -> ClientConnection:
    """A websockets client session from a given loopback source address."""
    return connect(f"ws://127.0.0.1:{gw.port()}{path}", open_timeout=5, source_address=(source, 0),
                   compression=None, ping_interval=None)


def refusal(gw: GatewayProcess, path: str, source: str) -> tuple[int, bytes]:
    """The status and body of a handshake that must be refused."""
    with pytest.raises(InvalidStatus) as caught:
        open_ws(gw, path, source).close()
    response: Any = caught.value.response
    return response.status_code, response.body


def test_session_limits_answer_503(gateway: GatewayProcess, backend: TcpServer) -> None:
    """Per client, global and per route session limits each refuse with 503 and say which; slots come back."""
    a1, a2 = open_ws(gateway, "/echo", "127.0.0.2"), open_ws(gateway, "/echo", "127.0.0.2")
    assert refusal(gateway, "/echo", "127.0.0.2") == (503, b"503 too many sessions from this client address\n")
    one = open_ws(gateway, "/one", "127.0.0.3")
    assert refusal(gateway, "/echo", "127.0.0.4") == (503, b"503 the gateway is at its session limit\n")
    a1.close()
    assert wait_until(lambda: refusal_or_ok(gateway, "/echo", "127.0.0.4") == "ok", timeout=5)
    assert refusal(gateway, "/one", "127.0.0.5")[0] == 503
    for ws in (a2, one):
        ws.close()
    assert wait_until(lambda: backend.open_count == 0, timeout=5)
    with open_ws(gateway, "/one", "127.0.0.5") as ws:
        ws.send(b"ok")
        assert ws.recv(timeout=5) == b"ok"


def refusal_or_ok(gw: GatewayProcess, path: str, source: str) -> object:
    """Open and close a session; the refusal's status when refused."""
    try:
        open_ws(gw, path, source).close()
        return "ok"
    except InvalidStatus as e:
        return e.response.status_code


def test_handshake_rate_answers_429(gateway: GatewayProcess) -> None:
    """Beyond a burst of 4 handshakes from one address a 429 comes; other addresses are not affected."""
    results = [refusal_or_ok(gateway, "/echo", "127.0.0.9") for _ in range(12)]
    assert results[:4] == ["ok"] * 4 and 429 in results[4:], results
    assert refusal_or_ok(gateway, "/echo", "127.0.0.10") == "ok"


def test_request_head_too_large_answers_431(gateway: GatewayProcess) -> None:
    """A request head beyond Limit headers= gets 431, also when one line alone is too long."""
    for head in (b"GET /echo HTTP/1.1\r\nHost: x\r\n" + b"X-A: aaaaaaaaaaaaaaaaaaaa\r\n" * 100 + b"\r\n",
                 b"GET /echo?" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", gateway.port()), timeout=5) as s:
            s.sendall(head)
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 431 "), answer


def test_frame_and_message_too_big_close_1009(gateway: GatewayProcess) -> None:
    """A frame over Limit frame= or a fragmented message over Limit message= is closed with 1009."""
    with open_ws(gateway, "/echo", "127.0.0.11") as ws:
        ws.send(b"x" * 1000)
        assert ws.recv(timeout=5) == b"x" * 1000
        ws.send(b"x" * 1001)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 1009
    with open_ws(gateway, "/echo", "127.0.0.12") as ws:
        ws.send([b"y" * 1000, b"y" * 1000, b"y" * 1000, b"y"])
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=5)
        assert ws.close_code == 1009


def test_request_body_too_large_answers_413(gateway: GatewayProcess) -> None:
    """A request announcing a body over 64 KiB gets 413 before the body is read."""
    with socket.create_connection(("127.0.0.1", gateway.port()), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413 "), answer
