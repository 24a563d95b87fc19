"""
Admission policy for new sessions: concurrent session counts (global, per
route, per client address) and a handshake rate per client address.

Pure and clock-free: callers pass ``now``.  Memory is bounded: counters
disappear when they drop to zero and rate buckets are dropped once full
again (an address that stopped knocking is forgotten), with a hard cap on
how many addresses are tracked at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

from tunnelgw.core.routing import Reject

__all__ = ["MAX_CHANNELS", "Admission", "HandshakeRate", "SessionCounts"]

#: Channels of one client's session of a desktop that share its slot (SPICE opens about a
#: dozen: main, displays, inputs, cursor, sound, USB redirection...); one more gets 503.
MAX_CHANNELS = 32


@dataclass(frozen=True, slots=True)
class Admission:
    """A granted session slot; give it back with :meth:`SessionCounts.release`."""

    route: str
    client: str
    #: The logical session of one client on one desktop: the id of its first live channel
    #: ("" without a desktop).
    group: str = ""
    desktop: str = ""


class SessionCounts:
    """
    Concurrent sessions, counted globally, per route and per client address.
    The sessions of one desktop from one client (the channels of a SPICE
    client, say) are one logical session and take one slot together: the
    first one's, held until the last one ends.  Another client of the same
    desktop is another session, with a slot of its own.  At most
    :data:`MAX_CHANNELS` channels share a slot.  "Client" is the
    client address as the gateway determined it (see
    :mod:`tunnelgw.core.clientaddr`): clients behind one NAT share it.

    :param total: global limit (0: none).
    :param per_client: limit per client address (0: none).
    """

    def __init__(self, total: int, per_client: int) -> None:
        self.total_limit = total
        self.per_client_limit = per_client
        self.live = 0
        self._routes: dict[str, int] = {}
        self._clients: dict[str, int] = {}
        #: (desktop, client) -> [live channels, group id, the first channel's admission]
        self._desktops: dict[tuple[str, str], list[Any]] = {}

    def admit(self, route: str, route_limit: Optional[int], client: str, desktop: str = "",
              session_id: str = "") -> Union[Admission, Reject]:
        """
        Take a slot for a session of client on route, or say which limit refuses
        it (503).  A session of a desktop that this client already holds a slot
        for joins that slot.
        """
        joined = self._desktops.get((desktop, client)) if desktop else None
        if joined is not None:
            if joined[0] >= MAX_CHANNELS:
                return Reject(503, "too many channels of this desktop session")
            joined[0] += 1
            return Admission(route, client, joined[1], desktop)
        if self.total_limit and self.live >= self.total_limit:
            return Reject(503, "the gateway is at its session limit")
        if route_limit and self._routes.get(route, 0) >= route_limit:
            return Reject(503, "this route is at its session limit")
        if self.per_client_limit and self._clients.get(client, 0) >= self.per_client_limit:
            return Reject(503, "too many sessions from this client address")
        self.live += 1
        self._routes[route] = self._routes.get(route, 0) + 1
        self._clients[client] = self._clients.get(client, 0) + 1
        admission = Admission(route, client, session_id if desktop else "", desktop)
        if desktop:
            self._desktops[(desktop, client)] = [1, session_id, admission]
        return admission

    @property
    def desktops(self) -> int:
        """Logical desktop sessions (one client on one desktop) with live channels."""
        return len(self._desktops)

    def release(self, admission: Admission) -> None:
        """Give a channel back (once per admission); a logical session's slot goes with its last channel."""
        if admission.desktop:
            group = (admission.desktop, admission.client)
            entry = self._desktops[group]
            entry[0] -= 1
            if entry[0]:
                return
            del self._desktops[group]
            admission = entry[2]
        self.live -= 1
        for counts, key in ((self._routes, admission.route), (self._clients, admission.client)):
            left = counts[key] - 1
            if left:
                counts[key] = left
            else:
                del counts[key]

    def route_count(self, route: str) -> int:
        """Live sessions on route."""
        return self._routes.get(route, 0)

    def client_count(self, client: str) -> int:
        """Live sessions from client."""
        return self._clients.get(client, 0)


class HandshakeRate:
    """
    Handshakes per second per client address, as token buckets holding
    ``max(rate, 1)`` tokens and refilled at ``rate`` per second.

    :param rate: handshakes per second (0: no limit).
    :param max_clients: addresses tracked at once; beyond it, the fullest
        (least recently limited) buckets are forgotten first.
    """

    def __init__(self, rate: float, max_clients: int = 65536) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    def allow(self, client: str, now: float) -> Optional[Reject]:
        """Spend a token for one handshake from client; a 429 when none is left."""
        if not self.rate:
            return None
        tokens, at = self._buckets.pop(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + max(0.0, now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return Reject(429, "too many handshakes from this client address; slow down")
        self._buckets[client] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_clients:
            self.prune(now)
        return None

    def prune(self, now: float) -> None:
        """Forget buckets that are full again; then the oldest ones, down to max_clients."""
        refill = self.capacity / self.rate
        self._buckets = {c: (t, at) for c, (t, at) in self._buckets.items() if now - at < refill}
        while len(self._buckets) > self.max_clients:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)
