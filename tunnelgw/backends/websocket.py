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
from typing import Any, Optional, Union

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectingRequest
from autobahn.websocket.xormasker import create_xor_masker
from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from twisted.web.server import Request

from tunnelgw.backends import BackendRefused, LinkOwner
from tunnelgw.backends.http import proxy_request
from tunnelgw.backends.tcp import EndpointCache, classify_connect_error
from tunnelgw.backends.tls import UnverifiedTLS, load_trust_root
from tunnelgw.core.config import RouteOptions
from tunnelgw.core.frames import FrameScanner, frame_header
from tunnelgw.core.handshake import Handshake
from tunnelgw.core.relay import BACKEND_CLOSE_GRACE, CLOSE_GOING_AWAY, Close, connect_rejection
from tunnelgw.core.routing import Reject, Route
from tunnelgw.core.wsrelay import backend_target, forwarded_headers, handshake_refusal, lost_close
from tunnelgw.core.wsurl import WebSocketTarget
from tunnelgw.fastpath import immediate_writes
from tunnelgw.wsstate import QuietAdapter, SharedOptions, frame_fits, open_state, protocol_options

__all__ = ["BackendWebSocket", "WebSocketBackends", "WebSocketLink", "load_trust_root"]


class BackendWebSocket(QuietAdapter, WebSocketClientProtocol):  # type: ignore[misc]
    """
    The gateway's WebSocket connection to a backend, owned by one
    :class:`WebSocketLink`.  Received frames stream to the link's owner as
    they arrive (held, with reading paused, until the session starts); the
    client's frames are sent masked.

    :ivar opened: fires with this protocol when the backend's handshake
        succeeded, or fails with :class:`BackendRefused`; cancelling it aborts.
    """

    factory: "_BackendFactory"
    transport: Any
    maxFramePayloadSize: int
    maxMessagePayloadSize: int

    def __init__(self) -> None:
        super().__init__()
        self.opened: defer.Deferred[BackendWebSocket] = defer.Deferred(self._cancel)
        self.owner: Optional[LinkOwner] = None
        self._held: Optional[list[tuple[str, tuple[Any, ...]]]] = []
        self._refusal: Optional[tuple[int, str]] = None
        self._handshake_failure: Optional[str] = None
        self._lost: Optional[BaseException] = None
        self._received = 0
        self._send_left = 0
        self._masker: Any = None
        self._pending_pong: Optional[bytes] = None
        self._scanner: Optional[FrameScanner] = None
        self._frames_to: Any = None
        self.bytes_in = 0

    def _cancel(self, _: object) -> None:
        self._held = None
        if self.transport is not None:
            self.transport.abortConnection()

    # Opening.

    def _connectionMade(self) -> None:
        """Set up the WebSocket state and send the handshake request (no proxy, no Deferred, no debug formatting)."""
        immediate_writes(self.transport)
        open_state(self)
        self._actuallyStartHandshake(self.onConnecting(self._transport_details))

    def _connectionLost(self, reason: Any) -> None:
        """Autobahn's tear-down (which calls :meth:`onClose`), without its debug formatting."""
        WebSocketProtocol._connectionLost(self, reason)

    def onConnecting(self, transport_details: Any) -> ConnectingRequest:
        """The handshake request: this session's path, subprotocols and forwarded headers."""
        assert self.factory.request is not None
        return self.factory.request

    def _onConnect(self, response: Any) -> Any:
        """The backend's 101 is read: Autobahn's ``onConnect`` (without its debug formatting)."""
        return self.onConnect(response)

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
        # Autobahn keeps the handshake's request and response; nothing reads them again.
        self.http_request_data = self.http_response_data = b""
        if not self.opened.called:
            self.opened.callback(self)

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

    # Receiving: final binary frames pass as they are; other frames go
    # through Autobahn, whose buffering is skipped and size checks kept.

    def dataReceived(self, data: bytes) -> None:
        """Pass final binary frames to an owner that takes them whole, while Autobahn holds nothing; else parse."""
        scanner = self._scanner
        # Inside a frame the scanner reads on whatever happened meanwhile
        # (Autobahn would parse the frame's rest as a new frame).
        if scanner is None or scanner.at_boundary and (
                self.state != self.STATE_OPEN or self.owner is None
                or not (self.current_frame is None and not self.inside_message and not self.data)):
            self._dataReceived(data)
            return
        passed, payload, rest = scanner.feed(data)
        self.bytes_in += payload
        if passed and self.owner is not None and self.state == self.STATE_OPEN:
            self._frames_to(passed, payload, scanner.inside_frame)
        if rest is not None:
            self._dataReceived(rest)

    def onMessageBegin(self, isBinary: bool) -> None:
        """A message starts: count its size afresh (nothing is buffered)."""
        self._received = 0

    def onMessageFrameBegin(self, length: int) -> None:
        """Check the limits Autobahn would, then start the same frame towards the client."""
        if frame_fits(self, length):
            self._to_owner("backend_frame_begin", self.current_frame.opcode, self.current_frame.fin, length)

    def onMessageFrameData(self, payload: bytes) -> None:
        """Relay a piece of a frame's payload as soon as it arrives."""
        if self.failedByMe or not payload:
            return
        self.bytes_in += len(payload)
        self._to_owner("backend_frame_data", payload)

    def onMessageFrameEnd(self) -> None:
        """Nothing to do: the frame's bytes were relayed as they came."""

    def onMessageEnd(self) -> None:
        """Nothing to do: the last frame carried FIN."""

    def onCloseFrame(self, code: Optional[int], reasonRaw: Optional[bytes]) -> Optional[bool]:
        """Answer a close as Autobahn does, then pass its code and reason on."""
        was_open = self.state == self.STATE_OPEN
        if was_open and self._send_left:
            # Our reply would land inside an unfinished frame.
            self.dropConnection(abort=True)
            self._to_owner("backend_close", code, reasonRaw.decode("utf-8", "replace") if reasonRaw else None)
            return True
        result = super().onCloseFrame(code, reasonRaw)  # type: ignore[arg-type]
        if was_open and not self.failedByMe:
            self._to_owner("backend_close", self.remoteCloseCode, self.remoteCloseReason)
        return result  # type: ignore[no-any-return]

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        """Before the handshake: fail :attr:`opened`.  After: the session closes its client."""
        if not self.opened.called:
            self._held = None
            self.opened.errback(BackendRefused(self._why_not_opened(), "backend"))
            return
        self._to_owner("backend_lost", lost_close(False, ""))
        self.owner = None

    def _to_owner(self, name: str, *args: Any) -> None:
        owner = self.owner
        if owner is not None:
            getattr(owner, name)(*args)
        elif self._held is not None:
            self._held.append((name, args))
            self.transport.pauseProducing()

    def attach(self, owner: LinkOwner) -> None:
        """Relay to owner from now on, first what was held."""
        self.owner = owner
        # An owner that writes frames as they are (a session, not a recording) gets them unparsed.
        self._frames_to = getattr(owner, "backend_frames", None)
        if self._frames_to is not None:
            limits = [n for n in (self.maxFramePayloadSize, self.maxMessagePayloadSize) if n]
            self._scanner = FrameScanner(False, min(limits) if limits else 0)
        held, self._held = self._held, None
        for name, args in held or ():
            getattr(owner, name)(*args)
        if held and self.transport is not None:
            self.transport.resumeProducing()

    # Sending what the client relays.

    def relay_frame_begin(self, opcode: int, fin: bool, length: int) -> None:
        """Write a masked frame header; its payload follows through :meth:`relay_frame_data`."""
        if self.state != self.STATE_OPEN:
            return
        mask = os.urandom(4)
        self.sendData(frame_header(opcode, fin, length, mask))
        self._masker = create_xor_masker(mask, length) if length else None
        self._send_left = length
        if not length:
            self._frame_sent()

    def relay_frame_data(self, payload: bytes) -> None:
        """Write (masked) a piece of the frame under way."""
        if self.state != self.STATE_OPEN or not self._send_left:
            return
        self.sendData(self._masker.process(payload))
        self._send_left -= len(payload)
        if not self._send_left:
            self._frame_sent()

    def relay_frames(self, frames: bytes, left: int) -> None:
        """
        Write whole masked final binary frames of the client as they are (the
        client's own masking keys go on; the last frame may continue: left
        payload bytes of it are still to come).
        """
        if self.state != self.STATE_OPEN:
            return
        self.transport.write(frames)
        self._send_left = left
        if not left:
            self._frame_sent()

    def _frame_sent(self) -> None:
        self._masker = None
        pong, self._pending_pong = self._pending_pong, None
        if pong is not None:
            self.sendPong(pong)

    def onPing(self, payload: bytes) -> None:
        """Answer pings, but never inside a frame still being relayed (the latest waits)."""
        if self._send_left:
            self._pending_pong = payload
        else:
            super().onPing(payload)

    def relay_close(self, code: Optional[int], reason: Optional[str]) -> None:
        """Close with the client's code and reason (no code: an empty close)."""
        if self.state != self.STATE_OPEN:
            return
        if self._send_left:
            # A close may not cut into a frame under way, whose rest will never come.
            self.dropConnection(abort=True)
            return
        self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8") if reason and code else None,
                            isReply=False)


