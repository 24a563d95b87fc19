"""Audit events (tunnelgw.core.audit, tunnelgw.audit): RFC 5424 to a real rsyslogd, JSON lines, failures that drop events, never sessions."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogPublisher, Logger
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from support import GatewayProcess, TcpServer, backend, free_ports, require_tool, stop_process, wait_until
from tunnelgw.audit import TCP_QUEUE, AuditTrail
from tunnelgw.core.audit import AuditEvent, json_record, octet_counted, rfc5424
from tunnelgw.core.config import ConfigError, parse_config

# Pure formatting.


def test_rfc5424_message_shape_and_escaping() -> None:
    """PRI from facility and severity, UTC time, one SD element with escaped values, only audit fields."""
    event = AuditEvent("session.refused", 1767312000.25, {
        "session": "abc", "client": "127.0.0.1:5", "path": '/a"]\\b', "status": 400, "token": "secret",
        "query": "token=secret", "reason": "x\ny"})
    message = rfc5424(event, 19, "host one", "tunnelgw", 42).decode()
    assert message.startswith('<157>1 2026-01-02T00:00:00.250Z hostone tunnelgw 42 session.refused [tunnelgw@32473 ')
    assert 'session="abc" client="127.0.0.1:5" path="/a\\"\\]\\\\b" status="400" reason="x\ufffdy"]' in message
    assert "secret" not in message
    assert octet_counted(b"abc") == b"3 abc"
    record = json.loads(json_record(event))
    assert record["event"] == "session.refused" and record["status"] == 400 and "token" not in record
    with pytest.raises(ValueError):
        rfc5424(event, 16, "h", "a", 1, sdid="bad id")


@pytest.mark.parametrize("line, message", [
    ("AuditLog syslog udp://localhost:514", "gw.conf:2: a syslog address is udp://IP:PORT"),
    ("AuditLog syslog tcp://127.0.0.1:0", "gw.conf:2: a syslog address is udp://IP:PORT"),
    ("AuditLog syslog udp://127.0.0.1:514 facility=mail", "gw.conf:2: facility takes one of"),
    ("AuditLog json relative.log", "gw.conf:2: AuditLog json takes one absolute file name"),
    ("AuditLog stdout", "gw.conf:2: AuditLog takes syslog ADDRESS"),
])
def test_audit_log_mistakes(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"Listen tcp:port=1\n{line}\n", "gw.conf")
    assert str(caught.value).startswith(message), str(caught.value)


# The trail in memory: failing sinks drop and count events.


def trail_for(text: str) -> tuple[AuditTrail, Logger, CollectorRegistry]:
    registry = CollectorRegistry()
    publisher = LogPublisher()
    trail = AuditTrail(MemoryReactorClock(), parse_config("Listen tcp:port=1\n" + text).audit_logs, registry, publisher)
    trail.start()
    return trail, Logger(observer=publisher), registry


def test_unwritable_file_drops_and_counts_then_recovers(tmp_path: Path) -> None:
    folder = tmp_path / "later"
    trail, log, registry = trail_for(f"AuditLog json {folder}/audit.jsonl\n")
    log.info("session start", fields={"session": "s1"}, audit="session.start")
    log.info("not an audit line", fields={"session": "s1"})
    sink = f"json:{folder}/audit.jsonl"
    assert registry.get_sample_value("tunnelgw_audit_dropped_total", {"sink": sink}) == 1
    folder.mkdir()
    log.info("session end", fields={"session": "s1", "bytes_up": 3}, audit="session.end")
    lines = [json.loads(x) for x in (folder / "audit.jsonl").read_text().splitlines()]
    assert [(x["event"], x["session"]) for x in lines] == [("session.end", "s1")]
    assert stat.S_IMODE(os.stat(folder / "audit.jsonl").st_mode) == 0o600
    trail.stop()


def test_tcp_sink_queue_is_bounded_while_disconnected() -> None:
    trail, log, registry = trail_for("AuditLog syslog tcp://127.0.0.1:1\n")
    for i in range(TCP_QUEUE + 5):
        log.info("session start", fields={"session": str(i)}, audit="session.start")
    assert registry.get_sample_value("tunnelgw_audit_dropped_total", {"sink": "tcp://127.0.0.1:1"}) == 5
    trail.stop()


# A real rsyslogd receiving over UDP and TCP.

_RSYSLOG_CONF = """\
global(workDirectory="{folder}")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
template(name="fields" type="list") {{
  property(name="pri") constant(value="|") property(name="app-name") constant(value="|")
  property(name="msgid") constant(value="|") property(name="structured-data") constant(value="\\n")
}}
if $app-name startswith "gw-" then action(type="omfile" file="{folder}/received.log" template="fields")
"""


class Rsyslog:
    """rsyslogd in the foreground with its own config, UDP and TCP inputs on loopback, one output file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(exist_ok=True)
        self.udp, self.tcp = free_ports(2)
        (folder / "rsyslog.conf").write_text(_RSYSLOG_CONF.format(folder=folder, udp=self.udp, tcp=self.tcp))
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> "Rsyslog":
        self.proc = subprocess.Popen([require_tool("rsyslogd"), "-n", "-f", str(self.folder / "rsyslog.conf"),
                                      "-i", str(self.folder / "rsyslog.pid")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.folder / "stderr", "ab"))

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.tcp), timeout=1).close()
                return True
            except OSError:
                return self.proc is not None and self.proc.poll() is not None

        assert wait_until(listening, 10) and self.proc.poll() is None, (self.folder / "stderr").read_text()
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def received(self) -> list[tuple[int, str, str, dict[str, str]]]:
        """(PRI, app, MSGID, SD params) of every message from the gateway."""
        import re

        path = self.folder / "received.log"
        out = []
        for line in (path.read_text().splitlines() if path.exists() else []):
            pri, app, msgid, sd = line.split("|", 3)
            params = {k: v.replace('\\"', '"') for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', sd)}
            out.append((int(pri), app, msgid, params))
        return out


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path / "rsyslog").start()
    yield server
    server.stop()


