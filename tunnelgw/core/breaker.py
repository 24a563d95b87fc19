"""
The circuit breaker in front of one Redis store: after a call fails because
Redis is away (refused, hung, too slow, closed mid-reply), calls fail fast
until a probe finds it back, so that an outage costs one timeout per probe
interval instead of one per session.  Pure: time is passed in as ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Breaker", "BreakerState"]


@dataclass(frozen=True)
class BreakerState:
    """What the operator sees of one store: up or down, since when, why."""

    name: str
    where: str
    up: bool
    since: float
    error: str
    failed_fast: int


class Breaker:
    """
    Up until a call fails for want of Redis; then down (calls are refused
    at once) until :meth:`recovered`.  Each outage is announced once:
    :meth:`failed` answers True only for the failure that opened it.
    """

    def __init__(self, name: str, where: str, now: float) -> None:
        self.name = name
        self.where = where
        self.up = True
        self.since = now
        self.error = ""
        #: Calls refused at once during the current (or last) outage.
        self.failed_fast = 0

    def allow(self) -> bool:
        """Whether a call may go to Redis now (a refused call is counted)."""
        if not self.up:
            self.failed_fast += 1
        return self.up

    def failed(self, error: str, now: float) -> bool:
        """Note a failure for want of Redis; True when it starts an outage."""
        if not self.up:
            return False
        self.up, self.since, self.error, self.failed_fast = False, now, error, 0
        return True

    def recovered(self, now: float) -> bool:
        """Note that Redis answered; True when it ends an outage."""
        if self.up:
            return False
        self.up, self.since = True, now
        return True

    def state(self) -> BreakerState:
        """A snapshot for the admin page and JSON."""
        return BreakerState(self.name, self.where, self.up, self.since, self.error, self.failed_fast)
