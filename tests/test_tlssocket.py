"""
:mod:`tunnelgw.tlssocket`: TLS served on the accepted socket itself.  Real
loopback connections on the reactor (iosim cannot drive a socket-backed
OpenSSL connection), through the gateway's own ``ssl:`` listener wiring
(:class:`tunnelgw.certificates.TLSServerEndpoint`), against Twisted's TLS
client; every wait is on an event, bounded by the test's timeout.
"""

from __future__ import annotations

import gc
import socket
import ssl
import tempfile
import weakref
from pathlib import Path
from queue import Queue
from typing import Any, Callable, Optional, Sequence, cast

from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.pyopenssl import verify_hostname
from twisted.internet import error, interfaces, main, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from support import Pki, TcpServer, make_client_cert, make_pki
from tunnelgw.certificates import ServerCertificates, TLSServerEndpoint, client_certificate, load_contexts
from tunnelgw.core.tlsconfig import ListenTLS
from tunnelgw.tlssocket import TLSSocketClientEndpoint, TLSSocketConnection


@implementer(interfaces.IHandshakeListener)
class _Peer(Protocol):
    """Collects what arrives; Deferreds for a byte count, the handshake and the end."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.chunks = 0
        self.handshake: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.reason: Optional[Failure] = None
        self._want: Optional[tuple[int, Deferred[bytes]]] = None

    @property
    def tls(self) -> Any:
        """The transport, with what a TLS transport has (ITransport names only write and close)."""
        return self.transport

    def handshakeCompleted(self) -> None:
        self.handshake.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.chunks += 1
        if self._want is not None and len(self.received) >= self._want[0]:
            waiting, self._want = self._want[1], None
            waiting.callback(bytes(self.received))

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:
        self.reason = reason
        self.lost.callback(None)

    async def end(self) -> Failure:
        """Why the connection ended, once it has."""
        await self.lost
        assert self.reason is not None
        return self.reason

    def until(self, count: int) -> "Deferred[bytes]":
        """Fires with everything received once count bytes have arrived."""
        d: Deferred[bytes] = Deferred()
        if len(self.received) >= count:
            d.callback(bytes(self.received))
        else:
            self._want = (count, d)
        return d


class _Producer:
    """A streaming producer that records being paused and resumed."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.resumed: Deferred[None] = Deferred()

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")
        if not self.resumed.called:
            self.resumed.callback(None)

    def stopProducing(self) -> None:
        self.events.append("stop")


@implementer(interfaces.IProtocolNegotiationFactory)
class _Negotiating(Factory):
    """A server factory with an ALPN list, as the gateway's front factory has."""

    def __init__(self, build: Callable[[], Protocol], protocols: Sequence[bytes]) -> None:
        self._build = build
        self._protocols = protocols

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._build()

    def acceptableProtocols(self) -> list[bytes]:
        return list(self._protocols)


class _RealSockets(TestCase):
    """Real loopback sockets on the global reactor, a test PKI, and the server-side peers the test makes."""

    timeout = 20

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.folder = Path(tempfile.mkdtemp())
        self.pki: Pki = make_pki(self.folder / "pki")
        self.servers: list[_Peer] = []
        self.server_made: Deferred[_Peer] = Deferred()

    async def _close(self, peer: _Peer) -> None:
        """Abort a client the test left open and wait for its end."""
        if not peer.lost.called:
            peer.tls.abortConnection()
            await peer.lost