class _BackendFactory(SharedOptions, WebSocketClientFactory):
    """
    Makes the one :class:`BackendWebSocket` of one session: a configured
    factory per connect timeout is made once (Autobahn's factory set-up
    seeds the random module, makes a timer and parses a URL), and
    :meth:`for_request` copies it for each session's handshake request.
    """

    protocol = BackendWebSocket  # type: ignore[assignment]

    def __init__(self, reactor: Any, timeout: float) -> None:
        super().__init__(reactor=reactor, useragent=None)
        self.request: Optional[ConnectingRequest] = None
        self.timeout = timeout
        self.noisy = False
        self.setProtocolOptions(
            # The whole connect, handshake included, is bounded by the route's
            # connect timeout (txaio's timers are too coarse for it).
            openHandshakeTimeout=0,
            echoCloseCodeReason=True,
            closeHandshakeTimeout=BACKEND_CLOSE_GRACE,
        )

    def for_request(self, request: ConnectingRequest) -> "_BackendFactory":
        """A copy of this factory (options and all) for one session's handshake request."""
        protocol_options(self)  # made here once, so that every copy shares it
        one: _BackendFactory = object.__new__(type(self))
        one.__dict__.update(self.__dict__)
        one.request = request
        # Autobahn checks the backend's subprotocol choice against this list.
        one.protocols = list(request.protocols)
        return one


