"""
Host allow-lists as addresses: a pattern is a CIDR block (``10.1.0.0/16``),
an IP address or an exact host name, never a glob.  ``10.0.0.*`` would also
admit ``10.0.0.5.attacker.example``, whose address the attacker's DNS picks.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Optional, Sequence

__all__ = ["capture_may_change_host", "host_matches", "host_pattern_problem", "listener_is_local",
           "substituted_host_problem", "target_host"]

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


#: Endpoint kinds whose strings name a host (``host=`` or the first positional argument).
_HOST_ENDPOINTS = ("tcp", "tls", "ssl")
_CAPTURE = re.compile(r"\$\d")


def target_host(target: str) -> Optional[str]:
    """
    The host part of a backend target as written: of a ``ws://``/``wss://``
    URL, or of a ``tcp:``/``tls:``/``ssl:`` endpoint string (``host=`` or the
    first positional argument); None for targets without one (``unix:``,
    ``balancer://``).
    """
    scheme, sep, rest = target.partition("://")
    if sep:
        if scheme.lower() not in ("ws", "wss", "http", "https"):
            return None
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
        if authority.startswith("["):
            return authority[1:authority.find("]")] if "]" in authority else authority[1:]
        return authority.partition(":")[0]
    kind, _, args = target.partition(":")
    if kind.lower() not in _HOST_ENDPOINTS:
        return None
    words = re.split(r"(?<!\\):", args)
    for word in words:
        key, eq, value = word.partition("=")
        if eq and key.lower() == "host":
            return value
    positional = [w for w in words if "=" not in w]
    return positional[0] if positional else None


def _is_ip_literal(host: str) -> bool:
    if "%" in host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def substituted_host_problem(template: Optional[str], host: Optional[str], pieces: Sequence[str]) -> Optional[str]:
    """
    Why a host made by putting captured pieces into a template host could name
    a host the operator did not mean (None when it cannot).

    - a template that is one capture (``host=$1``) must yield an IP literal;
    - an address-shaped template (``10.0.0.$1``) must yield an IP literal, each
      piece one part of it (no dot: ``5.attacker.example`` is refused);
    - a name template (``desk$1.vdi.internal``) takes single-label pieces only,
      so the name stays in the operator's zone.

    :param template: the target's host as configured; None or no ``$N``: nothing to check.
    :param host: the substituted target's host.
    :param pieces: the captured values the template's host part takes.
    """
    if template is None or not _CAPTURE.search(template):
        return None
    if host is None:
        return "the target has no host after substitution"
    whole = _CAPTURE.fullmatch(template) is not None
    address_shaped = whole or _is_ip_literal(_CAPTURE.sub("0", template))
    if not whole and any(capture_may_change_host(p) for p in pieces):
        bad = next(p for p in pieces if capture_may_change_host(p))
        return f"captured {bad!r} is not one label or address part of the host {template!r}"
    if address_shaped and not _is_ip_literal(host):
        return f"{host!r} is not an IP address (the host {template!r} takes addresses only)"
    return None


def listener_is_local(endpoint: str) -> bool:
    """
    Whether a server endpoint string listens only where this host alone can
    connect: a UNIX socket, or tcp/ssl with a loopback ``interface=`` (no
    interface: every one).  ``systemd:`` sockets are the unit's to place and
    count as local; ``haproxy:`` is judged by the endpoint it wraps.
    """
    kind, _, rest = endpoint.partition(":")
    kind = kind.lower()
    if kind == "haproxy":
        return listener_is_local(rest)
    if kind in ("unix", "systemd"):
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    for word in re.split(r"(?<!\\):", rest):
        key, eq, value = word.partition("=")
        if eq and key.lower() == "interface":
            try:
                return ipaddress.ip_address(value.replace("\\:", ":")).is_loopback
            except ValueError:
                return False
    return False