class TLSSocketConnectionTests(_RealSockets):
    """An ``ssl:`` listener's connections over real loopback sockets."""

    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(self._servers_closed)  # runs last: after the clients are gone

    async def _servers_closed(self) -> None:
        """Every server-side connection ends once its client is gone (nothing left on the reactor)."""
        for server in self.servers:
            await server.lost

    async def listen(self, tls: Optional[ListenTLS] = None, protocols: Sequence[bytes] = ()) -> int:
        """Listen with the gateway's TLS endpoint on a free loopback port (offering protocols over ALPN); the port."""
        tls = tls or ListenTLS(stream="tcp:0", private_key=str(self.pki.server_key),
                               certificate=str(self.pki.fullchain))
        endpoint = TLSServerEndpoint(TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1"),
                                     ServerCertificates(load_contexts(tls)), self.reactor)

        def build() -> _Peer:
            peer = _Peer()
            self.servers.append(peer)
            if not self.server_made.called:
                self.server_made.callback(peer)
            return peer

        port = await endpoint.listen(_Negotiating(build, protocols))
        self.addCleanup(port.stopListening)
        address: Any = port.getHost()
        return int(address.port)

    async def connect(self, port: int, client_cert: Optional[Path] = None, protocols: Sequence[bytes] = ()) -> _Peer:
        """A Twisted TLS client connected to port, trusting the test root (with a client certificate and ALPN if given)."""
        trust = Certificate.loadPEM(self.pki.ca_cert.read_bytes())
        mine = PrivateCertificate.loadPEM(client_cert.read_bytes()) if client_cert else None
        options = optionsForClientTLS("localhost", trustRoot=trust, clientCertificate=mine,
                                      acceptableProtocols=list(protocols) or None)
        client = _Peer()
        endpoint = wrapClientTLS(options, TCP4ClientEndpoint(self.reactor, "127.0.0.1", port))
        await endpoint.connect(Factory.forProtocol(lambda: client))
        self.addCleanup(self._close, client)
        return client

    async def pair(self) -> tuple[_Peer, _Peer]:
        """A handshaken client and the server protocol it reached."""
        client = await self.connect(await self.listen())
        server = await self.server_made
        await server.handshake
        await client.handshake
        return client, server

    async def test_handshake_and_both_directions(self) -> None:
        """The handshake completes (the protocol hears of it), bytes go both ways, the transport says TLS."""
        client, server = await self.pair()
        self.assertIsInstance(server.transport, TLSSocketConnection)
        self.assertTrue(interfaces.ISSLTransport.providedBy(server.transport))
        self.assertEqual(server.tls.getPeer().host, "127.0.0.1")
        self.assertEqual(server.tls.getPeer(), client.tls.getHost())
        client.tls.write(b"hello")
        self.assertEqual(await server.until(5), b"hello")
        server.tls.write(b"world")
        self.assertEqual(await client.until(5), b"world")
        self.assertIsNone(server.tls.getPeerCertificate())

    async def test_an_ended_connection_is_freed_without_the_cycle_collector(self) -> None:
        """
        With the cyclic collector off, the server's TLS transport and protocol
        are freed once the test drops them: the OpenSSL connection no longer
        refers to the transport, nor the transport to its protocol.
        """
        gc.disable()
        self.addCleanup(gc.enable)
        client, server = await self.pair()
        server.tls.loseConnection()
        (await server.end()).trap(error.ConnectionDone)
        await client.end()
        refs = [weakref.ref(server), weakref.ref(server.transport)]
        del server
        self.servers.clear()
        self.server_made = Deferred()
        await task.deferLater(self.reactor, 0, lambda: None)  # out of the reactor call that ended the server
        self.assertEqual([ref() for ref in refs], [None, None])

    async def test_alpn_from_the_listener_factory(self) -> None:
        """The factory's ALPN list is served: h2 and http/1.1 offered gets http/1.1; only h2 offered still connects, without ALPN."""
        port = await self.listen(protocols=[b"http/1.1"])
        client = await self.connect(port, protocols=[b"h2", b"http/1.1"])
        server = await self.server_made
        await server.handshake
        await client.handshake
        self.assertEqual(server.tls.negotiatedProtocol, b"http/1.1")
        self.assertEqual(client.tls.negotiatedProtocol, b"http/1.1")
        self.server_made = Deferred()
        other = await self.connect(port, protocols=[b"h2"])
        server = await self.server_made
        await server.handshake
        self.assertIsNone(server.tls.negotiatedProtocol)
        other.tls.write(b"ping")
        self.assertEqual(await server.until(4), b"ping")

    async def test_writes_before_the_handshake_wait_for_it(self) -> None:
        """What the protocol writes on connectionMade reaches the client after the handshake, in order."""
        port = await self.listen()
        client = await self.connect(port)
        server = await self.server_made
        server.tls.write(b"early ")
        server.tls.writeSequence([b"and ", b"more"])
        self.assertEqual(await client.until(14), b"early and more")

    async def test_large_writes_while_the_client_reads_nothing(self) -> None:
        """
        Eight MiB written while the client is paused fill the socket (OpenSSL
        says WantWrite): the producer is paused, the rest is queued and
        retried, and once the client reads every byte arrives in order and
        the producer is resumed.
        """
        client, server = await self.pair()
        server.tls.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        producer = _Producer()
        server.tls.registerProducer(producer, True)
        client.tls.pauseProducing()
        data = bytes(range(256)) * 4096 * 8
        for start in range(0, len(data), 100_000):
            server.tls.writeSequence([data[start:start + 37], data[start + 37:start + 100_000]])
        self.assertEqual(producer.events, ["pause"])
        client.tls.resumeProducing()
        self.assertEqual(await client.until(len(data)), data)
        await producer.resumed
        self.assertEqual(producer.events[:2], ["pause", "resume"])

    async def test_close_after_a_large_write_delivers_it_then_close_notify(self) -> None:
        """loseConnection after a large write: the client gets every byte, then a clean TLS close."""
        client, server = await self.pair()
        data = b"z" * 3_000_000
        server.tls.write(data)
        server.tls.loseConnection()
        reason = await client.end()
        self.assertEqual(bytes(client.received), data)
        reason.trap(error.ConnectionDone)
        (await server.end()).trap(error.ConnectionDone)

    async def test_client_close_notify_ends_the_server_side_cleanly(self) -> None:
        """The client's close_notify after data: the data first, then connectionLost with ConnectionDone."""
        client, server = await self.pair()
        client.tls.write(b"x" * 100_000)
        client.tls.loseConnection()
        reason = await server.end()
        reason.trap(error.ConnectionDone)
        self.assertEqual(bytes(server.received), b"x" * 100_000)

    async def test_peer_close_inside_a_record(self) -> None:
        """A TCP close in the middle of a record (no close_notify) is ConnectionLost, and nothing of it is delivered."""
        client, server = await self.pair()
        raw = client.tls.transport  # the TCP connection under the client's TLS
        raw.write(b"\x17\x03\x03\x40\x00" + b"\x00" * 100)  # a record header promising 16 KiB, then 100 bytes
        raw.loseConnection()
        reason = await server.end()
        reason.trap(error.ConnectionLost)
        self.assertEqual(bytes(server.received), b"")

    async def test_writes_to_a_vanished_client(self) -> None:
        """Writes after the client reset the connection raise nothing; the protocol hears ConnectionLost once."""
        client, server = await self.pair()
        client.tls.abortConnection()
        await client.lost
        while not server.lost.called:
            server.tls.write(b"x" * 65536)
            await _turn(self.reactor)
        (await server.end()).trap(error.ConnectionLost)
        server.tls.write(b"after the end")  # dropped

    async def test_garbage_instead_of_a_handshake(self) -> None:
        """A client that sends no TLS at all: the server protocol is told ConnectionLost, the socket closed."""
        port = await self.listen()
        raw = _Peer()
        await TCP4ClientEndpoint(self.reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: raw))
        server = await self.server_made
        raw.tls.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        (await server.end()).trap(error.ConnectionLost)
        await raw.lost

    async def test_abort(self) -> None:
        """abortConnection drops queued data and closes at once: ConnectionAborted on our side, a lost connection on the client's."""
        client, server = await self.pair()
        client.tls.pauseProducing()
        server.tls.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        server.tls.write(b"q" * 4_000_000)
        server.tls.abortConnection()
        server.tls.abortConnection()  # a second abort is harmless
        (await server.end()).trap(error.ConnectionAborted)
        client.tls.resumeProducing()
        (await client.end()).trap(error.ConnectionLost, error.ConnectionDone)
        self.assertLess(len(client.received), 4_000_000)

    async def test_pause_and_resume_reading(self) -> None:
        """While paused the server's protocol gets nothing even with records in its socket; resumed, it gets them all."""
        client, server = await self.pair()
        server.tls.pauseProducing()
        client.tls.write(b"a" * 50_000)
        handle = server.tls.getHandle()
        # Wait (on reactor turns, no timer) until the records are in the server's socket.
        while _peek(handle) < 50_000:
            await _turn(self.reactor)
        for _ in range(5):
            await _turn(self.reactor)
        self.assertEqual(bytes(server.received), b"")
        server.tls.resumeProducing()
        self.assertEqual(await server.until(50_000), b"a" * 50_000)

    async def test_client_certificates(self) -> None:
        """With clientcert=required, a client certificate is verified and read back; a client without one is refused."""
        tls = ListenTLS(stream="tcp:0", private_key=str(self.pki.server_key), certificate=str(self.pki.fullchain),
                        client_ca=str(self.pki.ca_cert), client_cert="required")
        port = await self.listen(tls)
        cert = make_client_cert(self.pki, self.folder / "clients", "alice", emails=("alice@example.org",))
        client = await self.connect(port, client_cert=cert)
        server = await self.server_made
        await server.handshake
        identity = client_certificate(server.transport)
        assert identity is not None
        self.assertEqual(identity.common_name, "alice")
        self.assertIn(("email", "alice@example.org"), identity.names)

        self.server_made = Deferred()
        anonymous = await self.connect(port)
        refused = await self.server_made
        (await refused.end()).trap(error.ConnectionLost)
        # Under TLS 1.3 the client finishes its side first; OpenSSL's alert then ends it with an error.
        (await anonymous.end()).trap(SSL.Error)
        self.assertFalse(refused.handshake.called)


