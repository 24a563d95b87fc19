"""
WebSocket backend addresses: ``ws://`` and ``wss://`` URLs, checked and joined.

Pure functions over text.  :func:`parse_websocket_url` accepts only what a
gateway can safely connect to (a scheme, a host name or IP literal, a port,
an absolute path, an optional query; no user information, no fragment, no
spaces or control characters) and raises :class:`ValueError` with a reason a
person can act on.  :meth:`WebSocketTarget.joined` appends a request's path
remainder and query the way Apache's ``ProxyPass`` does.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from urllib.parse import quote

__all__ = ["WebSocketTarget", "is_websocket_target", "parse_websocket_url"]

_SCHEMES = {"ws": (False, 80), "wss": (True, 443)}
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# RFC 3986 pchar and query characters, percent escapes checked separately.
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_QUERY_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# What a decoded path remainder may keep unescaped when put back into a URL.
_REMAINDER_SAFE = "/-._~!$&'()*+,;=:@"


def is_websocket_target(target: str) -> bool:
    """True when a route target is a ``ws://`` or ``wss://`` URL (any letter case)."""
    return target[:6].lower() == "wss://" or target[:5].lower() == "ws://"


@dataclass(frozen=True)
class WebSocketTarget:
    """
    A checked WebSocket backend address.

    :ivar host: a DNS name or an IP address (IPv6 without brackets).
    :ivar path: absolute, percent-encoded.
    :ivar query: percent-encoded, without the ``?``; empty when none.
    """

    secure: bool
    host: str
    port: int
    path: str = "/"
    query: str = ""

    @property
    def authority(self) -> str:
        """``host:port``, with brackets around an IPv6 address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def resource(self) -> str:
        """The request target sent to the backend: path and query."""
        return f"{self.path}?{self.query}" if self.query else self.path

    @property
    def url(self) -> str:
        """The WebSocket URL."""
        return f"{'wss' if self.secure else 'ws'}://{self.authority}{self.resource}"

    @property
    def http_url(self) -> str:
        """The same address for plain HTTP requests (``http://`` or ``https://``)."""
        return f"{'https' if self.secure else 'http'}://{self.authority}{self.resource}"

    def joined(self, remainder: str, query: str) -> "WebSocketTarget":
        """
        This address with a request's path remainder appended to the path and
        its query appended to the query, as Apache's ``ProxyPass`` does.

        :param remainder: decoded text after the matched prefix (``""`` or ``/...``);
            it is percent-encoded again here.
        :param query: the request's raw query (without ``?``); characters that
            may not stand in a URL are percent-encoded.
        """
        path = self.path
        if remainder:
            extra = quote(remainder, safe=_REMAINDER_SAFE)
            path = path.rstrip("/") + extra if extra.startswith("/") else path + extra
        if query and not (_QUERY_CHARS.fullmatch(query) and not _BAD_ESCAPE.search(query)):
            query = quote(query, safe="-._~!$&'()*+,;=:@/?")
        joined_query = "&".join(q for q in (self.query, query) if q)
        return replace(self, path=path, query=joined_query)


def _check_host(host: str) -> str:
    """A host name or IP literal, lower-cased; ValueError says what is wrong."""
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"unterminated IPv6 literal {host!r}")
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise ValueError(f"bad IPv6 address {host[1:-1]!r}") from None
    if not host:
        raise ValueError("no host")
    name = host.lower().rstrip(".") if host != "." else ""
    labels = name.split(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"bad host name {host!r}")
    return name


def parse_websocket_url(text: str) -> WebSocketTarget:
    """
    Check a ``ws://`` or ``wss://`` URL and split it into a :class:`WebSocketTarget`.

    :raises ValueError: naming the first thing wrong (scheme, host, port, path...).
    """
    if any(not c.isprintable() or c.isspace() for c in text) or not text.isascii():
        raise ValueError("URL holds spaces, control or non-ASCII characters (percent-encode them)")
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError(f"scheme must be ws:// or wss://, got {text!r}")
    secure, default_port = _SCHEMES[scheme.lower()]
    if "#" in rest:
        raise ValueError("a backend URL may not have a #fragment")
    split = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, resource = rest[:split], rest[split:]
    if "@" in authority:
        raise ValueError("user information (user@host) in backend URLs is not supported")
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise ValueError(f"unterminated IPv6 literal {authority!r}")
        host_text, after = authority[: close + 1], authority[close + 1:]
        if after and not after.startswith(":"):
            raise ValueError(f"unexpected text after the IPv6 address: {after!r}")
        has_port, port_text = bool(after), after[1:]
    else:
        host_text, colon, port_text = authority.partition(":")
        has_port = bool(colon)
    host = _check_host(host_text)
    if has_port:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"port must be a number from 1 to 65535, got {port_text!r}")
        port = int(port_text)
    else:
        port = default_port
    path, _, query = resource.partition("?")
    path = path or "/"
    if not _PATH_CHARS.fullmatch(path) or _BAD_ESCAPE.search(path):
        raise ValueError(f"path {path!r} holds characters that must be percent-encoded, or a bad % escape")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ValueError(f"path {path!r} holds '.' or '..' segments")
    if not _QUERY_CHARS.fullmatch(query) or _BAD_ESCAPE.search(query):
        raise ValueError(f"query {query!r} holds characters that must be percent-encoded, or a bad % escape")
    return WebSocketTarget(secure, host, port, path, query)
