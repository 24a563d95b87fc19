"""
Balancer pools (Apache's ``<Proxy balancer://NAME>``): the order in which a
session tries a pool's members.  Pure: time is passed in as ``now``.

Methods: ``byrequests`` (round-robin), ``bybusyness`` (fewest live
sessions, round-robin among equals), ``bysource`` (a stable hash of the client
address, so a client's sessions land on the same member while it is up).
A member that failed is down for ``retry`` seconds; a drained member takes
no new sessions but keeps its live ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional

from tunnelgw.core.topoconfig import BalancerSpec

__all__ = ["Member", "Pool"]


@dataclass
class Member:
    """One member's live state."""

    endpoint: str
    drain: bool = False
    busy: int = 0
    down_until: Optional[float] = None

    def available(self, now: float) -> bool:
        """Takes new sessions: not drained and not inside its retry interval."""
        return not self.drain and (self.down_until is None or now >= self.down_until)


@dataclass
class Pool:
    """A pool's members and its choice method."""

    name: str
    method: str
    retry: float
    members: list[Member] = field(default_factory=list)
    _next: int = 0

    @classmethod
    def from_spec(cls, spec: BalancerSpec, previous: Optional["Pool"] = None) -> "Pool":
        """
        A pool for spec; with previous (a reload), members that stay keep their
        live-session counts and down marks, and drain flags come from spec.
        """
        old = {m.endpoint: m for m in previous.members} if previous else {}
        members = []
        for m in spec.members:
            kept = old.get(m.endpoint)
            members.append(Member(m.endpoint, m.drain, kept.busy if kept else 0, kept.down_until if kept else None))
        return cls(spec.name, spec.method, spec.retry, members)

    def member(self, endpoint: str) -> Optional[Member]:
        """The member with this endpoint, if any."""
        return next((m for m in self.members if m.endpoint == endpoint), None)

    def order(self, client: str, now: float) -> list[Member]:
        """The available members, in the order a new session should try them."""
        members = self.members
        n = len(members)
        if self.method == "bysource":
            digest = hashlib.sha256(client.encode("utf-8")).digest()
            start = int.from_bytes(digest[:8], "big") % n
        else:
            start = self._next % n
            self._next = (self._next + 1) % n
        ring = [members[(start + i) % n] for i in range(n)]
        ring = [m for m in ring if m.available(now)]
        if self.method == "bybusyness":
            ring.sort(key=lambda m: m.busy)  # stable: ties keep round-robin order
        return ring

    def mark_down(self, member: Member, now: float) -> None:
        """The member failed: skip it for ``retry`` seconds."""
        member.down_until = now + self.retry

    def mark_up(self, member: Member) -> None:
        """The member answered: clear any down mark."""
        member.down_until = None

    def acquire(self, member: Member) -> None:
        """A session started on member."""
        member.busy += 1

    def release(self, member: Member) -> None:
        """A session on member ended."""
        member.busy = max(0, member.busy - 1)
