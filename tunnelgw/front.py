"""
The listener's protocol: every accepted connection starts here.

:class:`GatewayFront` reads the first request head (bounded in size and in
time from accept) and parses it once (:mod:`tunnelgw.core.http`):

- an upgrade is handed, with the transport paused, to
  :meth:`tunnelgw.gateway.GatewayFactory.upgrade`, which answers it or starts
  its session; nothing after the head is ever parsed as HTTP;
- any other request goes, with the connection, to twisted.web
  (:class:`GatewaySite`, channels bounded by :class:`BoundedChannel`).  A
  later upgrade request on that kept-alive connection is handed over by the
  resource from twisted.web's parse (:mod:`tunnelgw.web`).

A connection whose request head is not complete within the handshake
timeout of being accepted is aborted (twisted.web's own timeout is reset by
every byte, so a slowloris client dribbling a byte at a time would never meet
it); a connection that stays plain HTTP lives at most that long.  Only a
connection caught mid-request is logged then (``handshake timed out``); one
that never sent a byte, or was kept alive idle after its last answer (what
browsers do all day), is counted in ``tunnelgw_silent_connections_total``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Site
from zope.interface import implementer

from tunnelgw.core.clientaddr import format_address
from tunnelgw.core.http import find_head_end, header_line_problem, is_upgrade, parse_head, request_line_problem
from tunnelgw.core.routing import Reject
from tunnelgw.gateway import GatewayFactory, hand_over, refuse_connection
from tunnelgw.http2 import Http2Connection, Http2Server, negotiated_h2
from tunnelgw.session import log_refusal

__all__ = ["BoundedChannel", "FrontFactory", "GatewayFront", "GatewaySite", "MAX_BODY"]

_log = Logger(namespace="tunnelgw")


class GatewayFront(Protocol):
    """One accepted connection until its first request head is read."""

    factory: "FrontFactory"
    transport: Any

    def __init__(self) -> None:
        self._buffer = b""
        self._deadline: Any = None
        #: Whether the client has sent a byte: browsers open spare connections
        #: that never do, and those are counted, not logged.
        self._spoke = False
        #: The twisted.web channel the connection went to, if it did.
        self._channel: Optional[BoundedChannel] = None

    def connectionMade(self) -> None:
        """Arm the head deadline."""
        self.factory.pending.add(self.transport)
        self._deadline = self.factory.reactor.callLater(self.factory.timeout, self._expired)

    def _expired(self) -> None:
        self._deadline = None  # fired: connectionLost must not count the connection again
        # Idle, not at fault: it never spoke, or it was kept alive after its last answer.
        idle = not self._spoke or (self._channel is not None and self._channel.idle)
        self.factory.expired(self.transport, silent=idle)

    def dataReceived(self, data: bytes) -> None:
        """Collect the head; once whole, hand the connection to a session or to twisted.web."""
        if not self._spoke and self.factory.http2 is not None and negotiated_h2(self.transport):
            self._http2(self.factory.http2, data)
            return
        self._spoke = True
        scanned = len(self._buffer)
        if not scanned:
            # Empty lines before the request line are ignored (RFC 9112 section 2.2), as
            # twisted.web ignores them before a kept-alive request; the deadline bounds them.
            data = data.lstrip(b"\r\n")
        buffer = self._buffer = self._buffer + data
        end = find_head_end(buffer, scanned)
        limit = self.factory.max_head
        if end < 0 and len(buffer) <= limit:
            return
        if end < 0 or end > limit:
            self._refuse(Reject(431, "request head (request line and headers) too large"), "headers")
            return
        head = parse_head(buffer[:end])
        if isinstance(head, Reject):
            self._refuse(head, "request")
            return
        transport = self.transport
        self._buffer = b""
        if is_upgrade(head):
            transport.pauseProducing()
            self._disarm()
            self.factory.gateway.upgrade(transport, head, buffer[end:])
            return
        channel = self.factory.site.buildProtocol(transport.getPeer())
        self._channel = channel
        channel.deadline, self._deadline = self._deadline, None
        channel.front = self.factory
        hand_over(transport, channel)
        channel.makeConnection(transport)
        channel.dataReceived(buffer)

    def _http2(self, server: Http2Server, data: bytes) -> None:
        """ALPN chose h2 (the handshake is done by the first bytes): the connection is HTTP/2's."""
        self._disarm()
        connection = Http2Connection(server)
        hand_over(self.transport, connection)
        connection.makeConnection(self.transport)
        connection.dataReceived(data)

    def _refuse(self, reject: Reject, kind: str) -> None:
        self._disarm()
        self._buffer = b""
        if kind == "headers" and self.factory.on_too_large is not None:
            self.factory.on_too_large()
        log_refusal(format_address(self.transport.getPeer()), "-", reject, kind)
        refuse_connection(self.factory.reactor, self.transport, reject)
        self.dataReceived = lambda data: None  # type: ignore[method-assign]

    def _disarm(self) -> None:
        self.factory.pending.discard(self.transport)
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Disarm and forget the connection; one that closes without a byte is counted."""
        if not self._spoke and self._deadline is not None and self.factory.on_silent is not None:
            self.factory.on_silent()
        self._disarm()


@implementer(IProtocolNegotiationFactory)
class FrontFactory(Factory):
    """
    Builds a :class:`GatewayFront` per accepted connection.

    :ivar pending: transports that are not sessions (yet), for shutdown.
    """

    protocol = GatewayFront  # type: ignore[assignment]
    noisy = False

    def __init__(self, gateway: GatewayFactory, site: "GatewaySite", reactor: Any, timeout: float, max_head: int,
                 on_timeout: Optional[Callable[[], None]] = None,
                 on_too_large: Optional[Callable[[], None]] = None,
                 on_silent: Optional[Callable[[], None]] = None, http2: Optional[Http2Server] = None) -> None:
        self.gateway = gateway
        #: For an ``http2=on`` listener: what its HTTP/2 connections share (ALPN offers h2 first).
        self.http2 = http2
        self.site = site
        self.reactor = reactor
        self.timeout = timeout
        self.max_head = max_head
        self.on_timeout = on_timeout
        self.on_too_large = on_too_large
        #: Called (instead of a log line) for a connection that ends without sending a byte.
        self.on_silent = on_silent
        self.pending: set[Any] = set()

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN: h2 then HTTP/1.1 on an ``http2=on`` listener, else HTTP/1.1 only."""
        return [b"h2", b"http/1.1"] if self.http2 is not None else [b"http/1.1"]

    def expired(self, transport: Any, silent: bool = False) -> None:
        """
        A connection reached its deadline without becoming a session: abort it.
        One that never sent a byte (a browser's spare connection) is only
        counted (``on_silent``); a slow or stalled request is logged once.
        """
        self.pending.discard(transport)
        if silent:
            if self.on_silent is not None:
                self.on_silent()
        else:
            peer = transport.getPeer()
            _log.info("handshake timed out client={client} seconds={seconds:g}", client=getattr(peer, "host", peer),
                      seconds=self.timeout)
            if self.on_timeout is not None:
                self.on_timeout()
        transport.abortConnection()

    def upgraded(self, channel: Any) -> None:
        """A plain-HTTP connection's channel hands its transport to a session: its deadline ends."""
        deadline = getattr(channel, "deadline", None)
        if deadline is not None and deadline.active():
            deadline.cancel()
        channel.deadline = None
        self.pending.discard(channel.transport)

    def abort_pending(self) -> None:
        """Abort every connection that is not a session (at shutdown)."""
        for transport in list(self.pending):
            transport.abortConnection()
        self.pending.clear()


