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

__all__ = ["BinaryFrameReader", "FrameScanner", "Unmask", "frame_header", "size_violation"]

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
                length = data[pos + 2] << 8 | data[pos + 3]
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


class FrameScanner:
    """
    Find where final binary frames end in a stream that is relayed as it is
    (a WebSocket hop: the client's masked frames go to the backend, the
    backend's unmasked frames to the client, byte for byte).

    :meth:`feed` returns the bytes that may be passed on: whole frames and
    the start of a frame whose header was read (its payload streams, never
    buffered), never an incomplete header (that is kept until it completes).
    At the first frame that is anything else (a control frame, a text or
    fragmented message, reserved bits, the wrong mask bit, a non-minimal
    length, a payload above the limit) it stops and hands back the rest of
    the stream from that frame's first byte, so that a full WebSocket
    implementation can take over (and refuse it, or relay it, as before).

    :param masked: whether frames must be masked (a client's) or unmasked (a server's).
    :param max_payload: frames with a longer payload are not taken (0: no limit).
    """

    def __init__(self, masked: bool, max_payload: int = 0) -> None:
        self._mask_bit = _MASKED if masked else 0
        self._key = 4 if masked else 0
        self._max = max_payload
        self._carry = b""  # the start of a frame header split over reads
        self._need = 0  # payload bytes still to come in the current frame

    @property
    def at_boundary(self) -> bool:
        """True between frames (no header or payload half-read)."""
        return not self._need and not self._carry

    @property
    def inside_frame(self) -> int:
        """Payload bytes of the frame under way still to come (0: what was passed ends on a frame boundary)."""
        return self._need

    def feed(self, data: bytes) -> tuple[bytes, int, Optional[bytes]]:
        """
        Read data: return the bytes to pass on, how many of them are payload,
        and either ``None`` (all taken) or the bytes from the first frame not
        taken onward (after which this scanner must not be fed again).
        """
        if self._carry:
            data = self._carry + data
            self._carry = b""
        end = len(data)
        need = self._need
        if need >= end:
            self._need = need - end
            return data, end, None
        pos = payload = need
        self._need = 0
        mask_bit, key, limit = self._mask_bit, self._key, self._max
        while pos < end:
            if data[pos] != _FINAL_BINARY:
                return data[:pos], payload, data[pos:]
            if end - pos < 2:
                break
            length = data[pos + 1]
            if length & _MASKED != mask_bit:
                return data[:pos], payload, data[pos:]
            length &= 0x7F
            if length < 126:
                head = pos + 2 + key
            elif length == 126:
                if end < pos + 4:
                    break
                length = data[pos + 2] << 8 | data[pos + 3]  # no slice: the common case for 1 KiB frames
                if length < 126:
                    return data[:pos], payload, data[pos:]
                head = pos + 4 + key
            else:
                if end < pos + 10:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                if length < 65536 or length >> 63:
                    return data[:pos], payload, data[pos:]
                head = pos + 10 + key
            if limit and length > limit:
                return data[:pos], payload, data[pos:]
            if end < head:
                break
            stop = head + length
            if stop > end:
                self._need = stop - end
                return data, payload + end - head, None
            payload += length
            pos = stop
        if pos == end:
            return data, payload, None
        self._carry = data[pos:]
        return data[:pos], payload, None


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
