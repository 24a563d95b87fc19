"""
Token sources in Redis (``TokenSource NAME redis redis://HOST:PORT/DB allow=...``),
in websockify's TokenRedis layout (see :func:`tunnelgw.core.tokens.redis_target`).

A lookup is a ``GET`` through redis-py on the source's own threads (the
lookups that arrive while one is out go together in the next ``MGET``),
bounded by the source's ``timeout=`` whatever Redis does (see
:mod:`tunnelgw.redisstore`): a broker's change is seen by the next session,
and the reactor thread never waits.  Redis unreachable, hung or slow gives
the client 503 "token lookup unavailable" within ``timeout=`` (the
operator's log says why, once per outage), and at once while it stays away;
a probe finds it back every second.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from tunnelgw.core.routing import Reject
from tunnelgw.core.tokens import TargetAddress, redis_key, redis_target
from tunnelgw.core.topoconfig import OwnerSourceSpec, TokenSourceSpec
from tunnelgw.redisstore import RedisStore, RedisUnavailable, RedisUse, redis_client

__all__ = ["UNAVAILABLE", "RedisOwners", "RedisTokens"]

_log = Logger(namespace="tunnelgw")
#: The answer while the token store cannot be asked.
UNAVAILABLE = Reject(503, "token lookup unavailable")


class _Timed:
    """Observes each lookup's time (``tunnelgw_redis_lookup_seconds{source}``) and failures (``..._errors``)."""

    def __init__(self, reactor: IReactorTime, metrics: Any, source: str) -> None:
        self._reactor = reactor
        self._seconds = metrics.redis_seconds.labels(source) if metrics is not None else None
        self._errors = metrics.redis_errors.labels(source) if metrics is not None else None

    def __call__(self, d: Any) -> Any:
        seconds, errors = self._seconds, self._errors
        if seconds is None or errors is None:
            return d
        started = self._reactor.seconds()

        def seen(result: Any) -> Any:
            seconds.observe(self._reactor.seconds() - started)
            if isinstance(result, Failure):
                errors.inc()
            return result

        return d.addBoth(seen)


class _Batches:
    """
    GETs of many keys as one MGET per thread hop: while a batch is out, new
    keys wait for the next one (at most :data:`BATCH` keys each), so under
    load the thread round trips and Redis round trips are shared.  Each GET
    is answered within timeout of its own arrival, waiting for a batch
    included (an MGET's own bound starts when it is sent).
    """

    def __init__(self, reactor: IReactorTime, use: RedisUse, redis: Any, timeout: float) -> None:
        self._reactor = reactor
        self._use = use
        self._redis = redis
        self._timeout = timeout
        self._waiting: list[tuple[str, defer.Deferred[Optional[bytes]]]] = []
        self._out = False

    def get(self, key: str) -> "defer.Deferred[Optional[bytes]]":
        d: defer.Deferred[Optional[bytes]] = defer.Deferred()
        timer = self._reactor.callLater(self._timeout, self._late, d)
        d.addBoth(self._stop_timer, timer)
        self._waiting.append((key, d))
        self._send()
        return d

    @staticmethod
    def _stop_timer(result: Any, timer: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    def _late(self, d: "defer.Deferred[Optional[bytes]]") -> None:
        if not d.called:
            d.errback(RedisUnavailable(f"no answer within {self._timeout:g} s (waiting for the lookups before it)"))

    def _send(self) -> None:
        if self._out:
            return
        self._waiting = [(key, d) for key, d in self._waiting if not d.called]
        if not self._waiting:
            return
        batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
        self._out = True
        sent = self._use.call(self._redis.mget, [key for key, _ in batch])

        def answered(values: list[Optional[bytes]]) -> None:
            for (_, d), value in zip(batch, values):
                if not d.called:
                    d.callback(value)

        def failed(failure: Any) -> None:
            for _, d in batch:
                if not d.called:
                    d.errback(failure)

        def next_batch(_: object) -> None:
            self._out = False
            self._send()

        sent.addCallbacks(answered, failed).addBoth(next_batch)


#: Keys asked in one MGET at most.
BATCH = 256


class RedisTokens:
    """One Redis token source."""

    def __init__(self, spec: TokenSourceSpec, reactor: Any, metrics: Any = None, client: Any = None,
                 thread_pool: Any = None) -> None:
        self.spec = spec
        self._reactor = reactor
        self._timed = _Timed(reactor, metrics, spec.name)
        redis = client if client is not None else redis_client(spec.redis, spec.timeout, spec.password_file)
        self.store = RedisStore(reactor, redis, spec.name, spec.redis.where, spec.timeout,
                                metrics.redis_degraded.labels(spec.name) if metrics is not None else None,
                                consequence="its token routes answer 503", thread_pool=thread_pool)
        # One MGET is out at a time (batching), and one more may wait: two threads.
        self._batches = _Batches(reactor, self.store.use("lookup", 2), redis, spec.timeout)

    def lookup(self, token: str, client: str) -> "defer.Deferred[Union[TargetAddress, Reject]]":
        """The allowed target of token, the uniform 403, or 503 when Redis cannot answer."""
        d = self._timed(self._batches.get(redis_key(self.spec, token)))

        def unavailable(failure: Any) -> Reject:
            import redis

            failure.trap(RedisUnavailable, redis.RedisError)
            # The store warned once for the outage; the refusal line carries the detail.
            return Reject(UNAVAILABLE.status, UNAVAILABLE.reason, str(failure.value))

        return d.addCallbacks(lambda value: redis_target(self.spec, value), unavailable)


class RedisOwners:
    """``OwnerSource``: the gateway that owns a desktop host, read from Redis for each session."""

    def __init__(self, spec: OwnerSourceSpec, reactor: Any, metrics: Any = None, client: Any = None,
                 thread_pool: Any = None) -> None:
        self.spec = spec
        self._reactor = reactor
        self._timed = _Timed(reactor, metrics, "owners")
        self._redis = client if client is not None else redis_client(spec.redis, spec.timeout, spec.password_file)
        self.store = RedisStore(reactor, self._redis, "owners", spec.redis.where, spec.timeout,
                                metrics.redis_degraded.labels("owners") if metrics is not None else None,
                                consequence="sessions whose owner must be asked answer 503", thread_pool=thread_pool)
        self._lookups = self.store.use("lookup", 4)

    def owner_of(self, host: str) -> "defer.Deferred[Optional[str]]":
        """The owner's gateway URL, None when the broker names none; fails when Redis cannot answer."""
        key = f"{self.spec.namespace}:owner:{host}"
        d: Any = self._timed(self._lookups.call(self._redis.get, key))
        return d.addCallback(lambda value: value.decode("utf-8", "replace").rstrip("/") if value else None)
