"""The directive table, typed targets and the one key=value reader (tunnelgw.core.config, targets, options)."""

from __future__ import annotations

import pytest

from tunnelgw.core.config import DIRECTIVES, ConfigError, parse_config
from tunnelgw.core.routing import Reject, RuleSet, choose_route
from tunnelgw.core.targets import EndpointTarget, PoolTarget, WebSocketURL
from tunnelgw.metrics import route_label


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.conf")
    return str(caught.value).splitlines()


def test_targets_are_typed_when_the_file_is_read() -> None:
    """Each rule's backend is typed once: endpoint string, WebSocket URL (checked), pool."""
    config = parse_config(
        "Listen tcp:port=1\n"
        "ProxyPass /tcp tcp:host=127.0.0.1:port=5900\n"
        "ProxyPass /ws WS://Desk.Example:8080/websockify?x=1\n"
        "<Proxy balancer://pool>\nBalancerMember tcp:host=127.0.0.2:port=5900\n</Proxy>\n"
        "ProxyPass /pool balancer://pool\n"
        "ProxyPassMatch ^/vm/(\\d+)$ ws://10.0.0.$1:5700/\n", "gw.conf")
    backends = {rule.target: rule.backend for rule in config.rules}
    assert backends["tcp:host=127.0.0.1:port=5900"] == EndpointTarget("tcp:host=127.0.0.1:port=5900")
    ws = backends["WS://Desk.Example:8080/websockify?x=1"]
    assert isinstance(ws, WebSocketURL) and ws.url is not None and not ws.secure
    assert ws.url.url == "ws://desk.example:8080/websockify?x=1"
    assert backends["balancer://pool"] == PoolTarget("pool")
    template = backends["ws://10.0.0.$1:5700/"]
    assert isinstance(template, WebSocketURL) and template.url is None  # checked with $1 standing for 1

    rules = RuleSet(config)
    routed = choose_route(rules, b"/vm/7")
    assert not isinstance(routed, Reject) and isinstance(routed.backend, WebSocketURL)
    assert routed.backend.url is not None and routed.backend.url.authority == "10.0.0.7:5700"
    assert routed.target == "ws://10.0.0.7:5700/"
    routed = choose_route(rules, b"/pool/x")
    assert not isinstance(routed, Reject) and routed.backend == PoolTarget("pool") and routed.remainder == "/x"


def test_name_option_labels_the_route() -> None:
    """name= is the route's label in metrics and logs; without it, the path or the expression."""
    config = parse_config(
        "Listen tcp:port=1\n"
        "ProxyPass /vnc tcp:host=127.0.0.1:port=5900 name=desktops\n"
        "ProxyPass /plain tcp:host=127.0.0.1:port=5901\n"
        "ProxyPassMatch ^/vm/(\\d+)$ tcp:host=127.0.0.1:port=59$1 name=vm\n"
        "ProxyPassMatch ^/raw/(\\d+)$ tcp:host=127.0.0.1:port=58$1\n")
    rules = RuleSet(config)
    labels = {}
    for path in (b"/vnc/a", b"/plain", b"/vm/01", b"/raw/02"):
        route = choose_route(rules, path)
        assert not isinstance(route, Reject)
        labels[path] = route_label(route)
    assert labels == {b"/vnc/a": "desktops", b"/plain": "/plain", b"/vm/01": "vm", b"/raw/02": "^/raw/(\\d+)$"}


@pytest.mark.parametrize("lines, message", [
    ("ProxyPass /a tcp:host=a:port=1 name=x\nProxyPass /b tcp:host=a:port=2 name=x",
     "gw.conf:3: duplicate route name 'x' (first at gw.conf:2)"),
    ("ProxyPass /a tcp:host=a:port=1 name=has space",
     "gw.conf:2: ProxyPass: expected key=value, got 'space'"),
    ('ProxyPass /a tcp:host=a:port=1 "name=a b"', "gw.conf:2: name must be 1 to 64 letters, digits or _.:/-, got 'a b'"),
    ("ProxyPass /a tcp:host=a:port=1 connecttimeout=1 connecttimeout=2", "gw.conf:2: ProxyPass: connecttimeout= given twice"),
    ("ProxyPass /a tcp:host=a:port=1 idletimeout=nan", "gw.conf:2: idletimeout must be from 0 to 604800, got 'nan'"),
    ("ProxyPass /a tcp:host=a:port=1 maxsessions=\u0663", "gw.conf:2: maxsessions must be a whole number, got '\u0663'"),
    ("ProxyPass /a balancer://b@d", "gw.conf:2: balancer://NAME takes a plain NAME"),
    ("ProxyPassMatch ^/(\\w+)$ balancer://$1", "gw.conf:2: balancer://NAME takes a plain NAME"),
    ("ProxyPass /a balancer://nowhere", "gw.conf:2: no <Proxy balancer://nowhere> block defines this balancer"),
    ("Limit rate=5/h", "gw.conf:2: rate must be a number, got '5/h'"),
    ("<Proxy balancer://p>\nBalancerMember tcp:host=a:port=1 status=drain status=active\n</Proxy>",
     "gw.conf:3: BalancerMember: status= given twice"),
])
def test_option_mistakes_are_named(lines: str, message: str) -> None:
    """The one key=value reader words every mistake the same way, at its line."""
    found = problems(f"Listen tcp:port=1\n{lines}\n")
    assert any(line.startswith(message) for line in found), found


def test_table_is_the_parser() -> None:
    """Every directive in the table is read (any letter case); the unknown-directive message lists the table."""
    assert len({d.name.lower() for d in DIRECTIVES}) == len(DIRECTIVES)
    assert all(d.syntax is not None and d.help for d in DIRECTIVES)
    [unknown] = problems("Listen tcp:port=1\nFrobnicate\n")
    assert unknown == "gw.conf:2: unknown directive 'Frobnicate' (known: " + ", ".join(d.name for d in DIRECTIVES) + ")"
    config = parse_config("LISTEN tcp:port=1\nproxypass /a tcp:host=a:port=1\nlimit SESSIONS=3\n")
    assert config.listeners[0].endpoint == "tcp:port=1" and config.limits.sessions == 3
    assert [r.path for r in config.prefix_rules] == ["/a"]
    # Pool-only directives are only read inside a <Proxy> block, and the others never there.
    assert {d.name for d in DIRECTIVES if d.in_pool} == {"BalancerMember", "ProxySet", "</Proxy>"}
    [outside] = problems("Listen tcp:port=1\nProxySet lbmethod=bysource\n")
    assert outside == "gw.conf:2: ProxySet belongs inside <Proxy balancer://NAME> ... </Proxy>"
