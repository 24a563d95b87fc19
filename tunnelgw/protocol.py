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
import uuid
from typing import Any, Optional, Union

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.logger import Logger
from twisted.python.failure import Failure

from tunnelgw.backends import BackendConnection, BackendUnavailable, TcpBackends
from tunnelgw.config import Config
from tunnelgw.limits import Admission, HandshakeRate, SessionCounts
from tunnelgw.metrics import GatewayMetrics, route_label
from tunnelgw.relay import (
    CLOSE_INVALID_PAYLOAD,
    Base64Decoder,
    Close,
    Heartbeat,
    IdleWatch,
    idle_close,
    SessionRecord,
    backend_ended,
    choose_subprotocol,
    close_reason,
    connect_rejection,
)
from tunnelgw.routing import Reject, Route, RuleSet, choose_route
from tunnelgw.sockopts import set_tcp_keepalive

__all__ = ["GatewayFactory", "GatewayProtocol", "format_address"]

_log = Logger(namespace="tunnelgw")


def format_address(address: Any) -> str:
    """``host:port`` for IP addresses (``[v6]:port``), the path for UNIX ones."""
    host = getattr(address, "host", None)
    if host is not None:
        return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"
    return str(getattr(address, "name", None) or address)


def _fields(values: dict[str, object]) -> str:
    """Render key=value pairs for one log line, quoting values with spaces."""
    return " ".join(f"{k}={v!r}" if isinstance(v, str) and (" " in v or not v) else f"{k}={v}"
                    for k, v in values.items())


class _SessionLog:
    """Autobahn's logger for one session: every line it writes names the session."""

    _LEVELS = frozenset(("critical", "error", "warn", "info", "debug", "trace", "failure"))

    def __init__(self, log: Any, session: str) -> None:
        self._log = log
        self._session = session

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._log, name)
        if name not in self._LEVELS:
            return attribute

        def named(format: Any = None, *args: Any, **kwargs: Any) -> Any:
            if isinstance(format, str):
                format = "session={tunnelgw_session} " + format
            return attribute(format, *args, tunnelgw_session=self._session, **kwargs)

        return named


