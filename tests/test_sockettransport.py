"""
:mod:`tunnelgw.sockettransport`: the gateway's own plain TCP transport.

First a real loopback TCP pair under a MemoryReactorClock (which only records
read and write registrations), so what reached the peer, what was queued and
what the protocol heard can all be read off; then the endpoints on the real
reactor, as the gateway's listeners and backends use them, including the
connections that must stay on Twisted's transport (``unix:``, a ``haproxy:``
listener's PROXY header parser).
"""

from __future__ import annotations

import gc
import socket
import tempfile
import weakref
from pathlib import Path
from typing import Any, Optional

from twisted.internet import error, interfaces, main, task, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (TCP4ClientEndpoint, TCP4ServerEndpoint, UNIXClientEndpoint,
                                        UNIXServerEndpoint, serverFromString)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tunnelgw.sockettransport import (HandoverFactory, ListeningHandoverFactory, SocketClientEndpoint, SocketConnection,
                                      SocketServerEndpoint, connect_handed_over, plain_adopter)


class _Recorder(Protocol):
    """What the transport told the protocol."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.reason: Optional[Failure] = None
        self.lost: Deferred[None] = Deferred()
        self._want: Optional[tuple[int, Deferred[bytes]]] = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self._want is not None and len(self.data) >= self._want[0]:
            waiting, self._want = self._want[1], None
            waiting.callback(bytes(self.data))

    def connectionLost(self, reason: Failure = main.CONNECTION_DONE) -> None:
        self.reason = reason
        self.lost.callback(None)

    def received(self, count: int) -> "Deferred[bytes]":
        """Fires with everything received once count bytes have arrived."""
        waiting: Deferred[bytes] = Deferred()
        if len(self.data) >= count:
            waiting.callback(bytes(self.data))
        else:
            self._want = (count, waiting)
        return waiting


@implementer(interfaces.IHalfCloseableProtocol)
class _HalfCloser(_Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.read_closed = self.write_closed = False

    def readConnectionLost(self) -> None:
        self.read_closed = True

    def writeConnectionLost(self) -> None:
        self.write_closed = True


class _Producer:
    def __init__(self) -> None:
        self.paused = self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (blocking sockets)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        ours = socket.create_connection(listener.getsockname())
        return ours, listener.accept()[0]


class SocketConnectionTests(TestCase):
    """
    One connection over a real socket pair (ours with a small send buffer, so
    that the kernel soon stops taking bytes); the reactor is a recorder the
    test drives.
    """

    def setUp(self) -> None:
        self.ours, self.peer = socket.socketpair()
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.ours.setblocking(False)
        self.peer.setblocking(False)
        self.addCleanup(self.peer.close)
        self.addCleanup(self.ours.close)
        self.reactor = MemoryReactorClock()
        self.protocol = self.make_protocol()
        self.transport = SocketConnection(self.ours, self.protocol, None, None, self.reactor)
        self.transport.start()

    def make_protocol(self) -> _Recorder:
        return _Recorder()

    def received(self) -> bytes:
        """What the peer can read now; b"" also at EOF."""
        chunks = []
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return b"".join(chunks)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def writable(self) -> bool:
        return self.transport in self.reactor.getWriters()

    def drain(self) -> bytes:
        """Let the peer read and the transport write until nothing is queued (bounded); what the peer got."""
        got = []
        for _ in range(10_000):
            got.append(self.received())
            if not self.writable():
                break
            result = self.transport.doWrite()
            if result is not None:
                self.transport.connectionLost(Failure(result))  # as the reactor does
        got.append(self.received())
        return b"".join(got)

    def peer_at_eof(self) -> bool:
        self.peer.setblocking(True)
        self.peer.settimeout(5)
        try:
            return self.peer.recv(1) == b""
        finally:
            self.peer.setblocking(False)

    def test_connected_and_reading(self) -> None:
        """The protocol is connected to this transport, which is watched for reading, not writing."""
        self.assertIs(self.protocol.transport, self.transport)
        self.assertIn(self.transport, self.reactor.getReaders())
        self.assertFalse(self.writable())
        self.assertTrue(interfaces.ITCPTransport.providedBy(self.transport))
        self.assertIs(self.transport.getHandle(), self.ours)

    def test_tcp_addresses_and_options(self) -> None:
        """On TCP: this side's address from the socket when asked, the peer's as given; TCP_NODELAY and keepalive."""
        ours, peer = _tcp_pair()
        self.addCleanup(peer.close)
        given = IPv4Address("TCP", *peer.getsockname())
        transport = SocketConnection(ours, _Recorder(), None, given, self.reactor)
        self.assertEqual(transport.getHost(), IPv4Address("TCP", *ours.getsockname()))
        self.assertIs(transport.getPeer(), given)
        transport.setTcpNoDelay(True)
        transport.setTcpKeepAlive(True)
        self.assertTrue(transport.getTcpNoDelay() and transport.getTcpKeepAlive())
        transport.connectionLost(Failure(main.CONNECTION_DONE))
        self.assertEqual(ours.fileno(), -1)

    def test_write_with_nothing_queued_is_sent_at_once(self) -> None:
        """No registration for writability, no queue: the bytes are at the peer already."""
        self.transport.write(b"hello")
        self.transport.writeSequence([b" ", b"", b"world"])
        self.assertEqual(self.received(), b"hello world")
        self.assertFalse(self.writable())

    def test_what_the_kernel_does_not_take_is_queued_in_order(self) -> None:
        """A write larger than the socket buffer: the rest is queued, later writes queue behind it."""
        big = bytes(range(256)) * 4096  # 1 MiB
        self.transport.write(big)
        self.assertTrue(self.writable())
        self.transport.writeSequence([b"second", b"third"])
        self.transport.write(b"fourth")
        self.assertEqual(self.drain(), big + b"secondthirdfourth")
        self.assertFalse(self.writable())

    def test_partial_sequence_keeps_order(self) -> None:
        """A sequence split by the kernel anywhere (inside its second piece here) keeps every byte in order."""
        first, second = b"a" * 1000, bytes(range(256)) * 2048
        self.transport.writeSequence([first, second, b"tail"])
        self.transport.write(b"next")
        self.assertEqual(self.drain(), first + second + b"tailnext")

    def test_many_pieces(self) -> None:
        """More pieces than the iovec cap are joined (at once) or sent in turns (queued), and arrive whole."""
        pieces = [bytes([i % 256]) * 10 for i in range(500)]
        self.transport.writeSequence(pieces)
        self.assertEqual(self.drain(), b"".join(pieces))
        self.transport.write(b"z" * 500_000)
        self.transport.writeSequence(pieces)
        self.assertEqual(self.drain(), b"z" * 500_000 + b"".join(pieces))

    def test_strings_are_refused(self) -> None:
        """As Twisted's transports: text is not bytes."""
        self.assertRaises(TypeError, self.transport.write, "text")
        self.assertRaises(TypeError, self.transport.writeSequence, [b"a", "text"])

    def test_producer_paused_when_the_queue_grows(self) -> None:
        """A queue beyond bufferSize pauses the registered streaming producer; the drained queue resumes it."""
        producer = _Producer()
        self.transport.bufferSize = 8192
        self.transport.registerProducer(producer, True)
        self.transport.write(b"x" * 200_000)
        self.transport.write(b"y" * 10_000)
        self.assertTrue(producer.paused)
        self.assertEqual(self.drain(), b"x" * 200_000 + b"y" * 10_000)
        self.assertFalse(producer.paused)

    def test_reads_go_to_the_protocol_and_pause_stops_them(self) -> None:
        """doRead delivers what arrived; pauseProducing takes the socket off the reactor's readers."""
        self.peer.sendall(b"from the peer")
        self.assertIsNone(self.transport.doRead())
        self.assertEqual(bytes(self.protocol.data), b"from the peer")
        self.transport.pauseProducing()
        self.assertNotIn(self.transport, self.reactor.getReaders())
        self.transport.resumeProducing()
        self.assertIn(self.transport, self.reactor.getReaders())
        self.assertIsNone(self.transport.doRead())  # nothing there: EAGAIN is not an end

    def test_peer_close_ends_the_connection(self) -> None:
        """EOF from the peer: ConnectionDone, as Twisted's TCP reports it."""
        self.peer.close()
        self.assertIs(self.transport.doRead(), main.CONNECTION_DONE)

    def test_lose_connection_after_the_queue(self) -> None:
        """Everything queued goes out, then the close; a write after loseConnection still goes first."""
        self.transport.write(b"x" * 300_000)
        self.transport.loseConnection()
        self.transport.write(b"after")
        self.assertNotIn(self.transport, self.reactor.getReaders())
        self.assertEqual(self.drain(), b"x" * 300_000 + b"after")
        self.assertTrue(self.protocol.reason.check(error.ConnectionDone))
        self.assertTrue(self.peer_at_eof())
        self.assertEqual(self.transport.fileno(), -1)

    def test_lose_connection_waits_for_a_paused_producer(self) -> None:
        """As Twisted's: a paused producer is resumed first, and the close comes once it is unregistered."""
        producer = _Producer()
        self.transport.bufferSize = 8192
        self.transport.registerProducer(producer, True)
        self.transport.write(b"x" * 200_000)
        self.transport.loseConnection()
        self.drain()
        self.assertIsNone(self.protocol.reason)
        self.assertFalse(producer.paused)
        self.transport.unregisterProducer()
        self.drain()
        self.assertTrue(self.protocol.reason.check(error.ConnectionDone))

    def test_abort_drops_the_queue_and_resets(self) -> None:
        """abortConnection: no more I/O now, connectionLost on the next turn, and the peer sees a reset."""
        self.transport.write(b"x" * 300_000)
        self.transport.abortConnection()
        self.assertFalse(self.writable())
        self.assertNotIn(self.transport, self.reactor.getReaders())
        self.transport.write(b"ignored")
        self.assertIsNone(self.protocol.reason)
        self.reactor.advance(0)
        self.assertTrue(self.protocol.reason.check(error.ConnectionAborted))
        self.assertEqual(self.transport.fileno(), -1)

    def test_peer_gone_ends_the_connection_on_a_write(self) -> None:
        """A send that fails (the peer is gone) ends the connection with ConnectionLost on the next turn."""
        self.peer.close()
        self.transport.write(b"into the void")
        self.assertIsNone(self.protocol.reason)
        self.reactor.advance(0)
        self.assertTrue(self.protocol.reason.check(error.ConnectionLost))

    def test_a_queued_write_that_fails_is_an_end(self) -> None:
        """doWrite returns ConnectionLost when the peer is gone, for the reactor to end the connection with."""
        self.transport.write(b"x" * 300_000)
        self.peer.close()
        result = None
        for _ in range(100):
            result = self.transport.doWrite()
            if result is not None:
                break
        self.assertIsInstance(result, error.ConnectionLost)

    def test_connection_lost_once(self) -> None:
        """A second end (the reactor's after an abort's) tells the protocol nothing more."""
        self.transport.abortConnection()
        self.transport.connectionLost(Failure(main.CONNECTION_LOST))
        self.reactor.advance(0)
        self.assertTrue(self.protocol.reason.check(error.ConnectionLost))
        self.assertTrue(self.protocol.lost.called)


