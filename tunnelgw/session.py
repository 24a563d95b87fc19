"""
The one server-side session: a client's WebSocket (Autobahn's server
protocol, driven from the request head the front already parsed) that owns a
backend link and a watch.

- The **link** (:class:`BackendLink`: a byte stream in
  :mod:`tunnelgw.backends.tcp`, a balancer member through the same, a
  WebSocket hop in :mod:`tunnelgw.backends.websocket`) connects, relays and
  ends the backend side.  A new backend kind is a new link, never a subclass
  of the session.
- The **watch** (:class:`tunnelgw.watch.SessionWatch`) keeps the idle and
  ping/pong timers.

The client is not read while its backend connects: the front paused its
transport at the end of the head, and what arrived with the head (at most
:data:`~tunnelgw.core.http.EARLY_DATA_LIMIT` bytes) waits in Autobahn's buffer
and is read as frames only after the 101.  Nothing after the head is ever
parsed as HTTP.

Every buffer is bounded: the two transports are each other's producers (a
side that stops reading stops the other), at most one pong waits while the
client does not read (RFC 6455 allows answering only the latest ping), and a
close the client does not answer within :data:`~tunnelgw.core.relay.CLOSE_TIMEOUT`
drops it.

Every resource a session takes (its slot, the pool member, the backend
connection, the timers, its entry in the live list, its metrics) is released
in :meth:`GatewaySession._finish`, which runs once, from Autobahn's
``onClose`` (the client connection is gone), whatever happened before.
"""

from __future__ import annotations

import base64
from collections import deque
from typing import Any, Optional

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tunnelgw.backends import BackendLink, BackendRefused
from tunnelgw.core.clientaddr import format_address
from tunnelgw.core.frames import BinaryFrameReader, FrameScanner, frame_header
from tunnelgw.core.handshake import Handshake
from tunnelgw.core.http import EARLY_DATA_LIMIT, RequestHead
from tunnelgw.core.relay import (
    CLOSE_GOING_AWAY,
    CLOSE_TIMEOUT,
    CLOSE_INVALID_PAYLOAD,
    RELAY_WINDOW,
    Base64Decoder,
    Close,
    SessionRecord,
    check_close_frame,
    close_reason,
    idle_close,
)
from tunnelgw.core.routing import Reject, Route
from tunnelgw.core.wsrelay import lost_close
from tunnelgw.fastpath import unmask
from tunnelgw.logs import format_fields
from tunnelgw.metrics import route_label
from tunnelgw.sockopts import set_tcp_keepalive
from tunnelgw.watch import SessionWatch
from tunnelgw.wsstate import QuietAdapter, frame_fits, open_state

__all__ = ["GatewaySession", "client_label", "http_error", "log_refusal"]

_log = Logger(namespace="tunnelgw")
_OPCODE_BINARY = 2


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

    def __init__(self, session: "GatewaySession") -> None:
        self._session = session
        self.paused = False

    def pauseProducing(self) -> None:
        """The client's write buffer is full."""
        self.paused = True
        transport = self._session.backend_transport()
        if transport is not None:
            transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The client's write buffer drained."""
        self.paused = False
        transport = self._session.backend_transport()
        if transport is not None:
            transport.resumeProducing()
        self._session.flush_pong()

    def stopProducing(self) -> None:
        """The client connection is gone; :meth:`GatewaySession._finish` ends the rest."""


