"""
Prometheus metrics of one gateway, in its own
:class:`~prometheus_client.CollectorRegistry` (never the process-global one,
so that several gateways in one program, or tests, do not mix counts).

Live values (sessions, bytes of sessions still running) are read when
scraped, so the relay's hot path does no metric work.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterator, Optional, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import tunnelgw
from tunnelgw.core.relay import SessionRecord

__all__ = ["GatewayMetrics", "route_label"]

_CONNECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Bytes per second of a whole session, one way: from a quiet terminal to a busy desktop.
_RATE_BUCKETS = (10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8)
#: Sessions shorter than this get no bytes/s observation (a rate over a blink says little).
MIN_RATE_SECONDS = 1.0


def route_label(route: Any) -> str:
    """A route's label: its ``name=``, else the ``ProxyPass`` path or the ``ProxyPassMatch`` expression."""
    return str(route.label) if route is not None else ""


class _Sessions(Protocol):
    sessions: dict[str, Any]


class _LiveCollector(Collector):
    """Live sessions and bytes per route: ended sessions' totals plus running ones."""

    def __init__(self, metrics: "GatewayMetrics", source: _Sessions) -> None:
        self._metrics = metrics
        self._source = source

    def collect(self) -> Iterator[Metric]:
        live: dict[str, int] = defaultdict(int)
        desktops: dict[str, set[str]] = defaultdict(set)
        up, down = defaultdict(int, self._metrics.bytes_up), defaultdict(int, self._metrics.bytes_down)
        for session in list(self._source.sessions.values()):
            label = route_label(session.route)
            live[label] += 1
            record = session._record
            if record is not None:
                desktops[label].add(record.desktop or record.session_id)
                up[label] += record.bytes_up
                down[label] += record.bytes_down
        gauge = GaugeMetricFamily("tunnelgw_sessions_live", "Sessions open now", labels=["route"])
        for label in set(live) | set(self._metrics.routes_seen):
            gauge.add_metric([label], live.get(label, 0))
        yield gauge
        grouped = GaugeMetricFamily("tunnelgw_desktops_live", "Desktop sessions open now (the channels of one token from one client count once)",
                                    labels=["route"])
        for label in set(live) | set(self._metrics.routes_seen):
            grouped.add_metric([label], len(desktops.get(label, ())))
        yield grouped
        relayed = CounterMetricFamily("tunnelgw_bytes", "Payload bytes relayed",
                                      labels=["route", "direction"])
        for label in set(up) | set(down):
            relayed.add_metric([label, "up"], up.get(label, 0))
            relayed.add_metric([label, "down"], down.get(label, 0))
        yield relayed


class GatewayMetrics:
    """
    The gateway's metrics and the registry that exposes them.

    ``up`` is client -> backend, ``down`` backend -> client.
    """

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.bytes_up: dict[str, int] = {}
        self.bytes_down: dict[str, int] = {}
        self.routes_seen: set[str] = set()
        self._collector: Optional[_LiveCollector] = None
        self.sessions_total = Counter("tunnelgw_sessions", "Sessions opened (handshake completed)",
                                      ["route"], registry=self.registry)
        self.handshake_failures = Counter("tunnelgw_handshake_failures", "Handshakes refused or abandoned",
                                          ["route", "reason", "status"], registry=self.registry)
        self.connect_seconds = Histogram("tunnelgw_backend_connect_seconds", "Backend connect latency",
                                         ["route"], buckets=_CONNECT_BUCKETS, registry=self.registry)
        self.round_trip_seconds = Histogram("tunnelgw_session_round_trip_seconds", "Client round trips measured "
                                            "from the gateway's WebSocket ping to its pong", ["route"],
                                            buckets=_CONNECT_BUCKETS, registry=self.registry)
        self.session_rate = Histogram("tunnelgw_session_bytes_per_second", "Payload bytes per second of each "
                                      f"ended session (over its life; sessions under {MIN_RATE_SECONDS:g} s left out)",
                                      ["route", "direction"], buckets=_RATE_BUCKETS, registry=self.registry)
        self.unrouted = Counter("tunnelgw_unrouted_requests", "Plain requests (not upgrades) to paths no route, "
                                "page or Alias claims, answered 404 and counted instead of logged",
                                registry=self.registry)
        self.silent_connections = Counter("tunnelgw_silent_connections", "Connections that ended (closed, or timed "
                                          "out) idle: without sending a byte (browsers' spare connections), or "
                                          "kept alive after their last answer", registry=self.registry)
        self.redis_seconds = Histogram("tunnelgw_redis_lookup_seconds", "Token and owner lookups in Redis",
                                       ["source"], buckets=_CONNECT_BUCKETS, registry=self.registry)
        self.redis_errors = Counter("tunnelgw_redis_lookup_errors", "Token and owner lookups Redis could not answer",
                                    ["source"], registry=self.registry)
        self.redis_degraded = Gauge("tunnelgw_redis_degraded", "1 while a Redis token or owner source fails fast "
                                    "(unreachable until a probe finds it back)", ["source"], registry=self.registry)
        # Labelled children by label values, looked up once each: prometheus_client's
        # labels() checks and joins the values under a lock on every call.  Bounded:
        # routes come from the configuration, reasons and statuses from the code.
        self._opened: dict[str, Any] = {}
        self._connected: dict[str, Any] = {}
        self._failed: dict[tuple[str, str, Optional[int]], Any] = {}
        # The standard process_* and python_info metrics, in this gateway's own registry.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.build_info = Info("tunnelgw_build", "The running tunnelgw's version", registry=self.registry)
        self.build_info.info({"version": tunnelgw.__version__})

    def watch(self, source: _Sessions) -> None:
        """Report the live sessions of source (a gateway factory) when scraped."""
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = _LiveCollector(self, source)
        self.registry.register(self._collector)

    def connected(self, route: str, seconds: float) -> None:
        """A backend connection for route was made in seconds."""
        child = self._connected.get(route)
        if child is None:
            child = self._connected[route] = self.connect_seconds.labels(route)
        child.observe(seconds)

    def handshake_failed(self, route: str, reason: str, status: Optional[int]) -> None:
        """A handshake was refused (status) or abandoned (None) for a reason."""
        key = (route, reason, status)
        child = self._failed.get(key)
        if child is None:
            child = self._failed[key] = self.handshake_failures.labels(route, reason, str(status) if status else "none")
        child.inc()

    def session_opened(self, route: str) -> None:
        """A session on route completed its handshake."""
        child = self._opened.get(route)
        if child is None:
            self.routes_seen.add(route)
            child = self._opened[route] = self.sessions_total.labels(route)
        child.inc()

    def session_closed(self, route: str, record: SessionRecord) -> None:
        """A session ended: keep its byte counts, and observe its bytes per second each way."""
        self.bytes_up[route] = self.bytes_up.get(route, 0) + record.bytes_up
        self.bytes_down[route] = self.bytes_down.get(route, 0) + record.bytes_down
        seconds = (record.ended or record.started) - record.started
        if seconds >= MIN_RATE_SECONDS:
            self.session_rate.labels(route, "up").observe(record.bytes_up / seconds)
            self.session_rate.labels(route, "down").observe(record.bytes_down / seconds)

    def round_trip(self, route: str, seconds: float) -> None:
        """A client of route answered a ping after seconds."""
        self.round_trip_seconds.labels(route).observe(seconds)
