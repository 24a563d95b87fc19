"""
WebSocket hops in memory (:mod:`tunnelgw.backends.websocket` and
:mod:`tunnelgw.session` carrying out :mod:`tunnelgw.core.sessionrelay`):
a real gateway service on a ``MemoryReactorClock``, the client and the
WebSocket backend on ``StringTransport``; frames both ways, pings, pongs
and closes while a frame is in flight in either direction, and what a
session releases.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import struct
import tracemalloc
import weakref
from typing import Any

import txaio
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from test_session import Gateway, frame, handshake, lose, server_frames
from tunnelgw.backends import Carries
from tunnelgw.backends.websocket import BackendWebSocket
from tunnelgw.core.relay import BACKEND_CLOSE_GRACE, BACKEND_EARLY_LIMIT

txaio.use_twisted()

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def unmasked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A frame as a server (the backend) sends it."""
    length = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        head += bytes([length])
    elif length < 65536:
        head += bytes([126]) + struct.pack("!H", length)
    else:
        head += bytes([127]) + struct.pack("!Q", length)
    return head + payload


def masked_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, unmasked payload) of the masked frames the gateway sent a backend."""
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
        mask = data[i:i + 4]
        i += 4
        frames.append((opcode, bytes(b ^ mask[n % 4] for n, b in enumerate(data[i:i + length]))))
        i += length
    return frames


def backend_101(backend: StringTransport) -> bytes:
    """The backend's 101 answering the hop's handshake request written to backend (its key accepted)."""
    key = [line.split(b":", 1)[1].strip() for line in backend.value().split(b"\r\n")
           if line.lower().startswith(b"sec-websocket-key:")][0]
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


def end(case: TestCase, gw: Gateway, client: StringTransport, backend_protocol: Any, backend: StringTransport) -> None:
    """The client goes; the backend, sent its close, is aborted after the grace; nothing is left."""
    lose(client)
    gw.reactor.advance(BACKEND_CLOSE_GRACE + 0.1)
    case.assertTrue(backend.disconnecting)
    backend_protocol.connectionLost(Failure(ConnectionDone()))
    case.assertEqual(gw.reactor.getDelayedCalls(), [])
    gw.assert_released(case)


def released(case: TestCase, gw: Gateway) -> None:
    """No slot, no live session, no timer left (the backend ended its connection itself)."""
    case.assertEqual(gw.factory.session_counts.live, 0)
    case.assertEqual(gw.factory.sessions, {})
    case.assertEqual(gw.reactor.getDelayedCalls(), [])


class HopTests(TestCase):
    """A ws:// route's session and hop, byte for byte."""

    def setUp(self) -> None:
        self.patch(txaio.config, "loop", MemoryReactorClock())

    def opened(self, config: str = "ProxyPass /echo ws://10.0.0.1:8080/\n") -> tuple[
            Gateway, StringTransport, Any, StringTransport]:
        """A session whose backend answered its handshake; both transports emptied."""
        gw = Gateway(config)
        _, client = gw.client()
        client.protocol.dataReceived(handshake())
        backend_protocol, backend = gw.connect_backend()
        answer = backend_101(backend)
        backend.clear()
        backend_protocol.dataReceived(answer)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 101 "))
        client.clear()
        return gw, client, backend_protocol, backend

    def test_frames_pass_as_they_are_both_ways(self) -> None:
        """Client frames reach the backend byte for byte (their masks kept), backend frames the client likewise."""
        gw, client, backend_protocol, backend = self.opened()
        up = frame(2, b"input" * 100) + frame(1, b"text", fin=False) + frame(0, b"!")
        client.protocol.dataReceived(up)
        self.assertEqual(backend.value(), up)
        down = unmasked(2, b"screen" * 5000) + unmasked(1, "\u00e9".encode())
        backend_protocol.dataReceived(down[:1000])
        backend_protocol.dataReceived(down[1000:])
        self.assertEqual(client.value(), down)
        session = client.protocol
        self.assertIs(session._relay.carries, Carries.FRAMES)
        self.assertEqual((session._record.bytes_up, session._record.bytes_down), (505, 30002))
        end(self, gw, client, backend_protocol, backend)

    def test_backend_ping_while_a_client_frame_is_in_flight(self) -> None:
        """The backend's ping waits for the end of the client frame being relayed to it; then a masked pong."""
        gw, client, backend_protocol, backend = self.opened()
        up = frame(2, b"k" * 1000)
        client.protocol.dataReceived(up[:300])
        backend_protocol.dataReceived(unmasked(9, b"are you there"))
        self.assertEqual(backend.value(), up[:300])
        client.protocol.dataReceived(up[300:])
        self.assertEqual(backend.value()[:len(up)], up)
        self.assertEqual(masked_frames(backend.value()[len(up):]), [(10, b"are you there")])
        end(self, gw, client, backend_protocol, backend)

    def test_client_ping_while_a_backend_frame_is_in_flight(self) -> None:
        """The client's ping waits for the end of the backend frame being relayed to it."""
        gw, client, backend_protocol, backend = self.opened()
        down = unmasked(2, b"s" * 1000)
        backend_protocol.dataReceived(down[:10])
        client.protocol.dataReceived(frame(9, b"ping"))
        self.assertEqual(client.value(), down[:10])
        backend_protocol.dataReceived(down[10:])
        self.assertEqual(server_frames(client.value()), [(2, b"s" * 1000), (10, b"ping")])
        end(self, gw, client, backend_protocol, backend)

    def test_client_close_passes_through(self) -> None:
        """The client's close: answered, passed to the backend with its code and reason, the backend's answer ends it."""
        gw, client, backend_protocol, backend = self.opened()
        client.protocol.dataReceived(frame(8, struct.pack("!H", 4000) + b"bye"))
        self.assertEqual(server_frames(client.value()), [(8, struct.pack("!H", 1000))])
        self.assertTrue(client.disconnecting)
        self.assertEqual(masked_frames(backend.value()), [(8, struct.pack("!H", 4000) + b"bye")])
        backend_protocol.dataReceived(unmasked(8, struct.pack("!H", 4000) + b"bye"))
        record = client.protocol._record
        lose(client)
        self.assertEqual((record.close_code, record.close_reason), (4000, "bye"))
        backend_protocol.connectionLost(Failure(ConnectionDone()))
        released(self, gw)

    def test_an_ended_hop_is_freed_without_the_cycle_collector(self) -> None:
        """
        With the cyclic collector off, the session and its WebSocket hop are
        freed once their transports forget them (as the gateway's do once they
        told the protocol): the hop's relay timer no longer refers back to it.
        """
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        gw, client, backend_protocol, backend = self.opened()
        client.protocol.dataReceived(frame(8, struct.pack("!H", 1000)))
        backend_protocol.dataReceived(unmasked(8, struct.pack("!H", 1000)))
        lose(client)
        backend_protocol.connectionLost(Failure(ConnectionDone()))
        released(self, gw)
        [hop] = [o for o in gc.get_objects() if isinstance(o, BackendWebSocket)]
        refs = [weakref.ref(client.protocol), weakref.ref(hop)]
        client.protocol = backend.protocol = None  # (what the gateway's transports do once they told the protocol)
        del backend_protocol, hop
        self.assertEqual([ref() for ref in refs], [None, None])

    def test_client_close_while_a_backend_frame_is_in_flight(self) -> None:
        """No close reply fits inside the frame under way to the client: the client is dropped, the backend told."""
        gw, client, backend_protocol, backend = self.opened()
        backend_protocol.dataReceived(unmasked(2, b"s" * 1000)[:500])
        client.protocol.dataReceived(frame(8, struct.pack("!H", 1000)))
        self.assertEqual(client.value(), unmasked(2, b"s" * 1000)[:500])
        self.assertTrue(client.disconnected)
        self.assertEqual(masked_frames(backend.value()), [(8, struct.pack("!H", 1000))])
        end(self, gw, client, backend_protocol, backend)

    def test_backend_close_while_a_client_frame_is_in_flight(self) -> None:
        """The backend's close while a client frame is half relayed to it: the hop drops it, the client gets the close."""
        gw, client, backend_protocol, backend = self.opened()
        up = frame(2, b"k" * 1000)
        client.protocol.dataReceived(up[:300])
        backend_protocol.dataReceived(unmasked(8, struct.pack("!H", 4001) + b"done"))
        self.assertEqual(backend.value(), up[:300])  # no close reply inside the frame
        self.assertTrue(backend.disconnected)
        self.assertEqual(server_frames(client.value()), [(8, struct.pack("!H", 4001) + b"done")])
        client.protocol.dataReceived(up[300:] + frame(8, struct.pack("!H", 4001)))
        self.assertEqual(backend.value(), up[:300])
        end(self, gw, client, backend_protocol, backend)

    def test_backend_lost_inside_a_frame_drops_the_client(self) -> None:
        """The backend connection breaks inside a frame to the client: no close can follow, the client is dropped."""
        gw, client, backend_protocol, backend = self.opened()
        backend_protocol.dataReceived(unmasked(2, b"s" * 1000)[:500])
        backend_protocol.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(client.disconnected)
        self.assertEqual(client.value(), unmasked(2, b"s" * 1000)[:500])
        lose(client)
        released(self, gw)

    def test_client_gone_closes_the_backend_within_its_grace(self) -> None:
        """The client vanishes: the backend gets 1001, and is aborted if it does not end in time."""
        gw, client, backend_protocol, backend = self.opened()
        lose(client)
        closes = masked_frames(backend.value())
        self.assertEqual(closes[0][0], 8)
        self.assertEqual(struct.unpack("!H", closes[0][1][:2])[0], 1001)
        self.assertFalse(backend.disconnected)
        gw.reactor.advance(BACKEND_CLOSE_GRACE + 0.1)
        self.assertTrue(backend.disconnected)
        backend_protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(gw.reactor.getDelayedCalls(), [])
        gw.assert_released(self)

    def test_client_gone_backend_streams_then_answers_the_close(self) -> None:
        """
        The client vanishes while the backend streams: the backend is read
        again, its frames are dropped (memory held stays flat), its close
        reply is found and the end is clean, never an abort.
        """
        gw, client, backend_protocol, backend = self.opened()
        hop = client.protocol._link._backend
        client.producer.pauseProducing()  # the client had stopped reading: the backend is paused
        self.assertEqual(backend.producerState, "paused")
        lose(client)
        self.assertEqual(backend.producerState, "producing")
        chunk = unmasked(2, b"d" * 65536)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(128):  # 8 MiB
                backend_protocol.dataReceived(chunk)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertLess(held, 256 * 1024)
        backend_protocol.dataReceived(unmasked(8, struct.pack("!H", 1001)))
        self.assertTrue(hop.relay.clean)
        gw.reactor.advance(BACKEND_CLOSE_GRACE - 0.1)
        self.assertFalse(backend.disconnected)  # never aborted: the backend ends its connection
        backend_protocol.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(backend.disconnected)
        released(self, gw)

    def test_backend_protocol_error_fails_both(self) -> None:
        """A backend that masks its frames is sent 1002 and the client 1011."""
        gw, client, backend_protocol, backend = self.opened()
        backend_protocol.dataReceived(frame(2, b"masked"))
        self.assertEqual(struct.unpack("!H", masked_frames(backend.value())[0][1][:2])[0], 1002)
        closes = [f for f in server_frames(client.value()) if f[0] == 8]
        self.assertEqual(struct.unpack("!H", closes[0][1][:2])[0], 1011)
        end(self, gw, client, backend_protocol, backend)

    def test_frames_the_backend_sent_with_its_101_wait_for_the_session(self) -> None:
        """Frames that came with the backend's 101 reach the client after its own 101, in order."""
        gw = Gateway("ProxyPass /echo ws://10.0.0.1:8080/\n")
        _, client = gw.client()
        client.protocol.dataReceived(handshake())
        backend_protocol, backend = gw.connect_backend()
        backend_protocol.dataReceived(backend_101(backend) + unmasked(2, b"hello"))
        head, _, rest = client.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "))
        self.assertEqual(server_frames(rest), [(2, b"hello")])
        end(self, gw, client, backend_protocol, backend)

    def test_early_backend_bytes_over_their_bound_fail_the_backend(self) -> None:
        """More than BACKEND_EARLY_LIMIT bytes before the session relays them: the backend is aborted, the client gets 1011."""
        gw = Gateway("ProxyPass /echo ws://10.0.0.1:8080/\n")
        _, client = gw.client()
        client.protocol.dataReceived(handshake())
        backend_protocol, backend = gw.connect_backend()
        backend_protocol.dataReceived(backend_101(backend) + unmasked(2, b"x" * BACKEND_EARLY_LIMIT))
        self.assertTrue(backend.disconnected)
        head, _, rest = client.value().partition(b"\r\n\r\n")
        [(opcode, payload)] = server_frames(rest)
        self.assertEqual((opcode, struct.unpack("!H", payload[:2])[0]), (8, 1011))
        self.assertIn(str(BACKEND_EARLY_LIMIT).encode(), payload)
        backend_protocol.connectionLost(Failure(ConnectionLost()))
        client.protocol.dataReceived(frame(8, struct.pack("!H", 1011)))
        lose(client)
        gw.assert_released(self)


