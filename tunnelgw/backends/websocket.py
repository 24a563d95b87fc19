"""
WebSocket backends (``ws://``, ``wss://``): each client session gets a
WebSocket connection of its own to the backend, made with Autobahn's client
over a Twisted endpoint (TCP, or TLS with certificate and host name checks).

- The client's handshake is answered only once the backend's succeeded: the
  backend's subprotocol choice is returned to the client; a backend that
  refuses gives the client a 502 naming its answer, a timeout a 504.
- Frames are relayed both ways as their bytes arrive, with their opcode,
  length and FIN bit unchanged, so message boundaries, types and fragment
  boundaries are kept and no message is ever held whole.  A pong is never
  put inside a frame still being relayed: it waits for the frame's end.
- Close code and reason pass through both ways; a side that drops its
  connection without a close makes the other side get 1001 or 1011.
- The two transports are each other's producers (flow control both ways).
- Plain HTTP requests on such a route are reverse-proxied to the matching
  ``http://`` or ``https://`` URL (:mod:`tunnelgw.backends.http`), so that a
  backend's page and scripts load through the gateway.

Decisions come from :mod:`tunnelgw.core.wsrelay`; this module moves events.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any, Optional, Sequence, Union

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectingRequest, ConnectionDeny, ConnectionRequest
from autobahn.websocket.xormasker import create_xor_masker
from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, ISSLTransport, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS, trustRootFromCertificates
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from tunnelgw.backends.tcp import classify_connect_error
from tunnelgw.core.config import RouteOptions
from tunnelgw.backends.http import proxy_request
from tunnelgw.metrics import route_label
from tunnelgw.protocol import GatewayFactory, GatewaySession
from tunnelgw.core.relay import CLOSE_GOING_AWAY, SessionRecord, connect_rejection
from tunnelgw.core.routing import Reject, Route
from tunnelgw.core.wsrelay import backend_target, forwarded_headers, frame_header, handshake_refusal, lost_close
from tunnelgw.core.wsurl import WebSocketTarget

__all__ = [
    "BackendRefusal",
    "BackendWebSocket",
    "WebSocketBackends",
    "WebSocketSession",
    "proxy_http",
    "websocket_backends",
    "load_trust_root",
]

_log = Logger(namespace="tunnelgw")
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class BackendRefusal(Exception):
    """A WebSocket backend could not be opened; ``reject`` is the client's answer."""

    def __init__(self, reject: Reject) -> None:
        super().__init__(f"{reject.status} {reject.reason}")
        self.reject = reject


