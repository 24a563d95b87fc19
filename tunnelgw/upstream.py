"""
Every place where tunnelgw replaces Twisted's, Autobahn's or h2's internals, in
one module (STYLE.md, "Other people's internals"): each replaced upstream
function is named in :data:`REPLACED` with a hash of its source as
installed, and ``tests/test_upstream.py`` fails when that source changes,
so an upgrade shows what to look at again.  setup.cfg bounds all three
libraries from above.

What is replaced, and why (measured on session set-up, and for h2 on the
desktop direction):

- Autobahn's per-connection set-up and Twisted entry points
  (:class:`QuietAdapter`, :func:`open_state`, :class:`QuietServerProtocol`,
  :class:`QuietClientProtocol`), for the gateway's two WebSocket protocols
  (the client's session, :class:`tunnelgw.session.GatewaySession`, and the
  backend hop, :class:`tunnelgw.backends.websocket.BackendWebSocket`),
  without the debug lines Autobahn builds eagerly even when debug logging
  is off: a ``pformat`` of every protocol option and of the transport
  details, and ``hltype`` (which styles a qualified name for a terminal) on
  every connect, read, write and close.  Measured: about a quarter of the
  gateway's CPU per session on a WS->WS route.  The transport details are
  the few fields the gateway reads (peer, server or client, TLS or not): no
  process and thread id lookups (two system calls per connection), no TLS
  channel binding or peer certificate dictionary on open (a client
  certificate is read where a route needs it,
  :func:`tunnelgw.certificates.client_certificate`): about 1.5% of the CPU
  per session.
- Autobahn's handshake parser: the gateway parses the request head once
  itself and gives Autobahn's server protocol the result
  (:func:`parsed_handshake`; ``WebSocketServerProtocol.processHandshake``'s
  fields, pinned below).
- Autobahn's options shared per factory (:class:`SharedOptions`) instead
  of some forty copied into every connection.

After the opening handshake Autobahn is out of the way: frames go through
:class:`tunnelgw.core.sessionrelay.SessionRelay`, so nothing of Autobahn's
frame parser or close handling is replaced any more.

HTTP/2's DATA frames (:func:`data_frame_head`): ``h2`` (4.x, bounded in
setup.cfg) keeps every stream's state and window, and the gateway writes a
DATA frame's 9-byte header and payload itself instead of through h2's frame
objects and output buffer, which cost about 12 us and four copies of the
payload per 16 KiB frame: the gateway's CPU per MiB over an HTTP/2 stream
fell by about a quarter (4.2-4.6 to 3.0-3.5 ms in alternating runs).

The data phase's shortcut is here too, after the Autobahn part:
:data:`unmask`, the (un)masking function of
:class:`tunnelgw.core.sessionrelay.SessionRelay`: the optional ``websockets``
C speedup when installed, else Autobahn's masker.  Nothing of Twisted's
transports is replaced: the gateway's connections run on transports of its
own (:mod:`tunnelgw.sockettransport`, :mod:`tunnelgw.tlssocket`), subclasses
of Twisted's public :class:`~twisted.internet.abstract.FileDescriptor`.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import TYPE_CHECKING, Any, Iterable, Optional

from autobahn.twisted.util import peer2str
from autobahn.twisted.websocket import WebSocketClientProtocol, WebSocketServerProtocol
from autobahn.util import _is_tls_error, _maybe_tls_reason
from autobahn.wamp.types import TransportDetails
from h2.connection import ConnectionInputs, H2Connection
from h2.exceptions import FlowControlError, FrameTooLargeError
from h2.stream import StreamInputs
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from tunnelgw.core.frames import Unmask

__all__ = ["CONNECTION_DEFAULTS", "QuietAdapter", "QuietClientProtocol", "QuietServerProtocol", "REPLACED",
           "SERVER_CONNECTION_SLOTS", "SharedOptions", "data_frame_head", "open_state", "parsed_handshake",
           "protocol_options", "slot_defaults", "unmask"]

#: Upstream functions replaced here, by dotted name, with the first 16 hex
#: digits of the SHA-256 of their source
#: (``inspect.getsource``) in the versions this was written against:
#: Autobahn 26.11.1 and h2 4.4.1.
REPLACED: dict[str, str] = {
    # open_state copies this set-up; QuietServerProtocol and QuietClientProtocol replace the next four.
    "autobahn.websocket.protocol.WebSocketProtocol._connectionMade": "7ac58d8bb6c3c752",
    "autobahn.websocket.protocol.WebSocketProtocol._connectionLost": "8d53cb80c1e9f3de",
    "autobahn.websocket.protocol.WebSocketServerProtocol._connectionMade": "213dadb6d12d3d48",
    "autobahn.websocket.protocol.WebSocketServerProtocol._connectionLost": "1b616e8fc259d995",
    "autobahn.websocket.protocol.WebSocketClientProtocol._connectionMade": "c2c336e7aa3c8f0a",
    "autobahn.websocket.protocol.WebSocketClientProtocol._connectionLost": "a591407a5e142fa7",
    "autobahn.twisted.websocket.WebSocketClientProtocol._onConnect": "f6dde986749b79ad",
    # parsed_handshake sets what this parser sets, and succeedHandshake reads it.
    "autobahn.websocket.protocol.WebSocketServerProtocol.processHandshake": "0055f4d349937673",
    "autobahn.websocket.protocol.WebSocketServerProtocol.succeedHandshake": "fb43d387929cf206",
    # QuietAdapter's Twisted entry points and its sendData.
    "autobahn.websocket.protocol.WebSocketProtocol.sendData": "5dcca425b048b07e",
    "autobahn.twisted.websocket.WebSocketAdapterProtocol.connectionMade": "63ceb64088e44552",
    "autobahn.twisted.websocket.WebSocketAdapterProtocol.connectionLost": "cf4d8aab057cd161",
    "autobahn.twisted.websocket.WebSocketAdapterProtocol.dataReceived": "7997f762de218433",
    "autobahn.twisted.websocket.WebSocketAdapterProtocol._onOpen": "6cfc286602a22405",
    # data_frame_head does what these do for a DATA frame without padding or END_STREAM, and puts its frame after
    # what the output buffer (_prepare_for_sending, data_to_send) holds.
    "h2.connection.H2Connection.send_data": "9f67cb77f02c01d0",
    "h2.connection.H2Connection.local_flow_control_window": "e8b7dd814ce6bc1d",
    "h2.connection.H2Connection._get_stream_by_id": "1e663cf23fe28e33",
    "h2.connection.H2Connection._prepare_for_sending": "6be16b5970454a30",
    "h2.connection.H2Connection.data_to_send": "d681c42548b1f8cc",
    "h2.stream.H2Stream.send_data": "9742a001ccca6af7",
}


#: Autobahn's send queue while nothing was ever queued (empty, so falsy and of length 0 as Autobahn reads it).
_NO_QUEUE: Any = ()


if TYPE_CHECKING:
    class _FactoryOptions:
        """What Autobahn's factories (after :class:`SharedOptions` in the MRO) supply."""

        def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None: ...

        def resetProtocolOptions(self) -> None: ...
