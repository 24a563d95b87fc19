"""
One canonical view of a request, made once from its head.

Routing, token extraction, guards and every writer (logs, audit, the admin
list, metrics) read a request through one :class:`RequestView`: the path as
routing normalises it (:func:`tunnelgw.core.routing.normalise_path`), the
route the rules choose for it, the token when a token route covers it, and
the redacted forms of everything that names the request (path, target,
``Referer``, ``Origin``).  Nothing after the view is made reads the raw
target: ``/%64esk/TOKEN``, ``/desk//TOKEN`` and ``/x/../desk/TOKEN`` are one
request for routing and for redaction alike.

A target that cannot be read (a bad escape, a climb above the root, a path
that is not UTF-8) gives a view whose :attr:`RequestView.refusal` is the 400
(or 404) to answer; it is logged like every other refusal, with the path
shown only as a fingerprint.  Pure: values in, a frozen dataclass out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

from tunnelgw.core.http import RequestHead
from tunnelgw.core.redact import Redaction, TokenPlace, fingerprint, printable, redact_path, redact_query, unparsed
from tunnelgw.core.routing import Reject, Route, RuleSet, normalise_path
from tunnelgw.core.tokens import extract_token

__all__ = ["RequestView", "hide_token", "view_request"]


@dataclass(frozen=True)
class RequestView:
    """
    A request as everything after its head reads it.

    :ivar method: the request method.
    :ivar path: the normalised path (``""`` when :attr:`refusal` is set).
    :ivar query: the query as sent (no ``?``), read as latin-1.
    :ivar host: the ``Host`` header (``""`` when absent).
    :ivar refusal: why the target cannot be served (unparseable), or None.
    :ivar route: what the rules (``ProxyPass``, ``ProxyPassMatch``) choose for the path.
    :ivar place: the token route covering the path (longest), or None.
    :ivar token: the token that route reads from the request (``""`` when none).
    :ivar shown_path: the path as logs, audit and the admin list show it.
    :ivar shown_target: path and query as the access log shows them.
    :ivar shown_referer: the ``Referer`` redacted (None when absent).
    :ivar shown_origin: the ``Origin`` redacted (None when absent).
    """

    method: bytes
    path: str
    query: str
    host: str
    refusal: Optional[Reject]
    route: Union[Route, Reject]
    place: Optional[TokenPlace]
    token: str
    shown_path: str
    shown_target: str
    shown_referer: Optional[str]
    shown_origin: Optional[str]
    redaction: Redaction

    @property
    def target(self) -> str:
        """The normalised path and the query as sent: what is passed on to backends and portals."""
        return self.path + ("?" + self.query if self.query else "")

    def scrub(self, text: str) -> str:
        """
        Text about this request (a refusal's reason, a redirect's Location)
        with this request's token, wherever it appears, and any other token
        the redaction knows how to find, fingerprinted; controls escaped.
        """
        return printable(hide_token(text, self.token))


def hide_token(text: str, token: str) -> str:
    """
    text with every occurrence of token, in any letter case (a host name is
    lower-cased on its way), replaced by its fingerprint; fingerprints already
    there are kept.
    """
    if not token or token.lower() not in text.lower():
        return text
    shown = fingerprint(token)
    return re.sub(r"tok:[0-9a-f]{8}|" + re.escape(token),
                  lambda m: m.group(0) if _FINGERPRINT.fullmatch(m.group(0)) else shown, text, flags=re.IGNORECASE)


_FINGERPRINT = re.compile(r"tok:[0-9a-f]{8}")


def _place_of(places: tuple[TokenPlace, ...], path: str) -> Optional[TokenPlace]:
    found = [p for p in places if p.path == "/" or path == p.path or path.startswith(p.path + "/")]
    return max(found, key=lambda p: len(p.path)) if found else None


def _header(head: RequestHead, name: bytes) -> Optional[str]:
    value = head.get(name)
    return None if value is None else value.decode("latin-1")


def view_request(head: RequestHead, rules: RuleSet, redaction: Redaction) -> RequestView:
    """
    The one view of head: normalised once, routed once, redacted once.

    :param rules: the configuration's ``ProxyPass``/``ProxyPassMatch`` rules.
    :param redaction: the configuration's token places (see :class:`~tunnelgw.core.redact.Redaction`).
    """
    query = head.query.decode("latin-1")
    host = _header(head, b"host") or ""
    referer, origin = _header(head, b"referer"), _header(head, b"origin")
    shown_referer = None if referer is None else printable(redaction.url(referer, page=True))
    shown_origin = None if origin is None else printable(redaction.url(origin, page=True))
    shown_query = printable(redact_query(query, redaction.params)) if query else ""
    path = normalise_path(head.path)
    if isinstance(path, Reject):
        shown = unparsed(head.path.decode("latin-1"))
        return RequestView(head.method, "", query, host, path, path, None, "", shown,
                           shown + ("?" + shown_query if query else ""), shown_referer, shown_origin, redaction)
    place = _place_of(redaction.places, path)
    token = ""
    if place is not None:
        remainder = path[len(place.path):] if place.path != "/" else path
        found = extract_token(place.origin, place.param, remainder, query, host)
        token = found if isinstance(found, str) else ""
    shown_path = printable(redact_path(path, redaction.places))
    if token:
        shown_path = hide_token(shown_path, token)
        shown_referer = None if shown_referer is None else hide_token(shown_referer, token)
        shown_origin = None if shown_origin is None else hide_token(shown_origin, token)
        shown_query = hide_token(shown_query, token)
    return RequestView(head.method, path, query, host, None, rules.choose(path), place, token, shown_path,
                       shown_path + ("?" + shown_query if query else ""), shown_referer, shown_origin, redaction)
