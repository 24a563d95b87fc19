"""
The data phase's two shortcuts around per-event costs:

- :data:`unmask`, the (un)masking function of
  :class:`tunnelgw.core.sessionrelay.SessionRelay`: the optional
  ``websockets`` C speedup when installed, else Autobahn's masker;
- :func:`immediate_writes`: a TCP transport whose writes go to the socket at
  once when nothing is queued, instead of waiting for the reactor's next
  poll.  Twisted's own write queues every write, registers the socket for
  writability, and sends on the next reactor iteration, then unregisters it:
  two ``epoll_ctl`` calls, a poll and a copy of the queue per write.  Here a
  write with nothing queued ahead of it is one ``send`` (``sendmsg`` for a
  sequence); only what the kernel does not take is queued, and from then on
  Twisted's path (and its producer pausing) runs as usual, so order and flow
  control are Twisted's.  Under TLS (Twisted's ``TLSMemoryBIOProtocol``) a
  write goes to OpenSSL whole (one ``SSL_write``, which cuts it into 16 KiB
  records) and all the ciphertext comes out of the memory BIO at once, then
  goes to the socket in one write; Twisted's own path makes one
  ``SSL_write``, one ``bio_read`` and one socket write per 16 KiB record.
  The records decrypted from one read reach the protocol in one
  ``dataReceived`` (Twisted hands each 16 KiB record over on its own).
  Kept in step with Twisted 26.x; with other internals (:data:`_TWISTED_KNOWN`)
  transports are left as Twisted made them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from OpenSSL.SSL import Error as TLSError
from OpenSSL.SSL import WantReadError, ZeroReturnError
from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from tunnelgw.core.frames import Unmask

__all__ = ["ImmediateClient", "ImmediateServer", "ImmediateTLS", "immediate_writes", "unmask"]


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
        if not pieces or not self._idle() or not all(type(piece) is bytes for piece in pieces):
            super().writeSequence(pieces)
            return
        if len(pieces) > _MAX_PIECES:
            pieces = [b"".join(pieces)]
        try:
            sent = self.socket.sendmsg(pieces)
        except OSError:
            sent = 0
        for i, piece in enumerate(pieces):
            if sent < len(piece):
                super().writeSequence([piece[sent:] if sent else piece] + pieces[i + 1:])
                return
            sent -= len(piece)


class ImmediateServer(_ImmediateWrites, tcp.Server):
    """An accepted TCP connection with :class:`_ImmediateWrites`."""


class ImmediateClient(_ImmediateWrites, tcp.Client):
    """An outgoing TCP connection with :class:`_ImmediateWrites`."""


#: The most ciphertext taken out of the memory BIO per read (more is read on).
_BIO_READ = 1 << 18


#: Writes from this size on go to OpenSSL at once and whole; smaller ones are aggregated as Twisted does.
_WHOLE = 16 * 1024


class ImmediateTLS(BufferingTLSTransport):
    """
    Twisted's TLS protocol (the buffering one its factories build): a write of
    :data:`_WHOLE` bytes or more goes to OpenSSL whole, after what was
    aggregated before it, and its ciphertext to the connection in one write.
    Twisted's path copies such a write five times in user space (join, its
    aggregator's copy and join, a slice per 16 KiB record, the queue's join)
    and makes one ``SSL_write``, ``bio_read`` and socket write per record.
    A large ``writeSequence`` (a frame header and its payload) goes to OpenSSL
    piece by piece without a join: the header becomes a small record of its
    own (about 30 bytes on the wire per frame) and the payload is not copied.
    """

    def write(self, data: bytes) -> None:  # type: ignore[override]
        if len(data) < _WHOLE:
            self._aggregator.write(data)
            return
        self._aggregator.flush()
        TLSMemoryBIOProtocol.write(self, data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        pieces = list(iovec)
        if sum(map(len, pieces)) < _WHOLE or self.disconnecting:
            self.write(b"".join(pieces))
            return
        self._aggregator.flush()
        for piece in pieces:  # each to OpenSSL as it is (no join of a large payload), the ciphertext flushed once
            if self._lostTLSConnection:
                return
            if self._appSendBuffer:  # OpenSSL wants to read first: keep the order behind what waits
                self._bufferedWrite(piece)
            elif piece:
                self._write(piece, flush=False)
        self._flushSendBIO()

    def _write(self, bytes: bytes, flush: bool = True) -> None:  # noqa: A002  (Twisted's parameter name)
        """As Twisted's: application bytes into the TLS connection (buffered while it wants to read), then flush."""
        if self._lostTLSConnection:
            return
        sent, total = 0, len(bytes)
        while sent < total:
            try:
                sent += self._tlsConnection.send(bytes[sent:] if sent else bytes)
            except WantReadError:
                self._bufferedWrite(bytes[sent:])
                break
            except TLSError:
                self._tlsShutdownFinished(Failure())
                return
        if flush:
            self._flushSendBIO()

    def _flushReceiveBIO(self) -> None:
        """
        As Twisted's, but the records decrypted from one read reach the
        protocol in one ``dataReceived`` (Twisted delivers each 16 KiB record
        on its own, so a relay writes each on to its backend with a system
        call of its own); what came before a TLS close or error is delivered first.
        """
        gathered: list[bytes] = []
        while not self._lostTLSConnection:
            try:
                gathered.append(self._tlsConnection.recv(2**15))
            except WantReadError:
                break
            except ZeroReturnError:
                self._deliver(gathered)
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except TLSError:
                self._deliver(gathered)
                self._tlsShutdownFinished(Failure())
        self._deliver(gathered)
        self._flushSendBIO()

    def _deliver(self, gathered: list[bytes]) -> None:
        if gathered and not self._aborted:
            ProtocolWrapper.dataReceived(self, gathered[0] if len(gathered) == 1 else b"".join(gathered))
        gathered.clear()

    def _flushSendBIO(self) -> None:
        """Every byte waiting in the send BIO, to the connection in one write."""
        chunks = []
        while True:
            try:
                chunk = self._tlsConnection.bio_read(_BIO_READ)
            except WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < _BIO_READ:
                break
        if chunks and self.transport is not None:
            self.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))


