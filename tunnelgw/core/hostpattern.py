"""
Host allow-lists as addresses: a pattern is a CIDR block (``10.1.0.0/16``),
an IP address or an exact host name, never a glob.  ``10.0.0.*`` would also
admit ``10.0.0.5.attacker.example``, whose address the attacker's DNS picks.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Optional

__all__ = ["host_pattern_problem", "host_matches", "capture_may_change_host"]

_NAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
# What a capture substituted into a host may contain without changing which host is meant:
# one DNS label or address part, no dot, colon, bracket, percent or at.
_SAFE_HOST_PIECE = re.compile(r"[A-Za-z0-9-]{1,63}")


def host_pattern_problem(pattern: str) -> Optional[str]:
    """None when pattern is a CIDR block, an IP address or an exact host name, else why not."""
    try:
        ipaddress.ip_network(pattern, strict=False)
        return None
    except ValueError:
        pass
    if _NAME.fullmatch(pattern.lower()) and not pattern.replace(".", "").isdigit():
        return None
    return (f"host pattern {pattern!r} is neither a CIDR block (10.1.0.0/16), an address nor an exact "
            "host name; globs are refused because a DNS suffix can satisfy them")


def host_matches(host: str, pattern: str) -> bool:
    """True when host is inside the CIDR block or address pattern, or equals the host name pattern."""
    host = host.lower().rstrip(".")
    try:
        network = ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        return host_pattern_problem(pattern) is None and host == pattern.lower().rstrip(".")
    if "%" in host:
        return False
    try:
        return ipaddress.ip_address(host) in network
    except ValueError:
        return False


def capture_may_change_host(value: str) -> bool:
    """True when a captured value placed into a target's host part could name another host."""
    return not _SAFE_HOST_PIECE.fullmatch(value)
