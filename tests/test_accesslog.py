"""The access log (``AccessLog``; tunnelgw.accesslog, tunnelgw.core.accesslog): end to end with a gateway process."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

from support import GatewayProcess, free_port, session_status, wait_until
from tunnelgw.core.accesslog import AccessEntry, combined_line, json_line
from tunnelgw.core.redact import fingerprint

SECRETS = ("SECRETHEAD", "SECRETPATHTOKEN", "SECRETREFERER", "SECRETQUERY", "SECRETSESSION", "SECRETREFUSED", "SECRETDESK",
           "SECRETVNC")


def get(url: str, headers: dict[str, str]) -> int:
    """The status of a plain GET."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_access_log_lines_never_hold_a_token(tmp_path: Path) -> None:
    """Requests, a session and a refused upgrade each give one line in both formats; tokens and query values only as fingerprints."""
    echo = free_port()
    (tmp_path / "tokens").write_text("SECRETDESK: 127.0.0.1:1\n")
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
DemoBackend echo tcp:port={echo}:interface=127.0.0.1
ProxyPass /echo tcp:host=127.0.0.1:port={echo}
DemoPage / /echo
TokenSource desks file {{tmp}}/tokens allow=127.0.0.1:1
TokenRoute /desk desks from=path
AccessLog {{tmp}}/access.log
AccessLog {{tmp}}/access.json format=json
"""
    with GatewayProcess(config, tmp_path) as gw:
        base = f"http://127.0.0.1:{gw.port()}"
        referer = f"https://portal.example/launch?token=SECRETREFERER&desk=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.SECRETQUERY"
        assert get(f"{base}/desk/SECRETPATHTOKEN", {"Referer": referer, "User-Agent": "op-test/1"}) == 426
        assert get(f"{base}/?token=SECRETQUERY&lang=en&password=SECRETVNC", {}) == 200
        assert session_status(f"ws://127.0.0.1:{gw.port()}/echo?token=SECRETSESSION") == 101
        assert session_status(f"ws://127.0.0.1:{gw.port()}/desk/SECRETREFUSED") == 403
        with socket.create_connection(("127.0.0.1", gw.port())) as raw:  # a head twisted.web never parses
            raw.sendall(b"GET /SECRETHEAD HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 431 ")
        text, js = tmp_path / "access.log", tmp_path / "access.json"
        assert wait_until(lambda: text.exists() and len(text.read_text().splitlines()) == 5, 10), \
            text.read_text() if text.exists() else gw.log()
    lines = text.read_text().splitlines()
    records = [json.loads(line) for line in js.read_text().splitlines()]
    for secret in SECRETS:
        assert secret not in text.read_text() and secret not in js.read_text(), secret
    assert re.match(r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /desk/'
                    + re.escape(fingerprint("SECRETPATHTOKEN")) + r' HTTP/1\.1" 426 \d+ "https://portal\.example/launch\?'
                    + r'token=' + re.escape(fingerprint("SECRETREFERER")) + r'&desk=tok:[0-9a-f]{8}" "op-test/1"$', lines[0]), \
        lines[0]
    assert f'"GET /?token={fingerprint("SECRETQUERY")}&lang={fingerprint("en")}&password={fingerprint("SECRETVNC")} ' \
        'HTTP/1.1" 200 ' in lines[1], lines[1]
    assert {r["kind"] for r in records} == {"http", "session", "refused"}
    session = next(r for r in records if r["kind"] == "session")
    assert session["status"] == 101 and session["bytes_up"] == 1 and session["bytes_down"] == 1
    assert session["target"].startswith("/echo") and session["close_code"] == 1000
    refused = next(r for r in records if r["kind"] == "refused")
    assert refused["status"] == 403 and refused["target"] == f"/desk/{fingerprint('SECRETREFUSED')}"
    assert [r["kind"] for r in records] == ["http", "http", "session", "refused", "refused"]
    assert records[4]["status"] == 431 and records[4]["method"] == "-"
    assert lines[4].endswith('"- - -" 431 - "-" "-" reason="request head (request line and headers) too large"'), lines[4]


def test_combined_line_escapes_what_a_client_sends() -> None:
    """Quotes, backslashes and control characters in a client's fields cannot forge another field or line."""
    entry = AccessEntry(time=0.0, client="192.0.2.1", method="GET", target='/a"b', protocol="HTTP/1.1", status=404,
                        size=0, referer="x\ny", user_agent='evil" 200 "-')
    line = combined_line(entry)
    assert "\n" not in line and line.count('"') - line.count('\\"') == 6, line
    assert line.startswith('192.0.2.1 - - [01/Jan/1970:00:00:00 +0000] "GET /a\\"b HTTP/1.1" 404 - "x\\x0ay"')
    assert json.loads(json_line(entry))["user_agent"] == 'evil" 200 "-'


