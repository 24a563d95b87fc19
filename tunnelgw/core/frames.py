"""
A sans-IO reader for the common case of a client's WebSocket stream: final,
masked, binary frames, as noVNC and most remote-desktop clients send them.

:class:`BinaryFrameReader` takes the bytes a client sent and returns the
unmasked payloads of the frames it recognises, streamed (a frame split over
reads comes out in pieces, never reassembled) and without copying the input
(payloads are unmasked straight out of the received buffer).  At the first
frame that is anything else (a control frame, a text or fragmented message,
reserved bits, an unmasked frame, a non-minimal length, a payload above the
limit) it stops and hands back the rest of the stream untouched, from that
frame's first byte, so that a full WebSocket implementation can take over.

Nothing here does I/O; the unmasking function is passed in (websockets' C
``apply_mask`` or an equivalent).
"""

from __future__ import annotations

import struct
from typing import Callable, Optional, Union

__all__ = ["BinaryFrameReader", "Unmask", "frame_header", "size_violation"]

#: ``unmask(data, mask) -> bytes``: XOR data with the 4-byte mask repeated
#: (data may be a memoryview).
Unmask = Callable[[Union[bytes, memoryview], bytes], bytes]

# Byte 0 of the one kind of frame the reader takes: FIN, no RSV bits, opcode 2.
_FINAL_BINARY = 0x82
_MASKED = 0x80


class BinaryFrameReader:
    """
    Stream the payloads of final, masked binary client frames.

    :param unmask: the XOR function (see :data:`Unmask`).
    :param max_payload: frames with a longer payload are not taken (0: no limit).
    """

    def __init__(self, unmask: Unmask, max_payload: int = 0) -> None:
        self._unmask = unmask
        self._max = max_payload
        self._carry = b""  # the start of a frame header split over reads
        self._need = 0  # payload bytes still to come in the current frame
        self._mask = b""  # the current frame's mask, rotated to where its payload resumes

    @property
    def at_boundary(self) -> bool:
        """True between frames (no header or payload half-read)."""
        return not self._need and not self._carry

    def feed(self, data: bytes) -> tuple[list[bytes], Optional[bytes]]:
        """
        Read data: return the payload pieces it carries, and either ``None``
        (all taken) or the bytes from the first frame not taken onward (after
        which this reader must not be fed again).
        """
        if self._carry:
            data = self._carry + data
            self._carry = b""
        chunks: list[bytes] = []
        end = len(data)
        view = memoryview(data)
        unmask = self._unmask
        pos = 0
        need = self._need
        if need:
            take = need if need <= end else end
            chunks.append(unmask(view[:take], self._mask))
            need -= take
            pos = take
            if need:
                self._need = need
                shift = take & 3
                self._mask = self._mask[shift:] + self._mask[:shift]
                return chunks, None
            self._need = 0
        limit = self._max
        while pos < end:
            if data[pos] != _FINAL_BINARY:
                return chunks, data[pos:]
            if end - pos < 2:
                break
            length = data[pos + 1]
            if not length & _MASKED:
                return chunks, data[pos:]
            length &= 0x7F
            if length < 126:
                head = pos + 6
            elif length == 126:
                head = pos + 8
                if end < head:
                    break
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
                if length < 126:
                    return chunks, data[pos:]
            else:
                head = pos + 14
                if end < head:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                if length < 65536 or length >> 63:
                    return chunks, data[pos:]
            if limit and length > limit:
                return chunks, data[pos:]
            if end < head:
                break
            mask = data[head - 4:head]
            stop = head + length
            if stop <= end:
                if length:
                    chunks.append(unmask(view[head:stop], mask))
                pos = stop
            else:
                chunks.append(unmask(view[head:end], mask))
                taken = end - head
                self._need = length - taken
                shift = taken & 3
                self._mask = mask[shift:] + mask[:shift]
                return chunks, None
        self._carry = data[pos:]
        return chunks, None


def frame_header(opcode: int, fin: bool, length: int, mask: bytes = b"") -> bytes:
    """
    The header of a WebSocket frame (RFC 6455 section 5.2) without extension bits.

    :param mask: four masking bytes for client-to-server frames, else empty.
    """
    if not 0 <= opcode <= 15 or length < 0 or length > 0x7FFFFFFFFFFFFFFF or len(mask) not in (0, 4):
        raise ValueError("bad frame header fields")
    first = (0x80 if fin else 0) | opcode
    masked = 0x80 if mask else 0
    if length <= 125:
        head = struct.pack("!BB", first, masked | length)
    elif length <= 0xFFFF:
        head = struct.pack("!BBH", first, masked | 126, length)
    else:
        head = struct.pack("!BBQ", first, masked | 127, length)
    return head + mask


def size_violation(frame_length: int, message_so_far: int, max_frame: int, max_message: int) -> Optional[str]:
    """
    Why a frame breaks the size limits, or None: the checks that Autobahn's
    default frame handler makes, for handlers that stream frames.

    :param message_so_far: the message's payload length with this frame.
    :param max_frame: the frame limit (0: none); max_message likewise.
    """
    if 0 < max_message < message_so_far:
        return f"message of {message_so_far} bytes exceeds the limit of {max_message}"
    if 0 < max_frame < frame_length:
        return f"frame of {frame_length} bytes exceeds the limit of {max_frame}"
    return None
