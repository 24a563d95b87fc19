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
from twisted.protocols.tls import BufferingTLSTransport
from twisted.trial.unittest import TestCase

from tunnelgw.upstream import ImmediateClient, ImmediateServer, immediate_writes


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
        """StringTransport and Twisted's TLS transport stay as they are; TCP client and server connections are swapped."""
        string = StringTransport()
        immediate_writes(string)
        self.assertIs(type(string), StringTransport)
        client: Any = tcp.Client.__new__(tcp.Client)
        immediate_writes(client)
        self.assertIs(type(client), ImmediateClient)
        server: Any = tcp.Server.__new__(tcp.Server)
        immediate_writes(server)
        self.assertIs(type(server), ImmediateServer)
        tls: Any = BufferingTLSTransport.__new__(BufferingTLSTransport)  # a Twisted TLS transport: not ours to change
        immediate_writes(tls)
        self.assertIs(type(tls), BufferingTLSTransport)