def _peek(handle: socket.socket) -> int:
    """How many bytes wait in handle's receive buffer (up to 64 KiB)."""
    try:
        return len(handle.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return 0


def _turn(reactor: Any) -> "Deferred[None]":
    """One reactor turn."""
    d: Deferred[None] = Deferred()
    reactor.callLater(0, d.callback, None)
    return d


class _ScriptedTLS:
    """
    Stands in for the OpenSSL connection to drive TLSSocketConnection's own
    state machine through a write that needs a read (``WantReadError``), which
    a real peer cannot be made to cause on demand: send() raises what is
    scripted, then takes all; recv() gives what is scripted, then WantReadError.
    """

    def __init__(self) -> None:
        self.send_script: list[type[Exception]] = []
        self.recv_script: list[Any] = []
        self.sent = bytearray()
        #: What each send() was given, as given.
        self.given: list[Any] = []
        self.reads = 0
        self.shutdowns = 0
        #: Whether the socket was corked at each send() (when the test gives the socket).
        self.sock: Optional[socket.socket] = None
        self.corked: list[int] = []

    def set_app_data(self, data: Any) -> None:
        pass

    def set_accept_state(self) -> None:
        pass

    def do_handshake(self) -> None:
        pass

    def send(self, data: Any) -> int:
        if self.send_script:
            raise self.send_script.pop(0)()
        if self.sock is not None:
            self.corked.append(self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))
        self.given.append(data)
        self.sent += bytes(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        self.reads += 1
        if self.recv_script:
            item = self.recv_script.pop(0)
            if isinstance(item, type):
                raise item()
            return bytes(item)
        raise SSL.WantReadError()

    def pending(self) -> int:
        return 0

    def shutdown(self) -> bool:
        self.shutdowns += 1
        return True


class TLSSocketStateTests(TestCase):
    """A write retried after WantReadError, a read after WantWriteError, against the protocol's pause and close."""

    def _connection(self, tcp: bool = False) -> tuple[TLSSocketConnection, _ScriptedTLS, _Peer, MemoryReactorClock]:
        reactor = MemoryReactorClock()
        if tcp:
            with socket.create_server(("127.0.0.1", 0)) as listener:
                ours = socket.create_connection(listener.getsockname())
                theirs = listener.accept()[0]
        else:
            ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        self.addCleanup(ours.close)
        tls = _ScriptedTLS()
        tls.sock = ours if tcp else None
        peer = _Peer()
        address = IPv4Address("TCP", "127.0.0.1", 1)
        connection = TLSSocketConnection(ours, cast(Any, tls), peer, address, address, reactor)
        connection.start()
        self.assertIsNone(connection.doRead())  # the handshake
        self.assertTrue(peer.handshake.called)
        tls.reads = 0
        return connection, tls, peer, reactor

    def test_a_header_and_its_payload_copy_one_record_at_most(self) -> None:
        """
        writeSequence of a frame header and a 64 KiB payload: the header and
        the payload's first bytes make one full record (a copy of 16 KiB at
        most); the rest of the payload goes to OpenSSL as a view of it, not copied.
        """
        connection, tls, _, _ = self._connection()
        header, payload = b"\x82\x7f" + (65536).to_bytes(8, "big"), bytes(range(256)) * 256
        connection.writeSequence([header, payload])
        self.assertEqual(bytes(tls.sent), header + payload)
        first, rest = tls.given
        self.assertEqual((type(first), len(first)), (bytes, 16384))
        self.assertIsInstance(rest, memoryview)
        self.assertIs(rest.obj, payload)

    def test_more_than_a_record_is_written_corked_and_uncorked_after(self) -> None:
        """
        Over TCP a flush of more than one record is written corked (the
        kernel sends full segments), a record or less is not, and the socket
        is uncorked after every flush: also one that stops on a full socket.
        """
        connection, tls, _, _ = self._connection(tcp=True)
        sock = tls.sock
        assert sock is not None
        connection.writeSequence([b"\x82\x7f" + (65536).to_bytes(8, "big"), bytes(65536)])
        self.assertEqual(tls.corked, [1, 1])  # a record of the header and the payload's start, then the rest
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK), 0)
        tls.corked.clear()
        connection.write(b"k" * 100)  # an input event: sent at once, never corked
        self.assertEqual(tls.corked, [0])
        tls.send_script = [SSL.WantWriteError]
        connection.write(bytes(40000))
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK), 0)
        tls.corked.clear()
        connection.doWrite()  # the socket has room again: the rest, corked, then uncorked
        self.assertEqual((tls.corked, bytes(tls.sent[-40000:])), ([1], bytes(40000)))
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK), 0)

    def test_a_retried_write_resumes_the_producer_and_keeps_a_paused_protocol_paused(self) -> None:
        """After a write that needed a read completes: the producer is resumed, reading stops, nothing is delivered."""
        connection, tls, peer, reactor = self._connection()
        producer = _Producer()
        connection.registerProducer(producer, True)
        connection.bufferSize = 10
        connection.pauseProducing()  # the protocol takes nothing more
        self.assertNotIn(connection, reactor.getReaders())
        tls.send_script = [SSL.WantReadError]
        connection.write(b"x" * 100)
        self.assertEqual(producer.events, ["pause"])
        self.assertIn(connection, reactor.getReaders())  # the write needs the socket readable
        tls.recv_script = [b"not for a paused protocol"]
        self.assertIsNone(connection.doRead())
        self.assertEqual(bytes(tls.sent), b"x" * 100)
        self.assertEqual(producer.events, ["pause", "resume"])
        self.assertNotIn(connection, reactor.getReaders())
        self.assertEqual((tls.reads, bytes(peer.received)), (0, b""))
        connection.resumeProducing()
        self.assertIn(connection, reactor.getReaders())
        self.assertIsNone(connection.doRead())
        self.assertEqual(bytes(peer.received), b"not for a paused protocol")

    def test_a_retried_write_then_sends_a_pending_close_notify(self) -> None:
        """loseConnection while a write waits for a read: once it completes, close_notify goes out and the end comes."""
        connection, tls, peer, reactor = self._connection()
        tls.send_script = [SSL.WantReadError]
        connection.write(b"last words")
        connection.loseConnection()
        self.assertEqual(tls.shutdowns, 0)
        tls.recv_script = [b"after the close"]
        self.assertIs(connection.doRead(), main.CONNECTION_DONE)
        self.assertEqual((bytes(tls.sent), tls.shutdowns, tls.reads), (b"last words", 1, 0))

    def test_a_read_waiting_for_writability_waits_for_a_paused_protocol(self) -> None:
        """A read that needed the socket writable does not deliver to a paused protocol; resuming it goes on."""
        connection, tls, peer, reactor = self._connection()
        tls.recv_script = [SSL.WantWriteError]
        self.assertIsNone(connection.doRead())
        self.assertIn(connection, reactor.getWriters())
        connection.pauseProducing()
        tls.recv_script = [b"held in OpenSSL"]
        self.assertIsNone(connection.doWrite())
        self.assertEqual(bytes(peer.received), b"")
        self.assertNotIn(connection, reactor.getWriters())  # no busy wake-ups while paused
        connection.resumeProducing()
        self.assertIn(connection, reactor.getWriters())
        self.assertIsNone(connection.doWrite())
        self.assertEqual(bytes(peer.received), b"held in OpenSSL")