class GatewaySession(QuietAdapter, WebSocketServerProtocol):  # type: ignore[misc]  # Autobahn's bases are untyped
    """
    One client session.  Built by :class:`tunnelgw.gateway.GatewayFactory`
    for a routed upgrade request; :meth:`begin` takes it from the parsed head.
    """

    transport: Any
    factory: Any  # a tunnelgw.gateway.GatewayFactory (which imports this module)
    maxFramePayloadSize: int
    maxMessagePayloadSize: int

    #: The verified client certificate's identity ('' without one), set by the gateway.
    tls_client = ""
    #: The request path as logs and the admin list show it (the request's canonical view), set by the gateway.
    shown_path = ""

    def __init__(self, factory: Any, route: Route, head: RequestHead, handshake: Handshake,
                 client: str, link: BackendLink, session_id: str, recording: str = "") -> None:
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
        self._reader: Optional[BinaryFrameReader] = None
        self._scanner: Optional[FrameScanner] = None
        self._direct = False
        self._decoder: Optional[Base64Decoder] = None
        self._base64 = False
        self._listed = False
        self._finished = False
        self._outcome = "abandoned"
        self._refusal_kind = "websocket"
        self._close_call: Any = None
        self._send_left = 0
        self._pending_pong: Optional[bytes] = None
        self._received = 0

    def _connectionMade(self) -> None:
        """Autobahn's set-up of a server connection's state (:func:`tunnelgw.wsstate.open_state`)."""
        open_state(self)
        self.factory.countConnections += 1

    def _connectionLost(self, reason: Any) -> None:
        """Autobahn's tear-down (which calls :meth:`onClose`), without its debug formatting."""
        WebSocketProtocol._connectionLost(self, reason)
        self.factory.countConnections -= 1

    # The handshake, from the front's parse (Autobahn parses nothing).

    def begin(self, early: bytes) -> None:
        """
        Start the session on a connected, paused transport: check, admit,
        connect the backend.  early is what the client sent after its head.
        """
        head, handshake, factory = self._head, self._handshake, self.factory
        assert head is not None and handshake is not None, "a session begins once"
        self._head = self._handshake = None  # not kept for the session's life (memory per idle session)
        # What Autobahn's own handshake parser would have set (and the handshake reads).
        self.http_request_uri = head.target.decode("latin-1")
        self.http_request_path = head.path.decode("latin-1")
        self.http_request_host = handshake.host
        self.http_request_params = {}
        self.websocket_version = 13
        self.websocket_origin = handshake.origin  # type: ignore[assignment]  # None when not sent
        self.websocket_protocols = list(handshake.protocols)
        self.websocket_extensions = []
        self._wskey = handshake.key
        self.data = early
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
        self._base64 = subprotocol == "base64" and self._link.byte_stream
        self.succeedHandshake(subprotocol)  # sends the 101, calls onOpen, reads the early frames
        if self.state == self.STATE_OPEN:
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
        """The 101 went out: list and watch the session, wire producers, start the link."""
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
        _log.info("session start {details}", details=format_fields(start_fields), fields=start_fields,
                  audit="session.start")
        factory.sessions[record.session_id] = self
        self._listed = True
        factory.metrics.session_opened(self._label)
        keepalive = factory.config.keepalive
        if keepalive.tcp_idle:
            set_tcp_keepalive(transport, keepalive.tcp_idle, keepalive.tcp_interval, keepalive.tcp_count)
        idle = self.route.options.idle_timeout
        label = self._label
        self._watch = SessionWatch(factory.reactor, self, factory.config.timeouts.idle if idle is None else idle,
                                   keepalive.ping, keepalive.pong,
                                   lambda seconds: factory.metrics.round_trip(label, seconds))
        self._watch.start()
        # Read more per call and queue more before pausing the other side.
        transport.bufferSize = self.transport.bufferSize = RELAY_WINDOW
        self.transport.registerProducer(self._gate, True)
        transport.registerProducer(self.transport, True)
        self._decoder = Base64Decoder() if self._base64 else None
        if not self._base64:
            limits = [n for n in (self.maxFramePayloadSize, self.maxMessagePayloadSize) if n]
            limit = min(limits) if limits else 0
            if getattr(link, "byte_stream", False):
                self._reader = BinaryFrameReader(unmask, limit)
                self._direct = True
            elif getattr(link, "frame_relay", False):
                self._scanner = FrameScanner(True, limit)
        link.start(self)

    def backend_transport(self) -> Any:
        """The backend's transport (None before it is connected)."""
        return self._link.transport

    # Client -> backend.

    def dataReceived(self, data: bytes) -> None:
        """Read final binary frames directly while possible; the rest is Autobahn's."""
        reader = self._reader
        if reader is None:
            if self._scanner is not None:
                self._scan(data)
            else:
                self._dataReceived(data)
            return
        if self.state != self.STATE_OPEN:
            self._dataReceived(data)
            return
        if not self._direct:
            # The reader takes over only where Autobahn holds nothing.
            if reader.at_boundary and not self._autobahn_idle():
                self._dataReceived(data)
                return
            self._direct = True
        payloads, rest = reader.feed(data)
        if payloads:
            self._record.bytes_up += sum(map(len, payloads))  # type: ignore[union-attr]
            self._link.client_payloads(payloads)
        if rest is not None:
            self._direct = False
            self._dataReceived(rest)

    def _autobahn_idle(self) -> bool:
        """Whether Autobahn's parser is between frames and messages with nothing buffered."""
        return self.current_frame is None and not self.inside_message and not self.data

    def _scan(self, data: bytes) -> None:
        """A WebSocket hop: pass final binary frames on as they are; the rest is Autobahn's."""
        scanner = self._scanner
        assert scanner is not None
        # Between frames the scanner takes over only where Autobahn holds
        # nothing; inside a frame it reads on (so a close sent meanwhile
        # does not make Autobahn parse the frame's rest as a new frame).
        if scanner.at_boundary and (self.state != self.STATE_OPEN or not self._autobahn_idle()):
            self._dataReceived(data)
            return
        passed, payload, rest = scanner.feed(data)
        if passed and self.state == self.STATE_OPEN:
            self._record.bytes_up += payload  # type: ignore[union-attr]
            self._link.client_frames(passed, scanner.inside_frame)  # type: ignore[attr-defined]  # a frame_relay link
        if rest is not None:
            self._dataReceived(rest)

    def onMessageBegin(self, isBinary: bool) -> None:
        """A message starts: count its size afresh (nothing is buffered)."""
        self._received = 0

    def onMessageFrameBegin(self, length: int) -> None:
        """Apply the frame and message limits Autobahn's default would, then start the frame on the link."""
        if frame_fits(self, length) and self.state == self.STATE_OPEN:
            self._link.client_frame_begin(self.current_frame.opcode, self.current_frame.fin, length)

    def onMessageFrameData(self, payload: bytes) -> None:
        """Forward a piece of a client frame (decoding base64 for base64 sessions)."""
        if self.state != self.STATE_OPEN or not payload:
            # Failing (a protocol violation: Autobahn parses on to find the
            # close reply) or closing: nothing more reaches the backend.
            return
        if self._decoder is not None:
            try:
                payload = self._decoder.feed(payload)
            except ValueError as e:
                self._bad_payload(str(e))
                return
        self._record.bytes_up += len(payload)  # type: ignore[union-attr]
        self._link.client_frame_data(payload)

    def onMessageFrameEnd(self) -> None:
        """Nothing to do: the frame was forwarded as it streamed in."""

    def onMessageEnd(self) -> None:
        """A base64 message must end on a whole quantum."""
        if self._decoder is not None:
            try:
                self._decoder.end_message()
            except ValueError as e:
                self._bad_payload(str(e))

    def _bad_payload(self, reason: str) -> None:
        self._link.close()
        self.send_close(Close(CLOSE_INVALID_PAYLOAD, reason))

    # Backend -> client.

    def backend_data(self, data: bytes) -> None:
        """Send a chunk of a byte-stream backend to the client as one message."""
        if self.state != self.STATE_OPEN:
            self._link.close()
            return
        self._record.bytes_down += len(data)  # type: ignore[union-attr]
        if self._base64:
            self.sendMessage(base64.b64encode(data), isBinary=False)
        else:
            # Hot path: a binary frame needs only a header ahead of the payload as is.
            self.transport.writeSequence((frame_header(_OPCODE_BINARY, True, len(data)), data))

    def backend_frames(self, frames: bytes, payload: int, left: int) -> None:
        """
        Whole final binary frames of a WebSocket backend (the last one may
        go on: left payload bytes of it are still to come), written as they are.
        """
        if self.state != self.STATE_OPEN:
            return
        self.transport.write(frames)
        self._record.bytes_down += payload  # type: ignore[union-attr]
        self._send_left = left
        if not left:
            self.flush_pong()

    def backend_frame_begin(self, opcode: int, fin: bool, length: int) -> None:
        """Start a frame relayed from a WebSocket backend; its payload follows."""
        if self.state != self.STATE_OPEN:
            return
        self.transport.write(frame_header(opcode, fin, length))
        self._send_left = length
        if not length:
            self.flush_pong()

    def backend_frame_data(self, payload: bytes) -> None:
        """A piece of the relayed frame under way."""
        if self.state != self.STATE_OPEN or not self._send_left:
            return
        self.transport.write(payload)
        self._record.bytes_down += len(payload)  # type: ignore[union-attr]
        self._send_left -= len(payload)
        if not self._send_left:
            self.flush_pong()

    def backend_close(self, code: Optional[int], reason: Optional[str]) -> None:
        """The WebSocket backend closed: pass its code and reason on (no code: an empty close)."""
        if self._record is not None:
            self._record.end(self.factory.reactor.seconds(), code, reason or "")
        if self.state != self.STATE_OPEN:
            return
        if self._send_left:
            # A close may not cut into a frame under way, whose rest will never come.
            self.dropConnection(abort=True)
            return
        self.sendCloseFrame(code=code, reasonUtf8=close_reason(reason).encode("utf-8") if reason and code else None)

    def backend_lost(self, close: Close) -> None:
        """The backend connection ended: close the client with close (unless it is closing already)."""
        transport = self.transport
        if transport is not None:
            transport.unregisterProducer()
            # The client may be paused because the backend stopped reading:
            # read again so that its close reply arrives.
            transport.resumeProducing()
        if self._record is not None:
            self._record.end(self.factory.reactor.seconds(), close.code, close.reason)
        if self.state == self.STATE_OPEN:
            if self._send_left:
                self.dropConnection(abort=True)
            else:
                self.send_close(close)

    # Control frames.

    def onPing(self, payload: bytes) -> None:
        """Answer, unless a relayed frame is under way or the client is not reading: then keep the latest."""
        if self._send_left or self._gate.paused:
            self._pending_pong = payload
        else:
            self.sendPong(payload)

    def flush_pong(self) -> None:
        """Send the pong held back, if any and if it can go now."""
        if self._pending_pong is not None and not self._send_left and not self._gate.paused \
                and self.state == self.STATE_OPEN:
            pong, self._pending_pong = self._pending_pong, None
            self.sendPong(pong)

    def onPong(self, payload: bytes) -> None:
        """Any pong proves the client still reads."""
        if self._watch is not None:
            self._watch.pong_received()

    def onCloseFrame(self, code: Optional[int], reasonRaw: Optional[bytes]) -> Optional[bool]:
        """Check the client's close; answer it (a bad code gets 1002, a bad reason 1007) and tell the link."""
        was_open = self.state == self.STATE_OPEN
        violation = check_close_frame(code, reasonRaw)
        if violation is not None:
            self.remoteCloseCode, self.remoteCloseReason = code, None
            if self._record is not None:
                self._record.end(self.factory.reactor.seconds(), violation.code, violation.reason)
            self._link.close()
            if self._send_left:
                # No close frame can go inside the frame under way.
                self.dropConnection(abort=True)
                return True
            if was_open:
                self.failedByMe = True
                self.send_close(violation)
            self.dropConnection(abort=False)
            return True
        if was_open:
            reason = reasonRaw.decode("utf-8") if reasonRaw else None
            if self._record is not None:
                self._record.end(self.factory.reactor.seconds(), code, reason or "")
            self._link.client_close(code, reason)
            if self._send_left:
                # Our reply would land inside an unfinished frame.
                self.dropConnection(abort=True)
                return True
        if self.state == self.STATE_CLOSING:
            # The reply to our close: end the connection after what is queued
            # (Autobahn would abort, and a reset can destroy our close frame).
            self.remoteCloseCode = code
            self.remoteCloseReason = reasonRaw.decode("utf-8") if reasonRaw else None
            self.wasClean = True
            self.dropConnection(abort=False)
            return True
        return super().onCloseFrame(code, reasonRaw)  # type: ignore[no-any-return, arg-type]

    def sendCloseFrame(self, code: Optional[int] = None, reasonUtf8: Optional[bytes] = None,
                       isReply: bool = False) -> None:
        """Send a close; a client that does not answer within CLOSE_TIMEOUT is dropped."""
        super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)
        if not isReply and self._close_call is None and self.state == self.STATE_CLOSING:
            self._close_call = self.factory.reactor.callLater(CLOSE_TIMEOUT, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._close_call = None
        if self.state != self.STATE_CLOSED:
            self.wasNotCleanReason = "the client did not answer the close in time"
            self.dropConnection(abort=True)

    def send_close(self, close: Close) -> None:
        """Send a close frame with any code the gateway uses (Autobahn's sendClose allows only some)."""
        self.sendCloseFrame(close.code, close_reason(close.reason).encode("utf-8"))

    # The watch's session side.

    def payload_bytes(self) -> int:
        """Payload bytes relayed so far, both ways."""
        record = self._record
        return record.bytes_up + record.bytes_down if record is not None else 0

    def reading_paused(self) -> bool:
        """Whether the client is not being read (its backend is not taking data)."""
        return bool(getattr(self._link.transport, "producerPaused", False))

    def send_ping(self) -> None:
        """Ping the client."""
        if self.state == self.STATE_OPEN:
            self.sendPing(b"tunnelgw")

    def idle_expired(self, timeout: float) -> None:
        """No payload for timeout seconds: close with 1001."""
        assert self._record is not None
        _log.info("session idle timeout session={session} seconds={seconds:g}",
                  session=self._record.session_id, seconds=timeout)
        self.close_session(idle_close(timeout))

    def pong_missing(self, deadline: float) -> None:
        """The client stopped answering pings: drop it."""
        assert self._record is not None
        record = self._record
        _log.info("session ping timeout session={session} client={client} seconds={seconds:g}",
                  session=record.session_id, client=record.client, seconds=deadline)
        record.end(self.factory.reactor.seconds(), None, "ping timeout: the client did not answer")
        self._link.close()
        self.dropConnection(abort=True)

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
        return fields

    def close_session(self, close: Close) -> None:
        """Close from the gateway's side: the client gets close, the backend its end."""
        self._link.close()
        if self._record is not None:
            self._record.end(self.factory.reactor.seconds(), close.code, close.reason)
        # Read again so that the client's close reply can arrive.
        self.transport.resumeProducing()
        if self.state == self.STATE_OPEN and not self._send_left:
            self.send_close(close)
        elif self.state != self.STATE_CLOSED:
            self.dropConnection(abort=True)

    # The end: one path.

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        """The client connection is gone."""
        self._finish(wasClean, code, reason)

    def _finish(self, clean: bool, code: Optional[int], reason: Optional[str]) -> None:
        """Release everything the session took, once."""
        if self._finished:
            return
        self._finished = True
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            self._outcome = "abandoned"
            connecting.cancel()
        if self._watch is not None:
            self._watch.stop()
        if self._close_call is not None and self._close_call.active():
            self._close_call.cancel()
        self._close_call = None
        self._link.close(None if clean else lost_close(True, ""))
        self._reader = self._scanner = None
        factory = self.factory
        admission, self._admission = self._admission, None
        if admission is not None:
            factory.session_counts.release(admission)
        record = self._record
        if record is None:
            return
        now = factory.reactor.seconds()
        record.end(now, code, reason or ("" if clean else (self.wasNotCleanReason or "client connection lost")))
        fields = record.fields(now)
        if self._listed:
            self._listed = False
            factory.sessions.pop(record.session_id, None)
            factory.metrics.session_closed(self._label, record)
            _log.info("session end {details}", details=format_fields(fields), fields=fields, audit="session.end")
        elif self._outcome == "abandoned":
            factory.metrics.handshake_failed(self._label, "abandoned", None)
            _log.info("handshake abandoned {details}", details=format_fields(fields), fields=fields)


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