class WebSocketBackends:
    """
    Opens WebSocket connections to backends, and proxies plain HTTP to them.

    Endpoints (and the trust roots of ``cafile=``) are made once per backend
    host and options, and kept up to ``cache_size``.
    """

    def __init__(self, reactor: Any, cache_size: int = 256) -> None:
        self._reactor = reactor
        self._endpoints: EndpointCache[tuple[Any, ...]] = EndpointCache(self._make_endpoint, cache_size)
        # One per connect timeout in the configuration (few).
        self._factories: dict[float, _BackendFactory] = {}

    def _make_endpoint(self, key: tuple[Any, ...]) -> IStreamClientEndpoint:
        secure, host, port, timeout, cafile, verify = key
        endpoint: Any
        # An address needs no name resolution (HostnameEndpoint would ask a
        # thread for getaddrinfo on every connect).
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self._reactor, host, port, timeout=timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self._reactor, host, port, timeout=timeout)
        else:
            endpoint = HostnameEndpoint(self._reactor, host, port, timeout=timeout)
        if secure:
            creator: Any
            if not verify:
                creator = UnverifiedTLS(host)
            else:
                creator = optionsForClientTLS(host, trustRoot=load_trust_root(cafile) if cafile else None)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint  # type: ignore[no-any-return]

    def endpoint(self, target: WebSocketTarget, options: RouteOptions) -> IStreamClientEndpoint:
        """The client endpoint for a backend: TCP, wrapped in TLS for ``wss://``."""
        return self._endpoints.get((target.secure, target.host, target.port, options.connect_timeout,
                                    options.cafile, options.verify))

    def connect(self, target: WebSocketTarget, options: RouteOptions, protocols: tuple[str, ...],
                headers: dict[str, str], origin: Optional[str]) -> "defer.Deferred[BackendWebSocket]":
        """
        Open a WebSocket to target, offering protocols; the Deferred fires with
        the open :class:`BackendWebSocket` or fails with :class:`BackendRefused`
        (502, or 504 after the route's connect timeout).  Cancel it to give up.
        """
        try:
            endpoint: Any = self.endpoint(target, options)
        except ValueError as e:
            return defer.fail(BackendRefused(Reject(502, f"backend TLS settings: {e}"), "backend"))
        host = f"[{target.host}]" if ":" in target.host else target.host
        request = ConnectingRequest(host=host, port=target.port, resource=target.resource, headers=headers,
                                    origin=origin, protocols=list(protocols))
        timeout = options.connect_timeout
        factory = self._factories.get(timeout)
        if factory is None:
            factory = self._factories[timeout] = _BackendFactory(self._reactor, timeout)
        d: Any = endpoint.connect(factory.for_request(request))
        d.addCallback(lambda backend: backend.opened)
        d.addTimeout(timeout, self._reactor)

        def refused(failure: Failure) -> Failure:
            if failure.check(BackendRefused):
                return failure
            unavailable = classify_connect_error(failure.value, timeout)
            return Failure(BackendRefused(connect_rejection(unavailable.failure, unavailable.detail), "backend"))

        d.addErrback(refused)
        return d  # type: ignore[no-any-return]

    def proxy_http(self, request: Request, route: Route, query: bytes, shown_path: str) -> Union[int, Reject]:
        """
        Reverse-proxy a plain HTTP request on a WebSocket route to the backend's
        ``http(s)://`` URL over the same endpoint as the route's WebSockets
        (:func:`tunnelgw.backends.http.proxy_request`), or say why not.

        :param query: the request's query; the path is the route's remainder.
        :param shown_path: the request's path as logs show it.
        """
        target = backend_target(route, query)
        try:
            endpoint = self.endpoint(target, route.options)
        except ValueError as e:
            return Reject(502, f"backend TLS settings: {e}")
        return proxy_request(self._reactor, request, target, route.options, endpoint, shown_path)


