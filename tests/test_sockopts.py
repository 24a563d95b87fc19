"""
TCP keepalive on backend sockets (tunnelgw.sockopts), read back from a real
loopback socket; TCP_NODELAY on a session's connections, in memory.
"""

from __future__ import annotations

import base64
import os
import socket
from typing import Any, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport

from zope.interface import implementer

from tunnelgw.core.config import parse_config
from tunnelgw.service import GatewayService
from tunnelgw.sockopts import set_tcp_keepalive


class _Transport:
    """Just enough of a Twisted TCP transport: getHandle() gives the real socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def getHandle(self) -> socket.socket:
        return self._sock


def test_keepalive_options_are_set_through_wrappers() -> None:
    """SO_KEEPALIVE and the idle/interval/count values reach the socket, also behind a wrapping protocol."""
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as sock:
        wrapper = Protocol()
        wrapper.transport = _Transport(sock)  # type: ignore[assignment]
        assert set_tcp_keepalive(wrapper, 42, 7, 3)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 42
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 7
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3


def test_unix_sockets_are_left_alone() -> None:
    """A UNIX socket has no TCP keepalive: nothing is set and False is returned."""
    a, b = socket.socketpair()
    with a, b:
        assert not set_tcp_keepalive(_Transport(a), 42, 7, 3)


class _RecordingTransport(StringTransport):
    """A StringTransport that keeps what TCP_NODELAY was set to, and lets a producer be unregistered twice."""

    nodelay: Optional[bool] = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


def _session_to(backend_url: str, backend: _RecordingTransport) -> _RecordingTransport:
    """The client connection of a session on ``ProxyPass /s backend_url``, its backend connected on backend."""
    reactor = MemoryReactorClock()
    config = parse_config(f"Listen tcp:port=0\nProxyPass /s {backend_url}\n", "test.conf")
    service = GatewayService(config, reactor)
    client = _RecordingTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol: Any = service.front.buildProtocol(client.getPeer())
    protocol.makeConnection(client)
    key = base64.b64encode(os.urandom(16))
    protocol.dataReceived(b"GET /s HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    link: Any = reactor.tcpClients[-1][2].buildProtocol(None)
    link.makeConnection(backend)
    return client


def test_tcp_nodelay_on_client_and_websocket_backend() -> None:
    """A session's client connection and its ws:// backend hop both get TCP_NODELAY (Autobahn's default option)."""
    backend = _RecordingTransport()
    client = _session_to("ws://127.0.0.1:9/", backend)
    assert (client.nodelay, backend.nodelay) == (True, True)


@implementer(ITCPTransport)
class _TcpRecordingTransport(_RecordingTransport):
    """A recording transport that says it is TCP (as a real backend connection is)."""


def test_tcp_nodelay_on_byte_stream_backends() -> None:
    """A tcp: backend connection gets TCP_NODELAY, so a desktop's small input events never wait for a delayed ACK."""
    backend = _TcpRecordingTransport()
    client = _session_to("tcp:host=127.0.0.1:port=9", backend)
    assert backend.nodelay is True
    assert b"101 Switching Protocols" in client.value()
