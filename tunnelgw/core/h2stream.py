"""
One HTTP/2 stream's request seen as the HTTP/1.1 request head the rest of
the gateway decides on, and the gateway's HTTP/1.1 answer to an upgrade
seen as the stream's response headers.  Pure functions over values.

An extended CONNECT (RFC 8441, ``:protocol websocket``) becomes the
HTTP/1.1 upgrade request it stands for: ``GET``, the ``:path``, ``Host``
from ``:authority``, the client's own headers (``Origin``,
``Sec-WebSocket-Version``, ``Sec-WebSocket-Protocol``, cookies, tokens...)
and the three the upgrade needs (``Connection``, ``Upgrade`` and a fixed
``Sec-WebSocket-Key``: HTTP/2 has no key and no ``Sec-WebSocket-Accept``,
so the accept computed from it is dropped again by :func:`response_head`).
So the same view, the same handshake check and the same decision apply to
both kinds of WebSocket.

The request's header block is checked here (RFC 9113 section 8.2 and 8.3,
RFC 8441 section 4), not by the h2 library (whose check ends the whole
connection): a malformed request is a :class:`Malformed`, which the
connection answers with ``RST_STREAM`` (``PROTOCOL_ERROR``) on that stream
only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

from tunnelgw.core.http import RequestHead
from tunnelgw.core.routing import Reject

__all__ = ["Malformed", "StreamRequest", "WEBSOCKET_KEY", "response_head", "stream_request"]

#: The ``Sec-WebSocket-Key`` an extended CONNECT is given (RFC 6455's sample nonce): nothing checks the accept.
WEBSOCKET_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="

_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))
#: Connection-specific fields, malformed in HTTP/2 (RFC 9113 section 8.2.2).
_CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
#: Fields of the HTTP/1.1 answer that have no place in an HTTP/2 response.
_HOP_BY_HOP = _CONNECTION_SPECIFIC | {b"sec-websocket-accept"}


@dataclass(frozen=True)
class Malformed:
    """A request HTTP/2 calls malformed: the stream is reset with ``PROTOCOL_ERROR``; reason is for the log."""

    reason: str


@dataclass(frozen=True)
class StreamRequest:
    """
    A well-formed stream request.

    :ivar head: the HTTP/1.1 request head it stands for.
    :ivar websocket: an extended CONNECT for a WebSocket (``head`` is its upgrade request).
    :ivar refusal: a status to answer instead (e.g. a plain CONNECT), or None.
    """

    head: RequestHead
    websocket: bool = False
    refusal: Union[Reject, None] = None


def _bad_value(value: bytes) -> bool:
    return b"\x00" in value or b"\r" in value or b"\n" in value or value[:1] in (b" ", b"\t") \
        or value[-1:] in (b" ", b"\t")


def stream_request(headers: Sequence[tuple[bytes, bytes]], connect_protocol: bool,
                   max_size: int = 0) -> Union[StreamRequest, Malformed]:
    """
    Check a stream's request header block and give the request head it stands for.

    :param headers: the decoded header block, in order.
    :param connect_protocol: whether this server advertised
        ``SETTINGS_ENABLE_CONNECT_PROTOCOL``; without it ``:protocol`` is malformed.
    :param max_size: the largest header list (RFC 9113's size: names, values
        and 32 per field) answered; a larger one is refused with 431 (0: no limit).
    """
    if max_size and sum(len(name) + len(value) + 32 for name, value in headers) > max_size:
        return StreamRequest(RequestHead(b"GET", b"/", b"1.1", ()),
                             refusal=Reject(431, "request header fields too large"))
    pseudo: dict[bytes, bytes] = {}
    regular: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    for name, value in headers:
        if not name or (name[:1] != b":" and (name != name.lower()
                                              or any(c <= 0x20 or c >= 0x7F or c == 0x3A for c in name))):
            return Malformed(f"bad field name {name!r}")
        if _bad_value(value):
            return Malformed(f"bad value of field {name.decode('latin-1')!r}")
        if name[:1] == b":":
            if regular or cookies:
                return Malformed("a pseudo-header after a regular field")
            if name not in _PSEUDO:
                return Malformed(f"unknown pseudo-header {name.decode('latin-1')!r}")
            if name in pseudo:
                return Malformed(f"pseudo-header {name.decode('latin-1')!r} twice")
            pseudo[name] = value
        elif name in _CONNECTION_SPECIFIC:
            return Malformed(f"connection-specific field {name.decode('latin-1')!r}")
        elif name == b"te" and value.lower() != b"trailers":
            return Malformed("te other than trailers")
        elif name == b"cookie":
            cookies.append(value)
        elif name != b"host" or b":authority" not in pseudo:
            regular.append((name, value))
    method = pseudo.get(b":method")
    if method is None:
        return Malformed("no :method")
    protocol = pseudo.get(b":protocol")
    if protocol is not None and (method != b"CONNECT" or not connect_protocol):
        return Malformed(":protocol on a request other than an extended CONNECT" if method != b"CONNECT"
                         else ":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL")
    authority = pseudo.get(b":authority")
    if cookies:
        regular.append((b"cookie", b"; ".join(cookies)))
    if method == b"CONNECT" and protocol is None:
        if authority is None or b":scheme" in pseudo or b":path" in pseudo:
            return Malformed("a CONNECT needs :authority and no :scheme or :path")
        head = RequestHead(method, authority, b"1.1", tuple([(b"host", authority)] + regular))
        return StreamRequest(head, refusal=Reject(405, "CONNECT is not served here"))
    path, scheme = pseudo.get(b":path"), pseudo.get(b":scheme")
    if not path or scheme is None:
        return Malformed("no :path or :scheme")
    if path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
        return Malformed(":path is not an absolute path")
    host = [(b"host", authority)] if authority is not None else [(n, v) for n, v in regular if n == b"host"][:1]
    rest = [(n, v) for n, v in regular if n != b"host"]
    if protocol is None:
        return StreamRequest(RequestHead(method, path, b"1.1", tuple(host + rest)))
    if protocol.lower() != b"websocket":
        head = RequestHead(b"GET", path, b"1.1", tuple(host + rest))
        return StreamRequest(head, refusal=Reject(501, f"the protocol {protocol.decode('latin-1')!r} is not served"))
    upgrade = [(b"connection", b"upgrade"), (b"upgrade", b"websocket"), (b"sec-websocket-key", WEBSOCKET_KEY)]
    return StreamRequest(RequestHead(b"GET", path, b"1.1", tuple(host + upgrade + rest)), websocket=True)


def response_head(head: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    """
    The status and fields of an HTTP/1.1 response head (up to its blank
    line) as an HTTP/2 stream answers: a ``101`` becomes ``200`` (RFC 8441
    section 5), connection-specific fields and the accept key are left out,
    names are lower-cased.

    :raises ValueError: for a head that is not an HTTP/1.1 response.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise ValueError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    status = int(parts[1])
    fields: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(b":")
        name = name.strip().lower()
        if not colon or not name:
            raise ValueError(f"not a header line: {line[:80]!r}")
        if name not in _HOP_BY_HOP:
            fields.append((name, value.strip()))
    return (200 if status == 101 else status), fields
