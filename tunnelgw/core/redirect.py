"""
Redirect mode: which gateway owns a desktop host, and where to send a client
whose desktop another gateway serves.  Pure functions over values.
"""

from __future__ import annotations

from typing import Optional, Sequence
from urllib.parse import quote

from tunnelgw.core.hostpattern import host_matches
from tunnelgw.core.topoconfig import GatewayOwner

__all__ = ["host_matches", "lookup_answer", "owner_of", "redirect_location"]


def owner_of(host: str, owners: Sequence[GatewayOwner]) -> Optional[str]:
    """The base URL of the first gateway that declares host, or None."""
    for owner in owners:
        if any(host_matches(host, g) for g in owner.host_globs):
            return owner.url
    return None


def redirect_location(owner_url: str, uri: str) -> str:
    """The owner's URL with the request's own path and query (``uri`` as received)."""
    return owner_url.rstrip("/") + (uri if uri.startswith("/") else "/" + uri)


def lookup_answer(owner_url: str, route_path: str, origin: str, param: str, token: str) -> str:
    """The WebSocket URL a client should open for token, given how its route takes tokens."""
    encoded = quote(token, safe="")
    base = owner_url.rstrip("/")
    path = route_path.rstrip("/")
    if origin == "path":
        return f"{base}{path}/{encoded}"
    return f"{base}{path or '/'}?{param}={encoded}"
