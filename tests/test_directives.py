"""The directive table, typed targets and the one key=value reader (tunnelgw.core.config, targets, options)."""

from __future__ import annotations

import re

import pytest

from tunnelgw.core.config import DIRECTIVES, ConfigError, Directive, directive_reference, parse_config
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


#: A line of each directive that takes options, with an unknown option ``zzz=1`` the parser must refuse.
OPTION_PROBES = {
    "Listen": "Listen ssl:port=1:privateKey=/k.pem:certKey=/c.pem zzz=1",
    "ProxyPass": "ProxyPass /a tcp:host=a:port=1 zzz=1",
    "ProxyPassMatch": "ProxyPassMatch ^/a$ tcp:host=a:port=1 zzz=1",
    "Timeout": "Timeout zzz=1", "KeepAlive": "KeepAlive zzz=1", "Limit": "Limit zzz=1",
    "AccessLog": "AccessLog - zzz=1",
    "AuthPortal": "AuthPortal p http://127.0.0.1:1/auth zzz=1",
    "Recording": "Recording /tmp zzz=1",
    "Pool": "Pool redis://127.0.0.1:6379/0 name=g zzz=1",
    "AuditLog": "AuditLog syslog udp://127.0.0.1:514 zzz=1",
    "TokenSource": "TokenSource t file /x allow=127.0.0.1:1 zzz=1",
    "TokenRoute": "TokenRoute /t t zzz=1",
    "BalancerMember": "<Proxy balancer://b>\nBalancerMember tcp:host=a:port=1 zzz=1\n</Proxy>",
    "ProxySet": "<Proxy balancer://b>\nBalancerMember tcp:host=a:port=1\nProxySet zzz=1\n</Proxy>",
    "OwnerSource": "OwnerSource redis://127.0.0.1:6379/0 zzz=1",
    "TrustedProxy": "TrustedProxy 127.0.0.1 zzz=1",
}


def known_options(directive: str) -> set[str]:
    """The keys the parser itself lists when refusing an unknown option of directive."""
    for line in problems(f"Listen tcp:port=1\n{OPTION_PROBES[directive]}\n"):
        found = re.search(rf"{re.escape(directive)}: unknown option 'zzz' \(known: (.*)\)$", line)
        if found:
            return {k.rstrip("=") for k in found.group(1).split(", ")}
    raise AssertionError(f"{directive} did not refuse zzz=1")


def reference_sections() -> dict[str, str]:
    """The reference text of each directive, by name."""
    sections: dict[str, str] = {}
    name = ""
    for line in directive_reference().splitlines():
        if not line.startswith("   "):
            name = line.split()[0]
        sections[name] = sections.get(name, "") + line + "\n"
    return sections


@pytest.mark.parametrize("directive", [d for d in DIRECTIVES if d.options or d.name in OPTION_PROBES],
                         ids=lambda d: d.name)
def test_reference_lists_every_option_the_parser_reads(directive: Directive) -> None:
    """Each key the parser reads for a directive is in its reference section, with a line saying its default."""
    keys = known_options(directive.name)
    assert keys == set(directive.options), keys ^ set(directive.options)
    assert set(directive.option_help) == keys, set(directive.option_help) ^ keys
    section = reference_sections()[directive.name]
    for key in keys:
        assert re.search(rf"^      {key}=", section, re.M), (key, section)
        assert "default" in directive.option_help[key] or "required" in directive.option_help[key], key


def test_every_directive_with_options_is_probed() -> None:
    """A directive whose parser takes key=value options must be listed above, so the test covers it."""
    for d in DIRECTIVES:
        if d.name in OPTION_PROBES:
            continue
        extra = "\nBalancerMember tcp:host=a:port=1\n</Proxy>" if d.name == "<Proxy" else ""
        line = {"<Proxy": "<Proxy balancer://b> zzz=1", "</Proxy>": "</Proxy> zzz=1"}.get(d.name, f"{d.name} zzz=1")
        try:
            parse_config(f"Listen tcp:port=1\n{line}{extra}\n", "gw.conf")
            found: list[str] = []
        except ConfigError as e:
            found = str(e).splitlines()
        assert not any("unknown option 'zzz'" in f for f in found), (d.name, found)
        assert not d.options


def test_reference_fits_a_terminal_and_names_what_the_issue_missed() -> None:
    """Lines are at most 79 columns; jwks, redis, once=, alg=, maxperuser=, passwordfile= and the page at / are there."""
    text = directive_reference()
    assert max(len(line) for line in text.splitlines()) <= 79
    sections = reference_sections()
    assert "jwks" in sections["TokenSource"] and "redis" in sections["TokenSource"]
    for key in ("once=", "alg=", "aud=", "iss=", "leeway="):
        assert key in sections["TokenSource"], key
    assert "maxperdesktop=" in sections["TokenRoute"] and "maxperuser=" in sections["TokenRoute"]
    assert "passwordfile=" in sections["Pool"]
    assert "operator's page at /" in sections["AdminListen"]


def test_docs_page_is_the_generated_reference() -> None:
    """docs/directives.rst holds exactly the reference --directives prints."""
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs/directives.rst").read_text()
    block = page.split("::\n\n", 1)[1]
    assert [l[2:] if l else "" for l in block.rstrip("\n").splitlines()] == directive_reference().splitlines()
