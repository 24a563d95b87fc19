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

Decisions come from :mod:`tunnelgw.core.wsrelay` (addresses, headers,
refusals) and :class:`tunnelgw.core.sessionrelay.SessionRelay` (every frame
after the handshake, the same relay as the client's side); this module
carries out their actions.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from autobahn.twisted.websocket import WebSocketClientFactory
from autobahn.websocket.types import ConnectingRequest
from twisted.internet import defer, error
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.server import Request

from tunnelgw.backends import BackendRefused, Carries, LinkOwner
from tunnelgw.backends.http import proxy_request
from tunnelgw.backends.tcp import EndpointCache, classify_connect_error
from tunnelgw.backends.tls import load_trust_root, stream_endpoint, tls_endpoint
from tunnelgw.core.config import RouteOptions
from tunnelgw.core.handshake import Handshake
from tunnelgw.core.relay import (
    BACKEND_CLOSE_GRACE,
    BACKEND_EARLY_LIMIT,
    CLOSE_BACKEND_FAILED,
    CLOSE_GOING_AWAY,
    Close,
    close_reason,
    connect_rejection,
)
from tunnelgw.core.routing import Reject, Route
from tunnelgw.core.sessionrelay import (
    Action,
    ArmTimer,
    CloseReceived,
    Drop,
    Failed,
    Forward,
    RelayState,
    Role,
    SessionRelay,
    Write,
)
from tunnelgw.core.wsrelay import backend_target, forwarded_headers, handshake_refusal, lost_close
from tunnelgw.core.wsurl import WebSocketTarget
from tunnelgw.relayend import RelayTimer, drop
from tunnelgw.sockettransport import SocketClientEndpoint
from tunnelgw.upstream import QuietClientProtocol, SharedOptions, protocol_options, unmask

__all__ = ["BackendWebSocket", "WebSocketBackends", "WebSocketLink", "load_trust_root"]


class BackendWebSocket(QuietClientProtocol):
    """
    The gateway's WebSocket connection to a backend, owned by one
    :class:`WebSocketLink`.  Autobahn runs the opening handshake; after it
    every byte goes through a :class:`~tunnelgw.core.sessionrelay.SessionRelay`
    (role client, carrying frames): the backend's frames stream to the link's
    owner as they arrive (held, with reading paused, until the session
    starts); the client's frames go to the backend as they are.

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
        self.relay: Optional[SessionRelay] = None
        # Until attach() (or detach()) the relay does not read: bytes after the 101
        # are held, reading paused, at most BACKEND_EARLY_LIMIT of them.
        self._attached = False
        self._early = b""
        self._lost_detail = ""
        self._refusal: Optional[tuple[int, str]] = None
        self._handshake_failure: Optional[str] = None
        self._lost: Optional[BaseException] = None
        self._relay_timer: Optional[RelayTimer] = None
        self._gone: Optional[defer.Deferred[None]] = None

    def _cancel(self, _: object) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    # Opening (Autobahn's).

    def onConnecting(self, transport_details: Any) -> ConnectingRequest:
        """The handshake request: this session's path, subprotocols and forwarded headers."""
        assert self.factory.request is not None
        return self.factory.request

    def failHandshake(self, reason: str) -> None:
        """Remember why the backend's handshake failed (its HTTP status, if any)."""
        parts = (getattr(self, "http_status_line", None) or "").split(None, 2)
        if len(parts) >= 2 and parts[1].isdigit() and parts[1] != "101":
            self._refusal = (int(parts[1]), parts[2] if len(parts) > 2 else "")
        self._handshake_failure = reason
        super().failHandshake(reason)

    def onOpen(self) -> None:
        """The backend accepted: from now on the relay reads; the session may answer its client."""
        # Autobahn keeps the handshake's request and response; nothing reads them again.
        self.http_request_data = self.http_response_data = b""
        self.relay = SessionRelay(Role.CLIENT, Carries.FRAMES, unmask, self.maxFramePayloadSize,
                                  self.maxMessagePayloadSize, close_timeout=BACKEND_CLOSE_GRACE)
        self._relay_timer = RelayTimer(self.factory.reactor, self.relay, self._carry_out)
        early, self.data = self.data, b""
        self.transport.pauseProducing()  # until the session attaches
        if early:
            self._hold(early)
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

    # Receiving.

    def dataReceived(self, data: bytes) -> None:
        """Before the 101 Autobahn's; after it the relay's (held, bounded, until the session attaches)."""
        relay = self.relay
        if relay is None:
            super().dataReceived(data)
        elif not self._attached:
            self._hold(data)
        else:
            self._carry_out(relay.receive(data, self.factory.reactor.seconds()))

    def _hold(self, data: bytes) -> None:
        """Keep bytes until the session attaches; more than BACKEND_EARLY_LIMIT fail the backend."""
        early = self._early + data
        if len(early) > BACKEND_EARLY_LIMIT:
            self._early = b""
            self._lost_detail = f"more than {BACKEND_EARLY_LIMIT} bytes before the session started"
            self.transport.abortConnection()
            return
        self._early = early

    def attach(self, owner: LinkOwner) -> None:
        """Relay to owner from now on, first what came early."""
        if self._lost_detail or (self.relay is not None and self.relay.state is RelayState.GONE):
            self._attached = True
            owner.backend_lost(lost_close(False, self._lost_detail))
            return
        self.owner = owner
        self._read()

    def detach(self) -> None:
        """
        The session is gone: from now on the relay still reads (so the
        backend's close reply is found and nothing piles up), and what it
        would forward is dropped.
        """
        self.owner = None
        if not self._lost_detail:
            self._read()

    def _read(self) -> None:
        """Let the relay read, first what came early (the client may have paused this backend: resume)."""
        self._attached = True
        early, self._early = self._early, b""
        relay = self.relay
        if relay is None or (relay.state is not RelayState.OPEN and relay.state is not RelayState.CLOSE_SENT):
            return
        if self.transport is not None:
            self.transport.resumeProducing()
        if early:
            self._carry_out(relay.receive(early, self.factory.reactor.seconds()))

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Forward):
                if self.owner is not None and action.chunks:
                    chunks = action.chunks
                    self.owner.backend_frames(chunks[0] if len(chunks) == 1 else b"".join(chunks), action.payload,
                                              action.left)
            elif isinstance(action, Write):
                if self.transport is not None:
                    if action.payload:  # a header and its payload, not joined (writeSequence copies neither)
                        self.transport.writeSequence((action.data, action.payload))
                    else:
                        self.transport.write(action.data)
            elif isinstance(action, CloseReceived):
                if self.owner is not None:
                    self.owner.backend_close(action.code, action.reason or None)
            elif isinstance(action, Failed):
                owner, self.owner = self.owner, None
                if owner is not None:
                    owner.backend_lost(Close(CLOSE_BACKEND_FAILED, close_reason(f"backend: {action.close.reason}")))
            elif isinstance(action, Drop):
                drop(self.transport, action)
            elif isinstance(action, ArmTimer):
                if self._relay_timer is not None:
                    self._relay_timer.arm(action.at)
            # PongReceived: the backend's pongs answer nothing of ours.

    # Sending what the client relays.

    def relay_frames(self, frames: bytes, left: int) -> None:
        """
        Write whole masked client frames as they are (the client's own masking
        keys go on; the last frame may continue: left payload bytes of it are
        still to come).
        """
        if self.relay is not None:
            self._carry_out(self.relay.send_frames(frames, left))

    def relay_close(self, code: Optional[int], reason: Optional[str]) -> None:
        """Close with the client's code and reason (no code: an empty close)."""
        if self.relay is not None:
            self._carry_out(self.relay.send_close(code, reason or "", self.factory.reactor.seconds()))

    # The end.

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Before the 101 Autobahn's tear-down (which fails :attr:`opened`); after it, tell the owner."""
        self._lost = reason.value
        relay = self.relay
        if relay is None:
            super().connectionLost(reason)
            return
        self.log_tls_error(reason)
        relay.connection_lost()
        timer, self._relay_timer = self._relay_timer, None  # (it refers back to this: no cycle left)
        if timer is not None:
            timer.cancel()
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.backend_lost(lost_close(False, ""))
        gone, self._gone = self._gone, None
        if gone is not None:
            gone.callback(None)

    def when_gone(self) -> "defer.Deferred[None]":
        """Fires once the connection is gone."""
        if self.transport is None or (self.relay is not None and self.relay.state is RelayState.GONE):
            return defer.succeed(None)
        if self._gone is None:
            self._gone = defer.Deferred()
        return self._gone

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        """Before the handshake completed: fail :attr:`opened`."""
        if not self.opened.called:
            self.opened.errback(BackendRefused(self._why_not_opened(), "backend"))