#: Largest request body accepted (the gateway's own requests have none).
MAX_BODY = 65536


def _too_long_body(value: bytes) -> bool:
    """True when a Content-Length value announces more than :data:`MAX_BODY` bytes."""
    value = value.strip()
    return value.isdigit() and int(value) > MAX_BODY


class BoundedChannel(HTTPChannel):
    """
    An HTTPChannel for plain requests: 431 for a request head over
    ``site.max_head`` bytes, 413 for a body over :data:`MAX_BODY` (announced
    by Content-Length, or counted as chunked bytes arrive).

    :ivar deadline: the connection's head deadline, from the front.
    :ivar front: the :class:`FrontFactory` that handed the connection over.
    """

    site: Any
    transport: Any
    deadline: Any = None
    front: Optional[FrontFactory] = None

    _head = 0
    _body = 0
    _refused = False
    #: True while the connection is kept alive after an answer, nothing of a next request received.
    idle = False

    def connectionMade(self) -> None:
        """Size the line limit to the head limit, so one long line is caught too."""
        super().connectionMade()
        limit = getattr(self.site, "max_head", 16384)
        self.MAX_LENGTH = limit
        self.totalHeadersSize = limit + 1

    def dataReceived(self, data: bytes) -> None:
        """Ignore everything after a refusal."""
        self.idle = False
        if not self._refused:
            super().dataReceived(data)

    def requestDone(self, request: Any) -> None:
        """A request was answered: until the next byte, the connection is idle (its deadline closes it quietly)."""
        super().requestDone(request)
        self.idle = True

    def lineReceived(self, line: bytes) -> None:
        """Count head bytes (line ends included) before twisted.web parses the line."""
        self._head += len(line) + 2
        if self._head > getattr(self.site, "max_head", 16384):
            self._too_large()
            return
        if not line:
            self._head = 0
            self._body = 0
        else:
            # A kept-alive request is read by the rules of the first one (core.http), so that a
            # line twisted.web would refuse on its own is refused here, with its line and audit event.
            first = self._head == len(line) + 2
            problem = request_line_problem(line) if first else header_line_problem(line)
            if problem is not None:
                self._refuse(problem)
                return
            if line[:15].lower() == b"content-length:" and _too_long_body(line[15:]):
                self._refuse(Reject(413, "request body too large for this gateway"))
                return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        """Count body bytes as they arrive (chunked bodies announce no length)."""
        if not self._handlingRequest:
            self._body += len(data)
            # Chunk sizes and line ends come on top of the payload.
            if self._body > MAX_BODY + 4096:
                self._refuse(Reject(413, "request body too large for this gateway"))
                return
        super().rawDataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        """One line alone is beyond the limit."""
        self._too_large()

    def _too_large(self) -> None:
        on_too_large = getattr(self.site, "on_too_large", None)
        if on_too_large is not None and not self._refused:
            on_too_large()
        self._refuse(Reject(431, "request head (request line and headers) too large"))

    def _refuse(self, reject: Reject) -> None:
        if self._refused:
            return
        self._refused = True
        log_refusal(format_address(self.transport.getPeer()), "-", reject, "request")
        refuse_connection(self.site.reactor, self.transport, reject)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The connection ended: its deadline too."""
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None
        if self.front is not None:
            self.front.pending.discard(self.transport)
        super().connectionLost(reason)


class GatewaySite(Site):
    """
    A Site whose channels bound the request head and body (see
    :class:`BoundedChannel`); each answered request goes to access (the
    ``AccessLog`` lines, :mod:`tunnelgw.accesslog`), nowhere without it.
    """

    protocol = BoundedChannel  # type: ignore[assignment]

    def __init__(self, resource: Any, max_head: int, timeout: float,
                 on_too_large: Optional[Callable[[], None]] = None, reactor: Any = None,
                 access: Optional[Callable[[Any], None]] = None) -> None:
        super().__init__(resource, timeout=timeout, reactor=reactor)
        self._access = access
        self.max_head = max_head
        self.on_too_large = on_too_large
        self.displayTracebacks = False
        self.noisy = False

    def log(self, request: Any) -> None:
        """twisted.web's access-log call for an answered request: to the ``AccessLog`` lines."""
        if self._access is not None:
            self._access(request)