_SWAPS: dict[type, type] = {tcp.Server: ImmediateServer, tcp.Client: ImmediateClient}


def _whole_tls_writes(protocol: Any) -> None:
    protocol.__class__ = ImmediateTLS
    protocol.__dict__.pop("write", None)  # BufferingTLSTransport binds its aggregator's write on the instance


#: What the subclasses above rely on in Twisted (checked once: another Twisted leaves transports as they are).
_TWISTED_KNOWN = all(hasattr(FileDescriptor, name) for name in ("dataBuffer", "_writeDisconnected", "doWrite")) and all(
    callable(getattr(TLSMemoryBIOProtocol, name, None))
    for name in ("_write", "_flushSendBIO", "_flushReceiveBIO", "_bufferedWrite", "_tlsShutdownFinished", "_shutdownTLS"))


def immediate_writes(transport: Any) -> None:
    """
    Give transport immediate writes: a TCP connection, or Twisted's TLS
    protocol wrapped around one (``tls:`` and ``wss://`` backends; ``ssl:``
    listeners are :mod:`tunnelgw.tlssocket`'s) and the connection under it.  Any other kind of transport
    (``unix:``, ``ssl:`` client strings, which start TLS on the connection)
    is left as it is, and every transport when Twisted's internals are not
    the ones these classes know.
    """
    if not _TWISTED_KNOWN:
        return
    if type(transport) is BufferingTLSTransport:
        _whole_tls_writes(transport)
        transport = transport.transport
    swap = _SWAPS.get(type(transport))
    if swap is None:
        return
    transport.__class__ = swap
