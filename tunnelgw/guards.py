"""
Session guards: what keeps a gateway session bounded and accountable, mixed
into the Autobahn glue of :mod:`tunnelgw.protocol`.

- :class:`SessionGuards` (protocol side): admission (session limits and
  handshake rate), the idle timeout, WebSocket pings with a pong deadline,
  TCP keepalive to the backend, closing a session on demand (admin,
  shutdown), and Autobahn log lines that name their session.
- :class:`FactoryGuards` (factory side): the limits, metrics and the table of
  live sessions of one gateway.

Decisions come from :mod:`tunnelgw.core.limits` and :mod:`tunnelgw.core.relay`; this
module only keeps timers and state.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger

from tunnelgw.core.config import Config
from tunnelgw.core.limits import Admission, HandshakeRate, SessionCounts
from tunnelgw.metrics import GatewayMetrics, route_label
from tunnelgw.core.relay import Close, Heartbeat, IdleWatch, SessionRecord, close_reason, idle_close
from tunnelgw.core.routing import Reject, Route
from tunnelgw.sockopts import set_tcp_keepalive

__all__ = ["FactoryGuards", "SessionGuards", "SessionLog"]

_log = Logger(namespace="tunnelgw")



class SessionLog:
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


class SessionGuards:
    """
    Protocol-side guards; the host class is a ``WebSocketServerProtocol`` with
    ``factory`` (a :class:`FactoryGuards`), ``route``, ``_record``,
    ``_backend_transport()``, ``_update_counts()``, ``client_host()`` and
    ``_close_backend()``.
    """

    factory: Any
    route: Optional[Route]
    transport: Any
    state: Any
    STATE_OPEN: Any
    STATE_CLOSED: Any
    _record: Optional[SessionRecord]
    # Provided by the host class (annotations only, so the MRO finds them there).
    sendPing: Any
    sendCloseFrame: Any
    dropConnection: Any
    _close_backend: Any
    _log_rejection: Any
    _backend_transport: Any
    _update_counts: Any
    client_host: Any

    _admission: Optional[Admission] = None
    _heartbeat: Optional[Heartbeat] = None
    _idle: Optional[IdleWatch] = None
    _ping_call: Any = None
    _idle_call: Any = None

    def _admit(self, route: Route, path: str) -> Optional[Reject]:
        """Apply the handshake rate and session limits; keep the slot granted."""
        factory = self.factory
        client = self.client_host()
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
        backend_transport = self._backend_transport()
        if backend_transport is not None and keepalive.tcp_idle:
            set_tcp_keepalive(backend_transport, keepalive.tcp_idle, keepalive.tcp_interval,
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
        self._update_counts(record)
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
        paused = bool(getattr(self._backend_transport(), "producerPaused", False))
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


class FactoryGuards:
    """Factory-side guards: limits, metrics and the live sessions of one gateway."""

    reactor: Any
    setProtocolOptions: Any

    def harden(self, config: Config, metrics: Optional[GatewayMetrics] = None) -> None:
        """Apply config's limits and keepalive settings; count into metrics (or a private registry)."""
        self.config = config
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        self.sessions: dict[str, Any] = {}
        self.session_counts = SessionCounts(config.limits.sessions, config.limits.per_client)
        self.handshake_rate = HandshakeRate(config.limits.rate)
        self.metrics.watch(self)
        # failByDrop=False: a client breaking a rule gets a close frame with
        # the code (1009, 1002, 1007) and reason before the connection ends.
        self.setProtocolOptions(maxFramePayloadSize=config.limits.frame,
                                maxMessagePayloadSize=config.limits.message, failByDrop=False)

    def session_opened(self, session: Any) -> None:
        """A session's handshake completed: list it and count it."""
        assert session.session_id is not None and session.route is not None
        self.sessions[session.session_id] = session
        self.metrics.session_opened(route_label(session.route))

    def session_closed(self, session: Any, record: SessionRecord) -> None:
        """A listed session ended: unlist it, keep its byte counts."""
        self.sessions.pop(record.session_id, None)
        self.metrics.session_closed(route_label(session.route) if session.route else "", record)

    def close_all(self, close: Close) -> None:
        """Close every live session with close (shutdown)."""
        for session in list(self.sessions.values()):
            session.close_session(close)
