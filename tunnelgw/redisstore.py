"""
Bounded calls to one Redis (or one Sentinel-watched primary): the glue every
user of Redis in the gateway goes through (the pool registry, token sources,
the owner source).

Redis is reached with redis-py, whose calls block, so they run on threads.
Three bounds make a call's cost independent of what Redis does (refuses,
hangs before or in the middle of a reply, answers slowly, closes mid-reply):

- **Each use has its own thread pool** (``threads`` workers, at most
  ``waiting`` calls queued): a use stuck on a hung Redis cannot take the
  threads another use needs, nor the reactor's own pool (DNS, files).
- **The caller waits at most ``timeout`` seconds** (a reactor timer, started
  when the call is made, queueing included), whatever redis-py does; redis-py
  itself has the same socket timeout and no retries (redis-py 6+ retries
  three times with up to ten seconds of back-off by default, which is what
  turned a 0.5 s timeout into 9.3 s).  The slack over ``timeout`` is the
  reactor's own latency (a few milliseconds; docs/operations.rst gives the measured waits).
- **After a failure for want of Redis, calls fail at once** (the breaker of
  :mod:`tunnelgw.core.breaker`): the store's connections are dropped (which
  frees any thread still reading a dribbled reply), one warning is logged, the
  degraded gauge goes to 1, and a ``PING`` every :data:`PROBE_INTERVAL` seconds
  looks for Redis; the first answer closes the breaker (one info line).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from tunnelgw.core.breaker import Breaker, BreakerState
from tunnelgw.core.topoconfig import RedisAddress

__all__ = ["PROBE_INTERVAL", "RedisStore", "RedisUnavailable", "RedisUse", "redis_client"]

_log = Logger(namespace="tunnelgw")
#: Seconds between probes of a Redis that is down.
PROBE_INTERVAL = 1.0


class RedisUnavailable(Exception):
    """A Redis call that got no answer: the store is down, the call timed out or failed, or too many wait."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def redis_client(address: RedisAddress, timeout: float, password_file: str = "") -> Any:
    """
    A redis-py client for address (a server, or a Sentinel service's primary)
    whose every socket operation is bounded by timeout, without retries.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    password = None
    if password_file:
        with open(password_file, encoding="utf-8") as f:
            password = f.read().strip()
    bounded: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                               "retry": Retry(NoBackoff(), 0)}
    if address.sentinels:
        from redis.sentinel import Sentinel

        sentinel = Sentinel(list(address.sentinels), sentinel_kwargs=dict(bounded))
        return sentinel.master_for(address.service, db=address.db, password=password, ssl=address.tls, **bounded)
    return redis.Redis(host=address.host, port=address.port, db=address.db, ssl=address.tls, password=password,
                       **bounded)


def _is_outage(failure: Failure) -> bool:
    """Whether a failed call says Redis is away (rather than that it refused this one command)."""
    import redis

    if failure.check(RedisUnavailable):  # the work's own verdict (too few replicas acknowledged): Redis answered
        return False
    if failure.check(redis.ReadOnlyError):  # a replica after a failover: the primary is elsewhere
        return True
    return not failure.check(redis.ResponseError)


class RedisUse:
    """One use of a store (``refresh``, ``lookup``, ``limits``...), with its own threads and queue bound."""

    def __init__(self, store: "RedisStore", name: str, threads: Any, waiting: int) -> None:
        self.name = name
        self._store = store
        self._threads = threads
        self._waiting = waiting
        #: Calls queued or running on this use's threads (an abandoned one counts until its thread is free).
        self.pending = 0

    def call(self, work: Callable[..., Any], *args: Any,
             late: Optional[Callable[[Any], None]] = None) -> "defer.Deferred[Any]":
        """
        Run work(*args) (a redis-py call) on this use's threads; fires with its
        result, or fails with :class:`RedisUnavailable` within the store's
        timeout, or with the command's own error (``ResponseError``).  Cancelling
        the Deferred drops the call if it has not started.

        :param late: called with the result of a call that succeeded after its
            caller was answered (timed out or cancelled), to undo what it did.
        """
        store = self._store
        if not store.breaker.allow():
            store.count_error(self.name)
            return defer.fail(RedisUnavailable(store.down_reason()))
        if self.pending >= self._waiting:
            store.count_error(self.name)
            return defer.fail(RedisUnavailable(f"too many Redis calls waiting ({self.name})"))
        return self._run(work, args, store.timeout, count=True, late=late)

    def _run(self, work: Callable[..., Any], args: tuple[Any, ...], timeout: float,
             count: bool, late: Optional[Callable[[Any], None]] = None) -> "defer.Deferred[Any]":
        store = self._store
        abandoned = [False]

        def cancelled(_: object) -> None:
            abandoned[0] = True
            if timer.active():
                timer.cancel()

        d: defer.Deferred[Any] = defer.Deferred(cancelled)

        def timed_out() -> None:
            abandoned[0] = True
            if count:
                store.failed(self.name, f"no answer within {timeout:g} s")
            d.errback(RedisUnavailable(f"Redis at {store.where} did not answer within {timeout:g} s"))

        timer = store.reactor.callLater(timeout, timed_out)

        abandoned_before_run = [False]

        def run() -> Any:
            if abandoned[0]:  # its caller has given up while it was queued
                abandoned_before_run[0] = True
                return None
            return work(*args)

        def finished(ok: bool, result: Any) -> None:
            self.pending -= 1
            if not ok and count and _is_outage(result):
                store.failed(self.name, str(result.value) or result.type.__name__)
            if d.called:
                if ok and late is not None and not abandoned_before_run[0]:
                    late(result)
                return
            timer.cancel()
            if ok:
                d.callback(result)
            elif _is_outage(result):
                d.errback(RedisUnavailable(f"Redis at {store.where}: {result.value or result.type.__name__}"))
            else:
                d.errback(result)

        self.pending += 1
        self._threads.callInThreadWithCallback(
            lambda ok, result: store.reactor.callFromThread(finished, ok, result), run)
        return d


class RedisStore:
    """
    One Redis as the gateway uses it: a redis-py client, a breaker, and
    uses with their own threads.

    :param name: what the operator calls it (``pool``, a token source's name, ``owners``).
    :param where: the address, for messages.
    :param degraded: a gauge (child) set to 1 while the store is down.
    :param errors: called with a use's name for each call that failed.
    :param consequence: what an outage means, for the warning.
    :param on_back: called when a probe finds Redis back.
    :param thread_pool: makes a use's thread pool (name, threads); tests pass one that runs in memory.
    """

    def __init__(self, reactor: Any, client: Any, name: str, where: str, timeout: float,
                 degraded: Any = None, errors: Optional[Callable[[str], None]] = None, consequence: str = "",
                 on_back: Optional[Callable[[], None]] = None,
                 thread_pool: Optional[Callable[[str, int], Any]] = None) -> None:
        self.reactor = reactor
        self.client = client
        self.name = name
        self.where = where
        self.timeout = timeout
        self.breaker = Breaker(name, where, reactor.seconds())
        self._degraded = degraded
        self._errors = errors
        self._consequence = consequence
        self._on_back = on_back
        self._thread_pool = thread_pool or self._real_pool
        self._pools: list[ThreadPool] = []
        self._probing: Optional[LoopingCall] = None
        self._probe = self.use("probe", 1)
        self._probe_out = False

    def _real_pool(self, name: str, threads: int) -> ThreadPool:
        pool = ThreadPool(minthreads=0, maxthreads=threads, name=f"tunnelgw-redis-{self.name}-{name}")
        pool.start()
        self._pools.append(pool)
        return pool

    def use(self, name: str, threads: int, waiting: int = 256) -> RedisUse:
        """A use of this store with its own threads (at most ``waiting`` calls queued or running)."""
        return RedisUse(self, name, self._thread_pool(name, threads), waiting)

    def state(self) -> BreakerState:
        """The store's state for the operator (admin JSON and page)."""
        return self.breaker.state()

    def down_reason(self) -> str:
        """The reason a call fails fast while the store is down."""
        return f"Redis at {self.where} is unreachable ({self.breaker.error}); failing fast until it is back"

    def count_error(self, use: str) -> None:
        """Count a failed call of a use."""
        if self._errors is not None:
            self._errors(use)

    def failed(self, use: str, error: str) -> None:
        """A call of use failed for want of Redis: count it, and open the breaker (once per outage)."""
        self.count_error(use)
        if not self.breaker.failed(error, self.reactor.seconds()):
            return
        if self._degraded is not None:
            self._degraded.set(1)
        _log.warn("Redis {store} at {where} unreachable ({error}); calls fail at once until a probe finds it back"
                  "{consequence}", store=self.name, where=self.where, error=error,
                  consequence=f"; {self._consequence}" if self._consequence else "")
        self._probe_out = True
        # Drop every connection (in a thread: the pool's lock may be held by a connecting thread); this
        # also ends any read still blocked on a reply Redis dribbles.
        self._probe._run(self._disconnect, (), self.timeout, count=False).addBoth(self._probed_idle)
        self._probing = LoopingCall(self._send_probe)
        self._probing.clock = self.reactor
        self._probing.start(PROBE_INTERVAL, now=False)

    def _disconnect(self) -> None:
        self.client.connection_pool.disconnect()

    def _probed_idle(self, _: object) -> None:
        self._probe_out = False

    def _send_probe(self) -> None:
        if self._probe_out:
            return
        self._probe_out = True
        d = self._probe._run(self.client.ping, (), self.timeout, count=False)
        d.addCallbacks(self._back, lambda _: None).addBoth(self._probed_idle)

    def _back(self, _: object) -> None:
        if self._probing is not None and self._probing.running:
            self._probing.stop()
        self._probing = None
        failed_fast = self.breaker.failed_fast
        if not self.breaker.recovered(self.reactor.seconds()):
            return
        if self._degraded is not None:
            self._degraded.set(0)
        _log.info("Redis {store} at {where} reachable again ({count} call(s) failed fast meanwhile)",
                  store=self.name, where=self.where, count=failed_fast)
        if self._on_back is not None:
            self._on_back()

    def stop(self) -> None:
        """Stop probing and the threads (each ends within the timeout: its socket operations are bounded)."""
        if self._probing is not None and self._probing.running:
            self._probing.stop()
        for pool in self._pools:
            pool.stop()
        self._pools = []
