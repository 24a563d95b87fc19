"""
The data phase's two shortcuts around per-event costs:

- :data:`unmask`, the unmasking function of the direct data phase
  (:class:`tunnelgw.core.frames.BinaryFrameReader`, used by
  :class:`tunnelgw.session.GatewaySession` for byte-stream backends): the
  optional ``websockets`` C speedup when installed, else Autobahn's masker;
- :func:`immediate_writes`: a TCP transport whose writes go to the socket at
  once when nothing is queued, instead of waiting for the reactor's next
  poll.  Twisted's own write queues every write, registers the socket for
  writability, and sends on the next reactor iteration, then unregisters it:
  two ``epoll_ctl`` calls, a poll and a copy of the queue per write.  Here a
  write with nothing queued ahead of it is one ``send`` (``sendmsg`` for a
  sequence); only what the kernel does not take is queued, and from then on
  Twisted's path (and its producer pausing) runs as usual, so order and flow
  control are Twisted's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from twisted.internet import tcp
from twisted.protocols.tls import TLSMemoryBIOProtocol

from tunnelgw.core.frames import Unmask

__all__ = ["immediate_writes", "unmask"]


def _nvx_unmask() -> Unmask:
    from autobahn.websocket.xormasker import create_xor_masker

    def unmask(data: Any, mask: bytes) -> bytes:
        """XOR with Autobahn's masker (native when its NVX extension is built)."""
        return bytes(create_xor_masker(mask, len(data)).process(data))

    return unmask


def _choose_unmask() -> Unmask:
    """websockets' C ``apply_mask`` (about 20x cheaper per 1 KiB frame than a masker object), else Autobahn's."""
    try:
        from websockets.speedups import apply_mask  # type: ignore[import-not-found]
    except ImportError:
        return _nvx_unmask()
    return apply_mask  # type: ignore[no-any-return]


#: The unmasking function the fast data phase uses.
unmask: Unmask = _choose_unmask()

#: More pieces than this in one write are joined first (the kernel's IOV_MAX is 1024).
_MAX_PIECES = 64


if TYPE_CHECKING:
    _Connection = tcp.Connection
else:
    _Connection = object


class _ImmediateWrites(_Connection):
    """Mixed into Twisted's TCP connection classes: send at once what has nothing queued ahead of it."""

    def _idle(self) -> bool:
        """Nothing queued, connected, not closing, no TLS started on the connection itself."""
        return bool(self.connected and not self.dataBuffer and not self._tempDataBuffer and not self.disconnecting
                    and not self._writeDisconnected and not self.TLS)

    def write(self, data: bytes) -> None:
        if data and type(data) is bytes and self._idle():
            try:
                sent = self.socket.send(data)
            except OSError:  # EAGAIN, or an error Twisted's own write path will meet and report
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        pieces = list(iovec)
        if pieces and self._idle() and all(type(piece) is bytes for piece in pieces):
            if len(pieces) > _MAX_PIECES:
                pieces = [b"".join(pieces)]
            try:
                sent = self.socket.sendmsg(pieces)
            except OSError:
                sent = 0
            if not sent:
                super().writeSequence(pieces)
                return
            for i, piece in enumerate(pieces):
                if sent < len(piece):
                    super().writeSequence([piece[sent:]] + pieces[i + 1:])
                    return
                sent -= len(piece)
            return
        super().writeSequence(pieces)


class ImmediateServer(_ImmediateWrites, tcp.Server):
    """An accepted TCP connection with :class:`_ImmediateWrites`."""


class ImmediateClient(_ImmediateWrites, tcp.Client):
    """An outgoing TCP connection with :class:`_ImmediateWrites`."""


_SWAPS: dict[type, type] = {tcp.Server: ImmediateServer, tcp.Client: ImmediateClient}


def immediate_writes(transport: Any) -> None:
    """
    Give transport (or, under TLS, the TCP connection it writes to)
    immediate writes; any other kind of transport is left as it is.
    """
    if type(transport) is TLSMemoryBIOProtocol:
        transport = transport.transport
    swap = _SWAPS.get(type(transport))
    if swap is not None:
        transport.__class__ = swap