class HalfCloseTests(SocketConnectionTests):
    """The same with a half-closeable protocol: EOF and loseWriteConnection close one direction only."""

    def make_protocol(self) -> _Recorder:
        return _HalfCloser()

    def test_peer_close_ends_the_connection(self) -> None:
        """EOF from the peer closes our reading side only; writing goes on."""
        self.peer.shutdown(socket.SHUT_WR)
        self.assertIsNone(self.transport.doRead())
        protocol: Any = self.protocol
        self.assertTrue(protocol.read_closed)
        self.assertNotIn(self.transport, self.reactor.getReaders())
        self.transport.write(b"still")
        self.assertEqual(self.received(), b"still")

    def test_lose_write_connection(self) -> None:
        """The queue goes out, then our FIN; the protocol hears writeConnectionLost and still reads."""
        self.transport.write(b"x" * 200_000)
        self.transport.loseWriteConnection()
        self.transport.write(b"dropped")
        self.assertEqual(self.drain(), b"x" * 200_000)
        protocol: Any = self.protocol
        self.assertTrue(protocol.write_closed)
        self.assertTrue(self.peer_at_eof())
        self.peer.sendall(b"answer")
        self.assertIsNone(self.transport.doRead())
        self.assertEqual(bytes(self.protocol.data), b"answer")


