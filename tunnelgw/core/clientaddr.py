"""
The real client address of a request, from the transport peer and, only when
that peer is a trusted front proxy, from the one header the operator named
for it (``X-Forwarded-For`` by default, or ``Forwarded``).

Pure: the caller passes the peer's host (already the PROXY-protocol source
when the listener is ``haproxy:``), the trusted networks and the headers.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Mapping, Optional, Sequence, Union

__all__ = ["FORWARDED", "PROXY_HEADERS", "XFF", "client_address", "format_address", "forwarded_chain",
           "is_trusted", "resolve_client"]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
XFF = "x-forwarded-for"
FORWARDED = "forwarded"
#: The headers ``TrustedProxy ... header=`` may name (lower case).
PROXY_HEADERS = (XFF, FORWARDED)
_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("([^"]*)"|[^;,\s]+)', re.IGNORECASE)


def format_address(address: object) -> str:
    """``host:port`` for an IP address object (``[v6]:port``), the path for a UNIX one."""
    host = getattr(address, "host", None)
    if host is not None:
        port = getattr(address, "port", None)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(getattr(address, "name", None) or address)


def _ip(text: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    """
    An address as written in a forwarding header (``1.2.3.4``, ``1.2.3.4:80``,
    ``[v6]``, ``"[v6]:80"``), or None: anything else, IPv6 scope ids
    (``fe80::1%eth0``) and text around the address included.
    """
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    port = ""
    if text.startswith("["):
        text, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return None
        port = port[1:] if port else ""
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
    if port and not (port.isascii() and port.isdigit()):
        return None
    if not text.isascii() or "%" in text or any(c.isspace() for c in text):
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def forwarded_chain(headers: Mapping[str, Sequence[str]], header: str = XFF) -> list[str]:
    """
    The client-to-proxy address chain one header claims, leftmost first:
    ``X-Forwarded-For`` by default, or RFC 7239 ``Forwarded`` (its ``for=``
    values).  No other header is read.  Unparseable elements (``unknown``,
    obfuscated names) are kept as written.

    :param headers: lower-cased header name -> every value received.
    :param header: the lower-cased name of the header the trusted proxy sets
        (one of :data:`PROXY_HEADERS`).
    """
    chain: list[str] = []
    if header == FORWARDED:
        for value in headers.get(FORWARDED, ()):
            for element in value.split(","):
                found = _FOR.search(element)
                chain.append((found.group(2) if found.group(2) is not None else found.group(1)) if found else "unknown")
        return chain
    for value in headers.get(header, ()):
        chain += [part.strip() for part in value.split(",") if part.strip()]
    return chain


def is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    """Whether a peer address is in one of the trusted networks."""
    if not trusted:
        return False
    ip = _ip(address)
    return ip is not None and any(ip in net for net in trusted)


def client_address(peer: str, trusted: Sequence[Network], headers: Mapping[str, Sequence[str]],
                   header: str = XFF) -> str:
    """The address to log, limit, hash and bind tokens to (see :func:`resolve_client`)."""
    return resolve_client(peer, trusted, headers, header)[0]


def resolve_client(peer: str, trusted: Sequence[Network], headers: Mapping[str, Sequence[str]],
                   header: str = XFF) -> tuple[str, Optional[str]]:
    """
    The client address, and what was wrong with the forwarding header (None
    when nothing was).

    The peer itself unless it is in ``trusted``; then the chain of the one
    header the operator named (``TrustedProxy ... header=``) is walked from the
    right (the hop nearest us), skipping trusted proxies, and the first
    untrusted address is the client.  A chain element that is not an IP
    literal (a name, ``unknown``, a scope id, text around it) ends the walk
    with the peer's own address, as nothing left of it can be trusted to name
    the client.
    """
    if not trusted or not is_trusted(peer, trusted):
        return peer, None
    current = peer
    for hop in reversed(forwarded_chain(headers, header)):
        ip = _ip(hop)
        if ip is None:
            return peer, f"{header} element {hop[:64]!r} is not an IP address"
        current = str(ip)
        if not any(ip in net for net in trusted):
            return current, None
    return current, None
