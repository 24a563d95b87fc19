"""
The data phase of a binary TCP session without Autobahn's per-frame Python
work: a mixin for the Autobahn server protocol.

Once a session is open, what the client sends goes first to a
:class:`tunnelgw.core.frames.BinaryFrameReader`; the payloads of all the frames in
one read are handed to :meth:`relay_up` in one call (one ``writeSequence`` to
the backend).  Everything else -- control frames (ping, pong, close), text or
fragmented messages, protocol errors, frames over the size limits -- is
passed, from that frame's first byte on, to Autobahn's own ``dataReceived``,
so the closing handshake, close codes, ``onClose`` and the size checks stay
Autobahn's.  The reader takes over again on a later read once Autobahn is
idle between messages.
"""

from __future__ import annotations

from typing import Any, Optional

from tunnelgw.core.frames import BinaryFrameReader, Unmask

__all__ = ["DirectBinaryFrames", "unmask"]


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


class DirectBinaryFrames:
    """
    Mixin for a ``WebSocketServerProtocol`` subclass: call
    :meth:`start_direct_frames` when the session is open and implement
    :meth:`relay_up`.
    """

    _frame_reader: Optional[BinaryFrameReader] = None
    _direct = False

    def start_direct_frames(self) -> None:
        """From the next read on, take final binary frames directly (see the module)."""
        limits = [n for n in (self.maxFramePayloadSize, self.maxMessagePayloadSize) if n]  # type: ignore[attr-defined]
        self._frame_reader = BinaryFrameReader(unmask, min(limits) if limits else 0)
        self._direct = True

    def relay_up(self, payloads: list[bytes]) -> None:
        """Deliver the payloads of client frames, in order (at least one)."""
        raise NotImplementedError

    def _autobahn_idle(self) -> bool:
        """Whether Autobahn holds no part of a frame or message and the session is open."""
        return (self.state == self.STATE_OPEN  # type: ignore[attr-defined]
                and self.current_frame is None  # type: ignore[attr-defined]
                and not self.inside_message  # type: ignore[attr-defined]
                and not self.data)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        """Read frames directly while possible; pass the rest to Autobahn."""
        reader = self._frame_reader
        if reader is None:
            super().dataReceived(data)  # type: ignore[misc]
            return
        if not self._direct or self.state != self.STATE_OPEN:  # type: ignore[attr-defined]
            # A frame half-read here is finished here; otherwise the reader
            # takes over only from a point where Autobahn holds nothing.
            if reader.at_boundary and not self._autobahn_idle():
                self._direct = False
                super().dataReceived(data)  # type: ignore[misc]
                return
            self._direct = True
        payloads, rest = reader.feed(data)
        if payloads:
            self.relay_up(payloads)
        if rest is not None:
            self._direct = False
            super().dataReceived(rest)  # type: ignore[misc]
