"""
Redaction: tokens never reach logs, metrics or admin output.  A token is
replaced by a short stable fingerprint (the same token always gives the same
one), so an operator can still follow one token through the log.

:class:`Redaction` is the one object every writer asks (text and JSON logs,
audit, the admin list and page, the access log): it knows where the
configuration's token routes carry their tokens and sees a path the way
routing sees it (:func:`tunnelgw.core.routing.normalise_path`), so
``/%64esk/TOKEN``, ``/desk//TOKEN`` and ``/x/../desk/TOKEN`` are shown as
``/desk/tok:…`` like ``/desk/TOKEN``.  A path routing cannot read is never
shown, only its fingerprint.  :func:`printable` escapes what a client or a
certificate wrote (control characters, quotes) for a line-based sink.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Optional, Sequence
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from tunnelgw.core.routing import normalise_path

__all__ = ["Redaction", "fingerprint", "printable", "redact_path", "redact_query", "redact_uri", "redact_url",
           "TokenPlace", "unparsed"]

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
    """A full URL (a redirect's Location) with its tokens replaced by fingerprints; :func:`unparsed` when it is not a URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return unparsed(url)
    uri = redact_uri(parts.path + ("?" + parts.query if parts.query else ""), places, params)
    path, _, query = uri.partition("?")
    return urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def unparsed(text: str) -> str:
    """What is shown of a path or URL that cannot be read: never the text, only its fingerprint."""
    return "(unparsed " + fingerprint(text)[4:] + ")"


# Characters a line-based sink must not receive raw: C0 and C1 controls, DEL,
# line and paragraph separators, and the quote and backslash of the escaping itself.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f\u2028\u2029"\\]')


def printable(text: str) -> str:
    """
    Free text from a client or a certificate made safe for a one-line sink:
    controls become ``\\xNN`` / ``\\uNNNN``, quotes and backslashes are escaped
    (so ``carol\\r\\x1b[2J`` can neither end a line nor drive a terminal).
    """
    def escaped(found: re.Match[str]) -> str:
        c = found.group(0)
        if c in '"\\':
            return "\\" + c
        return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"

    return _UNSAFE.sub(escaped, text)


class Redaction:
    """
    The one redaction every writer applies: the token places of the
    configuration (its ``TokenRoute`` lines) and the query parameters that
    name tokens.

    :param places: where token routes carry their tokens.
    :param host_tokens: whether some token route reads its token from the
        Host (``from=host``): then the first label of a URL's host is a token too.
    """

    def __init__(self, places: Sequence[TokenPlace] = ()) -> None:
        self.places = tuple(places)
        self.params = sorted({p.param for p in self.places if p.origin == "query"} | {"token"})
        self.host_tokens = any(p.origin == "host" for p in self.places)

    def path(self, path: str) -> str:
        """A request path (raw, or already normalised) as routing reads it, its tokens fingerprinted."""
        for encoding in ("latin-1", "utf-8"):  # raw targets are read as latin-1; normalised paths are text
            try:
                normal = normalise_path(path.encode(encoding))
            except UnicodeEncodeError:
                continue
            if isinstance(normal, str):
                return redact_path(normal, self.places)
        return unparsed(path)

    def uri(self, uri: str) -> str:
        """A request target (path and query), its tokens fingerprinted."""
        path, mark, query = uri.partition("?")
        return self.path(path) + (mark + redact_query(query, self.params) if mark else "")

    def url(self, url: str, page: bool = False) -> str:
        """
        An absolute URL (Location, Referer, Origin, a backend's URL), its tokens fingerprinted.

        :param page: the URL names a page a browser showed (``Origin``,
            ``Referer``): with a ``from=host`` route, the first label of its
            host (unless an address) may be a desktop's token and is
            fingerprinted, a stranger's too (``http://tok:….example``).  Other
            URLs (a backend's, another gateway's) keep their host names.
        """
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (a bad port raises here, not later)
        except ValueError:
            return unparsed(url)
        user, at, host = parts.netloc.rpartition("@")
        label, dot, rest = host.partition(".")
        if page and self.host_tokens and dot and label and not _is_address(parts.hostname or ""):
            host = fingerprint(label) + dot + rest
        netloc = ("(user)@" if at else "") + host  # a password in a URL is never shown
        shown_path = self.path(parts.path) if parts.path else ""
        query = redact_query(parts.query, self.params) if parts.query else ""
        fragment = redact_query(parts.fragment, self.params) if parts.fragment else ""
        return urlunsplit((parts.scheme, netloc, shown_path, query, fragment))

    def __call__(self, text: str) -> str:
        """
        A path or target (starting with ``/``), a URL (with ``://``) or other
        text naming a backend (an endpoint string), its tokens fingerprinted.
        """
        if text.startswith("/"):
            return self.uri(text)
        if "://" in text:
            return self.url(text)
        rest, mark, query = text.partition("?")
        return _JWT.sub(lambda m: fingerprint(m.group(0)), rest) + (mark + redact_query(query, self.params) if mark else "")
