"""
The operator's page's overview (:class:`tunnelgw.core.overview.Overview`),
gathered from the running gateway: refusals observed in the log (the events
with an ``audit`` refusal kind), traffic per route and per gateway of the
pool, the health of Redis and the forward-auth portals read from the
gateway's own metrics registry, and recordings that stopped.

Health reads what the pool and the topology expose today: the
``tunnelgw_pool_degraded`` gauge and error counters, the Redis lookup and
portal answer counters (:func:`dependency_health` is the one slot where a
richer Redis health state plugs in).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import globalLogPublisher

from tunnelgw.core.overview import (Health, HealthTracker, Overview, RefusalWindow, StoppedRecording, Traffic,
                                    TrafficRates, group_rates)

__all__ = ["OverviewSource", "dependency_health"]

_REFUSALS = ("request.refused", "session.refused")


Samples = dict[str, list[tuple[dict[str, str], float]]]


def _samples_of(registry: Any, names: frozenset[str]) -> Samples:
    """(labels, value) of the samples with these names, from one pass of prometheus_client's public collect()."""
    found: Samples = {name: [] for name in names}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name in found:
                found[sample.name].append((dict(sample.labels), float(sample.value)))
    return found


_READ = frozenset({"tunnelgw_sessions_total", "tunnelgw_pool_degraded", "tunnelgw_pool_errors_total",
                   "tunnelgw_redis_lookup_seconds_count", "tunnelgw_redis_lookup_errors_total",
                   "tunnelgw_auth_answers_total"})


def _total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for l, v in samples[name] if all(l.get(k) == w for k, w in labels.items()))


def dependency_health(factory: Any, tracker: HealthTracker, now: float, samples: Optional[Samples] = None
                      ) -> list[Health]:
    """
    Redis (the pool's registry, token and owner lookups) and portal health.

    The slot for Redis health: today it reads the pool's degraded gauge and
    the error counters; a health state exposed by the pool or the topology
    belongs here.
    """
    found = samples if samples is not None else _samples_of(factory.metrics.registry, _READ)
    rows = []
    pool = factory.pool
    if pool is not None:
        degraded = _total(found, "tunnelgw_pool_degraded")
        errors = _total(found, "tunnelgw_pool_errors_total")
        where = f"redis {pool.spec.host}:{pool.spec.port}/{pool.spec.db}"
        rows.append(Health("Redis (Pool)", "trouble" if degraded else "ok",
                           f"{where}: " + ("unreachable, this gateway's own list only" if degraded else "reachable")
                           + f"; {errors:g} failed calls since start"))
    for labels, asked in found["tunnelgw_redis_lookup_seconds_count"]:
        source = labels.get("source", "")
        failed = _total(found, "tunnelgw_redis_lookup_errors_total", source=source)
        rows.append(tracker.update(now, f"Redis ({source})", failed, asked,
                                   f"{asked:g} lookups, {failed:g} unanswered since start"))
    for name in sorted(factory.portals.portals):
        answers = {l.get("answer", ""): v for l, v in found["tunnelgw_auth_answers_total"]
                   if l.get("portal") == name}
        failed = answers.get("503", 0.0)
        asked = sum(answers.values())
        detail = "answers " + ", ".join(f"{k}: {v:g}" for k, v in sorted(answers.items())) if answers \
            else "no answer yet"
        rows.append(tracker.update(now, f"portal {name}", failed, asked, detail))
    return rows


class OverviewSource:
    """
    Gathers the overview; observes refusal events from start to stop.

    :param factory: the gateway factory (sessions, metrics, pool, portals, recordings).
    """

    def __init__(self, factory: Any, reactor: IReactorTime, publisher: Any = globalLogPublisher) -> None:
        self._factory = factory
        self._reactor = reactor
        self._publisher = publisher
        self.refusals = RefusalWindow()
        self._rates = TrafficRates()
        self._gateway_rates = TrafficRates()
        self._health = HealthTracker()
        self._observing = False

    def start(self) -> None:
        """Observe refusals."""
        if not self._observing:
            self._publisher.addObserver(self)
            self._observing = True

    def stop(self) -> None:
        """Stop observing."""
        if self._observing:
            self._publisher.removeObserver(self)
            self._observing = False

    def __call__(self, event: dict[str, Any]) -> None:
        """A log event: a refusal is counted by its reason."""
        if event.get("audit") in _REFUSALS:
            fields = event.get("fields")
            reason = fields.get("reason") if isinstance(fields, dict) else None
            status = fields.get("status") if isinstance(fields, dict) else None
            self.refusals.add(self._reactor.seconds(), f"{status} {reason}" if status else str(reason))

    def overview(self, sessions: Sequence[Mapping[str, Any]], pool_sessions: Optional[Sequence[Mapping[str, Any]]]
                 ) -> tuple[Overview, dict[str, tuple[float, float]]]:
        """
        The overview now, and each live session's (up, down) bytes per second.

        :param sessions: this gateway's live sessions (``describe()``).
        :param pool_sessions: the pool's, each with its ``gateway`` (None without a pool or Redis).
        """
        now = self._reactor.seconds()
        factory = self._factory
        metrics = factory.metrics
        counters = {str(s["session"]): (int(s.get("bytes_up", 0)), int(s.get("bytes_down", 0))) for s in sessions}
        seconds, rates = self._rates.sample(now, counters)
        by_route = group_rates(((str(s["session"]), str(s.get("route", ""))) for s in sessions), rates)
        samples = _samples_of(metrics.registry, _READ)
        opened = {l.get("route", ""): int(v) for l, v in samples["tunnelgw_sessions_total"]}
        live: dict[str, list[Mapping[str, Any]]] = {}
        for s in sessions:
            live.setdefault(str(s.get("route", "")), []).append(s)
        routes = []
        for name in sorted(set(opened) | set(live) | {r.label for r in factory.config.rules}):
            here = live.get(name, [])
            up = metrics.bytes_up.get(name, 0) + sum(int(s.get("bytes_up", 0)) for s in here)
            down = metrics.bytes_down.get(name, 0) + sum(int(s.get("bytes_down", 0)) for s in here)
            rate = by_route.get(name, (0.0, 0.0)) if seconds else (None, None)
            routes.append(Traffic(name, len(here), opened.get(name, 0), up, down, rate[0], rate[1]))
        gateways = []
        if pool_sessions is not None:
            pooled = {f"{s.get('gateway', '')}/{s['session']}": (int(s.get("bytes_up", 0)), int(s.get("bytes_down", 0)))
                      for s in pool_sessions}
            pool_seconds, pool_rates = self._gateway_rates.sample(now, pooled)
            by_gateway = group_rates(((f"{s.get('gateway', '')}/{s['session']}", str(s.get("gateway", "")))
                                      for s in pool_sessions), pool_rates)
            names = sorted({str(s.get("gateway", "")) for s in pool_sessions} | {factory.pool.spec.name})
            for name in names:
                here = [s for s in pool_sessions if s.get("gateway") == name]
                rate = by_gateway.get(name, (0.0, 0.0)) if pool_seconds else (None, None)
                gateways.append(Traffic(name, len(here), None, sum(int(s.get("bytes_up", 0)) for s in here),
                                        sum(int(s.get("bytes_down", 0)) for s in here), rate[0], rate[1]))
        stopped = tuple(StoppedRecording(*entry) for entry in reversed(factory.recordings.stopped))
        return Overview(tuple(routes), tuple(gateways), tuple(self.refusals.counts(now)),
                        tuple(dependency_health(factory, self._health, now, samples)), stopped, seconds), rates
