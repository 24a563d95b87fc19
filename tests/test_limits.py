"""Admission policy (tunnelgw.core.limits): session counts and handshake rates, as plain values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelgw.core.limits import MAX_CHANNELS, Admission, HandshakeRate, SessionCounts
from tunnelgw.core.routing import Reject


def test_each_session_limit_refuses_with_503_and_says_which() -> None:
    """Global, per route and per client limits refuse with 503 and distinct reasons."""
    counts = SessionCounts(total=3, per_client=2)
    a = counts.admit("/r", None, "c1")
    b = counts.admit("/r", None, "c1")
    assert isinstance(a, Admission) and isinstance(b, Admission)
    refused = counts.admit("/r", None, "c1")
    assert isinstance(refused, Reject) and refused.status == 503 and "client" in refused.reason
    assert isinstance(counts.admit("/one", 1, "c2"), Admission)
    refused = counts.admit("/one", 1, "c3")
    assert isinstance(refused, Reject) and refused.status == 503 and "gateway" in refused.reason
    counts.release(a)
    refused = counts.admit("/one", 1, "c3")
    assert isinstance(refused, Reject) and "route" in refused.reason


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["/a", "/b"]), st.sampled_from(["x", "y", "z"])),
                max_size=200))
def test_counts_never_exceed_limits_and_return_to_zero(steps: list[tuple[bool, str, str]]) -> None:
    """Whatever the order of admits and releases, limits hold and releasing all leaves no state behind."""
    counts = SessionCounts(total=5, per_client=3)
    held: list[Admission] = []
    for admit, route, client in steps:
        if admit or not held:
            granted = counts.admit(route, 2 if route == "/b" else None, client)
            if isinstance(granted, Admission):
                held.append(granted)
        else:
            counts.release(held.pop(0))
        assert counts.live == len(held) <= 5
        assert counts.route_count("/b") <= 2
        assert all(counts.client_count(c) <= 3 for c in "xyz")
    for granted in held:
        counts.release(granted)
    assert counts.live == 0 and counts._routes == {} and counts._clients == {}


def test_rate_allows_a_burst_then_429_then_refills() -> None:
    """A burst of rate handshakes passes, the next gets 429, and a token comes back after 1/rate s."""
    rate = HandshakeRate(4)
    assert [rate.allow("c", 100.0) for _ in range(4)] == [None] * 4
    refused = rate.allow("c", 100.0)
    assert isinstance(refused, Reject) and refused.status == 429
    assert rate.allow("other", 100.0) is None
    assert rate.allow("c", 100.26) is None
    assert isinstance(rate.allow("c", 100.26), Reject)


def test_rate_zero_is_off() -> None:
    """rate=0 never refuses and keeps no state."""
    rate = HandshakeRate(0)
    assert all(rate.allow("c", 0.0) is None for _ in range(1000))
    assert len(rate) == 0


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, 10000), st.floats(0, 0.5)), max_size=300))
def test_rate_memory_is_bounded(knocks: list[tuple[int, float]]) -> None:
    """However many addresses knock, at most max_clients buckets are kept."""
    rate = HandshakeRate(2, max_clients=16)
    now = 0.0
    for client, step in knocks:
        now += step
        rate.allow(str(client), now)
        assert len(rate) <= 17


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["", "d1", "d2"]), st.sampled_from(["x", "y"])),
                max_size=200))
@settings(max_examples=300)
def test_a_slot_per_client_of_a_desktop(steps: list[tuple[bool, str, str]]) -> None:
    """Whatever the order, live slots are the distinct (desktop, client) pairs held plus the sessions without a desktop; releasing all leaves nothing."""
    counts = SessionCounts(total=0, per_client=0)
    held: list[Admission] = []
    for n, (admit, desktop, client) in enumerate(steps):
        if admit or not held:
            granted = counts.admit("/r", None, client, desktop, f"s{n}")
            if isinstance(granted, Reject):  # only the channel bound refuses here
                assert sum(1 for a in held if a.desktop and (a.desktop, a.client) == (desktop, client)) == MAX_CHANNELS
            else:
                held.append(granted)
        else:
            counts.release(held.pop(0))
        groups = {(a.desktop, a.client) for a in held if a.desktop}
        assert counts.live == len(groups) + sum(1 for a in held if not a.desktop) and counts.desktops == len(groups)
        assert all(a.group == b.group for a in held for b in held if a.desktop and (a.desktop, a.client) == (b.desktop, b.client))
    for granted in held:
        counts.release(granted)
    assert counts.live == 0 and counts.desktops == 0 and counts._clients == {}
