"""Idle and heartbeat policy (tunnelgw.core.relay), with time passed in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tunnelgw.core.relay import CLOSE_GOING_AWAY, Heartbeat, IdleWatch, idle_close


def test_idle_watch_expires_only_after_timeout_without_bytes() -> None:
    """Bytes moving keep the session; none for the timeout ends it."""
    watch = IdleWatch(10, now=0.0)
    assert watch.check(0, 2.5) == 2.5
    assert watch.check(5, 9.0) == 2.5
    assert watch.check(5, 18.0) == 1.0
    assert watch.check(5, 19.0) is None
    assert idle_close(10).code == CLOSE_GOING_AWAY


@given(st.floats(0.1, 1000), st.lists(st.floats(0, 100), max_size=50))
def test_idle_watch_never_ends_early_nor_much_late(timeout: float, gaps: list[float]) -> None:
    """Checked when it asks, an idle session ends between timeout and 1.25*timeout after its last byte."""
    watch = IdleWatch(timeout, now=0.0)
    now, total, last_byte = 0.0, 0, 0.0
    for gap in gaps:
        now += gap
        total += 1
        last_byte = now
        wait = watch.check(total, now)
        assert wait is not None
    for _ in range(100):
        wait = watch.check(total, now)
        if wait is None:
            break
        now += wait
    assert wait is None
    assert timeout - 1e-6 <= now - last_byte <= 1.25 * timeout + 1e-6


def test_heartbeat_drops_a_silent_client_but_not_a_paused_one() -> None:
    """No pong by the deadline drops the client, unless reading from it was paused (deadline restarts)."""
    beat = Heartbeat(interval=30, deadline=10)
    beat.ping_sent(0.0)
    assert beat.verdict(10.0, reading_paused=True) == 10
    assert beat.verdict(20.0, reading_paused=False) is None
    beat.pong_received()
    assert beat.verdict(21.0, reading_paused=False) == 0.0
