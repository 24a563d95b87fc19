"""
Plain TCP on the gateway's own transport: the connections of ``Listen``
lines without TLS, of ``tcp:`` backends and of ``ws://`` hops.

Twisted's TCP transport queues every write: it registers the socket for
writability and sends on the reactor's next turn, then unregisters it (two
``epoll_ctl`` calls, a poll and a copy of the queue per write).  A relay
writes once per read, so on the desktop direction that is the cost of every
update.  :class:`SocketConnection` sends a write at once when nothing is
queued ahead of it (one ``send``, ``sendmsg`` for a sequence), queues only
what the kernel did not take, and watches for writability only while
something is queued.

It is a :class:`~twisted.internet.abstract.FileDescriptor` of our own, not a
change to Twisted's classes: each connection is made by Twisted's endpoints as
usual and taken over as soon as it is connected, before a byte is read:
:class:`SocketServerEndpoint` for listeners, :class:`SocketClientEndpoint` for
backends.  The hand-over (:class:`Handover` and its factories) is the one
:mod:`tunnelgw.tlssocket` uses for TLS too; only what is done with the socket
(an :data:`Adopt`) differs.  A connection that has
no TCP socket of Twisted's under it (``unix:``, a ``haproxy:`` listener's
PROXY header parser) stays on the transport it was made with.

What the gateway uses of Twisted's TCP transport is provided the same way:
``ITCPTransport`` (addresses, ``TCP_NODELAY``, keepalive, half-close),
``ISystemHandle``, producer and consumer flow control with ``bufferSize`` as
the bound, ``loseConnection`` after the queued data, ``abortConnection`` with
a reset, ``connectionLost`` on the next reactor turn after an abort.
"""

from __future__ import annotations

import socket
from collections import deque
from itertools import islice
from typing import Any, Callable, Iterable, Optional, Union, cast

from twisted.internet import defer, error, interfaces, main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["Adopt", "Handover", "HandoverFactory", "ListeningHandoverFactory", "SocketClientEndpoint",
           "SocketConnection", "SocketServerEndpoint", "SocketTransport", "connect_handed_over", "plain_adopter",
           "take_over"]

#: More pieces than this in one write are joined first (the kernel's IOV_MAX is 1024).
_MAX_PIECES = 64

_log = Logger()

_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {on, 0 s}: close with a reset


def take_over(transport: Any, tcp_only: bool = False) -> Optional[tuple[socket.socket, Any, Any]]:
    """
    Detach the socket of a stream transport that has just connected (and has
    read nothing) from Twisted: (socket, host address, peer address), or None
    when the transport is not a socket transport of Twisted's (a wrapper, a
    test transport), or with tcp_only not a TCP one; it is then left as it is.
    A transport taken over keeps a detached socket object and is dropped; the
    reactor may still call it once in the same turn (see :class:`Handover`),
    and what it then reports is not about the socket any more.
    """
    if not isinstance(transport, FileDescriptor) or not interfaces.ISystemHandle.providedBy(transport):
        return None
    handle = transport.getHandle()
    if not isinstance(handle, socket.socket) or (tcp_only and handle.family not in (socket.AF_INET, socket.AF_INET6)):
        return None
    host = None if tcp_only else transport.getHost()  # TCP: asked of the socket when wanted (a system call)
    peer = transport.getPeer()
    transport.stopReading()
    transport.stopWriting()
    family, kind, proto = handle.family, handle.type, handle.proto  # given, so that socket() asks the kernel nothing
    sock = socket.socket(family, kind, proto, fileno=handle.detach())
    sock.setblocking(False)  # (the descriptor is non-blocking already; this tells the socket object)
    return sock, host, peer


#: A lost transport's protocol: the application's is dropped once told.
_LOST = Protocol()


