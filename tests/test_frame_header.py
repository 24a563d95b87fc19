"""The hand-built server frame header used on the backend->client hot path."""

from __future__ import annotations

from websockets.frames import Frame, Opcode

from tunnelgw.protocol import _binary_frame_header


def test_header_matches_an_independent_encoder() -> None:
    """For every length class the header equals what the websockets library writes."""
    for length in (0, 1, 125, 126, 127, 65535, 65536, 1 << 20):
        payload = b"p" * length
        expected = Frame(Opcode.BINARY, payload).serialize(mask=False)
        assert _binary_frame_header(length) + payload == expected
