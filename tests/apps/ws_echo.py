"""
A WebSocket echo server on the ``websockets`` library (not Autobahn), for the
wstest runs: every message comes back whole, as it came (text or binary), with
no size limit (nor fragment count limit) and no compression; pings, closes
and UTF-8 checks are the library's.  Checked directly with Autobahn|Testsuite
0.8.2's fuzzingclient, cases 1-7, 9 and 10: all pass but 7.1.5 (a close inside
a fragmented message is answered 1002, where Autobahn expects 1000).

Run ``python ws_echo.py [CERT KEY]``: it listens on 127.0.0.1, port 0 (over TLS
when given a certificate chain and key), prints ``listening PORT`` and serves
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sys
from typing import Optional

# websockets refuses messages of more than 4096 fragments (close 1009) unless told otherwise at
# import; Autobahn's case 9.3.1 sends 4 MiB in 64-byte fragments (65,536 of them).
os.environ.setdefault("WEBSOCKETS_MAX_FRAGMENTS", str(1 << 20))

from websockets.asyncio.server import ServerConnection, serve  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402


async def _echo(connection: ServerConnection) -> None:
    """Send every message back as it came, until the peer closes."""
    try:
        async for message in connection:
            await connection.send(message)
    except ConnectionClosed:
        pass


async def _main(tls: Optional[ssl.SSLContext]) -> None:
    """Serve until SIGTERM/SIGINT; announce the port on stdout."""
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    # max_size=None: Autobahn's case 9 sends messages of up to 16 MiB; compression=None:
    # cases 12 and 13 (permessage-deflate) are not run.  ping_interval=None: no pings of our own.
    async with serve(_echo, "127.0.0.1", 0, ssl=tls, max_size=None, max_queue=None,
                     compression=None, ping_interval=None, open_timeout=10, close_timeout=5) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening {port}", flush=True)
        await stop


if __name__ == "__main__":
    context: Optional[ssl.SSLContext] = None
    if len(sys.argv) == 3:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[1], sys.argv[2])
    asyncio.run(_main(context))
