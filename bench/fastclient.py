"""
The compiled load client: picows (a Cython WebSocket parser and framer) on
uvloop, run as ``python -m bench.fastclient JOB`` with the same JSON job and
result as :mod:`bench.client`.

Each job is driven from picows' frame callback, with no task switch per
message: a frame is looked at through :class:`picows.WSFrame` (its size, or
a ``memoryview`` of its payload) and never copied into Python bytes.  Client
frames for the upload job are masked and framed once and written in batches
of about 64 KiB straight to the uvloop transport, as :mod:`bench.client`
does, because picows' ``WSTransport.send`` makes one ``write`` system call per
frame; every other frame is sent with ``WSTransport.send``.  Raw TCP targets
(the direct-to-backend ceiling) run the sessions job on uvloop as well and the
stream jobs on the blocking-socket code of :mod:`bench.client`.

Every loop is bounded in count and by a deadline.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import time
from typing import Any, Callable, Optional

import uvloop
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench import client as plain

__all__ = ["main", "run_job"]

#: How long one job may take, whatever its counts.
_JOB_SECONDS = 120.0
_BATCH = 65536


def _url(target: dict[str, Any]) -> str:
    return f"{target['kind']}://{target['host']}:{target['port']}{target.get('path', '/')}"


def _headers(target: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``binary`` subprotocol and an Origin of the server's own host, as the gateways check."""
    scheme = "https" if target["kind"] == "wss" else "http"
    return [("Sec-WebSocket-Protocol", "binary"), ("Origin", f"{scheme}://{target['host']}:{target['port']}")]


def _tls() -> Optional[ssl.SSLContext]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _Listener(WSListener):
    """
    One client connection: data frames go to :attr:`on_data` (a callable
    over the frame), a close frame ends the connection, and writing pauses
    are kept in :attr:`writable`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.on_data: Callable[[WSFrame], None] = lambda frame: None
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.BINARY or kind == WSMsgType.TEXT or kind == WSMsgType.CONTINUATION:
            self.on_data(frame)
        elif kind == WSMsgType.CLOSE:
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


async def _connect(target: dict[str, Any], buffer: int = 1 << 20, **kwargs: Any) -> tuple[WSTransport, _Listener]:
    """
    A connection whose read buffer starts at buffer bytes (it grows as
    needed), on uvloop's own transport (not aiofastnet's, even when it is
    installed: the bench extra does not ask for it).
    """
    transport, listener = await ws_connect(_Listener, _url(target), extra_headers=_headers(target),
                                           ssl_context=_tls() if target["kind"] == "wss" else None,
                                           websocket_handshake_timeout=10, enable_auto_pong=True,
                                           max_frame_size=64 << 20, read_buffer_init_size=buffer,
                                           use_aiofastnet=False, **kwargs)
    assert isinstance(listener, _Listener)
    return transport, listener


async def _close(transport: WSTransport, listener: _Listener) -> None:
    """The closing handshake, bounded; then the connection is dropped whatever the peer did."""
    if not transport.is_disconnected:
        transport.send_close(WSCloseCode.OK)
        try:
            await asyncio.wait_for(asyncio.shield(listener.closed), 10)
        except asyncio.TimeoutError:
            transport.disconnect(graceful=False)


async def _until(future: "asyncio.Future[Any]", closed: "asyncio.Future[None]", what: str) -> Any:
    """future's result, or an error when the connection ends first or the job's time is up."""
    await asyncio.wait_for(asyncio.wait([future, closed], return_when=asyncio.FIRST_COMPLETED), _JOB_SECONDS)
    if not future.done():
        raise ConnectionError(f"connection ended before {what}")
    return future.result()


async def _upload(target: dict[str, Any], size: int, count: int) -> dict[str, Any]:
    """Send count messages of size bytes to the sink; time until it says done."""
    transport, listener = await _connect(target)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()

    def answer(frame: WSFrame) -> None:
        if not done.done():
            done.set_result(bytes(frame.get_payload_as_memoryview()))

    listener.on_data = answer
    frame = plain.client_frame(b"u" * size)
    batch = max(1, _BATCH // len(frame))
    burst, left = frame * batch, count
    raw = transport.underlying_transport
    deadline = time.monotonic() + _JOB_SECONDS
    start = time.perf_counter()
    transport.send(WSMsgType.BINARY, f"{size * count}\n".encode())
    while left > 0:
        if not listener.writable.is_set():
            await asyncio.wait_for(listener.writable.wait(), max(0.0, deadline - time.monotonic()))
        n = min(batch, left)
        raw.write(burst if n == batch else frame * n)
        left -= n
    got = await _until(done, listener.closed, "the sink answered")
    elapsed = time.perf_counter() - start
    await _close(transport, listener)
    assert got == b"done\n", got
    return {"bytes": size * count, "seconds": elapsed, "mbps": size * count / elapsed / 1e6}


async def _download(target: dict[str, Any], size: int, count: int) -> dict[str, Any]:
    """Ask the source for count chunks of size bytes; time their arrival."""
    transport, listener = await _connect(target)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    total, got = size * count, 0

    def counted(frame: WSFrame) -> None:
        nonlocal got
        got += frame.payload_size
        if got >= total and not done.done():
            done.set_result(None)

    listener.on_data = counted
    start = time.perf_counter()
    transport.send(WSMsgType.BINARY, f"{size} {count}\n".encode())
    await _until(done, listener.closed, f"{total} bytes arrived")
    elapsed = time.perf_counter() - start
    await _close(transport, listener)
    return {"bytes": total, "seconds": elapsed, "mbps": total / elapsed / 1e6}


async def _rtt(target: dict[str, Any], count: int, size: int = 64) -> dict[str, Any]:
    """Echo round trips of size-byte messages, one at a time, sent again from the frame callback: p50 and p99 in µs."""
    transport, listener = await _connect(target)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    payload = b"r" * size
    total, warm = count + count // 10, count // 10
    samples: list[float] = []
    got, rounds, t0 = 0, 0, 0

    def echoed(frame: WSFrame) -> None:
        nonlocal got, rounds, t0
        got += frame.payload_size
        if got < size:
            return
        now = time.perf_counter_ns()
        if rounds >= warm:
            samples.append((now - t0) / 1000)
        rounds += 1
        got -= size
        if rounds >= total:
            if not done.done():
                done.set_result(None)
            return
        t0 = time.perf_counter_ns()
        transport.send(WSMsgType.BINARY, payload)

    listener.on_data = echoed
    t0 = time.perf_counter_ns()
    transport.send(WSMsgType.BINARY, payload)
    await _until(done, listener.closed, f"{total} echoes")
    await _close(transport, listener)
    samples.sort()
    return {"count": len(samples), "p50_us": samples[len(samples) // 2],
            "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))]}


class _OneSession(asyncio.Protocol):
    """
    One new session on uvloop, from prepared bytes: the opening handshake (or
    nothing, on raw TCP), one byte echoed, the closing handshake.  The
    handshake answer is only checked for ``101``, as :mod:`bench.client` does.
    """

    def __init__(self, hello: bytes, ping: bytes, bye: bytes) -> None:
        self.hello, self.ping, self.bye = hello, ping, bye
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.state = "handshake" if hello else "echo"
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.hello or self.ping)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.state == "handshake":
            head, found, rest = self.buf.partition(b"\r\n\r\n")
            if not found:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                return self._fail(f"handshake refused: {head.splitlines()[0]!r}")
            self.buf, self.state = rest, "echo"
            self.transport.write(self.ping)  # type: ignore[union-attr]
        if self.state == "echo":
            want = 3 if self.hello else 1  # a 1-byte binary frame, or the byte itself
            if len(self.buf) < want:
                return
            if self.buf[want - 1:want] != b"x":
                return self._fail(f"bad echo {self.buf!r}")
            if not self.hello:
                self._finish()
                return
            self.buf, self.state = self.buf[want:], "closing"
            self.transport.write(self.bye)  # type: ignore[union-attr]
        if self.state == "closing" and self.buf:
            self._finish()  # the server's close frame (or its first bytes)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.state == "closing":
            self._finish()
        else:
            self._fail(f"closed in {self.state}")

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        self.transport.close()  # type: ignore[union-attr]

    def _fail(self, why: str) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(why))
        self.transport.close()  # type: ignore[union-attr]


async def _ws_session(target: dict[str, Any], source: str) -> None:
    """One session through picows' client (its Python handshake path): kept for comparison, see :func:`_sessions`."""
    transport, listener = await _connect(target, 4096, local_addr=(source, 0))
    try:
        echo: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def echoed(frame: WSFrame) -> None:
            if not echo.done():
                echo.set_result(bytes(frame.get_payload_as_memoryview()))

        listener.on_data = echoed
        transport.send(WSMsgType.BINARY, b"x")
        if await _until(echo, listener.closed, "the echo") != b"x":
            raise ConnectionError("bad echo")
        transport.send_close(WSCloseCode.OK)
        await listener.closed  # the caller bounds the session in time
    finally:
        transport.disconnect(graceful=False)


