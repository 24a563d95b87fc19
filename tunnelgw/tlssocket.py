"""
TLS on the socket itself: the transport of ``ssl:`` listeners' connections
and of the gateway's TLS connections to backends (``tls:``, ``wss://``).

Twisted's TLS (:class:`~twisted.protocols.tls.TLSMemoryBIOProtocol`) puts
OpenSSL between two memory buffers: every encrypted byte is copied out of
OpenSSL into a Python string and handed to the TCP transport, and every
received byte is copied into OpenSSL before it is decrypted.  Here OpenSSL
owns the socket (a pyOpenSSL ``SSL.Connection(context, socket)``): a write is
encrypted straight into the kernel's send buffer and a read decrypted straight
out of the receive buffer, as Python's own ``ssl`` sockets do.

:class:`TLSSocketServerFactory` is the factory an ``ssl:`` listener's plain
stream endpoint (``tcp:``, ``systemd:``) listens with: each accepted
connection is taken over as soon as it is made, before any byte is read, its
socket detached from Twisted's TCP transport (``ISystemHandle.getHandle``,
``stopReading``) and driven from then on by a :class:`TLSSocketConnection`,
a :class:`~twisted.internet.abstract.FileDescriptor` the reactor watches with
``addReader``/``addWriter``.  That transport provides what the gateway uses of
Twisted's: :class:`~twisted.internet.interfaces.ISSLTransport`
(``getPeerCertificate``, so client certificates and ``certname=`` work),
``ITCPTransport``, producer and consumer flow control, ``abortConnection``.

Towards backends the same class runs in connect state
(:class:`TLSSocketClientEndpoint`, made by :mod:`tunnelgw.backends.tls`, takes each connected
socket over in the same way): the handshake is started at once, bounded in
time, and the peer's certificate name is checked (``check``) before the
protocol hears :meth:`~twisted.internet.interfaces.IHandshakeListener.handshakeCompleted`
and before any byte it wrote goes out.  A failed handshake ends the
connection with OpenSSL's :class:`OpenSSL.SSL.Error` (as Twisted's TLS
does), a name that does not match with service_identity's
``VerificationError``, a handshake that takes too long with
:class:`~twisted.internet.error.TimeoutError`.

OpenSSL's rules on a non-blocking socket, kept here:

- a write that OpenSSL could not finish (``WantWriteError``, or
  ``WantReadError`` while it waits for the peer) is retried with the very
  same buffer and nothing shorter, so queued data is only joined before its
  first try;
- a read may need the socket writable (``WantWriteError``) and a write may
  need it readable; each waits for its own event and then runs again;
- a close sends ``close_notify`` after the queued data (``loseConnection``),
  or nothing (``abortConnection``); a peer that closes without one ends the
  connection with :class:`~twisted.internet.error.ConnectionLost`.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from OpenSSL import SSL
from twisted.internet import defer, error, interfaces, main
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.abstract import FileDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tunnelgw.sockettransport import ListeningHandoverFactory, SocketTransport, connect_handed_over, take_over

__all__ = ["TLSSocketClientEndpoint", "TLSSocketConnection", "TLSSocketServerFactory", "select_protocol"]

_log = Logger()

_Address = Union[IPv4Address, IPv6Address]

#: The most plaintext asked of OpenSSL per read: one TLS record's (SSL_read returns one record at most).
_READ = 1 << 14

#: The plaintext of a full TLS record: small queued writes are joined up to it before they go to OpenSSL.
_RECORD = 1 << 14

#: Seconds a connection whose handshake failed waits for the client to close after OpenSSL's alert.
_LINGER = 2.0

@implementer(interfaces.ISSLTransport, interfaces.ITCPTransport, interfaces.ISystemHandle, interfaces.INegotiated)
class TLSSocketConnection(SocketTransport):
    """
    One TLS connection whose OpenSSL object reads and writes the socket:
    server side (accept state), or with connect set the client side.

    The protocol is connected at once (as under Twisted's TLS); what it
    writes before the handshake ends waits in the queue.

    :param connect: the client side: the handshake starts at once (the
        ClientHello goes out when the socket is writable).
    :param check: for the client side, run on the OpenSSL connection once the
        handshake succeeded (the peer's name against its certificate); what it
        raises ends the connection, before the protocol hears
        ``handshakeCompleted`` and before any of its bytes is sent.
    :param handshake_timeout: for the client side, the seconds the handshake
        may take (then the connection ends with ``TimeoutError``).
    :param keep_session: for the client side, given the connection's TLS
        session once it can resume a later connection (see
        :class:`tunnelgw.backends.tls.LastSession`):
        after the handshake and check under TLS 1.2, after the first read
        of data under TLS 1.3 (the server's tickets come before its data).
    :ivar protocol: the application protocol.
    """

    def __init__(self, sock: socket.socket, tls: SSL.Connection, protocol: interfaces.IProtocol,
                 host: _Address, peer: _Address, reactor: Any,
                 protocols: Sequence[bytes] = (), connect: bool = False,
                 check: Optional[Callable[[SSL.Connection], None]] = None,
                 handshake_timeout: Optional[float] = None,
                 keep_session: Optional[Callable[[SSL.Session], None]] = None) -> None:
        SocketTransport.__init__(self, sock, protocol, host, peer, reactor)
        self._tls = tls
        tls.set_app_data(self)  # for select_protocol
        #: The ALPN protocols offered, preferred first.
        self.protocols = protocols
        #: Application bytes not yet taken by OpenSSL, in order; the head is retried as it is when _retry is set.
        self._queue: deque[Union[bytes, memoryview]] = deque()
        self._queued = 0
        self._retry = False
        self._handshaken = False
        #: TCP (not a Unix stream): a flush of more than one record is corked (see _send_queue).
        self._corks = sock.family in (socket.AF_INET, socket.AF_INET6)
        #: The socket event each side waits for: "read" waits for writability, "write" for readability.
        self._read_needs_write = False
        self._write_needs_read = False
        self._closing = False  # close_notify being sent
        #: The protocol paused reading (pauseProducing): reading is on only for a write that waits for it.
        self._reading_paused = False
        #: Why the handshake failed, while the alert is given time to reach the client.
        self._lingering: Optional[BaseException] = None
        self._linger_call: Any = None
        self._connect = connect
        self._check = check
        self._handshake_timeout = handshake_timeout
        self._handshake_call: Any = None
        self._keep_session = keep_session
        #: TLS 1.3: set once the handshake and check passed, until the session is given to keep_session.
        self._session_due = False

    # --- the reactor's side

    def start(self) -> None:
        """Connect the protocol and start the handshake (a server's needs the client's hello first)."""
        if self._connect:
            self._tls.set_connect_state()
            if self._handshake_timeout is not None:
                self._handshake_call = self._clock.callLater(self._handshake_timeout, self._handshake_too_long)
            self.startWriting()  # doWrite sends the ClientHello
        else:
            self._tls.set_accept_state()
        self.startReading()  # first, so that a protocol pausing or closing in connectionMade has the last word
        self.protocol.makeConnection(self)

    def _handshake_too_long(self) -> None:
        self._handshake_call = None
        self._lose_later(error.TimeoutError(string=f"TLS handshake not done within {self._handshake_timeout:g} s"))

    def doRead(self) -> Optional[BaseException]:
        """The socket is readable: go on with a write that waited for it, the handshake, or read records."""
        if self._lingering is not None:
            return self._discard()
        if self._write_needs_read:
            self._write_needs_read = False
            failed = self._send_queue()
            if failed is not None:
                return failed
            if not self._write_needs_read:
                # The retried write is done: reading goes back to what the protocol (or a close) asked for,
                # and what follows a flush (a paused producer resumed, a pending close_notify) happens now.
                if self._reading_paused or self.disconnecting:
                    self.stopReading()
                if not self._retry:
                    failed = self._drained()
                    if failed is not None:
                        return failed
        if not self._handshaken:
            return self._handshake()
        if self._reading_paused or self.disconnecting:
            return None  # reading was on only for the write: nothing is delivered to a paused protocol
        return self._read()

    def doWrite(self) -> Optional[BaseException]:
        """The socket is writable: go on with the handshake, a read that waited for it, or the queue."""
        if not self._handshaken:
            self.stopWriting()
            return self._handshake()
        if self._read_needs_write and not self._reading_paused:
            # (While the protocol is paused the read waits: resumeProducing asks for writability again.)
            self._read_needs_write = False
            failed = self._read()
            if failed is not None:
                return failed
        if self._closing:
            self.stopWriting()
            return self._send_close_notify()
        failed = self._send_queue()
        if failed is not None:
            return failed
        if not (self._retry and not self._write_needs_read) and not (self._read_needs_write
                                                                    and not self._reading_paused):
            # Nothing waits for writability any more (while the socket stays full, the reactor keeps
            # watching it, without two epoll_ctl calls per turn).
            self.stopWriting()
        return self._drained()

    def _handshake(self) -> Optional[BaseException]:
        try:
            self._tls.do_handshake()
        except SSL.WantReadError:
            self.startReading()
            return None
        except SSL.WantWriteError:
            self.startWriting()
            return None
        except SSL.Error as e:
            if self._connect:
                # A backend needs no time to read our alert: OpenSSL's error is the reason, as under Twisted's TLS.
                return _handshake_error(e)
            return self._linger(_lost(e, "TLS handshake failed"))
        self._handshaken = True
        self._stop_handshake_timer()
        if self._check is not None:
            try:
                self._check(self._tls)
            except Exception as e:  # service_identity's VerificationError: nothing was sent yet
                return e
        if self._keep_session is not None:
            if self._tls.get_protocol_version_name() == "TLSv1.3":
                self._session_due = True  # its tickets come after the handshake
            else:
                self._give_session()
        if interfaces.IHandshakeListener.providedBy(self.protocol):
            self.protocol.handshakeCompleted()
        if not self.connected:
            return None
        failed = self._send_queue()
        if failed is not None:
            return failed
        if self.disconnecting and not self._queue:
            return self._drained()
        # A client may send its first records with its Finished message.
        return self._read()

    def _give_session(self) -> None:
        session = self._tls.get_session()
        if session is not None and self._keep_session is not None:
            self._keep_session(session)

    def _linger(self, reason: BaseException) -> Optional[BaseException]:
        """
        After a failed handshake: end our side after OpenSSL's alert (FIN) and
        drop what the client still sends until it closes, for at most
        :data:`_LINGER` seconds.  Closing at once with the client's bytes unread
        would send a reset, which discards the alert before the client reads it.
        """
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            return reason
        self._lingering = reason
        self.disconnecting = 1
        self.stopWriting()
        self.startReading()
        self._linger_call = self._clock.callLater(_LINGER, self._end_linger)
        return self._discard()

    def _discard(self) -> Optional[BaseException]:
        while True:
            try:
                if not self.socket.recv(_READ):
                    return self._lingering
            except BlockingIOError:
                return None
            except OSError:
                return self._lingering

    def _end_linger(self) -> None:
        self._linger_call = None
        if not self.disconnected:
            self.connectionLost(Failure(self._lingering))

    def _read(self) -> Optional[BaseException]:
        chunks: list[bytes] = []
        got = 0
        end: Optional[BaseException] = None
        # About bufferSize per wake-up (as Twisted's TCP reads), delivered in one dataReceived; never
        # stop with plaintext left inside OpenSSL, which no socket event would announce.
        while got < self.bufferSize or self._tls.pending():
            try:
                chunk = self._tls.recv(_READ)
            except SSL.WantReadError:
                break
            except SSL.WantWriteError:
                self._read_needs_write = True
                self.startWriting()
                break
            except SSL.ZeroReturnError:  # the peer's close_notify
                end = main.CONNECTION_DONE
                break
            except SSL.Error as e:
                end = _lost(e, "TLS connection failed")
                break
            chunks.append(chunk)
            got += len(chunk)
        if self._session_due and chunks:
            self._session_due = False
            self._give_session()
        if chunks and not self.disconnected and not self._aborted():
            self.protocol.dataReceived(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if end is main.CONNECTION_DONE and self.connected:
            if self._queue and not self.disconnecting:
                # The client has finished sending: what it is owed still goes out before our close_notify.
                self.loseConnection()
                return None
            self._answer_close_notify()
        return end

    def _answer_close_notify(self) -> None:
        """Best effort: our close_notify after the peer's, without waiting for the socket."""
        try:
            self._tls.shutdown()
        except SSL.Error:
            pass

    # --- writing

    def write(self, data: bytes) -> None:
        """Encrypt data to the socket now if nothing waits ahead of it, else queue it (pausing a producer when full)."""
        if not data or not self.connected or self.disconnecting:
            return
        self._queue.append(data)
        self._queued += len(data)
        self._after_write()

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        """As :meth:`write` for the pieces together (joined into full records before they go to OpenSSL)."""
        if not self.connected or self.disconnecting:
            return
        for piece in iovec:
            if piece:
                self._queue.append(piece)
                self._queued += len(piece)
        self._after_write()

    def _after_write(self) -> None:
        if self._handshaken and not self._retry and not self._write_needs_read:
            # Nothing waits for the socket (the queue is empty but for this write): send at once, not on the next turn.
            failed = self._send_queue()
            if failed is not None:
                self._lose_later(failed)
                return
        if self._queue:
            self._pause_producer()

    def _send_queue(self) -> Optional[BaseException]:
        """
        SSL_write the queue until it is empty or the socket is full; an
        exception when the connection failed.  OpenSSL writes each record to
        the socket as it makes it, one system call each: more than a record's
        worth is written corked (``TCP_CORK``), so that the kernel sends the
        records in full segments, not one 16 KiB segment per call, and
        uncorked at the end, which sends whatever is left at once (TCP_NODELAY
        stays on: nothing waits).  Measured on wss:// to the client,
        backend->client 64 KiB: 500 -> 590 MB/s, gateway CPU per MB 2.0 -> 1.7 ms.
        """
        if not self._corks or self._queued <= _RECORD:
            return self._send_records()
        sock = self.socket
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        except OSError:  # as below
            return self._send_records()
        try:
            return self._send_records()
        finally:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
            except OSError:  # a socket that failed under the writes: its end is on its way
                pass

    def _send_records(self) -> Optional[BaseException]:
        queue = self._queue
        while queue:
            if not self._retry and len(queue) > 1 and len(queue[0]) < _RECORD:
                # Fill one record from the pieces ahead (a frame header and the start of its payload): each
                # record is a system call, so a header must not be one of its own; the rest is not copied.
                pieces = [queue.popleft()]
                size = len(pieces[0])
                while queue and size < _RECORD:
                    piece = queue.popleft()
                    room = _RECORD - size
                    if len(piece) > room:
                        queue.appendleft(memoryview(piece)[room:])
                        piece = memoryview(piece)[:room]
                    pieces.append(piece)
                    size += len(piece)
                queue.appendleft(b"".join(pieces))
            head = queue[0]
            try:
                sent = self._tls.send(head)
            except SSL.WantWriteError:
                self._retry = True
                self.startWriting()
                return None
            except SSL.WantReadError:
                self._retry = True
                self._write_needs_read = True
                self.startReading()
                return None
            except SSL.Error as e:
                return _lost(e, "TLS write failed")
            self._retry = False
            self._queued -= sent
            if sent == len(head):
                queue.popleft()
            else:  # partial write (whole records sent): the rest is new data for OpenSSL
                queue[0] = memoryview(head)[sent:]
        return None

    def _drained(self) -> Optional[BaseException]:
        """After a flush: resume a paused producer, or go on closing."""
        if self._queue:
            return None
        if self._resume_producer() or not self.disconnecting:
            return None  # (a close waits until the producer is unregistered, as under Twisted)
        return self._send_close_notify()

    def _send_close_notify(self) -> Optional[BaseException]:
        if not self._handshaken:
            return main.CONNECTION_DONE
        self._closing = True
        try:
            self._tls.shutdown()
        except SSL.WantWriteError:
            self.startWriting()
            return None
        except SSL.Error:
            pass  # the peer is gone already: nothing more to say
        return main.CONNECTION_DONE

    # --- ITransport, ITCPTransport

    def pauseProducing(self) -> None:
        """The protocol takes no more data: stop reading (but for a queued write that needs a read)."""
        self._reading_paused = True
        if not self._write_needs_read:
            self.stopReading()

    def resumeProducing(self) -> None:
        """The protocol reads again (and a read that waited for writability goes on)."""
        self._reading_paused = False
        if self.connected and not self.disconnecting:
            self.startReading()
            if self._read_needs_write:
                self.startWriting()

    def loseConnection(self) -> None:
        """Close after the queued data, with a close_notify (once a producer still registered is unregistered)."""
        if not self.connected or self.disconnecting:
            return
        self.disconnecting = 1
        if not self._write_needs_read:  # else the queued write waits for the socket to be readable
            self.stopReading()
        self.startWriting()  # doWrite flushes, sends close_notify and closes

    def loseWriteConnection(self) -> None:
        """TLS has no half-close that the gateway's peers rely on: close whole."""
        self.loseConnection()

    def _aborted(self) -> bool:
        return self._ending is not None

    def _stop_handshake_timer(self) -> None:
        if self._handshake_call is not None:
            if self._handshake_call.active():
                self._handshake_call.cancel()
            self._handshake_call = None

    def connectionLost(self, reason: Failure) -> None:
        """Close the socket (with a reset when aborted) and tell the protocol, once."""
        if self.disconnected:
            return
        self._stop_handshake_timer()
        if self._lingering is not None:
            reason = Failure(self._lingering)  # not the client's close that ended the wait
            if self._linger_call is not None and self._linger_call.active():
                self._linger_call.cancel()
        FileDescriptor.connectionLost(self, reason)
        self._queue.clear()
        self._queued = 0
        self._close_socket(reason)
        self._tls.set_app_data(None)  # (the connection referred to this: a cycle)
        self._tell_lost(reason)

    # --- ISSLTransport, INegotiated

    def getPeerCertificate(self) -> Any:
        """The peer's certificate (pyOpenSSL ``X509``; verified unless ``verify=off``), None without one."""
        return self._tls.get_peer_certificate()

    @property
    def negotiatedProtocol(self) -> Optional[bytes]:
        """The ALPN protocol chosen in the handshake, None without one."""
        return self._tls.get_alpn_proto_negotiated() or None

    def logPrefix(self) -> str:
        """The protocol's class name, as Twisted's transports log it."""
        return f"{type(self.protocol).__name__},tls"


def select_protocol(connection: SSL.Connection, offered: list[bytes]) -> Any:
    """
    The ALPN callback of an ``ssl:`` listener's contexts: the first of the
    connection's :attr:`TLSSocketConnection.protocols` the client offers; with
    none in common the handshake goes on without ALPN (the client may still
    speak HTTP/1.1).  It replaces the callback Twisted's
    ``CertificateOptions`` installs, which expects a Twisted TLS protocol.
    """
    transport = connection.get_app_data()
    for name in transport.protocols if isinstance(transport, TLSSocketConnection) else ():
        if name in offered:
            return name
    return SSL.NO_OVERLAPPING_PROTOCOLS


def _handshake_error(e: SSL.Error) -> BaseException:
    """
    Why a client-side handshake failed: OpenSSL's error as it is; a system
    call error (the peer reset or closed the socket) as an ``SSL.Error`` of
    OpenSSL's shape, ``[(library, function, reason)]``, which is what Twisted's
    TLS reports for a connection lost mid-handshake and what the gateway's
    and Autobahn's TLS error messages read.
    """
    if not isinstance(e, SSL.SysCallError):
        return e
    code = e.args[0] if e.args and isinstance(e.args[0], int) else -1
    why = os.strerror(code) if code > 0 else "the peer closed the connection"
    return SSL.Error([("SSL routines", "", f"unexpected eof while reading: {why}")])


def _lost(e: SSL.Error, what: str) -> BaseException:
    """The reason a connection ended on an OpenSSL error: ConnectionLost with OpenSSL's words."""
    if isinstance(e, SSL.SysCallError):
        return error.ConnectionLost(f"{what}: {e.args[1] if len(e.args) > 1 else e}")
    return error.ConnectionLost(f"{what}: {e}")


class TLSSocketServerFactory(ListeningHandoverFactory):
    """
    The factory a plain stream endpoint listens with to serve TLS on its sockets.

    :param connection_for: makes the server-side OpenSSL connection of a socket
        (:meth:`tunnelgw.certificates.ServerCertificates.socket_connection`).
    :param wrapped: the application's factory.
    """

    def __init__(self, connection_for: Callable[[socket.socket], SSL.Connection], wrapped: Any, reactor: Any) -> None:
        super().__init__(wrapped, self._adopt_tls)
        self._connection_for = connection_for
        self._reactor = reactor
        negotiation = interfaces.IProtocolNegotiationFactory(wrapped, None)
        self._protocols: Sequence[bytes] = tuple(negotiation.acceptableProtocols()) if negotiation is not None else ()

    def _adopt_tls(self, transport: Any, protocol: interfaces.IProtocol) -> bool:
        """Detach the accepted socket from Twisted's TCP transport (which has read nothing) and serve TLS on it."""
        taken = take_over(transport)
        if taken is None:  # ListenTLS streams are tcp: or systemd:, which have sockets
            _log.error("ssl: listener: the stream transport {transport!r} has no socket to serve TLS on",
                       transport=transport)
            transport.abortConnection()
            return True
        sock, host, peer = taken
        try:
            tls = self._connection_for(sock)
        except SSL.Error:
            _log.failure("ssl: listener: cannot make a TLS connection for an accepted socket")
            sock.close()
            return True
        TLSSocketConnection(sock, tls, protocol, host, peer, self._reactor, self._protocols).start()
        return True


@implementer(interfaces.IStreamClientEndpoint)
class TLSSocketClientEndpoint:
    """
    TLS to a server over a plain stream endpoint (``tcp:``, a host name, or
    ``unix:``): each connected socket is taken over before any byte is read
    and driven by a :class:`TLSSocketConnection` in connect state.

    As with Twisted's ``wrapClientTLS``, :meth:`connect` fires once the stream
    is connected, with the application's protocol already connected; the
    protocol hears ``handshakeCompleted`` (``IHandshakeListener``) once the
    handshake and check succeeded, or ``connectionLost`` with why not.

    :param connection_for: makes the client-side OpenSSL connection of a
        socket (context, server name).
    :param check: run after the handshake (:class:`TLSSocketConnection`).
    :param handshake_timeout: the seconds the handshake may take.
    :param keep_session: given each connection's resumable TLS session (:class:`TLSSocketConnection`).
    :ivar keep_session: that callable, or None: this endpoint offers no session for resumption.
    """

    def __init__(self, stream: interfaces.IStreamClientEndpoint,
                 connection_for: Callable[[socket.socket], SSL.Connection], reactor: Any,
                 check: Optional[Callable[[SSL.Connection], None]] = None,
                 handshake_timeout: Optional[float] = None,
                 keep_session: Optional[Callable[[SSL.Session], None]] = None) -> None:
        self._stream = stream
        self.keep_session = keep_session
        self._connection_for = connection_for
        self._reactor = reactor
        self._check = check
        self._handshake_timeout = handshake_timeout

    def connect(self, protocolFactory: Any) -> "defer.Deferred[Any]":
        """Connect the stream, take its socket over and start the handshake; fires with the application's protocol."""
        return connect_handed_over(self._stream, protocolFactory, self._adopt_tls)

    def _adopt_tls(self, transport: Any, protocol: interfaces.IProtocol) -> bool:
        taken = take_over(transport)
        if taken is None:
            transport.abortConnection()
            raise error.ConnectError(string=f"the stream transport {transport!r} has no socket for TLS")
        sock, host, peer = taken
        try:
            tls = self._connection_for(sock)
        except SSL.Error:
            sock.close()
            raise
        TLSSocketConnection(sock, tls, protocol, host, peer, self._reactor, connect=True, check=self._check,
                            handshake_timeout=self._handshake_timeout, keep_session=self.keep_session).start()
        return True
