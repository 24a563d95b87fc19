"""
The one server-side session: a client's WebSocket that owns a backend link
and a watch.  Autobahn's server protocol answers the opening handshake
(driven from the request head the front already parsed); after the 101
every byte of the client goes through a
:class:`~tunnelgw.core.sessionrelay.SessionRelay` (role server), and this
class only carries out its actions: writes to the client, data for the
link, closes, drops and one timer.

- The **link** (:class:`BackendLink`: a byte stream in
  :mod:`tunnelgw.backends.tcp`, a balancer member through the same, a
  WebSocket hop in :mod:`tunnelgw.backends.websocket`) connects, relays and
  ends the backend side; what it carries (payload bytes or whole frames) is
  its :attr:`~BackendLink.carries`.  A new backend kind is a new link, never
  a subclass of the session.
- The **watch** (:class:`tunnelgw.watch.SessionWatch`) keeps the idle and
  ping/pong timers.

The client is not read while its backend connects: the front paused its
transport at the end of the head, and what arrived with the head (at most
:data:`~tunnelgw.core.http.EARLY_DATA_LIMIT` bytes) is held and read by the
relay only after the 101.  Nothing after the head is ever parsed as HTTP.

Every buffer is bounded: the two transports are each other's producers (a
side that stops reading stops the other), at most one pong waits while the
client does not read (the relay's rule), and a close the client does not
answer within :data:`~tunnelgw.core.relay.CLOSE_TIMEOUT` drops it.

Every resource a session takes (its slot, the pool member, the backend
connection, the timers, its entry in the live list, its metrics) is released
in :meth:`GatewaySession._finish`, which runs once, when the client
connection is gone, whatever happened before.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tunnelgw.backends import BackendLink, BackendRefused
from tunnelgw.core.clientaddr import format_address
from tunnelgw.core.handshake import Handshake
from tunnelgw.core.http import EARLY_DATA_LIMIT, RequestHead
from tunnelgw.core.relay import CLOSE_TIMEOUT, RELAY_WINDOW, Close, SessionRecord, idle_close
from tunnelgw.core.routing import Reject, Route
from tunnelgw.core.sessionrelay import (
    Action,
    ArmTimer,
    Carries,
    CloseReceived,
    Drop,
    Failed,
    Forward,
    PongReceived,
    RelayState,
    Role,
    SessionRelay,
    Write,
)
from tunnelgw.core.wsrelay import lost_close
from tunnelgw.upstream import unmask
from tunnelgw.logs import format_fields
from tunnelgw.metrics import route_label
from tunnelgw.relayend import RelayTimer, drop
from tunnelgw.sockopts import set_tcp_keepalive
from tunnelgw.upstream import SERVER_CONNECTION_SLOTS, QuietServerProtocol, parsed_handshake, slot_defaults
from tunnelgw.watch import SessionWatch

__all__ = ["GatewaySession", "client_label", "http_error", "log_refusal"]

_log = Logger(namespace="tunnelgw")
#: The code a session records when its client vanished without a close (never sent).
CLOSE_ABNORMAL = 1006


def client_label(client: str, transport: Any) -> str:
    """A client as the logs name it: the real address from a front proxy, else the peer's host:port."""
    peer = transport.getPeer()
    return client if client != getattr(peer, "host", None) else format_address(peer)


def log_refusal(client: str, path: str, reject: Reject, kind: str, session: str = "-") -> None:
    """One line for a refused request or handshake, with the fields of session lines."""
    values: dict[str, object] = {"session": session, "client": client, "path": path,
                                 "status": reject.status, "reason": reject.reason, "kind": kind}
    if session == "-":
        # No session was started (no route, a bad head, a limit before the handshake).
        _log.info("request refused client={client} path={path!r} status={status} reason={reason!r} kind={kind}",
                  client=client, path=path, status=reject.status, reason=reject.reason, kind=kind, fields=values,
                  audit="request.refused")
    else:
        _log.info("handshake refused {details}", details=format_fields(values), fields=values,
                  audit="session.refused")


