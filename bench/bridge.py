"""
A minimal WebSocket-to-TCP bridge on asyncio and websockets, the smallest
reasonable peer for the ws:// -> TCP figures: ``python -m bench.bridge PORTS
[CERT KEY]`` where PORTS is JSON ``{"echo": port, ...}``; ``/NAME`` reaches
127.0.0.1:PORTS[NAME].  It prints ``{"ws": port, "wss": port}`` once
listening (wss only with a certificate) and exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from typing import Any, Optional

from websockets.asyncio.server import ServerConnection, serve

from bench.servers import raise_nofile


async def bridge(ws: ServerConnection, ports: dict[str, int]) -> None:
    """Pump one session: WebSocket messages to the TCP backend and its bytes back as binary messages."""
    port = ports.get(ws.request.path.split("?")[0].strip("/")) if ws.request else None
    if port is None:
        await ws.close(1008, "no such backend")
        return
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def up() -> None:
        async for message in ws:
            writer.write(message if isinstance(message, bytes) else message.encode())
            await writer.drain()

    async def down() -> None:
        while data := await reader.read(262144):
            await ws.send(data)

    tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        writer.close()
        await ws.close()


async def _main(ports: dict[str, int], tls: Optional[ssl.SSLContext]) -> None:
    options: dict[str, Any] = {"subprotocols": ["binary"], "max_size": 16 << 20, "compression": None,
                               "ping_interval": None, "backlog": 4096}
    servers = {"ws": await serve(lambda ws: bridge(ws, ports), "127.0.0.1", 0, **options)}
    if tls:
        servers["wss"] = await serve(lambda ws: bridge(ws, ports), "127.0.0.1", 0, ssl=tls, **options)
    print(json.dumps({k: s.sockets[0].getsockname()[1] for k, s in servers.items()}), flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        for server in servers.values():
            server.close()


def main() -> None:
    """Serve until stdin closes."""
    raise_nofile()
    tls = None
    if len(sys.argv) > 3:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(sys.argv[2], sys.argv[3])
    asyncio.run(_main(json.loads(sys.argv[1]), tls))


if __name__ == "__main__":
    main()
