"""
The Autobahn side of a session: glue between a client's WebSocket and its
backend connection.

Decisions (subprotocol, statuses, close codes) come from :mod:`tunnelgw.relay`;
this module only moves events and bytes.  Client frames are streamed to the
backend as their payload arrives, never reassembled, and the two transports
are each other's producers, so either side stalling stalls the other and a
session holds a bounded amount of memory.
"""

from __future__ import annotations

import base64
import struct
import uuid
from typing import Any, Optional, Union

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.logger import Logger
from twisted.python.failure import Failure

from tunnelgw.backends import BackendConnection, BackendUnavailable, TcpBackends
from tunnelgw.fastpath import DirectBinaryFrames
from tunnelgw.relay import (
    CLOSE_INVALID_PAYLOAD,
    RELAY_WINDOW,
    Base64Decoder,
    SessionRecord,
    backend_ended,
    choose_subprotocol,
    close_reason,
    connect_rejection,
)
from tunnelgw.routing import Reject, Route, RuleSet, choose_route

__all__ = ["GatewayFactory", "GatewayProtocol", "format_address"]

_log = Logger(namespace="tunnelgw")


def format_address(address: Any) -> str:
    """``host:port`` for IP addresses (``[v6]:port``), the path for UNIX ones."""
    host = getattr(address, "host", None)
    if host is not None:
        return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"
    return str(getattr(address, "name", None) or address)


def _binary_frame_header(length: int) -> bytes:
    """The header of a final, unmasked binary frame (server to client) of length bytes."""
    if length < 126:
        return struct.pack("!BB", 0x82, length)
    if length < 65536:
        return struct.pack("!BBH", 0x82, 126, length)
    return struct.pack("!BBQ", 0x82, 127, length)


def _fields(values: dict[str, object]) -> str:
    """Render key=value pairs for one log line, quoting values with spaces."""
    return " ".join(f"{k}={v!r}" if isinstance(v, str) and (" " in v or not v) else f"{k}={v}"
                    for k, v in values.items())