async def _prepared_session(target: dict[str, Any], source: str) -> None:
    ws = target["kind"] == "ws"
    hello = plain.handshake_request(target["host"], target["port"], target.get("path", "/")) if ws else b""
    ping = plain.client_frame(b"x") if ws else b"x"
    bye = plain.client_frame(struct.pack("!H", 1000), opcode=8) if ws else b""
    transport, protocol = await asyncio.get_running_loop().create_connection(
        lambda: _OneSession(hello, ping, bye), target["host"], target["port"], local_addr=(source, 0))
    try:
        await protocol.done
    finally:
        transport.close()  # also when the caller's deadline cancels the wait


async def _sessions(target: dict[str, Any], concurrency: int, count: int, seconds: float) -> dict[str, Any]:
    """New sessions (connect, handshake, 1-byte echo, close) by concurrency workers, as in :mod:`bench.client`."""
    # picows' ws_connect runs its handshake in Python (URL parsing, header
    # dictionaries): about 130 µs of client CPU per session against about
    # 40 µs for prepared bytes on uvloop, so sessions use _prepared_session
    # (wss too goes through picows, which the sessions figure does not use).
    one = _ws_session if target["kind"] == "wss" else _prepared_session
    return await plain.session_loop(lambda source: one(target, source), concurrency, count, seconds)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job description (the format of :func:`bench.client.run_job`) and return its result."""
    kind, target = job["job"], job["target"]
    if kind == "idle" or (target["kind"] == "tcp" and kind != "sessions"):
        return plain.run_job(job)
    if kind == "upload":
        return uvloop.run(_upload(target, job["size"], job["count"]))
    if kind == "download":
        return uvloop.run(_download(target, job["size"], job["count"]))
    if kind == "rtt":
        return uvloop.run(_rtt(target, job["count"]))
    if kind == "sessions":
        return uvloop.run(_sessions(target, job["concurrency"], job["count"], job["seconds"]))
    raise ValueError(f"unknown job {kind!r}")


def main() -> None:
    """Run the job given as JSON in argv[1] (as :func:`bench.client.main` does, with this client's jobs)."""
    plain.main(run_job)


if __name__ == "__main__":
    main()
