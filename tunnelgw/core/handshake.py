"""
The server side of a WebSocket opening handshake (RFC 6455 section 4.2),
checked from one :class:`~tunnelgw.core.http.RequestHead`: what the client
offers, or the HTTP status that refuses it.  Pure functions over values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Optional, Union

from tunnelgw.core.http import RequestHead, is_upgrade
from tunnelgw.core.routing import Reject

__all__ = ["Handshake", "accept_key", "check_handshake"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass(frozen=True)
class Handshake:
    """
    A valid opening handshake.

    :ivar key: the client's ``Sec-WebSocket-Key``.
    :ivar protocols: the subprotocols offered, in the client's order.
    :ivar origin: the ``Origin`` header, if sent.
    :ivar host: the ``Host`` header.
    """

    key: str
    protocols: tuple[str, ...]
    origin: Optional[str]
    host: str


def check_handshake(head: RequestHead) -> Union[Handshake, Reject]:
    """Check an upgrade request's method, version, headers and key."""
    if not is_upgrade(head):
        return Reject(426, "this path is a WebSocket endpoint; open it with a WebSocket client")
    if head.method != b"GET":
        return Reject(405, "WebSocket handshakes use GET")
    if head.version != b"1.1":
        return Reject(400, "WebSocket handshakes need HTTP/1.1")
    if b"upgrade" not in head.tokens(b"connection"):
        return Reject(400, "a WebSocket handshake needs Connection: Upgrade")
    if head.get_all(b"transfer-encoding") or head.get(b"content-length") not in (None, b"0"):
        return Reject(400, "a WebSocket handshake has no body")
    versions = head.get_all(b"sec-websocket-version")
    if versions != [b"13"]:
        return Reject(426, "WebSocket version 13 is required")
    keys = head.get_all(b"sec-websocket-key")
    if len(keys) != 1:
        return Reject(400, "a WebSocket handshake needs one Sec-WebSocket-Key")
    try:
        valid_key = len(base64.b64decode(keys[0], validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        return Reject(400, "bad Sec-WebSocket-Key")
    protocols = tuple(t.decode("latin-1") for v in head.get_all(b"sec-websocket-protocol")
                      for t in (p.strip() for p in v.split(b",")) if t)
    origins = head.get_all(b"origin")
    if len(origins) > 1:
        return Reject(400, "more than one Origin header")
    host = head.get(b"host") or b""
    return Handshake(keys[0].decode("ascii"), protocols,
                     origins[0].decode("latin-1") if origins else None, host.decode("latin-1"))


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value answering key."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")
