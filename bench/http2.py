"""
WebSockets over HTTP/2 (RFC 8441) against wss over HTTP/1.1, same gateway,
same backends, same run: ``python -m bench.http2 [--sessions N]
[--concurrency C] [--seconds S] [--mib M] [--rounds R] [--rsa BITS]``.

- **new sessions per second, C at once** (default 32, as the other session
  figures of ``bench``): each session opens, relays one 16-byte message both
  ways and closes (close frame and answer; over HTTP/2 END_STREAM both
  ways, over HTTP/1.1 the gateway's end of the connection).  Over HTTP/2
  the C sessions are streams of one existing connection (an extended
  CONNECT each); over HTTP/1.1 each is a new TLS connection and upgrade.
  Bounded by N sessions and S seconds per path, each session by 10 s;
  errors are counted and shown.  ``--concurrency 1`` gives the earlier
  one-after-another figure, which is bound by round trips, not by the
  gateway.
- **desktop direction**: one session reads M MiB that the backend writes in
  64 KiB chunks (``bench.servers``' source), MiB/s from the request to the
  last byte (over HTTP/2 on a connection already set up, as a page's).
- the gateway's CPU time (from /proc) per session and per MiB of each, and
  the bench client's own CPU per session.

Each figure is taken R times (default 3), the two paths in turn in each
round, and the medians are printed with each round's ratio: on a shared
machine the ratio of two measurements minutes apart says little.

The listener's certificate is ECDSA P-256 (a cheap handshake: what the
HTTP/1.1 path pays per session beyond an HTTP/2 stream is smallest), or RSA
with ``--rsa 2048``.

Both clients do the same work with the same tools: Python on the ``ssl``
module (uvloop for the sessions, blocking sockets for the desktop
direction), WebSocket frames made and parsed by hand.  The HTTP/2 client
frames HTTP/2 itself (:class:`_H2Client`: struct-parsed frames, the
``hpack`` library for header blocks) and behaves as Chromium does: its
SETTINGS (no ``MAX_FRAME_SIZE``, so the gateway sends at most 16 KiB per
DATA frame), its 6 MiB stream and 15 MiB connection windows, a
WINDOW_UPDATE once half a window is consumed.  The Python ``h2`` library as
a client cost more CPU per MiB than the gateway did, so the earlier
figures measured the client.  The clients share the machine with the
gateway: the figures compare the two paths in one run; the gateway CPU per
session and per MiB are what an operator plans with.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import ssl
import struct
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

import hpack
import uvloop

from bench.client import session_loop
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

    def feed(self, data: "bytes | memoryview") -> None:
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


# HTTP/2 frame types and flags (RFC 9113 section 6).
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = range(10)
_END_STREAM = _ACK = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
_PRIORITY_FLAG = 0x20
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: Chromium's first SETTINGS (HEADER_TABLE_SIZE, ENABLE_PUSH, INITIAL_WINDOW_SIZE, MAX_HEADER_LIST_SIZE):
#: no MAX_FRAME_SIZE, so the gateway sends DATA frames of at most 16 KiB, as to a browser.
CLIENT_SETTINGS = ((1, 65536), (2, 0), (4, 6 * 1024 * 1024), (6, 262144))
#: Chromium's connection window (15 MiB; the WINDOW_UPDATE after its SETTINGS).
CLIENT_CONNECTION_WINDOW = 15 * 1024 * 1024
_HEAD = struct.Struct("!HBBBI")  # 24-bit length as 16 + 8 bits, type, flags, stream id


def _h2_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _HEAD.pack(length >> 8, length & 0xFF, kind, flags, stream_id) + payload


class _Stream:
    """One stream's state on the client side."""

    def __init__(self, send_window: int) -> None:
        self.status = 0
        self.frames = _Frames()
        self.ended = False  # the server's END_STREAM, or a reset
        self.reset: Optional[int] = None
        self.send_window = send_window
        self.unacked = 0


