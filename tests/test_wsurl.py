"""
Checks of WebSocket backend URLs and of how a request's path and query are
appended to them (pure; plain asserts and hypothesis).
"""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given, strategies as st

from tunnelgw.core.wsurl import WebSocketTarget, is_websocket_target, parse_websocket_url


@pytest.mark.parametrize("text, expected", [
    ("ws://127.0.0.1:8085/socket", WebSocketTarget(False, "127.0.0.1", 8085, "/socket")),
    ("wss://desk.example/ws", WebSocketTarget(True, "desk.example", 443, "/ws")),
    ("WS://Desk.Example.", WebSocketTarget(False, "desk.example", 80, "/")),
    ("ws://[::1]:9/a?b=1", WebSocketTarget(False, "::1", 9, "/a", "b=1")),
    ("ws://h?x=%41", WebSocketTarget(False, "h", 80, "/", "x=%41")),
])
def test_accepted(text: str, expected: WebSocketTarget) -> None:
    """Scheme, host, port, path and query are split out; defaults filled in."""
    assert parse_websocket_url(text) == expected

@pytest.mark.parametrize("text, words", [
    ("http://h/", "scheme"),
    ("ws://", "no host"),
    ("ws://h:0/", "port"),
    ("ws://h:65536/", "port"),
    ("ws://h:x/", "port"),
    ("ws://user:pw@h/", "user information"),
    ("ws://h/a#b", "fragment"),
    ("ws://h/a b", "spaces"),
    ("ws://h/\u00e9", "non-ASCII"),
    ("ws://h/../etc", "'..'"),
    ("ws://h/%zz", "bad % escape"),
    ("ws://h_/", "bad host name"),
    ("ws://[::1/", "IPv6"),
    ("ws://[fe80::zz]/", "IPv6"),
    ("ws://h/a?b=<", "query"),
])
def test_refused(text: str, words: str) -> None:
    """Each mistake is refused with a reason that names it."""
    with pytest.raises(ValueError) as info:
        parse_websocket_url(text)
    assert words in str(info.value)

def test_is_websocket_target() -> None:
    """ws:// and wss:// in any case are WebSocket targets; endpoint strings are not."""
    assert is_websocket_target("ws://h") and is_websocket_target("WSS://h")
    assert not is_websocket_target("tcp:host=h:port=1") and not is_websocket_target("wsx://h")


def test_apache_semantics() -> None:
    """The remainder follows the URL's path (no doubled slash); queries are joined with &."""
    base = parse_websocket_url("ws://127.0.0.1:8085/socket?k=v")
    assert base.joined("", "").resource == "/socket?k=v"
    assert base.joined("/x", "a=1").resource == "/socket/x?k=v&a=1"
    assert parse_websocket_url("ws://h").joined("/socket", "").resource == "/socket"
    assert parse_websocket_url("ws://h/a/").joined("/b/", "").resource == "/a/b/"

def test_escaping() -> None:
    """Decoded characters are escaped again; a query with unsafe characters is escaped."""
    target = parse_websocket_url("ws://h/").joined("/a b/%/\u00e9", "q=<x>")
    assert target.path == "/a%20b/%25/%C3%A9"
    assert target.query == "q=%3Cx%3E"

_SEGMENT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/"),
                   min_size=1, max_size=8).filter(lambda t: t not in (".", ".."))


@given(st.lists(_SEGMENT, max_size=5), st.text(max_size=40))
def test_never_leaves_the_backend(segments: list[str], query: str) -> None:
    """Whatever a (normalised) request path and query hold, the URL keeps its host, port and base path."""
    remainder = "".join("/" + s for s in segments)
    joined = parse_websocket_url("wss://desk.example:8443/base").joined(remainder, query)
    again = parse_websocket_url(joined.url)
    assert (again.host, again.port, again.secure) == ("desk.example", 8443, True)
    assert unquote(again.path) == "/base" + remainder