@implementer(IPushProducer)
class _ClientWriteGate:
    """
    Registered as the client transport's producer: when the client stops
    reading and its write buffer fills, the backend is paused (and pongs are
    held); when it drains, both go on.
    """

    __slots__ = ("_session",)

    def __init__(self, session: "GatewaySession") -> None:
        # Weak: the session holds the gate (and the transport it is registered with), not the other way round.
        self._session = weakref.ref(session)

    def pauseProducing(self) -> None:
        """The client's write buffer is full."""
        self._paused(True)

    def resumeProducing(self) -> None:
        """The client's write buffer drained."""
        self._paused(False)

    def _paused(self, paused: bool) -> None:
        session = self._session()
        if session is None:
            return
        transport = session.backend_transport()
        if transport is not None:
            if paused:
                transport.pauseProducing()
            else:
                transport.resumeProducing()
        session.writer_paused(paused)

    def stopProducing(self) -> None:
        """The client connection is gone; :meth:`GatewaySession._finish` ends the rest."""


@implementer(IPushProducer)
class _BackendWriteGate:
    """
    Registered as the backend transport's producer: when the backend stops
    reading and its write buffer fills, the client is not read (and the
    watch knows it: no pong can be read then).
    """

    __slots__ = ("_client", "paused")

    def __init__(self, client: Any) -> None:
        self._client = client
        self.paused = False

    def pauseProducing(self) -> None:
        """The backend's write buffer is full."""
        self.paused = True
        self._client.pauseProducing()

    def resumeProducing(self) -> None:
        """The backend's write buffer drained."""
        self.paused = False
        self._client.resumeProducing()

    def stopProducing(self) -> None:
        """The backend connection is gone; the session ends the rest."""


