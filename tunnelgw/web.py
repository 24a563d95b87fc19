"""
The HTTP face of the gateway: a twisted.web resource that routes each
request and hands WebSocket upgrades to a :class:`GatewayProtocol`.

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
from typing import Any, Mapping, Sequence

from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tunnelgw.core.config import Alias, PrefixRule
from tunnelgw.files import choose_alias, serve
from tunnelgw.front import HandshakeDeadlineProtocol
from tunnelgw.protocol import GatewayFactory, GatewayProtocol, format_address
from tunnelgw.core.routing import Reject, Route, normalise_path
from tunnelgw.backends.websocket import WebSocketSession, proxy_http
from tunnelgw.core.wsurl import is_websocket_target
from tunnelgw.topology import JsonAnswer, Redirect

__all__ = ["GatewayResource"]

_log = Logger(namespace="tunnelgw")


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

    @property
    def factory(self) -> GatewayFactory:
        """The factory whose rules and topology this resource applies."""
        return self._factory

    def render(self, request: Request) -> bytes | int:
        """Answer one request: a session, a page, or a status with its reason."""
        topology = self._factory.topology
        if topology is not None:
            answer = self._screen(request, topology)
            if answer is not None:
                return answer
        route = self._factory.route(request.path)
        if _is_upgrade(request):
            if isinstance(route, Reject):
                return self._refuse(request, route)
            if request.method != b"GET":
                return self._refuse(request, Reject(405, "WebSocket handshakes use GET"))
            return self._upgrade(request, route)
        page = self._pages.get(request.path.decode("latin-1"))
        if page is not None and request.method in (b"GET", b"HEAD"):
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"cache-control", b"no-cache")
            return page
        served = self._serve_file(request, route)
        if served is not None:
            return served  # type: ignore[return-value]
        if isinstance(route, Reject):
            return self._refuse(request, route)
        if is_websocket_target(route.target):
            outcome = proxy_http(self._factory, request, route)
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
        """Apply the topology (origins, token routes, redirects, lookups); None passes on."""
        client = topology.client_of(request)
        peer = getattr(request.getClientAddress(), "host", None)
        request.tunnelgw_client = client if client != peer else None  # type: ignore[attr-defined]
        decision = topology.screen(request, client, _is_upgrade(request))
        if decision is None:
            return None
        if isinstance(decision, Reject):
            return self._refuse(request, decision)
        if isinstance(decision, Redirect):
            _log.info("redirected client={client} path={path!r} location={location} reason={reason!r}",
                      client=client, path=request.path.decode("latin-1"), location=decision.location,
                      reason=decision.reason)
            request.setResponseCode(307)
            request.setHeader(b"location", decision.location.encode("utf-8"))
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return f"307 {decision.reason}\n".encode("utf-8")
        if isinstance(decision, JsonAnswer):
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            return json.dumps(decision.body).encode("utf-8")
        if request.method != b"GET":
            return self._refuse(request, Reject(405, "WebSocket handshakes use GET"))
        return self._upgrade(request, decision)

    def _refuse(self, request: Request, reject: Reject) -> bytes:
        client = getattr(request, "tunnelgw_client", None) or format_address(request.getClientAddress())
        _log.info("request refused client={client} path={path!r} status={status} reason={reason!r}",
                  client=client, path=request.path.decode("latin-1"),
                  status=reject.status, reason=reject.reason)
        request.setResponseCode(reject.status, responses.get(reject.status, "Error").encode("ascii"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"{reject.status} {reject.reason}\n".encode("utf-8")

    def _upgrade(self, request: Request, route: Route) -> int:
        """
        Take the connection away from twisted.web and give it to a session,
        replaying the request to Autobahn, which answers the handshake.
        """
        channel = request.channel
        transport: Any = channel.transport
        if isinstance(transport, HandshakeDeadlineProtocol):
            # The handshake deadline ends here (the head was read) and its guard
            # steps out: the session sits right on the real (TCP or TLS) transport.
            transport.request_read()
            transport = transport.transport
        protocol = WebSocketSession() if is_websocket_target(route.target) else GatewayProtocol()
        protocol.factory = self._factory
        protocol.route = route
        protocol.client_address = getattr(request, "tunnelgw_client", None)
        # twisted.web's channel must let go of the connection entirely: its idle
        # timer would otherwise cut a long session, and it is registered as the
        # transport's producer, which our relay needs to be instead.
        channel.setTimeout(None)
        channel.transport = None
        transport.unregisterProducer()
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = protocol
        elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
            transport.protocol.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        protocol.makeConnection(transport)
        # twisted.web pauses reading while it handles a request; resume for the session.
        transport.resumeProducing()
        # Bytes the client sent right after its request head (frames sent before
        # the 101) were read with it; twisted.web hands them to rawDataReceived
        # once render returns, and from then on they belong to the session.
        channel.rawDataReceived = protocol.dataReceived  # type: ignore[method-assign]
        head = [request.method + b" " + request.uri + b" HTTP/1.1"]
        head += [name + b": " + b", ".join(values) for name, values in request.requestHeaders.getAllRawHeaders()]
        protocol.dataReceived(b"\r\n".join(head) + b"\r\n\r\n")
        return NOT_DONE_YET