class SocketTransport(FileDescriptor):
    """
    What :class:`SocketConnection` and :class:`tunnelgw.tlssocket.TLSSocketConnection`
    share: a socket taken over from Twisted, its addresses and options, and an
    end on the next reactor turn.

    :param host: this side's address, or None to ask the socket when wanted.
    """

    def __init__(self, sock: socket.socket, protocol: interfaces.IProtocol, host: Optional[Any], peer: Any,
                 reactor: Any) -> None:
        FileDescriptor.__init__(self, reactor)
        self._clock: interfaces.IReactorTime = reactor
        self.socket = sock
        self._fd = sock.fileno()
        self.protocol = protocol
        self._host = host
        self._peer = peer
        self.connected = 1

    #: Why the connection is being ended on the next reactor turn (an abort, a failed write).
    _ending: Optional[BaseException] = None
    #: Bytes written and not yet taken by the kernel (or OpenSSL).
    _queued = 0

    def _pause_producer(self) -> None:
        """After a write: pause a streaming producer once more than bufferSize waits."""
        # The bound is bufferSize, as for Twisted's transports (a session raises it to its relay window).
        if self.producer is not None and self.streamingProducer and self._queued > self.bufferSize \
                and not self.producerPaused:
            self.producerPaused = True
            cast(interfaces.IPushProducer, self.producer).pauseProducing()

    def _resume_producer(self) -> bool:
        """Once the queue is sent: resume a paused (or pull) producer; whether there was one to resume."""
        if self.producer is not None and (not self.streamingProducer or self.producerPaused):
            self.producerPaused = False
            cast(interfaces.IPushProducer, self.producer).resumeProducing()  # a pull producer has it too
            return True
        return False

    def fileno(self) -> int:
        """The socket's descriptor (-1 once closed)."""
        return self._fd

    def abortConnection(self) -> None:
        """Close now, queued data dropped, with a reset; connectionLost on the next reactor turn."""
        self._lose_later(error.ConnectionAborted())

    def _lose_later(self, reason: BaseException) -> None:
        """Stop all I/O now and end the connection on the next reactor turn (not inside the protocol's call)."""
        if self.disconnected or self._ending is not None:
            return
        self._ending = reason
        self.stopReading()
        self.stopWriting()
        self.disconnecting = 1
        self._clock.callLater(0, self._end)

    def _end(self) -> None:
        if not self.disconnected:
            self.connectionLost(Failure(self._ending))

    def _close_socket(self, reason: Failure) -> None:
        """Close the socket: with a reset when the connection was aborted."""
        if reason.check(error.ConnectionAborted):
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            except OSError:
                pass  # (the peer reset first): closed all the same
        try:
            self.socket.close()
        except OSError:
            pass
        self._fd = -1

    def _tell_lost(self, reason: Failure) -> None:
        """
        The protocol's connectionLost; then the transport forgets it (as
        Twisted's do), so that transport and protocol are no reference cycle:
        a session's objects are freed when it ends, not by a collection of
        the cyclic garbage collector.
        """
        protocol, self.protocol = self.protocol, _LOST
        protocol.connectionLost(reason)

    def getHost(self) -> Any:
        """This side's address (a listener's, or the connection's own towards a backend)."""
        if self._host is None:
            address = self.socket.getsockname()
            self._host = (IPv6Address if self.socket.family == socket.AF_INET6 else IPv4Address)(
                "TCP", address[0], address[1])
        return self._host

    def getPeer(self) -> Any:
        """The other side's address."""
        return self._peer

    def getHandle(self) -> socket.socket:
        """The socket (for socket options)."""
        return self.socket

    def getTcpNoDelay(self) -> bool:
        """Whether Nagle's algorithm is off."""
        return bool(self.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def setTcpNoDelay(self, enabled: bool) -> None:
        """Turn Nagle's algorithm off (True) or on (a ``unix:`` stream has none: nothing to do)."""
        if self.socket.family != socket.AF_UNIX:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, enabled)

    def getTcpKeepAlive(self) -> bool:
        """Whether TCP keepalive is on."""
        return bool(self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """Turn TCP keepalive on or off."""
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled)

    def logPrefix(self) -> str:
        """The protocol's class name, as Twisted's transports log it."""
        return type(self.protocol).__name__