class _H2Client:
    """
    A hand-framed HTTP/2 client connection, sans-IO: :meth:`feed` takes the
    server's bytes, :attr:`out` collects what to send.  HPACK is the ``hpack``
    library's; everything else is struct.  It behaves as Chromium does
    (:data:`CLIENT_SETTINGS`, :data:`CLIENT_CONNECTION_WINDOW`, a
    WINDOW_UPDATE once half a window is consumed, not per frame), answers
    SETTINGS and PING, and keeps to the server's windows and frame size.
    """

    def __init__(self) -> None:
        settings = b"".join(struct.pack("!HI", code, value) for code, value in CLIENT_SETTINGS)
        self.out = bytearray(_PREFACE + _h2_frame(_SETTINGS, 0, 0, settings)
                             + _h2_frame(_WINDOW_UPDATE, 0, 0, struct.pack("!I", CLIENT_CONNECTION_WINDOW - 65535)))
        self.streams: dict[int, _Stream] = {}
        #: Streams that changed in the last feed.
        self.touched: set[int] = set()
        self.settings = False
        self._buffer = bytearray()
        self._next_id = 1
        self._encoder = hpack.Encoder()
        self._decoder = hpack.Decoder(max_header_list_size=CLIENT_SETTINGS[3][1])
        self._decoder.max_allowed_table_size = CLIENT_SETTINGS[0][1]
        self._send_window = 65535
        self._initial_send_window = 65535
        self._max_frame = 16384
        self._unacked = 0
        self._block: Optional[tuple[int, int, bytearray]] = None  # a header block awaiting CONTINUATION
        self._pending: deque[tuple[int, bytes, bool]] = deque()

    def open(self, path: str) -> int:
        """A new extended CONNECT stream (RFC 8441) to path."""
        stream_id, self._next_id = self._next_id, self._next_id + 2
        self.streams[stream_id] = _Stream(self._initial_send_window)
        block = self._encoder.encode([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                                      (":path", path), (":authority", "localhost"), ("origin", "https://localhost"),
                                      ("sec-websocket-version", "13")])
        self.out += _h2_frame(_HEADERS, _END_HEADERS, stream_id, block)
        return stream_id

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """DATA on a stream, as the windows admit (the rest when they open)."""
        self._pending.append((stream_id, data, end))
        self._send_pending()

    def _send_pending(self) -> None:
        while self._pending:
            stream_id, data, end = self._pending[0]
            stream = self.streams.get(stream_id)
            if stream is None or stream.ended:
                self._pending.popleft()
                continue
            size = min(len(data), self._max_frame)
            if size > min(stream.send_window, self._send_window):
                return
            stream.send_window -= size
            self._send_window -= size
            last = size == len(data)
            self.out += _h2_frame(_DATA, _END_STREAM if end and last else 0, stream_id, data[:size])
            if last:
                self._pending.popleft()
            else:
                self._pending[0] = (stream_id, data[size:], end)

    def reset(self, stream_id: int) -> None:
        """RST_STREAM (CANCEL), as a browser does when a page goes away."""
        self.out += _h2_frame(_RST_STREAM, 0, stream_id, struct.pack("!I", 8))
        self.streams.pop(stream_id, None)

    def feed(self, data: "bytes | memoryview") -> None:
        """The server's bytes: frames parsed, streams updated, answers put in :attr:`out`."""
        buffer = self._buffer
        if buffer:
            buffer += data
            view: Any = buffer
        else:
            view = data
        at, end = 0, len(view)
        head = _HEAD.unpack_from
        while end - at >= 9:
            high, low, kind, flags, stream_id = head(view, at)
            length = (high << 8) | low
            if end - at < 9 + length:
                break
            start = at + 9
            at = start + length
            stream_id &= 0x7FFFFFFF
            if kind == _DATA:
                self._data(stream_id, flags, memoryview(view)[start:at], length)
            else:
                self._control(kind, flags, stream_id, bytes(view[start:at]))
        if view is buffer:
            del buffer[:at]
        else:
            buffer += view[at:]

    def _data(self, stream_id: int, flags: int, payload: memoryview, length: int) -> None:
        if flags & _PADDED:
            payload = payload[1:len(payload) - payload[0]]
        stream = self.streams.get(stream_id)
        # Flow control counts the whole frame; a window is given back once half of it is consumed.
        self._unacked += length
        if self._unacked >= CLIENT_CONNECTION_WINDOW // 2:
            self.out += _h2_frame(_WINDOW_UPDATE, 0, 0, struct.pack("!I", self._unacked))
            self._unacked = 0
        if stream is None:
            return
        stream.frames.feed(payload)
        self.touched.add(stream_id)
        if flags & _END_STREAM:
            stream.ended = True
            return
        stream.unacked += length
        if stream.unacked >= CLIENT_SETTINGS[2][1] // 2:
            self.out += _h2_frame(_WINDOW_UPDATE, 0, stream_id, struct.pack("!I", stream.unacked))
            stream.unacked = 0

    def _control(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == _HEADERS or kind == _CONTINUATION:
            if kind == _HEADERS:
                if flags & _PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                if flags & _PRIORITY_FLAG:
                    payload = payload[5:]
                self._block = (stream_id, flags, bytearray())
            assert self._block is not None and self._block[0] == stream_id, "CONTINUATION out of place"
            self._block[2].extend(payload)
            if flags & _END_HEADERS:
                block_stream, block_flags, block = self._block
                self._block = None
                headers = dict(self._decoder.decode(bytes(block), raw=True))
                stream = self.streams.get(stream_id)
                if stream is not None:
                    stream.status = stream.status or int(headers.get(b":status", b"0"))
                    stream.ended = stream.ended or bool(block_flags & _END_STREAM)
                    self.touched.add(stream_id)
        elif kind == _SETTINGS:
            if not flags & _ACK:
                for at in range(0, len(payload) - 5, 6):
                    code, value = struct.unpack_from("!HI", payload, at)
                    if code == 4:
                        for stream in self.streams.values():
                            stream.send_window += value - self._initial_send_window
                        self._initial_send_window = value
                    elif code == 5:
                        self._max_frame = value
                    elif code == 1:
                        self._encoder.header_table_size = value
                self.out += _h2_frame(_SETTINGS, _ACK, 0)
                self.settings = True
        elif kind == _WINDOW_UPDATE:
            increment = struct.unpack("!I", payload)[0] & 0x7FFFFFFF
            if stream_id == 0:
                self._send_window += increment
            elif stream_id in self.streams:
                self.streams[stream_id].send_window += increment
            self._send_pending()
        elif kind == _PING:
            if not flags & _ACK:
                self.out += _h2_frame(_PING, _ACK, 0, payload)
        elif kind == _RST_STREAM:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.ended, stream.reset = True, struct.unpack("!I", payload)[0]
                self.touched.add(stream_id)
        elif kind == _GOAWAY:
            last, code = struct.unpack_from("!II", payload)
            raise ConnectionError(f"GOAWAY from the gateway (error {code}, last stream {last & 0x7FFFFFFF})")
        elif kind == _PUSH_PROMISE:
            raise ConnectionError("PUSH_PROMISE although ENABLE_PUSH is 0")
        # PRIORITY and unknown frame types are ignored (RFC 9113 section 5.5).


#: The session's message there and back, and its close (masked client frames).
_MESSAGE = _frame(2, b"0123456789abcdef")
_CLOSE = _frame(8, struct.pack("!H", 1000))
_UPGRADE = (b"GET /echo HTTP/1.1\r\nHost: localhost\r\nOrigin: https://localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class _H2Protocol(asyncio.Protocol):
    """An :class:`_H2Client` on an asyncio TLS transport; sessions wait on their stream."""

    def __init__(self) -> None:
        self.client = _H2Client()
        self.transport: Any = None
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._flushing = False
        self._error: Optional[Exception] = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            self.client.feed(data)
        except ConnectionError as e:
            self._fail(e)
            return
        self.flush_soon()
        if self.client.settings and not self.ready.done():
            self.ready.set_result(None)
        for stream_id in self.client.touched:
            waiter = self._waiters.pop(stream_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self.client.touched.clear()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._fail(ConnectionError(f"the gateway closed the connection ({exc})"))

    def _fail(self, e: Exception) -> None:
        self._error = e
        for waiter in [self.ready, *self._waiters.values()]:
            if not waiter.done():
                waiter.set_exception(e)
        self._waiters.clear()

    def flush_soon(self) -> None:
        """Send what is due once this turn of the loop is over (the writes of every stream in one)."""
        if not self._flushing:
            self._flushing = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flushing = False
        out = self.client.out
        if out and self._error is None:
            self.transport.write(bytes(out))
            out.clear()

    async def until(self, stream_id: int, done: Callable[[], object]) -> None:
        """Wait until done() holds for stream_id's state."""
        while not done():
            if self._error is not None:
                raise self._error
            waiter = self._waiters[stream_id] = self.loop.create_future()
            await waiter

    async def session(self, source: str = "") -> None:
        """Open /echo, one message there and back, close (close frame and END_STREAM, then the server's end)."""
        client = self.client
        stream_id = client.open("/echo")
        stream = client.streams[stream_id]
        self.flush_soon()
        try:
            await self.until(stream_id, lambda: stream.status or stream.ended)
            if stream.status != 200:
                raise ConnectionError(f"extended CONNECT refused: status {stream.status}, reset {stream.reset}")
            client.send(stream_id, _MESSAGE)
            self.flush_soon()
            await self.until(stream_id, lambda: stream.frames.opcodes or stream.ended)
            if not stream.frames.opcodes:
                raise ConnectionError(f"no echo (reset {stream.reset})")
            client.send(stream_id, _CLOSE, end=True)
            self.flush_soon()
            await self.until(stream_id, lambda: stream.ended)
            if stream.reset:
                raise ConnectionError(f"the stream was reset (error {stream.reset})")
        finally:
            if not stream.ended:
                client.reset(stream_id)
                self.flush_soon()
            client.streams.pop(stream_id, None)


async def _h2_sessions(port: int, cert: Path, concurrency: int, count: int, seconds: float) -> dict[str, Any]:
    """New sessions as streams of one existing HTTP/2 connection, concurrency at a time."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(_H2Protocol, "127.0.0.1", port, ssl=_context(cert, ["h2"]),
                                                       server_hostname="localhost")
    try:
        assert transport.get_extra_info("ssl_object").selected_alpn_protocol() == "h2", "the listener did not choose h2"
        await asyncio.wait_for(protocol.ready, 10)
        await asyncio.wait_for(protocol.session(), 10)  # warm-up: the connection exists before the count starts
        return await session_loop(protocol.session, concurrency, count, seconds)
    finally:
        transport.close()


async def _wss_session(port: int, context: ssl.SSLContext, source: str) -> None:
    """A new TLS connection, upgrade to /echo, one message there and back, close (then the server's end)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost",
                                                   local_addr=(source, 0))
    try:
        writer.write(_UPGRADE)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head[:40]!r}")
        frames = _Frames()
        writer.write(_MESSAGE)
        while not frames.opcodes:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("no echo")
            frames.feed(data)
        writer.write(_CLOSE)
        while await reader.read(65536):  # the close answer, then the gateway's end of the connection
            pass
    finally:
        writer.close()


async def _wss_sessions(port: int, cert: Path, concurrency: int, count: int, seconds: float) -> dict[str, Any]:
    """New sessions, each on a new TLS connection with an HTTP/1.1 upgrade, concurrency at a time."""
    context = _context(cert, ["http/1.1"])
    await asyncio.wait_for(_wss_session(port, context, "127.0.0.1"), 10)  # warm-up
    return await session_loop(lambda source: _wss_session(port, context, source), concurrency, count, seconds)


#: The desktop direction's reads: into one buffer (``recv`` would allocate this much for every TLS record).
_READ = 262144


def _connect(port: int, cert: Path, alpn: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = _context(cert, [alpn]).wrap_socket(raw, server_hostname="localhost")
    assert sock.selected_alpn_protocol() == alpn, f"the listener did not choose {alpn}"
    return sock


def _h2_desktop(port: int, cert: Path, total: int) -> float:
    """Seconds to read total bytes from /source on a stream of an HTTP/2 connection (from the stream's opening)."""
    sock = _connect(port, cert, "h2")
    client = _H2Client()
    into = memoryview(bytearray(_READ))

    def exchange() -> None:
        if client.out:
            sock.sendall(client.out)
            client.out.clear()
        size = sock.recv_into(into)
        if not size:
            raise ConnectionError("the gateway closed the connection")
        client.feed(into[:size])

    try:
        while not client.settings:
            exchange()
        started = time.perf_counter()
        stream_id = client.open("/source")
        client.send(stream_id, _frame(2, f"65536 {total // 65536}\n".encode()))
        stream = client.streams[stream_id]
        while stream.frames.payload < total:
            if stream.ended:
                raise ConnectionError(f"the stream ended early: status {stream.status}, reset {stream.reset}")
            exchange()
        elapsed = time.perf_counter() - started
        assert stream.status == 200, stream.status
        client.reset(stream_id)
        sock.sendall(client.out)
        return elapsed
    finally:
        sock.close()


def _wss_desktop(port: int, cert: Path, total: int) -> float:
    """Seconds to read total bytes from /source on a new wss session (from its TLS connection)."""
    started = time.perf_counter()
    sock = _connect(port, cert, "http/1.1")
    try:
        sock.sendall(_UPGRADE.replace(b"/echo", b"/source"))
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
        sock.sendall(_frame(2, f"65536 {total // 65536}\n".encode()))
        into = memoryview(bytearray(_READ))
        while frames.payload < total:
            size = sock.recv_into(into)
            if not size:
                raise ConnectionError("the gateway closed the connection")
            frames.feed(into[:size])
        return time.perf_counter() - started
    finally:
        sock.close()


_LISTENING = re.compile(r"\S+:(\d+): listening on .* port=(\d+)\)")


def _ratio(a: float, b: float) -> str:
    """a/b to two places; "n/a" when b is 0 (CPU time is counted in ticks: a short smoke run may see none)."""
    return f"{a / b:.2f}" if b else "n/a"


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main(argv: Optional[list[str]] = None) -> None:
    """Run both figures, rounds times each path in turn, and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=3000, help="sessions per path (default 3000, over all rounds)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="sessions at once (default 32; 1: one after another)")
    parser.add_argument("--seconds", type=float, default=60.0, help="most seconds per path's sessions (default 60)")
    parser.add_argument("--mib", type=int, default=64, help="MiB for the desktop direction, per round (default 64)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each path in turn in each (default 3): ratios from the same minutes")
    parser.add_argument("--rsa", type=int, default=0, metavar="BITS",
                        help="an RSA certificate of BITS (e.g. 2048) instead of ECDSA P-256")
    args = parser.parse_args(argv)
    rounds = max(args.rounds, 1)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        cert, key = self_signed(tmp, args.rsa)
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
            figures: dict[str, dict[str, list[float]]] = {
                name: {"rate": [], "errors": [], "cpu_session": [], "client_session": [], "mib": [], "cpu_mib": [],
                       "client_mib": []}
                for name in ("h2", "h1")}
            for _ in range(rounds):
                for name, sessions, desktop, port in (("h2", _h2_sessions, _h2_desktop, h2_port),
                                                      ("h1", _wss_sessions, _wss_desktop, h1_port)):
                    figure = figures[name]
                    used, own = cpu_seconds(cpu), time.process_time()
                    result = uvloop.run(sessions(port, cert, args.concurrency, max(args.sessions // rounds, 1),
                                                 args.seconds / rounds))
                    done = max(result["sessions"], 1)
                    figure["rate"].append(result["per_second"])
                    figure["errors"].append(result["errors"])
                    figure["cpu_session"].append((cpu_seconds(cpu) - used) / done)
                    figure["client_session"].append((time.process_time() - own) / done)
                    used, own = cpu_seconds(cpu), time.process_time()
                    figure["mib"].append(args.mib / desktop(port, cert, total))
                    figure["cpu_mib"].append((cpu_seconds(cpu) - used) / args.mib)
                    figure["client_mib"].append((time.process_time() - own) / args.mib)
        except BaseException:
            print(gateway.log()[-3000:])
            raise
        finally:
            gateway.stop()
            backends.stop()
    h2 = {key: _median(values) for key, values in figures["h2"].items()}
    h1 = {key: _median(values) for key, values in figures["h1"].items()}
    errors = sum(figures["h2"]["errors"]) + sum(figures["h1"]["errors"])

    def each(key: str) -> str:
        return " / ".join(f"{a / b:.2f}" for a, b in zip(figures["h2"][key], figures["h1"][key]))

    print(f"certificate: {f'RSA-{args.rsa}' if args.rsa else 'ECDSA P-256'}; medians of {rounds} rounds")
    print(f"new sessions/s, {args.concurrency} at once: h2 streams on one connection {h2['rate']:.0f}, "
          f"wss HTTP/1.1 {h1['rate']:.0f} (ratio {h2['rate'] / h1['rate']:.2f}; rounds {each('rate')})"
          + (f" errors: h2 {sum(figures['h2']['errors']):.0f}, wss {sum(figures['h1']['errors']):.0f}"
             if errors else ""))
    print(f"desktop direction MiB/s: h2 stream {h2['mib']:.0f}, wss HTTP/1.1 {h1['mib']:.0f} "
          f"(ratio {h2['mib'] / h1['mib']:.2f}; rounds {each('mib')})")
    print(f"gateway CPU ms per session: h2 {h2['cpu_session'] * 1000:.2f}, wss HTTP/1.1 {h1['cpu_session'] * 1000:.2f} "
          f"(wss/h2 {_ratio(h1['cpu_session'], h2['cpu_session'])}); "
          f"per MiB: h2 {h2['cpu_mib'] * 1000:.2f}, wss HTTP/1.1 {h1['cpu_mib'] * 1000:.2f} "
          f"(wss/h2 {_ratio(h1['cpu_mib'], h2['cpu_mib'])})")
    print(f"bench client CPU ms per session: h2 {h2['client_session'] * 1000:.2f}, "
          f"wss HTTP/1.1 {h1['client_session'] * 1000:.2f}; per MiB: h2 {h2['client_mib'] * 1000:.2f}, "
          f"wss HTTP/1.1 {h1['client_mib'] * 1000:.2f}")


if __name__ == "__main__":
    main()