class _BackendFactory(SharedOptions, WebSocketClientFactory):
    """
    Makes the one :class:`BackendWebSocket` of one session: a configured
    factory per connect timeout is made once (Autobahn's factory set-up
    seeds the random module, makes a timer and parses a URL), and
    :meth:`for_request` copies it for each session's handshake request.
    """

    protocol = BackendWebSocket  # type: ignore[assignment]  # Twisted types it as a Protocol factory

    def __init__(self, reactor: Any, timeout: float) -> None:
        super().__init__(reactor=reactor, useragent=None)
        self.request: Optional[ConnectingRequest] = None
        self.timeout = timeout
        self.noisy = False
        # The whole connect, handshake included, is bounded by the route's
        # connect timeout (txaio's timers are too coarse for it); closes are
        # the relay's (SessionRelay echoes the backend's, within BACKEND_CLOSE_GRACE).
        self.setProtocolOptions(openHandshakeTimeout=0)

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
        secure, host, port, timeout, cafile, verify, reuse = key
        endpoint = stream_endpoint(self._reactor, host, port, timeout)
        if secure:  # TLS on the socket (tunnelgw.tlssocket): cafile= or the platform's trust, verify=off
            return tls_endpoint(self._reactor, endpoint, host, timeout, verify=verify,
                                trust_root=load_trust_root(cafile) if verify and cafile else None, reuse=reuse)
        return SocketClientEndpoint(endpoint, self._reactor)  # plain TCP on the gateway's own transport

    def forget_endpoints(self) -> None:
        """A reload: endpoints are made, and ``cafile=`` read, again (TLS sessions kept with them go too)."""
        self._endpoints.clear()

    def endpoint(self, target: WebSocketTarget, options: RouteOptions) -> IStreamClientEndpoint:
        """The client endpoint for a backend: TCP, wrapped in TLS for ``wss://``."""
        return self._endpoints.get((target.secure, target.host, target.port, options.connect_timeout,
                                    options.cafile, options.verify, options.session_reuse))

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
        return d

    def proxy_http(self, request: Request, route: Route, query: bytes, shown_path: str,
                   from_proxy: bool = False) -> Union[int, Reject]:
        """
        Reverse-proxy a plain HTTP request on a WebSocket route to the backend's
        ``http(s)://`` URL over the same endpoint as the route's WebSockets
        (:func:`tunnelgw.backends.http.proxy_request`), or say why not.

        :param query: the request's query; the path is the route's remainder.
        :param shown_path: the request's path as logs show it.
        :param from_proxy: the request came from a ``TrustedProxy`` peer (its forwarded headers pass).
        """
        target = backend_target(route, query)
        try:
            endpoint = self.endpoint(target, route.options)
        except ValueError as e:
            return Reject(502, f"backend TLS settings: {e}")
        return proxy_request(self._reactor, request, target, route.options, endpoint, shown_path, from_proxy)


