"""
:mod:`tunnelgw.logs`: the text observer writes exactly twistd's own text
lines (``textFileLogObserver``), whatever the event; JSON lines carry fields.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

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


def test_quiet_by_default_loud_where_it_matters(tmp_path: Path) -> None:
    """
    A gateway process: requests to unclaimed paths (favicon), connections
    that never send a byte and kept-alive ones idle after their answer are
    counted in metrics, not logged (a stalled request is); no Twisted
    "Starting/Stopping" line (the syslog sinks' UDP socket and TCP
    reconnections, the portal's HTTP client included); a refused upgrade is
    logged once, with its reason.
    """
    import socket
    import urllib.error
    import urllib.request

    from support import GatewayProcess, free_ports, session_status, wait_until

    syslog = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    syslog.bind(("127.0.0.1", 0))
    syslog.settimeout(10)
    echo, refusing_syslog, refusing_portal = free_ports(3)
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
DemoBackend echo tcp:port={echo}:interface=127.0.0.1
AdminListen tcp:port=0:interface=127.0.0.1
ProxyPass /echo tcp:host=127.0.0.1:port={echo}
DemoPage / /echo
Timeout handshake=0.5
AuditLog syslog udp://127.0.0.1:{syslog.getsockname()[1]}
AuditLog syslog tcp://127.0.0.1:{refusing_syslog}
AuthPortal sso http://127.0.0.1:{refusing_portal}/auth timeout=1
ProxyPass /portal tcp:host=127.0.0.1:port={echo} auth=sso
"""
    try:
        with GatewayProcess(config, tmp_path) as gw:
            base = f"http://127.0.0.1:{gw.port(0)}"
            admin = f"http://127.0.0.1:{gw.port(2)}"
            for path in ("/favicon.ico", "/robots.txt"):
                with pytest.raises(urllib.error.HTTPError) as missing:
                    urllib.request.urlopen(base + path, timeout=10)
                assert missing.value.code == 404
            socket.create_connection(("127.0.0.1", gw.port(0))).close()  # a spare connection, closed
            idle = socket.create_connection(("127.0.0.1", gw.port(0)))  # a spare connection, left to time out
            kept = socket.create_connection(("127.0.0.1", gw.port(0)))  # answered, then kept alive idle
            kept.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n")
            assert kept.recv(65536).startswith(b"HTTP/1.1 200 ")
            stalled = socket.create_connection(("127.0.0.1", gw.port(0)))  # half a request: logged
            stalled.sendall(b"GET / HTTP/1.1\r\n")

            def metric(name: str) -> float:
                text = urllib.request.urlopen(admin + "/metrics", timeout=10).read().decode()
                found = re.search(rf"^{name} (\S+)$", text, re.M)
                return float(found.group(1)) if found else -1.0

            assert wait_until(lambda: metric("tunnelgw_silent_connections_total") == 3, 10)
            gw.wait_log("handshake timed out")
            for s in (idle, kept, stalled):
                s.close()
            assert metric("tunnelgw_unrouted_requests_total") == 2
            assert session_status(f"ws://127.0.0.1:{gw.port(0)}/nowhere") == 404
            assert session_status(f"ws://127.0.0.1:{gw.port(0)}/echo") == 101
            assert session_status(f"ws://127.0.0.1:{gw.port(0)}/portal") == 503  # the portal's client connection
            gw.wait_log(r"session end")
            assert b"path=/nowhere status=404" in syslog.recv(65536)  # the first audit event: not the favicon
        log = gw.log()
    finally:
        syslog.close()
    assert "favicon" not in log and "robots" not in log
    assert log.count("handshake timed out") == 1  # the stalled request only
    assert not re.search(r"Start(ing|ed) (protocol|factory)|Stopping (protocol|factory)", log), log
    assert len(re.findall(r"request refused .*path='/nowhere' status=404 reason='no route", log)) == 1, log


def test_log_sinks_are_kept_by_key_and_observed_only_while_there_are_some() -> None:
    """LogSinks: a keyed sink survives a reload that keeps its directive, a dropped one is closed once, an unkeyed one is made again; the publisher is observed only while there are sinks."""
    from twisted.logger import LogPublisher

    from tunnelgw.logs import LogSinks

    class Sink:
        """A sink that records its close."""

        def __init__(self, spec: str) -> None:
            self.spec = spec
            self.closed = 0

        def close(self) -> None:
            self.closed += 1

    publisher, seen = LogPublisher(), []
    keyed: LogSinks[str, Sink] = LogSinks(publisher, seen.append, ("a", "b"), Sink, key=lambda spec: spec)
    publisher({"n": 0})
    keyed.start()
    a, b = keyed.sinks
    keyed.reconfigure(("a", "c"))
    assert keyed.sinks[0] is a and b.closed == 1 and a.closed == 0 and keyed.sinks[1].spec == "c"
    publisher({"n": 1})
    keyed.reconfigure(())
    publisher({"n": 2})
    assert [e["n"] for e in seen] == [1] and a.closed == 1
    unkeyed: LogSinks[str, Sink] = LogSinks(publisher, seen.append, ("a",), Sink)
    unkeyed.start()
    first = unkeyed.sinks[0]
    unkeyed.reconfigure(("a",))
    assert unkeyed.sinks[0] is not first and first.closed == 1
    unkeyed.stop()
    publisher({"n": 3})
    assert unkeyed.sinks == [] and [e["n"] for e in seen] == [1]
