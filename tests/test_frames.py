"""
Tests for :mod:`tunnelgw.core.frames` (headers and size limits) and for how
:class:`tunnelgw.core.sessionrelay.SessionRelay` reads frames: checked
against frames serialised by the ``websockets`` library, split at every byte.
"""

from __future__ import annotations

import os

from hypothesis import given, settings, strategies as st
from websockets.frames import Frame, Opcode
from websockets.speedups import apply_mask  # type: ignore[import-not-found]

from tunnelgw.core.frames import size_violation
from tunnelgw.core.sessionrelay import Carries, CloseReceived, Failed, Forward, Role, SessionRelay


def _binary(payload: bytes) -> bytes:
    """A final, masked binary client frame, as websockets writes it."""
    return Frame(Opcode.BINARY, payload).serialize(mask=True)


def _between_frames(relay: SessionRelay, mask: bool) -> bool:
    """Whether relay stands between frames: a close sent now is read as a close, not as frame bytes."""
    close = Frame(Opcode.CLOSE, b"\x03\xe8").serialize(mask=mask)
    return any(isinstance(a, CloseReceived) for a in relay.receive(close, 0.0))


def _payloads_of(relay: SessionRelay, pieces: list[bytes]) -> bytes:
    got = b""
    for piece in pieces:
        for action in relay.receive(piece, 0.0):
            assert not isinstance(action, Failed)
            if isinstance(action, Forward):
                got += b"".join(action.chunks)
    return got


# Long payloads cross the 16- and 64-bit length encodings; their bytes vary by position.
_long = st.integers(min_value=65530, max_value=65600).map(lambda n: (bytes(range(251)) * 262)[:n])
_payloads = st.lists(st.one_of(st.binary(max_size=300), _long), max_size=6)


@settings(deadline=None, max_examples=60)
@given(payloads=_payloads, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_binary_frames_split_anywhere(payloads: list[bytes], cuts: list[int]) -> None:
    """Final binary frames split at any points yield exactly their payloads, ending on a frame boundary."""
    relay = SessionRelay(Role.SERVER, Carries.PAYLOAD, apply_mask)
    stream = b"".join(_binary(p) for p in payloads)
    points = sorted(set(c % (len(stream) + 1) for c in cuts))
    pieces = [stream[a:b] for a, b in zip([0] + points, points + [len(stream)])]
    assert _payloads_of(relay, pieces) == b"".join(payloads)
    assert _between_frames(relay, mask=True)


def test_frames_split_at_every_byte_pass_byte_for_byte() -> None:
    """Unmasked (hop) and masked (client) frames split at any byte are forwarded as they are, payload counted."""
    for role, mask in ((Role.CLIENT, False), (Role.SERVER, True)):
        stream = b"".join(Frame(Opcode.BINARY, p).serialize(mask=mask) for p in (b"", b"a" * 5, b"b" * 200, b"c" * 70000))
        for cut in range(0, len(stream) + 1, 7):
            relay = SessionRelay(role, Carries.FRAMES, apply_mask)
            out, total = b"", 0
            for piece in (stream[:cut], stream[cut:]):
                for action in relay.receive(piece, 0.0):
                    assert isinstance(action, Forward)
                    out += b"".join(action.chunks)
                    total += action.payload
            assert out == stream and total == 5 + 200 + 70000 and _between_frames(relay, mask)


def test_frames_over_the_limit_are_refused() -> None:
    """A frame longer than the limit fails the connection with 1009; one at the limit is taken."""
    relay = SessionRelay(Role.SERVER, Carries.PAYLOAD, apply_mask, max_frame=100)
    actions = relay.receive(_binary(b"a" * 100) + _binary(b"b" * 101), 0.0)
    assert actions[0] == Forward([b"a" * 100], 100, 0)
    assert isinstance(actions[1], Failed) and actions[1].close.code == 1009


def test_partial_frame_is_streamed_not_buffered() -> None:
    """The first part of a large frame comes out before the rest of it arrives."""
    payload = os.urandom(100_000)
    frame = _binary(payload)
    relay = SessionRelay(Role.SERVER, Carries.PAYLOAD, apply_mask)
    [first] = relay.receive(frame[:50_000], 0.0)
    assert first == Forward([payload[:50_000 - 14]], 50_000 - 14, 100_000 - (50_000 - 14))
    assert first.chunks[0] + _payloads_of(relay, [frame[50_000:]]) == payload
    assert _between_frames(relay, mask=True)


def test_size_violation_names_the_limit_broken() -> None:
    """size_violation refuses a message or frame over its limit (0: none) and names which; within limits, None."""
    assert size_violation(10, 10, 0, 0) is None
    assert size_violation(10, 20, 10, 20) is None
    assert size_violation(10, 21, 0, 20) == "message of 21 bytes exceeds the limit of 20"
    assert size_violation(11, 11, 10, 0) == "frame of 11 bytes exceeds the limit of 10"
