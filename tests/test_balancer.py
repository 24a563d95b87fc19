"""Tests for tunnelgw.core.balancer: member order by method, down marks, drain, reload."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tunnelgw.core.balancer import Pool
from tunnelgw.core.topoconfig import BalancerMemberSpec, BalancerSpec


def pool(method: str, drain: tuple[bool, ...] = (False, False, False), retry: float = 30.0) -> Pool:
    """A pool of members a, b, c."""
    members = tuple(BalancerMemberSpec(name, d, None) for name, d in zip("abc", drain))
    return Pool.from_spec(BalancerSpec("p", members, method, retry, None))


def firsts(p: Pool, n: int, client: str = "x", now: float = 0.0) -> list[str]:
    """The first member chosen for n successive sessions."""
    return [p.order(client, now)[0].endpoint for _ in range(n)]


def test_round_robin_cycles() -> None:
    """byrequests takes the members in turn and offers the rest as fallbacks."""
    p = pool("byrequests")
    assert firsts(p, 4) == ["a", "b", "c", "a"]
    assert [m.endpoint for m in p.order("x", 0)] == ["b", "c", "a"]


def test_least_busy_prefers_fewest_sessions() -> None:
    """bybusyness picks the member with fewest live sessions."""
    p = pool("bybusyness")
    a, b, c = p.members
    p.acquire(a)
    p.acquire(a)
    p.acquire(c)
    assert p.order("x", 0)[0] is b
    p.acquire(b)
    p.acquire(b)
    assert p.order("x", 0)[0] is c
    p.release(a)
    p.release(a)
    assert p.order("x", 0)[0] is a


@given(st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=20))
def test_source_hash_is_sticky(clients: list[str]) -> None:
    """bysource sends a client to the same member every time while members are up."""
    p = pool("bysource")
    for client in clients:
        assert len(set(firsts(p, 3, client))) == 1


def test_source_hash_spreads_clients() -> None:
    """Different client addresses reach more than one member."""
    p = pool("bysource")
    assert len({p.order(f"127.0.0.{i}", 0)[0].endpoint for i in range(2, 40)}) > 1


def test_down_member_skipped_for_retry_interval() -> None:
    """A failed member is skipped until its retry interval has passed."""
    p = pool("byrequests", retry=30)
    a = p.members[0]
    p.mark_down(a, 100.0)
    assert a not in p.order("x", 110.0)
    assert a in p.order("x", 130.0)
    p.mark_up(a)
    assert a.down_until is None


def test_drained_member_takes_no_new_sessions() -> None:
    """A drained member is never offered; a pool with every member drained offers none."""
    assert all(m.endpoint != "b" for m in pool("byrequests", (False, True, False)).order("x", 0))
    assert pool("bysource", (True, True, True)).order("x", 0) == []


def test_reload_keeps_counts_and_marks() -> None:
    """A pool rebuilt on reload keeps live counts and down marks of members that stay."""
    old = pool("bybusyness")
    old.acquire(old.members[0])
    old.mark_down(old.members[1], 10.0)
    spec = BalancerSpec("p", (BalancerMemberSpec("a", True, None), BalancerMemberSpec("b", False, None),
                              BalancerMemberSpec("d", False, None)), "bybusyness", 30.0, None)
    new = Pool.from_spec(spec, old)
    assert [(m.endpoint, m.busy, m.drain, m.down_until) for m in new.members] == [
        ("a", 1, True, None), ("b", 0, False, 40.0), ("d", 0, False, None)]
