"""
Reverse proxy for plain HTTP requests on routes to ws:// and wss:// backends,
on :class:`twisted.web.client.Agent` over the route's own client endpoint (so
``wss://`` routes' TLS settings, ``cafile=`` and ``verify=off``, apply).

- The request body is streamed to the backend from twisted.web's buffer of
  it; the response body is streamed to the client with flow control: the
  backend connection is paused while the client's transport is full, so a
  slow client never makes the gateway hold a whole response.
- Hop-by-hop headers are dropped both ways and every value of a repeated
  header is kept (:mod:`tunnelgw.core.proxyheaders`); the backend's status code
  and reason reach the client.
- The route's connect timeout bounds everything up to the backend's response
  head: a backend that cannot be reached gives 502, one that does not answer
  in time 504.  A client that goes away cancels the backend request.
"""

from __future__ import annotations

from http.client import responses
import re
from typing import Any, Optional

from twisted.internet import defer, error
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Cooperator
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import NO_BODY_CODES, PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from tunnelgw.backends.tcp import classify_connect_error
from tunnelgw.core.config import RouteOptions
from tunnelgw.core.clientaddr import format_address
from tunnelgw.core.proxyheaders import backend_request_headers, client_response_headers, head_connection_names
from tunnelgw.core.relay import connect_rejection
from tunnelgw.core.routing import Reject
from tunnelgw.core.wsrelay import forwarded_headers
from tunnelgw.core.wsurl import WebSocketTarget

__all__ = ["proxy_request"]

_log = Logger(namespace="tunnelgw")
_WRAPPED = (ResponseNeverReceived, RequestTransmissionFailed, RequestGenerationFailed, ResponseFailed)


#: How much of a response head is searched for its Connection header.
_HEAD_LIMIT = 64 * 1024
_HEAD_END = re.compile(rb"\r?\n\r?\n")


class _HeadSniffer(ProtocolWrapper):
    """
    Passes a backend's bytes to the Agent's protocol, noting on the way the
    names its response head lists in Connection, which Twisted's HTTP client
    keeps to itself (1xx interim heads are skipped).
    """

    connection_names: frozenset[bytes] = frozenset()
    _head: Optional[bytes] = b""

    def dataReceived(self, data: bytes) -> None:
        """Look for the end of the response head, then pass the bytes on."""
        head = self._head
        while head is not None:
            head += data
            end = _HEAD_END.search(head)
            if end is None:
                head = head if len(head) <= _HEAD_LIMIT else None
                break
            if re.match(rb"HTTP/\d\.\d 1\d\d", head):
                head, data = b"", head[end.end():]
                continue
            self.connection_names = head_connection_names(head[:end.start()])
            head = None
        self._head = head
        super().dataReceived(data)


@implementer(IStreamClientEndpoint)
class _SniffingEndpoint:
    """The route's endpoint, each connection seen through a :class:`_HeadSniffer`."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint
        self.sniffers: list[_HeadSniffer] = []

    def connect(self, protocolFactory: Any) -> "defer.Deferred[Any]":
        """Connect, giving the caller its own protocol (the sniffer sits below it)."""
        # Factory.noisy is public: no "Starting/Stopping factory" line per request, for the Agent's or ours.
        protocolFactory.noisy = False
        factory = WrappingFactory(protocolFactory)
        factory.noisy = False
        factory.protocol = _HeadSniffer

        def connected(sniffer: _HeadSniffer) -> Any:
            self.sniffers.append(sniffer)
            return sniffer.wrappedProtocol

        connecting: Any = self._endpoint.connect(factory)
        return connecting.addCallback(connected)


@implementer(IAgentEndpointFactory)
class _RouteEndpoint:
    """Gives the Agent the route's endpoint, whatever the URL says."""

    def __init__(self, endpoint: _SniffingEndpoint) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        """The route's endpoint (TCP, or TLS with the route's settings)."""
        return self._endpoint


@implementer(IPushProducer)
class _ResponseRelay(Protocol):
    """
    Writes a backend's response body to the client's request as it arrives,
    registered as the request's producer: a full client transport pauses the
    backend connection.
    """

    transport: Any

    def __init__(self, request: Request, shown_path: str) -> None:
        self._request = request
        self._shown_path = shown_path

    def connectionMade(self) -> None:
        """Start relaying, unless the client has already left."""
        if _gone(self._request):
            self.transport.stopProducing()
            return
        self._request.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        """Pass a piece of the body on."""
        if not _gone(self._request):
            self._request.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Finish the client's response, or cut it if the backend broke off mid-body."""
        request = self._request
        if _gone(request):
            return
        request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
            return
        _log.info("proxied response cut client={client} path={path!r} reason={reason!r}",
                  client=format_address(request.getClientAddress()), path=self._shown_path,
                  reason=_describe(reason.value))
        transport: Any = request.channel.transport if request.channel is not None else None
        if transport is not None:
            transport.abortConnection()

    def pauseProducing(self) -> None:
        """The client is full: stop reading the backend."""
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The client drained: read the backend again."""
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """The client is gone: drop the backend connection."""
        self.transport.stopProducing()


def _gone(request: Request) -> bool:
    """True when the client's response is over (finished, or the client left)."""
    return bool(request.finished or getattr(request, "_disconnected", False))