@implementer(interfaces.ITCPTransport, interfaces.ISystemHandle)
class SocketConnection(SocketTransport):
    """
    One plain TCP connection: writes go to the socket at once when nothing
    is queued ahead of them; what the kernel does not take is queued in order
    and sent as the socket becomes writable.
    """

    #: What the kernel has not taken yet, in order: a deque once something was queued (most
    #: connections of an idle gateway never queue, and a deque is some 600 bytes).
    _queue: Any = ()
    #: loseWriteConnection: shut the sending side once the queue is sent.
    _write_closing = False
    _write_closed = False

    def _pending(self) -> "deque[Union[bytes, memoryview]]":
        """The queue, made on first use."""
        if not isinstance(self._queue, deque):
            self._queue = deque()
        return self._queue

    def start(self) -> None:
        """Read, and connect the protocol."""
        self.startReading()  # first, so that a protocol pausing or closing in connectionMade has the last word
        self.protocol.makeConnection(self)

    # --- reading

    def doRead(self) -> Optional[BaseException]:
        """The socket is readable: up to bufferSize bytes, to the protocol."""
        try:
            data = self.socket.recv(self.bufferSize)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if data:
            self.protocol.dataReceived(data)
            return None
        half = interfaces.IHalfCloseableProtocol(self.protocol, None)
        if half is None:
            return main.CONNECTION_DONE
        self.stopReading()
        half.readConnectionLost()
        return None

    # --- writing

    def write(self, data: bytes) -> None:
        """Send data now if nothing is queued ahead of it; queue what the kernel does not take."""
        if isinstance(data, str):
            raise TypeError("Data must not be string")
        if not data or not self.connected or self._write_closing or self._ending is not None:
            return
        if not self._queue:
            try:
                sent = self.socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                self._lose_later(error.ConnectionLost(str(e)))
                return
            if sent == len(data):
                return
            self.startWriting()
            rest: Union[bytes, memoryview] = memoryview(data)[sent:] if sent else data
            self._pending().append(rest)
            self._queued += len(rest)
        else:
            self._queue.append(data)
            self._queued += len(data)
        self._pause_producer()

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        """As :meth:`write` for the pieces together (one ``sendmsg`` when nothing is queued)."""
        pieces: list[Union[bytes, memoryview]] = []
        for given in iovec:
            if isinstance(given, str):
                raise TypeError("Data must not be string")
            if given:
                pieces.append(given)
        if not pieces or not self.connected or self._write_closing or self._ending is not None:
            return
        if not self._queue:
            if len(pieces) > _MAX_PIECES:
                pieces = [b"".join(pieces)]
            try:
                sent = self.socket.sendmsg(pieces)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                self._lose_later(error.ConnectionLost(str(e)))
                return
            for i, piece in enumerate(pieces):
                if sent < len(piece):
                    self.startWriting()
                    pieces = [memoryview(piece)[sent:] if sent else piece] + pieces[i + 1:]
                    break
                sent -= len(piece)
            else:
                return
        self._pending().extend(pieces)
        self._queued += sum(len(piece) for piece in pieces)
        self._pause_producer()

    def doWrite(self) -> Optional[BaseException]:
        """The socket is writable: send the queue; once it is empty, resume a producer or go on closing."""
        queue = self._queue
        while queue:
            pieces = list(islice(queue, _MAX_PIECES))
            try:
                sent = self.socket.send(pieces[0]) if len(pieces) == 1 else self.socket.sendmsg(pieces)
            except BlockingIOError:
                return None
            except OSError as e:
                return error.ConnectionLost(str(e))
            self._queued -= sent
            for piece in pieces:
                if sent < len(piece):
                    if sent:
                        queue[0] = memoryview(piece)[sent:]
                    return None  # the kernel is full: the reactor says when it takes more
                sent -= len(piece)
                queue.popleft()
        self.stopWriting()
        if self._resume_producer():
            return None  # a close waits until the producer is unregistered, as under Twisted
        if self.disconnecting:
            return main.CONNECTION_DONE
        if self._write_closing and not self._write_closed:
            return self._shut_write()
        return None

    def _shut_write(self) -> Optional[BaseException]:
        self._write_closed = True
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as e:
            return error.ConnectionLost(str(e))
        half = interfaces.IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            half.writeConnectionLost()
        return None

    # --- ITransport, ITCPTransport

    def pauseProducing(self) -> None:
        """The protocol takes no more data: stop reading."""
        self.stopReading()

    def resumeProducing(self) -> None:
        """The protocol reads again."""
        if self.connected and not self.disconnecting:
            self.startReading()

    def loseConnection(self) -> None:
        """Close after the queued data (once a producer still registered is unregistered, as Twisted's)."""
        if not self.connected or self.disconnecting:
            return
        self.disconnecting = 1
        self.stopReading()
        self.startWriting()  # doWrite flushes and closes

    def loseWriteConnection(self) -> None:
        """Shut the sending side after the queued data; reading goes on."""
        if not self.connected or self._write_closing:
            return
        self._write_closing = True
        self.startWriting()

    def connectionLost(self, reason: Failure) -> None:
        """Close the socket (with a reset when aborted) and tell the protocol, once."""
        if self.disconnected:
            return
        FileDescriptor.connectionLost(self, reason)
        self._queue = ()
        self._queued = 0
        self._close_socket(reason)
        self._tell_lost(reason)


