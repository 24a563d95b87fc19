"""
Session recordings in websockify's record format, which noVNC's playback
tools (``tests/playback-ui.html`` of noVNC) read as they are::

    var VNC_frame_encoding = 'binary';
    var VNC_frame_data = [
    '{12{<bytes the backend sent, 12 ms after the start>',
    '}15}<bytes the client sent, 15 ms after the start>',
    'EOF'];

Bytes are written as latin-1 text with Python's ``unicode_escape`` and ``'``
escaped, exactly as websockify writes them, so the file is a JavaScript
source.  Pure: text in, text out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

__all__ = ["FOOTER", "HEADER", "Frame", "encode_frame", "is_recording_name", "parse_recording", "recording_name"]

HEADER = "var VNC_frame_encoding = 'binary';\nvar VNC_frame_data = [\n"
FOOTER = "'EOF'];\n"
_FRAME = re.compile(r"'([{}])(\d+)\1(.*)',?")
_NAME = re.compile(r"[0-9a-f]{6,64}")
_FILE_NAME = re.compile(r"[0-9a-f]{6,64}\.js")


@dataclass(frozen=True)
class Frame:
    """One recorded chunk: ``to_client`` (from the backend) or from the client, at ``ms`` after the start."""

    to_client: bool
    ms: int
    data: bytes


def encode_frame(frame: Frame) -> str:
    """One line of the ``VNC_frame_data`` array."""
    mark = "{" if frame.to_client else "}"
    text = frame.data.decode("latin-1").encode("unicode_escape").decode("ascii").replace("'", "\\'")
    return f"'{mark}{frame.ms}{mark}{text}',\n"


def parse_recording(lines: Iterable[str]) -> Iterator[Frame]:
    """
    The frames of a recording, in file order; stops at ``'EOF'`` or at the
    end of a recording that was cut short.

    :raises ValueError: naming the line that is not a frame.
    """
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\n")
        if number <= 2 and line.startswith("var "):
            continue
        if line.startswith("'EOF'"):
            return
        found = _FRAME.fullmatch(line)
        if found is None:
            if line.startswith("var VNC_frame_"):
                continue  # websockify's optional title/author lines
            raise ValueError(f"line {number} is not a recorded frame")
        data = found.group(3).encode("ascii").decode("unicode_escape").encode("latin-1")
        yield Frame(found.group(1) == "{", int(found.group(2)), data)


def recording_name(session_id: str) -> str:
    """The file name of a session's recording; ValueError for an id that could not be one."""
    if not _NAME.fullmatch(session_id):
        raise ValueError(f"not a session id: {session_id!r}")
    return f"{session_id}.js"


def is_recording_name(name: str) -> bool:
    """Whether a file name is one :func:`recording_name` makes: the only files retention may delete."""
    return _FILE_NAME.fullmatch(name) is not None