class WebSocketLink:
    """
    A session's link to a WebSocket backend: frames relayed one by one both
    ways with opcode, length and FIN unchanged; subprotocol and close code
    and reason pass through.

    :param client_host: the client's address (for forwarded headers).
    :param secure: whether the client came over TLS.
    """

    byte_stream = False
    #: Client frames may be passed on as they are (:meth:`client_frames`).
    frame_relay = True

    def __init__(self, backends: WebSocketBackends, route: Route, query: bytes, client_host: str,
                 secure: bool, headers: dict[str, str], tls_client: str = "",
                 extra: Optional[dict[str, str]] = None) -> None:
        self._backends = backends
        self._tls_client = tls_client  # the verified client certificate's identity, for forward=tlsclient
        self._extra = extra or {}
        self._route = route
        self._query = query
        self._client_host = client_host
        self._secure = secure
        self._headers = headers
        self.description = route.target
        self.transport: Any = None
        self._target: Optional[WebSocketTarget] = None
        self._protocols: tuple[str, ...] = ()
        self._host: Optional[str] = None
        self._backend: Optional[BackendWebSocket] = None
        self._closed = False
        self._abort_call: Any = None

    def check(self, handshake: Handshake) -> Optional[Reject]:
        """Resolve the backend URL with the client's path remainder and query (routing checked it)."""
        target = backend_target(self._route, self._query)
        self._target = target
        self.description = target.url
        self._protocols = handshake.protocols
        self._host = handshake.host
        return None

    def connect(self) -> "defer.Deferred[Optional[str]]":
        """Open the backend offering the client's subprotocols; fires with the backend's choice."""
        assert self._target is not None
        headers = forwarded_headers(self._route.options.forward, self._client_host, self._secure, self._host,
                                    self._headers, self._tls_client)
        origin = headers.pop("Origin", None)
        headers.update(self._extra)
        d = self._backends.connect(self._target, self._route.options, self._protocols, headers, origin)

        def opened(backend: BackendWebSocket) -> Optional[str]:
            self._backend = backend
            self.transport = backend.transport
            if self._closed:
                backend.dropConnection(abort=True)
            return backend.websocket_protocol_in_use  # type: ignore[no-any-return]

        return d.addCallback(opened)  # type: ignore[no-any-return]

    def start(self, owner: LinkOwner) -> None:
        """Relay the backend's frames to owner, first those that came early."""
        assert self._backend is not None
        self._backend.attach(owner)

    def client_frame_begin(self, opcode: int, fin: bool, length: int) -> None:
        """Start the same frame towards the backend."""
        if self._backend is not None and not self._closed:
            self._backend.relay_frame_begin(opcode, fin, length)

    def client_frame_data(self, payload: bytes) -> None:
        """A piece of the frame under way."""
        if self._backend is not None and not self._closed:
            self._backend.relay_frame_data(payload)

    def client_frames(self, frames: bytes, left: int) -> None:
        """Whole masked final binary client frames (the last may go on for left payload bytes), relayed as they are."""
        if self._backend is not None and not self._closed:
            self._backend.relay_frames(frames, left)

    def client_payloads(self, payloads: list[bytes]) -> None:
        """Not used: a WebSocket hop relays frames, not payloads."""
        raise NotImplementedError("WebSocket links relay frames")

    def client_close(self, code: Optional[int], reason: Optional[str]) -> None:
        """Pass the client's close on."""
        if self._backend is not None:
            self._backend.relay_close(code, reason)

    def close(self, close: Optional[Close] = None) -> None:
        """A close (1001 unless told) to the backend; its connection is aborted if not gone within the grace."""
        if self._closed:
            return
        self._closed = True
        backend = self._backend
        if backend is None:
            return
        backend.owner = None
        if backend.state == backend.STATE_OPEN:
            close = close if close is not None else Close(CLOSE_GOING_AWAY, "session closed by the gateway")
            backend.relay_close(close.code, close.reason)
        transport: Any = backend.transport
        if transport is not None and backend.state != backend.STATE_CLOSED:
            transport.unregisterProducer()
            reactor = self._backends._reactor
            self._abort_call = reactor.callLater(BACKEND_CLOSE_GRACE, transport.abortConnection)
            backend.is_closed.addBoth(lambda _: self._abort_call.active() and self._abort_call.cancel())
