"""
Protections in front of twisted.web, for connections that have not become
sessions yet:

- :class:`HandshakeDeadline` aborts a connection whose request head has not
  been read in full within a total deadline from accept (twisted.web's own
  timeout is reset by every byte, so a slowloris client dribbling one byte at
  a time would never meet it).  A connection that stays plain HTTP lives at
  most that long.
- :class:`BoundedChannel` answers 431 to a request line plus headers larger
  than a limit (twisted.web would answer a bare 400), and 413 to a request
  announcing a body over :data:`MAX_BODY`, before reading more.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.interfaces import IProtocolNegotiationFactory, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.http import HTTPChannel
from twisted.web.server import Site
from zope.interface import implementer

__all__ = ["BoundedChannel", "GatewaySite", "HandshakeDeadline", "HandshakeDeadlineProtocol"]

_log = Logger(namespace="tunnelgw")


class HandshakeDeadlineProtocol(ProtocolWrapper):
    """One accepted connection, aborted at its deadline unless :meth:`request_read` came first."""

    factory: "HandshakeDeadline"
    _deadline: Any = None

    def connectionMade(self) -> None:
        """Arm the deadline, then let the wrapped protocol start."""
        self._deadline = self.factory.reactor.callLater(self.factory.timeout, self._expired)
        super().connectionMade()

    def request_read(self) -> None:
        """The request head was read and the connection is becoming a session: disarm."""
        self.factory.upgraded(self)
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        peer = self.getPeer()
        host = getattr(peer, "host", peer)
        _log.info("handshake timed out client={client} seconds={seconds:g}", client=host,
                  seconds=self.factory.timeout)
        if self.factory.on_timeout is not None:
            self.factory.on_timeout()
        self.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        """Disarm and forget the connection."""
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        super().connectionLost(reason)


@implementer(IProtocolNegotiationFactory)
class HandshakeDeadline(WrappingFactory):
    """
    Wraps a Site so every connection must have sent its whole request head
    within timeout seconds of being accepted.

    :ivar pending: connections still before their deadline (the others became
        sessions).
    """

    protocol = HandshakeDeadlineProtocol

    def __init__(self, wrapped: Any, reactor: IReactorTime, timeout: float,
                 on_timeout: Optional[Callable[[], None]] = None) -> None:
        super().__init__(wrapped)
        self.reactor = reactor
        self.timeout = timeout
        self.on_timeout = on_timeout
        self.noisy = False

    def acceptableProtocols(self) -> list[bytes]:
        """The Site's ALPN protocols: a TLS listener must still negotiate ALPN through this wrapper."""
        return list(self.wrappedFactory.acceptableProtocols())

    def upgraded(self, protocol: HandshakeDeadlineProtocol) -> None:
        """protocol is a session now; shutdown treats it as one."""
        self.protocols.pop(protocol, None)

    def unregisterProtocol(self, p: Any) -> None:
        """Forget a closed connection (sessions were forgotten at upgrade)."""
        self.protocols.pop(p, None)

    def abort_pending(self) -> None:
        """Abort every connection that is not a session (at shutdown)."""
        for protocol in list(self.protocols):
            protocol.abortConnection()


#: Largest request body accepted (the gateway's own requests have none).
MAX_BODY = 65536


def _too_long_body(value: bytes) -> bool:
    """True when a Content-Length value announces more than :data:`MAX_BODY` bytes."""
    value = value.strip()
    return value.isdigit() and int(value) > MAX_BODY


class BoundedChannel(HTTPChannel):
    """An HTTPChannel that answers 431 when a request head exceeds ``site.max_head`` bytes."""

    site: Any
    transport: Any

    _head = 0
    _refused = False

    def connectionMade(self) -> None:
        """Size the line limit to the head limit, so one long line is caught too."""
        super().connectionMade()
        limit = getattr(self.site, "max_head", 16384)
        self.MAX_LENGTH = limit
        self.totalHeadersSize = limit + 1

    def dataReceived(self, data: bytes) -> None:
        """Ignore everything after a 431."""
        if not self._refused:
            super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        """Count head bytes (line ends included) before twisted.web parses the line."""
        self._head += len(line) + 2
        if self._head > getattr(self.site, "max_head", 16384):
            self._too_large()
            return
        if not line:
            self._head = 0
        elif line[:15].lower() == b"content-length:" and _too_long_body(line[15:]):
            self._refuse(b"413 Content Too Large", b"413 request body too large for this gateway\n")
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """One line alone is beyond the limit."""
        self._too_large()

    def _too_large(self) -> None:
        on_too_large = getattr(self.site, "on_too_large", None)
        if on_too_large is not None and not self._refused:
            on_too_large()
        self._refuse(b"431 Request Header Fields Too Large",
                     b"431 request head (request line and headers) too large\n")

    def _refuse(self, status: bytes, body: bytes) -> None:
        if self._refused:
            return
        self._refused = True
        peer = self.transport.getPeer()
        _log.info("request refused client={client} status={status}", client=getattr(peer, "host", peer),
                  status=status.decode())
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.loseConnection()


class GatewaySite(Site):
    """A Site whose channels bound the request head (see :class:`BoundedChannel`)."""

    protocol = BoundedChannel  # type: ignore[assignment]

    def __init__(self, resource: Any, max_head: int, timeout: float,
                 on_too_large: Optional[Callable[[], None]] = None) -> None:
        super().__init__(resource, timeout=timeout)
        self.max_head = max_head
        self.on_too_large = on_too_large
        self.displayTracebacks = False
