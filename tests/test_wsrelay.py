"""
The policy of WebSocket-to-WebSocket sessions (pure): backend addresses,
forwarded headers, refusals, closes and relayed frame headers.
"""

from __future__ import annotations

from typing import Generator

from hypothesis import given, settings, strategies as st
from websockets.frames import Frame, Opcode

from tunnelgw.core.config import DEFAULT_FORWARD, parse_config
from tunnelgw.core.routing import Reject, RuleSet, choose_route
from tunnelgw.core.frames import frame_header
from tunnelgw.core.wsrelay import backend_target, forwarded_headers, handshake_refusal, lost_close


def _parse(data: bytes, mask: bool) -> Frame:
    """Parse one frame with the websockets library's own parser (an independent implementation)."""
    def read_exact(n: int) -> Generator[None, None, bytes]:
        nonlocal data
        chunk, data = data[:n], data[n:]
        assert len(chunk) == n
        return chunk
        yield

    parser = Frame.parse(read_exact, mask=mask)
    try:
        while True:
            next(parser)
    except StopIteration as done:
        assert not data
        return done.value  # type: ignore[no-any-return]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([0, 1, 2]), st.booleans(), st.binary(max_size=70000), st.booleans())
def test_frame_header_parses_back(opcode: int, fin: bool, payload: bytes, masked: bool) -> None:
    """A header plus its (masked) payload is read by websockets as the same frame."""
    mask = b"\x01\x02\x03\x04" if masked else b""
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if masked else payload
    frame = _parse(frame_header(opcode, fin, len(payload), mask) + body, masked)
    assert (frame.opcode, frame.fin, frame.data) == (Opcode(opcode), fin, payload)


def test_frame_header_lengths() -> None:
    """The 7-bit, 16-bit and 64-bit length forms are chosen at 125 and 65535."""
    assert len(frame_header(2, True, 125)) == 2
    assert len(frame_header(2, True, 126)) == 4
    assert len(frame_header(2, True, 65536)) == 10
    assert len(frame_header(2, True, 65536, b"abcd")) == 14


def test_forwarded_headers_all() -> None:
    """By default the client address is appended to earlier proxies' and Origin and Cookie are copied."""
    incoming = {"x-forwarded-for": "10.0.0.1", "forwarded": "for=10.0.0.1", "origin": "https://a.example",
                "cookie": "s=1; t=2"}
    headers = forwarded_headers(DEFAULT_FORWARD, "2001:db8::7", True, "gw.example", incoming)
    assert headers == {
        "X-Forwarded-For": "10.0.0.1, 2001:db8::7",
        "X-Forwarded-Proto": "https",
        "Forwarded": 'for=10.0.0.1, for="[2001:db8::7]";proto=https;host="gw.example"',
        "Origin": "https://a.example",
        "Cookie": "s=1; t=2",
    }


def test_forwarded_headers_chosen() -> None:
    """Only the chosen headers are sent, and values with line breaks are never copied."""
    incoming = {"origin": "https://a.example\r\nX-Evil: 1", "cookie": "s=1"}
    assert forwarded_headers(frozenset({"origin", "proto"}), "127.0.0.1", False, None, incoming) == {
        "X-Forwarded-Proto": "http"}
    assert forwarded_headers(frozenset(), "127.0.0.1", False, None, incoming) == {}


def test_refusals_and_closes() -> None:
    """Backend refusals are 502 naming the answer; lost sides give sendable codes 1001 and 1011."""
    assert handshake_refusal(403, "Forbidden") == Reject(502, "backend refused the WebSocket handshake: 403 Forbidden")
    assert handshake_refusal(None, "bad accept").status == 502
    assert lost_close(True, "").code == 1001
    assert lost_close(False, "").code == 1011
    assert len(lost_close(False, "x" * 300).reason.encode()) <= 123


def test_backend_target_substitution() -> None:
    """$N values go into the URL; a value that leaves no valid URL is the request's fault (400)."""
    rules = RuleSet(parse_config("Listen tcp:port=1\nProxyPassMatch ^/vm/(\\w*)-(\\d+)$ ws://$1.vms.example:$2/\n"))
    route = choose_route(rules, b"/vm/desk7-5901")
    assert not isinstance(route, Reject)
    target = backend_target(route, b"a=1")
    assert not isinstance(target, Reject) and target.url == "ws://desk7.vms.example:5901/?a=1"
    route = choose_route(rules, b"/vm/-5901")
    assert not isinstance(route, Reject)
    refused = backend_target(route, b"")
    assert isinstance(refused, Reject) and refused.status == 400