class HandoverTests(TestCase):
    """The hand-over of a Twisted TCP transport's socket, driven by hand."""

    def test_the_dropped_transport_is_not_heard(self) -> None:
        """
        A connect that completes on a readable and writable event runs Twisted's
        doWrite after the take-over, on the detached socket: the end that
        transport then reports never reaches the application (it once ended
        backend sessions whose desktop greeted at once), and the connection
        goes on.
        """
        ours, peer = _tcp_pair()
        self.addCleanup(peer.close)
        reactor = MemoryReactorClock()
        application = _Recorder()
        handover = HandoverFactory(Factory.forProtocol(lambda: application), plain_adopter(reactor)).buildProtocol(None)
        assert handover is not None
        twisted_transport = tcp.Server(ours, handover, ("127.0.0.1", 1), None, 1, reactor)
        handover.makeConnection(twisted_transport)
        self.assertIsInstance(application.transport, SocketConnection)
        why = twisted_transport.doWrite()  # the stale write event, as the reactor dispatches it
        self.assertIsNotNone(why)
        twisted_transport.connectionLost(Failure(why))
        self.assertIsNone(application.reason)
        application.transport.write(b"still here")
        peer.settimeout(5)
        self.assertEqual(peer.recv(100), b"still here")
        application.transport.abortConnection()
        reactor.advance(0)
        self.assertTrue(application.reason.check(error.ConnectionAborted))


    def test_a_listeners_failed_hand_over_is_logged_and_aborted(self) -> None:
        """An adopt that raises on an accepted connection: logged, the connection aborted, the application not told."""
        ours, peer = _tcp_pair()
        self.addCleanup(peer.close)
        reactor = MemoryReactorClock()
        application = _Recorder()

        def broken(transport: Any, protocol: Any) -> bool:
            raise RuntimeError("broken adopt")

        handover = ListeningHandoverFactory(Factory.forProtocol(lambda: application), broken).buildProtocol(None)
        assert handover is not None
        twisted_transport = tcp.Server(ours, handover, ("127.0.0.1", 1), None, 1, reactor)
        handover.makeConnection(twisted_transport)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIsNone(application.transport)
        reactor.advance(0)  # Twisted's abort ends its transport on the next turn
        self.assertEqual(ours.fileno(), -1)
        self.assertIsNone(application.reason)


