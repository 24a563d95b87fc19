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

from typing import Any, Optional, Protocol

from twisted.internet.interfaces import IReactorTime

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

    def round_trip_measured(self, seconds: float) -> None:
        """A pong came seconds after its ping (metrics)."""


class SessionWatch:
    """
    Idle and ping/pong timers for one session, on one reactor timer (armed
    for whichever check comes first: a session costs one ``callLater``, not two).

    :param idle: seconds without payload before closing (0: never).
    :param ping: seconds between pings (0: no pings).
    :param pong: seconds a pong may take.
    :ivar round_trip: seconds from the last ping to its pong (None until
        one is measured): the client's round trip, as the gateway sees it.
    """

    __slots__ = ("_reactor", "_session", "_idle_timeout", "_idle", "_heartbeat", "_call", "_next_idle", "_next_ping",
                 "_pong_due", "_ping_sent", "round_trip")

    def __init__(self, reactor: IReactorTime, session: Watched, idle: float, ping: float, pong: float) -> None:
        self._reactor = reactor
        self._session = session
        self._idle_timeout = idle
        self._idle: Optional[IdleWatch] = None
        self._heartbeat = Heartbeat(ping, pong) if ping else None
        self._call: Any = None
        self._next_idle: Optional[float] = None  # when the idle counters are next sampled
        self._next_ping: Optional[float] = None  # when the next ping goes out, or the pong deadline is checked
        self._pong_due = False  # whether _next_ping is a pong deadline
        self._ping_sent: Optional[float] = None
        self.round_trip: Optional[float] = None

    def start(self) -> None:
        """Arm the timers (the session has just opened)."""
        now = self._reactor.seconds()
        if self._idle_timeout:
            self._idle = IdleWatch(self._idle_timeout, now)
            self._next_idle = now + self._idle_period()
        if self._heartbeat is not None:
            self._next_ping = now + self._heartbeat.interval
        self._arm(now)

    def _idle_period(self) -> float:
        return max(self._idle_timeout / 4, 0.05)

    def _arm(self, now: float) -> None:
        due = [t for t in (self._next_idle, self._next_ping) if t is not None]
        if due:
            self._call = self._reactor.callLater(max(0.0, min(due) - now), self._fire)

    def _fire(self) -> None:
        self._call = None
        now = self._reactor.seconds()
        if self._next_idle is not None and now >= self._next_idle:
            self._next_idle = None
            if not self._check_idle(now):
                return
        if self._next_ping is not None and now >= self._next_ping:
            self._next_ping = None
            if not self._check_ping(now):
                return
        self._arm(now)

    def _check_idle(self, now: float) -> bool:
        """Sample the counters; False when the session was closed for idleness."""
        idle = self._idle
        if idle is None:
            return True
        wait = idle.check(self._session.payload_bytes(), now)
        if wait is None:
            self.stop()
            self._session.idle_expired(idle.timeout)
            return False
        self._next_idle = now + min(wait, self._idle_period())
        return True

    def _check_ping(self, now: float) -> bool:
        """Ping, or check the pong deadline; False when the client was dropped."""
        heartbeat = self._heartbeat
        if heartbeat is None:
            return True
        if not self._pong_due:
            heartbeat.ping_sent(now)
            self._ping_sent = now
            self._session.send_ping()
            self._pong_due = True
            self._next_ping = now + heartbeat.deadline
            return True
        wait = heartbeat.verdict(now, self._session.reading_paused())
        if wait is None:
            self.stop()
            self._session.pong_missing(heartbeat.deadline)
            return False
        if wait == 0.0:
            self._pong_due = False
            self._next_ping = now + max(0.0, heartbeat.interval - heartbeat.deadline)
        else:
            self._next_ping = now + wait
        return True

    def pong_received(self) -> None:
        """Any pong proves the client still reads; the first after a ping measures the round trip."""
        if self._heartbeat is not None:
            self._heartbeat.pong_received()
        if self._ping_sent is not None:
            self.round_trip = self._reactor.seconds() - self._ping_sent
            self._ping_sent = None
            self._session.round_trip_measured(self.round_trip)

    def stop(self) -> None:
        """Disarm the timer (the session is ending); safe to call again."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self._idle = None
        self._heartbeat = None
        self._next_idle = self._next_ping = None