class GatewayProtocol(DirectBinaryFrames, WebSocketServerProtocol):
    """
    One client session.  :attr:`route` is set (by the resource) before the
    handshake is parsed; the handshake is answered once the backend is up.
    """

    factory: "GatewayFactory"
    route: Optional[Route] = None

    _backend: Optional[BackendConnection] = None
    _connecting: Any = None
    _decoder: Optional[Base64Decoder] = None
    _base64 = False
    _started = False
    _record: Optional[SessionRecord] = None

    def onConnect(self, request: ConnectionRequest) -> Any:
        """Check the offer, then connect the backend; the 101 waits for it."""
        route = self.route
        if route is None:
            raise ConnectionDeny(404, "no route for this path")
        subprotocol = choose_subprotocol(request.protocols)
        if isinstance(subprotocol, Reject):
            self._log_rejection(request.path, subprotocol)
            raise ConnectionDeny(subprotocol.status, subprotocol.reason)
        self._base64 = subprotocol == "base64"
        reactor = self.factory.reactor
        self._record = SessionRecord(
            session_id=uuid.uuid4().hex[:12],
            client=format_address(self.transport.getPeer()),
            path=request.path,
            backend=route.target,
            started=reactor.seconds(),
        )
        self._connecting = self.factory.backends.connect(route.target, route.options.connect_timeout)

        def connected(backend: BackendConnection) -> Optional[str]:
            self._connecting = None
            self._backend = backend
            return subprotocol

        def failed(failure: Failure) -> None:
            self._connecting = None
            failure.trap(BackendUnavailable)
            reject = connect_rejection(failure.value.failure, failure.value.detail)
            self._log_rejection(request.path, reject)
            raise ConnectionDeny(reject.status, reject.reason)

        return self._connecting.addCallbacks(connected, failed)

    def _log_rejection(self, path: str, reject: Reject) -> None:
        _log.info("handshake refused {details}", details=_fields({
            "session": self._record.session_id if self._record else "-",
            "client": format_address(self.transport.getPeer()),
            "path": path,
            "status": reject.status,
            "reason": reject.reason,
        }))

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        """Answer a refused handshake with a status, a plain-text body and no keep-alive."""
        body = f"{code} {reason}\n".encode("utf-8")
        head = [f"HTTP/1.1 {code} {reason.encode('ascii', 'replace').decode()}",
                "Content-Type: text/plain; charset=utf-8",
                f"Content-Length: {len(body)}",
                "Connection: close"]
        head += [f"{name}: {value}" for name, value in (responseHeaders or [])]
        self.sendData(("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + body)

    def onOpen(self) -> None:
        """Wire the two transports as each other's producers and start relaying."""
        backend = self._backend
        if backend is None or self._record is None:
            return
        if self.state != self.STATE_OPEN:
            backend.close()
            self._backend = None
            return
        self._decoder = Base64Decoder() if self._base64 else None
        self._started = True
        start = self._record.fields(self.factory.reactor.seconds())
        _log.info("session start {details}", details=_fields(
            {k: start[k] for k in ("session", "client", "path", "backend")} | {"subprotocol": self.websocket_protocol_in_use}))
        self.transport.registerProducer(backend.transport, True)
        backend.transport.registerProducer(self.transport, True)
        backend.attach(self)
        # Read more per call and queue more before pausing the other side
        # (Twisted's default is 64 KiB): fewer frames, wakeups and pauses.
        backend.transport.bufferSize = self.transport.bufferSize = RELAY_WINDOW
        if not self._base64:
            self.start_direct_frames()

    # Client -> backend: stream each frame's payload as it arrives.

    def onMessageFrameData(self, payload: bytes) -> None:
        """Forward a piece of a client frame to the backend (decoding base64)."""
        backend = self._backend
        if backend is None:
            return
        if self._decoder is not None:
            try:
                payload = self._decoder.feed(payload)
            except ValueError as e:
                self._bad_payload(str(e))
                return
        self._record.bytes_up += len(payload)  # type: ignore[union-attr]
        backend.transport.write(payload)

    def relay_up(self, payloads: list[bytes]) -> None:
        """Forward the payloads of directly read binary frames in one write."""
        backend = self._backend
        if backend is None:
            return
        self._record.bytes_up += sum(map(len, payloads))  # type: ignore[union-attr]
        backend.transport.writeSequence(payloads)

    def onMessageFrameEnd(self) -> None:
        """Nothing to do: frames were forwarded as they streamed in."""

    def onMessageEnd(self) -> None:
        """A base64 message must end on a whole quantum."""
        if self._decoder is not None:
            try:
                self._decoder.end_message()
            except ValueError as e:
                self._bad_payload(str(e))

    def _bad_payload(self, reason: str) -> None:
        self._close_backend()
        self.close_session(CLOSE_INVALID_PAYLOAD, reason)

    def close_session(self, code: int, reason: str) -> None:
        """
        Start the closing handshake with any valid code (Autobahn's
        ``sendClose`` accepts only 1000 and 3000-4999; a gateway also needs
        1001, 1007, 1009, 1011, 1014).
        """
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=close_reason(reason).encode("utf-8"), isReply=False)

    # Backend -> client.

    def backend_data(self, data: bytes) -> None:
        """Send backend bytes to the client as one message."""
        self._record.bytes_down += len(data)  # type: ignore[union-attr]
        if self._base64:
            self.sendMessage(base64.b64encode(data), isBinary=False)
        elif self.state == self.STATE_OPEN and not self.send_queue and self._perMessageCompress is None:
            # Hot path (profiled): Autobahn's sendMessage copies the payload into
            # one frame and formats a debug log record for every write; a binary
            # frame needs only a header, written ahead of the payload as is.
            self.transport.writeSequence((_binary_frame_header(len(data)), data))
        else:
            self.sendMessage(data, isBinary=True)

    def backend_lost(self, clean: bool, detail: str) -> None:
        """The backend went away: close the client with the matching code."""
        self._backend = None
        self.transport.unregisterProducer()
        # The client may have been paused because the backend stopped reading:
        # read again so that its close reply arrives.
        self.transport.resumeProducing()
        close = backend_ended(clean, detail)
        self.close_session(close.code, close.reason)
        if self._record is not None:
            self._record.end(self.factory.reactor.seconds(), close.code, close.reason)

    def _close_backend(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        """The client left (or was closed): close the backend, log the session."""
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        self._close_backend()
        record, self._record = self._record, None
        if record is None:
            return
        now = self.factory.reactor.seconds()
        record.end(now, code, reason or ("" if wasClean else "client connection lost"))
        if connecting is not None:
            _log.info("handshake abandoned {details}", details=_fields(record.fields(now)))
        elif self._started:
            _log.info("session end {details}", details=_fields(record.fields(now)))


class GatewayFactory(WebSocketServerFactory):
    """
    Builds :class:`GatewayProtocol` sessions; holds the rules, the backend
    connector and the reactor they use.
    """

    protocol = GatewayProtocol

    def __init__(self, rules: RuleSet, reactor: Any, backends: Optional[TcpBackends] = None) -> None:
        super().__init__(server="tunnelgw", reactor=reactor)
        self.rules = rules
        self.backends = backends if backends is not None else TcpBackends(reactor)
        self.setProtocolOptions(
            # The handshake is parsed at once (twisted.web read it) and the wait
            # for the backend is bounded by the route's connect timeout.
            openHandshakeTimeout=0,
            # txaio batches timers to whole seconds: 3 s is at least 2 s.
            closeHandshakeTimeout=3,
            webStatus=False,
        )

    def route(self, raw_path: bytes) -> Union[Route, Reject]:
        """Route a raw request path (see :mod:`tunnelgw.routing`)."""
        return choose_route(self.rules, raw_path)
