"""
One request, one view, one decision, one redaction (issue 23), in memory: a
gateway service on a ``MemoryReactorClock`` with clients on
``StringTransport`` (see :mod:`test_session`).  Every sink a token could
reach is captured: the text and JSON log lines, the audit trail's JSON file
and its RFC 5424 messages, the admin list and page, the metrics exposition.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import txaio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.web.test.requesthelper import DummyRequest

from test_session import Gateway, handshake, lose
from tunnelgw.admin import AdminResource
from tunnelgw.core.audit import AUDIT_EVENTS, AuditEvent, rfc5424
from tunnelgw.core.http import parse_head
from tunnelgw.core.redact import Redaction, TokenPlace, fingerprint, printable
from tunnelgw.core.request import view_request
from tunnelgw.core.routing import Reject, Route, RuleSet
from tunnelgw.core.config import parse_config
from tunnelgw.logs import format_fields, json_lines_observer, text_line, text_lines_observer

txaio.use_twisted()

#: The five spellings of ``/desk/TOKEN`` the issue found logged raw.
SPELLINGS = ("/%64esk/{t}", "/desk//{t}", "/desk/./{t}", "/x/../desk/{t}", "/DESK/../desk/{t}")
TOKENS = ("deskSecretAlpha01", "deskSecretBravo02")


@pytest.fixture(autouse=True)
def _memory_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(txaio.config, "loop", MemoryReactorClock())


def _head(target: str, extra: str = "") -> Any:
    head = parse_head(f"GET {target} HTTP/1.1\r\nHost: gw\r\n{extra}\r\n".encode("latin-1"))
    assert not isinstance(head, Reject), head
    return head


def test_five_spellings_are_one_view() -> None:
    """Every spelling of /desk/TOKEN has the canonical path, the token route's token and a fingerprinted shown path."""
    rules = RuleSet(parse_config("Listen tcp:port=0\nProxyPass /echo tcp:host=a:port=1\n", "t.conf"))
    redaction = Redaction((TokenPlace("/desk", "path"),))
    for spelling in ("/desk/{t}",) + SPELLINGS:
        view = view_request(_head(spelling.format(t="SECRET7")), rules, redaction)
        assert (view.path, view.token, view.refusal) == ("/desk/SECRET7", "SECRET7", None), spelling
        assert view.shown_path == f"/desk/{fingerprint('SECRET7')}"
        assert "SECRET7" not in view.shown_target


def test_unreadable_targets_are_refusals_never_errors() -> None:
    """A target routing cannot read gives a 400 refusal and a shown path that is only a fingerprint."""
    rules = RuleSet(parse_config("Listen tcp:port=0\nProxyPass / tcp:host=a:port=1\n", "t.conf"))
    for target, status in (("/desk/%zzSECRET", 400), ("/../SECRET", 400), ("/a%2fSECRET", 404), ("/%ffSECRET", 400)):
        view = view_request(_head(target), rules, Redaction())
        assert view.refusal is not None and view.refusal.status == status, target
        assert "SECRET" not in view.shown_path and view.shown_path.startswith("(unparsed ")
    for target in ("//[x/a://b", "//[x/../x://"):
        view = view_request(_head(target, "Referer: http://[x/\r\nOrigin: http://[::1\r\n"), rules, Redaction())
        assert view.refusal is None and isinstance(view.route, Route)
        assert view.shown_referer is not None and view.shown_referer.startswith("(unparsed ")


def test_host_token_hidden_in_origin_and_referer() -> None:
    """A from=host token is fingerprinted in the Origin and Referer the view shows."""
    rules = RuleSet(parse_config("Listen tcp:port=0\nProxyPass /echo tcp:host=a:port=1\n", "t.conf"))
    head = parse_head(b"GET /h HTTP/1.1\r\nHost: hostSECRET9.localhost:8080\r\n"
                      b"Origin: http://hostSECRET9.localhost:8080\r\nReferer: http://hostSECRET9:8080/x\r\n\r\n")
    assert not isinstance(head, Reject)
    view = view_request(head, rules, Redaction((TokenPlace("/h", "host"),)))
    assert view.token == "hostSECRET9"
    for shown in (view.shown_origin, view.shown_referer, view.scrub("origin 'http://hostSECRET9.localhost:8080'")):
        assert shown is not None and "hostSECRET9" not in shown and fingerprint("hostSECRET9") in shown


