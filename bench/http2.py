"""
WebSockets over HTTP/2 (RFC 8441) against wss over HTTP/1.1, same gateway,
same backends, same run: ``python -m bench.http2 [--sessions N] [--mib M]``.

- **new sessions per second**: each session opens, relays one 16-byte
  message both ways and closes (close frame, answer), one after another;
  over HTTP/2 all on one existing connection (an extended CONNECT stream
  each), over HTTP/1.1 a new TLS connection and upgrade each.
- **desktop direction**: one session reads M MiB that the backend writes in
  64 KiB chunks (``bench.servers``' source), MiB/s from the request to the
  last byte.
- the gateway's CPU time (from /proc) per session and per MiB of each.

Both clients are single-threaded Python over ``ssl`` sockets (the ``h2``
library for HTTP/2, hand-made frames for HTTP/1.1), so the figures include
the client's own cost; they compare the two paths, they are not the
gateway's ceiling (see docs/benchmarks.rst for those).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import ssl
import struct
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RemoteSettingsChanged, ResponseReceived, StreamEnded, StreamReset

from bench.procs import Backends, Gateway, cpu_seconds, self_signed

__all__ = ["main"]


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame."""
    key = os.urandom(4)
    length = len(payload)
    head = bytes([0x80 | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


class _Frames:
    """Server frames (unmasked) parsed off a byte buffer: payload bytes counted, messages kept if small."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.payload = 0
        self.opcodes: list[int] = []

    def feed(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 2:
            length, at = buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, at = struct.unpack("!H", buffer[2:4])[0], 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, at = struct.unpack("!Q", buffer[2:10])[0], 10
            if len(buffer) < at + length:
                return
            self.opcodes.append(buffer[0] & 0xF)
            self.payload += length
            del buffer[:at + length]


def _context(cert: Path, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.set_alpn_protocols(alpn)
    return context


class _H2:
    """One HTTP/2 connection, its streams' frames."""

    def __init__(self, port: int, cert: Path) -> None:
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = _context(cert, ["h2"]).wrap_socket(raw, server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2", "the listener did not choose h2"
        self.conn = H2Connection(H2Configuration(client_side=True))
        # A desktop-sized window, as browsers give (Chromium: 6 MiB per stream, 15 MiB per connection).
        self.conn.initiate_connection()
        self.conn.update_settings({4: 6 * 1024 * 1024})
        self.conn.increment_flow_control_window(15 * 1024 * 1024)
        self.frames: dict[int, _Frames] = {}
        self.status: dict[int, int] = {}
        self.ended: set[int] = set()
        self.settings = False
        self._send()
        self._until(lambda: self.settings)

    def _send(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def _until(self, done: Callable[[], object]) -> None:
        while not done():
            data = self.sock.recv(262144)
            if not data:
                raise ConnectionError("the gateway closed the connection")
            for event in self.conn.receive_data(data):
                if isinstance(event, RemoteSettingsChanged):
                    self.settings = True
                elif isinstance(event, ResponseReceived):
                    self.status[event.stream_id] = int(dict(event.headers or [])[b":status"])
                elif isinstance(event, DataReceived):
                    self.frames[event.stream_id].feed(event.data or b"")
                    self.conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
                elif isinstance(event, (StreamEnded, StreamReset)):
                    self.ended.add(event.stream_id)
            self._send()

    def open(self, path: str) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.frames[stream_id] = _Frames()
        self.conn.send_headers(stream_id, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                                           (":path", path), (":authority", "localhost"),
                                           ("sec-websocket-version", "13")])
        self._send()
        self._until(lambda: stream_id in self.status)
        assert self.status[stream_id] == 200, self.status[stream_id]
        return stream_id

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self.conn.send_data(stream_id, data, end_stream=end)
        self._send()

    def session(self) -> None:
        """Open /echo, one message there and back, close."""
        stream_id = self.open("/echo")
        frames = self.frames[stream_id]
        self.send(stream_id, _frame(2, b"0123456789abcdef"))
        self._until(lambda: frames.opcodes)
        self.send(stream_id, _frame(8, struct.pack("!H", 1000)), end=True)
        self._until(lambda: stream_id in self.ended)
        del self.frames[stream_id]

    def desktop(self, total: int) -> float:
        """Seconds to read total bytes from /source."""
        started = time.perf_counter()
        stream_id = self.open("/source")
        frames = self.frames[stream_id]
        self.send(stream_id, _frame(2, f"65536 {total // 65536}\n".encode()))
        self._until(lambda: frames.payload >= total)
        elapsed = time.perf_counter() - started
        self.conn.reset_stream(stream_id)
        self._send()
        return elapsed

    def close(self) -> None:
        self.sock.close()


def _wss(port: int, cert: Path, path: str) -> tuple[ssl.SSLSocket, _Frames]:
    """A new TLS connection and upgrade to path."""
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = _context(cert, ["http/1.1"]).wrap_socket(raw, server_hostname="localhost")
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("no answer to the upgrade")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head[:40]
    frames = _Frames()
    frames.feed(rest)
    return sock, frames


def _wss_session(port: int, cert: Path) -> None:
    sock, frames = _wss(port, cert, "/echo")
    sock.sendall(_frame(2, b"0123456789abcdef"))
    while not frames.opcodes:
        frames.feed(sock.recv(65536))
    sock.sendall(_frame(8, struct.pack("!H", 1000)))
    while True:  # the close answer, then the gateway's end of the connection
        data = sock.recv(65536)
        if not data:
            break
        frames.feed(data)
    sock.close()


def _wss_desktop(port: int, cert: Path, total: int) -> float:
    started = time.perf_counter()
    sock, frames = _wss(port, cert, "/source")
    sock.sendall(_frame(2, f"65536 {total // 65536}\n".encode()))
    while frames.payload < total:
        frames.feed(sock.recv(262144))
    elapsed = time.perf_counter() - started
    sock.close()
    return elapsed


_LISTENING = re.compile(r"\S+:(\d+): listening on .* port=(\d+)\)")


def main(argv: Optional[list[str]] = None) -> None:
    """Run both figures once and print them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=300, help="sessions per path (default 300)")
    parser.add_argument("--mib", type=int, default=64, help="MiB for the desktop direction (default 64)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        cert, key = self_signed(tmp)
        backends = Backends()
        extra = f"Listen ssl:port=0:interface=127.0.0.1:backlog=4096:certKey={cert}:privateKey={key} http2=on"
        gateway = Gateway(tmp, backends.ports, (cert, key), extra_rules=extra)
        try:
            deadline = time.monotonic() + 20
            ports: dict[int, int] = {}
            while len(ports) < 3 and time.monotonic() < deadline:
                ports = {int(m.group(1)): int(m.group(2)) for m in _LISTENING.finditer(gateway.log())}
                time.sleep(0.05)
            h2_port = ports[max(ports)]
            h1_port = gateway.wss_port
            total = args.mib * 1024 * 1024
            cpu = gateway.pids
            h2 = _H2(h2_port, cert)
            try:
                h2.session()  # warm-up
                started, used = time.perf_counter(), cpu_seconds(cpu)
                for _ in range(args.sessions):
                    h2.session()
                h2_rate = args.sessions / (time.perf_counter() - started)
                h2_cpu = (cpu_seconds(cpu) - used) / args.sessions
                used = cpu_seconds(cpu)
                h2_mib = args.mib / h2.desktop(total)
                h2_cpu_mib = (cpu_seconds(cpu) - used) / args.mib
            finally:
                h2.close()
            _wss_session(h1_port, cert)
            started, used = time.perf_counter(), cpu_seconds(cpu)
            for _ in range(args.sessions):
                _wss_session(h1_port, cert)
            h1_rate = args.sessions / (time.perf_counter() - started)
            h1_cpu = (cpu_seconds(cpu) - used) / args.sessions
            used = cpu_seconds(cpu)
            h1_mib = args.mib / _wss_desktop(h1_port, cert, total)
            h1_cpu_mib = (cpu_seconds(cpu) - used) / args.mib
        except BaseException:
            print(gateway.log()[-3000:])
            raise
        finally:
            gateway.stop()
            backends.stop()
    print(f"new sessions/s: h2 stream on one connection {h2_rate:.0f}, wss HTTP/1.1 {h1_rate:.0f} "
          f"(ratio {h2_rate / h1_rate:.2f})")
    print(f"desktop direction MiB/s: h2 stream {h2_mib:.0f}, wss HTTP/1.1 {h1_mib:.0f} (ratio {h2_mib / h1_mib:.2f})")
    print(f"gateway CPU ms per session: h2 {h2_cpu * 1000:.2f}, wss HTTP/1.1 {h1_cpu * 1000:.2f}; "
          f"per MiB: h2 {h2_cpu_mib * 1000:.2f}, wss HTTP/1.1 {h1_cpu_mib * 1000:.2f}")


if __name__ == "__main__":
    main()
