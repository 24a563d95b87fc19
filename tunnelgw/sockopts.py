"""
Socket options on Twisted transports: TCP keepalive towards backends, so that
a backend host that vanished (power loss, network cut) is noticed even when
no byte is being sent.
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["set_tcp_keepalive"]


def set_tcp_keepalive(transport: Any, idle: int, interval: int, count: int) -> bool:
    """
    Turn on TCP keepalive on transport's socket (through TLS wrappers): first
    probe after idle seconds, then every interval seconds, count probes.

    :returns: False when the transport has no TCP socket (UNIX, memory).
    """
    while transport is not None and not hasattr(transport, "getHandle"):
        transport = getattr(transport, "transport", None)
    handle = transport.getHandle() if transport is not None else None
    if not isinstance(handle, socket.socket) or handle.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
        option = getattr(socket, name, None)
        if option is not None:
            handle.setsockopt(socket.IPPROTO_TCP, option, value)
    return True