def test_text_log_escapes_control_characters() -> None:
    """A client certificate's CN with CR and an escape sequence is quoted and escaped in the text log."""
    cn = "carol\r\x1b[2J"
    assert format_fields({"tls_client": cn}) == "tls_client='carol\\r\\x1b[2J'"
    line = text_line({"log_format": "session start {details}", "details": f"tls_client={cn}",
                      "log_time": 0.0, "log_namespace": "tunnelgw"})
    assert "\r" not in line and "\x1b" not in line and line.count("\n") == 1
    assert printable(cn) == "carol\\x0d\\x1b[2J"


class Sinks:
    """Every place a request's text can end up, captured from one in-memory gateway."""

    def __init__(self, gw: Gateway, folder: Path) -> None:
        self.gw = gw
        self.text = io.StringIO()
        self.json = io.StringIO()
        self.syslog: list[bytes] = []
        self.audit_file = folder / "audit.jsonl"
        self._observers = [text_lines_observer(self.text), json_lines_observer(self.json), self._syslog]
        for observer in self._observers:
            globalLogPublisher.addObserver(observer)
        self.audit = gw.service.audit  # the configuration's "AuditLog json FOLDER/audit.jsonl"
        self.audit.start()

    def _syslog(self, event: dict[str, Any]) -> None:
        if event.get("audit") in AUDIT_EVENTS:
            fields = event.get("fields")
            self.syslog.append(rfc5424(AuditEvent(event["audit"], event.get("log_time") or 0.0,
                                                  fields if isinstance(fields, dict) else {}), 16, "gw", "tunnelgw", 1))

    def admin(self) -> str:
        """The admin listener's /sessions JSON and its operator's page, as an operator would fetch them."""
        resource = AdminResource(self.gw.factory, lambda: False)
        out = []
        for path in (b"/sessions", b"/"):
            request = DummyRequest([path])
            request.path = path
            request.requestHeaders.setRawHeaders(b"host", [b"127.0.0.1"])
            request.getHost = lambda: IPv4Address("TCP", "127.0.0.1", 80)  # type: ignore[method-assign]
            out.append(resource.render(request).decode("utf-8"))
        return "\n".join(out)

    def everything(self) -> str:
        """The text of every sink now."""
        return "\n".join((self.text.getvalue(), self.json.getvalue(),
                          self.audit_file.read_text() if self.audit_file.exists() else "",
                          b"\n".join(self.syslog).decode("utf-8"), self.admin(),
                          generate_latest(self.gw.factory.metrics.registry).decode("utf-8")))

    def close(self) -> None:
        self.audit.stop()
        for observer in self._observers:
            globalLogPublisher.removeObserver(observer)


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tunnelgw-request-"))
    yield path
    shutil.rmtree(path, True)


def _world(folder: Path) -> tuple[Gateway, Sinks]:
    tokens = folder / "tokens"
    tokens.write_text("".join(f"{t}: 127.0.0.2:5901\n" for t in TOKENS))
    (folder / "static").mkdir()
    (folder / "static" / "app.js").write_text("ok")
    (folder / "rec").mkdir()
    gw = Gateway(f"TokenSource files file {tokens} allow=127.0.0.0/8:5901 reload=0\n"
                 "TokenRoute /desk files from=path\nTokenRoute /vnc files\nTokenRoute /hd files from=host\n"
                 "TokenLookup /lookup /vnc\nGatewayURL ws://gw\n"
                 "ProxyPass /echo tcp:host=127.0.0.9:port=5900\n"
                 "ProxyPassMatch ^/m/(\\d+)$ tcp:host=127.0.0.$1:port=5900\n"
                 f"ProxyPass /replay replay:{folder / 'rec'}\n"
                 "ProxyPass /web ws://127.0.0.9:5902/app\n"
                 f"Alias /static {folder / 'static'}\n"
                 f"AuditLog json {folder / 'audit.jsonl'}\n")
    return gw, Sinks(gw, folder)


