"""The Redis breaker: up until a failure, down (refusing at once, counted) until recovered; one announcement each way."""

from __future__ import annotations

from tunnelgw.core.breaker import Breaker


def test_one_outage_is_announced_once() -> None:
    """The failure that opens the breaker answers True; the next ones during the outage answer False."""
    breaker = Breaker("pool", "127.0.0.1:6379", 0.0)
    assert breaker.allow() and breaker.up
    assert breaker.failed("refused", 5.0)
    assert not breaker.failed("timed out", 6.0)
    state = breaker.state()
    assert (state.up, state.since, state.error) == (False, 5.0, "refused")


def test_down_refuses_and_counts_until_recovered() -> None:
    """While down, allow() is False and counted; recovered() answers True once and lets calls through."""
    breaker = Breaker("broker", "127.0.0.1:6379", 0.0)
    breaker.failed("hung", 1.0)
    assert not breaker.allow() and not breaker.allow()
    assert breaker.state().failed_fast == 2
    assert breaker.recovered(3.0)
    assert not breaker.recovered(4.0)
    assert breaker.allow() and breaker.state().since == 3.0
    assert breaker.failed("again", 9.0) and breaker.state().failed_fast == 0