#: What a hand-over does with a connected stream transport and the application's protocol:
#: True once it took the connection over (or ended it), False to leave it on that transport
#: with the protocol connected to it; what it raises fails a client endpoint's connect.
Adopt = Callable[[Any, interfaces.IProtocol], bool]


def plain_adopter(reactor: Any) -> Adopt:
    """The plain hand-over: a TCP socket goes to a :class:`SocketConnection`; anything else stays."""
    def adopt(transport: Any, protocol: interfaces.IProtocol) -> bool:
        taken = take_over(transport, tcp_only=True)
        if taken is None:
            return False
        sock, host, peer = taken
        SocketConnection(sock, protocol, host, peer, reactor).start()
        return True
    return adopt


class Handover(Protocol):
    """
    The first protocol of a new connection, for this module's plain transport
    and :mod:`tunnelgw.tlssocket`'s TLS one: once connected it hands the
    transport and the application's protocol to an :data:`Adopt`; a connection
    left where it is keeps its transport, and this passes its events through.

    Once the socket is taken, Twisted's transport may still be called once by
    the reactor: a connect that completes on a readable and writable event runs
    ``doConnect`` (where the take-over happens) and then ``doWrite`` in the same
    turn, which fails on the detached socket and ends that transport.  What
    it reports is not the application's: it is dropped here.

    :ivar failed: what the adopt raised, for a client endpoint's connect (a
        listener's is logged); the connection is aborted then.
    """

    def __init__(self, protocol: interfaces.IProtocol, adopt: Adopt, listening: bool) -> None:
        self.protocol = protocol
        self._adopt = adopt
        self._listening = listening
        self._taken = False
        self.failed: Optional[BaseException] = None

    @property
    def taken(self) -> bool:
        """Whether the connection left Twisted's transport (or ended)."""
        return self._taken

    def connectionMade(self) -> None:
        transport: Any = self.transport
        try:
            self._taken = self._adopt(transport, self.protocol)
        except Exception as e:  # nothing was connected: a client's connect fails with it
            self._taken, self.failed = True, e
            if self._listening:
                _log.failure("cannot take over an accepted connection from {transport!r}", transport=transport)
            transport.abortConnection()
        if self._taken:
            self.transport = None  # Twisted's transport, dropped (it still refers to this, not this to it)
            if self._listening:
                # Twisted's transport is not told of the end and may keep this in a cycle: not the application's.
                self.protocol = _LOST
        else:
            self.protocol.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if not self._taken:
            self.protocol.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._taken:
            self.protocol.connectionLost(reason)


