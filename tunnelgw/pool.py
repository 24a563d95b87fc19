"""
One live-session registry for a pool of gateways, in Redis
(``Pool redis://HOST:PORT/DB name=GATEWAY ...``).

Every ``refresh`` seconds each gateway writes its live sessions, one key
each (``NS:session:ID``, a JSON object: gateway, client, route, path,
backend, started, bytes), with a time to live of ``ttl`` seconds, deletes
the keys of sessions that ended, and writes its own ``NS:gateway:NAME``.
A gateway that dies leaves nothing behind after ``ttl``.  The admin listener
of any gateway lists the pool's sessions (``GET /pool/sessions``) and closes
any of them (``POST /pool/sessions/ID/close``): the close is published on
``NS:close`` and the gateway holding the session closes it (1008) as soon as
the message arrives.

Redis is reached with redis-py (the maintained client: connection pooling,
reconnection, TLS, Sentinel) on a thread pool of its own, never on the
reactor thread; every call has a socket timeout of ``timeout`` seconds.
When Redis is unreachable the gateway keeps serving: live sessions are never
cut, the registry is *degraded* (``tunnelgw_pool_degraded`` 1, one warning,
``tunnelgw_pool_errors_total``), the pool list answers 503, and everything
is written again by the next refresh once Redis is back.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from tunnelgw.backends import BackendLink, BackendRefused, WrappedLink
from tunnelgw.core.config import PoolSpec
from tunnelgw.core.routing import Reject
from tunnelgw.core.tokens import INVALID_REASON
from tunnelgw.core.relay import CLOSE_POLICY, Close

__all__ = ["MAX_LISTED", "POOL_CLOSE", "PoolRegistry", "SingleUseLink"]

_log = Logger(namespace="tunnelgw")
#: Take a place in every limit set (KEYS) or in none.  A set's members are ``GATEWAY GROUP``
#: (the gateway holding it, the group it counts: a client of a desktop, a desktop of a user);
#: a set's limit counts distinct groups, so one group held by two gateways counts once.
#: ARGV: now, expiry, ttl, gateway, then per key its limit and group.  Expired places are
#: dropped first; returns 0, or the index of the full set.
_ACQUIRE = """
local now, expiry, ttl, gateway = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
for i, key in ipairs(KEYS) do
  local limit, group = tonumber(ARGV[3 + 2 * i]), ARGV[4 + 2 * i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local seen, count, mine = {}, 0, false
  for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local space = string.find(member, ' ', 1, true)
    local held = space and string.sub(member, space + 1) or member
    if held == group then mine = true end
    if not seen[held] then
      seen[held] = true
      count = count + 1
    end
  end
  if not mine and count >= limit then
    return i
  end
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, expiry, gateway .. ' ' .. ARGV[4 + 2 * i])
  redis.call('EXPIRE', key, ttl)
