"""
The real client address of a request, from the transport peer and, only when
that peer is a trusted front proxy, from ``Forwarded`` / ``X-Forwarded-For``.

Pure: the caller passes the peer's host (already the PROXY-protocol source
when the listener is ``haproxy:``), the trusted networks and the headers.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Mapping, Optional, Sequence, Union

__all__ = ["client_address", "format_address", "forwarded_chain", "is_trusted"]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("([^"]*)"|[^;,\s]+)', re.IGNORECASE)


def format_address(address: object) -> str:
    """``host:port`` for an IP address object (``[v6]:port``), the path for a UNIX one."""
    host = getattr(address, "host", None)
    if host is not None:
        port = getattr(address, "port", None)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(getattr(address, "name", None) or address)


def _ip(text: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    """Parse an address as written in a forwarding header (brackets, ports, quotes allowed)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def forwarded_chain(headers: Mapping[str, Sequence[str]]) -> list[str]:
    """
    The client-to-proxy address chain the headers claim, leftmost first:
    RFC 7239 ``Forwarded`` when present, else ``X-Forwarded-For``.
    Unparseable elements (``unknown``, obfuscated names) are kept as written.

    :param headers: lower-cased header name -> every value received.
    """
    chain: list[str] = []
    forwarded = headers.get("forwarded", ())
    if forwarded:
        for value in forwarded:
            for element in value.split(","):
                found = _FOR.search(element)
                chain.append((found.group(2) if found.group(2) is not None else found.group(1)) if found else "unknown")
        return chain
    for value in headers.get("x-forwarded-for", ()):
        chain += [part.strip() for part in value.split(",") if part.strip()]
    return chain


def is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    """Whether a peer address is in one of the trusted networks."""
    ip = _ip(address)
    return ip is not None and any(ip in net for net in trusted)


def client_address(peer: str, trusted: Sequence[Network], headers: Mapping[str, Sequence[str]]) -> str:
    """
    The address to log, limit, hash and bind tokens to.

    The peer itself unless it is in ``trusted``; then the forwarding chain is
    walked from the right (the hop nearest us), skipping trusted proxies, and
    the first untrusted address is the client.  A chain element that is not an
    IP address stops the walk: the peer is kept, as nothing after it can be
    trusted to name the client.
    """
    if not trusted or not is_trusted(peer, trusted):
        return peer
    current = peer
    for hop in reversed(forwarded_chain(headers)):
        ip = _ip(hop)
        if ip is None:
            return current
        current = str(ip)
        if not any(ip in net for net in trusted):
            return current
    return current
