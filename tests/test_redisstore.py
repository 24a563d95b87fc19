"""
The glue around every Redis call, in memory (Clock, threads run by hand): the
caller's wait is bounded by the timeout whatever the call does, each use
has its own threads and queue bound, the breaker fails calls at once after
an outage and a probe closes it, cancelled and late answers are dropped.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import redis
from twisted.internet import defer
from twisted.internet.task import Clock

from tunnelgw.core.routing import Reject
from tunnelgw.redisstore import PROBE_INTERVAL, RedisStore, RedisUnavailable


class ThreadsReactor(Clock):
    """A Clock whose callFromThread runs at once (the hand-run 'threads' are the test itself)."""

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        f(*args)


class HandThreads:
    """A use's thread pool: work waits here until the test runs it."""

    def __init__(self) -> None:
        self.queued: list[tuple[Callable[[bool, Any], None], Callable[[], Any]]] = []

    def callInThreadWithCallback(self, on_result: Callable[[bool, Any], None], work: Callable[[], Any]) -> None:
        self.queued.append((on_result, work))

    def run_next(self) -> None:
        """Run the oldest queued work and report its result as a thread would."""
        from twisted.python.failure import Failure

        on_result, work = self.queued.pop(0)
        try:
            result = work()
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)


class Client:
    """Stands for the redis-py client: what ping and disconnect do is set by the test."""

    def __init__(self) -> None:
        self.pings = 0
        self.disconnects = 0
        self.down = True
        self.connection_pool = self

    def ping(self) -> bool:
        self.pings += 1
        if self.down:
            raise redis.ConnectionError("refused")
        return True

    def disconnect(self) -> None:
        self.disconnects += 1


class Observed:
    """The gauge and error counts a store reports."""

    def __init__(self) -> None:
        self.value = 0.0
        self.errors: list[str] = []
        self.backs = 0

    def set(self, value: float) -> None:
        self.value = value


def make(timeout: float = 0.5) -> tuple[ThreadsReactor, RedisStore, dict[str, HandThreads], Client, Observed]:
    reactor, client, seen = ThreadsReactor(), Client(), Observed()
    pools: dict[str, HandThreads] = {}

    def thread_pool(name: str, threads: int) -> HandThreads:
        pools[name] = HandThreads()
        return pools[name]

    def back() -> None:
        seen.backs += 1

    store = RedisStore(reactor, client, "pool", "127.0.0.1:6379", timeout, seen, seen.errors.append,
                       on_back=back, thread_pool=thread_pool)
    return reactor, store, pools, client, seen


def outcome(d: "defer.Deferred[Any]") -> list[Any]:
    got: list[Any] = []
    d.addBoth(got.append)
    return got


def test_answer_within_timeout() -> None:
    """A call that answers in time fires with its result; nothing is counted."""
    reactor, store, pools, _, seen = make()
    got = outcome(store.use("list", 2).call(lambda: 42))
    pools["list"].run_next()
    assert got == [42] and seen.errors == [] and store.breaker.up


def test_hung_call_fails_at_timeout_and_opens_the_breaker() -> None:
    """A call that never answers fails at exactly the timeout; later calls fail at once; a probe closes it."""
    reactor, store, pools, client, seen = make(0.5)
    use = store.use("lookup", 2)
    got = outcome(use.call(lambda: "late"))
    reactor.advance(0.49)
    assert got == []
    reactor.advance(0.01)
    assert isinstance(got[0].value, RedisUnavailable) and "did not answer within 0.5 s" in got[0].value.reason
    assert not store.breaker.up and seen.value == 1 and seen.errors == ["lookup"]
    # The store's connections are dropped first (frees a thread stuck on a dribbled reply).
    pools["probe"].run_next()
    assert client.disconnects == 1
    # Failing fast: no thread is asked.
    fast = outcome(use.call(lambda: "never"))
    assert isinstance(fast[0].value, RedisUnavailable) and "failing fast" in fast[0].value.reason
    assert len(pools["lookup"].queued) == 1 and seen.errors == ["lookup", "lookup"]
    # The hung call's late answer changes nothing.
    pools["lookup"].run_next()
    assert use.pending == 0
    # Probes every PROBE_INTERVAL until Redis answers.
    reactor.advance(PROBE_INTERVAL)
    pools["probe"].run_next()
    assert client.pings == 1 and not store.breaker.up
    reactor.advance(PROBE_INTERVAL)
    client.down = False
    pools["probe"].run_next()
    assert store.breaker.up and seen.value == 0 and seen.backs == 1
    reactor.advance(PROBE_INTERVAL * 3)
    assert pools["probe"].queued == []  # probing stopped
    good = outcome(use.call(lambda: "ok"))
    pools["lookup"].run_next()
    assert good == ["ok"]


