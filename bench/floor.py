"""
The Twisted floor: the least a ws:// -> TCP gateway on Twisted does per
session, as a peer for the sessions figure, so that the table says how much of
tunnelgw's cost per session is Twisted's own (accept, connect, epoll
registrations, transports, Deferreds) and how much is tunnelgw's (routing,
limits, Autobahn's state machine, logging, metrics, timers).

``python -m bench.floor BACKEND_PORT``: listen on 127.0.0.1 (a free port,
printed as ``{"ws": PORT}``) until stdin closes; per connection read the request head, pause the client, connect to the backend,
answer 101 with the ``binary`` subprotocol, then relay: the backend's bytes as
one binary frame per read, the client's masked frames unmasked to the
backend; a close frame is answered and ends both connections.  No Origin
check, no limits, no logging, no timers, no ping: not a gateway, a floor.
"""

from __future__ import annotations

import base64
import hashlib
import sys
from typing import Any, Optional

from twisted.internet import endpoints, protocol
from websockets.speedups import apply_mask  # type: ignore[import-not-found]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x82, n)) + payload
    if n < 65536:
        return bytes((0x82, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x82, 127)) + n.to_bytes(8, "big") + payload


class _Backend(protocol.Protocol):
    transport: Any

    def __init__(self, front: "_Front") -> None:
        self.front = front

    def connectionMade(self) -> None:
        front = self.front
        front.backend = self
        accept = base64.b64encode(hashlib.sha1(front.key + _GUID).digest())
        front.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: binary\r\n\r\n")
        front.transport.resumeProducing()
        if front.buffer:
            front.frames(b"")

    def dataReceived(self, data: bytes) -> None:
        self.front.transport.write(_frame(data))

    def connectionLost(self, reason: Any = None) -> None:
        self.front.transport.loseConnection()


class _Front(protocol.Protocol):
    transport: Any
    backend: Optional[_Backend] = None
    key = b""

    def __init__(self, reactor: Any, backend_port: int) -> None:
        self.reactor = reactor
        self.backend_port = backend_port
        self.buffer = b""
        self.upgraded = False

    def dataReceived(self, data: bytes) -> None:
        if self.upgraded:
            self.frames(data)
            return
        self.buffer += data
        head, found, rest = self.buffer.partition(b"\r\n\r\n")
        if not found:
            return
        self.upgraded, self.buffer = True, rest
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                self.key = value.strip()
        self.transport.pauseProducing()
        factory = protocol.Factory()
        factory.buildProtocol = lambda addr: _Backend(self)  # type: ignore[method-assign]
        endpoints.TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.backend_port).connect(factory)

    def frames(self, data: bytes) -> None:
        data, self.buffer = self.buffer + data, b""
        if self.backend is None:
            self.buffer = data
            return
        pos, end = 0, len(data)
        while end - pos >= 2:
            opcode, length = data[pos] & 0x0F, data[pos + 1] & 0x7F
            head = pos + 2
            if length == 126:
                length, head = int.from_bytes(data[head:head + 2], "big"), head + 2
            elif length == 127:
                length, head = int.from_bytes(data[head:head + 8], "big"), head + 8
            if end < head + 4 + length:
                break
            payload = apply_mask(data[head + 4:head + 4 + length], data[head:head + 4])
            pos = head + 4 + length
            if opcode == 8:
                self.transport.write(b"\x88\x02" + payload[:2])
                self.transport.loseConnection()
                self.backend.transport.loseConnection()
                return
            self.backend.transport.write(payload)
        self.buffer = data[pos:]

    def connectionLost(self, reason: Any = None) -> None:
        if self.backend is not None:
            self.backend.transport.loseConnection()


def main() -> None:
    """Serve until stdin closes (as the bench's other child servers)."""
    import json
    import threading

    from twisted.internet import reactor

    backend_port = int(sys.argv[1])
    factory = protocol.ServerFactory()
    factory.buildProtocol = lambda addr: _Front(reactor, backend_port)  # type: ignore[method-assign]
    port: Any = reactor.listenTCP(0, factory, backlog=4096, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(json.dumps({"ws": port.getHost().port}), flush=True)

    def wait_for_stdin() -> None:
        sys.stdin.read()
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    threading.Thread(target=wait_for_stdin, daemon=True).start()
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