def load_trust_root(path: str) -> Any:
    """
    The CA certificates of a PEM file as a Twisted trust root.

    :raises ValueError: naming the file and what is wrong with it.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read cafile {path!r}: {e.strerror or e}") from None
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise ValueError(f"cafile {path!r} holds no PEM certificate")
    try:
        return trustRootFromCertificates([Certificate.loadPEM(block) for block in blocks])
    except Exception as e:
        raise ValueError(f"cafile {path!r} holds a bad certificate: {e}") from None


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedTLS:
    """TLS to a backend without any certificate check (``verify=off``); SNI is still sent."""

    def __init__(self, hostname: str) -> None:
        self._context = CertificateOptions(verify=False).getContext()
        ip = isIPAddress(hostname) or isIPv6Address(hostname)
        self._server_name = None if ip else hostname.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """A client connection that checks nothing."""
        connection = SSL.Connection(self._context, None)
        if self._server_name:
            connection.set_tlsext_host_name(self._server_name)
        connection.set_app_data(tlsProtocol)
        return connection


class _RelayedHop:
    """
    What both WebSocket connections of a session do: relay each received frame
    to the other (:attr:`_peer`) as it streams in, and send what the other
    relays.  Events that arrive before the peer is attached are held (and
    reading paused), so nothing is lost between the backend's handshake and
    the client's.
    """

    _peer: Optional["_RelayedHop"] = None
    _held: Optional[list[tuple[str, tuple[Any, ...]]]] = None
    _send_left = 0
    _masker: Any = None
    _pending_pong: Optional[bytes] = None
    _received = 0
    #: True on the client-facing side; decides which close the other side gets.
    _from_client = False
    #: Client-to-server frames must be masked.
    _mask_frames = False
    bytes_in = 0
    bytes_out = 0

    # Provided by Autobahn's protocol classes.
    transport: Any
    state: int
    STATE_OPEN: int
    current_frame: Any
    failedByMe: bool
    maxFramePayloadSize: int
    maxMessagePayloadSize: int
    remoteCloseCode: Optional[int]
    remoteCloseReason: Optional[str]

    # Receiving: Autobahn's buffering defaults are skipped, its size checks kept.

    def onMessageBegin(self, isBinary: bool) -> None:
        """A message starts: count its size afresh (nothing is buffered)."""
        self._received = 0

    def onMessageFrameBegin(self, length: int) -> None:
        """Check the limits Autobahn would, then start the same frame on the other side."""
        self._received += length
        if 0 < self.maxMessagePayloadSize < self._received:
            self._max_message_size_exceeded(  # type: ignore[attr-defined]
                self._received, self.maxMessagePayloadSize,
                f"received WebSocket message size {self._received} exceeds payload limit of "
                f"{self.maxMessagePayloadSize} octets")
            return
        if 0 < self.maxFramePayloadSize < length:
            self._max_message_size_exceeded(  # type: ignore[attr-defined]
                length, self.maxFramePayloadSize,
                f"received WebSocket frame size {length} exceeds payload limit of {self.maxFramePayloadSize} octets")
            return
        frame = self.current_frame
        peer = self._peer
        if peer is not None:
            peer.relay_frame_begin(frame.opcode, frame.fin, length)
        else:
            self._hold("relay_frame_begin", frame.opcode, frame.fin, length)

    def onMessageFrameData(self, payload: bytes) -> None:
        """Relay a piece of a frame's payload as soon as it arrives."""
        if self.failedByMe or not payload:
            return
        self.bytes_in += len(payload)
        peer = self._peer
        if peer is not None:
            peer.relay_frame_data(payload)
        else:
            self._hold("relay_frame_data", payload)

    def onMessageFrameEnd(self) -> None:
        """Nothing to do: the frame's bytes were relayed as they came."""

    def onMessageEnd(self) -> None:
        """Nothing to do: the last frame carried FIN."""

    def _hold(self, name: str, *args: Any) -> None:
        if self._held is not None:
            self._held.append((name, args))
            self.transport.pauseProducing()

    def attach(self, peer: "_RelayedHop") -> None:
        """Relay to peer from now on, first what was held."""
        self._peer = peer
        held, self._held = self._held, None
        for name, args in held or ():
            getattr(peer, name)(*args)
        if held and self.transport is not None:
            self.transport.resumeProducing()

    # Sending what the other side relays.

    def relay_frame_begin(self, opcode: int, fin: bool, length: int) -> None:
        """Write a frame header; its payload follows through :meth:`relay_frame_data`."""
        if self.state != self.STATE_OPEN:
            return
        mask = os.urandom(4) if self._mask_frames else b""
        self.sendData(frame_header(opcode, fin, length, mask))  # type: ignore[attr-defined]
        self._masker = create_xor_masker(mask, length) if mask and length else None
        self._send_left = length
        if not length:
            self._frame_sent()

    def relay_frame_data(self, payload: bytes) -> None:
        """Write (masking when needed) a piece of the frame under way."""
        if self.state != self.STATE_OPEN or not self._send_left:
            return
        masker = self._masker
        self.sendData(masker.process(payload) if masker is not None else payload)  # type: ignore[attr-defined]
        self.bytes_out += len(payload)
        self._send_left -= len(payload)
        if not self._send_left:
            self._frame_sent()

    def _frame_sent(self) -> None:
        self._masker = None
        pong, self._pending_pong = self._pending_pong, None
        if pong is not None:
            self.sendPong(pong)  # type: ignore[attr-defined]

    def onPing(self, payload: bytes) -> None:
        """Answer pings on this hop, but never inside a frame still being relayed."""
        if self._send_left:
            self._pending_pong = payload
        else:
            super().onPing(payload)  # type: ignore[misc]

    def relay_close(self, code: Optional[int], reason: Optional[str]) -> None:
        """Close this side with the other side's code and reason (no code: an empty close)."""
        if self.state != self.STATE_OPEN:
            return
        if self._send_left:
            # A close frame may not cut into a frame under way, and the rest of
            # that frame will never come: end the connection instead.
            self.dropConnection(abort=True)  # type: ignore[attr-defined]
            return
        self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8") if reason and code else None,  # type: ignore[attr-defined]
                            isReply=False)

    def onCloseFrame(self, code: Optional[int], reasonRaw: Optional[bytes]) -> Optional[bool]:
        """Answer a close as Autobahn does, then pass its code and reason on."""
        was_open = self.state == self.STATE_OPEN
        if was_open and self._send_left:
            # Our reply would land inside an unfinished frame.
            self.dropConnection(abort=True)  # type: ignore[attr-defined]
            self._to_peer("relay_close", code, reasonRaw.decode("utf-8", "replace") if reasonRaw else None)
            return True
        result = super().onCloseFrame(code, reasonRaw)  # type: ignore[misc]
        if was_open and not self.failedByMe:
            self._to_peer("relay_close", self.remoteCloseCode, self.remoteCloseReason)
        return result  # type: ignore[no-any-return]

    def _to_peer(self, name: str, *args: Any) -> None:
        peer = self._peer
        if peer is not None:
            getattr(peer, name)(*args)
        else:
            self._hold(name, *args)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        """This side ended: tell the other side (which closes too, if it has not)."""
        self._to_peer("peer_lost")
        self._peer = None

    def peer_lost(self) -> None:
        """
        The other side's connection ended: stop relaying, read again (it may
        have paused us) and close, unless a close was passed on already.
        """
        self._peer = None
        transport = self.transport
        if transport is not None:
            transport.unregisterProducer()
            transport.resumeProducing()
        close = lost_close(not self._from_client, "")
        self.relay_close(close.code, close.reason)


