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

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tunnelgw.core.clientaddr import format_address
from tunnelgw.core.config import Alias, PrefixRule
from tunnelgw.core.http import RequestHead
from tunnelgw.core.routing import Reject, Route, normalise_path
from tunnelgw.core.targets import WebSocketURL
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
    (tokens in the URI and Referer fingerprinted by redact).
    """

    def formatter(timestamp: str, request: Request) -> str:
        from tunnelgw.accesslog import request_entry
        from tunnelgw.core.accesslog import combined_line

        return combined_line(request_entry(request, redact, time.time()))

    return formatter


def _is_upgrade(request: Request) -> bool:
    """True when the request asks for a WebSocket (``Upgrade: websocket``)."""
    upgrade = request.getHeader(b"upgrade") or b""
    return b"websocket" in [t.strip().lower() for t in upgrade.split(b",")]


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
        """Answer one request: a session, a page, or a status with its reason."""
        if _is_upgrade(request):
            return self._upgrade(request)
        topology = self._factory.topology
        if topology is not None:
            answer = self._screen(request, topology)
            if answer is not None:
                return answer
        route = self._factory.route(request.path)
        page = self._pages.get(request.path.decode("latin-1"))
        if page is not None and request.method in (b"GET", b"HEAD"):
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"cache-control", b"no-cache")
            return page
        served = self._serve_file(request, route)
        if served is not None:
            return served  # type: ignore[return-value]
        if isinstance(route, Reject):
            if route.status == 404:
                # No route, page or Alias claims the path (a browser's /favicon.ico, a
                # scanner): counted, not logged, so that real refusals stand out.
                self._factory.metrics.unrouted.inc()
                return self._answer(request, route)
            return self._refuse(request, route)
        if isinstance(route.backend, WebSocketURL):
            outcome = self._factory.websocket_backends.proxy_http(request, route)
            return self._refuse(request, outcome) if isinstance(outcome, Reject) else outcome
        request.setHeader(b"upgrade", b"websocket")
        return self._refuse(request, Reject(426, "this path is a WebSocket endpoint; open it with a WebSocket client"))

    def _serve_file(self, request: Request, route: object) -> object:
        """A file from the longest matching ``Alias``, or None when no alias takes the path."""
        if not self._aliases:
            return None
        path = normalise_path(request.path)
        if isinstance(path, Reject):
            return None
        chosen = choose_alias(self._aliases, path)
        if chosen is None:
            return None
        alias, segments = chosen
        if (isinstance(route, Route) and isinstance(route.rule, PrefixRule)
                and len(route.rule.path) > len(alias.path)):
            return None
        return serve(alias, segments, request)

    def _screen(self, request: Request, topology: Any) -> bytes | int | None:
        """Apply the topology to a plain request (token paths, lookups); None passes on."""
        client = topology.client_of(request)
        peer = getattr(request.getClientAddress(), "host", None)
        request.tunnelgw_client = client if client != peer else None  # type: ignore[attr-defined]
        decision = topology.screen(request, client, False, self._factory.handshake_rate)
        if decision is None:
            return None
        if isinstance(decision, Reject):
            return self._refuse(request, decision)
        if isinstance(decision, JsonAnswer):
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            return json.dumps(decision.body).encode("utf-8")
        if isinstance(decision, Redirect):
            request.setResponseCode(307)
            request.setHeader(b"location", decision.location.encode("utf-8"))
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return f"307 {decision.reason}\n".encode("utf-8")
        return self._refuse(request, Reject(426, "this path is a WebSocket endpoint; open it with a WebSocket client"))

    def _refuse(self, request: Request, reject: Reject) -> bytes:
        """Log the refusal once, with its reason, and answer it."""
        client = getattr(request, "tunnelgw_client", None) or format_address(request.getClientAddress())
        log_refusal(client, self._factory.redact(request.path.decode("latin-1")), reject, "request")
        return self._answer(request, reject)

    def _answer(self, request: Request, reject: Reject) -> bytes:
        """The status and its reason as the answer's text."""
        request.setResponseCode(reject.status, responses.get(reject.status, "Error").encode("ascii"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"{reject.status} {reject.reason}\n".encode("utf-8")

    def _upgrade(self, request: Request) -> int:
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
        headers = tuple((name.lower(), value) for name, values in request.requestHeaders.getAllRawHeaders()
                        for value in values)
        version = request.clientproto.partition(b"/")[2] or b"1.1"
        head = RequestHead(request.method, request.uri, version, headers)
        early = b"".join(channel._dataBuffer)
        channel._dataBuffer = []
        session = self._factory.upgrade(transport, head, early, request)
        # Bytes read with the head reach rawDataReceived once render returns.
        channel.rawDataReceived = session.dataReceived if session is not None else (lambda data: None)  # type: ignore[method-assign]
        channel.lineReceived = channel.rawDataReceived  # type: ignore[method-assign]
        return NOT_DONE_YET
