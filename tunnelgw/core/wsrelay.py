"""
Policy of WebSocket-to-WebSocket sessions, free of I/O: the backend address
of a request, the headers forwarded to the backend, the answer to a backend
that refuses, the close passed on when one side ends, and the header of each
relayed frame.

The Twisted/Autobahn glue in :mod:`tunnelgw.backends.websocket` feeds facts in and
carries the answers out.
"""

from __future__ import annotations

from typing import Mapping, Optional

from tunnelgw.core.relay import CLOSE_BACKEND_FAILED, CLOSE_GOING_AWAY, Close, close_reason
from tunnelgw.core.routing import Reject, Route
from tunnelgw.core.targets import WebSocketURL
from tunnelgw.core.tlsconfig import TLS_CLIENT_HEADER
from tunnelgw.core.wsurl import WebSocketTarget

__all__ = [
    "backend_target",
    "forwarded_headers",
    "handshake_refusal",
    "lost_close",
]


def backend_target(route: Route, raw_query: bytes) -> WebSocketTarget:
    """
    The backend address of a request on a WebSocket route: the route's URL
    (checked, ``$N`` substituted by routing) with the path remainder and the
    query appended.
    """
    backend = route.backend
    if not isinstance(backend, WebSocketURL) or backend.url is None:
        raise TypeError(f"not a routed WebSocket backend: {backend!r}")
    return backend.url.joined(route.remainder, raw_query.decode("latin-1"))


def _clean(value: str) -> bool:
    """A header value we may copy: no control characters that could split headers."""
    return value.isprintable() and "\r" not in value and "\n" not in value


def _forwarded_node(host: str) -> str:
    """A ``for=`` node of RFC 7239: IPv6 in quotes and brackets, else as is if it is a token."""
    if ":" in host:
        return f'"[{host}]"'
    return host if host and all(c.isalnum() or c in ".-_" for c in host) else f'"{host}"'


def forwarded_headers(forward: frozenset[str], client_host: str, secure: bool, host: Optional[str],
                      incoming: Mapping[str, str], tls_client: str = "") -> dict[str, str]:
    """
    The headers a backend is sent on behalf of a client.

    :param forward: which to send: ``xff`` (X-Forwarded-For), ``proto``
        (X-Forwarded-Proto), ``forwarded`` (RFC 7239), ``origin``, ``cookie``.
    :param client_host: the client's IP address (or a UNIX socket path).
    :param secure: whether the client reached the gateway over TLS.
    :param host: the Host the client asked for, if any.
    :param incoming: the client's request headers, names in lower case.
        X-Forwarded-For and Forwarded from earlier proxies are extended,
        never trusted or dropped: the backend decides whom it trusts.
    :param tls_client: the verified client certificate's identity ('' for
        none), sent as :data:`~tunnelgw.core.tlsconfig.TLS_CLIENT_HEADER`
        (``tlsclient``); a client's own header of that name is never copied.
    """
    out: dict[str, str] = {}
    proto = "https" if secure else "http"
    if "xff" in forward:
        earlier = incoming.get("x-forwarded-for", "")
        out["X-Forwarded-For"] = f"{earlier}, {client_host}" if earlier and _clean(earlier) else client_host
    if "proto" in forward:
        out["X-Forwarded-Proto"] = proto
    if "forwarded" in forward:
        element = f"for={_forwarded_node(client_host)};proto={proto}"
        if host and _clean(host) and '"' not in host and "\\" not in host:
            element += f';host="{host}"'
        earlier = incoming.get("forwarded", "")
        out["Forwarded"] = f"{earlier}, {element}" if earlier and _clean(earlier) else element
    for key, name in (("origin", "Origin"), ("cookie", "Cookie")):
        value = incoming.get(name.lower())
        if key in forward and value and _clean(value):
            out[name] = value
    if "tlsclient" in forward and tls_client and _clean(tls_client):
        out[TLS_CLIENT_HEADER] = tls_client
    return out


def handshake_refusal(status: Optional[int], detail: str) -> Reject:
    """
    The client's answer when the backend's WebSocket handshake failed: 502,
    with the backend's HTTP status and reason when it sent one.
    """
    if status is not None:
        return Reject(502, f"backend refused the WebSocket handshake: {status} {detail}".rstrip())
    return Reject(502, f"backend WebSocket handshake failed: {detail}")


def lost_close(from_client: bool, detail: str) -> Close:
    """
    The close sent to one side when the other's connection ended without a
    close frame: 1001 to the backend when the client went away, 1011 to the
    client when the backend did (codes 1005/1006 may not be sent).
    """
    if from_client:
        return Close(CLOSE_GOING_AWAY, close_reason(f"client connection lost: {detail}" if detail else "client connection lost"))
    return Close(CLOSE_BACKEND_FAILED, close_reason(f"backend connection lost: {detail}" if detail else "backend connection lost"))
