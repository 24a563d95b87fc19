"""
Pool-wide limit places and vanishing clients, in memory (Clock, threads run by
hand, a stand-in for the Redis client's few calls): at every step of the
handshake a client that goes away holds no place beyond that step.
"""

from __future__ import annotations

from typing import Any, Optional, cast

from prometheus_client import CollectorRegistry
from twisted.internet import defer

from test_redisstore import HandThreads, ThreadsReactor
from tunnelgw.backends import BackendLink, BackendRefused, Carries
from tunnelgw.core.config import PoolSpec
from tunnelgw.core.errors import Location
from tunnelgw.core.routing import Reject
from tunnelgw.pool import PoolLimitLink, PoolRegistry

LIMITS = [("desktop:d1", 1, "client-a")]


class PlaceStore:
    """The Redis client calls limits make: the acquire script and ZREM, over sets in memory."""

    def __init__(self) -> None:
        self.places: dict[str, set[str]] = {}
        self.connection_pool = self
        #: Called while the script runs (as a client vanishing while Redis answers would).
        self.during: Any = None

    def register_script(self, text: str) -> Any:
        def acquire(keys: list[str], args: list[Any]) -> int:
            for i, key in enumerate(keys):
                self.places.setdefault(key, set()).add(f"{args[3]} {args[5 + 2 * i]}")
            if self.during is not None:
                self.during()
            return 0

        return acquire

    def zrem(self, key: str, member: str) -> None:
        self.places.get(key, set()).discard(member)

    def ping(self) -> bool:
        return True

    def pipeline(self, transaction: bool = False) -> "PlaceStore":
        return self

    def execute(self) -> None:
        pass

    def set(self, *args: Any, **kwargs: Any) -> None:
        pass

    def zadd(self, key: str, mapping: dict[str, float]) -> None:
        self.places.setdefault(key, set()).update(mapping)

    def expire(self, key: str, ttl: int) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def held(self) -> set[str]:
        return {m for members in self.places.values() for m in members}


class Inner:
    """The link a limit wraps: its connect is left pending until the test answers it."""

    carries = Carries.PAYLOAD
    transport = None
    description = "inner"

    def __init__(self) -> None:
        self.connecting: Optional[defer.Deferred[Optional[str]]] = None
        self.closed = 0

    def connect(self) -> "defer.Deferred[Optional[str]]":
        self.connecting = defer.Deferred()
        return self.connecting

    def close(self, close: Any = None) -> None:
        self.closed += 1


def registry() -> tuple[ThreadsReactor, PoolRegistry, PlaceStore, dict[str, HandThreads]]:
    reactor, store = ThreadsReactor(), PlaceStore()
    pools: dict[str, HandThreads] = {}

    def thread_pool(name: str, threads: int) -> HandThreads:
        pools[name] = HandThreads()
        return pools[name]

    spec = PoolSpec("127.0.0.1", 6379, 0, False, "gw", 10.0, 2.0, 0.5, "t", None, Location("gw.conf", 1))
    return reactor, PoolRegistry(reactor, spec, {}, CollectorRegistry(), store, thread_pool), store, pools


class Session:
    """A limited link as a session drives it: connect, and on the way out cancel and close."""

    def __init__(self, registry_: PoolRegistry) -> None:
        self.inner = Inner()
        self.link = PoolLimitLink(cast(BackendLink, self.inner), registry_, "gw:d1", LIMITS)
        self.outcome: list[Any] = []
        self.connecting = self.link.connect()
        self.connecting.addBoth(self.outcome.append)

    def vanish(self) -> None:
        """What a session does when its client goes away mid-handshake: cancel the connect, close the link."""
        self.connecting.cancel()
        self.link.close()


def test_vanishing_before_the_acquire_runs_never_reaches_redis() -> None:
    """Gone while the acquire waits for a thread: it is dropped, no place is taken."""
    reactor, pool, places, threads = registry()
    one = Session(pool)
    one.vanish()
    threads["limits"].run_next()  # dropped: its caller is gone
    assert places.held() == set()
    threads["limits"].run_next()  # the give-back of places it might have taken (none)
    assert places.held() == set() and threads["limits"].queued == [] and one.inner.connecting is None


def test_vanishing_while_redis_answers_gives_the_place_back() -> None:
    """Gone while the acquire is in Redis: the place Redis gives is given straight back."""
    reactor, pool, places, threads = registry()
    one = Session(pool)
    places.during = one.vanish
    threads["limits"].run_next()  # Redis takes the place as the client goes...
    places.during = None
    assert places.held() == {"gw client-a"}
    threads["limits"].run_next()  # ...and the ZREM gives it back
    assert places.held() == set() and one.inner.connecting is None


def test_vanishing_while_the_backend_connects_gives_the_place_back() -> None:
    """Gone after the place was taken, while the steps inside (claim, portal, backend) run: released on close."""
    reactor, pool, places, threads = registry()
    one = Session(pool)
    threads["limits"].run_next()
    assert places.held() == {"gw client-a"} and one.inner.connecting is not None
    one.vanish()
    threads["limits"].run_next()
    assert places.held() == set() and one.inner.closed == 1


def test_refused_inside_gives_the_place_back() -> None:
    """A step inside refuses (a used single-use token): the session ends and the place goes with it."""
    reactor, pool, places, threads = registry()
    one = Session(pool)
    threads["limits"].run_next()
    assert one.inner.connecting is not None
    one.inner.connecting.errback(BackendRefused(Reject(403, "invalid token"), "token"))
    one.link.close()
    threads["limits"].run_next()
    assert places.held() == set() and one.outcome[0].check(BackendRefused)


def test_open_session_holds_its_place_until_it_ends() -> None:
    """Connected: the place is held (another channel of the desktop shares it) until the last one ends."""
    reactor, pool, places, threads = registry()
    one = Session(pool)
    threads["limits"].run_next()
    assert one.inner.connecting is not None
    one.inner.connecting.callback(None)
    second = Session(pool)  # a second channel of the same desktop: no Redis call
    assert threads["limits"].queued == [] and second.inner.connecting is not None
    one.link.close()
    assert places.held() == {"gw client-a"}
    second.link.close()
    threads["limits"].run_next()
    assert places.held() == set()


def test_an_acquire_that_times_out_gives_a_late_place_back() -> None:
    """Redis is slow: the client gets its 503 at the timeout; the place Redis gives later goes back once it is back."""
    reactor, pool, places, threads = registry()
    one = Session(pool)
    places.during = lambda: reactor.advance(0.5)  # Redis takes the place as the caller's timeout strikes
    threads["limits"].run_next()
    places.during = None
    assert isinstance(one.outcome[0].value, BackendRefused) and one.outcome[0].value.reject.status == 503
    one.link.close()
    assert places.held() == {"gw client-a"} and threads["limits"].queued == []  # the give-back failed fast: down
    threads["probe"].run_next()  # the breaker drops connections
    reactor.advance(1.0)
    threads["probe"].run_next()  # a probe finds Redis back: the registry refreshes at once...
    threads["refresh"].run_next()
    assert places.held() == set()  # ...and gives the place back
