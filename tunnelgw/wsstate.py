"""
Autobahn's per-connection set-up and Twisted entry points, for the
gateway's two WebSocket protocols (the client's session,
:class:`tunnelgw.session.GatewaySession`, and the backend hop,
:class:`tunnelgw.backends.websocket.BackendWebSocket`), without the debug
lines Autobahn builds eagerly even when debug logging is off: a ``pformat``
of every protocol option and of the transport details, and ``hltype`` (which
styles a qualified name for a terminal) on every connect, read, write and close.
Measured on session set-up: about a quarter of the gateway's CPU per session
on a WS->WS route.  The transport details are the few fields the gateway
reads (peer, server or client, TLS or not): no process and thread id lookups
(two system calls per connection), no TLS channel binding or peer
certificate dictionary on open (a client certificate is read where a route
needs it, :func:`tunnelgw.certificates.client_certificate`): about 1.5% of
the CPU per session (ws:// sessions, three alternating runs each).

Kept in step with autobahn 26.x (``WebSocketProtocol._connectionMade``,
``WebSocketAdapterProtocol.connectionMade``, ``connectionLost`` and
``dataReceived`` in ``autobahn/twisted/websocket.py``, ``sendData``); the behaviour,
state and error logging (TLS errors) are Autobahn's.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Optional

from autobahn.twisted.util import peer2str
from autobahn.util import _is_tls_error, _maybe_tls_reason
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import TrafficStats, WebSocketProtocol
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from tunnelgw.core.frames import size_violation

__all__ = ["QuietAdapter", "SharedOptions", "frame_fits", "open_state", "protocol_options"]


#: Autobahn's send queue while nothing was ever queued (empty, so falsy and of length 0 as Autobahn reads it).
_NO_QUEUE: Any = ()


class SharedOptions:
    """
    Mixed into a WebSocket factory ahead of Autobahn's: its protocol options
    as one dict (:func:`protocol_options`), made again after each
    ``setProtocolOptions``, so that connections share it instead of each
    copying some forty options into its own ``__dict__``.
    """

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        super().setProtocolOptions(*args, **kwargs)  # type: ignore[misc]
        self._ws_options = None

    def resetProtocolOptions(self) -> None:
        super().resetProtocolOptions()  # type: ignore[misc]
        self._ws_options = None


def protocol_options(factory: Any) -> dict[str, Any]:
    """The factory's Autobahn options now (``CONFIG_ATTRS`` of its protocol), made once until they change."""
    options: Optional[dict[str, Any]] = factory.__dict__.get("_ws_options")
    if options is None:
        options = factory._ws_options = {name: getattr(factory, name) for name in factory.protocol.CONFIG_ATTRS}
    return options


def open_state(protocol: Any) -> None:
    """
    Set up a new connection's WebSocket state on protocol as Autobahn's
    ``WebSocketProtocol._connectionMade`` does.  Options not set on the
    protocol (or its class) are read from the factory's options of this
    moment (:class:`QuietAdapter`'s ``__getattr__``), not copied.
    """
    factory = protocol.factory
    protocol._ws_options = protocol_options(factory)
    protocol._perMessageCompress = None
    protocol.trackedTimings = None
    protocol.setTrackTimings(protocol.trackTimings)
    protocol.trafficStats = TrafficStats()
    protocol.state = WebSocketProtocol.STATE_CONNECTING
    protocol.send_state = WebSocketProtocol.SEND_STATE_GROUND
    protocol.data = b""
    protocol.send_queue = _NO_QUEUE  # a deque (630 bytes) only once Autobahn queues a chopped or sync send
    protocol.triggered = False
    protocol.utf8validator = Utf8Validator()
    protocol.wasMaxFramePayloadSizeExceeded = False
    protocol.wasMaxMessagePayloadSizeExceeded = False
    protocol.closedByMe = False
    protocol.failedByMe = False
    protocol.droppedByMe = False
    protocol.wasClean = False
    protocol.wasNotCleanReason = None
    protocol.wasServerConnectionDropTimeout = False
    protocol.wasOpenHandshakeTimeout = False
    protocol.wasCloseHandshakeTimeout = False
    protocol.wasServingFlashSocketPolicyFile = False
    protocol.localCloseCode = None
    protocol.localCloseReason = None
    protocol.remoteCloseCode = None
    protocol.remoteCloseReason = None
    if not factory.isServer:
        protocol.serverConnectionDropTimeoutCall = None
    protocol.openHandshakeTimeoutCall = None
    protocol.closeHandshakeTimeoutCall = None
    protocol.autoPingTimeoutCall = None
    protocol.autoPingPending = None
    protocol.autoPingPendingCall = None
    protocol.autoPingPendingSeq = 0
    protocol.autoPingPendingSent = None
    if protocol.openHandshakeTimeout > 0:
        protocol.openHandshakeTimeoutCall = factory._batched_timer.call_later(
            protocol.openHandshakeTimeout, protocol.onOpenHandshakeTimeout)


