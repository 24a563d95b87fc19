"""
JSON lines logging (``LogFormat json``): one JSON object per log event, with
the event's structured ``fields`` (session id, client, route, bytes...) as
top-level keys, so that session start/end lines need no parsing.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, formatEvent

__all__ = ["format_fields", "json_lines_observer", "json_line"]


def json_line(event: dict[str, Any]) -> str:
    """One event as a JSON line: time, level, namespace, message, then its fields."""
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(timespec="milliseconds"),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    fields = event.get("fields")
    if isinstance(fields, dict):
        record.update({k: v for k, v in fields.items() if k not in record})
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = failure.getTraceback()
    return json.dumps(record, default=str) + "\n"


def json_lines_observer(stream: IO[str]) -> ILogObserver:
    """An observer writing :func:`json_line` lines to stream."""
    return FileLogObserver(stream, json_line)


def format_fields(values: dict[str, object]) -> str:
    """Render key=value pairs for one log line, quoting values with spaces."""
    return " ".join(f"{k}={v!r}" if isinstance(v, str) and (" " in v or not v) else f"{k}={v}"
                    for k, v in values.items())