else:
    _FactoryOptions = object


class SharedOptions(_FactoryOptions):
    """
    Mixed into a WebSocket factory ahead of Autobahn's: its protocol options
    as one dict (:func:`protocol_options`), made again after each
    ``setProtocolOptions``, so that connections share it instead of each
    copying some forty options into its own ``__dict__``.
    """

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        """Autobahn's, then the shared options are made again when next needed."""
        super().setProtocolOptions(*args, **kwargs)
        self._ws_options = None

    def resetProtocolOptions(self) -> None:
        """Autobahn's, then the shared options are made again when next needed."""
        super().resetProtocolOptions()
        self._ws_options = None


def protocol_options(factory: Any) -> dict[str, Any]:
    """The factory's Autobahn options now (``CONFIG_ATTRS`` of its protocol), made once until they change."""
    options: Optional[dict[str, Any]] = factory.__dict__.get("_ws_options")
    if options is None:
        options = factory._ws_options = {name: getattr(factory, name) for name in factory.protocol.CONFIG_ATTRS}
    return options


class _UncountedTraffic:
    """
    Autobahn's per-connection ``TrafficStats`` (twelve counters, about 350
    bytes per session), which nothing here reads: after the handshake the
    relay carries the bytes and the gateway counts them itself (metrics,
    session lines).  One shared object that reads 0 and keeps nothing, so
    Autobahn's ``stats.field += n`` costs no memory per connection.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> int:
        if name.startswith("__"):
            raise AttributeError(name)
        return 0

    def __setattr__(self, name: str, value: object) -> None:
        pass

    def reset(self) -> None:
        """Nothing is kept."""


#: What Autobahn's ``WebSocketProtocol._connectionMade`` sets to the same
#: value on every connection: class attributes of the quiet protocols
#: instead (a connection gets its own only when Autobahn changes one).
#: Autobahn's frame parser never runs (after the handshake frames go
#: through :class:`~tunnelgw.core.sessionrelay.SessionRelay`), so no UTF-8
#: validator is made per connection.
CONNECTION_DEFAULTS: dict[str, Any] = {
    "_perMessageCompress": None, "trackedTimings": None, "state": WebSocketProtocol.STATE_CONNECTING,
    "send_state": WebSocketProtocol.SEND_STATE_GROUND, "data": b"",
    "send_queue": _NO_QUEUE,  # a deque (630 bytes) only once Autobahn queues a chopped or sync send
    "triggered": False, "utf8validator": None, "wasMaxFramePayloadSizeExceeded": False,
    "wasMaxMessagePayloadSizeExceeded": False, "closedByMe": False, "failedByMe": False, "droppedByMe": False,
    "wasClean": False, "wasNotCleanReason": None, "wasServerConnectionDropTimeout": False,
    "wasOpenHandshakeTimeout": False, "wasCloseHandshakeTimeout": False, "wasServingFlashSocketPolicyFile": False,
    "localCloseCode": None, "localCloseReason": None, "remoteCloseCode": None, "remoteCloseReason": None,
    "serverConnectionDropTimeoutCall": None, "openHandshakeTimeoutCall": None, "closeHandshakeTimeoutCall": None,
    "autoPingTimeoutCall": None, "autoPingPending": None, "autoPingPendingCall": None, "autoPingPendingSeq": 0,
    "autoPingPendingSent": None,
    "trafficStats": _UncountedTraffic(),
}


#: What Autobahn's server protocol (with txaio's ObservableMixin and Twisted's Protocol) sets on each connection
#: that stays open, in the order it sets them: :class:`tunnelgw.session.GatewaySession` keeps these in slots.
#: CPython shares the keys of instance dicts only while a class's first instances add them before many more are
#: made (each new instance lowers the number of keys that may still be added), which a busy gateway never
#: allows: each session then had a dict of its own, 1.6 KB.  ``tests/test_session.py`` fails when an open
#: session sets anything else.
SERVER_CONNECTION_SLOTS: tuple[str, ...] = (
    "is_closed", "is_open", "_valid_events", "_results", "_transport_details", "connected", "transport", "peer",
    "_ws_options", "http_request_uri", "http_request_path", "http_request_host", "http_request_params",
    "websocket_version", "websocket_origin", "websocket_protocols", "websocket_extensions", "_wskey", "data",
    "websocket_protocol_in_use", "websocket_extensions_in_use", "http_response_data", "state", "inside_message",
    "current_frame")


def slot_defaults(cls: type, names: Iterable[str]) -> tuple[tuple[str, Any], ...]:
    """
    The class-level defaults (in cls's bases) of names that a subclass keeps
    in slots: a slot hides them, so the subclass sets them on each instance.
    """
    found = []
    for name in names:
        for base in cls.__mro__:
            if name in vars(base):
                found.append((name, vars(base)[name]))
                break
    return tuple(found)


def open_state(protocol: Any) -> None:
    """
    Set up a new connection's WebSocket state on protocol as Autobahn's
    ``WebSocketProtocol._connectionMade`` does: what is the same for every
    connection is in :data:`CONNECTION_DEFAULTS` (class attributes); options
    not set on the protocol (or its class) are read from the factory's
    options of this moment (:class:`QuietAdapter`'s ``__getattr__``), not copied.
    """
    factory = protocol.factory
    protocol._ws_options = protocol_options(factory)
    if protocol.trackTimings:
        protocol.setTrackTimings(True)
    if protocol.openHandshakeTimeout > 0:
        protocol.openHandshakeTimeoutCall = factory._batched_timer.call_later(
            protocol.openHandshakeTimeout, protocol.onOpenHandshakeTimeout)


if TYPE_CHECKING:
    class _AutobahnProtocol:
        """What Autobahn's protocol classes (after :class:`QuietAdapter` in the MRO) supply."""

        _transport_details: Any
        peer: Any
        send_queue: Any
        state: int
        trafficStats: Any
        logOctets: bool
        is_server: Any

        def logTxOctets(self, data: bytes, chopped: bool) -> None: ...

        def onOpen(self) -> None: ...

        def sendData(self, data: bytes, sync: bool = False, chopsize: Optional[int] = None) -> None: ...

        def _connectionMade(self) -> None: ...

        def _dataReceived(self, data: bytes) -> None: ...

        def _connectionLost(self, reason: Any) -> None: ...
else:
    _AutobahnProtocol = object


class QuietAdapter(_AutobahnProtocol):
    """
    Twisted's entry points of an Autobahn protocol without Autobahn's eager
    debug formatting; mixed in ahead of Autobahn's Twisted protocol class,
    which supplies the rest.  Subclasses set up their state in
    ``_connectionMade`` (with :func:`open_state`): :class:`QuietServerProtocol`
    and :class:`QuietClientProtocol`.
    """

    transport: Any
    factory: Any
    tcpNoDelay: bool
    log: Any

    if not TYPE_CHECKING:  # (the type checker keeps checking attribute names)
        def __getattr__(self, name: str) -> Any:
            """An Autobahn option this connection does not set: its factory's when the connection was made."""
            # Never through ``self.__dict__``: reading it makes CPython give the instance a dict of its own
            # (about 1.3 KB more per session) instead of the attribute values it shares keys for.
            try:
                return object.__getattribute__(self, "_ws_options")[name]
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
        self.onOpen()

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the peer, to Autobahn's parser."""
        self._dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The connection ended: log a TLS error as Autobahn does, then tear the WebSocket state down."""
        self.log_tls_error(reason)
        self._connectionLost(reason)

    def log_tls_error(self, reason: Failure) -> None:
        """Log why a connection ended when TLS ended it (as Autobahn does)."""
        if _is_tls_error(reason.value):
            self.log.error(_maybe_tls_reason(reason.value))

    def sendData(self, data: bytes, sync: bool = False, chopsize: Optional[int] = None) -> None:
        """Write data now (as Autobahn does when nothing is queued), counting it; chopped or queued sends are Autobahn's."""
        if sync or chopsize or self.send_queue:
            if self.send_queue is _NO_QUEUE:
                self.send_queue = deque()
            super().sendData(data, sync, chopsize)
            return
        self.transport.write(data)
        state = self.state
        if state == WebSocketProtocol.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif state == WebSocketProtocol.STATE_CONNECTING or state == WebSocketProtocol.STATE_PROXY_CONNECTING:
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)
        if self.logOctets:
            self.logTxOctets(data, False)


class QuietServerProtocol(QuietAdapter, WebSocketServerProtocol):  # Autobahn is untyped
    """
    Autobahn's server protocol with the quiet set-up and tear-down; the
    gateway's session subclasses it and uses Autobahn's public API only
    (``succeedHandshake``, ``failHandshake``, ``onOpen``, ``onClose``).
    """

    def _connectionMade(self) -> None:
        """Autobahn's server set-up (:func:`open_state`), counting the connection as Autobahn does."""
        open_state(self)
        self.factory.countConnections += 1

    def _connectionLost(self, reason: Any) -> None:
        """Autobahn's tear-down (which calls ``onClose``), without its debug formatting."""
        WebSocketProtocol._connectionLost(self, reason)
        self.factory.countConnections -= 1


def parsed_handshake(protocol: Any, uri: str, path: str, host: Optional[str], origin: Optional[str],
                     protocols: "tuple[str, ...] | list[str]", key: str, early: bytes) -> None:
    """
    Give Autobahn's server protocol the opening handshake the gateway parsed
    itself (:mod:`tunnelgw.core.handshake`): what Autobahn's own parser
    would have set and its ``succeedHandshake`` reads; early is what the
    client sent after its head (held until the 101).
    """
    protocol.http_request_uri = uri
    protocol.http_request_path = path
    protocol.http_request_host = host
    protocol.http_request_params = {}
    protocol.websocket_version = 13
    protocol.websocket_origin = origin  # None when not sent
    protocol.websocket_protocols = list(protocols)
    protocol.websocket_extensions = []
    protocol._wskey = key
    protocol.data = early


class QuietClientProtocol(QuietAdapter, WebSocketClientProtocol):  # Autobahn is untyped
    """
    Autobahn's client protocol with the quiet set-up and tear-down; it sends
    the request ``onConnecting`` returns (no proxy, no Deferred, no debug
    formatting).  The backend hop subclasses it.
    """

    def _connectionMade(self) -> None:
        """Set up the WebSocket state and send the handshake request."""
        open_state(self)
        self._actuallyStartHandshake(self.onConnecting(self._transport_details))

    def _connectionLost(self, reason: Any) -> None:
        """Autobahn's tear-down (which calls ``onClose``), without its debug formatting."""
        WebSocketProtocol._connectionLost(self, reason)

    def _onConnect(self, response: Any) -> Any:
        """The server's 101 is read: Autobahn's ``onConnect`` (without its debug formatting)."""
        return self.onConnect(response)


for _quiet in (QuietServerProtocol, QuietClientProtocol):
    for _name, _value in CONNECTION_DEFAULTS.items():
        setattr(_quiet, _name, _value)


# The data phase: the unmasking function and Twisted transports that write at once.


def _nvx_unmask() -> Unmask:
    from autobahn.websocket.xormasker import create_xor_masker

    def unmask(data: Any, mask: bytes) -> bytes:
        """XOR with Autobahn's masker (native when its NVX extension is built)."""
        return bytes(create_xor_masker(mask, len(data)).process(data))

    return unmask


def _choose_unmask() -> Unmask:
    """websockets' C ``apply_mask`` (about 20x cheaper per 1 KiB frame than a masker object), else Autobahn's."""
    try:
        from websockets.speedups import apply_mask  # type: ignore[import-not-found]
    except ImportError:
        return _nvx_unmask()
    return apply_mask  # type: ignore[no-any-return]


#: The unmasking function the fast data phase uses.
unmask: Unmask = _choose_unmask()


# HTTP/2: DATA frames without h2's frame objects.

_DATA_HEAD = struct.Struct("!HBBBL")


def data_frame_head(connection: H2Connection, stream_id: int, size: int) -> bytes:
    """
    ``connection.send_data(stream_id, payload)`` for a payload of size
    bytes (1 to the frame size; no padding, no END_STREAM), without the
    frame: the same checks and errors (unknown or closed stream, window,
    frame size, connection and stream state), the same state changes and
    window accounting, but nothing is put in h2's output buffer.  The DATA
    frame's 9-byte header is returned; the caller sends it and the payload
    right after what ``connection.data_to_send()`` returns now, and before
    h2's next output.
    """
    stream = connection._get_stream_by_id(stream_id)
    window = min(connection.outbound_flow_control_window, stream.outbound_flow_control_window)
    if size > window:
        raise FlowControlError(f"Cannot send {size} bytes, flow control window is {window}")
    if size > connection.max_outbound_frame_size:
        raise FrameTooLargeError(f"Cannot send frame size {size}, max frame size is "
                                 f"{connection.max_outbound_frame_size}")
    connection.state_machine.process_input(ConnectionInputs.SEND_DATA)
    stream.state_machine.process_input(StreamInputs.SEND_DATA)
    stream.outbound_flow_control_window -= size
    connection.outbound_flow_control_window -= size
    return _DATA_HEAD.pack(size >> 8, size & 0xFF, 0, 0, stream_id)
