"""
Session recordings in websockify's record format, which noVNC's playback
tools (``tests/playback-ui.html`` of noVNC) read as they are::

    var VNC_frame_encoding = 'base64';
    var VNC_frame_data = [
    '{12{<base64 of the bytes the backend sent, 12 ms after the start>',
    '}15}<base64 of the bytes the client sent, 15 ms after the start>',
    'EOF'];

The gateway writes the ``base64`` encoding (websockify's base64 mode) with
**pybase64** (SIMD): 0.05 ms of CPU per MB on this project's machines,
where the ``binary`` encoding (latin-1 text through Python's
``unicode_escape``, websockify's default) costs 4-9 ms and the standard
library's ``binascii`` base64 1.4-2.5 ms; a file is 1.33x the bytes
recorded, where ``binary`` makes 2.7-4x.  noVNC's playback reads both.  :func:`parse_recording` reads
both too, so recordings made before, and websockify's own, still replay.
The file is a JavaScript source.  Pure: bytes in, text or bytes out.
"""

from __future__ import annotations

import re
from binascii import a2b_base64
from dataclasses import dataclass
from typing import Iterable, Iterator

from pybase64 import b64encode

__all__ = ["ENCODINGS", "FOOTER", "HEADER", "Frame", "encode_frame", "encode_frames", "is_recording_name",
           "parse_recording", "recording_name"]

#: What a file the gateway writes starts with.
HEADER = b"var VNC_frame_encoding = 'base64';\nvar VNC_frame_data = [\n"
#: What it ends with (a recording cut short has no footer: it still replays).
FOOTER = b"'EOF'];\n"
#: The frame encodings :func:`parse_recording` reads (those of websockify and noVNC's playback).
ENCODINGS = ("base64", "binary")
_FRAME = re.compile(r"'([{}])(\d+)\1(.*)',?")
_ENCODING = re.compile(r"var VNC_frame_encoding = '([a-z0-9]*)';")
_NAME = re.compile(r"[0-9a-f]{6,64}")
_FILE_NAME = re.compile(r"[0-9a-f]{6,64}\.js")


@dataclass(frozen=True)
class Frame:
    """One recorded chunk: ``to_client`` (from the backend) or from the client, at ``ms`` after the start."""

    to_client: bool
    ms: int
    data: bytes


def encode_frame(frame: Frame) -> bytes:
    """One line of the ``VNC_frame_data`` array, base64 encoding."""
    return b"".join(encode_frames([frame]))


def encode_frames(frames: Iterable[Frame]) -> list[bytes]:
    """
    Lines of the ``VNC_frame_data`` array, one per frame, as pieces to write
    one after another (a vectored write: the encoded bytes are not copied again).
    """
    parts: list[bytes] = []
    for frame in frames:
        mark = b"{" if frame.to_client else b"}"
        parts += (b"'%s%d%s" % (mark, frame.ms, mark), b64encode(frame.data), b"',\n")
    return parts


def _binary(text: str) -> bytes:
    """A frame's bytes in the ``binary`` encoding: latin-1 text escaped as Python's ``unicode_escape`` does."""
    return text.encode("ascii").decode("unicode_escape").encode("latin-1")


def _base64(text: str) -> bytes:
    """A frame's bytes in the ``base64`` encoding."""
    return a2b_base64(text.encode("ascii"), strict_mode=True)


def parse_recording(lines: Iterable[str]) -> Iterator[Frame]:
    """
    The frames of a recording, in file order; stops at ``'EOF'`` or at the
    end of a recording that was cut short.  The encoding is the file's
    ``VNC_frame_encoding`` line (:data:`ENCODINGS`); without one (older
    websockify files) it is guessed as noVNC's playback guesses it: base64
    when the first frame starts with ``UkZC`` (``RFB`` in base64).

    :raises ValueError: naming the line that is not a frame (or not in its encoding).
    """
    decode = None
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\n")
        if line.startswith("'EOF'"):
            return
        found = _FRAME.fullmatch(line)
        if found is None:
            if line.startswith("var VNC_frame_"):  # the encoding, or websockify's optional title/author lines
                named = _ENCODING.fullmatch(line)
                if named is not None:
                    if named.group(1) not in ENCODINGS:
                        raise ValueError(f"line {number}: frame encoding {named.group(1)!r} is not one of "
                                         f"{', '.join(ENCODINGS)}")
                    decode = _base64 if named.group(1) == "base64" else _binary
                continue
            raise ValueError(f"line {number} is not a recorded frame")
        if decode is None:
            decode = _base64 if found.group(3).startswith("UkZC") else _binary
        try:
            data = decode(found.group(3))
        except ValueError as e:  # binascii.Error and UnicodeError are ValueErrors
            raise ValueError(f"line {number} is not a recorded frame: {e}") from None
        yield Frame(found.group(1) == "{", int(found.group(2)), data)


def recording_name(session_id: str) -> str:
    """The file name of a session's recording; ValueError for an id that could not be one."""
    if not _NAME.fullmatch(session_id):
        raise ValueError(f"not a session id: {session_id!r}")
    return f"{session_id}.js"


def is_recording_name(name: str) -> bool:
    """Whether a file name is one :func:`recording_name` makes: the only files retention may delete."""
    return _FILE_NAME.fullmatch(name) is not None