def _spell(path: str, data: st.DataObject) -> str:
    """path spelled another way routing reads as the same (escapes, doubled slashes, dot segments)."""
    out = ""
    for segment in path.strip("/").split("/"):
        out += data.draw(st.sampled_from(["/", "//", "/./", "/zz/../", "/ZZ/./../"]))
        out += "".join(f"%{ord(c):02X}" if c.isalnum() and data.draw(st.booleans()) else c for c in segment)
    return out


_ROUTES = ("desk", "vnc", "hd", "lookup", "echo", "m", "replay", "web", "static")


@pytest.mark.timeout(300)
def test_no_token_in_any_sink(folder: Path) -> None:
    """Targets, hosts and headers generated against every route kind: a token never appears in any sink."""
    gw, sinks = _world(folder)

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        token = data.draw(st.sampled_from(TOKENS) | st.text(string.ascii_letters + string.digits, min_size=12,
                                                             max_size=24).map(lambda t: "tk" + t))
        kind = data.draw(st.sampled_from(_ROUTES))
        host, query = "gw", ""
        # The token goes where a route reads tokens (a from=path segment, a from=host label, the query's
        # token=) and into the headers that repeat the page's URL; elsewhere it is just text.
        path = {"desk": f"/desk/{token}/x", "vnc": "/vnc", "hd": "/hd", "lookup": "/lookup", "echo": "/echo/a",
                "m": "/m/7", "replay": "/replay/0123456789ab", "web": "/web/index.html",
                "static": "/static/app.js"}[kind]
        if kind in ("vnc", "lookup") or data.draw(st.booleans()):
            query = data.draw(st.sampled_from(["", "a=1&"])) + "token=" + token
        if kind == "hd":
            host = f"{token}.localhost:8080"
        target = _spell(path, data) + ("?" + query if query else "")
        extra = b""
        if data.draw(st.booleans()):
            extra += f"Origin: http://{token}.evil.example\r\n".encode()
        if data.draw(st.booleans()):
            extra += f"Referer: http://{host}/desk/{token}?token={token}\r\n".encode()
        upgrade = data.draw(st.booleans())
        key = b"dGhlIHNhbXBsZSBub25jZQ=="
        request = (f"{data.draw(st.sampled_from(['GET', 'POST', 'HEAD']))} {target} HTTP/1.1\r\nHost: {host}\r\n"
                   .encode("latin-1") + (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key
                                         + b"\r\nSec-WebSocket-Version: 13\r\n" if upgrade else b"")
                   + extra + b"Content-Length: 0\r\n\r\n")
        _, client = gw.client()
        client.protocol.dataReceived(request)
        if gw.reactor.tcpClients:
            gw.connect_backend()
            gw.reactor.tcpClients.clear()
        shown = sinks.everything()  # while a session is live: the admin list and page show it
        lose(client)
        gw.reactor.advance(60)
        shown += sinks.everything()
        if token in shown:
            where = shown.index(token)
            raise AssertionError(f"token {token!r} shown for {request!r}: ...{shown[max(0, where - 200):where + 50]}")

    try:
        check()
    finally:
        sinks.close()


def test_five_spellings_open_and_are_fingerprinted_everywhere(folder: Path) -> None:
    """Each spelling of /desk/TOKEN opens its session (101) and every sink shows the fingerprint, never the token."""
    gw, sinks = _world(folder)
    try:
        for spelling in SPELLINGS:
            client = Gateway.client(gw)[1]
            client.protocol.dataReceived(handshake(spelling.format(t=TOKENS[0]).encode()))
            gw.connect_backend()
            assert client.value().startswith(b"HTTP/1.1 101 "), (spelling, client.value())
            shown = sinks.everything()
            assert f"/desk/{fingerprint(TOKENS[0])}" in shown and TOKENS[0] not in shown, spelling
            lose(client)
        shown = sinks.everything()
        assert shown.count("session end") >= 5 and TOKENS[0] not in shown
    finally:
        sinks.close()


