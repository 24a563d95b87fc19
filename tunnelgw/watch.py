"""
The timers of one session, composed into it: the idle timeout and the
WebSocket ping with its pong deadline.  Decisions come from
:class:`tunnelgw.core.relay.IdleWatch` and :class:`~tunnelgw.core.relay.Heartbeat`;
time from the injected reactor (so tests drive it with ``Clock``).

Bounds, from the event each measures:

- idle: the close is sent between ``timeout`` and ``1.25 * timeout`` seconds
  after the session's last payload byte either way (the counters are sampled
  every ``timeout / 4``, so the hot path carries no timer work);
- pong: a client that has not answered a ping ``pong`` seconds after it was
  sent is dropped then (while the gateway is not reading from the client,
  because its backend is not taking data, the deadline starts over: a pong
  cannot be read then).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

from tunnelgw.core.relay import Heartbeat, IdleWatch

__all__ = ["SessionWatch", "Watched"]


class Watched(Protocol):
    """What a watch needs from its session."""

    def payload_bytes(self) -> int:
        """Payload bytes relayed so far, both ways."""

    def reading_paused(self) -> bool:
        """Whether the gateway is not reading from the client now."""

    def send_ping(self) -> None:
        """Send the client a ping."""

    def idle_expired(self, timeout: float) -> None:
        """No payload either way for timeout seconds: close the session."""

    def pong_missing(self, deadline: float) -> None:
        """The client did not answer a ping within deadline seconds: drop it."""


class SessionWatch:
    """
    Idle and ping/pong timers for one session.

    :param idle: seconds without payload before closing (0: never).
    :param ping: seconds between pings (0: no pings).
    :param pong: seconds a pong may take.
    :ivar round_trip: seconds from the last ping to its pong (None until
        one is measured): the client's round trip, as the gateway sees it.
    :ivar on_round_trip: called with each round trip measured (metrics).
    """

    def __init__(self, reactor: Any, session: Watched, idle: float, ping: float, pong: float,
                 on_round_trip: Optional[Callable[[float], None]] = None) -> None:
        self._reactor = reactor
        self._session = session
        self._idle = IdleWatch(idle, reactor.seconds()) if idle else None
        self._heartbeat = Heartbeat(ping, pong) if ping else None
        self._idle_call: Any = None
        self._ping_call: Any = None
        self._ping_sent: Optional[float] = None
        self.round_trip: Optional[float] = None
        self.on_round_trip = on_round_trip

    def start(self) -> None:
        """Arm the timers (the session has just opened)."""
        if self._idle is not None:
            self._idle = IdleWatch(self._idle.timeout, self._reactor.seconds())
            self._idle_call = self._reactor.callLater(self._idle_period(), self._check_idle)
        if self._heartbeat is not None:
            self._ping_call = self._reactor.callLater(self._heartbeat.interval, self._ping)

    def _idle_period(self) -> float:
        assert self._idle is not None
        return max(self._idle.timeout / 4, 0.05)

    def _check_idle(self) -> None:
        self._idle_call = None
        idle = self._idle
        if idle is None:
            return
        wait = idle.check(self._session.payload_bytes(), self._reactor.seconds())
        if wait is None:
            self.stop()
            self._session.idle_expired(idle.timeout)
            return
        self._idle_call = self._reactor.callLater(min(wait, self._idle_period()), self._check_idle)

    def _ping(self) -> None:
        self._ping_call = None
        heartbeat = self._heartbeat
        if heartbeat is None:
            return
        heartbeat.ping_sent(self._reactor.seconds())
        self._ping_sent = self._reactor.seconds()
        self._session.send_ping()
        self._ping_call = self._reactor.callLater(heartbeat.deadline, self._pong_due)

    def _pong_due(self) -> None:
        self._ping_call = None
        heartbeat = self._heartbeat
        if heartbeat is None:
            return
        wait = heartbeat.verdict(self._reactor.seconds(), self._session.reading_paused())
        if wait is None:
            self.stop()
            self._session.pong_missing(heartbeat.deadline)
        elif wait == 0.0:
            self._ping_call = self._reactor.callLater(max(0.0, heartbeat.interval - heartbeat.deadline), self._ping)
        else:
            self._ping_call = self._reactor.callLater(wait, self._pong_due)

    def pong_received(self) -> None:
        """Any pong proves the client still reads; the first after a ping measures the round trip."""
        if self._heartbeat is not None:
            self._heartbeat.pong_received()
        if self._ping_sent is not None:
            self.round_trip = self._reactor.seconds() - self._ping_sent
            self._ping_sent = None
            if self.on_round_trip is not None:
                self.on_round_trip(self.round_trip)

    def stop(self) -> None:
        """Disarm every timer (the session is ending); safe to call again."""
        for call in (self._idle_call, self._ping_call):
            if call is not None and call.active():
                call.cancel()
        self._idle_call = self._ping_call = None
        self._idle = None
        self._heartbeat = None
