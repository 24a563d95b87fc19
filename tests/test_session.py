"""
The session core in memory (:mod:`tunnelgw.front`, :mod:`tunnelgw.gateway`,
:mod:`tunnelgw.session`, :mod:`tunnelgw.watch`): a real gateway service on a
``MemoryReactorClock``, clients and backends on ``StringTransport``, time
moved by hand.  Every fault test ends by checking that the slot count, the
live list and the backend connections agree (all zero).
"""

from __future__ import annotations

import base64
import gc
import os
import struct
import weakref
from typing import Any, Optional

import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import TestCase

from tunnelgw.core.config import RouteOptions, parse_config
from tunnelgw.core.http import EARLY_DATA_LIMIT, find_head_end
from tunnelgw.core.relay import CLOSE_TIMEOUT
from tunnelgw.core.wsurl import parse_websocket_url
from tunnelgw.service import GatewayService

txaio.use_twisted()


def handshake(path: bytes = b"/echo", extra: bytes = b"") -> bytes:
    """A valid opening handshake for path."""
    key = base64.b64encode(os.urandom(16))
    return (b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n")


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame."""
    mask = os.urandom(4)
    length = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of unmasked server frames at the start of data (after the 101)."""
    frames = []
    i = 0
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length == 126:
            length = struct.unpack("!H", data[i:i + 2])[0]
            i += 2
        elif length == 127:
            length = struct.unpack("!Q", data[i:i + 8])[0]
            i += 8
        frames.append((opcode, data[i:i + length]))
        i += length
    return frames


class Transport(StringTransport):
    """A StringTransport that, like Twisted's sockets, lets a producer be unregistered twice."""

    def unregisterProducer(self) -> None:
        """Forget the producer, if any."""
        self.producer = None
        self.streaming = None


class Gateway:
    """A gateway service in memory, with its clients and backends."""

    def __init__(self, config: str) -> None:
        self.reactor = MemoryReactorClock()
        self.service = GatewayService(parse_config("Listen tcp:port=0\n" + config, "test.conf"), self.reactor)
        self.factory = self.service.factory
        self.backends: list[StringTransport] = []

    def client(self) -> tuple[Any, StringTransport]:
        """A newly accepted client connection."""
        transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000 + len(self.backends)))
        protocol = self.service.front.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        transport.protocol = protocol
        return protocol, transport

    def connect_backend(self, index: int = -1) -> tuple[Any, StringTransport]:
        """Complete the backend connection the gateway started."""
        factory = self.reactor.tcpClients[index][2]
        transport = Transport()
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(transport)
        self.backends.append(transport)
        return protocol, transport

    def session_of(self, transport: StringTransport) -> Any:
        """The protocol now receiving transport's events."""
        return transport.protocol

    def assert_released(self, case: TestCase) -> None:
        """No slot, no live session, no open backend connection."""
        case.assertEqual(self.factory.session_counts.live, 0)
        case.assertEqual(self.factory.sessions, {})
        case.assertEqual([t for t in self.backends if not t.disconnecting], [])


def lose(transport: StringTransport) -> None:
    """The client's connection ends."""
    from twisted.python.failure import Failure
    from twisted.internet.error import ConnectionDone

    transport.protocol.connectionLost(Failure(ConnectionDone()))


