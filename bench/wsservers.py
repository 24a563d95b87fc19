"""
A loopback WebSocket backend for the WS->WS figures, run in its own process
(``python -m bench.wsservers``): the same *echo*, *sink* and *source* as
:mod:`bench.servers`, spoken over WebSocket on one port, chosen by path
(``/echo``, ``/sink``, ``/source``).

It is written by hand on an asyncio Protocol in the style of the load client
so that it costs as little CPU as possible: the sink walks frame headers and
counts payload bytes without unmasking them, the source writes prepared frames
in batches of about 64 KiB, and the echo unmasks with websockets' C
``apply_mask``.  Close frames are answered, pings get pongs.

The process prints one JSON line ``{"port": PORT}`` once listening and exits
when stdin closes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import sys
from typing import Optional

from websockets.speedups import apply_mask  # type: ignore[import-not-found]

from bench.client import frame_head
from bench.servers import raise_nofile

__all__ = ["WsBackend", "main", "server_frame"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD = 16384


def server_frame(payload: bytes, opcode: int = 2, fin: bool = True) -> bytes:
    """An unmasked server frame carrying payload."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", b0, n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 126, n)
    else:
        head = struct.pack("!BBQ", b0, 127, n)
    return head + payload


class WsBackend(asyncio.Protocol):
    """One WebSocket connection: handshake, then echo, sink or source by path."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=1 << 20)
        self.buf = bytearray()
        self.mode: Optional[str] = None  # None until the handshake is done
        self.in_frame = False
        self.need = 0  # payload bytes left in the current frame
        self.b0 = 0
        self.mask = b""
        self.keep = True  # collect the current frame's payload (else only count it)
        self.payload = bytearray()
        self.head_line = b""  # the sink's / source's first line, until it is complete
        self.left = -1  # sink: payload bytes still expected (-1: TOTAL not read yet)
        self.paused = False
        self.batches = 0

    # -- handshake ---------------------------------------------------------

    def _handshake(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > _MAX_HEAD:
                self.transport.close()
            return False
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        parts = head[0].split()
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        path = parts[1].split("?")[0] if len(parts) == 3 else ""
        mode = path.rstrip("/").rsplit("/", 1)[-1]
        key = headers.get("sec-websocket-key")
        if parts[0] != "GET" or mode not in ("echo", "sink", "source") or not key:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
            return False
        accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        proto = "Sec-WebSocket-Protocol: binary\r\n" if "binary" in offered else ""
        self.transport.write((f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              f"Sec-WebSocket-Accept: {accept}\r\n{proto}\r\n").encode())
        self.mode = mode
        return True

    # -- frames ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.mode is None:
            self.buf += data
            if not self._handshake():
                return
            data, self.buf = bytes(self.buf), bytearray()
        elif self.buf:  # a partial frame header was left over
            data, self.buf = bytes(self.buf) + data, bytearray()
        self._frames(memoryview(data))

    def _frames(self, buf: memoryview) -> None:
        """Walk the frames in buf (payloads are only sliced when collected); keep a partial header."""
        pos, end = 0, len(buf)
        while True:
            if not self.in_frame:
                parsed = frame_head(buf, pos, end)
                if parsed is None:
                    break
                b0, b1, length, head = parsed
                masked = b1 & 0x80
                if end - pos < head + (4 if masked else 0):
                    break
                self.mask = bytes(buf[pos + head:pos + head + 4]) if masked else b""
                pos += head + (4 if masked else 0)
                self.b0, self.need, self.in_frame = b0, length, True
                opcode = b0 & 0x0F
                # The sink only counts its data frames once it knows TOTAL.
                self.keep = opcode >= 8 or self.mode != "sink" or self.left < 0
                self.payload = bytearray()
            take = min(self.need, end - pos)
            if self.keep:
                self.payload += buf[pos:pos + take]
            else:
                self.left -= take
                if self.left == 0:
                    self.transport.write(server_frame(b"done\n"))
            pos += take
            self.need -= take
            if self.need:
                break
            self.in_frame = False
            if self.keep and not self._frame_done():
                return
        self.buf = bytearray(buf[pos:])

    def _frame_done(self) -> bool:
        """Act on a whole collected frame; return False once the connection is closing."""
        opcode = self.b0 & 0x0F
        data = apply_mask(bytes(self.payload), self.mask) if self.mask else bytes(self.payload)
        if opcode == 8:
            self.transport.write(server_frame(data[:2], opcode=8))
            self.transport.close()
            return False
        if opcode == 9:
            self.transport.write(server_frame(data, opcode=10))
            return True
        if opcode == 10:
            return True
        if self.mode == "echo":
            self.transport.write(server_frame(data, opcode=opcode, fin=bool(self.b0 & 0x80)))
        elif self.mode == "sink" and self.left < 0:
            self._sink_head(data)
        elif self.mode == "sink":
            self.left -= len(data)
            if self.left == 0:
                self.transport.write(server_frame(b"done\n"))
        elif self.mode == "source" and self.batches == 0 and b"\n" not in self.head_line:
            self._source_head(data)
        return True

    def _sink_head(self, data: bytes) -> None:
        self.head_line += data
        if b"\n" not in self.head_line:
            return
        line, _, rest = self.head_line.partition(b"\n")
        self.left = int(line) - len(rest)
        if self.left == 0:
            self.transport.write(server_frame(b"done\n"))

    def _source_head(self, data: bytes) -> None:
        self.head_line += data
        if b"\n" not in self.head_line:
            return
        size, count = (int(x) for x in self.head_line.partition(b"\n")[0].split())
        frame = server_frame(b"s" * size)
        per_batch = max(1, 65536 // len(frame))
        self.chunk = frame * per_batch
        self.last = frame * (count % per_batch)
        self.batches = count // per_batch + 1  # +1: the last, partial batch
        self._pump()

    def _pump(self) -> None:
        while self.batches > 1 and not self.paused:
            self.batches -= 1
            self.transport.write(self.chunk)
        if self.batches == 1 and not self.paused:
            self.batches = -1  # done: wait for the client's close
            if self.last:
                self.transport.write(self.last)

    def pause_writing(self) -> None:
        self.paused = True
        if self.mode == "echo":
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.mode == "echo":
            self.transport.resume_reading()
        elif self.mode == "source" and self.batches > 0:
            self._pump()


async def _serve(host: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(WsBackend, host, 0, backlog=4096, reuse_address=True)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # run until the parent closes our stdin
    server.close()


def main() -> None:
    """Serve the WebSocket echo, sink and source on loopback until stdin closes."""
    raise_nofile()
    asyncio.run(_serve(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"))


if __name__ == "__main__":
    main()
