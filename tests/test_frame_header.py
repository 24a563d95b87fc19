"""The one frame-header encoder (:func:`tunnelgw.core.frames.frame_header`), used on the backend->client hot path."""

from __future__ import annotations

from websockets.frames import Frame, Opcode

from tunnelgw.core.frames import frame_header


def test_header_matches_an_independent_encoder() -> None:
    """For every length class the header equals what the websockets library writes."""
    for length in (0, 1, 125, 126, 127, 65535, 65536, 1 << 20):
        payload = b"p" * length
        expected = Frame(Opcode.BINARY, payload).serialize(mask=False)
        assert frame_header(2, True, length) + payload == expected
