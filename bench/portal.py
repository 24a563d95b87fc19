"""
A small forward-auth portal for the ``auth=`` route's figures, run as
``python -m bench.portal``: an HTTP/1.1 server on loopback (keep-alive, as
the gateway's connection pool expects) that admits every ``GET`` with
``200`` and an ``X-Tunnelgw-User`` and counts the questions it was asked.

It prints one JSON line ``{"port": PORT}`` once listening; each line read on
stdin is answered with ``{"asked": N}`` on stdout; it exits when stdin
closes.  Requests with a body, or heads over 16 KiB, get ``400`` and the
connection is closed.
"""

from __future__ import annotations

import asyncio
import json
import sys

__all__ = ["main"]

_HEAD_LIMIT = 16384
_ADMIT = (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Tunnelgw-User: bench\r\n"
          b"Cache-Control: no-store\r\n\r\n")
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Portal(asyncio.Protocol):
    """One connection: answer each request head in turn."""

    asked = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if not found:
                if len(self.buffer) > _HEAD_LIMIT:
                    self._refuse()
                return
            lines = head.split(b"\r\n")
            if not lines[0].startswith(b"GET ") or any(line.lower().startswith((b"content-length:", b"transfer-encoding:"))
                                                       for line in lines[1:]):
                self._refuse()
                return
            self.buffer = rest
            _Portal.asked += 1
            self.transport.write(_ADMIT)

    def _refuse(self) -> None:
        self.transport.write(_BAD)
        self.transport.close()
        self.buffer = b""


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Portal, "127.0.0.1", 0, backlog=1024)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():  # a line asks for the count; end of input ends the portal
        print(json.dumps({"asked": _Portal.asked}), flush=True)
    server.close()


def main() -> None:
    """Serve until stdin closes."""
    asyncio.run(_serve())


if __name__ == "__main__":
    main()
