"""
The HTTP face of the gateway: a twisted.web resource that answers plain
requests and hands WebSocket upgrades that come on kept-alive connections
to the gateway (first requests are read by :mod:`tunnelgw.front`).

It can be the root of the gateway's own :class:`~twisted.web.server.Site` or be
mounted in another application's Site.  Rules always match the full request
path.  Requests that are not WebSocket upgrades get a plain answer: 404 where
no rule matches, 426 on a WebSocket path, the demo page where configured; on a
route to a ws:// or wss:// backend they are reverse-proxied to its http(s):// URL.

Static files (``Alias``, see :mod:`tunnelgw.files`) share the path space with
the rules.  A WebSocket upgrade is only ever routed by the rules.  A plain
request is answered, in this order: by a demo page at exactly its path; by
the ``Alias`` with the longest matching path, unless a ``ProxyPass`` path
that matches is longer (then 426 as for any WebSocket path);
``ProxyPassMatch`` expressions never take plain requests from an alias.
"""

from __future__ import annotations

from http.client import responses
import json
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tunnelgw.core.clientaddr import format_address
from tunnelgw.core.config import Alias, PrefixRule
from tunnelgw.core.http import RequestHead, is_upgrade
from tunnelgw.core.request import RequestView
from tunnelgw.core.routing import NO_ROUTE, Reject, Route
from tunnelgw.core.targets import WebSocketURL
from tunnelgw.certificates import client_certificate
from tunnelgw.files import choose_alias, serve
from tunnelgw.gateway import GatewayFactory
from tunnelgw.session import log_refusal
from tunnelgw.topology import JsonAnswer, Redirect

__all__ = ["GatewayResource", "access_log_formatter"]

_log = Logger(namespace="tunnelgw")


def access_log_formatter(redact: Callable[[str], str]) -> Callable[[str, Request], str]:
    """
    A ``logFormatter`` for a twisted.web Site that mounts the gateway's
    resource: the ``AccessLog`` combined line of :mod:`tunnelgw.accesslog`
    (the request's view, or redact, for the URI and Referer).
    """

    def formatter(timestamp: str, request: Request) -> str:
        from tunnelgw.accesslog import request_entry
        from tunnelgw.core.accesslog import combined_line

        return combined_line(request_entry(request, redact, time.time()))

    return formatter


def _head_of(request: Request) -> RequestHead:
    """twisted.web's parse of a request head as a :class:`~tunnelgw.core.http.RequestHead`."""
    headers = tuple((name.lower(), value) for name, values in request.requestHeaders.getAllRawHeaders()
                    for value in values)
    version = request.clientproto.partition(b"/")[2] or b"1.1"
    return RequestHead(request.method, request.uri, version, headers)


_WEBSOCKET_ONLY = Reject(426, "this path is a WebSocket endpoint; open it with a WebSocket client")


