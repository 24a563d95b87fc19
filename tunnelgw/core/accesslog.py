"""
Access-log lines (``AccessLog FILE|- format=combined|json``), from values.

An :class:`AccessEntry` is one HTTP request answered by the gateway, one
refused WebSocket handshake, or one session that ended.  Its target and
Referer are already redacted when it is made (see :mod:`tunnelgw.accesslog`,
the one place that redacts for the access log: the gateway's token
redaction, then :func:`hide_query_values`), so that nothing here can let a
token through.  Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Optional
from urllib.parse import unquote_plus

from tunnelgw.core.redact import fingerprint

__all__ = ["ACCESS_FORMATS", "AccessEntry", "combined_line", "format_entry", "hide_query_values", "json_line"]

#: The ``format=`` values of ``AccessLog``.
ACCESS_FORMATS = ("combined", "json")


@dataclass(frozen=True)
class AccessEntry:
    """
    One access-log entry.

    :ivar kind: ``http`` (a plain request), ``refused`` (an upgrade answered
        with an error) or ``session`` (a WebSocket session that ended).
    :ivar target: the request target (path and query), redacted.
    :ivar referer: the Referer header, redacted ("" when absent).
    :ivar size: bytes of the answer's body (for a session: bytes sent to the client).
    """

    time: float
    client: str
    method: str
    target: str
    protocol: str
    status: int
    size: int
    referer: str = ""
    user_agent: str = ""
    kind: str = "http"
    session: str = ""
    route: str = ""
    bytes_up: int = 0
    bytes_down: int = 0
    duration: float = 0.0
    close_code: Optional[int] = None
    reason: str = ""


_FINGERPRINT = re.compile(r"tok:[0-9a-f]{8}")


def hide_query_values(uri: str) -> str:
    """
    A URI or URL whose every query value is a fingerprint: after the token
    redaction, what is left of a query may still be a secret it does not
    know by name (noVNC's ``vnc.html?password=``), so the access log keeps
    names only.  Values that are fingerprints already stay as they are.
    """
    head, mark, rest = uri.partition("?")
    if not mark:
        return uri
    query, hash_mark, fragment = rest.partition("#")
    parts = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if eq and value and not _FINGERPRINT.fullmatch(value):
            value = fingerprint(unquote_plus(value))
        parts.append(name + eq + value)
    return head + "?" + "&".join(parts)


def _quoted(text: str) -> str:
    """A combined-format quoted field: quotes, backslashes and control characters escaped."""
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if " " <= c <= "~" or c > "\x9f" else f"\\x{ord(c):02x}" for c in out) + '"'


def combined_line(entry: AccessEntry) -> str:
    """
    Apache's combined format, ``CLIENT - - [TIME] "REQUEST" STATUS SIZE
    "REFERER" "USER-AGENT"``; a session line adds ``session= route= up=
    down= seconds= close=`` after it, a refusal ``reason=``.
    """
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(entry.time))
    request = f"{entry.method} {entry.target} {entry.protocol}"
    line = (f"{entry.client or '-'} - - [{stamp}] {_quoted(request)} {entry.status} {entry.size or '-'} "
            f"{_quoted(entry.referer or '-')} {_quoted(entry.user_agent or '-')}")
    if entry.kind == "session":
        line += (f" session={entry.session} route={_quoted(entry.route)} up={entry.bytes_up} "
                 f"down={entry.bytes_down} seconds={entry.duration:g} close={entry.close_code or '-'}")
    elif entry.kind == "refused":
        line += f" reason={_quoted(entry.reason)}"
    return line


def json_line(entry: AccessEntry) -> str:
    """One JSON object: the entry's fields, time as RFC 3339 UTC."""
    record = asdict(entry)
    record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(entry.time)) + f".{int(entry.time % 1 * 1000):03d}Z"
    return json.dumps(record, separators=(",", ":"))


def format_entry(entry: AccessEntry, format: str) -> str:
    """The entry as a line (no newline) of the named format."""
    return json_line(entry) if format == "json" else combined_line(entry)