class EndpointTests(TestCase):
    """The endpoints on the real reactor, as the gateway's listeners and backends use them."""

    timeout = 20

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.server_made: Deferred[_Recorder] = Deferred()

    def factory(self) -> Factory:
        def build() -> _Recorder:
            server = _Recorder()
            if not self.server_made.called:
                self.server_made.callback(server)
            return server
        return Factory.forProtocol(build)

    async def connected(self, stream: interfaces.IStreamServerEndpoint) -> tuple[Any, _Recorder]:
        """A listener on stream (SocketServerEndpoint), and a client connected to it (SocketClientEndpoint)."""
        port = await SocketServerEndpoint(stream, self.reactor).listen(self.factory())
        self.addCleanup(port.stopListening)
        client: _Recorder = await SocketClientEndpoint(
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", port.getHost().port), self.reactor
        ).connect(Factory.forProtocol(_Recorder))
        return port, client

    async def test_both_sides_on_the_socket_transport(self) -> None:
        """A listener's and a client's TCP connections are SocketConnections; 4 MiB each way; both ends close."""
        port, client = await self.connected(TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1"))
        self.assertIsInstance(client.transport, SocketConnection)
        self.assertEqual(client.transport.getPeer().port, port.getHost().port)
        payload = bytes(range(256)) * 16384
        client.transport.write(payload)
        server = await self.server_made
        self.assertEqual(await server.received(len(payload)), payload)
        self.assertIsInstance(server.transport, SocketConnection)
        self.assertEqual(server.transport.getPeer(), client.transport.getHost())
        server.transport.writeSequence([payload[:1000], payload[1000:]])
        self.assertEqual(await client.received(len(payload)), payload)
        client.transport.loseConnection()
        await client.lost
        await server.lost
        self.assertTrue(server.reason.check(error.ConnectionDone))

    async def test_ended_connections_are_freed_without_the_cycle_collector(self) -> None:
        """
        With the cyclic collector off, both ends' transports and protocols are
        freed once the test drops them: a lost transport forgets its protocol,
        and what Twisted keeps of a taken-over connect (its connector's cycles)
        no longer refers to the application's factory or protocol.
        """
        gc.disable()
        self.addCleanup(gc.enable)
        _, client = await self.connected(TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1"))
        client.transport.write(b"hello")
        server = await self.server_made
        self.assertEqual(await server.received(5), b"hello")
        client.transport.loseConnection()
        await client.lost
        await server.lost
        refs = [weakref.ref(o) for o in (client, server, client.transport, server.transport)]
        del client, server
        self.server_made = Deferred()
        await task.deferLater(self.reactor, 0, lambda: None)  # out of the reactor call that ended the server
        self.assertEqual([ref() for ref in refs], [None] * 4)

    async def test_connection_refused(self) -> None:
        """A refused connect fails the Deferred with Twisted's error, as the stream endpoint's own."""
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            where = closed.getsockname()[1]
        with self.assertRaises(error.ConnectionRefusedError):
            await SocketClientEndpoint(TCP4ClientEndpoint(self.reactor, "127.0.0.1", where),
                                       self.reactor).connect(Factory.forProtocol(_Recorder))

    async def test_a_failed_hand_over_fails_the_connect(self) -> None:
        """What an outgoing connection's adopt raises fails the connect with it; the connection is aborted."""
        port = await TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(self.factory())
        self.addCleanup(port.stopListening)

        def refusing(transport: Any, protocol: Any) -> bool:
            raise error.ConnectError(string="not this one")

        with self.assertRaises(error.ConnectError):
            await connect_handed_over(TCP4ClientEndpoint(self.reactor, "127.0.0.1", port.getHost().port),
                                      Factory.forProtocol(_Recorder), refusing)
        server = await self.server_made
        await server.lost  # the server side sees the abort

    async def test_unix_connections_stay_on_twisted(self) -> None:
        """A unix: stream has no TCP socket to take over: its events pass through to the protocol."""
        path = str(Path(tempfile.mkdtemp()) / "s")
        port = await SocketServerEndpoint(UNIXServerEndpoint(self.reactor, path), self.reactor).listen(self.factory())
        self.addCleanup(port.stopListening)
        client: _Recorder = await SocketClientEndpoint(UNIXClientEndpoint(self.reactor, path),
                                                       self.reactor).connect(Factory.forProtocol(_Recorder))
        self.assertNotIsInstance(client.transport, SocketConnection)
        client.transport.write(b"over unix")
        server = await self.server_made
        self.assertEqual(await server.received(9), b"over unix")
        client.transport.loseConnection()
        await server.lost

    async def test_haproxy_listener_keeps_its_proxy_header_parser(self) -> None:
        """
        Under ``haproxy:`` the socket is not taken from beneath the PROXY
        parser: the protocol sees the address the header gives, and only
        what follows the header.
        """
        _, client = await self.connected(serverFromString(self.reactor, "haproxy:tcp:0:interface=127.0.0.1"))
        client.transport.write(b"PROXY TCP4 203.0.113.7 127.0.0.1 4321 80\r\nafter the header")
        server = await self.server_made
        self.assertEqual(await server.received(16), b"after the header")
        self.assertEqual(server.transport.getPeer().host, "203.0.113.7")
        client.transport.loseConnection()
        await server.lost