class GatewayResource(Resource):
    """
    Route requests; upgrade those with a route to WebSocket sessions.

    :param factory: builds the sessions and holds the rules.
    :param pages: extra plain pages, path -> HTML, served to GET requests.
    :param aliases: URL paths served from folders (``Alias``).
    """

    isLeaf = True

    def __init__(self, factory: GatewayFactory, pages: Mapping[str, bytes] = {},
                 aliases: Sequence[Alias] = ()) -> None:
        super().__init__()
        self._factory = factory
        self._pages = dict(pages)
        self._aliases = tuple(aliases)

    def reconfigure(self, pages: Mapping[str, bytes], aliases: Sequence[Alias]) -> None:
        """Serve new demo pages and Alias folders from now on (reload)."""
        self._pages = dict(pages)
        self._aliases = tuple(aliases)

    @property
    def factory(self) -> GatewayFactory:
        """The factory whose rules and topology this resource applies."""
        return self._factory

    def render(self, request: Request) -> bytes | int:
        """
        Answer one request: a session, a page, a file, a proxied response or a
        status with its reason.  Every kind goes through the gateway's one
        decision (:meth:`~tunnelgw.gateway.GatewayFactory.decide`) on the
        request's one view, so a route's guards hold for all of them.

        A HEAD answer's body is dropped here (with its length kept), so that
        twisted.web never logs its warning line, which names the raw request.
        """
        body = self._answer(request)
        if request.method == b"HEAD" and isinstance(body, bytes) and body:
            request.setHeader(b"content-length", b"%d" % len(body))
            return b""
        return body

    def _answer(self, request: Request) -> Any:
        head = _head_of(request)
        if is_upgrade(head):
            return self._upgrade(request, head)
        factory = self._factory
        view = factory.view(head)
        request.tunnelgw_view = view  # type: ignore[attr-defined]  # for the access log line
        client = factory.client_of(request)
        peer = getattr(request.getClientAddress(), "host", None)
        request.tunnelgw_client = client if client != peer else None  # type: ignore[attr-defined]
        transport = request.channel.transport if request.channel is not None else None
        certificate = client_certificate(transport) if ISSLTransport.providedBy(transport) else None
        decision = factory.decide(view, request, client, False, certificate=certificate)
        if decision is view.route:  # the rules' answer, every guard passed: pages and files first
            page = self._pages.get(view.path)
            if page is not None and request.method in (b"GET", b"HEAD"):
                request.setHeader(b"content-type", b"text/html; charset=utf-8")
                request.setHeader(b"cache-control", b"no-cache")
                return page
            chosen = self._alias_for(view)
            if chosen is not None:
                alias, segments = chosen
                return self._portal_first(request, view, client, decision,
                                          lambda: serve(alias, segments, request))
        if isinstance(decision, Reject):
            if decision is view.route and decision == NO_ROUTE:
                # No route, page or Alias claims the path (a browser's /favicon.ico, a
                # scanner): counted, not logged, so that real refusals stand out.  Other
                # 404s (an encoded '/', '\\' or NUL; a ProxyPassMatch capture that would
                # choose the backend host) are refusals of the client's doing: logged.
                factory.metrics.unrouted.inc()
                return self._status(request, decision)
            return self._refuse(request, view, decision)
        if isinstance(decision, JsonAnswer):
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            return json.dumps(decision.body).encode("utf-8")
        if isinstance(decision, Redirect):
            request.setResponseCode(307)
            request.setHeader(b"location", decision.location.encode("utf-8"))
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return f"307 {decision.reason}\n".encode("utf-8")
        if isinstance(decision, Route) and isinstance(decision.backend, WebSocketURL):
            route = decision

            from_proxy = factory.topology is not None and factory.topology.from_proxy(request)

            def proxied() -> bytes | int:
                outcome = factory.websocket_backends.proxy_http(request, route, view.query.encode("latin-1"),
                                                                view.shown_path, from_proxy)
                return self._refuse(request, view, outcome) if isinstance(outcome, Reject) else outcome

            return self._portal_first(request, view, client, route, proxied)
        request.setHeader(b"upgrade", b"websocket")
        return self._refuse(request, view, _WEBSOCKET_ONLY)

    def _alias_for(self, view: RequestView) -> Optional[tuple[Alias, list[str]]]:
        """
        The longest matching ``Alias`` and the segments below it, or None when
        none takes the path or a longer ``ProxyPass`` path does.
        """
        if not self._aliases:
            return None
        chosen = choose_alias(self._aliases, view.path)
        if chosen is None:
            return None
        route = view.route
        if isinstance(route, Route) and isinstance(route.rule, PrefixRule) and len(route.rule.path) > len(chosen[0].path):
            return None
        return chosen

    def _portal_first(self, request: Request, view: RequestView, client: str, route: object,
                      answer: Callable[[], Any]) -> Any:
        """
        answer() once the route's ``auth=`` portal admits the request (at
        once when the route has none); the portal's refusal otherwise.  The
        portal sees the view's target, the path routing chose.
        """
        portal_name = route.options.auth if isinstance(route, Route) else None
        if portal_name is None:
            return answer()
        portal = self._factory.portals.portals[portal_name]
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in _head_of(request).headers}
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def decided(admitted: object) -> None:
            if gone:
                return
            if isinstance(admitted, Reject):
                written: Any = self._refuse(request, view, Reject(admitted.status, admitted.reason))
            else:
                written = answer()
            if written is not NOT_DONE_YET:
                request.write(written)
                request.finish()

        def failed(failure: Failure) -> None:
            _log.failure("portal answer for path={path!r}", failure, path=view.shown_path)
            decided(Reject(503, "the portal cannot decide now"))

        portal.ask(client, view.target, headers).addCallback(decided).addErrback(failed)
        return NOT_DONE_YET

    def _refuse(self, request: Request, view: RequestView, reject: Reject) -> bytes:
        """Log reject with the view's redacted path, and answer it as a text body."""
        client = getattr(request, "tunnelgw_client", None) or format_address(request.getClientAddress())
        reject = Reject(reject.status, view.scrub(reject.reason))
        log_refusal(client, view.shown_path, reject, "request")
        return self._status(request, reject)

    def _status(self, request: Request, reject: Reject) -> bytes:
        """The status and its reason as the answer's text."""
        request.setResponseCode(reject.status, responses.get(reject.status, "Error").encode("ascii"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"{reject.status} {reject.reason}\n".encode("utf-8")

    def _upgrade(self, request: Request, head: RequestHead) -> int:
        """
        An upgrade on a kept-alive connection: take the connection away from
        twisted.web and give it to the gateway with twisted.web's parse of the
        head.  What the client sent after the head goes to the session, held
        (bounded) until its 101, never parsed as another request.
        """
        channel = request.channel
        transport: Any = channel.transport
        transport.pauseProducing()
        front = getattr(channel, "front", None)
        if front is not None:
            front.upgraded(channel)
        # twisted.web's channel must let go of the connection entirely: its idle
        # timer would otherwise cut a long session, and it is registered as the
        # transport's producer, which the session needs to be instead.
        channel.setTimeout(None)
        transport.unregisterProducer()
        channel.transport = None
        early = b"".join(channel._dataBuffer)
        channel._dataBuffer = []
        session = self._factory.upgrade(transport, head, early, request)
        # Bytes read with the head reach rawDataReceived once render returns.
        channel.rawDataReceived = session.dataReceived if session is not None else (lambda data: None)  # type: ignore[method-assign]
        channel.lineReceived = channel.rawDataReceived  # type: ignore[method-assign]
        return NOT_DONE_YET
