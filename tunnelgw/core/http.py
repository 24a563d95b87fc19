"""
The request head of a new connection, read once: where it ends, what it says,
and whether it asks for a WebSocket.

A connection's first request head is parsed here and nowhere else on the
WebSocket path: the gateway decides upgrade-or-not, routes and checks the
handshake from one :class:`RequestHead`.  The rules are RFC 9112's, strictly:
CRLF line ends, no obsolete line folding, no whitespace before a header's
colon, one ``Host``, ``Transfer-Encoding`` refused on a WebSocket handshake.
Pure functions over bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

from tunnelgw.core.routing import Reject

__all__ = ["EARLY_DATA_LIMIT", "RequestHead", "find_head_end", "header_line_problem", "is_upgrade", "parse_head",
           "request_line_problem"]

#: Bytes a client may send after its request head and before the 101: the
#: start of its first frames.  The client is not read while its backend
#: connects, so what is held is only what arrived in the same reads as the
#: head; more than this is refused with 400 and the connection closed.
EARLY_DATA_LIMIT = 65536

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP/(1\.[01])")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


@dataclass(frozen=True)
class RequestHead:
    """
    One parsed request head.

    :ivar method: e.g. ``b"GET"``.
    :ivar target: the request target as sent (path and query).
    :ivar version: ``b"1.1"`` or ``b"1.0"``.
    :ivar headers: (lower-cased name, value) pairs in order, values stripped.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    @property
    def path(self) -> bytes:
        """The target without its query."""
        return self.target.partition(b"?")[0]

    @property
    def query(self) -> bytes:
        """The target's query, without ``?`` (``b""`` when there is none)."""
        return self.target.partition(b"?")[2]

    def get(self, name: bytes) -> Optional[bytes]:
        """The values of header name (lower case) joined by ``", "``; None when absent."""
        values = self.get_all(name)
        return b", ".join(values) if values else None

    def get_all(self, name: bytes) -> list[bytes]:
        """Every value of header name (lower case), in order."""
        return [v for n, v in self.headers if n == name]

    def tokens(self, name: bytes) -> list[bytes]:
        """The comma-separated elements of header name, lower-cased and stripped."""
        return [t.strip().lower() for v in self.get_all(name) for t in v.split(b",") if t.strip()]


def find_head_end(buffer: bytes, start: int = 0) -> int:
    """
    The index just past the blank line that ends a head in buffer, or -1.

    :param start: how far an earlier call already looked: the search resumes
        three bytes before it, so that reading a head in pieces costs linear time.
    """
    found = buffer.find(b"\r\n\r\n", max(0, start - 3))
    return -1 if found < 0 else found + 4


def parse_head(data: bytes) -> Union[RequestHead, Reject]:
    """
    Parse a request head (request line, header lines, the blank line).

    :returns: the head, or a 400 (505 for another HTTP version) saying what is wrong.
    """
    lines = data.split(b"\r\n")
    if len(lines) < 3 or lines[-1] != b"" or lines[-2] != b"":
        return Reject(400, "the request head must end with an empty line")
    request_line, problem = _REQUEST_LINE.fullmatch(lines[0]), request_line_problem(lines[0])
    if request_line is None or problem is not None:
        return problem or Reject(400, "bad request line")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:-2]:
        problem = header_line_problem(line)
        if problem is not None:
            return problem
        name, _, value = line.partition(b":")
        headers.append((name.lower(), value.strip(b" \t")))
    head = RequestHead(request_line.group(1), request_line.group(2), request_line.group(3), tuple(headers))
    if head.version == b"1.1" and len(head.get_all(b"host")) != 1:
        return Reject(400, "an HTTP/1.1 request needs exactly one Host header")
    return head


def request_line_problem(line: bytes) -> Optional[Reject]:
    """
    Why line is not a request line this gateway serves (400, or 505 for another HTTP version); None when it is.
    The target ``*`` is served to ``OPTIONS`` only (twisted.web answers it itself, without a route).
    """
    found = _REQUEST_LINE.fullmatch(line)
    if found is not None:
        return Reject(400, "the target * is for OPTIONS only") if found[2] == b"*" and found[1] != b"OPTIONS" else None
    if line.startswith((b"PRI * HTTP/2", b"GET ")) or b" HTTP/" in line:
        version = line.rpartition(b" HTTP/")[2]
        if version and version not in (b"1.0", b"1.1") and re.fullmatch(rb"\d(\.\d)?", version):
            return Reject(505, "only HTTP/1.0 and HTTP/1.1 are served")
    return Reject(400, "bad request line")


def header_line_problem(line: bytes) -> Optional[Reject]:
    """Why line is not a header line (a token, a colon, a value of allowed characters); None when it is."""
    name, colon, value = line.partition(b":")
    if not colon or _TOKEN.fullmatch(name) is None:
        return Reject(400, "bad header line")
    if _FIELD_VALUE.fullmatch(value.strip(b" \t")) is None:
        return Reject(400, "bad character in a header value")
    return None


def is_upgrade(head: RequestHead) -> bool:
    """Whether the head asks for a WebSocket (``Upgrade: websocket``)."""
    return b"websocket" in head.tokens(b"upgrade")
