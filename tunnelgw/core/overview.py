"""
What the operator's page shows above the session list, as values: traffic
per route and per gateway of the pool, refusals of the last hour by reason,
the health of Redis and the portals, recordings that stopped.

Pure: time is passed in as ``now``; the glue (:mod:`tunnelgw.overview`)
feeds events and counters in and :mod:`tunnelgw.core.adminpage` renders the
result.  Every store here has a bound.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

__all__ = ["Health", "HealthTracker", "Overview", "RefusalWindow", "StoppedRecording", "Traffic", "TrafficRates", "group_rates"]


@dataclass(frozen=True)
class Traffic:
    """
    One row of traffic: a route of this gateway, or a gateway of the pool.

    :ivar opened: sessions opened since the start (None where not known, e.g.
        for other gateways of the pool).
    :ivar up_rate: bytes per second client -> backend now (None: not measured yet).
    """

    name: str
    live: int
    opened: Optional[int]
    bytes_up: int
    bytes_down: int
    up_rate: Optional[float]
    down_rate: Optional[float]


@dataclass(frozen=True)
class Health:
    """One dependency's state: ``ok``, ``trouble`` or ``unknown``, with what was seen."""

    name: str
    state: str
    detail: str


@dataclass(frozen=True)
class StoppedRecording:
    """A recording that stopped before its session ended, and why."""

    when: float
    session: str
    file: str
    outcome: str
    why: str


@dataclass(frozen=True)
class Overview:
    """Everything above the session list."""

    routes: tuple[Traffic, ...] = ()
    gateways: tuple[Traffic, ...] = ()
    refusals: tuple[tuple[str, int], ...] = ()
    health: tuple[Health, ...] = ()
    stopped_recordings: tuple[StoppedRecording, ...] = ()
    #: Seconds the rates are measured over (0: no rate yet, the first look).
    rate_seconds: float = 0.0


class RefusalWindow:
    """
    Refusals in the last hour by reason, in one-minute buckets.

    Bounded: at most ``window / bucket`` buckets, each with at most
    ``max_reasons`` distinct reasons (more are counted as ``(other reasons)``),
    as reasons may quote what a client sent.
    """

    OTHER = "(other reasons)"

    def __init__(self, window: float = 3600.0, bucket: float = 60.0, max_reasons: int = 64) -> None:
        self.window = window
        self.bucket = bucket
        self.max_reasons = max_reasons
        self._buckets: deque[tuple[int, Counter[str]]] = deque()

    def add(self, now: float, reason: str) -> None:
        """One refusal at now."""
        index = int(now // self.bucket)
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append((index, Counter()))
            self._prune(now)
        counts = self._buckets[-1][1]
        if reason not in counts and len(counts) >= self.max_reasons:
            reason = self.OTHER
        counts[reason] += 1

    def _prune(self, now: float) -> None:
        oldest = int((now - self.window) // self.bucket)
        while self._buckets and self._buckets[0][0] <= oldest:
            self._buckets.popleft()

    def counts(self, now: float) -> list[tuple[str, int]]:
        """(reason, refusals) of the last window, most frequent first."""
        self._prune(now)
        total: Counter[str] = Counter()
        for _, counts in self._buckets:
            total.update(counts)
        return sorted(total.items(), key=lambda item: (-item[1], item[0]))


class TrafficRates:
    """
    Bytes per second of live sessions, from snapshots of their counters.

    A snapshot is kept at most every ``spacing`` seconds and for ``window``
    seconds, so at most ``window / spacing + 1`` are held.  A session's rate
    is its bytes since the oldest kept snapshot (all its bytes, when it
    started later) over the seconds since that snapshot.
    """

    def __init__(self, window: float = 60.0, spacing: float = 5.0) -> None:
        self.window = window
        self.spacing = spacing
        self._snapshots: deque[tuple[float, dict[str, tuple[int, int]]]] = deque()

    def sample(self, now: float, counters: Mapping[str, tuple[int, int]]
               ) -> tuple[float, dict[str, tuple[float, float]]]:
        """
        Take counters (session id -> bytes up, bytes down) at now.

        :returns: the seconds measured over (0.0 when there is no earlier
            snapshot yet) and each session's (up, down) bytes per second.
        """
        while self._snapshots and self._snapshots[0][0] < now - self.window:
            self._snapshots.popleft()
        if not self._snapshots or now - self._snapshots[-1][0] >= self.spacing:
            self._snapshots.append((now, dict(counters)))
        then, old = self._snapshots[0]
        seconds = now - then
        if seconds <= 0:
            return 0.0, {}
        rates = {}
        for session, (up, down) in counters.items():
            before_up, before_down = old.get(session, (0, 0))
            rates[session] = (max(0, up - before_up) / seconds, max(0, down - before_down) / seconds)
        return seconds, rates


def group_rates(groups: Iterable[tuple[str, str]], rates: Mapping[str, tuple[float, float]]
                ) -> dict[str, tuple[float, float]]:
    """Sum (session id, group) pairs' rates by group."""
    total: dict[str, tuple[float, float]] = {}
    for session, group in groups:
        up, down = rates.get(session, (0.0, 0.0))
        before = total.get(group, (0.0, 0.0))
        total[group] = (before[0] + up, before[1] + down)
    return total


class HealthTracker:
    """
    A dependency's health from its failure counter: ``trouble`` while it has
    risen within the last ``recent`` seconds, ``ok`` after, ``unknown``
    before anything was asked of it.  Bounded by the number of names.
    """

    def __init__(self, recent: float = 300.0) -> None:
        self.recent = recent
        self._seen: dict[str, tuple[float, float]] = {}

    def update(self, now: float, name: str, failures: float, asked: float, detail: str) -> Health:
        """The health of name, whose counters are now failures of asked calls."""
        count, last_rise = self._seen.get(name, (0.0, float("-inf")))
        if failures > count:
            last_rise = now
        self._seen[name] = (failures, last_rise)
        if not asked and not failures:
            return Health(name, "unknown", detail or "not asked yet")
        return Health(name, "trouble" if now - last_rise < self.recent else "ok", detail)