class GatewayProtocol(WebSocketServerProtocol):
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
            self._log_rejection(request.path, subprotocol, "subprotocol")
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
        self.log = _SessionLog(self.log, self._record.session_id)
        refused = self._admit(route, request.path)
        if refused is not None:
            raise ConnectionDeny(refused.status, refused.reason)
        connect_started = reactor.seconds()
        self._connecting = self.factory.backends.connect(route.target, route.options.connect_timeout)

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

    def _log_rejection(self, path: str, reject: Reject, kind: str = "refused") -> None:
        values: dict[str, object] = {
            "session": self._record.session_id if self._record else "-",
            "client": format_address(self.transport.getPeer()),
            "path": path,
            "status": reject.status,
            "reason": reject.reason,
        }
        self._failure_kind = kind
        _log.info("handshake refused {details}", details=_fields(values), fields=values)

    _failure_kind = "websocket"

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """Count every refused handshake (ours and Autobahn's own checks) by reason and status."""
        self.factory.metrics.handshake_failed(route_label(self.route) if self.route else "", self._failure_kind, code)
        super().failHandshake(reason, code, responseHeaders)

    # Hardening: admission, keepalive, idle timeout, closing on demand.

    _admission: Optional[Admission] = None
    _heartbeat: Optional[Heartbeat] = None
    _idle: Optional[IdleWatch] = None
    _ping_call: Any = None
    _idle_call: Any = None

    def _admit(self, route: Route, path: str) -> Optional[Reject]:
        """Apply the handshake rate and session limits; keep the slot granted."""
        factory = self.factory
        client = getattr(self.transport.getPeer(), "host", None) or format_address(self.transport.getPeer())
        refused = factory.handshake_rate.allow(client, factory.reactor.seconds())
        if refused is not None:
            self._log_rejection(path, refused, "rate")
            return refused
        admission = factory.session_counts.admit(route_label(route), route.options.max_sessions, client)
        if isinstance(admission, Reject):
            self._log_rejection(path, admission, "limit")
            return admission
        self._admission = admission
        return None

    def _start_watches(self) -> None:
        """Start the idle timer and client pings; turn on TCP keepalive to the backend."""
        factory, reactor = self.factory, self.factory.reactor
        keepalive = factory.config.keepalive
        if self._backend is not None and keepalive.tcp_idle:
            set_tcp_keepalive(self._backend.transport, keepalive.tcp_idle, keepalive.tcp_interval,
                              keepalive.tcp_count)
        idle = self.route.options.idle_timeout if self.route and self.route.options.idle_timeout is not None \
            else factory.config.timeouts.idle
        if idle:
            self._idle = IdleWatch(idle, reactor.seconds())
            self._idle_call = reactor.callLater(idle, self._check_idle)
        if keepalive.ping:
            self._heartbeat = Heartbeat(keepalive.ping, keepalive.pong)
            self._ping_call = reactor.callLater(keepalive.ping, self._send_ping)

    def _check_idle(self) -> None:
        record, idle = self._record, self._idle
        self._idle_call = None
        if record is None or idle is None:
            return
        wait = idle.check(record.bytes_up + record.bytes_down, self.factory.reactor.seconds())
        if wait is None:
            _log.info("session idle timeout session={session} seconds={seconds:g}",
                      session=record.session_id, seconds=idle.timeout)
            self.close_session(idle_close(idle.timeout))
        else:
            self._idle_call = self.factory.reactor.callLater(wait, self._check_idle)

    def _send_ping(self) -> None:
        self._ping_call = None
        if self._heartbeat is None or self.state != self.STATE_OPEN:
            return
        self._heartbeat.ping_sent(self.factory.reactor.seconds())
        self.sendPing(b"tunnelgw")
        self._ping_call = self.factory.reactor.callLater(self._heartbeat.deadline, self._pong_due)

    def _pong_due(self) -> None:
        self._ping_call = None
        heartbeat, record = self._heartbeat, self._record
        if heartbeat is None or record is None:
            return
        backend = self._backend
        paused = bool(backend is not None and getattr(backend.transport, "producerPaused", False))
        wait = heartbeat.verdict(self.factory.reactor.seconds(), paused)
        if wait is None:
            _log.info("session ping timeout session={session} client={client} seconds={seconds:g}",
                      session=record.session_id, client=record.client, seconds=heartbeat.deadline)
            record.end(self.factory.reactor.seconds(), None, "ping timeout: the client did not answer")
            self._close_backend()
            self.dropConnection(abort=True)
        elif wait == 0.0:
            self._ping_call = self.factory.reactor.callLater(
                max(0.0, heartbeat.interval - heartbeat.deadline), self._send_ping)
        else:
            self._ping_call = self.factory.reactor.callLater(wait, self._pong_due)

    def onPong(self, payload: bytes) -> None:
        """Any pong proves the client still reads."""
        if self._heartbeat is not None:
            self._heartbeat.pong_received()

    def _stop_watches(self) -> None:
        for name in ("_idle_call", "_ping_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    @property
    def session_id(self) -> Optional[str]:
        """This session's id (None before its handshake started)."""
        return self._record.session_id if self._record else None

    def describe(self) -> dict[str, object]:
        """The live session's record as key/value pairs (for the admin listener)."""
        assert self._record is not None
        return self._record.fields(self.factory.reactor.seconds()) | {
            "route": route_label(self.route) if self.route else ""}

    def close_session(self, close: Close) -> None:
        """Close the session from the gateway's side: the client gets close, the backend EOF."""
        self._close_backend()
        if self._record is not None:
            self._record.end(self.factory.reactor.seconds(), close.code, close.reason)
        # Read again so that the client's close reply can arrive.
        self.transport.resumeProducing()
        if self.state == self.STATE_OPEN:
            self.send_close(close)
        elif self.state != self.STATE_CLOSED:
            self.dropConnection(abort=True)

    def send_close(self, close: Close) -> None:
        """
        Send a close frame with any code the gateway uses (Autobahn's
        ``sendClose`` only allows 1000 and 3000-4999 from applications).
        """
        self.sendCloseFrame(close.code, close_reason(close.reason).encode("utf-8"))

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
        start_fields = {k: start[k] for k in ("session", "client", "path", "backend")} | {
            "subprotocol": self.websocket_protocol_in_use}
        _log.info("session start {details}", details=_fields(start_fields), fields=start_fields)
        self.factory.session_opened(self)
        self._start_watches()
        self.transport.registerProducer(backend.transport, True)
        backend.transport.registerProducer(self.transport, True)
        backend.attach(self)

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
        self._stop_watches()
        admission, self._admission = self._admission, None
        if admission is not None:
            self.factory.session_counts.release(admission)
        record, self._record = self._record, None
        if record is None:
            return
        now = self.factory.reactor.seconds()
        record.end(now, code, reason or ("" if wasClean else (self.wasNotCleanReason or "client connection lost")))
        if connecting is not None:
            _log.info("handshake abandoned {details}", details=_fields(record.fields(now)), fields=record.fields(now))
        elif self._started:
            self.factory.session_closed(self, record)
            _log.info("session end {details}", details=_fields(record.fields(now)), fields=record.fields(now))


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
            webStatus=False,
        )
        self.harden(Config(source="<defaults>"))

    def harden(self, config: Config, metrics: Optional[GatewayMetrics] = None) -> None:
        """Apply config's limits and keepalive settings; count into metrics (or a private registry)."""
        self.config = config
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        self.sessions: dict[str, GatewayProtocol] = {}
        self.session_counts = SessionCounts(config.limits.sessions, config.limits.per_client)
        self.handshake_rate = HandshakeRate(config.limits.rate)
        self.metrics.watch(self)
        # failByDrop=False: a client breaking a rule gets a close frame with
        # the code (1009, 1002, 1007) and reason before the connection ends.
        self.setProtocolOptions(maxFramePayloadSize=config.limits.frame,
                                maxMessagePayloadSize=config.limits.message, failByDrop=False)

    def session_opened(self, session: GatewayProtocol) -> None:
        """A session's handshake completed: list it and count it."""
        assert session.session_id is not None and session.route is not None
        self.sessions[session.session_id] = session
        self.metrics.session_opened(route_label(session.route))

    def session_closed(self, session: GatewayProtocol, record: SessionRecord) -> None:
        """A listed session ended: unlist it, keep its byte counts."""
        self.sessions.pop(record.session_id, None)
        self.metrics.session_closed(route_label(session.route) if session.route else "", record)

    def close_all(self, close: Close) -> None:
        """Close every live session with close (shutdown)."""
        for session in list(self.sessions.values()):
            session.close_session(close)

    def route(self, raw_path: bytes) -> Union[Route, Reject]:
        """Route a raw request path (see :mod:`tunnelgw.routing`)."""
        return choose_route(self.rules, raw_path)
