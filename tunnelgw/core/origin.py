"""
Whether a WebSocket handshake's ``Origin`` is admitted (pure).

Browsers send ``Origin`` with every WebSocket handshake, and a page cannot
leave it out or forge it; non-browser clients usually send none.  With no
``OriginAllow`` rule for a path, a handshake that carries an Origin must come
from the gateway's own origin as the client sees it: the scheme of the
client's connection and the ``Host`` it asked for (both as a trusted front
proxy reports them, when one is in front).  Without this default, any web
page a user visits could open the user's desktop (cross-site WebSocket
hijacking).
"""

from __future__ import annotations

import functools

from typing import Callable, Optional, Sequence
from urllib.parse import urlsplit

__all__ = ["ANY_ORIGIN", "origin_refusal", "own_origin", "parse_origin"]

#: The ``OriginAllow`` word that admits every origin (and handshakes with none).
ANY_ORIGIN = "*"

_DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]  # scheme, host (lower case, IPv6 without brackets), port


@functools.lru_cache(maxsize=1024)  # pure; browsers send the same few origins on every handshake
def parse_origin(text: str) -> Optional[Origin]:
    """
    An ``Origin`` header value (``https://host:port``) as (scheme, host, port);
    None for ``null``, other schemes, paths, user parts or a bad port.
    """
    text = text.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None \
            or parts.path not in ("", "/") or parts.query or parts.fragment or "\\" in text:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def own_origin(host: str, secure: bool) -> Optional[Origin]:
    """
    The gateway's origin as a client reached it: ``Host`` (``name``,
    ``name:port``, ``[v6]:port``) and whether its connection was TLS; None
    when the Host is missing or malformed.
    """
    scheme = "https" if secure else "http"
    host = host.strip()
    if not host or any(c in host for c in "/?#@\\ \t"):
        return None
    return parse_origin(f"{scheme}://{host}")


def origin_refusal(origin: Optional[str], host: str, secure: bool,
                   allowed: Optional[Sequence[str]], show: Callable[[str], str] = str) -> Optional[str]:
    """
    Why a handshake is refused for its Origin, or None when it is admitted.

    :param origin: the Origin header, None when the request has none.
    :param host: the Host the client asked for (a trusted proxy's
        X-Forwarded-Host when one is in front).
    :param secure: whether the client's connection was TLS.
    :param allowed: the origins an ``OriginAllow`` rule lists for the path
        (lower case, no trailing slash; ``*`` admits all), or None when no
        rule covers it: then only the gateway's own origin is admitted, and
        requests without Origin (non-browser clients) pass.
    :param show: how the reason names an origin (the gateway's redaction:
        an Origin or Host may carry a ``from=host`` token).
    """
    if allowed is not None:
        if ANY_ORIGIN in allowed or (origin is not None and origin.strip().rstrip("/").lower() in allowed):
            return None
        return f"origin {show(origin) if origin else '(none)'!r} is not allowed here"
    if origin is None:
        return None
    own = own_origin(host, secure)
    if own is not None and parse_origin(origin) == own:
        return None
    shown = show(f"{own[0]}://{host.strip()}") if own is not None else "(no valid Host)"
    return (f"origin {show(origin)!r} is not this gateway's own ({shown}); "
            "a page elsewhere needs OriginAllow")