class WebSocketLink:
    """
    A session's link to a WebSocket backend: frames relayed one by one both
    ways with opcode, length and FIN unchanged; subprotocol and close code
    and reason pass through.

    :param client_host: the client's address (for forwarded headers).
    :param secure: whether the client came over TLS.
    """

    #: Whole frames both ways, as they are.
    carries = Carries.FRAMES

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
                backend.transport.abortConnection()
            return backend.websocket_protocol_in_use

        return d.addCallback(opened)

    def start(self, owner: LinkOwner) -> None:
        """Relay the backend's frames to owner, first those that came early."""
        assert self._backend is not None
        self._backend.attach(owner)

    def client_frames(self, frames: bytes, left: int) -> None:
        """Whole masked final binary client frames (the last may go on for left payload bytes), relayed as they are."""
        if self._backend is not None and not self._closed:
            self._backend.relay_frames(frames, left)

    def client_payloads(self, payloads: list[bytes]) -> None:
        """Not used: a WebSocket hop carries frames, not payloads."""
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
        backend.detach()
        relay = backend.relay
        if relay is not None and relay.state is RelayState.OPEN:
            close = close if close is not None else Close(CLOSE_GOING_AWAY, "session closed by the gateway")
            backend.relay_close(close.code, close.reason)
        transport: Any = backend.transport
        if transport is not None and relay is not None and relay.state is not RelayState.GONE:
            transport.unregisterProducer()
            # loseConnection waits for the queue to drain: a backend that does not read is aborted.
            abort = self._backends._reactor.callLater(BACKEND_CLOSE_GRACE, transport.abortConnection)
            backend.when_gone().addBoth(lambda _: abort.cancel() if abort.active() else None)