class QuietAdapter:
    """
    Twisted's entry points of an Autobahn protocol without Autobahn's eager
    debug formatting; mixed in ahead of Autobahn's Twisted protocol class,
    which supplies the rest.  Subclasses set up their state in
    ``_connectionMade`` (with :func:`open_state`).
    """

    transport: Any
    factory: Any
    is_server: bool
    tcpNoDelay: bool
    log: Any

    if not TYPE_CHECKING:  # (the type checker keeps checking attribute names)
        def __getattr__(self, name: str) -> Any:
            """An Autobahn option this connection does not set: its factory's when the connection was made."""
            try:
                return self.__dict__["_ws_options"][name]
            except KeyError:
                raise AttributeError(name) from None

    def connectionMade(self) -> None:
        """Record the transport's details, set TCP_NODELAY as configured, set up the WebSocket state."""
        secure = ISSLTransport.providedBy(self.transport)
        details = self._transport_details = TransportDetails(
            channel_type=TransportDetails.CHANNEL_TYPE_TLS if secure else TransportDetails.CHANNEL_TYPE_TCP,
            channel_framing=TransportDetails.CHANNEL_FRAMING_WEBSOCKET, peer=peer2str(self.transport),
            is_server=self.is_server, is_secure=secure)
        self.peer = details.peer
        # From the factory: this connection's option lookup (``__getattr__``) is only set up by
        # ``_connectionMade`` below; read through it here, the option was never set (each frame
        # written as header and payload then waited ~40 ms on Nagle and a delayed ACK).
        try:
            self.transport.setTcpNoDelay(protocol_options(self.factory)["tcpNoDelay"])
        except Exception:  # as Autobahn: UNIX sockets and others have no such option
            pass
        self._connectionMade()

    def _onOpen(self) -> None:
        """The handshake completed: ``onOpen`` (Autobahn's adapter first fills TLS details nothing here reads)."""
        self.onOpen()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the peer, to Autobahn's parser."""
        self._dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The connection ended: log a TLS error as Autobahn does, then tear the WebSocket state down."""
        if _is_tls_error(reason.value):
            self.log.error(_maybe_tls_reason(reason.value))
        self._connectionLost(reason)

    def sendData(self, data: bytes, sync: bool = False, chopsize: Optional[int] = None) -> None:
        """Write data now (as Autobahn does when nothing is queued), counting it; chopped or queued sends are Autobahn's."""
        if sync or chopsize or self.send_queue:
            if self.send_queue is _NO_QUEUE:
                self.send_queue = deque()
            super().sendData(data, sync, chopsize)  # type: ignore[misc]
            return
        self.transport.write(data)
        state = self.state
        if state == WebSocketProtocol.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif state == WebSocketProtocol.STATE_CONNECTING or state == WebSocketProtocol.STATE_PROXY_CONNECTING:
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)
        if self.logOctets:
            self.logTxOctets(data, False)

    if TYPE_CHECKING:  # supplied by Autobahn's protocol classes, later in the MRO
        _transport_details: Any
        peer: Any
        send_queue: Any
        state: int
        trafficStats: Any
        logOctets: bool

        def logTxOctets(self, data: bytes, chopped: bool) -> None: ...

        def _connectionMade(self) -> None: ...

        def _dataReceived(self, data: bytes) -> None: ...

        def _connectionLost(self, reason: Any) -> None: ...


def frame_fits(protocol: Any, length: int) -> bool:
    """
    Count a relayed frame into its message (``protocol._received``, reset at
    each message's start) and apply the frame and message limits Autobahn's
    default would: True when it fits, else Autobahn fails the connection (1009).
    """
    protocol._received += length
    too_big = size_violation(length, protocol._received, protocol.maxFramePayloadSize, protocol.maxMessagePayloadSize)
    if too_big is None:
        return True
    protocol._max_message_size_exceeded(protocol._received, protocol.maxMessagePayloadSize, too_big)
    return False
