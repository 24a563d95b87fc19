"""
A WebSocket client with full control over the wire, for fault injection:
websockets' sans-IO :class:`~websockets.client.ClientProtocol` over a plain
loopback socket.  Nothing is read or answered unless the test asks, so a
test can play a client that stops reading and never pongs.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Optional

from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.http11 import Response
from websockets.uri import parse_uri

__all__ = ["RawClient", "frame_bytes", "raw_handshake"]


class RawClient:
    """One WebSocket connection driven by hand."""

    def __init__(self, port: int, path: str, source: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}{path}"), max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self.flush()
        self.response: Optional[Response] = None
        deadline = time.monotonic() + timeout
        while self.response is None and time.monotonic() < deadline:
            self.receive_some()
            for event in self.protocol.events_received():
                if isinstance(event, Response):
                    self.response = event
        if self.response is None:
            raise TimeoutError("no handshake response")

    def flush(self) -> None:
        """Send what the protocol queued (pongs included)."""
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def receive_some(self) -> bool:
        """Read once from the socket into the protocol; False at EOF."""
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        return bool(data)

    def send_binary(self, data: bytes) -> None:
        """Send one binary message."""
        self.protocol.send_binary(data)
        self.flush()

    def frames(self, timeout: float = 5.0) -> list[Frame]:
        """Read (answering pings) until at least one frame came or timeout."""
        deadline = time.monotonic() + timeout
        got: list[Frame] = []
        while not got and time.monotonic() < deadline:
            if not self.receive_some():
                break
            got = [e for e in self.protocol.events_received() if isinstance(e, Frame)]
            self.flush()
        return got

    def close(self) -> None:
        """Close the socket at once."""
        self.sock.close()


def frame_bytes(opcode: int, payload: bytes, fin: bool = True, masked: bool = True, rsv: int = 0,
                declared_length: Optional[int] = None) -> bytes:
    """Encode a frame by hand, allowing every violation (bad opcode, no mask, lying length)."""
    length = len(payload) if declared_length is None else declared_length
    head = bytes([(0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)])
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length & ((1 << 64) - 1))
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def raw_handshake(path: str, port: int) -> bytes:
    """A valid handshake request head for path."""
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