end
return 0
"""
#: At most this many sessions are listed from the pool.
MAX_LISTED = 10000
#: The close a session gets when an operator closes it from another gateway.
POOL_CLOSE = Close(CLOSE_POLICY, "closed by the pool administrator")


class PoolRegistry:
    """
    A gateway's part in the pool's registry.

    :param sessions: the gateway's live sessions by id (objects with
        ``describe()`` and ``close_session(close)``).
    :param client: a redis-py client (tests may pass another address); made
        from the spec when None.
    """

    def __init__(self, reactor: Any, spec: PoolSpec, sessions: dict[str, Any], registry: CollectorRegistry,
                 client: Any = None) -> None:
        import redis

        self._reactor = reactor
        self.spec = spec
        self._sessions = sessions
        password = None
        if spec.password_file:
            with open(spec.password_file, encoding="utf-8") as f:
                password = f.read().strip()
        self._redis = client if client is not None else redis.Redis(
            host=spec.host, port=spec.port, db=spec.db, password=password, ssl=spec.tls,
            socket_timeout=spec.timeout, socket_connect_timeout=spec.timeout, health_check_interval=30)
        self._errors = (redis.RedisError, OSError)
        self._threads = ThreadPool(minthreads=1, maxthreads=2, name="tunnelgw-pool")
        self._written: set[str] = set()
        #: Pool-wide limit places: hold -> [channels here, its (key, member) pairs]; channels
        #: here per (key, member) of a limit set that hold a place (refreshed in Redis) and that
        #: wait for Redis to grant one (their place is not given back while they wait).
        self._held: dict[str, list[Any]] = {}
        self._places: dict[tuple[str, str], int] = {}
        self._pending: dict[tuple[str, str], int] = {}
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._busy = False
        self._degraded = False
        self._heartbeat: Optional[LoopingCall] = None
        self._listener: Any = None
        self.errors = Counter("tunnelgw_pool_errors", "Redis calls of the pool registry that failed", ["call"],
                              registry=registry)
        self.degraded = Gauge("tunnelgw_pool_degraded", "1 while the pool registry cannot reach Redis",
                              registry=registry)
        self.latency = Gauge("tunnelgw_pool_refresh_seconds", "Time of the last registry refresh", registry=registry)

    def _key(self, *parts: str) -> str:
        return ":".join((self.spec.namespace, *parts))

    def _call(self, work: Callable[..., Any], *args: Any) -> "defer.Deferred[Any]":
        return deferToThreadPool(self._reactor, self._threads, work, *args)

    def start(self) -> None:
        """Start refreshing and listening for closes."""
        self._threads.start()
        self._heartbeat = LoopingCall(self.refresh)
        self._heartbeat.clock = self._reactor
        self._heartbeat.start(self.spec.refresh, now=True)
        self._call(self._subscribe).addErrback(lambda f: self._failed("subscribe", f.value))

    def stop(self) -> "defer.Deferred[None]":
        """Remove this gateway's keys (best effort, bounded by the timeout) and stop."""
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        keys = [self._key("session", sid) for sid in self._written] + [self._key("gateway", self.spec.name)]

        def cleanup() -> None:
            if self._listener is not None:
                self._listener.stop()
            self._redis.delete(*keys)

        def done(_: object) -> None:
            self._threads.stop()

        return self._call(cleanup).addErrback(lambda f: None).addBoth(done)

    # Refresh.

    def refresh(self) -> None:
        """Write the live sessions with their TTL, delete the ended ones (one call in flight at most)."""
        if self._busy:
            return
        self._busy = True
        now = time.time()
        live = {}
        for sid, session in list(self._sessions.items()):
            fields = session.describe()
            live[sid] = json.dumps({**fields, "gateway": self.spec.name, "seen": now}, default=str)
        ended = self._written - set(live)
        places = list(self._places)
        started = self._reactor.seconds()

        def write() -> None:
            pipe = self._redis.pipeline(transaction=False)
            ttl = int(max(1, round(self.spec.ttl)))
            for sid, value in live.items():
                pipe.set(self._key("session", sid), value, ex=ttl)
            if ended:
                pipe.delete(*(self._key("session", sid) for sid in ended))
            pipe.set(self._key("gateway", self.spec.name), json.dumps({"name": self.spec.name, "sessions": len(live),
                                                                       "seen": now}), ex=ttl)
            for key, member in places:
                pipe.zadd(key, {member: now + ttl})
                pipe.expire(key, ttl)
            pipe.execute()

        def written(_: object) -> None:
            self._written = set(live)
            self.latency.set(self._reactor.seconds() - started)
            if self._degraded:
                self._degraded = False
                self.degraded.set(0)
                _log.info("pool registry: Redis reachable again, {count} session(s) registered", count=len(live))

        d = self._call(write)
        d.addCallbacks(written, lambda f: self._failed("refresh", f.value))
        d.addBoth(self._idle)

    def _idle(self, _: object) -> None:
        self._busy = False

    def _failed(self, call: str, error: object) -> None:
        self.errors.labels(call).inc()
        if not self._degraded:
            self._degraded = True
            self.degraded.set(1)
            _log.warn("pool registry degraded: Redis at {host}:{port} unreachable ({error}); sessions go on, "
                      "the pool list is unavailable until it is back", host=self.spec.host, port=self.spec.port,
                      error=str(error))

    def _noted(self, failure: Any, call: str) -> Any:
        """Count a failed call and pass the failure on (the admin answers 503)."""
        self._failed(call, failure.value)
        return failure

    # Pool-wide views and closes.

    def list_sessions(self) -> "defer.Deferred[list[dict[str, Any]]]":
        """Every session registered in the pool (at most MAX_LISTED)."""
        def read() -> list[dict[str, Any]]:
            keys: list[bytes] = []
            for key in self._redis.scan_iter(match=self._key("session", "*"), count=1000):
                keys.append(key)
                if len(keys) >= MAX_LISTED:
                    break
            values = self._redis.mget(keys) if keys else []
            return [json.loads(v) for v in values if v is not None]

        d = self._call(read)
        d.addErrback(self._noted, "list")
        return d

    def request_close(self, session_id: str) -> "defer.Deferred[bool]":
        """Ask the pool to close a session; fires True when some gateway has it registered."""
        def publish() -> bool:
            if not self._redis.exists(self._key("session", session_id)):
                return False
            self._redis.publish(self._key("close"), session_id.encode("utf-8"))
            return True

        d = self._call(publish)
        d.addErrback(self._noted, "close")
        return d

    def claim(self, jti: str, expires: float) -> "defer.Deferred[bool]":
        """
        Record a single-use token's ``jti`` until it expires; fires True when
        this is its first use anywhere in the pool (atomic: ``SET NX``).  A
        broker revokes a token by setting ``NS:jti:JTI`` itself.
        """
        ttl = max(1, int(expires - time.time()) + 1)

        def record() -> bool:
            return bool(self._redis.set(self._key("jti", jti), self.spec.name, nx=True, ex=ttl))

        d = self._call(record)
        d.addErrback(self._noted, "claim")
        return d

    def acquire(self, hold: str, limits: list[tuple[str, int, str]]) -> "defer.Deferred[Optional[str]]":
        """
        Take hold's place in each pool-wide limit (key, limit, group) at once;
        fires None, or the key whose limit is reached.  A limit counts distinct
        groups in the pool; the channels of one hold on this gateway share its
        place (see :class:`PoolLimitLink`).
        """
        entry = self._held.get(hold)
        if entry is not None:
            entry[0] += 1
            _count(self._places, entry[1], 1)
            return defer.succeed(None)
        places = [(self._key("limit", key), f"{self.spec.name} {group}") for key, _, group in limits]
        ttl = int(max(1, round(self.spec.ttl)))
        _count(self._pending, places, 1)

        def take() -> int:
            now = time.time()
            args = [now, now + ttl, ttl, self.spec.name, *(x for _, n, group in limits for x in (n, group))]
            return int(self._acquire(keys=[key for key, _ in places], args=args))

        def taken(full: int) -> Optional[str]:
            _count(self._pending, places, -1)
            if full:
                self._give_back(places)
                return limits[full - 1][0]
            _count(self._places, places, 1)
            self._held.setdefault(hold, [0, places])[0] += 1
            return None

        def failed(failure: Any) -> Any:
            _count(self._pending, places, -1)
            self._give_back(places)  # if the script ran all the same; else its places expire after ttl
            return self._noted(failure, "acquire")

        d = self._call(take)
        d.addCallbacks(taken, failed)
        return d

    def release(self, hold: str) -> None:
        """Give back one channel's share of hold's places; a place goes with the last channel here that needs it."""
        entry = self._held.get(hold)
        if entry is None:
            return
        entry[0] -= 1
        if not entry[0]:
            del self._held[hold]
        _count(self._places, entry[1], -1)
        self._give_back(entry[1])

    def _give_back(self, places: list[tuple[str, str]]) -> None:
        """Remove from Redis those of places that no channel here holds or waits for."""
        gone = [place for place in places if place not in self._places and place not in self._pending]
        if not gone:
            return

        def remove() -> None:
            for key, member in gone:
                self._redis.zrem(key, member)

        self._call(remove).addErrback(self._noted, "release").addErrback(lambda _: None)  # expires after ttl

    def _subscribe(self) -> None:
        """In a pool thread: listen for closes (redis-py's thread re-subscribes after a reconnect)."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(**{self._key("close"): self._close_message})
        self._listener = pubsub.run_in_thread(sleep_time=self.spec.timeout, daemon=True,
                                              exception_handler=self._listener_error)

    def _listener_error(self, error: BaseException, pubsub: Any, thread: Any) -> None:
        self._reactor.callFromThread(self._failed, "subscribe", error)
        time.sleep(self.spec.timeout)  # redis-py's listener thread: back off before it reconnects

    def _close_message(self, message: dict[str, Any]) -> None:
        data = message.get("data")
        if isinstance(data, bytes):
            self._reactor.callFromThread(self._close_local, data.decode("utf-8", "replace"))

    def _close_local(self, session_id: str) -> None:
        session = self._sessions.get(session_id)
        if session is not None:
            _log.info("pool close session={session} (asked through the pool)", session=session_id)
            session.close_session(POOL_CLOSE)


def _count(counts: dict[tuple[str, str], int], places: list[tuple[str, str]], step: int) -> None:
    """Add step to each place's count; a count that drops to zero is removed."""
    for place in places:
        left = counts.get(place, 0) + step
        if left:
            counts[place] = left
        else:
            del counts[place]