class BackendWebSocket(_RelayedHop, WebSocketClientProtocol):  # type: ignore[misc]
    """
    The gateway's WebSocket connection to a backend, owned by one session.

    :ivar opened: fires with this protocol when the backend's handshake
        succeeded, or fails with :class:`BackendRefusal`; cancelling it aborts.
    """

    factory: "_BackendFactory"
    _mask_frames = True

    def __init__(self) -> None:
        super().__init__()
        self.opened: defer.Deferred[BackendWebSocket] = defer.Deferred(self._cancel)
        self._held = []
        self._refusal: Optional[tuple[int, str]] = None
        self._handshake_failure: Optional[str] = None
        self._lost: Optional[BaseException] = None

    def _cancel(self, _: object) -> None:
        self._held = None
        if self.transport is not None:
            self.transport.abortConnection()

    def onConnecting(self, transport_details: Any) -> ConnectingRequest:
        """The handshake request: this session's path, subprotocols and forwarded headers."""
        return self.factory.request

    def failHandshake(self, reason: str) -> None:
        """Remember why the backend's handshake failed (its HTTP status, if any)."""
        parts = (getattr(self, "http_status_line", None) or "").split(None, 2)
        if len(parts) >= 2 and parts[1].isdigit() and parts[1] != "101":
            self._refusal = (int(parts[1]), parts[2] if len(parts) > 2 else "")
        self._handshake_failure = reason
        super().failHandshake(reason)

    def connectionLost(self, reason: Failure = error.ConnectionDone()) -> None:  # type: ignore[assignment]
        """Remember the transport's reason (a TLS error, say) before Autobahn reports the close."""
        self._lost = reason.value
        super().connectionLost(reason)

    def onOpen(self) -> None:
        """The backend accepted: the session may now answer its client."""
        if not self.opened.called:
            self.opened.callback(self)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        """Before the handshake: fail :attr:`opened`.  After: tell the session."""
        if not self.opened.called:
            self._held = None
            self.opened.errback(BackendRefusal(self._why_not_opened()))
            return
        super().onClose(wasClean, code, reason)

    def _why_not_opened(self) -> Reject:
        if self._refusal is not None:
            return handshake_refusal(*self._refusal)
        if self._handshake_failure is not None:
            return handshake_refusal(None, self._handshake_failure)
        lost = self._lost
        if lost is not None and not isinstance(lost, (error.ConnectionDone, error.ConnectionLost)):
            unavailable = classify_connect_error(lost, self.factory.timeout)
            return connect_rejection(unavailable.failure, unavailable.detail)
        return handshake_refusal(None, "the backend closed the connection")


