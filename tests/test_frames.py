"""
Tests for :mod:`tunnelgw.core.frames`: the direct binary frame reader, checked
against frames serialised by the ``websockets`` library.
"""

from __future__ import annotations

import os

from hypothesis import given, settings, strategies as st
from websockets.frames import Close, Frame, Opcode
from websockets.speedups import apply_mask  # type: ignore[import-not-found]

from tunnelgw.core.frames import BinaryFrameReader


def _binary(payload: bytes) -> bytes:
    """A final, masked binary client frame, as websockets writes it."""
    return Frame(Opcode.BINARY, payload).serialize(mask=True)


def _feed_split(reader: BinaryFrameReader, stream: bytes, cuts: list[int]) -> tuple[bytes, bytes | None]:
    """Feed stream in pieces cut at the given offsets; return (payload, rest)."""
    got = bytearray()
    rest = None
    start = 0
    for cut in sorted(set(c % (len(stream) + 1) for c in cuts)) + [len(stream)]:
        chunks, rest = reader.feed(stream[start:cut])
        for c in chunks:
            got += c
        start = cut
        if rest is not None:
            rest += stream[start:]
            break
    return bytes(got), rest


# Long payloads cross the 16- and 64-bit length encodings; their bytes vary by position.
_long = st.integers(min_value=65530, max_value=65600).map(lambda n: (bytes(range(251)) * 262)[:n])
_payloads = st.lists(st.one_of(st.binary(max_size=300), _long), max_size=6)


@settings(deadline=None, max_examples=60)
@given(payloads=_payloads, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_binary_frames_split_anywhere(payloads: list[bytes], cuts: list[int]) -> None:
    """Final binary frames split at any points yield exactly their payloads, nothing handed back."""
    reader = BinaryFrameReader(apply_mask)
    stream = b"".join(_binary(p) for p in payloads)
    got, rest = _feed_split(reader, stream, cuts)
    assert got == b"".join(payloads)
    assert rest is None
    assert reader.at_boundary


_other_frames = st.sampled_from([
    Frame(Opcode.PING, b"hi"),
    Frame(Opcode.PONG, b""),
    Frame(Opcode.CLOSE, Close(1000, "bye").serialize()),
    Frame(Opcode.TEXT, "héllo".encode()),
    Frame(Opcode.BINARY, b"part", fin=False),
    Frame(Opcode.CONT, b"more"),
    Frame(Opcode.BINARY, b"rsv"),  # sent with RSV1 set, see below
])


@settings(deadline=None, max_examples=80)
@given(before=_payloads, other=_other_frames, after=st.lists(st.binary(max_size=200), max_size=3),
       cuts=st.lists(st.integers(min_value=0), max_size=6))
def test_other_frames_are_handed_back_whole(before: list[bytes], other: Frame, after: list[bytes],
                                            cuts: list[int]) -> None:
    """At the first frame that is not a final binary one, the stream from its first byte is handed back."""
    reader = BinaryFrameReader(apply_mask)
    odd = other.serialize(mask=True)
    if other.data == b"rsv":  # websockets refuses to write reserved bits: set RSV1 by hand
        odd = bytes([odd[0] | 0x40]) + odd[1:]
    tail = odd + b"".join(_binary(p) for p in after)
    stream = b"".join(_binary(p) for p in before) + tail
    got, rest = _feed_split(reader, stream, cuts)
    assert got == b"".join(before)
    assert rest == tail


def test_unmasked_frame_is_handed_back() -> None:
    """A client frame without a mask is not taken (the protocol requires one)."""
    frame = Frame(Opcode.BINARY, b"abc").serialize(mask=False)
    assert BinaryFrameReader(apply_mask).feed(frame) == ([], frame)


def test_non_minimal_lengths_are_handed_back() -> None:
    """Lengths not in their shortest encoding are not taken."""
    mask = os.urandom(4)
    short16 = bytes([0x82, 0x80 | 126, 0, 5]) + mask + apply_mask(b"hello", mask)
    short64 = bytes([0x82, 0x80 | 127]) + (300).to_bytes(8, "big") + mask + apply_mask(b"x" * 300, mask)
    for frame in (short16, short64):
        assert BinaryFrameReader(apply_mask).feed(frame) == ([], frame)


def test_frames_over_the_limit_are_handed_back() -> None:
    """A frame longer than max_payload is handed back; one at the limit is taken."""
    reader = BinaryFrameReader(apply_mask, max_payload=100)
    at, over = _binary(b"a" * 100), _binary(b"b" * 101)
    chunks, rest = reader.feed(at + over)
    assert b"".join(chunks) == b"a" * 100
    assert rest == over


def test_partial_frame_is_streamed_not_buffered() -> None:
    """The first part of a large frame comes out before the rest of it arrives."""
    payload = os.urandom(100_000)
    frame = _binary(payload)
    reader = BinaryFrameReader(apply_mask)
    first, rest = reader.feed(frame[:50_000])
    assert rest is None and b"".join(first) == payload[:50_000 - 14]
    assert not reader.at_boundary
    second, rest = reader.feed(frame[50_000:])
    assert rest is None and b"".join(first + second) == payload
    assert reader.at_boundary


def test_size_violation_names_the_limit_broken() -> None:
    """size_violation refuses a message or frame over its limit (0: none) and names which; within limits, None."""
    from tunnelgw.core.frames import size_violation

    assert size_violation(10, 10, 0, 0) is None
    assert size_violation(10, 20, 10, 20) is None
    assert size_violation(10, 21, 0, 20) == "message of 21 bytes exceeds the limit of 20"
    assert size_violation(11, 11, 10, 0) == "frame of 11 bytes exceeds the limit of 10"


def _frame(payload: bytes, first: int = 0x82, mask: bytes = b"") -> bytes:
    """A frame with a minimal length header (masked when mask is given)."""
    n = len(payload)
    bit = 0x80 if mask else 0
    head = bytes([first, bit | n]) if n < 126 else (bytes([first, bit | 126]) + n.to_bytes(2, "big") if n < 65536
                                                   else bytes([first, bit | 127]) + n.to_bytes(8, "big"))
    return head + mask + (apply_mask(payload, mask) if mask else payload)


def test_scanner_passes_frames_split_at_every_byte() -> None:
    """Unmasked and masked final binary frames split at any byte come out byte for byte, payload counted."""
    from tunnelgw.core.frames import FrameScanner
    for mask in (b"", b"\x01\x02\x03\x04"):
        stream = b"".join(_frame(p, mask=mask) for p in (b"", b"a" * 5, b"b" * 200, b"c" * 70000))
        for cut in range(len(stream) + 1):
            scanner = FrameScanner(bool(mask))
            out, total = b"", 0
            for piece in (stream[:cut], stream[cut:]):
                passed, payload, rest = scanner.feed(piece)
                assert rest is None
                out += passed
                total += payload
            assert out == stream and total == 5 + 200 + 70000 and scanner.at_boundary


def test_scanner_hands_back_control_text_wrong_mask_and_oversize() -> None:
    """A ping, a text frame, a frame with the wrong mask bit or over the limit is handed back from its first byte."""
    from tunnelgw.core.frames import FrameScanner
    good = _frame(b"x" * 10)
    for other in (_frame(b"hi", first=0x89), _frame(b"t", first=0x81), _frame(b"y", mask=b"abcd"), _frame(b"z" * 101),
                  _frame(b"f", first=0x02)):
        passed, payload, rest = FrameScanner(False, max_payload=100).feed(good + other + good)
        assert (passed, payload, rest) == (good, 10, other + good)