def _unwrap(reason: BaseException) -> BaseException:
    """The first underlying error of the Agent's wrapper exceptions."""
    while isinstance(reason, _WRAPPED) and reason.reasons:
        reason = reason.reasons[0].value
    return reason


def _describe(reason: BaseException) -> str:
    inner = _unwrap(reason)
    return str(inner).strip() or type(inner).__name__


def _rejection(reason: BaseException, timeout: float) -> Reject:
    """The client's answer when no response came from the backend."""
    inner = _unwrap(reason)
    if isinstance(inner, (error.ConnectionDone, error.ConnectionLost)) and inner is not reason:
        return Reject(502, "backend closed the connection without a response")
    unavailable = classify_connect_error(inner, timeout)
    return connect_rejection(unavailable.failure, unavailable.detail)


def _refuse(request: Request, reject: Reject, shown_path: str) -> None:
    """Answer a waiting request with a status and a text body, and log it (with the request view's path)."""
    _log.info("request refused client={client} path={path!r} status={status} reason={reason!r}",
              client=format_address(request.getClientAddress()), path=shown_path,
              status=reject.status, reason=reject.reason)
    request.setResponseCode(reject.status, responses.get(reject.status, "Error").encode("ascii"))
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.write(f"{reject.status} {reject.reason}\n".encode("utf-8"))
    request.finish()


def _body(reactor: Any, request: Request) -> Optional[FileBodyProducer]:
    """A producer of the request's body (buffered by twisted.web), or None when it is empty."""
    content = request.content
    if content is None:
        return None
    content.seek(0, 2)
    if not content.tell():
        return None
    content.seek(0, 0)
    cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))
    return FileBodyProducer(content, cooperator=cooperator)


def proxy_request(reactor: Any, request: Request, target: WebSocketTarget, options: RouteOptions,
                  endpoint: IStreamClientEndpoint, shown_path: str, from_proxy: bool = False) -> int:
    """
    Reverse-proxy a plain HTTP request to the backend's ``http(s)://`` URL
    through endpoint; the response is written to request as it streams in.

    :param shown_path: the request's path as logs show it (from its canonical view).
    :param from_proxy: the request came from a ``TrustedProxy`` peer (its forwarded headers pass).

    :return: ``NOT_DONE_YET``; the request is finished when the backend's
        response has been relayed, or answered 502/504 when none came.
    """
    incoming = {name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
                for name, values in request.requestHeaders.getAllRawHeaders()}
    client = request.getClientAddress()
    forwarded = forwarded_headers(options.forward, getattr(client, "host", None) or str(client), request.isSecure(),
                                  incoming.get("host"), incoming)
    headers = Headers()
    for name, values in backend_request_headers(list(request.requestHeaders.getAllRawHeaders()),
                                                target.authority, forwarded.items(), from_proxy):
        headers.setRawHeaders(name, values)
    timeout = options.connect_timeout
    sniffing = _SniffingEndpoint(endpoint)
    agent = Agent.usingEndpointFactory(reactor, _RouteEndpoint(sniffing))
    try:
        d = agent.request(request.method, target.http_url.encode("ascii"), headers, _body(reactor, request))
    except ValueError as e:
        _refuse(request, Reject(400, f"request cannot be passed on: {e}"), shown_path)
        return NOT_DONE_YET
    d.addTimeout(timeout, reactor)

    relays: list[_ResponseRelay] = []

    def respond(response: Any) -> None:
        relay = _ResponseRelay(request, shown_path)
        relays.append(relay)
        if _gone(request):
            response.deliverBody(relay)
            return
        request.setResponseCode(response.code, response.phrase)
        # The backend's headers replace twisted.web's defaults (Server, Date, Content-Type).
        request.defaultContentType = None
        named = sniffing.sniffers[-1].connection_names if sniffing.sniffers else frozenset()
        for name, values in client_response_headers(list(response.headers.getAllRawHeaders()), named):
            request.responseHeaders.setRawHeaders(name, values)
        # Twisted's client keeps Content-Length to itself (except for HEAD).
        if (isinstance(response.length, int) and request.method != b"HEAD"
                and response.code not in NO_BODY_CODES):
            request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % response.length])
        response.deliverBody(relay)

    def failed(failure: Failure) -> None:
        if not _gone(request):
            _refuse(request, _rejection(failure.value, timeout), shown_path)

    def client_gone(_: Failure) -> None:
        d.cancel()
        for relay in relays:
            if relay.transport is not None:
                relay.transport.stopProducing()

    d.addCallbacks(respond, failed)
    request.notifyFinish().addErrback(client_gone)
    return NOT_DONE_YET