def _status(client: StringTransport) -> int:
    return int(client.value().split(b" ", 2)[1])


def test_origin_refusal_never_names_a_host_token(folder: Path) -> None:
    """A cross-site handshake on a from=host route is refused (403) and its reason is logged with the token fingerprinted."""
    gw, sinks = _world(folder)
    try:
        host = f"{TOKENS[1]}.localhost:8080"
        client = Gateway.client(gw)[1]
        client.protocol.dataReceived(handshake(b"/hd").replace(b"Host: gw", f"Host: {host}".encode())
                                     + b"")
        client2 = Gateway.client(gw)[1]
        client2.protocol.dataReceived(handshake(b"/hd", b"Origin: http://evil.example\r\n")
                                      .replace(b"Host: gw", f"Host: {host}".encode()))
        assert _status(client2) == 403
        shown = sinks.everything()
        assert "not this gateway's own" in shown and fingerprint(TOKENS[1]) in shown and TOKENS[1] not in shown
        assert '"event": "request.refused"' in shown or "request.refused" in shown
    finally:
        sinks.close()


@pytest.mark.parametrize("target", [b"//[x/a://b", b"//[x/../x://", b"/desk/%zz", b"/../../etc"])
def test_unreadable_targets_refused_with_line_and_event(folder: Path, target: bytes) -> None:
    """Upgrades and plain GETs for unparseable targets, first or kept-alive second request: a 4xx with its log line and audit event, never an error."""
    gw, sinks = _world(folder)
    errors: list[dict[str, Any]] = []

    def failures(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(failures)
    try:
        for request in (handshake(target), b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n\r\n"):
            for first in (b"", b"GET /nothing-here HTTP/1.1\r\nHost: gw\r\n\r\n"):
                client = Gateway.client(gw)[1]
                client.protocol.dataReceived(first + request)
                answers = re.findall(rb"HTTP/1.1 (\d{3}) ", client.value())
                assert answers and 400 <= int(answers[-1]) < 500, (first, request, client.value())
        shown = sinks.everything()
        assert shown.count("request refused") >= 4 and shown.count('"event": "request.refused"') >= 4
        assert errors == [] and "Unhandled" not in shown and "Traceback" not in shown
    finally:
        globalLogPublisher.removeObserver(failures)
        sinks.close()


def _client_from(gw: Gateway, address: str) -> StringTransport:
    transport = StringTransport(peerAddress=IPv4Address("TCP", address, 40000))
    protocol = gw.service.front.buildProtocol(transport.getPeer())
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return transport


def test_plain_http_on_a_guarded_ws_route_never_reaches_the_backend() -> None:
    """GET and POST with a body on a ws:// route with allowclients= are 403 for others; the backend is asked only for an admitted client."""
    gw = Gateway("ProxyPass /restricted ws://127.0.0.1:5999/app allowclients=10.9.9.0/24\n")
    for request in (b"GET /restricted/index.html HTTP/1.1\r\nHost: gw\r\n\r\n",
                    b"POST /restricted/api/delete HTTP/1.1\r\nHost: gw\r\nContent-Length: 6\r\n\r\nDELETE",
                    b"GET /%72estricted/index.html HTTP/1.1\r\nHost: gw\r\n\r\n",
                    handshake(b"/restricted")):
        client = _client_from(gw, "127.0.0.1")
        client.protocol.dataReceived(request)
        assert _status(client) == 403, request
        assert gw.reactor.tcpClients == []
    honest = _client_from(gw, "10.9.9.7")
    honest.protocol.dataReceived(b"POST /restricted/api/delete HTTP/1.1\r\nHost: gw\r\nContent-Length: 6\r\n\r\nDELETE")
    assert [(h, p) for h, p, *_ in gw.reactor.tcpClients] == [("127.0.0.1", 5999)]
