"""
The Autobahn side of a session: glue between a client's WebSocket and its
backend connection.

Decisions (subprotocol, statuses, close codes) come from :mod:`tunnelgw.core.relay`;
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

from tunnelgw.backends.tcp import BackendConnection, BackendUnavailable, TcpBackends
from tunnelgw.core.clientaddr import format_address
from tunnelgw.core.config import Config
from tunnelgw.guards import FactoryGuards, SessionGuards, SessionLog
from tunnelgw.fastpath import DirectBinaryFrames
from tunnelgw.metrics import route_label
from tunnelgw.core.relay import (
    CLOSE_INVALID_PAYLOAD,
    RELAY_WINDOW,
    Base64Decoder,
    Close,
    SessionRecord,
    backend_ended,
    choose_subprotocol,
    connect_rejection,
)
from tunnelgw.core.routing import Reject, Route, RuleSet, choose_route

__all__ = ["GatewayFactory", "GatewayProtocol", "GatewaySession", "format_address", "format_fields"]

_log = Logger(namespace="tunnelgw")




def _binary_frame_header(length: int) -> bytes:
    """The header of a final, unmasked binary frame (server to client) of length bytes."""
    if length < 126:
        return struct.pack("!BB", 0x82, length)
    if length < 65536:
        return struct.pack("!BBH", 0x82, 126, length)
    return struct.pack("!BBQ", 0x82, 127, length)


def format_fields(values: dict[str, object]) -> str:
    """Render key=value pairs for one log line, quoting values with spaces."""
    return " ".join(f"{k}={v!r}" if isinstance(v, str) and (" " in v or not v) else f"{k}={v}"
                    for k, v in values.items())


class GatewaySession(SessionGuards, WebSocketServerProtocol):  # type: ignore[misc]  # Autobahn's own bases disagree
    """
    What every session does, whatever its backend: its record and log lines,
    admission (limits and handshake rate), metrics, the idle timer and pings
    (:class:`~tunnelgw.guards.SessionGuards`), a balancer member's release,
    and the end of the session.  :attr:`route` and :attr:`client_address`
    are set by the resource before the handshake is parsed.
    """

    transport: Any  # the client's TCP or TLS transport

    factory: "GatewayFactory"
    route: Optional[Route] = None
    #: The client's real address from a trusted front proxy; None: the peer's.
    client_address: Optional[str] = None

    _connecting: Any = None
    _record: Optional[SessionRecord] = None
    _started = False
    _release: Any = None
    _failure_kind = "websocket"

    def client_host(self) -> str:
        """The client's address without port: limits, source hashing and tokens use it."""
        peer = self.transport.getPeer()
        return self.client_address or getattr(peer, "host", None) or format_address(peer)

    def _begin(self, route: Route, path: str, backend: str) -> Optional[Reject]:
        """Open the session's record and apply admission; a Reject says why not."""
        peer = format_address(self.transport.getPeer())
        self._record = SessionRecord(
            session_id=uuid.uuid4().hex[:12],
            client=self.client_address or peer,
            path=path,
            backend=backend,
            started=self.factory.reactor.seconds(),
        )
        self.log = SessionLog(self.log, self._record.session_id)
        return self._admit(route, path)

    def _log_rejection(self, path: str, reject: Reject, kind: str = "refused") -> None:
        values: dict[str, object] = {
            "session": self._record.session_id if self._record else "-",
            "client": self._record.client if self._record else format_address(self.transport.getPeer()),
            "path": path,
            "status": reject.status,
            "reason": reject.reason,
        }
        self._failure_kind = kind
        _log.info("handshake refused {details}", details=format_fields(values), fields=values)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """Count every refused handshake (ours and Autobahn's own checks) by reason and status."""
        self.factory.metrics.handshake_failed(route_label(self.route) if self.route else "", self._failure_kind, code)
        super().failHandshake(reason, code, responseHeaders)

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        """Answer a refused handshake with a status, a plain-text body and no keep-alive."""
        body = f"{code} {reason}\n".encode("utf-8")
        head = [f"HTTP/1.1 {code} {reason.encode('ascii', 'replace').decode()}",
                "Content-Type: text/plain; charset=utf-8",
                f"Content-Length: {len(body)}",
                "Connection: close"]
        head += [f"{name}: {value}" for name, value in (responseHeaders or [])]
        self.sendData(("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + body)

    def _open(self, backend_transport: Any) -> None:
        """The handshake completed: log, list and watch the session; wire producers both ways."""
        assert self._record is not None
        self._started = True
        start = self._record.fields(self.factory.reactor.seconds())
        start_fields = {k: start[k] for k in ("session", "client", "path", "backend")} | {
            "subprotocol": self.websocket_protocol_in_use}
        _log.info("session start {details}", details=format_fields(start_fields), fields=start_fields)
        self.factory.session_opened(self)
        self._start_watches()
        self.transport.registerProducer(backend_transport, True)
        backend_transport.registerProducer(self.transport, True)

    def _end(self, wasClean: bool, code: Optional[int], reason: Optional[str], abandoned: bool) -> None:
        """After the backend side is closed: free the slots, log and count the session's end."""
        self._stop_watches()
        admission, self._admission = self._admission, None
        if admission is not None:
            self.factory.session_counts.release(admission)
        release, self._release = self._release, None
        if release is not None:
            release()
        record, self._record = self._record, None
        if record is None:
            return
        now = self.factory.reactor.seconds()
        self._update_counts(record)
        record.end(now, code, reason or ("" if wasClean else (self.wasNotCleanReason or "client connection lost")))
        fields = record.fields(now)
        if abandoned:
            _log.info("handshake abandoned {details}", details=format_fields(fields), fields=fields)
        elif self._started:
            self.factory.session_closed(self, record)
            _log.info("session end {details}", details=format_fields(fields), fields=fields)

    def _update_counts(self, record: SessionRecord) -> None:
        """Bring the record's byte counts up to date (sessions that count elsewhere override)."""


class GatewayProtocol(DirectBinaryFrames, GatewaySession):  # type: ignore[misc]
    """
    A session to a byte-stream backend (``tcp:``, ``tls:``, ``unix:``, a
    balancer pool): client frames are streamed to the backend, backend bytes
    sent as binary (or base64 text) messages.
    """

    _backend: Optional[BackendConnection] = None
    _decoder: Optional[Base64Decoder] = None
    _base64 = False

    def onConnect(self, request: ConnectionRequest) -> Any:
        """Check the offer and the limits, then connect the backend; the 101 waits for it."""
        route = self.route
        if route is None:
            raise ConnectionDeny(404, "no route for this path")
        subprotocol = choose_subprotocol(request.protocols)
        if isinstance(subprotocol, Reject):
            self._log_rejection(request.path, subprotocol, "subprotocol")
            raise ConnectionDeny(subprotocol.status, subprotocol.reason)
        self._base64 = subprotocol == "base64"
        refused = self._begin(route, request.path, route.target)
        if refused is not None:
            raise ConnectionDeny(refused.status, refused.reason)
        reactor = self.factory.reactor
        connect_started = reactor.seconds()
        self._connecting = self._connect_backend(route)

        def connected(backend: BackendConnection) -> Optional[str]:
            self._connecting = None
            self._backend = backend
            self.factory.metrics.connected(route_label(route), reactor.seconds() - connect_started)
            return subprotocol

        def failed(failure: Failure) -> None:
            self._connecting = None
            failure.trap(BackendUnavailable)
            reject = connect_rejection(failure.value.failure, failure.value.detail)
            self._log_rejection(request.path, reject, f"backend_{failure.value.failure.value}")
            raise ConnectionDeny(reject.status, reject.reason)

        return self._connecting.addCallbacks(connected, failed)

    def _connect_backend(self, route: Route) -> Any:
        """Connect the route's backend: a balancer pool's member, or its endpoint."""
        topology = self.factory.topology
        if topology is not None and route.target.startswith("balancer://"):
            def started(member: str, release: Any) -> None:
                self._release = release
                if self._record is not None:
                    self._record.backend = f"{route.target}/{member}"
            return topology.connect_pool(route, self.client_host(), started)
        return self.factory.backends.connect(route.target, route.options.connect_timeout)

    def onOpen(self) -> None:
        """Start relaying: the backend's early bytes first."""
        backend = self._backend
        if backend is None or self._record is None:
            return
        if self.state != self.STATE_OPEN:
            self._close_backend()
            return
        self._decoder = Base64Decoder() if self._base64 else None
        self._open(backend.transport)
        backend.attach(self)
        # Read more per call and queue more before pausing the other side
        # (Twisted's default is 64 KiB): fewer frames, wakeups and pauses.
        backend.transport.bufferSize = self.transport.bufferSize = RELAY_WINDOW
        if not self._base64:
            self.start_direct_frames()

    def _backend_transport(self) -> Any:
        return self._backend.transport if self._backend is not None else None

    # Client -> backend: stream each frame's payload as it arrives.

    def onMessageFrameData(self, payload: bytes) -> None:
        """Forward a piece of a client frame to the backend (decoding base64)."""
        backend = self._backend
        if backend is None or self.state != self.STATE_OPEN:
            # Failing (a protocol violation: Autobahn parses on to find the close
            # reply) or closing: nothing more from the client reaches the backend.
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
        self.send_close(Close(CLOSE_INVALID_PAYLOAD, reason))

    # Backend -> client.

    def backend_data(self, data: bytes) -> None:
        """Send backend bytes to the client as one message."""
        if self.state != self.STATE_OPEN:
            # The client broke a rule (Autobahn is failing the connection) or
            # is closing: nothing more goes to it, and the backend may go.
            self._close_backend()
            return
        self._record.bytes_down += len(data)  # type: ignore[union-attr]
        if self._base64:
            self.sendMessage(base64.b64encode(data), isBinary=False)
        elif not self.send_queue and self._perMessageCompress is None:
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
        if self.state == self.STATE_OPEN:
            self.send_close(close)
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
        self._end(wasClean, code, reason, abandoned=connecting is not None)


class GatewayFactory(FactoryGuards, WebSocketServerFactory):
    """
    Builds :class:`GatewayProtocol` sessions; holds the rules, the backend
    connector and the reactor they use.
    """

    protocol = GatewayProtocol  # type: ignore[assignment]
    #: Token routes, pools, redirects (:class:`tunnelgw.topology.Topology`), set by the service.
    topology: Any = None
    #: The connector to ws:// and wss:// backends (:func:`tunnelgw.backends.websocket.websocket_backends`
    #: makes it on first use: this module cannot import that one).
    websocket_backends: Any = None

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
        self.harden(Config(source="<defaults>"))

    def route(self, raw_path: bytes) -> Union[Route, Reject]:
        """Route a raw request path (see :mod:`tunnelgw.core.routing`)."""
        return choose_route(self.rules, raw_path)
