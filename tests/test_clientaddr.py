"""Tests for tunnelgw.core.clientaddr: forwarding headers count only from trusted peers."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from tunnelgw.core.clientaddr import client_address, forwarded_chain

TRUSTED = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"))


def test_untrusted_peer_headers_ignored() -> None:
    """A peer outside the trusted list is the client, whatever it claims."""
    assert client_address("192.0.2.7", TRUSTED, {"x-forwarded-for": ["1.2.3.4"]}) == "192.0.2.7"
    assert client_address("192.0.2.7", (), {"x-forwarded-for": ["1.2.3.4"]}) == "192.0.2.7"


def test_trusted_peer_xff_rightmost_untrusted() -> None:
    """Behind trusted proxies the rightmost untrusted address is the client (a forged left part is ignored)."""
    headers = {"x-forwarded-for": ["6.6.6.6, 198.51.100.4", "10.1.2.3"]}
    assert client_address("127.0.0.1", TRUSTED, headers) == "198.51.100.4"


def test_trusted_peer_forwarded_header() -> None:
    """RFC 7239 Forwarded wins over X-Forwarded-For; quoted IPv6 with port is understood."""
    headers = {"forwarded": ['for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"'], "x-forwarded-for": ["9.9.9.9"]}
    assert forwarded_chain(headers) == ["192.0.2.60", "[2001:db8::1]:4711"]
    assert client_address("127.0.0.1", TRUSTED, headers) == "2001:db8::1"


def test_trusted_peer_without_headers_or_garbage() -> None:
    """No header keeps the peer; a non-address hop stops the walk at the last good address."""
    assert client_address("127.0.0.1", TRUSTED, {}) == "127.0.0.1"
    assert client_address("127.0.0.1", TRUSTED, {"x-forwarded-for": ["unknown"]}) == "127.0.0.1"
    assert client_address("127.0.0.1", TRUSTED, {"x-forwarded-for": ["junk, 10.0.0.5"]}) == "10.0.0.5"


def test_all_trusted_chain_gives_leftmost() -> None:
    """A chain of trusted proxies only yields its leftmost address."""
    assert client_address("127.0.0.1", TRUSTED, {"x-forwarded-for": ["10.0.0.9, 10.0.0.5"]}) == "10.0.0.9"


@given(st.ip_addresses().map(str), st.lists(st.text(max_size=30), max_size=4))
def test_untrusted_peer_is_always_the_client(peer: str, values: list[str]) -> None:
    """Whatever forwarding headers say, an untrusted peer's own address is the client."""
    if any(ipaddress.ip_address(peer) in net for net in TRUSTED):
        return
    headers = {"x-forwarded-for": values, "forwarded": values}
    assert client_address(peer, TRUSTED, headers) == peer
