"""
End-to-end tests of the direct data phase (:mod:`tunnelgw.upstream`, its data phase): a real
gateway process, a real echo backend, and frame streams written in one piece
so that binary frames and frames Autobahn must see share a read.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator

import pytest
from websockets.frames import Close, Frame, Opcode

from support import GatewayProcess, RawClient, TcpServer, echo


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    server = TcpServer(echo)
    tmp: Path = tmp_path_factory.mktemp("fast")
    try:
        with GatewayProcess(f"Listen tcp:port=0:interface=127.0.0.1\nProxyPass /echo {server.endpoint}\n", tmp) as gw:
            yield gw
    finally:
        server.stop()


def _frame(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=True)


def _events_until(client: RawClient, wanted: int, timeout: float = 10.0) -> list[Frame]:
    """Read frames from the gateway until wanted payload bytes (data frames) arrived or it closed."""
    frames: list[Frame] = []
    got = 0
    deadline = time.monotonic() + timeout
    client.sock.settimeout(1.0)
    while got < wanted and time.monotonic() < deadline:
        try:
            data = client.sock.recv(1 << 20)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        client.protocol.receive_data(data)
        for event in client.protocol.events_received():
            frames.append(event)
            if event.opcode in (Opcode.BINARY, Opcode.TEXT, Opcode.CONT):
                got += len(event.data)
        if not data:
            break
    return frames


def test_control_and_fragmented_frames_between_binary_frames(gateway: GatewayProcess) -> None:
    """Pings, fragmented and text messages mixed into one write with binary frames: all relayed in order, ping answered."""
    client = RawClient(f"ws://127.0.0.1:{gateway.port()}/echo")
    parts = [b"a" * 10, b"b" * 70_000, b"c", b"d" * 300, b"e" * 5, "f\u00e9".encode(), b"g" * 1000]
    stream = (_frame(Opcode.BINARY, parts[0]) + _frame(Opcode.BINARY, parts[1])
              + _frame(Opcode.PING, b"are you there") + _frame(Opcode.BINARY, parts[2])
              + _frame(Opcode.BINARY, parts[3], fin=False) + _frame(Opcode.PING, b"mid")
              + _frame(Opcode.CONT, parts[4]) + _frame(Opcode.TEXT, parts[5]) + _frame(Opcode.BINARY, parts[6]))
    # Twice: the second copy starts while Autobahn may still hold part of the first.
    client.sock.sendall(stream + stream)
    frames = _events_until(client, 2 * sum(map(len, parts)))
    echoed = b"".join(f.data for f in frames if f.opcode == Opcode.BINARY)
    assert echoed == b"".join(parts) * 2
    assert [f.data for f in frames if f.opcode == Opcode.PONG] == [b"are you there", b"mid"] * 2
    client.close()


def test_close_after_binary_frames_is_answered(gateway: GatewayProcess) -> None:
    """A close frame right behind binary frames in one read: the data reaches the backend, the close is answered, the end is clean."""
    client = RawClient(f"ws://127.0.0.1:{gateway.port()}/echo")
    client.sock.sendall(_frame(Opcode.BINARY, b"x" * 2000) + _frame(Opcode.CLOSE, Close(1000, "bye").serialize()))
    frames = _events_until(client, 10**9, timeout=5)
    closes = [f for f in frames if f.opcode == Opcode.CLOSE]
    assert closes and Close.parse(closes[0].data).code == 1000
    gateway.wait_log(r"session end .*bytes_up=2000 .*close_code=1000")
    client.close()


@pytest.mark.parametrize("bad", [
    pytest.param(bytes([0xC2, 0x80, 1, 2, 3, 4]), id="reserved-bit"),
    pytest.param(_frame(Opcode.BINARY, b"a", fin=False) + _frame(Opcode.BINARY, b"b"), id="new-message-inside-fragmented"),
    pytest.param(Frame(Opcode.BINARY, b"unmasked").serialize(mask=False), id="unmasked"),
])
def test_protocol_errors_after_binary_frames_end_the_session(gateway: GatewayProcess, bad: bytes) -> None:
    """A protocol violation behind good binary frames: the data before it is relayed and the session fails (not 1000)."""
    client = RawClient(f"ws://127.0.0.1:{gateway.port()}/echo")
    port = client.sock.getsockname()[1]
    client.sock.sendall(_frame(Opcode.BINARY, b"ok" * 100) + bad)
    _events_until(client, 10**9, timeout=5)
    match = gateway.wait_log(rf"session end .*client=127.0.0.1:{port} .*bytes_up=(\d+) .*close_code=(\S+)")
    assert int(match.group(1)) in (200, 201) and match.group(2) != "1000"
    client.close()
