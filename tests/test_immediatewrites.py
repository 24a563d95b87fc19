"""
:func:`tunnelgw.upstream.immediate_writes`: Twisted TCP transports whose
writes go to the socket at once when nothing is queued.  A real socket pair
under a MemoryReactor (which only records read/write registrations), so what
reached the peer and what was queued can both be read off.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.internet.task import Clock
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import TestCase

from tunnelgw.upstream import ImmediateClient, ImmediateServer, ImmediateTLS, immediate_writes


class _Producer:
    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class ImmediateWritesTests(TestCase):
    def setUp(self) -> None:
        self.ours, self.peer = socket.socketpair()
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.peer.setblocking(False)
        self.reactor = MemoryReactor()
        self.transport: Any = tcp.Server(self.ours, Protocol(), ("127.0.0.1", 1), None, 1, self.reactor)
        immediate_writes(self.transport)
        self.addCleanup(self.peer.close)
        self.addCleanup(self.ours.close)

    def received(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return b"".join(chunks)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def drain(self) -> bytes:
        """Let the peer read and the transport write until nothing is queued (bounded)."""
        got = []
        for _ in range(10_000):
            got.append(self.received())
            if self.transport not in self.reactor.getWriters():
                break
            self.transport.doWrite()
        got.append(self.received())
        return b"".join(got)

    def test_installed_twisted_is_known(self) -> None:
        """The Twisted installed has the internals the subclasses use (else they would silently stay off)."""
        from tunnelgw import upstream

        self.assertTrue(upstream._TWISTED_KNOWN)

    def test_class_swapped(self) -> None:
        """The accepted connection becomes an ImmediateServer, still a tcp.Server."""
        self.assertIs(type(self.transport), ImmediateServer)
        self.assertIsInstance(self.transport, tcp.Server)

    def test_write_with_nothing_queued_is_sent_at_once(self) -> None:
        """No registration for writability, no queue: the bytes are at the peer already."""
        self.transport.write(b"hello")
        self.transport.writeSequence([b" ", b"world"])
        self.assertEqual(self.received(), b"hello world")
        self.assertNotIn(self.transport, self.reactor.getWriters())
        self.assertFalse(self.transport._tempDataBuffer or self.transport.dataBuffer)

    def test_what_the_kernel_does_not_take_is_queued_in_order(self) -> None:
        """A write larger than the socket buffer: the rest is queued, later writes queue behind it."""
        big = bytes(range(256)) * 4096  # 1 MiB
        self.transport.write(big)
        self.assertIn(self.transport, self.reactor.getWriters())
        self.transport.writeSequence([b"second", b"third"])
        self.transport.write(b"fourth")
        self.assertEqual(self.drain(), big + b"secondthirdfourth")
        self.assertNotIn(self.transport, self.reactor.getWriters())

    def test_partial_sequence_keeps_order(self) -> None:
        """A sequence split by the kernel anywhere (inside its second piece here) keeps every byte in order."""
        first, second = b"a" * 1000, bytes(range(256)) * 2048
        self.transport.writeSequence([first, second, b"tail"])
        self.transport.write(b"next")
        self.assertEqual(self.drain(), first + second + b"tailnext")

    def test_many_pieces(self) -> None:
        """More pieces than the iovec cap are joined, and arrive whole."""
        pieces = [bytes([i % 256]) * 10 for i in range(500)]
        self.transport.writeSequence(pieces)
        self.assertEqual(self.drain(), b"".join(pieces))

    def test_producer_paused_when_the_queue_grows(self) -> None:
        """Flow control is Twisted's: a queue beyond bufferSize pauses the registered streaming producer."""
        producer = _Producer()
        self.transport.bufferSize = 8192
        self.transport.registerProducer(producer, True)
        self.transport.write(b"x" * 200_000)
        self.transport.write(b"y" * 10_000)
        self.assertTrue(producer.paused)
        self.assertEqual(self.drain(), b"x" * 200_000 + b"y" * 10_000)
        self.assertFalse(producer.paused)

    def test_closing_transport_queues(self) -> None:
        """After loseConnection nothing bypasses the queue: the bytes go before the close, via Twisted."""
        self.transport.write(b"x" * 300_000)
        self.transport.loseConnection()
        self.transport.write(b"after")
        self.assertEqual(self.drain(), b"x" * 300_000 + b"after")

    def test_peer_gone_reported_by_twisted(self) -> None:
        """A send error is left to Twisted's write path, which ends the connection with its reason."""
        self.peer.close()
        self.transport.write(b"into the void")
        self.assertIn(self.transport, self.reactor.getWriters())
        result = self.transport.doWrite()
        self.assertIsNotNone(result)  # CONNECTION_LOST: the reactor calls connectionLost with it

    def test_other_transports_left_alone(self) -> None:
        """StringTransport stays as it is; a client connection is swapped; TLS swaps the protocol and the TCP below."""
        string = StringTransport()
        immediate_writes(string)
        self.assertIs(type(string), StringTransport)
        client: Any = tcp.Client.__new__(tcp.Client)
        immediate_writes(client)
        self.assertIs(type(client), ImmediateClient)
        lower: Any = tcp.Server.__new__(tcp.Server)
        tls: Any = BufferingTLSTransport.__new__(BufferingTLSTransport)
        tls.transport = lower
        tls.write = "the aggregator's"
        immediate_writes(tls)
        self.assertIs(type(lower), ImmediateServer)
        self.assertIs(type(tls), ImmediateTLS)
        self.assertNotIn("write", tls.__dict__)


