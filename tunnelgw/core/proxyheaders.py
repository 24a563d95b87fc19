"""
Headers of reverse-proxied HTTP requests, free of I/O: which of a client's
request headers go to the backend, and which of the backend's response
headers go back to the client.

Hop-by-hop headers (RFC 9110 section 7.6.1: ``Connection`` and the headers it
names, ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``,
``Transfer-Encoding``, ``Upgrade``) never cross the gateway.  Every value of
a repeated header (``Set-Cookie``) is kept, in order.  Headers are lists of
``(name, values)`` pairs of bytes, as :class:`twisted.web.http_headers.Headers`
gives them; names come out in lower case.
"""

from __future__ import annotations

from typing import Iterable, Sequence

__all__ = ["HOP_BY_HOP", "backend_request_headers", "client_response_headers", "end_to_end", "head_connection_names"]

#: Headers that concern one connection only (RFC 9110 section 7.6.1).
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})

#: Request headers the gateway sets itself: the backend authority as Host, the
#: body framing of the backend request, and the forwarded headers that follow
#: the route's ``forward=`` option; and those no client may send a backend.
_SET_BY_GATEWAY = frozenset({
    b"host", b"content-length", b"expect",
    b"origin", b"cookie", b"x-forwarded-for", b"x-forwarded-proto", b"forwarded",
    b"x-forwarded-tls-client",  # tunnelgw.core.tlsconfig.TLS_CLIENT_HEADER: only the gateway says who a client is
    # A path a backend framework would route by instead of the request's (Symfony, IIS): it
    # could leave the backend prefix the gateway routed to; and the pool's own hop header.
    b"x-original-url", b"x-original-uri", b"x-rewrite-url", b"x-tunnelgw-hop",
})

#: Headers a front proxy writes about the client's request: believed from a
#: ``TrustedProxy`` peer only, dropped from anyone else (the gateway does not write
#: them, so a backend that trusts its proxy would take a client's own as the truth).
_FROM_PROXIES_ONLY = frozenset({
    b"x-forwarded-host", b"x-forwarded-port", b"x-forwarded-server", b"x-forwarded-prefix", b"x-real-ip",
})

RawHeaders = Sequence[tuple[bytes, Sequence[bytes]]]


def _connection_names(headers: RawHeaders) -> frozenset[bytes]:
    """The header names listed in the Connection header(s)."""
    return frozenset(
        token.strip().lower()
        for name, values in headers if name.lower() == b"connection"
        for value in values for token in value.split(b",") if token.strip()
    )


def head_connection_names(head: bytes) -> frozenset[bytes]:
    """
    The header names listed in the Connection header(s) of a raw HTTP/1.x
    message head (start line and header lines, CRLF or LF line ends).
    """
    lines = head.split(b"\n")[1:]
    pairs = [line.partition(b":") for line in lines]
    return _connection_names([(name.strip(), [value.strip()]) for name, colon, value in pairs if colon])


def end_to_end(headers: RawHeaders, named: frozenset[bytes] = frozenset()) -> list[tuple[bytes, list[bytes]]]:
    """
    The headers without the hop-by-hop ones, names in lower case, all values kept.

    :param named: more names to drop: those of a Connection header seen
        elsewhere (Twisted's HTTP client keeps Connection to itself).
    """
    named = named | _connection_names(headers)
    out: dict[bytes, list[bytes]] = {}
    for name, values in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower.startswith(b"proxy-"):
            continue
        out.setdefault(lower, []).extend(values)
    return list(out.items())


def backend_request_headers(headers: RawHeaders, authority: str, forwarded: Iterable[tuple[str, str]],
                            from_proxy: bool = False) -> list[tuple[bytes, list[bytes]]]:
    """
    What a backend is sent for a client's request headers: the end-to-end
    ones, minus those the gateway sets itself, plus ``Host`` (the backend's
    authority) and the forwarded headers chosen by the route
    (:func:`tunnelgw.core.wsrelay.forwarded_headers`).

    :param from_proxy: the request came from a ``TrustedProxy`` peer, whose
        ``X-Forwarded-Host``, ``X-Real-IP`` and the like are passed on.
    """
    dropped = _SET_BY_GATEWAY if from_proxy else _SET_BY_GATEWAY | _FROM_PROXIES_ONLY
    out = [(name, values) for name, values in end_to_end(headers) if name not in dropped]
    out.append((b"host", [authority.encode("ascii")]))
    out.extend((name.lower().encode("latin-1"), [value.encode("latin-1")]) for name, value in forwarded)
    return out


def client_response_headers(headers: RawHeaders,
                            named: frozenset[bytes] = frozenset()) -> list[tuple[bytes, list[bytes]]]:
    """
    What a client is sent for a backend's response headers: the end-to-end
    ones, without those named (the backend's Connection header tokens).
    """
    return end_to_end(headers, named)
