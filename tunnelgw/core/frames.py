"""
WebSocket frame pieces free of I/O: the header of a frame the gateway
writes (:func:`frame_header`), the frame and message size limits
(:func:`size_violation`), and the type of the XOR function that masks and
unmasks payloads (:data:`Unmask`).  Frames are read by
:class:`tunnelgw.core.sessionrelay.SessionRelay`.
"""

from __future__ import annotations

import struct
from typing import Callable, Optional, Union

__all__ = ["Unmask", "frame_header", "size_violation"]

#: ``unmask(data, mask) -> bytes``: XOR data with the 4-byte mask repeated
#: (data may be a memoryview).
Unmask = Callable[[Union[bytes, memoryview], bytes], bytes]

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
