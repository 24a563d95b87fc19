"""Header policy of the HTTP reverse proxy (:mod:`tunnelgw.core.proxyheaders`), pure: plain asserts and hypothesis."""

from __future__ import annotations

from hypothesis import given, strategies as st

from tunnelgw.core.proxyheaders import (
    HOP_BY_HOP,
    backend_request_headers,
    client_response_headers,
    end_to_end,
    head_connection_names,
)

_names = st.sampled_from([b"Set-Cookie", b"X-A", b"x-b", b"Connection", b"Keep-Alive", b"Proxy-Authorization",
                          b"TE", b"Trailer", b"Transfer-Encoding", b"Upgrade", b"Content-Type"])
_values = st.lists(st.sampled_from([b"1", b"x-a", b"X-B, close", b"a=1; Path=/"]), min_size=1, max_size=3)


def test_repeated_values_kept_in_order() -> None:
    """Every value of a repeated header is kept, in order, under a lower-case name."""
    headers = [(b"Set-Cookie", [b"a=1"]), (b"X-Kept", [b"y"]), (b"set-cookie", [b"b=2", b"c=3"])]
    assert end_to_end(headers) == [(b"set-cookie", [b"a=1", b"b=2", b"c=3"]), (b"x-kept", [b"y"])]


def test_hop_by_hop_and_connection_named_dropped() -> None:
    """Hop-by-hop headers, Proxy-* and the headers named in Connection are dropped."""
    headers = [(b"Connection", [b"X-Secret, close"]), (b"X-Secret", [b"s"]), (b"Keep-Alive", [b"5"]),
               (b"Proxy-Authorization", [b"Basic x"]), (b"TE", [b"trailers"]), (b"Trailer", [b"X"]),
               (b"Transfer-Encoding", [b"chunked"]), (b"Upgrade", [b"h2c"]), (b"Accept", [b"*/*"])]
    assert end_to_end(headers) == [(b"accept", [b"*/*"])]


def test_backend_request_headers_set_host_and_forwarded() -> None:
    """The backend gets its own authority as Host and the route's forwarded headers, not the client's."""
    headers = [(b"Host", [b"gw.example"]), (b"Content-Length", [b"3"]), (b"Cookie", [b"s=1"]),
               (b"X-Forwarded-For", [b"10.0.0.1"]), (b"Accept", [b"a", b"b"])]
    out = backend_request_headers(headers, "127.0.0.1:8085", [("X-Forwarded-For", "10.0.0.1, 127.0.0.1")])
    assert out == [(b"accept", [b"a", b"b"]), (b"host", [b"127.0.0.1:8085"]),
                   (b"x-forwarded-for", [b"10.0.0.1, 127.0.0.1"])]


def test_backend_never_gets_a_clients_path_override_or_hop() -> None:
    """A client's X-Original-URL / X-Original-URI / X-Rewrite-URL (a path a backend framework would route by instead of the one the gateway routed) and X-Tunnelgw-Hop never reach a backend."""
    headers = [(b"X-Original-URL", [b"/admin"]), (b"x-original-uri", [b"/admin"]), (b"X-Rewrite-URL", [b"/admin"]),
               (b"X-Tunnelgw-Hop", [b"forged"]), (b"Accept", [b"*/*"])]
    assert backend_request_headers(headers, "b:1", []) == [(b"accept", [b"*/*"]), (b"host", [b"b:1"])]


def test_forwarded_host_and_real_ip_only_from_a_trusted_proxy() -> None:
    """X-Forwarded-Host/-Port/-Server/-Prefix and X-Real-IP reach a backend from a TrustedProxy peer only; a client's own are dropped."""
    headers = [(b"X-Forwarded-Host", [b"evil.example"]), (b"X-Forwarded-Port", [b"1"]), (b"X-Forwarded-Server", [b"x"]),
               (b"X-Forwarded-Prefix", [b"/admin"]), (b"X-Real-IP", [b"10.9.9.1"]), (b"Accept", [b"*/*"])]
    assert backend_request_headers(headers, "b:1", []) == [(b"accept", [b"*/*"]), (b"host", [b"b:1"])]
    passed = dict(backend_request_headers(headers, "b:1", [], from_proxy=True))
    assert passed[b"x-forwarded-host"] == [b"evil.example"] and passed[b"x-real-ip"] == [b"10.9.9.1"]


def test_head_connection_names() -> None:
    """The Connection tokens of a raw response head are found, in any case, over several lines."""
    head = b"HTTP/1.1 200 OK\r\nConnection: X-One, close\r\nX-One: 1\r\nconnection: x-two\r\n"
    assert head_connection_names(head) == {b"x-one", b"close", b"x-two"}
    assert head_connection_names(b"HTTP/1.1 200 OK\nX-Connection: x\n") == frozenset()
    out = client_response_headers([(b"X-One", [b"1"]), (b"X-Two", [b"2"]), (b"X-Three", [b"3"])],
                                  head_connection_names(head))
    assert out == [(b"x-three", [b"3"])]


@given(st.lists(st.tuples(_names, _values), max_size=8))
def test_end_to_end_never_keeps_hop_by_hop(headers: list[tuple[bytes, list[bytes]]]) -> None:
    """Whatever the headers, no hop-by-hop or Connection-named header survives, and other values are all kept."""
    out = dict(end_to_end(headers))
    named = {t.strip().lower() for n, vs in headers if n.lower() == b"connection" for v in vs for t in v.split(b",")}
    assert not set(out) & (HOP_BY_HOP | named)
    assert not any(name.startswith(b"proxy-") for name in out)
    for name, values in out.items():
        assert values == [v for n, vs in headers if n.lower() == name for v in vs]