def test_reload_turns_access_logs_on_and_off(tmp_path: Path) -> None:
    """A reload adds an AccessLog to a gateway that had none, opens a rotated file anew, and takes it away."""
    from twisted.internet.task import Clock
    from twisted.logger import LogPublisher

    from tunnelgw.accesslog import AccessLogs
    from tunnelgw.core.config import AccessLog
    from tunnelgw.core.errors import Location

    publisher, clock = LogPublisher(), Clock()
    logs = AccessLogs(clock, (), lambda text: text, publisher)
    logs.start()
    end = {"audit": "session.end", "log_time": 0.0,
           "fields": {"session": "s1", "client": "192.0.2.1:5", "path": "/vnc", "route": "vnc", "bytes_up": 3,
                      "bytes_down": 4, "duration": 2.5, "close_code": 1000}}
    publisher(dict(end))
    path = tmp_path / "access.log"
    logs.reconfigure((AccessLog(str(path), "combined", Location("gw.conf", 1)),))
    publisher(dict(end))
    assert path.read_text() == ('192.0.2.1:5 - - [01/Jan/1970:00:00:00 +0000] "GET /vnc HTTP/1.1" 101 4 "-" "-" '
                                'session=s1 route="vnc" up=3 down=4 seconds=2.5 close=1000\n')
    rotated = tmp_path / "access.log.1"
    path.rename(rotated)  # logrotate, then SIGHUP: the same directive opens a new file
    logs.reconfigure((AccessLog(str(path), "combined", Location("gw.conf", 1)),))
    publisher(dict(end))
    assert len(rotated.read_text().splitlines()) == 1 and len(path.read_text().splitlines()) == 1
    logs.reconfigure(())
    publisher(dict(end))
    assert len(path.read_text().splitlines()) == 1
    logs.stop()


def test_query_values_are_fingerprinted() -> None:
    """Every query value becomes a fingerprint (names stay); fingerprints stay; no query, no change."""
    from tunnelgw.core.accesslog import hide_query_values

    assert hide_query_values("/a/b") == "/a/b"
    assert hide_query_values(f"/v.html?password=s%20x&token={fingerprint('t')}&flag") == \
        f"/v.html?password={fingerprint('s x')}&token={fingerprint('t')}&flag"
    assert hide_query_values("https://h/p?a=1#frag") == f"https://h/p?a={fingerprint('1')}"


def test_a_file_that_cannot_be_written_is_said_once(tmp_path: Path) -> None:
    """A write that fails is logged once per failing spell; the file is opened again at the next line."""
    from twisted.internet.task import Clock
    from twisted.logger import LogPublisher, globalLogPublisher

    from tunnelgw.accesslog import AccessLogs
    from tunnelgw.core.config import AccessLog
    from tunnelgw.core.errors import Location

    said: list[dict[str, object]] = []
    globalLogPublisher.addObserver(said.append)
    try:
        publisher = LogPublisher()
        folder = tmp_path / "later"
        logs = AccessLogs(Clock(), (AccessLog(str(folder / "access.log"), "json", Location("gw.conf", 1)),),
                          lambda text: text, publisher)
        logs.start()
        event = {"audit": "request.refused", "log_time": 0.0,
                 "fields": {"client": "192.0.2.1", "path": "/x", "status": 404, "reason": "no route", "kind": "route"}}
        publisher(dict(event))
        publisher(dict(event))
        folder.mkdir()
        publisher(dict(event))
        logs.stop()
    finally:
        globalLogPublisher.removeObserver(said.append)
    texts = [str(e.get("log_format")) for e in said if e.get("log_namespace") == "tunnelgw.access"]
    assert texts == ["access log {path} cannot be written, lines are lost: {why}", "access log {path} is written again"]
    assert json.loads((folder / "access.log").read_text())["status"] == 404
