"""
Security of routing (tunnelgw.core.routing): never an open proxy, paths
normalised before matching, no escape above the root.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelgw.core.config import parse_config
from tunnelgw.core.routing import Reject, Route, RuleSet, choose_route, normalise_path

_CONFIG = parse_config("""Listen tcp:0
ProxyPass /vnc tcp:host=10.0.0.1:port=5900
ProxyPassMatch ^/host/([^/]+)/(\\d+)$ tcp:host=$1.desktops.internal:port=$2
ProxyPassMatch ^/any/(.*)$ unix:path=/run/desktops/$1.sock
""")
_RULES = RuleSet(_CONFIG)
_SAFE = re.compile(r"[A-Za-z0-9._~-]*")


@settings(max_examples=500)
@given(st.binary(max_size=80).map(lambda b: b"/" + b))
def test_normalised_paths_are_canonical_and_idempotent(raw: bytes) -> None:
    """A normalised path starts with '/', holds no '.', '..' or empty segments, and normalises to itself."""
    path = normalise_path(raw)
    if isinstance(path, Reject):
        assert path.status in (400, 404)
        return
    assert path.startswith("/") and "//" not in path
    assert all(s not in (".", "..") for s in path.split("/"))
    assert normalise_path(quote(path, safe="/\\").encode()) == path


@settings(max_examples=300)
@given(st.lists(st.sampled_from(["..", ".", "", "a", "%2e%2e", "%2E", "vnc", "%2f", "%5c"]), max_size=10))
def test_dot_segments_never_climb_above_the_root(segments: list[str]) -> None:
    """Encoded or plain dot segments are resolved or refused; the result never holds '..'."""
    path = normalise_path(("/" + "/".join(segments)).encode())
    if isinstance(path, Reject):
        assert path.status in (400, 404)
    else:
        assert ".." not in path.split("/")


def test_equivalent_spellings_reach_the_same_rule() -> None:
    """/vnc, //vnc, /a/../vnc and /%76nc all reach the same rule."""
    routes = [choose_route(_RULES, p) for p in (b"/vnc", b"//vnc", b"/a/../vnc", b"/%76nc", b"/./vnc/")]
    assert all(isinstance(r, Route) and r.target == "tcp:host=10.0.0.1:port=5900" for r in routes)


@settings(max_examples=500)
@given(st.binary(max_size=60).map(lambda b: b"/host/" + b), st.binary(max_size=60).map(lambda b: b"/any/" + b))
def test_captured_values_cannot_reach_an_unconfigured_target(host_path: bytes, any_path: bytes) -> None:
    """Whatever the path, a substituted target only varies inside the configured shape: never an open proxy."""
    for raw in (host_path, any_path):
        route = choose_route(_RULES, raw)
        if isinstance(route, Reject):
            assert route.status in (400, 404)
            continue
        host = re.fullmatch(r"tcp:host=(.*)\.desktops\.internal:port=(\d+)", route.target)
        sock = re.fullmatch(r"unix:path=/run/desktops/(.*)\.sock", route.target)
        assert host or sock, route.target
        for value in (host.groups() if host else sock.groups()):  # type: ignore[union-attr]
            assert _SAFE.fullmatch(value) and value not in (".", "..")
        if host:  # a name template: the capture stays one label inside the operator's zone
            assert "." not in host.group(1)


def test_endpoint_syntax_in_captures_is_refused() -> None:
    """Captures holding ':', '=', '\\\\', '/' or '..' are refused with 400 (or 404 for encoded '/')."""
    for raw in (b"/host/evil:port=22/1", b"/host/a=b/1", b"/any/..", b"/any/a%2fb", b"/any/x:path=/etc",
                b"/host/10.0.0.1%3a22/1", b"/any/a%5cb"):
        route = choose_route(_RULES, raw)
        assert isinstance(route, Reject) and route.status in (400, 404), (raw, route)


def test_unrouted_paths_are_404() -> None:
    """A path no rule matches is 404, never a guess."""
    for raw in (b"/", b"/vncx", b"/host/x", b"/etc/passwd", b"/%2e%2e/etc/passwd"):
        route = choose_route(_RULES, raw)
        assert isinstance(route, Reject) and route.status in (400, 404)


_ADDRESS_RULES = RuleSet(parse_config("""Listen tcp:0
ProxyPassMatch ^/vm/([^/]+)$ ws://10.0.0.$1:5700/
ProxyPassMatch ^/tcp/([^/]+)$ tcp:10.1.0.$1:5900
ProxyPassMatch ^/ip/([^/]+)$ tcp:host=$1:port=5900
ProxyPassMatch ^/v6/([^/]+)$ wss://[fd00::$1]:5700/
"""))


def test_capture_in_an_address_cannot_become_a_dns_name() -> None:
    """``/vm/5.attacker.example`` would reach ``10.0.0.5.attacker.example`` (the attacker's DNS): 404."""
    assert choose_route(_ADDRESS_RULES, b"/vm/5").target == "ws://10.0.0.5:5700/"  # type: ignore[union-attr]
    assert choose_route(_ADDRESS_RULES, b"/tcp/7").target == "tcp:10.1.0.7:5900"  # type: ignore[union-attr]
    assert choose_route(_ADDRESS_RULES, b"/ip/192.0.2.5").target == "tcp:host=192.0.2.5:port=5900"  # type: ignore[union-attr]
    assert choose_route(_ADDRESS_RULES, b"/v6/1a").target == "wss://[fd00::1a]:5700/"  # type: ignore[union-attr]
    for raw in (b"/vm/5.attacker.example", b"/vm/0.5", b"/vm/999", b"/vm/x", b"/tcp/5.evil.example",
                b"/ip/attacker.example", b"/ip/localhost", b"/v6/zz", b"/vm/5%2eattacker.example"):
        route = choose_route(_ADDRESS_RULES, raw)
        assert isinstance(route, Reject) and route.status == 404, (raw, route)


@settings(max_examples=300)
@given(st.text(alphabet="0123456789abcdefxyz.-", min_size=1, max_size=24))
def test_address_templates_yield_only_ip_literals(value: str) -> None:
    """For any captured value, an address-shaped target is routed only to an IP literal."""
    import ipaddress

    for prefix in (b"/vm/", b"/ip/", b"/tcp/"):
        route = choose_route(_ADDRESS_RULES, prefix + value.encode())
        if isinstance(route, Route):
            host = re.split(r"[:/]+", route.target.replace("host=", ""))[1]
            ipaddress.ip_address(host)


@pytest.mark.parametrize("target", ["tcp:host=10.0.$1.$2.5:port=5900", "ws://10.$1:5700/", "tcp:host=300.0.0.$1:port=1"])
def test_host_templates_that_can_never_be_valid_are_named_at_their_line(target: str) -> None:
    """Where the config shows it (an address with the wrong number of parts), the mistake is a FILE:LINE error."""
    from tunnelgw.core.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config(f"Listen tcp:port=1\nProxyPassMatch ^/vm/(\\d+)/(\\d+)$ {target}\n", "gw.conf")
    assert str(caught.value).startswith("gw.conf:2: the host ")
