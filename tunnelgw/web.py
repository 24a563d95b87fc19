"""
The HTTP face of the gateway: a twisted.web resource that routes each
request and hands WebSocket upgrades to a :class:`GatewayProtocol`.

It can be the root of the gateway's own :class:`~twisted.web.server.Site` or be
mounted in another application's Site.  Rules always match the full request
path.  Requests that are not WebSocket upgrades get a plain answer: 404 where
no rule matches, 426 on a WebSocket path, the demo page where configured.
"""

from __future__ import annotations

from http.client import responses
from typing import Mapping

from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tunnelgw.protocol import GatewayFactory, format_address
from tunnelgw.routing import Reject

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
    """

    isLeaf = True

    def __init__(self, factory: GatewayFactory, pages: Mapping[str, bytes] = {}) -> None:
        super().__init__()
        self._factory = factory
        self._pages = dict(pages)

    def render(self, request: Request) -> bytes | int:
        """Answer one request: a session, a page, or a status with its reason."""
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
        if isinstance(route, Reject):
            return self._refuse(request, route)
        request.setHeader(b"upgrade", b"websocket")
        return self._refuse(request, Reject(426, "this path is a WebSocket endpoint; open it with a WebSocket client"))

    def _refuse(self, request: Request, reject: Reject) -> bytes:
        _log.info("request refused client={client} path={path!r} status={status} reason={reason!r}",
                  client=format_address(request.getClientAddress()), path=request.path.decode("latin-1"),
                  status=reject.status, reason=reject.reason)
        request.setResponseCode(reject.status, responses.get(reject.status, "Error").encode("ascii"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"{reject.status} {reject.reason}\n".encode("utf-8")

    def _upgrade(self, request: Request, route: object) -> int:
        """
        Take the connection away from twisted.web and give it to a session,
        replaying the request to Autobahn, which answers the handshake.
        """
        channel = request.channel
        transport = channel.transport
        # A handshake deadline (tunnelgw.front) ends here: the head was read.
        request_read = getattr(transport, "request_read", None)
        if request_read is not None:
            request_read()
        protocol = self._factory.buildProtocol(transport.getPeer())
        protocol.route = route
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
        channel.rawDataReceived = protocol.dataReceived
        head = [request.method + b" " + request.uri + b" HTTP/1.1"]
        head += [name + b": " + b", ".join(values) for name, values in request.requestHeaders.getAllRawHeaders()]
        protocol.dataReceived(b"\r\n".join(head) + b"\r\n\r\n")
        return NOT_DONE_YET