class _Collect(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class _Swapping(_Collect):
    """A server-side protocol that gives its transport immediate writes, as the gateway's front does."""

    def connectionMade(self) -> None:
        immediate_writes(self.transport)


class _Counted(bytes):
    """Application bytes that count the slices copied out of them."""

    copies = 0

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            self.copies += 1
        return super().__getitem__(index)


class ImmediateTLSTests(TestCase):
    """Whole TLS writes between two of Twisted's TLS protocols in memory (iosim), real certificates."""

    def setUp(self) -> None:
        import tempfile
        from pathlib import Path

        from twisted.internet import ssl
        from twisted.internet.protocol import Factory

        from support import make_pki

        folder = Path(tempfile.mkdtemp())
        pki = make_pki(folder)
        server_cert = ssl.PrivateCertificate.loadPEM(pki.server_cert.read_text() + pki.server_key.read_text())
        trust = ssl.Certificate.loadPEM(pki.ca_cert.read_text())
        server_options = ssl.CertificateOptions(
            privateKey=server_cert.privateKey.original, certificate=server_cert.original,
            extraCertChain=[ssl.Certificate.loadPEM(pki.chain.read_text()).original])
        client_options = ssl.optionsForClientTLS("localhost", trustRoot=trust)
        self.clock = Clock()
        self.server_app, self.client_app = _Swapping(), _Collect()
        server_factory = TLSMemoryBIOFactory(server_options, False, Factory.forProtocol(lambda: self.server_app))
        client_factory = TLSMemoryBIOFactory(client_options, True, Factory.forProtocol(lambda: self.client_app))
        server_factory._clock = client_factory._clock = self.clock
        self.server = server_factory.buildProtocol(None)
        self.client = client_factory.buildProtocol(None)
        self.server_wire = FakeTransport(self.server, isServer=True)
        self.client_wire = FakeTransport(self.client, isServer=False)
        self.pump = connect(self.server, self.server_wire, self.client, self.client_wire, greet=False)
        self.pump.flush()

    def flush(self) -> bytes:
        for _ in range(100):
            self.clock.advance(0)
            self.pump.flush()
        return b"".join(self.client_app.received)

    def test_the_server_side_is_swapped(self) -> None:
        """The gateway's TLS protocol writes whole (the FakeTransport under it is left alone)."""
        self.assertIs(type(self.server), ImmediateTLS)

    def test_large_and_small_writes_arrive_in_order(self) -> None:
        """Small writes are aggregated, a large one flushes them first and goes whole: every byte, in order."""
        transport = self.server_app.transport
        big = bytes(range(256)) * 1024  # 256 KiB: several records, more than one BIO read
        transport.write(b"small-1 ")
        transport.write(b"small-2 ")
        transport.write(big)
        transport.writeSequence([b"\x82\x7e\x40\x00", b"y" * 16384])
        transport.write(b"small-3")
        self.assertEqual(self.flush(), b"small-1 small-2 " + big + b"\x82\x7e\x40\x00" + b"y" * 16384 + b"small-3")

    def test_a_large_write_goes_whole_without_copies(self) -> None:
        """A 4 MiB write arrives whole and in order, and is never sliced into copies (one per 16 KiB record)."""
        big = _Counted(bytes(range(256)) * 16384)
        self.server_app.transport.write(b"head ")
        self.server_app.transport.write(big)
        self.assertEqual(self.flush(), b"head " + big)
        self.assertEqual(big.copies, 0)

    def test_bytes_the_other_way_and_close(self) -> None:
        """The client's bytes reach the server's protocol; a close after a large write delivers it first."""
        self.client_app.transport.write(b"hello")
        self.flush()
        self.assertEqual(b"".join(self.server_app.received), b"hello")
        big = b"z" * 100_000
        self.server_app.transport.write(big)
        self.server_app.transport.loseConnection()
        self.assertEqual(self.flush(), big)
        self.assertTrue(self.client_app.lost)

    def test_records_of_one_read_reach_the_protocol_at_once(self) -> None:
        """A 100 KB write (seven records) read in one piece is one dataReceived; a close_notify read with data comes after it."""
        data = bytes(range(256)) * 400
        self.client_app.transport.write(data)
        self.client_app.transport.loseConnection()
        self.flush()
        self.assertEqual(self.server_app.received, [data])
        self.assertTrue(self.server_app.lost)
