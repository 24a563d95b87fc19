"""
Configuration of ws:// and wss:// routes: URL checks and per-route options,
each mistake reported as FILE:LINE (pure parser, plus the trust-root check
of :func:`tunnelgw.service.check_config`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from support import make_pki
from tunnelgw.core.config import DEFAULT_FORWARD, ConfigError, RouteOptions, parse_config
from tunnelgw.service import check_config

LISTEN = "Listen tcp:port=8080:interface=127.0.0.1\n"


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(LISTEN + text, "gw.conf")
    return [str(p) for p in info.value.problems]


def test_websocket_routes_and_options() -> None:
    """ws:// and wss:// targets parse, with forward=, cafile=, verify= and sessionreuse= read into RouteOptions."""
    config = parse_config(LISTEN + (
        "ProxyPass /broadway ws://127.0.0.1:8085/socket\n"
        "ProxyPass /secure wss://desk.example/ws cafile=/etc/ca.pem forward=xff,proto\n"
        "ProxyPass /lab wss://lab.example/ verify=off forward=none connecttimeout=3\n"
        "ProxyPass /old wss://old.example/ sessionreuse=off\n"
        "ProxyPassMatch ^/vm/(\\d+)$ ws://10.0.0.$1:5700/websockify\n"), "gw.conf")
    options = {rule.target: rule.options for rule in config.rules}
    assert options["ws://127.0.0.1:8085/socket"] == RouteOptions(forward=DEFAULT_FORWARD)
    assert options["wss://desk.example/ws"] == RouteOptions(forward=frozenset({"xff", "proto"}), cafile="/etc/ca.pem")
    assert options["wss://lab.example/"] == RouteOptions(connect_timeout=3.0, forward=frozenset(), verify=False)
    assert options["ws://10.0.0.$1:5700/websockify"].verify
    assert options["wss://old.example/"] == RouteOptions(session_reuse=False)
    assert options["wss://desk.example/ws"].session_reuse


@pytest.mark.parametrize("line, message", [
    ("ProxyPass /a ws://h:99999/", "gw.conf:2: bad WebSocket backend URL 'ws://h:99999/': port must be"),
    ("ProxyPass /a ws://u@h/", "gw.conf:2: bad WebSocket backend URL 'ws://u@h/': user information"),
    ("ProxyPass /a wss:///x", "gw.conf:2: bad WebSocket backend URL 'wss:///x': no host"),
    ("ProxyPass /a ws://h/a#b", "gw.conf:2: bad WebSocket backend URL 'ws://h/a#b': a backend URL may not have a #fragment"),
    ("ProxyPassMatch ^/(x)$ ws://h/$2", "gw.conf:2: target uses $2 but the expression has 1 group(s)"),
    ("ProxyPass /a ws://h/ forward=xff,bogus", "gw.conf:2: forward takes 'none' or a comma-separated list"),
    ("ProxyPass /a wss://h/ verify=maybe", "gw.conf:2: verify takes one of on, off, got 'maybe'"),
    ("ProxyPass /a wss://h/ cafile=", "gw.conf:2: cafile must name a PEM file"),
    ("ProxyPass /a ws://h/ cafile=/ca.pem", "gw.conf:2: cafile= applies to wss:// targets only"),
    ("ProxyPass /a ws://h/ verify=off", "gw.conf:2: verify= applies to wss:// targets only"),
    ("ProxyPass /a ws://h/ sessionreuse=off", "gw.conf:2: sessionreuse= applies to wss:// targets only"),
    ("ProxyPass /a wss://h/ sessionreuse=no", "gw.conf:2: sessionreuse takes one of on, off, got 'no'"),
    ("ProxyPass /a tcp:host=h:port=1 forward=xff", "gw.conf:2: forward= applies to ws:// and wss:// targets only"),
    ("ProxyPass /a wss://h/ cafile=/ca.pem verify=off", "gw.conf:2: cafile= and verify=off contradict"),
])
def test_mistakes_at_file_and_line(line: str, message: str) -> None:
    """Each mistake in a WebSocket route is reported at its file and line."""
    problems = _problems(line + "\n")
    assert any(p.startswith(message) for p in problems), problems


def test_cafile_is_loaded_by_check_config(tmp_path: Path) -> None:
    """A readable PEM cafile passes check_config; a missing or empty one is a FILE:LINE problem."""
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "empty.pem").write_text("nothing here\n")
    config = parse_config(LISTEN + (
        f"ProxyPass /good wss://h/ cafile={pki.ca_cert}\n"
        f"ProxyPass /missing wss://h/ cafile={tmp_path}/missing.pem\n"
        f"ProxyPass /empty wss://h/ cafile={tmp_path}/empty.pem\n"), "gw.conf")
    with pytest.raises(ConfigError) as info:
        check_config(config, MemoryReactorClock())
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 2
    assert problems[0].startswith("gw.conf:3: cannot read cafile")
    assert problems[1].startswith("gw.conf:4: cafile") and "holds no PEM certificate" in problems[1]