class GatewaySession(QuietServerProtocol):
    """
    One client session.  Built by :class:`tunnelgw.gateway.GatewayFactory`
    for a routed upgrade request; :meth:`begin` takes it from the parsed head.
    """

    transport: Any
    factory: Any  # a tunnelgw.gateway.GatewayFactory (which imports this module)
    maxFramePayloadSize: int
    maxMessagePayloadSize: int

    # Everything a session keeps is in slots, Autobahn's connection state included: no instance dict (see
    # SERVER_CONNECTION_SLOTS: the dict each session had was 1.6 KB).
    __slots__ = SERVER_CONNECTION_SLOTS + (
        "_session_id", "_recording", "factory", "route", "_head", "_handshake", "_client", "_link", "_label",
        "_record", "_admission", "_connecting", "_watch", "_gate", "_backend_gate", "_relay", "_base64", "_why",
        "_listed", "_finished", "_outcome", "_refusal_kind", "_relay_timer", "tls_client", "shown_path", "via")

    #: The verified client certificate's identity ('' without one), set by the gateway.
    tls_client: str
    #: The request path as logs and the admin list show it (the request's canonical view), set by the gateway.
    shown_path: str
    #: ``"http2"`` for a session on an HTTP/2 stream (RFC 8441), '' on its own connection; set by the gateway.
    via: str

    def __init__(self, factory: Any, route: Route, head: RequestHead, handshake: Handshake,
                 client: str, link: BackendLink, session_id: str, recording: str = "") -> None:
        for name, value in _SLOT_DEFAULTS:
            setattr(self, name, value)
        super().__init__()
        self._session_id = session_id
        self._recording = recording
        self.factory = factory
        self.route = route
        self._head: Optional[RequestHead] = head
        self._handshake: Optional[Handshake] = handshake
        self._client = client
        self._link = link
        self._label = route_label(route)
        self._record: Optional[SessionRecord] = None
        self._admission: Any = None
        self._connecting: Optional[defer.Deferred[Optional[str]]] = None
        self._watch: Optional[SessionWatch] = None
        self._gate = _ClientWriteGate(self)
        self._backend_gate: Optional[_BackendWriteGate] = None
        self._relay: Optional[SessionRelay] = None
        self._base64 = False
        self._why = ""
        self._listed = False
        self._finished = False
        self._outcome = "abandoned"
        self._refusal_kind = "websocket"
        self._relay_timer: Optional[RelayTimer] = None
        self.tls_client = self.shown_path = self.via = ""

    # The handshake, from the front's parse (Autobahn parses nothing).

    def begin(self, early: bytes) -> None:
        """
        Start the session on a connected, paused transport: check, admit,
        connect the backend.  early is what the client sent after its head.
        """
        head, handshake, factory = self._head, self._handshake, self.factory
        assert head is not None and handshake is not None, "a session begins once"
        self._head = self._handshake = None  # not kept for the session's life (memory per idle session)
        parsed_handshake(self, head.target.decode("latin-1"), head.path.decode("latin-1"), handshake.host,
                         handshake.origin, handshake.protocols, handshake.key, early)
        # Logs and the admin list never show a token.
        path = self.shown_path or factory.redact(self.http_request_path)
        self._record = SessionRecord(session_id=self._session_id, client=client_label(self._client, self.transport),
                                     path=path, backend=self._link.description, started=factory.reactor.seconds(),
                                     route=self._label, recording=self._recording, user=self.route.user)
        self.processHandshake()
        if self._outcome == "refused":
            return
        refused = self._link.check(handshake)
        if refused is not None:
            self._refuse(refused, "subprotocol" if refused.status == 400 else "backend")
            return
        admission = factory.session_counts.admit(self._label, self.route.options.max_sessions, self._client,
                                                 self.route.desktop, self._session_id)
        if isinstance(admission, Reject):
            self._refuse(admission, "limit")
            return
        self._admission = admission
        if self._record is not None:
            self._record.desktop = admission.group
        started = factory.reactor.seconds()
        self._connecting = self._link.connect()
        self._connecting.addCallbacks(self._backend_up, self._backend_failed, callbackArgs=(started,))


    def client_host(self) -> str:
        """The client's address without port: limits, source hashing and tokens use it."""
        return self._client

    def processHandshake(self) -> None:
        """Bytes arrived before the 101: hold them (bounded), never parse them as a request."""
        if len(self.data) > EARLY_DATA_LIMIT and self._outcome != "refused" and self.state == self.STATE_CONNECTING:
            self._refuse(Reject(400, f"more than {EARLY_DATA_LIMIT} bytes sent before the handshake completed"),
                         "early_data")

    def _backend_up(self, subprotocol: Optional[str], started: float) -> None:
        self._connecting = None
        if self._finished or self.state != self.STATE_CONNECTING:
            self._link.close()
            return
        self.factory.metrics.connected(self._label, self.factory.reactor.seconds() - started)
        # base64 is decoded for byte-stream backends only; WebSocket peers that agree on it keep their frames.
        self._base64 = subprotocol == "base64" and self._link.carries is Carries.PAYLOAD
        self.succeedHandshake(subprotocol)  # sends the 101, calls onOpen, reads the early frames
        if self._relay is not None and self._relay.state is RelayState.OPEN:
            self.transport.resumeProducing()

    def _backend_failed(self, failure: Failure) -> None:
        self._connecting = None
        if failure.check(defer.CancelledError) or self._finished:
            return
        failure.trap(BackendRefused)
        self._refuse(failure.value.reject, failure.value.kind, failure.value.headers)

    def _refuse(self, reject: Reject, kind: str, headers: Any = ()) -> None:
        """Answer the handshake with an HTTP status; the connection then ends (and :meth:`_finish` runs)."""
        self._outcome = "refused"
        self._refusal_kind = kind
        assert self._record is not None
        log_refusal(self._record.client, self._record.path, reject, kind, self._record.session_id)
        self.failHandshake(reject.reason, reject.status, list(headers) or None)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """Count every refused handshake by reason and status, then answer it."""
        self.factory.metrics.handshake_failed(self._label, self._refusal_kind, code)
        super().failHandshake(reason, code, responseHeaders)

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        """Answer a refused handshake with a status, a plain-text body and no keep-alive."""
        self.sendData(http_error(code, reason, responseHeaders or ()))

    # Open.

    def onOpen(self) -> None:
        """The 101 went out: list and watch the session, wire producers, start the link and the relay."""
        record, factory, link = self._record, self.factory, self._link
        assert record is not None
        self._outcome = "ended"
        self.http_response_data = ""  # Autobahn keeps the 101 it sent; nothing reads it again
        transport = link.transport
        start_fields = {"session": record.session_id, "client": record.client, "path": record.path,
                        "route": record.route, "backend": factory.redact(link.description),
                        "subprotocol": self.websocket_protocol_in_use}
        record.backend = start_fields["backend"]  # a hop's URL carries the client's query: no token in logs
        if record.recording:
            start_fields["recording"] = record.recording
        if record.desktop:
            start_fields["desktop"] = record.desktop
        if record.user:
            start_fields["user"] = record.user
        if self.tls_client:
            start_fields["tls_client"] = self.tls_client
        if self.via:
            start_fields["via"] = self.via
        _log.info("session start {details}", details=format_fields(start_fields), fields=start_fields,
                  audit="session.start")
        factory.sessions[record.session_id] = self
        self._listed = True
        factory.metrics.session_opened(self._label)
        keepalive = factory.config.keepalive
        if keepalive.tcp_idle:
            set_tcp_keepalive(transport, keepalive.tcp_idle, keepalive.tcp_interval, keepalive.tcp_count)
        idle = self.route.options.idle_timeout
        self._watch = SessionWatch(factory.reactor, self, factory.config.timeouts.idle if idle is None else idle,
                                   keepalive.ping, keepalive.pong)
        self._watch.start()
        # Read more per call and queue more before pausing the other side.
        transport.bufferSize = self.transport.bufferSize = RELAY_WINDOW
        self.transport.registerProducer(self._gate, True)
        self._backend_gate = _BackendWriteGate(self.transport)
        transport.registerProducer(self._backend_gate, True)
        # From here on every byte of the client goes through the relay, Autobahn's parser is done.
        self._relay = SessionRelay(Role.SERVER, link.carries, unmask, self.maxFramePayloadSize,
                                   self.maxMessagePayloadSize, base64=self._base64, close_timeout=CLOSE_TIMEOUT)
        self._relay_timer = RelayTimer(factory.reactor, self._relay, self._carry_out)
        early, self.data = self.data, b""
        link.start(self)
        if early:
            self.dataReceived(early)

    def backend_transport(self) -> Any:
        """The backend's transport (None before it is connected)."""
        return self._link.transport

    def dataReceived(self, data: bytes) -> None:
        """Before the 101 Autobahn's (bytes held, bounded); after it, the relay's."""
        relay = self._relay
        if relay is None:
            super().dataReceived(data)
            return
        self._carry_out(relay.receive(data, self.factory.reactor.seconds()))

    # Carrying out the relay's actions.

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Forward):
                self._forward(action)
            elif isinstance(action, Write):
                self._write(action)
            else:
                self._act(action)

    def _forward(self, forward: Forward) -> None:
        """Client data to the link: payloads, or frames as they are."""
        record = self._record
        assert record is not None
        record.bytes_up += forward.payload
        if self._link.carries is Carries.PAYLOAD:
            if forward.chunks:
                self._link.client_payloads(forward.chunks)
        else:
            chunks = forward.chunks
            self._link.client_frames(chunks[0] if len(chunks) == 1 else b"".join(chunks), forward.left)

    def _write(self, write: Write) -> None:
        transport = self.transport
        if transport is None:
            return
        if write.payload:
            transport.writeSequence((write.data, write.payload))
        else:
            transport.write(write.data)

    def _act(self, action: Action) -> None:
        """The rarer actions: closes, failures, pongs, drops and timers."""
        record, now = self._record, self.factory.reactor.seconds()
        if isinstance(action, CloseReceived):
            if record is not None:
                record.end(now, action.code, action.reason)
            self._link.client_close(action.code, action.reason or None)
        elif isinstance(action, Failed):
            if record is not None:
                record.end(now, action.close.code, action.close.reason)
            self._link.close()
        elif isinstance(action, PongReceived):
            if self._watch is not None:
                self._watch.pong_received()
        elif isinstance(action, Drop):
            if action.why:
                self._why = action.why
            drop(self.transport, action)
        elif isinstance(action, ArmTimer):
            if self._relay_timer is not None:
                self._relay_timer.arm(action.at)

    # Backend -> client.

    def backend_data(self, data: bytes) -> None:
        """Send a chunk of a byte-stream backend to the client as one message."""
        relay, record = self._relay, self._record
        if relay is None or record is None or relay.state is not RelayState.OPEN:
            self._link.close()
            return
        record.bytes_down += len(data)
        write = relay.send_payload(data)
        if write is not None:
            self.transport.writeSequence((write.data, write.payload)) if write.payload else \
                self.transport.write(write.data)

    def backend_frames(self, frames: bytes, payload: int, left: int) -> None:
        """
        Frames of a WebSocket backend (the last one may go on: left payload
        bytes of it are still to come), written as they are.
        """
        relay, record = self._relay, self._record
        if relay is None or record is None:
            return
        record.bytes_down += payload
        self._carry_out(relay.send_frames(frames, left))

    def backend_close(self, code: Optional[int], reason: Optional[str]) -> None:
        """The WebSocket backend closed: pass its code and reason on (no code: an empty close)."""
        now = self.factory.reactor.seconds()
        if self._record is not None:
            self._record.end(now, code, reason or "")
        if self._relay is not None:
            self._carry_out(self._relay.send_close(code, reason or "", now))

    def backend_lost(self, close: Close) -> None:
        """The backend connection ended: close the client with close (unless it is closing already)."""
        transport = self.transport
        if transport is not None:
            transport.unregisterProducer()
            # The client may be paused because the backend stopped reading:
            # read again so that its close reply arrives.
            transport.resumeProducing()
        now = self.factory.reactor.seconds()
        if self._record is not None:
            self._record.end(now, close.code, close.reason)
        if self._relay is not None:
            self._carry_out(self._relay.send_close(close.code, close.reason, now))

    def writer_paused(self, paused: bool) -> None:
        """The client's write buffer filled or drained (pongs wait meanwhile)."""
        if self._relay is not None:
            self._carry_out(self._relay.writer_paused(paused))

    # The watch's session side.

    def payload_bytes(self) -> int:
        """Payload bytes relayed so far, both ways."""
        record = self._record
        return record.bytes_up + record.bytes_down if record is not None else 0

    def reading_paused(self) -> bool:
        """Whether the client is not being read (its backend is not taking data)."""
        return self._backend_gate is not None and self._backend_gate.paused

    def send_ping(self) -> None:
        """Ping the client (after a frame under way, if any)."""
        if self._relay is not None:
            self._carry_out(self._relay.send_ping(b"tunnelgw"))

    def idle_expired(self, timeout: float) -> None:
        """No payload for timeout seconds: close with 1001."""
        assert self._record is not None
        _log.info("session idle timeout session={session} seconds={seconds:g}",
                  session=self._record.session_id, seconds=timeout)
        self.close_session(idle_close(timeout))

    def round_trip_measured(self, seconds: float) -> None:
        """A ping's pong came back: the route's round-trip histogram."""
        self.factory.metrics.round_trip(self._label, seconds)

    def pong_missing(self, deadline: float) -> None:
        """The client stopped answering pings: drop it."""
        assert self._record is not None
        record = self._record
        _log.info("session ping timeout session={session} client={client} seconds={seconds:g}",
                  session=record.session_id, client=record.client, seconds=deadline)
        record.end(self.factory.reactor.seconds(), None, "ping timeout: the client did not answer")
        self._link.close()
        self.transport.abortConnection()

    # Operations.

    @property
    def session_id(self) -> Optional[str]:
        """This session's id."""
        return self._record.session_id if self._record else None

    def name_user(self, user: str) -> None:
        """The user, as forward authentication named them (for log lines, the admin list, audit events)."""
        if self._record is not None:
            self._record.user = user

    def describe(self) -> dict[str, object]:
        """The live session's record as key/value pairs (for the admin listener)."""
        assert self._record is not None
        fields = self._record.fields(self.factory.reactor.seconds())
        if self._watch is not None and self._watch.round_trip is not None:
            fields["round_trip_ms"] = round(self._watch.round_trip * 1000, 1)
        if self.via:
            fields["via"] = self.via
        return fields

    def close_session(self, close: Close) -> None:
        """Close from the gateway's side: the client gets close, the backend its end."""
        self._link.close()
        now = self.factory.reactor.seconds()
        if self._record is not None:
            self._record.end(now, close.code, close.reason)
        # Read again so that the client's close reply can arrive.
        self.transport.resumeProducing()
        relay = self._relay
        if relay is None:
            if self.state != self.STATE_CLOSED:
                self.dropConnection(abort=True)
            return
        if relay.state is RelayState.OPEN:
            self._carry_out(relay.send_close(close.code, close.reason, now))
        elif relay.state is not RelayState.CLOSE_SENT:
            self.transport.abortConnection()

    # The end: one path.

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The client connection is gone: before the 101 Autobahn's tear-down, after it the relay's."""
        relay = self._relay
        if relay is None:
            super().connectionLost(reason)
            return
        self.log_tls_error(reason)
        relay.connection_lost()
        self.factory.countConnections -= 1
        if relay.clean and relay.remote_close is not None:
            code, text = relay.remote_close
            self._finish(True, code, text)
        else:
            self._finish(False, CLOSE_ABNORMAL, self._why or "client connection lost")

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        """The client connection is gone (before the 101: Autobahn reports it)."""
        self._finish(wasClean, code, reason or ("" if wasClean else (self.wasNotCleanReason or "client connection lost")))

    def _finish(self, clean: bool, code: Optional[int], reason: str) -> None:
        """Release everything the session took, once."""
        if self._finished:
            return
        self._finished = True
        try:
            self._release(clean, code, reason)
        finally:
            # The timers refer back to the session: dropped, so that nothing of it is a reference cycle.
            self._watch = self._relay_timer = None

    def _release(self, clean: bool, code: Optional[int], reason: str) -> None:
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            self._outcome = "abandoned"
            connecting.cancel()
        if self._watch is not None:
            self._watch.stop()
        if self._relay_timer is not None:
            self._relay_timer.cancel()
        self._link.close(None if clean else lost_close(True, ""))
        factory = self.factory
        admission, self._admission = self._admission, None
        if admission is not None:
            factory.session_counts.release(admission)
        record = self._record
        if record is None:
            return
        now = factory.reactor.seconds()
        record.end(now, code, reason)
        fields = record.fields(now)
        if self.via:
            fields["via"] = self.via
        if self._listed:
            self._listed = False
            factory.sessions.pop(record.session_id, None)
            factory.metrics.session_closed(self._label, record)
            _log.info("session end {details}", details=format_fields(fields), fields=fields, audit="session.end")
        elif self._outcome == "abandoned":
            factory.metrics.handshake_failed(self._label, "abandoned", None)
            _log.info("handshake abandoned {details}", details=format_fields(fields), fields=fields)


#: Class-level defaults of the slotted Autobahn attributes (``state``, ``data``, ``peer``...), set on each session.
_SLOT_DEFAULTS = slot_defaults(QuietServerProtocol, SERVER_CONNECTION_SLOTS)


def http_error(code: int, reason: str, headers: Any = ()) -> bytes:
    """An HTTP error response with a plain-text body, closing the connection."""
    body = f"{code} {reason}\n".encode("utf-8")
    # The reason phrase says why (clients such as browsers show it); only
    # printable ASCII, so that no reason can add a header or a line.
    phrase = "".join(c if " " <= c <= "~" else "?" for c in reason)[:200]
    head = [f"HTTP/1.1 {code} {phrase}", "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + body
