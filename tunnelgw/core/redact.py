"""
Redaction: tokens never reach logs, metrics or admin output.  A token is
replaced by a short stable fingerprint (the same token always gives the same
one), so an operator can still follow one token through the log.
"""

from __future__ import annotations

import hashlib
import re
from typing import Optional, Sequence
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

__all__ = ["fingerprint", "redact_path", "redact_query", "redact_uri", "redact_url", "TokenPlace"]

# A JWT anywhere in text: three base64url parts, the first one a JSON header ("eyJ").
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def fingerprint(token: str) -> str:
    """``tok:`` and 8 hex digits of the token's SHA-256: stable, short, not reversible in practice."""
    return "tok:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:8]


class TokenPlace:
    """Where a token route carries its token: ``query`` (param name) or ``path`` (segment after prefix)."""

    def __init__(self, path: str, origin: str, param: str = "token") -> None:
        self.path = path.rstrip("/") or "/"
        self.origin = origin
        self.param = param


def redact_query(query: str, params: Sequence[str] = ("token",)) -> str:
    """The query with the value of each named parameter replaced by its fingerprint."""
    if not query:
        return query
    parts = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        shown = fingerprint(value) if name in params else _JWT.sub(lambda m: fingerprint(m.group(0)), value)
        parts.append(f"{quote(name, safe='')}={quote(shown, safe=':')}")
    return "&".join(parts)


def redact_path(path: str, places: Sequence[TokenPlace] = ()) -> str:
    """
    The path with a token segment (the first segment after a ``from=path``
    token route's prefix) and any JWT-looking text replaced by fingerprints.
    """
    for place in sorted(places, key=lambda p: len(p.path), reverse=True):
        if place.origin != "path":
            continue
        prefix = "" if place.path == "/" else place.path
        if path == prefix or path.startswith(prefix + "/"):
            head, _, rest = path[len(prefix) + 1:].partition("/")
            if head:
                path = f"{prefix}/{fingerprint(head)}" + (f"/{rest}" if _ else "")
            break
    return _JWT.sub(lambda m: fingerprint(m.group(0)), path)


def redact_uri(uri: str, places: Sequence[TokenPlace] = (), params: Optional[Sequence[str]] = None) -> str:
    """A request URI (path and query) with its tokens replaced by fingerprints."""
    path, mark, query = uri.partition("?")
    names = list(params) if params is not None else sorted({p.param for p in places if p.origin == "query"} | {"token"})
    return redact_path(path, places) + (mark + redact_query(query, names) if mark else "")


def redact_url(url: str, places: Sequence[TokenPlace] = (), params: Optional[Sequence[str]] = None) -> str:
    """A full URL (a redirect's Location) with its tokens replaced by fingerprints."""
    parts = urlsplit(url)
    uri = redact_uri(parts.path + ("?" + parts.query if parts.query else ""), places, params)
    path, _, query = uri.partition("?")
    return urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))