class _BackendFactory(WebSocketClientFactory):
    """Makes the one :class:`BackendWebSocket` of one session."""

    protocol = BackendWebSocket  # type: ignore[assignment]

    def __init__(self, reactor: Any, request: ConnectingRequest, timeout: float) -> None:
        super().__init__(reactor=reactor, useragent=None)
        self.request = request
        # Autobahn checks the backend's subprotocol choice against this list.
        self.protocols = list(request.protocols)
        self.timeout = timeout
        self.noisy = False
        self.setProtocolOptions(
            # The whole connect, handshake included, is bounded by the route's
            # connect timeout (txaio's timers are too coarse for it).
            openHandshakeTimeout=0,
            echoCloseCodeReason=True,
            closeHandshakeTimeout=5,
        )


class WebSocketBackends:
    """
    Opens WebSocket connections to backends, and proxies plain HTTP to them.

    Endpoints (and the trust roots of ``cafile=``) are made once per
    backend host and options, and kept up to ``cache_size``.
    """

    def __init__(self, reactor: Any, cache_size: int = 256) -> None:
        self._reactor = reactor
        self._cache_size = cache_size
        self._endpoints: OrderedDict[tuple[Any, ...], IStreamClientEndpoint] = OrderedDict()

    def endpoint(self, target: WebSocketTarget, options: RouteOptions) -> IStreamClientEndpoint:
        """The client endpoint for a backend: TCP, wrapped in TLS for ``wss://``."""
        key = (target.secure, target.host, target.port, options.connect_timeout, options.cafile, options.verify)
        endpoint: Any = self._endpoints.get(key)
        if endpoint is not None:
            self._endpoints.move_to_end(key)
            return endpoint
        endpoint = HostnameEndpoint(self._reactor, target.host, target.port, timeout=options.connect_timeout)
        if target.secure:
            creator: Any
            if not options.verify:
                creator = _UnverifiedTLS(target.host)
            else:
                trust = load_trust_root(options.cafile) if options.cafile else None
                creator = optionsForClientTLS(target.host, trustRoot=trust)
            endpoint = wrapClientTLS(creator, endpoint)
        self._endpoints[key] = endpoint
        if len(self._endpoints) > self._cache_size:
            self._endpoints.popitem(last=False)
        return endpoint

    def _refusal(self, failure: Failure, timeout: float) -> Failure:
        if failure.check(BackendRefusal):
            return failure
        unavailable = classify_connect_error(failure.value, timeout)
        return Failure(BackendRefusal(connect_rejection(unavailable.failure, unavailable.detail)))

    def connect(self, target: WebSocketTarget, options: RouteOptions, protocols: Sequence[str],
                headers: dict[str, str], origin: Optional[str]) -> "defer.Deferred[BackendWebSocket]":
        """
        Open a WebSocket to target, offering protocols; the Deferred fires with
        the open :class:`BackendWebSocket` or fails with :class:`BackendRefusal`
        (502, or 504 after the route's connect timeout).  Cancel it to give up.
        """
        try:
            endpoint: Any = self.endpoint(target, options)
        except ValueError as e:
            return defer.fail(BackendRefusal(Reject(502, f"backend TLS settings: {e}")))
        host = f"[{target.host}]" if ":" in target.host else target.host
        request = ConnectingRequest(host=host, port=target.port, resource=target.resource, headers=headers,
                                    origin=origin, protocols=list(protocols))
        timeout = options.connect_timeout
        d: Any = endpoint.connect(_BackendFactory(self._reactor, request, timeout))
        d.addCallback(lambda backend: backend.opened)
        d.addTimeout(timeout, self._reactor)
        d.addErrback(self._refusal, timeout)
        return d

    def proxy_http(self, request: Request, target: WebSocketTarget, options: RouteOptions) -> Union[int, Reject]:
        """
        Reverse-proxy a plain HTTP request to the backend's ``http(s)://`` URL
        over the same endpoint as the route's WebSockets
        (:func:`tunnelgw.backends.http.proxy_request`); connect failures answer
        502 or 504, bad TLS settings 502.
        """
        try:
            endpoint = self.endpoint(target, options)
        except ValueError as e:
            return Reject(502, f"backend TLS settings: {e}")
        return proxy_request(self._reactor, request, target, options, endpoint)


