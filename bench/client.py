"""
The load client, run in its own process: ``python -m bench.client JOB`` where
JOB is JSON, and one JSON result line is printed on stdout.

It speaks WebSocket by hand on plain (or TLS) sockets so that it costs the
gateway-under-test as little CPU as possible: client frames are built once
(masked with websockets' C ``apply_mask``) and written again and again, and
server frames are only walked header to header.  The same code speaks raw
TCP (``"kind": "tcp"``) to measure the direct-to-backend ceiling.

Jobs (``"job"``): ``upload``, ``download``, ``rtt``, ``sessions``, ``idle``.
The bench runs :mod:`bench.fastclient` (picows on uvloop) by default and this
client with ``--client plain``; the fast one reuses this one's frame builder
and handshake bytes, and its raw TCP stream jobs and idle job.
Every loop is bounded in count and by a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import socket
import ssl
import struct
import sys
import time
from typing import Any, Awaitable, Callable, Optional

from websockets.speedups import apply_mask  # type: ignore[import-not-found]

from bench.servers import raise_nofile

__all__ = ["Connection", "client_frame", "handshake_request", "main", "run_job", "session_loop"]

_MASK = os.urandom(4)
_RECV = 1 << 20


def frame_head(buf: "bytes | bytearray | memoryview", pos: int, end: int) -> Optional[tuple[int, int, int, int]]:
    """
    The frame header at buf[pos:end]: (first byte, second byte, payload
    length, header size without the mask), or None while incomplete.
    """
    if end - pos < 2:
        return None
    b0, b1 = buf[pos], buf[pos + 1]
    length, head = b1 & 0x7F, 2
    if length == 126:
        head = 4
        if end - pos < head:
            return None
        length = struct.unpack_from("!H", buf, pos + 2)[0]
    elif length == 127:
        head = 10
        if end - pos < head:
            return None
        length = struct.unpack_from("!Q", buf, pos + 2)[0]
    return b0, b1, length, head


def client_frame(payload: bytes, opcode: int = 2, mask: bytes = _MASK) -> bytes:
    """A final, masked client frame carrying payload."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + mask + apply_mask(payload, mask)


