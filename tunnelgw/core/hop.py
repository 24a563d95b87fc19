"""
Pool hops: a gateway that does not own a desktop carries the session to the
owner over WebSocket (``OwnerSource ... mode=relay hopsecret=FILE``), and says
so in one header the owner can check: ``X-Tunnelgw-Hop: TIME;CLIENT;MAC``,
the MAC an HMAC-SHA256 under the pool's shared secret of the time, the real
client's address and the request URI.  The owner believes a hop (the client
address, no second owner lookup, no second Origin check) only when the MAC is
right and the time within :data:`WINDOW` seconds; anything else is refused.
Pure: secret and time are passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Optional

__all__ = ["HOP_HEADER", "WINDOW", "check_hop", "hop_value"]

HOP_HEADER = "x-tunnelgw-hop"
#: Seconds a hop header stays valid (clock skew between pool members included).
WINDOW = 30.0


def _mac(secret: bytes, when: int, client: str, uri: str) -> str:
    return hmac.new(secret, f"{when}|{client}|{uri}".encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def hop_value(secret: bytes, client: str, uri: str, now: float) -> str:
    """The header value a relaying gateway sends for client's request of uri."""
    when = int(now)
    return f"{when};{client};{_mac(secret, when, client, uri)}"


def check_hop(secret: bytes, value: str, uri: str, now: float) -> Optional[str]:
    """The real client address a valid hop names, or None (forged, stale, or malformed)."""
    parts = value.split(";")
    if len(parts) != 3 or not parts[0].isascii() or not parts[0].isdigit():
        return None
    when, client, mac = int(parts[0]), parts[1], parts[2]
    try:
        ipaddress.ip_address(client)
    except ValueError:
        return None
    if abs(now - when) > WINDOW or not hmac.compare_digest(mac, _mac(secret, when, client, uri)):
        return None
    return client
