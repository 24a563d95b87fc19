"""
Loopback backends for the benchmarks, run in their own process
(``python -m bench.servers``) so that they never share a core's time with the
gateway they feed.

- **echo**: sends back what arrives.
- **sink**: reads a first line ``TOTAL\\n``, then counts payload bytes and
  answers ``done\\n`` once TOTAL bytes have arrived (so a client can time the
  whole path, not only its own writes).
- **source**: reads a first line ``SIZE COUNT\\n``, then writes COUNT chunks of
  SIZE bytes and closes.

The process prints one JSON line ``{"echo": port, "sink": port, "source": port}``
on stdout once listening, and exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import sys

__all__ = ["main", "raise_nofile"]

_CHUNK = 256 * 1024


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _Echo(asyncio.Protocol):
    """Echo every byte back; pause reading while the peer is not reading."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=1 << 20)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self.transport.pause_reading()  # type: ignore[attr-defined]

    def resume_writing(self) -> None:
        self.transport.resume_reading()  # type: ignore[attr-defined]


class _Sink(asyncio.Protocol):
    """Count bytes after a ``TOTAL\\n`` line; answer ``done\\n`` when all arrived."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.head = b""
        self.left = -1

    def data_received(self, data: bytes) -> None:
        if self.left < 0:
            self.head += data
            if b"\n" not in self.head:
                return
            line, _, data = self.head.partition(b"\n")
            self.left = int(line)
        self.left -= len(data)
        if self.left == 0:
            self.transport.write(b"done\n")  # type: ignore[attr-defined]
            self.left = -2**62  # count nothing more


class _Source(asyncio.Protocol):
    """After ``SIZE COUNT\\n``, write COUNT chunks of SIZE bytes, honouring flow control."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.head = b""
        self.left = -1
        self.paused = False
        transport.set_write_buffer_limits(high=1 << 20)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.left >= 0:
            return
        self.head += data
        if b"\n" not in self.head:
            return
        size, count = (int(x) for x in self.head.partition(b"\n")[0].split())
        # Write in batches of about 64 KiB: one Python write per small chunk would
        # make this process, not the gateway, the limit.  TCP merges them anyway.
        self.batch = max(1, 65536 // size)
        self.chunk = b"s" * size * self.batch
        self.last = b"s" * size * (count % self.batch)
        self.left = count // self.batch
        self._pump()

    def _pump(self) -> None:
        while self.left > 0 and not self.paused:
            self.left -= 1
            self.transport.write(self.chunk)  # type: ignore[attr-defined]
        if self.left == 0 and not self.paused:
            if self.last:
                self.transport.write(self.last)  # type: ignore[attr-defined]
            self.left = -2
            self.transport.close()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()


async def _serve(host: str) -> None:
    loop = asyncio.get_running_loop()
    servers = {}
    for name, protocol in (("echo", _Echo), ("sink", _Sink), ("source", _Source)):
        servers[name] = await loop.create_server(protocol, host, 0, backlog=4096, reuse_address=True)
    print(json.dumps({k: s.sockets[0].getsockname()[1] for k, s in servers.items()}), flush=True)
    # Run until the parent closes our stdin.
    await loop.run_in_executor(None, sys.stdin.read)
    for s in servers.values():
        s.close()


def main() -> None:
    """Serve echo, sink and source on loopback until stdin closes."""
    raise_nofile()
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    socket.setdefaulttimeout(None)
    asyncio.run(_serve(host))


if __name__ == "__main__":
    main()
