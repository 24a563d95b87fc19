"""Tests for tunnelgw.core.hostpattern: allow-lists as CIDR blocks and exact names, never globs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tunnelgw.core.hostpattern import capture_may_change_host, host_matches, host_pattern_problem
from tunnelgw.core.tokens import TargetAddress, check_target
from tunnelgw.core.topoconfig import AllowedTarget


def test_globs_are_refused_as_patterns() -> None:
    """``10.0.0.*``, ``desk?.example`` and ``*`` are config errors; CIDR, addresses and names are not."""
    for bad in ("10.0.0.*", "desk?.example", "*", "10.0.*", "a..b", "-x.example", "10.0.0.5 x", "1.2.3"):
        assert host_pattern_problem(bad) is not None, bad
    for good in ("10.0.0.0/24", "10.0.0.5", "::1", "fd00::/8", "desk1.example", "localhost"):
        assert host_pattern_problem(good) is None, good


def test_dns_suffix_cannot_satisfy_an_address_block() -> None:
    """``10.0.0.5.attacker.example`` is not inside 10.0.0.0/24; 10.0.0.5 is."""
    assert host_matches("10.0.0.5", "10.0.0.0/24")
    assert not host_matches("10.0.0.5.attacker.example", "10.0.0.0/24")
    assert not host_matches("10.0.0.5.attacker.example", "10.0.0.5")
    assert not host_matches("desk1.example.attacker.example", "desk1.example")
    assert host_matches("DESK1.example", "desk1.example")
    assert not host_matches("fe80::1%eth0", "fe80::/10")


def test_token_target_with_dns_suffix_refused() -> None:
    """A token naming ``10.0.0.5.attacker.example`` is refused by ``allow=10.0.0.0/24``; 10.0.0.5 passes."""
    allow = (AllowedTarget("10.0.0.0/24", 5900, 5999),)
    assert check_target(TargetAddress("10.0.0.5", 5901), allow) is None
    assert check_target(TargetAddress("10.0.0.5.attacker.example", 5901), allow) is not None


@given(st.text(alphabet="0123456789abcdefxyz.-:", min_size=1, max_size=40))
def test_a_name_matches_a_block_only_as_an_address(host: str) -> None:
    """Whatever the host text, a CIDR block admits it only when it parses as an address inside the block."""
    import ipaddress
    if host_matches(host, "10.0.0.0/8"):
        assert ipaddress.ip_address(host) in ipaddress.ip_network("10.0.0.0/8")


@given(st.text(max_size=30))
def test_capture_that_could_change_the_host_is_flagged(value: str) -> None:
    """Any capture holding a dot, colon, '@', '%', '/' or bracket is flagged; a plain label is not."""
    if set(value) & set(".:@%/[]") or not value:
        assert capture_may_change_host(value)
    assert not capture_may_change_host("5")
    assert not capture_may_change_host("desk-1")
