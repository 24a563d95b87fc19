"""
Audit events: what happened to sessions and who did it, as RFC 5424 syslog
messages or JSON lines.  Pure: values in, bytes out; the glue in
:mod:`tunnelgw.audit` picks the events from the log and carries the bytes.

Events (the syslog MSGID, the JSON ``event`` key):

==================  =============================================================
``session.start``   the 101 went out; client, route, path, backend, subprotocol
``session.end``     the session ended; bytes each way, duration, close code/reason
``session.refused`` a handshake that had a session id was refused (status, reason)
``request.refused`` a request refused before any session (no route, bad head...)
``admin.close``     an operator closed a session through the admin listener
==================  =============================================================

Structured data goes in one SD element, ``[tunnelgw@32473 key="value" ...]``
(32473 is the enterprise number RFC 5612 reserves for documentation; an
operator with an own number sets ``sdid=``).  Only the fields named in
:data:`AUDIT_FIELDS` are ever sent: never a query string, a header or a
token (paths are redacted by the glue before they get here).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

__all__ = ["AUDIT_EVENTS", "AUDIT_FIELDS", "FACILITIES", "AuditEvent", "json_record", "octet_counted",
           "rfc5424"]

#: The event kinds and their syslog severity (RFC 5424: 5 notice, 6 informational).
AUDIT_EVENTS = {"session.start": 6, "session.end": 6, "session.refused": 5, "request.refused": 5,
                "admin.close": 5}
#: The fields an audit event may carry, in the order they are written.
AUDIT_FIELDS = ("session", "client", "user", "route", "path", "backend", "subprotocol", "status", "reason",
                "kind", "bytes_up", "bytes_down", "duration", "close_code", "close_reason", "recording", "desktop", "admin")
#: Syslog facilities by name (RFC 5424 table 1).
FACILITIES = {"kern": 0, "user": 1, "daemon": 3, "auth": 4, "authpriv": 10, **{f"local{i}": 16 + i for i in range(8)}}
#: Longest SD-PARAM value written, in characters (a client-controlled path is cut there).
MAX_VALUE = 512
_SD_ESCAPE = re.compile(r'(["\\\]])')
_SD_NAME = re.compile(r'[!-~]{1,32}')


@dataclass(frozen=True)
class AuditEvent:
    """One event: its kind (a key of :data:`AUDIT_EVENTS`), time and fields."""

    kind: str
    time: float
    fields: Mapping[str, Any]

    def values(self) -> list[tuple[str, str]]:
        """The allowed fields that are set, as text, in :data:`AUDIT_FIELDS` order."""
        out = []
        for name in AUDIT_FIELDS:
            value = self.fields.get(name)
            if value is None or value == "" or value == "-":
                continue
            text = value if isinstance(value, str) else json.dumps(value)
            out.append((name, "".join(c if c.isprintable() else "\ufffd" for c in text)[:MAX_VALUE]))
        return out


def _sd_value(value: str) -> str:
    """An SD-PARAM value with ``"``, ``\\`` and ``]`` escaped (RFC 5424 6.3.3)."""
    return _SD_ESCAPE.sub(r"\\\1", value)


def _timestamp(time: float) -> str:
    return datetime.fromtimestamp(time, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _header_word(text: str, limit: int) -> str:
    """A syslog header field: printable ASCII without spaces, at most limit long, ``-`` when empty."""
    word = "".join(c for c in text if "!" <= c <= "~")[:limit]
    return word or "-"


def rfc5424(event: AuditEvent, facility: int, hostname: str, app: str, procid: int,
            sdid: str = "tunnelgw@32473") -> bytes:
    """
    The event as one RFC 5424 message (no framing).

    The MSG part is the kind and the fields as ``key=value`` text, for
    receivers that show MSG only.
    """
    if not _SD_NAME.fullmatch(sdid) or any(c in sdid for c in '= ]"'):
        raise ValueError(f"bad SD-ID {sdid!r}")
    priority = facility * 8 + AUDIT_EVENTS[event.kind]
    values = event.values()
    params = "".join(f' {name}="{_sd_value(value)}"' for name, value in values)
    header = (f"<{priority}>1 {_timestamp(event.time)} {_header_word(hostname, 255)} {_header_word(app, 48)} "
              f"{procid} {_header_word(event.kind, 32)} [{sdid}{params}]")
    text = " ".join(f"{name}={value}" for name, value in values)
    return f"{header} {event.kind} {text}".rstrip().encode("utf-8")


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 octet-counting framing, for syslog over TCP: ``LENGTH SP MESSAGE``."""
    return b"%d %s" % (len(message), message)


def json_record(event: AuditEvent) -> str:
    """The event as one JSON line (with its newline)."""
    record: dict[str, Any] = {"time": _timestamp(event.time), "event": event.kind}
    record.update((name, event.fields[name]) for name, _ in event.values())
    return json.dumps(record, default=str) + "\n"