def test_a_probe_that_hangs_is_bounded_too() -> None:
    """A probe that never answers is abandoned at the timeout and the next one goes out."""
    reactor, store, pools, client, seen = make(0.5)
    store.failed("lookup", "refused")
    pools["probe"].run_next()  # the disconnect
    reactor.advance(PROBE_INTERVAL)
    assert len(pools["probe"].queued) == 1  # a ping, left hanging
    reactor.advance(0.5)
    reactor.advance(PROBE_INTERVAL - 0.5)
    assert len(pools["probe"].queued) == 2
    assert not store.breaker.up


def test_refused_and_closed_mid_reply_open_the_breaker_but_command_errors_do_not() -> None:
    """ConnectionError and TimeoutError are outages; a ResponseError (WRONGTYPE) is the command's own failure."""
    for error, outage in [(redis.ConnectionError("Connection closed by server."), True),
                          (redis.TimeoutError("Timeout reading from socket"), True),
                          (redis.ReadOnlyError("You can't write against a read only replica."), True),
                          (redis.ResponseError("WRONGTYPE"), False)]:
        reactor, store, pools, _, seen = make()

        def fail(error: Exception = error) -> None:
            raise error

        got = outcome(store.use("claim", 1).call(fail))
        pools["claim"].run_next()
        assert got[0].check(RedisUnavailable if outage else redis.ResponseError), error
        assert store.breaker.up is not outage
        assert seen.errors == (["claim"] if outage else [])


def test_one_use_stuck_leaves_other_uses_their_threads() -> None:
    """Calls of a use whose threads are stuck never wait in another use's threads."""
    reactor, store, pools, _, _ = make()
    refresh, lookup = store.use("refresh", 1), store.use("lookup", 2)
    outcome(refresh.call(lambda: None))
    got = outcome(lookup.call(lambda: "token"))
    assert len(pools["refresh"].queued) == 1 and len(pools["lookup"].queued) == 1
    pools["lookup"].run_next()
    assert got == ["token"]


def test_queue_bound_fails_at_once() -> None:
    """Beyond its bound of queued calls, a use fails a call at once instead of queueing it."""
    reactor, store, pools, _, seen = make()
    use = store.use("limits", 1, waiting=2)
    outcome(use.call(lambda: 1))
    outcome(use.call(lambda: 2))
    third = outcome(use.call(lambda: 3))
    assert isinstance(third[0].value, RedisUnavailable) and "too many" in third[0].value.reason
    assert store.breaker.up and len(pools["limits"].queued) == 2


def test_cancelled_before_it_runs_is_dropped() -> None:
    """A call cancelled while queued never reaches Redis, and its timer is gone."""
    reactor, store, pools, _, _ = make()
    ran: list[int] = []
    d = store.use("list", 1).call(lambda: ran.append(1))
    got = outcome(d)
    d.cancel()
    assert got[0].check(defer.CancelledError)
    pools["list"].run_next()
    assert ran == [] and reactor.getDelayedCalls() == []


@pytest.mark.parametrize("timeout", [0.05, 0.5, 2.0])
def test_wait_never_exceeds_timeout(timeout: float) -> None:
    """Whatever the number of calls queued behind a stuck one, each caller has its answer at its timeout."""
    reactor, store, pools, _, _ = make(timeout)
    use = store.use("lookup", 1)
    first = outcome(use.call(lambda: None))
    reactor.advance(timeout / 2)
    assert first == []
    reactor.advance(timeout / 2)
    assert isinstance(first[0].value, RedisUnavailable)


def test_token_lookups_waiting_for_a_batch_are_bounded_from_their_arrival() -> None:
    """A lookup that arrives while a slow MGET is out gets its 503 at its own timeout, not at the next batch's."""
    from tunnelgw.core.errors import Location
    from tunnelgw.core.topoconfig import AllowedTarget, TokenSourceSpec
    from tunnelgw.redistokens import RedisTokens

    reactor = ThreadsReactor()
    pools: dict[str, HandThreads] = {}

    def thread_pool(name: str, threads: int) -> HandThreads:
        pools[name] = HandThreads()
        return pools[name]

    class Mget(Client):
        def mget(self, keys: list[str]) -> list[bytes]:
            return [b"127.0.0.1:5901" for _ in keys]

    spec = TokenSourceSpec("broker", "redis", "redis://127.0.0.1:6379/0", (AllowedTarget("127.0.0.0/8", 5900, 5999),),
                           1.0, False, Location("gw.conf", 1), timeout=0.5)
    tokens = RedisTokens(spec, reactor, client=Mget(), thread_pool=thread_pool)
    first = outcome(tokens.lookup("a", "127.0.0.1"))
    reactor.advance(0.4)
    second = outcome(tokens.lookup("b", "127.0.0.1"))  # waits for the first MGET
    reactor.advance(0.09)
    pools["lookup"].run_next()  # the first MGET answers at 0.49 s
    assert first and not isinstance(first[0], Reject)
    assert second == []  # its own MGET is now out
    reactor.advance(0.42)  # 0.5 s after it arrived (and a hair, for float sums)
    assert isinstance(second[0], Reject) and second[0].status == 503