class SessionCoreTests(TestCase):
    """Handoff, pipelining, early bytes, control frames, closes and timers."""

    def setUp(self) -> None:
        self.patch(txaio.config, "loop", MemoryReactorClock())

    def opened(self, config: str = "ProxyPass /echo tcp:host=10.0.0.1:port=5900\n",
               extra: bytes = b"") -> tuple[Gateway, StringTransport, Any, StringTransport]:
        gw = Gateway(config)
        _, client = gw.client()
        client.protocol.dataReceived(handshake(extra=extra))
        backend_protocol, backend = gw.connect_backend()
        self.assertTrue(client.value().startswith(b"HTTP/1.1 101 "))
        return gw, client, backend_protocol, backend

    def after_101(self, client: StringTransport) -> bytes:
        return client.value().partition(b"\r\n\r\n")[2]

    def test_autobahn_options_shared_and_kept_per_session(self) -> None:
        """Autobahn's options are read from the factory's of the moment a session opened, not copied into it."""
        gw, client, _, _ = self.opened()
        first = gw.session_of(client)
        self.assertNotIn("maxFramePayloadSize", vars(first))
        old = gw.factory.maxFramePayloadSize
        self.assertEqual(first.maxFramePayloadSize, old)
        gw.factory.setProtocolOptions(maxFramePayloadSize=old + 1)  # as a reload does
        _, client2 = gw.client()
        client2.protocol.dataReceived(handshake())
        gw.connect_backend()
        second = gw.session_of(client2)
        self.assertEqual((first.maxFramePayloadSize, second.maxFramePayloadSize), (old, old + 1))
        with self.assertRaises(AttributeError):
            first.no_such_option

    def test_an_open_session_keeps_everything_in_slots(self) -> None:
        """
        No instance dict: what Autobahn sets on an open connection is in
        SERVER_CONNECTION_SLOTS (this fails when Autobahn sets something new,
        which would give every session a dict of its own again).
        """
        gw, client, _, _ = self.opened()
        session = gw.session_of(client)
        session.dataReceived(frame(2, b"x"))
        self.assertEqual(vars(session), {})
        self.assertEqual(session.state, session.STATE_OPEN)

    def test_send_queue_made_when_first_needed(self) -> None:
        """No deque per session until Autobahn queues a chopped send; then the bytes go out in order."""
        from collections import deque

        gw, client, _, _ = self.opened()
        session = gw.session_of(client)
        self.assertEqual(len(session.send_queue), 0)
        self.assertNotIsInstance(session.send_queue, deque)
        before = len(client.value())
        session.sendData(b"abcdef", chopsize=2)
        self.assertIsInstance(session.send_queue, deque)
        for _ in range(10):
            txaio.config.loop.advance(1)
        self.assertEqual(client.value()[before:], b"abcdef")

    def test_client_not_read_while_backend_connects(self) -> None:
        """The client transport is paused from the end of its head until its backend is up and the 101 sent."""
        gw = Gateway("ProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        _, client = gw.client()
        client.protocol.dataReceived(handshake())
        self.assertEqual(client.producerState, "paused")
        self.assertEqual(client.value(), b"")
        gw.connect_backend()
        self.assertEqual(client.producerState, "producing")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 101 "))

    def test_pipelined_second_head_is_never_a_second_session(self) -> None:
        """Two handshakes in one write: one session, one backend connection; the second head is a protocol error."""
        gw = Gateway("ProxyPass /echo tcp:host=10.0.0.1:port=5900 maxsessions=4\n")
        for _ in range(6):
            _, client = gw.client()
            client.protocol.dataReceived(handshake() + handshake())
            _, backend = gw.connect_backend()
            self.assertEqual(len(gw.factory.sessions), 1)
            frames = server_frames(self.after_101(client))
            self.assertEqual(frames[0][0], 8)
            self.assertEqual(struct.unpack("!H", frames[0][1][:2])[0], 1002)
            self.assertEqual(backend.value(), b"")
            lose(client)
            gw.assert_released(self)
        self.assertEqual(len(gw.reactor.tcpClients), 6)

    def test_second_head_after_101_is_not_parsed(self) -> None:
        """A request head sent after the 101 is read as frames (1002), never routed."""
        gw, client, _, backend = self.opened()
        client.protocol.dataReceived(handshake())
        self.assertEqual(len(gw.reactor.tcpClients), 1)
        self.assertEqual(server_frames(self.after_101(client))[0][0], 8)
        lose(client)
        gw.assert_released(self)

    def test_early_frames_are_relayed_after_the_101(self) -> None:
        """Frames sent with the head wait (paused client) and reach the backend once it is connected."""
        gw = Gateway("ProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        _, client = gw.client()
        client.protocol.dataReceived(handshake() + frame(2, b"early"))
        _, backend = gw.connect_backend()
        self.assertEqual(backend.value(), b"early")
        lose(client)
        gw.assert_released(self)

    def test_pre_101_flood_refused_at_the_bound(self) -> None:
        """More than EARLY_DATA_LIMIT bytes before the 101 get a 400; the backend connect is abandoned."""
        gw = Gateway("ProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        _, client = gw.client()
        client.protocol.dataReceived(handshake())
        session = client.protocol
        chunk = b"x" * 4096
        sent = 0
        while not client.disconnecting and sent < 4 * EARLY_DATA_LIMIT:
            session.dataReceived(chunk)
            sent += len(chunk)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 400 "))
        self.assertLessEqual(sent, EARLY_DATA_LIMIT + len(chunk))
        self.assertLessEqual(len(session.data), EARLY_DATA_LIMIT + len(chunk))
        lose(client)
        gw.assert_released(self)

    def test_early_bytes_in_the_head_read_beyond_the_bound(self) -> None:
        """A head arriving with more than EARLY_DATA_LIMIT bytes after it is refused at once (400)."""
        gw = Gateway("ProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        _, client = gw.client()
        client.protocol.dataReceived(handshake() + b"y" * (EARLY_DATA_LIMIT + 1))
        self.assertTrue(client.value().startswith(b"HTTP/1.1 400 "))
        self.assertEqual(len(gw.reactor.tcpClients), 0)
        lose(client)
        gw.assert_released(self)

    def test_head_search_resumes_where_it_stopped(self) -> None:
        """find_head_end with start looks only at new bytes (and the 3 before), so a head read in pieces is linear."""
        buffer = b"GET / HTTP/1.1\r\nHost: x\r\n\r"
        self.assertEqual(find_head_end(buffer, 0), -1)
        buffer += b"\n"
        self.assertEqual(find_head_end(buffer, len(buffer) - 1), len(buffer))

    def test_head_too_large_is_431(self) -> None:
        """A head that does not end within Limit headers= gets 431 and no backend."""
        gw = Gateway("Limit headers=2048\nProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        _, client = gw.client()
        for _ in range(100):
            client.protocol.dataReceived(b"X-Pad: " + b"a" * 100 + b"\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 431 "))
        self.assertEqual(gw.reactor.tcpClients, [])

    def test_pongs_to_a_client_that_does_not_read_are_bounded(self) -> None:
        """While the client's write buffer is full, 10,000 pings leave at most one pong waiting."""
        gw, client, _, backend = self.opened()
        before = len(client.value())
        client.producer.pauseProducing()  # the transport's write buffer is over its bound
        session = client.protocol
        ping = frame(9, b"p" * 100)
        for _ in range(10_000):
            session.dataReceived(ping)
        self.assertEqual(len(client.value()), before)
        self.assertEqual(backend.producerState, "paused")
        client.producer.resumeProducing()
        pongs = [f for f in server_frames(client.value()[before:]) if f[0] == 10]
        self.assertEqual(len(pongs), 1)
        lose(client)
        gw.assert_released(self)

    def test_idle_close_within_its_bound(self) -> None:
        """idletimeout=6: the close goes out between 6 and 7.5 s after the last byte; the client is dropped CLOSE_TIMEOUT later."""
        gw, client, _, backend = self.opened(
            "KeepAlive ping=0\nProxyPass /echo tcp:host=10.0.0.1:port=5900 idletimeout=6\n")
        session = client.protocol
        gw.reactor.pump([0.01] * 230)
        session.dataReceived(frame(2, b"last byte"))
        last = gw.reactor.seconds()
        closed_at: Optional[float] = None
        for _ in range(1000):
            gw.reactor.advance(0.01)
            if closed_at is None and any(f[0] == 8 for f in server_frames(self.after_101(client))):
                closed_at = gw.reactor.seconds()
        assert closed_at is not None
        self.assertGreaterEqual(closed_at - last, 6.0)
        self.assertLessEqual(closed_at - last, 7.5)
        self.assertTrue(backend.disconnecting)
        self.assertTrue(client.disconnecting or client.disconnected)
        gw.reactor.advance(CLOSE_TIMEOUT)
        lose(client)
        gw.assert_released(self)

    def test_close_handshake_with_a_client_that_does_not_read_is_bounded(self) -> None:
        """
        The close handshake completes while the client reads nothing: its
        producer is unregistered (so the end is not a resume) and the
        connection is aborted CLOSE_TIMEOUT later, even with no ping and no idle timer.
        """
        gw, client, _, backend = self.opened("KeepAlive ping=0\nProxyPass /echo tcp:host=10.0.0.1:port=5900 idletimeout=0\n")
        client.producer.pauseProducing()  # its write buffer is over its bound
        client.protocol.dataReceived(frame(8, struct.pack("!H", 1000)))
        self.assertTrue(client.disconnecting)
        self.assertIsNone(client.producer)
        gw.reactor.advance(CLOSE_TIMEOUT - 0.01)
        self.assertFalse(client.disconnected)
        gw.reactor.advance(0.02)
        self.assertTrue(client.disconnected)  # aborted
        lose(client)
        gw.assert_released(self)

    def test_failed_client_is_aborted_at_the_close_deadline(self) -> None:
        """A client that breaks the protocol and reads nothing is sent 1002, then aborted CLOSE_TIMEOUT later."""
        gw, client, _, backend = self.opened("KeepAlive ping=0\nProxyPass /echo tcp:host=10.0.0.1:port=5900 idletimeout=0\n")
        client.producer.pauseProducing()
        client.protocol.dataReceived(b"\x83\x80" + b"mask")  # opcode 3: reserved
        self.assertTrue(client.disconnecting)
        self.assertIsNone(client.producer)
        gw.reactor.advance(CLOSE_TIMEOUT + 0.01)
        self.assertTrue(client.disconnected)
        lose(client)
        gw.assert_released(self)

    def test_pong_deadline(self) -> None:
        """ping=10 pong=5: a client that never answers is dropped 5 s after the ping."""
        gw, client, _, backend = self.opened("KeepAlive ping=10 pong=5\nProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        gw.reactor.advance(10)
        self.assertEqual(server_frames(self.after_101(client))[-1][0], 9)
        gw.reactor.advance(4.99)
        self.assertFalse(client.disconnecting)
        gw.reactor.advance(0.02)
        self.assertTrue(client.disconnecting)
        self.assertTrue(backend.disconnecting)
        lose(client)
        gw.assert_released(self)

    def test_answered_pings_keep_the_session(self) -> None:
        """A client that answers every ping keeps its session."""
        gw, client, _, backend = self.opened("KeepAlive ping=10 pong=5\nProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        for _ in range(5):
            gw.reactor.advance(10)
            client.protocol.dataReceived(frame(10, b"tunnelgw"))
            gw.reactor.advance(5)
        self.assertFalse(client.disconnecting)
        lose(client)
        gw.assert_released(self)

    def test_invalid_close_code_gets_1002(self) -> None:
        """A close with code 5000 (or 999) is answered with 1002, and the session records 1002."""
        for code in (5000, 999, 1005):
            gw, client, _, backend = self.opened()
            client.protocol.dataReceived(frame(8, struct.pack("!H", code)))
            closes = [f for f in server_frames(self.after_101(client)) if f[0] == 8]
            self.assertEqual(struct.unpack("!H", closes[0][1][:2])[0], 1002)
            self.assertTrue(client.disconnecting)
            record = client.protocol._record
            lose(client)
            self.assertEqual(record.close_code, 1002)
            gw.assert_released(self)

    def test_invalid_close_reason_gets_1007(self) -> None:
        """A close reason that is not UTF-8 is answered with 1007."""
        gw, client, _, backend = self.opened()
        client.protocol.dataReceived(frame(8, struct.pack("!H", 1000) + b"\xff\xfe"))
        closes = [f for f in server_frames(self.after_101(client)) if f[0] == 8]
        self.assertEqual(struct.unpack("!H", closes[0][1][:2])[0], 1007)
        lose(client)
        gw.assert_released(self)

    def test_client_gone_while_backend_connects_is_abandoned(self) -> None:
        """A client that leaves before its backend is up is counted as abandoned, not as a connect timeout."""
        gw = Gateway("ProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        _, client = gw.client()
        client.protocol.dataReceived(handshake())
        lose(client)
        text = gw.factory.metrics.registry.get_sample_value(
            "tunnelgw_handshake_failures_total", {"route": "/echo", "reason": "abandoned", "status": "none"})
        self.assertEqual(text, 1.0)
        self.assertIsNone(gw.factory.metrics.registry.get_sample_value(
            "tunnelgw_handshake_failures_total", {"route": "/echo", "reason": "backend_timeout", "status": "504"}))
        # The connect attempt was given up.
        self.assertTrue(gw.reactor.connectors[-1].stoppedConnecting)
        gw.assert_released(self)

    def test_backend_close_ends_the_session(self) -> None:
        """A backend that closes gives the client 1000; everything is released when the client goes."""
        gw, client, backend_protocol, backend = self.opened()
        backend_protocol.dataReceived(b"screen")
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        backend_protocol.connectionLost(Failure(ConnectionDone()))
        frames = server_frames(self.after_101(client))
        self.assertEqual(frames[0], (2, b"screen"))
        self.assertEqual(struct.unpack("!H", frames[1][1][:2])[0], 1000)
        lose(client)
        self.assertEqual(gw.factory.session_counts.live, 0)
        self.assertEqual(gw.factory.sessions, {})

    def test_an_ended_session_is_freed_without_the_cycle_collector(self) -> None:
        """
        With the cyclic collector off, an ended session (its write gates,
        watch, relay timer, relay, link and request) is freed once its
        transports forget it, as the gateway's transports do once they told it
        (``SocketTransport._tell_lost``): nothing of a session is left for the
        cycle collector.
        """
        from tunnelgw.gateway import HeadRequest

        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        gw, client, backend_protocol, backend = self.opened(
            "ProxyPass /echo tcp:host=10.0.0.1:port=5900\nTimeout idle=60\nKeepAlive ping=20\n")
        session = gw.session_of(client)
        backend_protocol.dataReceived(b"screen")
        session.dataReceived(frame(2, b"keys"))
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        backend_protocol.connectionLost(Failure(ConnectionDone()))
        lose(client)
        self.assertEqual(gw.factory.session_counts.live, 0)
        self.assertEqual(gw.factory.sessions, {})
        refs = [weakref.ref(session), weakref.ref(backend_protocol)]
        client.protocol = backend.protocol = None  # (what the gateway's transports do once they told the protocol)
        del session, backend_protocol
        self.assertEqual([ref() for ref in refs], [None, None])
        self.assertEqual([o for o in gc.get_objects() if isinstance(o, HeadRequest)], [])

    def test_backend_ends_while_a_client_frame_is_in_flight(self) -> None:
        """The TCP backend ends while a client frame is half received: 1000 goes out, the frame's rest and the answer are read, the end is clean."""
        gw, client, backend_protocol, backend = self.opened()
        big = frame(2, b"u" * 3000)
        client.protocol.dataReceived(big[:1000])
        self.assertEqual(backend.value(), b"u" * (1000 - 8))
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        backend_protocol.connectionLost(Failure(ConnectionDone()))
        closes = [f for f in server_frames(self.after_101(client)) if f[0] == 8]
        self.assertEqual(struct.unpack("!H", closes[0][1][:2])[0], 1000)
        self.assertFalse(client.disconnecting)
        client.protocol.dataReceived(big[1000:] + frame(9, b"late ping") + frame(8, struct.pack("!H", 1000)))
        self.assertTrue(client.disconnecting)
        self.assertEqual([f[0] for f in server_frames(self.after_101(client))], [8])  # no pong after the close
        record = client.protocol._record
        lose(client)
        self.assertEqual(record.close_code, 1000)
        self.assertEqual(record.bytes_up, 992)
        self.assertEqual((gw.factory.session_counts.live, gw.factory.sessions), (0, {}))

    def test_ping_split_over_reads_between_client_frames(self) -> None:
        """A ping whose header and payload arrive in separate reads between binary frames: answered once, data intact."""
        gw, client, _, backend = self.opened()
        stream = frame(2, b"one") + frame(9, b"split ping") + frame(2, b"two")
        for i in range(len(stream)):
            client.protocol.dataReceived(stream[i:i + 1])
        self.assertEqual(backend.value(), b"onetwo")
        self.assertEqual(server_frames(self.after_101(client)), [(10, b"split ping")])
        lose(client)
        gw.assert_released(self)

    def test_admin_close_and_shutdown_close_all(self) -> None:
        """close_all sends 1001 to every session; each is released once its client goes."""
        gw = Gateway("ProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        clients = []
        for _ in range(3):
            _, client = gw.client()
            client.protocol.dataReceived(handshake())
            gw.connect_backend()
            clients.append(client)
        self.assertEqual(len(gw.factory.sessions), 3)
        from tunnelgw.core.relay import CLOSE_GOING_AWAY, Close

        gw.factory.close_all(Close(CLOSE_GOING_AWAY, "bye"))
        for client in clients:
            closes = [f for f in server_frames(self.after_101(client)) if f[0] == 8]
            self.assertEqual(struct.unpack("!H", closes[0][1][:2])[0], 1001)
            gw.reactor.advance(CLOSE_TIMEOUT + 0.1)
            self.assertTrue(client.disconnecting)
            lose(client)
        gw.assert_released(self)

    def test_limit_per_client_counts_only_live_sessions(self) -> None:
        """Limit perclient=1: a second session is refused (503) while the first lives, admitted after it ends."""
        gw = Gateway("Limit perclient=1 rate=0\nProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        _, first = gw.client()
        first.protocol.dataReceived(handshake())
        gw.connect_backend()
        _, second = gw.client()
        second.protocol.dataReceived(handshake())
        self.assertTrue(second.value().startswith(b"HTTP/1.1 503 "))
        lose(second)
        lose(first)
        gw.assert_released(self)
        _, third = gw.client()
        third.protocol.dataReceived(handshake())
        gw.connect_backend()
        self.assertTrue(third.value().startswith(b"HTTP/1.1 101 "))

    def test_reconfigure_applies_limits_to_new_sessions(self) -> None:
        """factory.reconfigure with perclient=0 lets a second session in while the first lives."""
        gw = Gateway("Limit perclient=1 rate=0\nProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        _, first = gw.client()
        first.protocol.dataReceived(handshake())
        gw.connect_backend()
        gw.factory.reconfigure(parse_config("Listen tcp:port=0\nLimit perclient=0 rate=0\n"
                                            "ProxyPass /echo tcp:host=10.0.0.1:port=5900\n", "new.conf"))
        _, second = gw.client()
        second.protocol.dataReceived(handshake())
        gw.connect_backend()
        self.assertTrue(second.value().startswith(b"HTTP/1.1 101 "))
        self.assertEqual(gw.factory.session_counts.live, 2)
        lose(first)
        lose(second)
        gw.assert_released(self)


class ReloadEndpointTests(TestCase):
    """
    Backend endpoints: made once, anew after a reload (trust roots and client
    certificates read again, TLS sessions dropped); TLS session reuse as the route says.
    """

    def setUp(self) -> None:
        self.patch(txaio.config, "loop", MemoryReactorClock())

    def test_reconfigure_forgets_the_endpoints_made(self) -> None:
        """Endpoints are made once per string (and wss:// host and options) until a reload, then once again."""
        gw = Gateway("ProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        factory = gw.factory
        target, options = parse_websocket_url("wss://desk.example:8443/"), RouteOptions()
        tcp, ws = factory.backends.endpoint("tcp:host=10.0.0.1:port=5900"), factory.websocket_backends.endpoint(
            target, options)
        self.assertIs(factory.backends.endpoint("tcp:host=10.0.0.1:port=5900"), tcp)
        self.assertIs(factory.websocket_backends.endpoint(target, options), ws)
        factory.reconfigure(parse_config("Listen tcp:port=0\nProxyPass /echo tcp:host=10.0.0.1:port=5900\n", "new.conf"))
        self.assertIsNot(factory.backends.endpoint("tcp:host=10.0.0.1:port=5900"), tcp)
        self.assertIsNot(factory.websocket_backends.endpoint(target, options), ws)

    def test_sessionreuse_off_reaches_the_wss_endpoint(self) -> None:
        """A wss:// route's sessionreuse=off makes an endpoint that keeps no TLS session; the default keeps one."""
        backends = Gateway("ProxyPass /echo tcp:host=10.0.0.1:port=5900\n").factory.websocket_backends
        target = parse_websocket_url("wss://desk.example/")
        self.assertIsNotNone(backends.endpoint(target, RouteOptions()).keep_session)
        self.assertIsNone(backends.endpoint(target, RouteOptions(session_reuse=False)).keep_session)


class RouteNameTests(TestCase):
    """A route's name= is its label in the session record, the admin list and the metrics."""

    def setUp(self) -> None:
        self.patch(txaio.config, "loop", MemoryReactorClock())

    def test_name_labels_record_admin_list_and_metrics(self) -> None:
        from prometheus_client import generate_latest
        from twisted.logger import globalLogPublisher

        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        gw = Gateway("ProxyPassMatch ^/desk/(\\d+)$ tcp:host=10.0.0.1:port=59$1 name=desktops\n")
        _, client = gw.client()
        client.protocol.dataReceived(handshake(b"/desk/01"))
        gw.connect_backend()
        [session] = gw.factory.sessions.values()
        self.assertEqual(session.describe()["route"], "desktops")
        self.assertEqual(session.describe()["backend"], "tcp:host=10.0.0.1:port=5901")
        lose(client)
        gw.assert_released(self)
        starts = [e["fields"] for e in seen if e.get("log_format", "").startswith("session start")]
        ends = [e["fields"] for e in seen if e.get("log_format", "").startswith("session end")]
        self.assertEqual([f["route"] for f in starts + ends], ["desktops", "desktops"])
        scraped = generate_latest(gw.factory.metrics.registry).decode()
        self.assertIn('tunnelgw_sessions_total{route="desktops"} 1.0', scraped)
        self.assertNotIn("\\d", scraped)
