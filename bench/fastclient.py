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

The desktops job (this client's own) holds hundreds of sessions at once,
each a viewer of a :mod:`bench.desktop` desktop: screen bytes counted,
input events sent by one ticker for all, their answers timed.

Every loop is bounded in count and by a deadline.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import struct
import time
from typing import Any, Callable, Optional

import uvloop
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench import client as plain
from bench import desktop

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


@functools.lru_cache(maxsize=1)
def _tls() -> ssl.SSLContext:
    """
    The client's TLS context, made once: ``create_default_context`` loads the
    system's CA bundle, tens of milliseconds of client CPU that a context per
    connection paid on every new wss session (a browser keeps its context too).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
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


class _Viewer:
    """
    One desktop's viewer: finds the desktop's input answers among its screen
    bytes (records of :mod:`bench.desktop`, however the stream was cut into
    messages) and times each answer from the send time it carries.
    """

    def __init__(self, transport: WSTransport, listener: _Listener, rtts: list[float]) -> None:
        self.transport, self.listener, self.rtts = transport, listener, rtts
        self.head = bytearray()
        self.kind, self.need = b"", 0
        self.answer = bytearray()
        self.screen_bytes = 0
        self.measuring = False
        listener.on_data = self.received

    def received(self, frame: WSFrame) -> None:
        view = frame.get_payload_as_memoryview()
        i, n = 0, len(view)
        while i < n:
            if not self.need:
                take = min(desktop.RECORD.size - len(self.head), n - i)
                self.head += view[i:i + take]
                i += take
                if len(self.head) < desktop.RECORD.size:
                    return
                self.kind, self.need = desktop.RECORD.unpack(self.head)
                self.head.clear()
                self.answer.clear()
                continue
            take = min(self.need, n - i)
            if self.kind == b"I":
                self.answer += view[i:i + take]
            elif self.measuring:
                self.screen_bytes += take
            i += take
            self.need -= take
            if not self.need and self.kind == b"I" and self.measuring:
                self.rtts.append((time.perf_counter_ns() - int.from_bytes(self.answer[:8], "big")) / 1e6)

    def send_input(self) -> None:
        """One input event: the send time and padding, INPUT_BYTES in all."""
        if not self.transport.is_disconnected:
            self.transport.send(WSMsgType.BINARY, time.perf_counter_ns().to_bytes(8, "big") + _PADDING)


_PADDING = bytes(desktop.INPUT_BYTES - 8)


async def _desktops(job: dict[str, Any]) -> dict[str, Any]:
    """
    The desktops job: for each count in ``steps``, as many viewers of
    :mod:`bench.desktop` desktops (opened 50 at a time, each within 10 s),
    each sending INPUT_HZ input events a second (one ticker for all, the
    viewers' phases spread); after a second's warm-up, ``seconds`` of
    measurement: the input round trips' p50/p99, the screen bytes that
    arrived against those sent, the CPU of the processes under test
    (``cpu_of`` and their descendants) and of this client, and the system
    calls of the processes under test per message relayed
    (:class:`bench.procs.SyscallCount`; None without ``perf``).  After a step of
    at least ``report_up_to`` viewers that misses ``p99_limit_ms`` or
    ``cpu_limit`` cores, no larger step is run; the job ends by
    ``max_seconds`` in any case.
    """
    from bench.procs import SyscallCount, cpu_seconds, process_tree

    target, seconds = job["target"], float(job["seconds"])
    deadline = time.monotonic() + float(job.get("max_seconds", 600))
    viewers: list[_Viewer] = []
    rtts: list[float] = []
    steps: list[dict[str, Any]] = []
    errors, last_error = 0, ""
    slots = 10
    stop_ticker = asyncio.Event()

    async def one() -> Optional[_Viewer]:
        nonlocal errors, last_error
        try:
            transport, listener = await asyncio.wait_for(_connect(target, 65536), 10)
        except Exception as e:  # refused, timed out, or a handshake picows rejects: counted, the step goes on
            errors += 1
            last_error = repr(e)
            return None
        return _Viewer(transport, listener, rtts)

    async def ticker() -> None:
        period, slot = 1 / (desktop.INPUT_HZ * slots), 0
        next_at = time.monotonic()
        while not stop_ticker.is_set():
            for v in viewers[slot::slots]:
                v.send_input()
            slot = (slot + 1) % slots
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    tick = asyncio.ensure_future(ticker())
    try:
        for count in job["steps"]:
            if time.monotonic() + seconds + 1 > deadline:
                break
            step_errors = errors
            while len(viewers) < count and time.monotonic() < deadline:
                opened = await asyncio.gather(*(one() for _ in range(min(50, count - len(viewers)))))
                viewers.extend(v for v in opened if v is not None)
                if errors - step_errors > max(10, count // 10):
                    break
            await asyncio.sleep(1.0)  # warm-up: every viewer's first screens and inputs are under way
            rtts.clear()
            for v in viewers:
                v.screen_bytes, v.measuring = 0, True
            pids = process_tree(job["cpu_of"])
            calls = SyscallCount(pids, seconds)
            cpu0, own0, t0 = cpu_seconds(pids), time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            elapsed = time.monotonic() - t0
            syscalls = calls.result()
            cores, own = (cpu_seconds(pids) - cpu0) / elapsed, (time.process_time() - own0) / elapsed
            for v in viewers:
                v.measuring = False
            samples = sorted(rtts)
            screens = sum(v.screen_bytes for v in viewers) / (
                max(1, len(viewers)) * desktop.SCREEN_BYTES * desktop.SCREEN_HZ * elapsed)
            p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] if samples else float("inf")
            # Messages relayed: the screens delivered, each input and its answer (one per round trip timed).
            messages = screens * len(viewers) * desktop.SCREEN_HZ * elapsed + 2 * len(samples)
            step = {"desktops": len(viewers), "asked": count, "errors": errors - step_errors, "samples": len(samples),
                    "p50_ms": samples[len(samples) // 2] if samples else float("inf"), "p99_ms": p99,
                    "cores": cores, "client_cores": own, "screens_delivered": screens,
                    "syscalls_per_message": syscalls / messages if syscalls is not None and messages else None}
            step["carried"] = (len(viewers) >= count and p99 <= job["p99_limit_ms"] and cores <= job["cpu_limit"]
                               and len(samples) > 0)
            steps.append(step)
            if not step["carried"] and count >= job["report_up_to"]:
                break
    finally:
        stop_ticker.set()
        tick.cancel()
        for v in viewers:
            if not v.transport.is_disconnected:
                v.transport.send_close(WSCloseCode.OK)
                v.transport.disconnect()
    return {"steps": steps, "errors": errors, "last_error": last_error}


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
    if kind == "desktops":
        return uvloop.run(_desktops(job))
    raise ValueError(f"unknown job {kind!r}")


def main() -> None:
    """Run the job given as JSON in argv[1] (as :func:`bench.client.main` does, with this client's jobs)."""
    plain.main(run_job)


if __name__ == "__main__":
    main()