class WebSocketSession(_RelayedHop, GatewaySession):  # type: ignore[misc]
    """
    One client session on a WebSocket route: its own WebSocket connection to
    the backend, frames relayed one by one both ways.  The handshake is
    answered once the backend's has succeeded.  Limits, timers, logs and
    metrics are the gateway's, as for every session (:class:`GatewaySession`).
    """

    _from_client = True
    _backend: Optional[BackendWebSocket] = None

    def onConnect(self, request: ConnectionRequest) -> Any:
        """Open the backend with the client's subprotocols; the 101 waits for it."""
        route = self.route
        if route is None:
            raise ConnectionDeny(404, "no route for this path")
        # A close's code and reason are echoed to its sender, as most peers do.
        self.echoCloseCodeReason = True
        query = self.http_request_uri.partition("?")[2]
        target = backend_target(route, query.encode("latin-1", "replace"))
        if isinstance(target, Reject):
            self._log_rejection(request.path, target)
            raise ConnectionDeny(target.status, target.reason)
        refused = self._begin(route, request.path, target.url)
        if refused is not None:
            raise ConnectionDeny(refused.status, refused.reason)
        headers = forwarded_headers(route.options.forward, self.client_host(),
                                    ISSLTransport.providedBy(self.transport), request.headers.get("host"),
                                    request.headers)
        origin = headers.pop("Origin", None)
        reactor = self.factory.reactor
        connect_started = reactor.seconds()
        self._connecting = websocket_backends(self.factory).connect(
            target, route.options, request.protocols, headers, origin)

        def connected(backend: BackendWebSocket) -> Optional[str]:
            self._connecting = None
            self._backend = backend
            self.factory.metrics.connected(route_label(route), reactor.seconds() - connect_started)
            return backend.websocket_protocol_in_use  # type: ignore[no-any-return]

        def failed(failure: Failure) -> None:
            self._connecting = None
            failure.trap(BackendRefusal)
            reject = failure.value.reject
            self._log_rejection(request.path, reject, "backend")
            raise ConnectionDeny(reject.status, reject.reason)

        return self._connecting.addCallbacks(connected, failed)

    def onOpen(self) -> None:
        """Start relaying frames between the client and the backend."""
        backend, self._backend = self._backend, None
        if backend is None or self._record is None:
            return
        if self.state != self.STATE_OPEN:
            backend.dropConnection(abort=True)
            return
        self._peer = backend
        self._open(backend.transport)
        backend.attach(self)

    def _backend_transport(self) -> Any:
        peer = self._peer
        return peer.transport if peer is not None else None

    def _update_counts(self, record: SessionRecord) -> None:
        record.bytes_up, record.bytes_down = self.bytes_in, self.bytes_out

    def _close_backend(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.dropConnection(abort=True)
        peer = self._peer
        if peer is not None:
            # The backend gets a proper close; its connection goes when it answers
            # (or after Autobahn's close handshake timeout).
            peer.relay_close(CLOSE_GOING_AWAY, "session closed by the gateway")

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        """The client left (or was closed): end the backend side, log the session."""
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.dropConnection(abort=True)
        super().onClose(wasClean, code, reason)
        self._end(wasClean, code, reason, abandoned=connecting is not None)


def websocket_backends(factory: GatewayFactory) -> WebSocketBackends:
    """The gateway factory's connector to WebSocket backends, made on first use."""
    if factory.websocket_backends is None:
        factory.websocket_backends = WebSocketBackends(factory.reactor)
    backends: WebSocketBackends = factory.websocket_backends
    return backends


def proxy_http(factory: GatewayFactory, request: Request, route: Route) -> Union[int, Reject]:
    """Reverse-proxy a plain HTTP request on a WebSocket route, or say why not."""
    target = backend_target(route, request.uri.partition(b"?")[2])
    if isinstance(target, Reject):
        return target
    return websocket_backends(factory).proxy_http(request, target, route.options)