class _Client(_Peer):
    """A client-side peer that writes early on connectionMade, before the handshake has happened."""

    def __init__(self, early: bytes) -> None:
        super().__init__()
        self.early = early

    def connectionMade(self) -> None:
        if self.early:
            self.transport.write(self.early)


class _Silent(Protocol):
    """A plain TCP server that reads and answers nothing (a backend hanging in the handshake)."""


class _Garbage(Protocol):
    """A plain TCP server that answers the ClientHello with an HTTP error, not TLS."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


class _Hangup(Protocol):
    """A plain TCP server that closes once the ClientHello arrives (a backend dying mid-handshake)."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.loseConnection()


@implementer(interfaces.IStreamClientEndpoint)
class _Retargeted:
    """A TCP client endpoint to 127.0.0.1 whose port the test may change: a server replaced behind one name."""

    def __init__(self, reactor: Any, port: int) -> None:
        self.reactor = reactor
        self.port = port

    def connect(self, factory: Any) -> "Deferred[Any]":
        return TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=5).connect(factory)


class TLSSocketClientTests(_RealSockets):
    """
    The client side (:func:`tunnelgw.backends.tls.tls_endpoint`, and ``tls:``
    strings through :func:`tunnelgw.backends.tls.client_endpoint`) against
    Twisted's own TLS server and against plain TCP servers that misbehave,
    over real loopback sockets.
    """

    def setUp(self) -> None:
        super().setUp()
        self.server_names: list[Optional[bytes]] = []

    async def tls_server(self, client_ca: bool = False) -> int:
        """Twisted's TLS server (memory BIO) with the test certificate, asking for a client certificate if told; its port."""
        from twisted.internet.endpoints import SSL4ServerEndpoint
        from twisted.internet.ssl import CertificateOptions

        key = PrivateCertificate.loadPEM(self.pki.server_key.read_bytes() + self.pki.server_cert.read_bytes())
        ca = Certificate.loadPEM(self.pki.ca_cert.read_bytes())
        options = CertificateOptions(privateKey=key.privateKey.original, certificate=key.original,
                                     extraCertChain=[Certificate.loadPEM(self.pki.chain.read_bytes()).original],
                                     **({"verify": True, "caCerts": [ca.original], "requireCertificate": True}
                                        if client_ca else {}))
        context = options.getContext()
        context.set_tlsext_servername_callback(lambda connection: self.server_names.append(connection.get_servername()))

        @implementer(interfaces.IOpenSSLContextFactory)
        class _Options:
            def getContext(self) -> SSL.Context:
                return context

        def build() -> _Peer:
            server = _Peer()
            self.servers.append(server)
            if not self.server_made.called:
                self.server_made.callback(server)
            return server

        port = await SSL4ServerEndpoint(self.reactor, 0, _Options(), interface="127.0.0.1").listen(
            Factory.forProtocol(build))
        self.addCleanup(port.stopListening)
        address: Any = port.getHost()
        return int(address.port)

    async def plain_server(self, protocol: type[Protocol]) -> int:
        """A plain TCP server speaking protocol; its port (its connections are aborted at the end)."""
        made: list[Protocol] = []

        def build() -> Protocol:
            made.append(protocol())
            return made[-1]

        port = await TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(build))
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [p.transport.abortConnection() for p in made if p.transport is not None])
        address: Any = port.getHost()
        return int(address.port)

    def endpoint(self, port: int, host: str = "localhost", verify: bool = True, trust: Optional[Path] = None,
                 certificate: Optional[Path] = None, timeout: float = 5) -> Any:
        from tunnelgw.backends.tls import load_client_certificate, load_trust_root, tls_endpoint

        stream = TCP4ClientEndpoint(self.reactor, "127.0.0.1", port, timeout=timeout)
        return tls_endpoint(self.reactor, stream, host, timeout, verify=verify,
                            trust_root=load_trust_root(str(trust or self.pki.ca_cert)) if verify else None,
                            certificate=load_client_certificate(str(certificate), None) if certificate else None)

    async def connect(self, endpoint: Any, early: bytes = b"") -> _Peer:
        """A client protocol connected through endpoint, writing early on connectionMade (before the handshake)."""
        client = _Client(early)
        protocol = await endpoint.connect(Factory.forProtocol(lambda: client))
        self.assertIs(protocol, client)
        self.addCleanup(self._close, client)
        return client

    async def _close(self, peer: _Peer) -> None:
        await super()._close(peer)
        for server in self.servers:
            if not server.lost.called:
                server.transport.abortConnection()
                await server.lost

    async def refused(self, endpoint: Any) -> tuple[Failure, str]:
        """Connect through endpoint expecting the handshake to fail: the reason, and the gateway's 502/504 text for it."""
        from tunnelgw.backends.tcp import classify_connect_error
        from tunnelgw.core.relay import connect_rejection

        client = await self.connect(endpoint, early=b"secret")
        reason = await client.end()
        self.assertFalse(client.handshake.called)
        unavailable = classify_connect_error(reason.value, 1)
        return reason, connect_rejection(unavailable.failure, unavailable.detail).reason

    async def test_handshake_and_megabytes_both_ways(self) -> None:
        """
        The handshake completes (handshakeCompleted, SNI sent, the transport
        ours), then 4 MiB of header-and-payload writeSequence calls reach the
        server and 4 MiB come back, in order; a loseConnection ends both sides cleanly.
        """
        from tunnelgw.tlssocket import TLSSocketConnection

        client = await self.connect(self.endpoint(await self.tls_server()), early=b"hello ")
        await client.handshake
        server = await self.server_made
        self.assertIsInstance(client.transport, TLSSocketConnection)
        self.assertEqual(self.server_names, [b"localhost"])
        self.assertIn("localhost", str(client.tls.getPeerCertificate().to_cryptography().subject))
        payload = bytes(range(256)) * 256  # 64 KiB
        for n in range(64):
            client.tls.writeSequence([b"\x82\x7f" + n.to_bytes(8, "big"), payload])
        expected = b"hello " + b"".join(b"\x82\x7f" + n.to_bytes(8, "big") + payload for n in range(64))
        self.assertEqual(await server.until(len(expected)), expected)
        back = payload[::-1] * 64
        server.transport.write(back)
        self.assertEqual(await client.until(len(back)), back)
        client.tls.loseConnection()
        (await server.end()).trap(error.ConnectionDone)
        (await client.end()).trap(error.ConnectionDone)

    def resuming_server(self, version: ssl.TLSVersion) -> tuple[TcpServer, "Queue[bool]"]:
        """
        A TLS server of the standard library (it says whether a connection
        resumed a session) up to version: it writes ``hi``, then reads to the
        end; with whether each connection was resumed, in order, as each
        handshake ends (in the server's threads).
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.pki.fullchain), str(self.pki.server_key))
        context.maximum_version = version
        resumed: Queue[bool] = Queue()

        def serve(conn: socket.socket) -> None:
            with context.wrap_socket(conn, server_side=True) as tls:
                resumed.put(tls.session_reused)
                tls.sendall(b"hi")
                while tls.recv(1024):
                    pass

        server = TcpServer(serve)
        self.addCleanup(server.stop)
        return server, resumed

    async def test_the_last_session_is_resumed(self) -> None:
        """
        Each connection of an endpoint offers the last session: under TLS 1.3
        (its tickets come after the handshake) and 1.2 the server resumes it
        from the second connection on; a server that forgot it (other ticket
        keys) gets a full handshake, then resumes the new session; with
        reuse=False (``sessionReuse=off`` on a tls: string) every handshake
        is a full one; the check after the handshake runs on a resumed
        connection too.
        """
        from tunnelgw.backends.tls import LastSession, client_endpoint, load_trust_root, tls_endpoint

        roots = self.folder / "resume-roots"
        roots.mkdir()
        (roots / "ca.pem").write_bytes(self.pki.ca_cert.read_bytes())

        async def sessions(endpoint: Any, count: int) -> None:
            for _ in range(count):
                client = await self.connect(endpoint)
                await client.handshake
                self.assertEqual(await client.until(2), b"hi")
                client.tls.loseConnection()
                (await client.end()).trap(error.ConnectionDone)

        def endpoint(stream: Any, reuse: bool = True) -> Any:
            return tls_endpoint(self.reactor, stream, "localhost", 5, trust_root=load_trust_root(str(self.pki.ca_cert)),
                                reuse=reuse)

        def handshakes(resumed: "Queue[bool]", count: int) -> list[bool]:
            return [resumed.get(timeout=5) for _ in range(count)]

        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            server, resumed = self.resuming_server(version)
            stream = _Retargeted(self.reactor, server.port)
            ours = endpoint(stream)
            await sessions(ours, 3)
            self.assertEqual(handshakes(resumed, 3), [False, True, True], version)
            other, resumed_there = self.resuming_server(version)  # the same certificate, new ticket keys
            stream.port = other.port
            await sessions(ours, 2)
            self.assertEqual(handshakes(resumed_there, 2), [False, True], version)
            await sessions(endpoint(_Retargeted(self.reactor, server.port), reuse=False), 2)
            self.assertEqual(handshakes(resumed, 2), [False, False], version)
            off = client_endpoint(self.reactor, f"tls:localhost:{server.port}:timeout=5:trustRoots={roots}"
                                                f":sessionReuse=off")
            await sessions(off, 2)
            self.assertEqual(handshakes(resumed, 2), [False, False], version)
        # The check after the handshake runs on a resumed connection too: one endpoint whose second check is
        # for another name refuses the resumed connection.
        server, resumed = self.resuming_server(ssl.TLSVersion.TLSv1_3)
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.load_verify_locations(str(self.pki.ca_cert))
        context.set_verify(SSL.VERIFY_PEER, lambda connection, x509, errno, depth, ok: bool(ok))
        last = LastSession()

        def connection_for(sock: socket.socket) -> SSL.Connection:
            connection = SSL.Connection(context, sock)
            connection.set_tlsext_host_name(b"localhost")
            if last.session is not None:
                connection.set_session(last.session)
            return connection

        names = iter(["localhost", "example.com"])
        checked = TLSSocketClientEndpoint(_Retargeted(self.reactor, server.port), connection_for, self.reactor,
                                          check=lambda connection: verify_hostname(connection, next(names)),
                                          keep_session=last.keep)
        await sessions(checked, 1)
        client = await self.connect(checked)
        (await client.end()).trap(VerificationError)
        self.assertEqual(handshakes(resumed, 2), [False, True])
        self.assertFalse(client.handshake.called)

    async def test_a_tls_string(self) -> None:
        """
        tls:HOST:PORT with trustRoots= (a folder of PEMs), certificate=,
        privateKey= and bindAddress=: verified, the certificate presented,
        the connection made from the given address.
        """
        from tunnelgw.backends.tls import client_endpoint

        roots = self.folder / "roots"
        roots.mkdir()
        (roots / "ca.pem").write_bytes(self.pki.ca_cert.read_bytes())
        (roots / "README").write_text("not a certificate, and not a .pem")
        both = make_client_cert(self.pki, self.folder / "clients", "gateway").read_text()
        split = both.index("-----BEGIN PRIVATE KEY-----")
        cert, key = self.folder / "gateway.crt", self.folder / "gateway.key"
        cert.write_text(both[:split])
        key.write_text(both[split:])
        port = await self.tls_server(client_ca=True)
        endpoint = client_endpoint(self.reactor, f"tls:localhost:{port}:timeout=5:trustRoots={roots}:certificate={cert}"
                                                 f":privateKey={key}:bindAddress=127.0.0.2")
        client = await self.connect(endpoint)
        await client.handshake
        server = await self.server_made
        await server.handshake
        self.assertEqual(server.transport.getPeerCertificate().to_cryptography().subject.rfc4514_string(), "CN=gateway")
        self.assertEqual(server.transport.getPeer().host, "127.0.0.2")  # bindAddress=
        self.assertEqual(client.tls.getHost().host, "127.0.0.2")
        client.tls.write(b"over tls:")
        self.assertEqual(await server.until(9), b"over tls:")

    async def test_tls_over_a_unix_socket(self) -> None:
        """tls:HOST:0:endpoint=unix\\:PATH: TLS over a UNIX socket, HOST for SNI and the name check."""
        from twisted.internet.endpoints import UNIXServerEndpoint
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from twisted.internet.ssl import CertificateOptions

        from tunnelgw.backends.tls import client_endpoint

        key = PrivateCertificate.loadPEM(self.pki.server_key.read_bytes() + self.pki.server_cert.read_bytes())
        options = CertificateOptions(privateKey=key.privateKey.original, certificate=key.original,
                                     extraCertChain=[Certificate.loadPEM(self.pki.chain.read_bytes()).original])
        server = _Peer()
        path = self.folder / "tls.sock"
        port = await UNIXServerEndpoint(self.reactor, str(path)).listen(
            TLSMemoryBIOFactory(options, False, Factory.forProtocol(lambda: server)))
        self.addCleanup(port.stopListening)
        self.servers.append(server)
        roots = self.folder / "roots"
        roots.mkdir()
        (roots / "ca.pem").write_bytes(self.pki.ca_cert.read_bytes())
        client = await self.connect(client_endpoint(self.reactor, f"tls:localhost:0:trustRoots={roots}:"
                                                                  f"endpoint=unix\\:{path}"))
        await client.handshake
        client.tls.setTcpNoDelay(True)  # a UNIX socket has no Nagle: nothing to do, no error
        client.tls.write(b"over unix")
        self.assertEqual(await server.until(9), b"over unix")

    async def test_wrong_host_name_refused(self) -> None:
        """A certificate of the trusted CA for another name: service_identity's error, nothing the protocol wrote sent."""
        from service_identity import VerificationError

        reason, text = await self.refused(self.endpoint(await self.tls_server(), host="desk.example"))
        reason.trap(VerificationError)
        self.assertIn("desk.example", str(reason.value))
        self.assertTrue(text.startswith("backend TLS handshake failed ("), text)
        self.assertIn("desk.example", text)
        server = await self.server_made
        await server.end()
        self.assertEqual(bytes(server.received), b"")

    async def test_address_checked_against_ip_names(self) -> None:
        """An address as host is checked against the certificate's IP names (127.0.0.1 is one), and no SNI is sent."""
        client = await self.connect(self.endpoint(await self.tls_server(), host="127.0.0.1"))
        await client.handshake
        self.assertEqual(self.server_names, [None])
        reason, _ = await self.refused(self.endpoint(await self.tls_server(), host="127.0.0.2"))
        self.assertIn("127.0.0.2", str(reason.value))

    async def test_unknown_ca_refused(self) -> None:
        """A certificate from a CA the trust root does not hold: OpenSSL's 'certificate verify failed', as a TLS failure."""
        other = make_pki(self.folder / "other")
        reason, text = await self.refused(self.endpoint(await self.tls_server(), trust=other.ca_cert))
        reason.trap(SSL.Error)
        self.assertEqual(text, "backend TLS handshake failed (certificate verify failed)")

    async def test_verify_off_accepts_but_sends_sni(self) -> None:
        """verify=off: an unknown CA and another name are accepted, and the server name is still sent."""
        client = await self.connect(self.endpoint(await self.tls_server(), host="desk.example", verify=False))
        await client.handshake
        self.assertEqual(self.server_names, [b"desk.example"])
        server = await self.server_made
        client.tls.write(b"unchecked")
        self.assertEqual(await server.until(9), b"unchecked")

    async def test_client_certificate_in_one_file(self) -> None:
        """A client certificate with its key in one PEM file is presented to a server that requires one."""
        cert = make_client_cert(self.pki, self.folder / "clients", "gateway-one")
        client = await self.connect(self.endpoint(await self.tls_server(client_ca=True), certificate=cert))
        await client.handshake
        server = await self.server_made
        await server.handshake
        self.assertIn("gateway-one", server.transport.getPeerCertificate().to_cryptography().subject.rfc4514_string())

    async def test_server_asking_for_a_certificate_we_lack(self) -> None:
        """A server that requires a client certificate, and none configured: the connection fails with a TLS error."""
        client = await self.connect(self.endpoint(await self.tls_server(client_ca=True)))
        # Under TLS 1.3 our handshake ends first; the server's alert then ends the connection with OpenSSL's error.
        (await client.end()).trap(SSL.Error, error.ConnectionLost)

    async def test_hanging_server_bounded_by_the_timeout(self) -> None:
        """A server that accepts and never answers: the handshake ends after its timeout, a 504 for the gateway."""
        port = await self.plain_server(_Silent)
        reason, text = await self.refused(self.endpoint(port, timeout=0.3))
        reason.trap(error.TimeoutError)
        self.assertEqual(text, "backend connect timed out (1 s)")

    async def test_garbage_answer_refused(self) -> None:
        """A server that answers the ClientHello with HTTP: OpenSSL's error, a clear TLS failure."""
        reason, text = await self.refused(self.endpoint(await self.plain_server(_Garbage)))
        reason.trap(SSL.Error)
        self.assertTrue(text.startswith("backend TLS handshake failed ("), text)
        self.assertRegex(text, "wrong version number|packet length too long|record layer failure")

    async def test_server_closing_mid_handshake(self) -> None:
        """A server that closes after the ClientHello: a TLS failure saying the connection ended."""
        reason, text = await self.refused(self.endpoint(await self.plain_server(_Hangup)))
        reason.trap(SSL.Error)
        self.assertTrue(text.startswith("backend TLS handshake failed (unexpected eof"), text)
