"""
Hypothesis-driven fuzzing of a real ``twistd tunnelgw``: raw handshake
requests and raw client frames (malformed, oversized, invalid UTF-8 in text
frames, bad opcodes, reserved bits, unmasked frames).  After every batch the
gateway must still be alive, serve a fresh session, and hold no backend
connection.  Example counts are bounded to keep each test within ~20 s.
"""

from __future__ import annotations

import socket
import time
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from rawws import frame_bytes, raw_handshake
from support import GatewayProcess, TcpServer, echo, wait_until

_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def backend() -> Iterator[TcpServer]:
    with TcpServer(echo) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, backend: TcpServer) -> Iterator[GatewayProcess]:
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
Timeout handshake=2
Limit rate=0 frame=65536 message=262144
ProxyPass /echo {backend.endpoint}
ProxyPassMatch ^/port/([^/]+)$ tcp:host=127.0.0.1:port=$1
"""
    with GatewayProcess(config, tmp_path_factory.mktemp("fuzz")) as gw:
        yield gw


def exchange(port: int, data: bytes, linger: float = 0.4, timeout: float = 3.0) -> bytes:
    """
    Send data and read until the gateway closes, or until it has been quiet
    for linger seconds (then this client leaves); bounded by timeout.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            return b""
        s.settimeout(linger)
        answer = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        return bytes(answer)


def assert_healthy(gw: GatewayProcess, backend: TcpServer) -> None:
    """The process lives, a fresh session works, and no backend connection is left open."""
    assert gw.proc is not None and gw.proc.poll() is None
    with connect(f"ws://127.0.0.1:{gw.port()}/echo", open_timeout=5) as ws:
        ws.send(b"still alive")
        assert ws.recv(timeout=5) == b"still alive"
    assert wait_until(lambda: backend.open_count == 0, timeout=10), backend.open_count
    assert "Unhandled Error" not in gw.log() and "Traceback" not in gw.log()


_TOKENS = st.sampled_from([b"GET", b"POST", b"get", b"", b" ", b"\r\n", b"\n", b":", b"HTTP/1.1", b"HTTP/1.0",
                           b"HTTP/9", b"/echo", b"/port/80", b"/port/..%2f", b"/%00", b"/../echo", b"/echo?x=1",
                           b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13",
                           b"Sec-WebSocket-Version: 99", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                           b"Sec-WebSocket-Key: x", b"Sec-WebSocket-Protocol: base64", b"Content-Length: 5",
                           b"Transfer-Encoding: chunked", b"Host: 127.0.0.1", b"\x00", b"\xff\xfe", b"%zz"])


@_SETTINGS
@given(st.one_of(
    st.binary(max_size=300),
    st.lists(_TOKENS, max_size=30).map(b" ".join),
    st.lists(_TOKENS, max_size=30).map(b"\r\n".join),
    st.tuples(st.integers(0, 200), st.binary(max_size=20)).map(
        lambda cut: raw_handshake("/echo", 0)[: cut[0]] + cut[1] + raw_handshake("/echo", 0)[cut[0]:]),
))
def test_fuzzed_handshakes_never_crash(gateway: GatewayProcess, backend: TcpServer, data: bytes) -> None:
    """Arbitrary and mutated request heads get an HTTP answer or a close, never a crash or a leaked backend."""
    answer = exchange(gateway.port(), data)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 "), answer[:200]


def test_gateway_healthy_after_handshake_fuzzing(gateway: GatewayProcess, backend: TcpServer) -> None:
    """After the handshake fuzzing the gateway still serves and holds no backend connection."""
    assert_healthy(gateway, backend)


_FRAME = st.builds(
    frame_bytes,
    opcode=st.sampled_from([0, 1, 2, 3, 7, 8, 9, 10, 11, 15]),
    payload=st.one_of(st.binary(max_size=200), st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"ok"]),
                      st.just(b"x" * 70000)),
    fin=st.booleans(),
    masked=st.booleans(),
    rsv=st.sampled_from([0, 0, 0, 1, 4, 7]),
    declared_length=st.one_of(st.none(), st.none(), st.sampled_from([0, 125, 126, 65535, 65536, 1 << 40, 1 << 63])),
)


@_SETTINGS
@given(st.lists(_FRAME, min_size=1, max_size=6), st.booleans())
def test_fuzzed_frames_never_crash(gateway: GatewayProcess, backend: TcpServer, frames: list[bytes],
                                   close_first: bool) -> None:
    """Malformed, oversized, non-UTF-8, unmasked and bad-opcode frames end in a close, never a crash or leak."""
    data = raw_handshake("/echo", gateway.port()) + b"".join(frames)
    answer = exchange(gateway.port(), data if not close_first else data + frame_bytes(8, b"\x03\xe8"))
    assert answer.startswith(b"HTTP/1.1 101 "), answer[:100]


def test_gateway_healthy_after_frame_fuzzing(gateway: GatewayProcess, backend: TcpServer) -> None:
    """After the frame fuzzing the gateway still serves and holds no backend connection."""
    assert_healthy(gateway, backend)