class _Link:
    """A stand-in link that carries what it is told to."""

    def __init__(self, carries: Carries) -> None:
        self.carries = carries
        self.transport = None
        self.description = "stand-in"


class CarriesTests(TestCase):
    """A link declares what it carries, and every wrapper keeps it."""

    def test_every_wrapper_keeps_what_its_link_carries(self) -> None:
        """Recording, portal auth, single-use, pool limits and the owner check carry what the link inside carries."""
        from tunnelgw.forwardauth import ForwardAuthLink
        from tunnelgw.gateway import OwnerCheckLink
        from tunnelgw.pool import PoolLimitLink, SingleUseLink
        from tunnelgw.recording import RecordingLink

        for carries in Carries:
            inner: Any = _Link(carries)
            wrappers = [
                RecordingLink(inner, recorder=None),  # type: ignore[arg-type]
                ForwardAuthLink(inner, None, "10.0.0.9", "/", {}, lambda endpoint: inner),  # type: ignore[arg-type]
                SingleUseLink(inner, None, "jti", 0.0),  # type: ignore[arg-type]
                PoolLimitLink(inner, None, "member", []),  # type: ignore[arg-type]
                OwnerCheckLink(inner, None, "host", "/"),
            ]
            for wrapper in wrappers:
                self.assertIs(wrapper.carries, carries, type(wrapper).__name__)
            # The whole chain a route can build, outermost first.
            chain: Any = RecordingLink(OwnerCheckLink(PoolLimitLink(SingleUseLink(ForwardAuthLink(  # type: ignore[arg-type]
                inner, None, "10.0.0.9", "/", {}, lambda endpoint: inner), None, "jti", 0.0), None, "m", []),  # type: ignore[arg-type]
                None, "host", "/"), recorder=None)  # type: ignore[arg-type]
            self.assertIs(chain.carries, carries)

    def test_recorded_hop_keeps_relaying_frames(self) -> None:
        """record=on on a ws:// route: the session still relays whole frames, and the recording gets their payloads."""
        import tempfile

        folder = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, folder)
        gw, client, backend_protocol, backend = HopTests.opened(
            self, f"Recording {folder}\nProxyPass /echo ws://10.0.0.1:8080/ record=on\n")  # type: ignore[arg-type]
        session = client.protocol
        self.assertIs(session._relay.carries, Carries.FRAMES)
        up = frame(2, b"typed")
        client.protocol.dataReceived(up)
        self.assertEqual(backend.value(), up)
        backend_protocol.dataReceived(unmasked(2, b"drawn"))
        self.assertEqual(client.value(), unmasked(2, b"drawn"))
        recorder = session._link.recorder
        self.assertEqual([(f.to_client, f.data) for f in recorder._frames], [(False, b"typed"), (True, b"drawn")])
        end(self, gw, client, backend_protocol, backend)