def handshake_request(host: str, port: int, path: str, secure: bool = False) -> bytes:
    """An opening handshake offering the ``binary`` subprotocol, from a page of the server's own origin."""
    key = base64.b64encode(os.urandom(16)).decode()
    scheme = "https" if secure else "http"
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: binary\r\nOrigin: {scheme}://{host}:{port}\r\n\r\n").encode()


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """Made once (``create_default_context`` would load the system's CA bundle for every connection)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Connection:
    """
    One blocking client connection, WebSocket (``ws``/``wss``) or raw TCP
    (``tcp``): :meth:`send` writes prepared bytes, :meth:`receive` returns
    payload bytes from the peer.
    """

    def __init__(self, target: dict[str, Any], timeout: float = 30.0) -> None:
        self.kind = target["kind"]
        self.ws = self.kind in ("ws", "wss")
        sock = socket.create_connection((target["host"], target["port"]), timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.kind == "wss":
            sock = _tls_context().wrap_socket(sock)
        self.sock = sock
        self.buf = bytearray()
        self.need = 0  # payload bytes left in the current frame
        self.data_frame = True
        self.closed = False
        self._scratch = bytearray(_RECV)
        if self.ws:
            sock.sendall(handshake_request(target["host"], target["port"], target.get("path", "/"),
                                           self.kind == "wss"))
            while b"\r\n\r\n" not in self.buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed during the handshake")
                self.buf += chunk
            head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(f"handshake refused: {head.splitlines()[0]!r}")
            self.buf = bytearray(rest)

    def frame(self, payload: bytes) -> bytes:
        """payload as this connection sends it (a frame, or itself on raw TCP)."""
        return client_frame(payload) if self.ws else payload

    def send(self, data: bytes) -> None:
        """Write prepared bytes."""
        self.sock.sendall(data)

    def _walk(self, keep: Optional[bytearray]) -> int:
        """Consume buffered frames; return the data payload bytes seen (kept in keep)."""
        buf, pos, got = self.buf, 0, 0
        end = len(buf)
        while True:
            if self.need:
                take = min(self.need, end - pos)
                if self.data_frame:
                    got += take
                    if keep is not None:
                        keep += buf[pos:pos + take]
                pos += take
                self.need -= take
                if self.need:
                    break
            parsed = frame_head(buf, pos, end)
            if parsed is None:
                break
            b0, _, length, head = parsed
            opcode = b0 & 0x0F
            if opcode == 8:
                self.closed = True
            self.data_frame = opcode < 8
            self.need = length
            pos += head
        del buf[:pos]
        return got

    def receive(self, total: int, keep: bool = False, deadline: float = 60.0) -> bytes | int:
        """Read until total payload bytes arrived; return them (keep) or their count."""
        kept = bytearray() if keep else None
        got = 0
        limit = time.monotonic() + deadline
        if not self.ws:
            got = len(self.buf)
            if kept is not None:
                kept += self.buf
            self.buf.clear()
        else:
            got = self._walk(kept)
        if not self.ws and kept is None:
            return got + self._count(total - got, limit)
        while got < total:
            if time.monotonic() > limit:
                raise TimeoutError(f"received {got} of {total} bytes")
            chunk = self.sock.recv(_RECV)
            if not chunk:
                raise ConnectionError(f"closed after {got} of {total} bytes")
            if self.ws:
                self.buf += chunk
                got += self._walk(kept)
            else:
                got += len(chunk)
                if kept is not None:
                    kept += chunk
        return bytes(kept) if kept is not None else got

    def _count(self, total: int, limit: float) -> int:
        """Raw TCP: read total bytes into one reused buffer (no allocation per read); return the count."""
        view = memoryview(self._scratch)
        got = 0
        while got < total:
            if time.monotonic() > limit:
                raise TimeoutError(f"received {got} of {total} bytes")
            n = self.sock.recv_into(view)
            if not n:
                raise ConnectionError(f"closed after {got} of {total} bytes")
            got += n
        return got

    def close(self) -> None:
        """Send a close frame (WebSocket) and close the socket."""
        try:
            if self.ws:
                self.sock.sendall(client_frame(struct.pack("!H", 1000), opcode=8))
            self.sock.close()
        except OSError:
            pass


def _upload(target: dict[str, Any], size: int, count: int) -> dict[str, Any]:
    """Send count messages of size bytes to the sink; time until it says done."""
    c = Connection(target)
    frame = c.frame(b"u" * size)
    batch = max(1, 65536 // len(frame))
    burst, left = frame * batch, count
    start = time.perf_counter()
    c.send(c.frame(f"{size * count}\n".encode()))
    while left >= batch:
        c.send(burst)
        left -= batch
    if left:
        c.send(frame * left)
    answer = c.receive(5, keep=True)
    elapsed = time.perf_counter() - start
    c.close()
    assert answer == b"done\n", answer
    return {"bytes": size * count, "seconds": elapsed, "mbps": size * count / elapsed / 1e6}


def _download(target: dict[str, Any], size: int, count: int) -> dict[str, Any]:
    """Ask the source for count chunks of size bytes; time their arrival."""
    c = Connection(target)
    start = time.perf_counter()
    c.send(c.frame(f"{size} {count}\n".encode()))
    c.receive(size * count)
    elapsed = time.perf_counter() - start
    c.close()
    return {"bytes": size * count, "seconds": elapsed, "mbps": size * count / elapsed / 1e6}


def _rtt(target: dict[str, Any], count: int, size: int = 64) -> dict[str, Any]:
    """Echo round trips of size-byte messages, one at a time: p50 and p99 in µs."""
    c = Connection(target)
    frame = c.frame(b"r" * size)
    samples = []
    for i in range(count + count // 10):
        t0 = time.perf_counter_ns()
        c.send(frame)
        c.receive(size)
        if i >= count // 10:  # the first tenth warms up
            samples.append((time.perf_counter_ns() - t0) / 1000)
    c.close()
    samples.sort()
    return {"count": len(samples), "p50_us": samples[len(samples) // 2],
            "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))]}


async def _one_session(target: dict[str, Any], source: str, ws_frame: bytes, close: bytes) -> None:
    reader, writer = await asyncio.open_connection(target["host"], target["port"], local_addr=(source, 0))
    try:
        if target["kind"] == "ws":
            writer.write(handshake_request(target["host"], target["port"], target["path"]))
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(f"handshake refused: {head.splitlines()[0]!r}")
            writer.write(ws_frame)
            echo = await reader.readexactly(3)  # a 1-byte binary frame
            if echo[2:] != b"x":
                raise ConnectionError(f"bad echo {echo!r}")
            writer.write(close)
            # Wait for the server's close frame (or its end of the connection).
            await reader.read(16)
        else:
            writer.write(b"x")
            if await reader.readexactly(1) != b"x":
                raise ConnectionError("bad echo")
    finally:
        writer.close()


def _sources(n: int) -> list[str]:
    """Loopback source addresses that spread connections over more port ranges."""
    return [f"127.0.0.{2 + i}" for i in range(n)]


async def session_loop(one: Callable[[str], Awaitable[None]], concurrency: int, count: int,
                       seconds: float) -> dict[str, Any]:
    """
    Run one(source address) by concurrency workers until count sessions were
    started or seconds passed (each bounded to 10 s); count sessions and errors.
    """
    sources = _sources(16)
    done = errors = started = 0
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal done, errors, started
        while started < count and time.perf_counter() < deadline:
            started += 1
            try:
                await asyncio.wait_for(one(sources[(i + started) % len(sources)]), 10)
                done += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"sessions": done, "errors": errors, "seconds": elapsed, "per_second": done / elapsed}


async def _sessions(target: dict[str, Any], concurrency: int, count: int, seconds: float) -> dict[str, Any]:
    """New sessions (connect, handshake, 1-byte echo, close) by concurrency workers."""
    ws_frame, close = client_frame(b"x"), client_frame(struct.pack("!H", 1000), opcode=8)
    return await session_loop(lambda source: _one_session(target, source, ws_frame, close), concurrency, count, seconds)


async def _idle(target: dict[str, Any], count: int, concurrency: int = 64) -> dict[str, Any]:
    """Open count sessions and keep them until stdin closes; report when all are open."""
    sources = _sources(32)
    writers: list[asyncio.StreamWriter] = []
    errors = 0
    next_index = 0

    async def opener() -> None:
        nonlocal next_index, errors
        while next_index < count:
            i = next_index
            next_index += 1
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(target["host"], target["port"], local_addr=(sources[i % len(sources)], 0)), 10)
                writer.write(handshake_request(target["host"], target["port"], target["path"]))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                if not head.startswith(b"HTTP/1.1 101"):
                    raise ConnectionError(head.splitlines()[0].decode())
                writers.append(writer)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(opener() for _ in range(concurrency)))
    print(json.dumps({"opened": len(writers), "errors": errors, "seconds": time.perf_counter() - start}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for w in writers:
        w.close()
    await asyncio.wait_for(asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True), 30)
    return {"closed": len(writers)}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job description and return its result."""
    kind = job["job"]
    target = job["target"]
    if kind == "upload":
        return _upload(target, job["size"], job["count"])
    if kind == "download":
        return _download(target, job["size"], job["count"])
    if kind == "rtt":
        return _rtt(target, job["count"])
    if kind == "sessions":
        return asyncio.run(_sessions(target, job["concurrency"], job["count"], job["seconds"]))
    if kind == "idle":
        return asyncio.run(_idle(target, job["count"]))
    raise ValueError(f"unknown job {kind!r}")


def main(run: Callable[[dict[str, Any]], dict[str, Any]] = run_job) -> None:
    """Run the job given as JSON in argv[1] with run; print the result, with the CPU time it took, as JSON."""
    raise_nofile()
    job = json.loads(sys.argv[1])
    cpu = time.process_time()
    result = run(job)
    # The client's own CPU time for the job: how close the client itself is to being the limit.
    result["client_cpu_seconds"] = time.process_time() - cpu
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