class SingleUseLink(WrappedLink):
    """A link that opens only if its token's ``jti`` has not been used in the pool (403 if it has, 503 without Redis)."""

    def __init__(self, inner: BackendLink, registry: PoolRegistry, jti: str, expires: float) -> None:
        super().__init__(inner)
        self._registry = registry
        self._jti = jti
        self._expires = expires

    def connect(self) -> "defer.Deferred[Optional[str]]":
        def claimed(first: bool) -> Any:
            if not first:
                _log.info("token refused token=jti:{jti} detail='single-use token already used'", jti=self._jti[:16])
                raise BackendRefused(Reject(403, INVALID_REASON), "token")
            return self._inner.connect()

        def unavailable(failure: Any) -> None:
            raise BackendRefused(Reject(503, "token check unavailable"), "token")

        d = self._registry.claim(self._jti, self._expires)
        return d.addCallbacks(claimed, unavailable)


class PoolLimitLink(WrappedLink):
    """
    A link that opens only while its desktop (and its user) is under the
    route's pool-wide limits: 503 when a limit is reached or Redis cannot say.

    :param hold: what the session's channels share (one client of one desktop):
        channels with one hold take one place.
    :param limits: (key, limit, group) for each limit set; the set counts
        distinct groups in the pool (clients of a desktop, desktops of a user).
    """

    def __init__(self, inner: BackendLink, registry: PoolRegistry, hold: str,
                 limits: list[tuple[str, int, str]]) -> None:
        super().__init__(inner)
        self._registry = registry
        self._hold = hold
        self._limits = limits
        self._holding = False

    def connect(self) -> "defer.Deferred[Optional[str]]":
        def decided(full: Optional[str]) -> Any:
            if full is not None:
                what = "desktop" if full.startswith("desktop:") else "user"
                raise BackendRefused(Reject(503, f"this {what} is at its session limit in the pool"), "limit")
            self._holding = True
            return self._inner.connect()

        def unavailable(failure: Any) -> None:
            raise BackendRefused(Reject(503, "the pool's limits cannot be checked"), "limit")

        return self._registry.acquire(self._hold, self._limits).addCallbacks(
            decided, unavailable)

    def close(self, close: Optional[Close] = None) -> None:
        if self._holding:
            self._holding = False
            self._registry.release(self._hold)
        self._inner.close(close)