def admin_post(port: int, path: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        return int(answer.status)


def test_events_reach_rsyslog_and_json_file(tmp_path: Path, rsyslog: Rsyslog, backend: TcpServer) -> None:
    """Start, end, refusals and an admin close arrive at rsyslogd over UDP and TCP, and in the JSON file."""
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
AdminListen tcp:port=0:interface=127.0.0.1
ProxyPass /echo {backend.endpoint} name=echo
AuditLog syslog udp://127.0.0.1:{rsyslog.udp} facility=local3 app=gw-udp
AuditLog syslog tcp://127.0.0.1:{rsyslog.tcp} app=gw-tcp
AuditLog json {{tmp}}/audit.jsonl
"""
    with GatewayProcess(config, tmp_path) as gw:
        with connect(f"ws://127.0.0.1:{gw.port()}/echo?token=s3cret", open_timeout=5) as ws:
            ws.send(b"12345")
            assert ws.recv(timeout=5) == b"12345"
        with pytest.raises(InvalidStatus):
            connect(f"ws://127.0.0.1:{gw.port()}/nowhere", open_timeout=5)
        with pytest.raises(InvalidStatus):
            connect(f"ws://127.0.0.1:{gw.port()}/echo", subprotocols=["nope"], open_timeout=5)
        with connect(f"ws://127.0.0.1:{gw.port()}/echo", open_timeout=5) as ws:
            ws.send(b"x")
            ws.recv(timeout=5)
            live = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{gw.port(1)}/sessions", timeout=5).read())
            [session] = live["sessions"]
            assert admin_post(gw.port(1), f"/sessions/{session['session']}/close") == 200
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)

        def arrived() -> bool:
            kinds = [(app, msgid) for _, app, msgid, _ in rsyslog.received()]
            return all(kinds.count((app, "session.end")) == 2 for app in ("gw-udp", "gw-tcp"))

        assert wait_until(arrived, 10), rsyslog.received()
    events = rsyslog.received()
    for app in ("gw-udp", "gw-tcp"):
        mine = [(pri, msgid, params) for pri, a, msgid, params in events if a == app]
        kinds = [msgid for _, msgid, _ in mine]
        assert kinds.count("session.start") == 2 and kinds.count("request.refused") == 1
        assert kinds.count("session.refused") == 1 and kinds.count("admin.close") == 1
        facility = 19 if app == "gw-udp" else 16
        start = next(p for pri, m, p in mine if m == "session.start" and pri == facility * 8 + 6)
        assert start["route"] == "echo" and start["path"] == "/echo" and start["backend"] == backend.endpoint
        end = next(p for _, m, p in mine if m == "session.end")
        assert end["bytes_up"] == "5" and end["close_code"] == "1000"
        close = next(p for pri, m, p in mine if m == "admin.close" and pri == facility * 8 + 5)
        assert close["session"] == session["session"] and close["admin"].startswith("127.0.0.1:")
        refused = next(p for _, m, p in mine if m == "request.refused")
        assert refused["status"] == "404" and refused["path"] == "/nowhere"
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines].count("session.end") == 2
    assert stat.S_IMODE(os.stat(tmp_path / "audit.jsonl").st_mode) == 0o600
    everything = (tmp_path / "audit.jsonl").read_text() + (rsyslog.folder / "received.log").read_text()
    assert "s3cret" not in everything


def test_syslog_outage_never_ends_a_session(tmp_path: Path, rsyslog: Rsyslog, backend: TcpServer) -> None:
    """With rsyslogd gone, sessions run and events wait (TCP) or are dropped and counted (UDP); back, TCP catches up."""
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
AdminListen tcp:port=0:interface=127.0.0.1
ProxyPass /echo {backend.endpoint}
AuditLog syslog tcp://127.0.0.1:{rsyslog.tcp} app=gw-tcp
"""
    with GatewayProcess(config, tmp_path) as gw:
        with connect(f"ws://127.0.0.1:{gw.port()}/echo", open_timeout=5) as ws:
            ws.send(b"one")
            assert ws.recv(timeout=5) == b"one"
        assert wait_until(lambda: [m for _, _, m, _ in rsyslog.received()].count("session.end") == 1, 10)
        rsyslog.stop()
        with connect(f"ws://127.0.0.1:{gw.port()}/echo", open_timeout=5) as ws:
            ws.send(b"two")
            assert ws.recv(timeout=5) == b"two"
        rsyslog.start()
        assert wait_until(lambda: [m for _, _, m, _ in rsyslog.received()].count("session.end") == 2, 20), \
            gw.log()[-3000:]
