"""
Simulated remote desktops for the **desktops** figure, run as
``python -m bench.desktop``: a TCP server on loopback (uvloop) where every
connection is one desktop that

- sends a screen update of :data:`SCREEN_BYTES` every 1/:data:`SCREEN_HZ` s
  (the connections' phases spread over the period, as real desktops are not
  in step), and
- answers each input event of :data:`INPUT_BYTES` that it reads at once,
  with the event itself.

What a desktop writes is a stream of records, a 5-byte header (kind ``S``
for a screen update or ``I`` for an input answer, then the body's length,
big-endian) and the body, so that a client can find the answers among the
screen bytes however a gateway cuts the stream into WebSocket messages.
A screen update that finds the connection's write buffer over
:data:`BACKLOG_LIMIT` is skipped (a desktop does not queue screens for a
viewer that cannot keep up), and counted.

It prints one JSON line ``{"port": PORT}`` once listening and exits when
stdin closes.  All timing comes from one ticker, not a timer per desktop.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from typing import Optional

__all__ = ["BACKLOG_LIMIT", "INPUT_BYTES", "INPUT_HZ", "RECORD", "SCREEN_BYTES", "SCREEN_HZ", "main"]

SCREEN_BYTES = 20_000
SCREEN_HZ = 10
INPUT_BYTES = 100
INPUT_HZ = 20
#: A record's header: kind (b"S" or b"I") and body length.
RECORD = struct.Struct("!cI")
#: Unsent bytes past which a screen update is skipped.
BACKLOG_LIMIT = 1 << 20
#: Ticks per screen period: each tick serves the desktops of one slot.
_SLOTS = 10

_SCREEN = RECORD.pack(b"S", SCREEN_BYTES) + bytes(SCREEN_BYTES)
_ANSWER_HEAD = RECORD.pack(b"I", INPUT_BYTES)


class _Desktop(asyncio.Protocol):
    """One desktop: screen updates by the ticker, input answered as it arrives."""

    desktops: list[set["_Desktop"]] = [set() for _ in range(_SLOTS)]
    joined = 0
    skipped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.pending = b""
        self.slot = _Desktop.joined % _SLOTS
        _Desktop.joined += 1
        _Desktop.desktops[self.slot].add(self)

    def data_received(self, data: bytes) -> None:
        data = self.pending + data if self.pending else data
        whole = len(data) - len(data) % INPUT_BYTES
        if whole:
            self.transport.writelines([chunk for i in range(0, whole, INPUT_BYTES)
                                       for chunk in (_ANSWER_HEAD, data[i:i + INPUT_BYTES])])
        self.pending = data[whole:]

    def connection_lost(self, exc: Optional[Exception]) -> None:
        _Desktop.desktops[self.slot].discard(self)

    def screen(self) -> None:
        """Send one screen update, unless the viewer is already that far behind."""
        if self.transport.get_write_buffer_size() > BACKLOG_LIMIT:
            _Desktop.skipped += 1
            return
        self.transport.write(_SCREEN)


async def _tick() -> None:
    """Every 1/(SCREEN_HZ * _SLOTS) s, the desktops of the next slot send their screen update."""
    loop = asyncio.get_running_loop()
    period = 1 / (SCREEN_HZ * _SLOTS)
    next_at, slot = loop.time(), 0
    while True:
        for desktop in list(_Desktop.desktops[slot]):
            desktop.screen()
        slot = (slot + 1) % _SLOTS
        next_at += period
        await asyncio.sleep(max(0.0, next_at - loop.time()))


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Desktop, "127.0.0.1", 0, backlog=4096)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    ticker = asyncio.ensure_future(_tick())
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    ticker.cancel()
    server.close()


def main() -> None:
    """Serve desktops until stdin closes."""
    import uvloop

    from bench.servers import raise_nofile

    raise_nofile()
    uvloop.run(_serve())


if __name__ == "__main__":
    main()