class HandoverFactory(Factory):
    """
    Wraps the application's factory: its protocols, handed over as they
    connect.  One per outgoing connection: the application's factory is not
    started or stopped per connection (Twisted's connector never sees a taken
    connection end).
    """

    noisy = False
    listening = False

    def __init__(self, wrapped: Any, adopt: Adopt) -> None:
        self.wrapped = wrapped
        self._adopt = adopt

    def buildProtocol(self, addr: Optional[interfaces.IAddress]) -> Optional[Protocol]:
        """The hand-over protocol, or None (no connection) when the application's factory refuses addr."""
        protocol = self.wrapped.buildProtocol(addr)
        return None if protocol is None else Handover(protocol, self._adopt, self.listening)


class ListeningHandoverFactory(HandoverFactory):
    """A listener's: the application's factory starts and stops with the listening port, and names it in logs."""

    listening = True

    def logPrefix(self) -> str:
        """The application factory's (Twisted's "... starting on PORT" line names it)."""
        prefix = getattr(self.wrapped, "logPrefix", None)
        return prefix() if prefix is not None else type(self.wrapped).__name__

    def doStart(self) -> None:
        """Start the application's factory with this one."""
        self.wrapped.doStart()

    def doStop(self) -> None:
        """Stop the application's factory with this one."""
        self.wrapped.doStop()


def connect_handed_over(stream: interfaces.IStreamClientEndpoint, protocolFactory: Any,
                        adopt: Adopt) -> "defer.Deferred[Any]":
    """Connect stream with protocolFactory's protocols handed over; fires with the application's protocol."""
    factory = HandoverFactory(protocolFactory, adopt)
    connecting: defer.Deferred[Any] = stream.connect(factory)
    return connecting.addBoth(_application_protocol, factory)


def _application_protocol(handover: Any, factory: HandoverFactory) -> Any:
    """
    The connect's result: the application's protocol, or the failure.  What
    Twisted's connector keeps (its transport and wrapping factory, in cycles
    its own end would break, which a taken-over connection never reaches)
    no longer refers to the application's factory or protocol.
    """
    factory.wrapped = None
    if isinstance(handover, Failure):
        return handover
    if handover.failed is not None:
        raise handover.failed
    protocol = handover.protocol
    if handover.taken:
        handover.protocol = _LOST
    return protocol


@implementer(interfaces.IStreamServerEndpoint)
class SocketServerEndpoint:
    """A listener (any stream server endpoint) whose TCP connections run on :class:`SocketConnection`."""

    def __init__(self, stream: interfaces.IStreamServerEndpoint, reactor: Any) -> None:
        self.stream = stream
        self._adopt = plain_adopter(reactor)

    def listen(self, protocolFactory: Any) -> "defer.Deferred[interfaces.IListeningPort]":
        """Listen with the stream endpoint."""
        return self.stream.listen(ListeningHandoverFactory(protocolFactory, self._adopt))


@implementer(interfaces.IStreamClientEndpoint)
class SocketClientEndpoint:
    """A client endpoint (any stream client endpoint) whose TCP connections run on :class:`SocketConnection`."""

    def __init__(self, stream: interfaces.IStreamClientEndpoint, reactor: Any) -> None:
        self.stream = stream
        self._adopt = plain_adopter(reactor)

    def connect(self, protocolFactory: Any) -> "defer.Deferred[Any]":
        """Connect the stream; fires with the application's protocol, connected."""
        return connect_handed_over(self.stream, protocolFactory, self._adopt)
