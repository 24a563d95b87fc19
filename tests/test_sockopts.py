"""TCP keepalive on backend sockets (tunnelgw.sockopts), read back from a real loopback socket."""

from __future__ import annotations

import socket

from twisted.internet.protocol import Protocol

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
