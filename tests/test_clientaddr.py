"""Tests for tunnelgw.core.clientaddr: forwarding headers count only from trusted peers."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from tunnelgw.core.clientaddr import client_address, forwarded_chain, resolve_client

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
    """With header=forwarded, RFC 7239 Forwarded is read (quoted IPv6 with port) and X-Forwarded-For is not."""
    headers = {"forwarded": ['for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"'], "x-forwarded-for": ["9.9.9.9"]}
    assert forwarded_chain(headers, "forwarded") == ["192.0.2.60", "[2001:db8::1]:4711"]
    assert client_address("127.0.0.1", TRUSTED, headers, "forwarded") == "2001:db8::1"


def test_client_sent_forwarded_never_beats_the_proxy_header() -> None:
    """The issue's attack: the proxy's X-Forwarded-For names the client; a client's own Forwarded is not read."""
    headers = {"x-forwarded-for": ["203.0.113.9"], "forwarded": ["for=198.51.100.7"]}
    assert client_address("127.0.0.1", TRUSTED, headers) == "203.0.113.9"
    assert client_address("127.0.0.1", TRUSTED, {"forwarded": ["for=198.51.100.7"]}) == "127.0.0.1"
    # And the other way round: a proxy that sets Forwarded, a client that sends X-Forwarded-For.
    headers = {"forwarded": ["for=203.0.113.9"], "x-forwarded-for": ["198.51.100.7"]}
    assert client_address("127.0.0.1", TRUSTED, headers, "forwarded") == "203.0.113.9"


def test_scope_ids_and_text_around_addresses_refused() -> None:
    """Scope ids, spaces, names and bad ports are not addresses: the peer is kept and the problem said."""
    for value in ('for="[fe80::1%x y status=200]"', 'for="[fe80::1%eth0]"', "for=host.example",
                  'for="[2001:db8::1]x"', "for=192.0.2.1:port"):
        client, problem = resolve_client("127.0.0.1", TRUSTED, {"forwarded": [value]}, "forwarded")
        assert (client, problem is not None) == ("127.0.0.1", True), value
    for value in ("fe80::1%eth0", "192.0.2.1 status=200", "\u0661.2.3.4"):
        assert resolve_client("127.0.0.1", TRUSTED, {"x-forwarded-for": [value]})[0] == "127.0.0.1", value
    assert client_address("127.0.0.1", TRUSTED, {"x-forwarded-for": ["192.0.2.1:8080"]}) == "192.0.2.1"
    assert client_address("127.0.0.1", TRUSTED, {"x-forwarded-for": ['"[2001:db8::2]:80"']}) == "2001:db8::2"


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


@given(st.lists(st.text(max_size=40), max_size=4), st.sampled_from(["x-forwarded-for", "forwarded"]))
def test_free_form_headers_give_the_peer_or_an_address(values: list[str], header: str) -> None:
    """Whatever a trusted peer's header holds, the client is the peer or a plain IP literal (no scope, no spaces)."""
    client = client_address("127.0.0.1", TRUSTED, {header: values}, header)
    assert client == "127.0.0.1" or str(ipaddress.ip_address(client)) == client
    assert "%" not in client and not any(c.isspace() for c in client)
