"""
:mod:`tunnelgw.logs`: the text observer writes exactly twistd's own text
lines (``textFileLogObserver``), whatever the event; JSON lines carry fields.
"""

from __future__ import annotations

import io
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import LogLevel, textFileLogObserver
from twisted.python.failure import Failure

from tunnelgw.logs import json_line, text_lines_observer


def _both(event: dict[str, Any]) -> tuple[str, str]:
    ours, theirs = io.StringIO(), io.StringIO()
    text_lines_observer(ours)(dict(event))
    textFileLogObserver(theirs)(dict(event))
    return ours.getvalue(), theirs.getvalue()


def _event(**kwargs: Any) -> dict[str, Any]:
    event = {"log_time": 1_764_753_600.25, "log_level": LogLevel.info, "log_namespace": "tunnelgw"}
    event.update(kwargs)
    return event


EVENTS = [
    _event(log_format="session start {details}", details="session=ab client=127.0.0.1 path='/a b'"),
    _event(log_format="{a!r} {b:>5} {c.real}", a="x", b=3, c=2),
    _event(log_format="two\nlines {x}", x="and\nmore"),
    _event(log_format="", x=1),
    _event(log_format="missing {nothere}"),
    _event(log_format="positional {}"),
    _event(log_format="a call {f()}", f=lambda: "called"),
    _event(log_format="own system {x}", x=1, log_system="custom,system"),
    _event(log_format=b"bytes {x}", x=1),
    _event(log_format="no level", log_level=None),
    _event(log_format="no time", log_time=None),
    _event(log_format="{{braces}} {x}", x="}"),
    _event(x=1),  # no format: nothing written
    _event(log_format="failed {x}", x=1, log_failure=Failure(ValueError("boom"))),
]


def test_text_lines_are_twistds() -> None:
    """Every kind of event (plain, calls, failures, bad formats, multi-line, no time) gives twistd's line."""
    for event in EVENTS:
        ours, theirs = _both(event)
        assert ours == theirs, event


def _controls_escaped(line: str) -> str:
    """twistd's line with what a text log never carries raw escaped: controls but tab and newline, separators, bidi overrides."""
    def shown(c: str) -> str:
        unsafe = (ord(c) < 0x20 and c not in "\t\n") or 0x7f <= ord(c) <= 0x9f or c in "\u2028\u2029" \
            or 0x202a <= ord(c) <= 0x202e or 0x2066 <= ord(c) <= 0x2069
        return (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") if unsafe else c

    return "".join(shown(c) for c in line)


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False), st.text(max_size=30))
def test_any_time_and_text(when: float, value: str) -> None:
    """Timestamps (cached per second) and values with any characters match too, controls escaped (a CR or ESC from a client never reaches the file raw)."""
    ours, theirs = _both(_event(log_time=when, log_format="v={v}", v=value))
    assert ours == _controls_escaped(theirs)


def test_stamp_cache_follows_the_second() -> None:
    """One observer over several seconds writes each line's own second."""
    ours, theirs = io.StringIO(), io.StringIO()
    observer, twisted_observer = text_lines_observer(ours), textFileLogObserver(theirs)
    for when in (100.0, 100.9, 101.0, 99.5, 100.2, 3600.0):
        event = _event(log_time=when, log_format="at {w}", w=when)
        observer(dict(event))
        twisted_observer(dict(event))
    assert ours.getvalue() == theirs.getvalue()


def test_json_line_has_fields() -> None:
    """JSON lines: the message and the structured fields as top-level keys."""
    line = json.loads(json_line(_event(log_format="session start {details}", details="d",
                                       fields={"session": "ab", "bytes_up": 3})))
    assert line["message"] == "session start d" and line["session"] == "ab" and line["bytes_up"] == 3
