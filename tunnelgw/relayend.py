"""
How both glues of :class:`~tunnelgw.core.sessionrelay.SessionRelay` (the
client's session in :mod:`tunnelgw.session`, a WebSocket hop in
:mod:`tunnelgw.backends.websocket`) carry out the end of a connection: its
one deadline (:class:`~tunnelgw.core.sessionrelay.ArmTimer`) and its
:class:`~tunnelgw.core.sessionrelay.Drop`.  Written once, so the two sides
cannot drift.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from tunnelgw.core.sessionrelay import Action, Drop, SessionRelay

__all__ = ["RelayTimer", "drop"]


class RelayTimer:
    """
    The one timer of a relay: :meth:`arm` at the time an
    :class:`~tunnelgw.core.sessionrelay.ArmTimer` names (re-arming replaces
    it); when it comes, the relay's :meth:`~SessionRelay.timer` actions go
    to carry_out.

    :param reactor: the clock the relay's ``now`` is read from.
    :param carry_out: the glue's carrier of the relay's actions.
    """

    __slots__ = ("_reactor", "_relay", "_carry_out", "_call")

    def __init__(self, reactor: IReactorTime, relay: SessionRelay,
                 carry_out: Callable[[list[Action]], None]) -> None:
        self._reactor = reactor
        self._relay = relay
        self._carry_out = carry_out
        self._call: Optional[IDelayedCall] = None

    def arm(self, at: float) -> None:
        """Fire at at (a time on the reactor's clock; at once if it is past)."""
        self.cancel()
        self._call = self._reactor.callLater(max(0.0, at - self._reactor.seconds()), self.fire)

    def fire(self) -> None:
        """The time came: carry out what the relay decides now."""
        self._call = None
        self._carry_out(self._relay.timer(self._reactor.seconds()))

    def cancel(self) -> None:
        """Disarm (the connection is gone)."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()


def drop(transport: Any, action: Drop) -> None:
    """
    End a connection as a :class:`~tunnelgw.core.sessionrelay.Drop` says:
    abort, or unregister its producer (a drained queue would resume a
    registered one instead of closing) and lose it after what is queued.
    """
    if transport is None:
        return
    if action.abort:
        transport.abortConnection()
    else:
        transport.unregisterProducer()
        transport.loseConnection()
