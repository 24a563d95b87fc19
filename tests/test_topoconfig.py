"""Tests for the topology directives of the configuration (tunnelgw.core.topoconfig via parse_config)."""

from __future__ import annotations

import ipaddress

import pytest

from tunnelgw.core.config import ConfigError, parse_config

HEAD = "Listen tcp:port=0\n"


def problems(text: str) -> list[str]:
    """The problem lines a text yields."""
    with pytest.raises(ConfigError) as raised:
        parse_config(HEAD + text, "gw.conf")
    return str(raised.value).splitlines()


def test_full_topology_parses() -> None:
    """Every topology directive parses into the values the gateway uses."""
    config = parse_config(HEAD + (
        "<Proxy balancer://desks>\n"
        "  BalancerMember tcp:host=127.0.0.2:port=5900\n"
        "  BalancerMember tcp:host=127.0.0.3:port=5900 status=drain\n"
        "  ProxySet lbmethod=bybusyness retry=5\n"
        "</Proxy>\n"
        "ProxyPass /pool balancer://desks\n"
        "TokenSource files dir /etc/tokens allow=127.0.0.0/8:5900-5999 reload=1\n"
        "TokenSource signed jwt /etc/secret allow=desk1.example:5901 bind=address\n"
        "TokenRoute /vnc files\n"
        "TokenRoute /desk signed from=path connecttimeout=3\n"
        "TokenLookup /lookup /vnc\n"
        "GatewayURL ws://127.0.0.2:8080\n"
        "GatewayOwner ws://127.0.0.3:8080 127.0.0.3 desk3.example\n"
        "TrustedProxy 127.0.0.1 10.0.0.0/8\n"
        "OriginAllow /vnc https://vdi.example http://localhost:8000/\n"), "gw.conf")
    topo = config.topology
    (pool,) = topo.balancers
    assert (pool.name, pool.method, pool.retry, [m.drain for m in pool.members]) == ("desks", "bybusyness", 5.0,
                                                                                      [False, True])
    assert pool.where.line == 2  # type: ignore[attr-defined]
    assert [(s.name, s.kind, s.reload, s.bind_address) for s in topo.token_sources] == [
        ("files", "dir", 1.0, False), ("signed", "jwt", 2.0, True)]
    assert [(r.path, r.origin, r.connect_timeout) for r in topo.token_routes] == [("/vnc", "query", 10.0),
                                                                                  ("/desk", "path", 3.0)]
    assert topo.gateway_url == "ws://127.0.0.2:8080"
    assert topo.owners[0].host_globs == ("127.0.0.3", "desk3.example")
    assert topo.trusted_proxies == (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"))
    assert topo.origins[0].origins == ("https://vdi.example", "http://localhost:8000")


def test_unclosed_block_names_its_opening_line() -> None:
    """A <Proxy> block without </Proxy> is reported at the line that opened it."""
    assert problems("<Proxy balancer://p>\nBalancerMember tcp:host=a:port=1\n") == [
        "gw.conf:2: <Proxy> block is not closed (missing </Proxy>)"]


def test_block_mistakes() -> None:
    """Stray closers, members outside blocks, foreign directives inside and bad settings are all named."""
    found = problems(
        "</Proxy>\n"
        "BalancerMember tcp:host=a:port=1\n"
        "<Proxy balancer://p>\n"
        "ProxyPass /x tcp:host=a:port=1\n"
        "BalancerMember tcp:host=a:port=1 status=sleepy\n"
        "ProxySet lbmethod=random\n"
        "</Proxy>\n"
        "<Proxy balancer://empty>\n"
        "</Proxy>\n"
        "<Proxy http://x>\n"
        "</Proxy>\n"
        "ProxyPass /y balancer://nope\n")
    assert found == [
        "gw.conf:2: </Proxy> without <Proxy balancer://NAME>",
        "gw.conf:3: BalancerMember belongs inside <Proxy balancer://NAME> ... </Proxy>",
        "gw.conf:5: ProxyPass is not allowed inside <Proxy> (only BalancerMember and ProxySet); missing </Proxy>?",
        "gw.conf:6: status takes one of drain, +n, active, got 'sleepy'",
        "gw.conf:7: lbmethod takes one of byrequests, bybusyness, bysource, got 'random'",
        "gw.conf:10: balancer 'empty' has no BalancerMember",
        "gw.conf:11: <Proxy> takes balancer://NAME with a plain NAME, got 'http://x'",
        "gw.conf:12: balancer '-' has no BalancerMember",
        "gw.conf:13: no <Proxy balancer://nope> block defines this balancer",
    ]


def test_token_mistakes() -> None:
    """Token sources need allow entries; routes and lookups must name what exists."""
    found = problems(
        "TokenSource t file /x\n"
        "TokenSource u file /x allow=*:0\n"
        "TokenSource v file /x allow=127.0.0.1:5900 bind=address\n"
        "TokenSource w carrier /x allow=a:1\n"
        "TokenRoute /vnc nosuch from=cookie\n"
        "TokenLookup /lookup /nothere\n"
        "GatewayOwner ws://h:1 h\n"
        "TrustedProxy 127.0.0.1 nothost\n"
        "OriginAllow vnc https://x\n")
    assert found == [
        "gw.conf:2: TokenSource needs at least one allow=HOST:PORTS: tokens may not name any host",
        "gw.conf:3: allow takes HOST:PORT or HOST:LOW-HIGH with HOST a CIDR block, address or exact name, "
            "e.g. 10.0.0.0/16:5900-5999, got '*:0'",
        "gw.conf:3: TokenSource needs at least one allow=HOST:PORTS: tokens may not name any host",
        "gw.conf:4: bind=address needs signed tokens (kind jwt or jwks)",
        "gw.conf:5: TokenSource takes a name, a kind (file, dir, jwt, jwks, redis), a path (for jwt: a file holding the "
        "secret; for redis: redis://HOST:PORT/DB) and allow=HOST:PORTS options",
        "gw.conf:6: from takes one of query, path, host, got 'cookie'",
        "gw.conf:6: no TokenSource named 'nosuch'",
        "gw.conf:7: no TokenRoute at '/nothere'",
        "gw.conf:8: GatewayOwner needs GatewayURL (this gateway's own URL)",
        "gw.conf:9: TrustedProxy takes IP addresses or networks, got 'nothost'",
        "gw.conf:10: OriginAllow takes a path and the allowed origins, e.g. OriginAllow /vnc https://vdi.example",
    ]


def test_trusted_proxy_header() -> None:
    """TrustedProxy header= names the one header the client address is read from (X-Forwarded-For by default)."""
    assert parse_config(HEAD + "TrustedProxy 127.0.0.1\n", "gw.conf").topology.proxy_header == "x-forwarded-for"
    topo = parse_config(HEAD + "TrustedProxy 127.0.0.2 header=Forwarded\nTrustedProxy 10.0.0.0/8\n", "gw.conf").topology
    assert (topo.proxy_header, len(topo.trusted_proxies)) == ("forwarded", 2)
    assert problems("TrustedProxy 127.0.0.1 header=x-real-ip\nTrustedProxy 127.0.0.2 header=forwarded\n"
                    "TrustedProxy 127.0.0.3 header=x-forwarded-for\nTrustedProxy header=forwarded\n") == [
        "gw.conf:2: header takes one of x-forwarded-for, forwarded, got 'x-real-ip'",
        "gw.conf:4: TrustedProxy header=x-forwarded-for contradicts header=forwarded at gw.conf:3: "
        "the client address comes from one header",
        "gw.conf:5: TrustedProxy takes addresses or networks, e.g. TrustedProxy 127.0.0.1 10.1.0.0/16",
    ]
