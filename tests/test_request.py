"""
One request, one view, one decision, one redaction (issue 23), in memory: a
gateway service on a ``MemoryReactorClock`` with clients on
``StringTransport`` (see :mod:`test_session`).  Every sink a token could
reach is captured: the text and JSON log lines, the audit trail's JSON file
and its RFC 5424 messages, the admin list and page, the metrics exposition.
"""

from __future__ import annotations

import io
import re
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import txaio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.web.test.requesthelper import DummyRequest

from test_session import Gateway, Transport, handshake, lose
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
    """txaio's loop is a memory reactor (sessions time their closes with it)."""
    monkeypatch.setattr(txaio.config, "loop", MemoryReactorClock())


def _head(target: str, extra: str = "") -> Any:
    """A parsed GET head for target with extra header lines."""
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
        """Each audit event as the syslog sinks write it (RFC 5424)."""
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
        """Stop the audit trail and the observers."""
        self.audit.stop()
        for observer in self._observers:
            globalLogPublisher.removeObserver(observer)


@pytest.fixture
def folder() -> Iterator[Path]:
    """A fresh temporary folder, removed after the test."""
    path = Path(tempfile.mkdtemp(prefix="tunnelgw-request-"))
    yield path
    shutil.rmtree(path, True)


def _world(folder: Path) -> tuple[Gateway, Sinks]:
    """An in-memory gateway with a route of every kind (token routes by path, query and host, a lookup, ProxyPass, ProxyPassMatch, replay, ws://, Alias) and its sinks."""
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
                # A file that is there would be streamed by a producer the test's connection outlives.
                "static": "/static/missing.js"}[kind]
        if kind in ("vnc", "lookup") or data.draw(st.booleans()):
            query = data.draw(st.sampled_from(["", "a=1&"])) + "token=" + token
        if kind == "hd":
            host = f"{token}.localhost:8080"
        target = _spell(path, data) + ("?" + query if query else "")
        extra = b""
        if data.draw(st.booleans()):  # the page's origin: this desktop's host, another desktop's, or a stranger
            other = data.draw(st.sampled_from(TOKENS))
            extra += f"Origin: http://{data.draw(st.sampled_from([host, f'{other}.localhost:8080', 'evil.example']))}\r\n".encode()
        if data.draw(st.booleans()):
            extra += f"Referer: http://{host}/desk/{token}?token={token}\r\n".encode()
        if kind != "hd" and data.draw(st.booleans()):  # a page of a from=host desktop opening another route
            host = f"{data.draw(st.sampled_from(TOKENS))}.localhost:8080"
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
        for shown_token in {token, *TOKENS}:
            assert shown_token.lower() not in shown.lower(), (shown_token, request)
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
    """The status code of the last answer written to client."""
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
        logged = unrouted = 0
        for request in (handshake(target), b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n\r\n"):
            for first in (b"", b"GET /nothing-here HTTP/1.1\r\nHost: gw\r\n\r\n"):
                client = Gateway.client(gw)[1]
                client.protocol.dataReceived(first + request)
                answers = re.findall(rb"HTTP/1.1 (\d{3}) ", client.value())
                assert answers and 400 <= int(answers[-1]) < 500, (first, request, client.value())
                # A plain request no route claims is counted, not logged (quiet by default).
                quiet = b"Upgrade" not in request and answers[-1] == b"404"
                unrouted += quiet + bool(first)
                logged += not quiet
        shown = sinks.everything()
        assert shown.count("request refused") >= logged and shown.count('"event": "request.refused"') >= logged
        assert f"tunnelgw_unrouted_requests_total {float(unrouted)}" in shown
        assert errors == [] and "Unhandled" not in shown and "Traceback" not in shown
    finally:
        globalLogPublisher.removeObserver(failures)
        sinks.close()


@pytest.mark.parametrize("target", [b"/desk%2fdeskSecretAlpha01", b"/echo%00", b"/static%5c..%5capp.js", b"/m/999"])
def test_encoded_separators_refused_loudly_not_counted_as_unrouted(folder: Path, target: bytes) -> None:
    """A plain GET with an encoded '/', '\\' or NUL, or whose ProxyPassMatch capture would choose the backend host, is a refusal (404 with its line and audit event), never quieted as an unrouted path."""
    gw, sinks = _world(folder)
    try:
        for first in (b"", b"GET /nothing-here HTTP/1.1\r\nHost: gw\r\n\r\n"):
            client = Gateway.client(gw)[1]
            client.protocol.dataReceived(first + b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert re.findall(rb"HTTP/1.1 (\d{3}) ", client.value())[-1] == b"404"
        shown = sinks.everything()
        reason = "may not choose the backend host" if target.startswith(b"/m/") else "encoded '/'"
        assert shown.count(reason) >= 2 and shown.count('"event": "request.refused"') >= 2
        assert "tunnelgw_unrouted_requests_total 1.0" in shown  # /nothing-here only
        assert "deskSecretAlpha01" not in shown
    finally:
        sinks.close()


@pytest.mark.parametrize("second", [b"GET /a b HTTP/1.1\r\nHost: gw\r\n\r\n", b"GET /a HTTP/1.1\r\nHost : gw\r\n\r\n",
                                    b"GET /a HTTP/1.1\r\nHost: gw\r\nX: a\x01b\r\n\r\n", b"GET /a HTTP/2.0\r\n\r\n"])
def test_kept_alive_requests_are_read_like_first_ones(folder: Path, second: bytes) -> None:
    """A second request on a kept-alive connection that the first-request parser refuses: the same 400/505, with its log line and audit event."""
    gw, sinks = _world(folder)
    try:
        client = Gateway.client(gw)[1]
        client.protocol.dataReceived(b"GET /nothing-here HTTP/1.1\r\nHost: gw\r\n\r\n" + second)
        statuses = [int(s) for s in re.findall(rb"HTTP/1.1 (\d{3}) ", client.value())]
        assert statuses[0] == 404 and statuses[1] in (400, 505), client.value()
        shown = sinks.everything()
        # The first (a path no route claims) is counted, not logged; the second is a refusal.
        assert shown.count('"event": "request.refused"') == 1 and f"status={statuses[1]}" in shown
    finally:
        sinks.close()


def _client_from(gw: Gateway, address: str) -> StringTransport:
    """A newly accepted client connection from address."""
    transport = Transport(peerAddress=IPv4Address("TCP", address, 40000))
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


_GUARDED = ("/g/a", "/gm/7", "/w/index.html", "/gr/0123456789ab", "/g/static/app.js")


def _guarded_world(folder: Path) -> Gateway:
    """An in-memory gateway whose ProxyPass, ProxyPassMatch, ws://, replay and Alias paths are all behind allowclients=."""
    (folder / "static").mkdir(exist_ok=True)
    (folder / "static" / "app.js").write_text("file-body")
    (folder / "rec").mkdir(exist_ok=True)
    (folder / "rec" / "0123456789ab.js").write_text("")
    guard = "allowclients=10.9.9.0/24"
    return Gateway(f"ProxyPass /g tcp:host=127.0.0.9:port=5900 {guard}\n"
                   f"ProxyPassMatch ^/gm/(\\d+)$ tcp:host=127.0.0.$1:port=5900 {guard}\n"
                   f"ProxyPass /w ws://127.0.0.9:5902/app {guard}\n"
                   f"ProxyPass /gr replay:{folder / 'rec'} {guard}\n"
                   f"Alias /g/static {folder / 'static'}\n")


@pytest.mark.timeout(300)
def test_guarded_routes_never_reach_their_backend_for_a_refused_client(folder: Path) -> None:
    """Any spelling, method or kind of request (upgrade, plain, POST with a body, file, replay) to a guarded route: 403 and nothing reached for a refused client; the admitted one gets through."""
    gw = _guarded_world(folder)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(_GUARDED))
        target = _spell(path, data) + data.draw(st.sampled_from(["", "?x=1"]))
        method = data.draw(st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"]))
        upgrade = method == "GET" and data.draw(st.booleans())
        request = (handshake(target.encode()) if upgrade else
                   f"{method} {target} HTTP/1.1\r\nHost: gw\r\nContent-Length: 9\r\n\r\nSECRETBDY".encode())
        admitted = data.draw(st.booleans())
        # An admitted replay opens its file in a thread, which a memory reactor has not (test_decision_table plays it).
        assume(not (admitted and upgrade and path.startswith("/gr/")))
        address = data.draw(st.sampled_from(["10.9.9.1", "10.9.9.254"] if admitted else
                                            ["127.0.0.1", "10.9.8.255", "10.9.10.0", "192.0.2.1"]))
        gw.reactor.tcpClients.clear()
        client = _client_from(gw, address)
        client.protocol.dataReceived(request)
        answer = client.value()
        if not admitted:
            assert _status(client) == 403, (address, request, answer)
            assert gw.reactor.tcpClients == [] and b"file-body" not in answer and b" 101 " not in answer
            return
        assert not answer or _status(client) != 403, (address, request, answer)  # a session waits for its backend
        backend = path.split("/")[1]
        if backend in ("g", "gm", "w") and not path.startswith("/g/static") and (upgrade or backend == "w"):
            assert gw.reactor.tcpClients, (address, request, answer)

    check()


# The guard x request-kind table of docs/security.rst, walked.

def decision_table() -> dict[tuple[str, str], str]:
    """The cells of the table in docs/security.rst: (guard, kind) -> ``yes``, ``no`` or ``n/a``."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "security.rst").read_text()
    lines = text.split("tests/test_request.py::test_decision_table.", 1)[1].strip("\n").splitlines()
    rule = lines[0]
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", rule)]
    cut = lambda line: [line[a:b if i < len(spans) - 1 else None].strip() for i, (a, b) in enumerate(spans)]  # noqa: E731
    kinds = cut(lines[1])[1:]
    cells = {}
    for line in lines[3:]:
        if line.startswith("="):
            break
        guard, *values = cut(line)
        cells.update({(guard, kind): value for kind, value in zip(kinds, values)})
    return cells


def test_decision_table_is_complete() -> None:
    """The table names every guard and kind, and each cell says yes, no or n/a."""
    cells = decision_table()
    assert {g for g, _ in cells} == {"allowclients=", "auth=", "certname=", "Origin", "token", "limits", "rate"}
    assert {k for _, k in cells} == {"upgrade", "plain HTTP", "Alias file", "replay", "lookup", "redirect"}
    assert set(cells.values()) <= {"yes", "no", "n/a"}


class TlsWorld:
    """
    A gateway process over TLS (client certificates optional) with a real
    forward-auth portal, a backend that records what reaches it, an Alias
    folder and recordings, for the guards a route can carry.
    """

    def __init__(self, folder: Path) -> None:
        from support import GatewayProcess, TcpServer, make_client_cert, make_pki
        from test_certificates import _install, _listen
        from test_forwardauth import Portal

        pki = make_pki(folder / "pki")
        live = folder / "live"
        _install(pki, live)
        self.alice = make_client_cert(pki, folder / "people", "alice")
        self.bob = make_client_cert(pki, folder / "people", "bob")
        self.carol = make_client_cert(pki, folder / "people", "carol\r\x1b[2J")
        self.received = bytearray()
        self.backend = TcpServer(self._answer)
        self.portal = Portal(1)
        (folder / "static").mkdir()
        (folder / "static" / "app.js").write_text("file-body")
        (folder / "rec").mkdir()
        long_frame = "'{600000{RFB 003.008\\n',\n"  # a recording that plays for ten minutes
        (folder / "rec" / "0123456789ab.js").write_text(
            "var VNC_frame_encoding = 'binary';\nvar VNC_frame_data = [\n" + long_frame + "'EOF'];\n")
        ws = f"ws://127.0.0.1:{self.backend.port}/app"
        rec = folder / "rec"
        guards = {"allowclients-no": "allowclients=10.9.9.0/24", "allowclients-ok": "allowclients=127.0.0.0/8",
                  "auth": "auth=sso", "certname": "certname=alice"}
        config = _listen(live, f"clientca={pki.ca_cert} clientcert=optional")
        config += f"AuthPortal sso http://127.0.0.1:{self.portal.port}/auth timeout=5 cache=0\nLimit rate=1/m\n"
        for name, guard in guards.items():
            config += (f"ProxyPass /{name} {ws} {guard}\nAlias /{name}/static {folder / 'static'}\n"
                       f"ProxyPass /replay-{name} replay:{rec} {guard}\n")
        config += f"ProxyPass /replay-open replay:{rec}\nProxyPass /replay-limited replay:{rec} maxsessions=1\n"
        self.gateway = GatewayProcess(config, folder).start()
        self.port = self.gateway.port()
        self._sources = iter(range(10, 250))

    def _answer(self, conn: Any) -> None:
        """The backend: read a request (head and body), record it, answer 200."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        length = re.search(rb"(?i)content-length: *(\d+)", data)
        want = data.index(b"\r\n\r\n") + 4 + int(length.group(1)) if length and b"\r\n\r\n" in data else len(data)
        while len(data) < want:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        self.received += data
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nbackend")
        conn.close()

    def ask(self, request: bytes, cert: Optional[Path] = None, source: Optional[str] = None,
            keep: Optional[list[Any]] = None) -> tuple[int, bytes]:
        """Send request over TLS from a fresh 127.0.0.N (or source); the status and what came back."""
        import socket

        from test_certificates import _client_context

        address = source or f"127.0.0.{next(self._sources)}"
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=15, source_address=(address, 0))
        tls = _client_context(cert).wrap_socket(raw)
        tls.sendall(request)
        out = b""
        while True:
            if b"\r\n\r\n" in out and (b" 101 " in out.split(b"\r\n", 1)[0]):
                break
            chunk = tls.recv(65536)
            if not chunk:
                break
            out += chunk
        if keep is not None:
            keep.append(tls)
        else:
            tls.close()
        return int(out.split(b" ", 2)[1]), out

    def stop(self) -> None:
        """Stop the gateway, the backend and the portal."""
        self.gateway.stop()
        self.backend.stop()
        self.portal.stop()


@pytest.fixture(scope="module")
def tls_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsWorld]:
    """One :class:`TlsWorld` for the module's table cells."""
    world = TlsWorld(tmp_path_factory.mktemp("tlsworld"))
    yield world
    world.stop()


def _plain(path: str, body: bytes = b"", headers: str = "") -> bytes:
    """A plain request for path: POST with body when one is given, else GET; the connection closes after it."""
    method = "POST" if body else "GET"
    return (f"{method} {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
            f"{headers}\r\n").encode() + body


def _who(guard: str, honest: bool, world: TlsWorld) -> tuple[str, Optional[Path], str]:
    """The route, certificate and headers of a client the guard admits (honest) or refuses."""
    if guard == "allowclients=":
        return ("/allowclients-ok" if honest else "/allowclients-no"), None, ""
    if guard == "auth=":
        return "/auth", None, f"Cookie: session={'good' if honest else 'bad'}\r\n"
    return "/certname", world.alice if honest else world.bob, ""


def _route_guard_case(guard: str, kind: str, world: TlsWorld) -> None:
    """A route guard on one request kind: refused client, 403 and nothing reached; honest client, reached."""
    for honest in (False, True):
        base, cert, headers = _who(guard, honest, world)
        before, asked = len(world.received), len(world.portal.asked)
        body = b""
        if kind == "upgrade":
            request = handshake(f"{base}/x".encode(), headers.encode())
        elif kind == "plain HTTP":
            body = f"DELETE-EVERYTHING-{guard}-{honest}".encode()
            request = _plain(f"{base}/api/delete", body, headers)
        elif kind == "Alias file":
            request = _plain(f"{base}/static/app.js", headers=headers)
        else:
            request = handshake(f"/replay-{base[1:]}/0123456789ab".encode(), headers.encode())
        status, answer = world.ask(request, cert)
        if guard == "auth=":
            assert len(world.portal.asked) == asked + 1, "the portal is asked for every kind"
        if not honest:
            assert status == 403, (guard, kind, answer)
            assert len(world.received) == before and b"file-body" not in answer
            continue
        if kind == "upgrade":
            assert wait_until_true(lambda: len(world.received) > before), (guard, kind, answer)
        elif kind == "plain HTTP":
            assert status == 200 and answer.endswith(b"backend") and body in world.received, (guard, kind, answer)
        elif kind == "Alias file":
            assert status == 200 and answer.endswith(b"file-body"), (guard, kind, answer)
        else:
            assert status == 101, (guard, kind, answer)


def wait_until_true(predicate: Any) -> bool:
    """predicate() within 10 s."""
    from support import wait_until

    return wait_until(predicate, 10)


def _replay_origin(world: TlsWorld) -> None:
    """A replay handshake from a foreign page is 403; from the gateway's own origin it plays."""
    assert world.ask(handshake(b"/replay-open/0123456789ab", b"Origin: http://evil.example\r\n"))[0] == 403
    assert world.ask(handshake(b"/replay-open/0123456789ab", b"Origin: https://gw\r\n"))[0] == 101


def _replay_limits(world: TlsWorld) -> None:
    """maxsessions=1 on a replay route: a second viewer while the first watches is 503."""
    held: list[Any] = []
    try:
        assert world.ask(handshake(b"/replay-limited/0123456789ab"), keep=held)[0] == 101
        status, answer = world.ask(handshake(b"/replay-limited/0123456789ab"))
        assert status == 503, answer
    finally:
        for conn in held:
            conn.close()


def _replay_rate(world: TlsWorld) -> None:
    """Limit rate=1/m: a client's second replay handshake within the minute is 429."""
    assert world.ask(handshake(b"/replay-open/0123456789ab"), source="127.0.0.251")[0] == 101
    assert world.ask(handshake(b"/replay-open/0123456789ab"), source="127.0.0.251")[0] == 429


def test_certificate_cn_controls_escaped_in_the_text_log(tls_world: TlsWorld) -> None:
    """A client certificate whose CN holds CR and ESC [2J: the session line shows it quoted and escaped, never raw."""
    assert tls_world.ask(handshake(b"/replay-open/0123456789ab"), tls_world.carol)[0] == 101
    tls_world.gateway.wait_log(r"session start .*tls_client='carol\\r\\x1b\[2J'")
    log = tls_world.gateway.log()
    assert "\x1b" not in log and "carol\r" not in log


def _memory_world(extra: str = "") -> tuple[Gateway, Path]:
    """An in-memory gateway with a query token route, its lookup, an owner elsewhere for one token, and a TCP route."""
    folder = Path(tempfile.mkdtemp(prefix="tunnelgw-table-"))
    tokens = folder / "tokens"
    tokens.write_text(f"{TOKENS[0]}: 127.0.0.2:5901\n{TOKENS[1]}: 127.0.0.3:5901\n")
    return Gateway(f"TokenSource files file {tokens} allow=127.0.0.0/8:5901 reload=0\nTokenRoute /vnc files\n"
                   "TokenLookup /lookup /vnc\nGatewayURL ws://gw\nGatewayOwner ws://gw3 127.0.0.3\n"
                   f"ProxyPass /echo tcp:host=127.0.0.9:port=5900\n{extra}"), folder


def _ask_memory(gw: Gateway, request: bytes, address: str = "127.0.0.1") -> tuple[int, int]:
    """The status of request's answer and the backend connections started for it."""
    before = len(gw.reactor.tcpClients)
    client = _client_from(gw, address)
    client.protocol.dataReceived(request)
    started = len(gw.reactor.tcpClients) - before
    if started:
        gw.connect_backend()
    return (_status(client) if client.value() else 0), started


def _memory_case(guard: str, kind: str) -> None:
    """The Origin, token, limits and rate cells of upgrades, plain requests, lookups and redirects, in memory."""
    gw, folder = _memory_world("Limit sessions=1 rate=1/m\n" if guard in ("limits", "rate") else "")
    try:
        good, owned_elsewhere = f"/vnc?token={TOKENS[0]}", f"/vnc?token={TOKENS[1]}"
        evil = b"Origin: http://evil.example\r\n"
        if (guard, kind) == ("Origin", "upgrade"):
            assert _ask_memory(gw, handshake(b"/echo", evil)) == (403, 0)
            assert _ask_memory(gw, handshake(good.encode(), evil)) == (403, 0)
            assert _ask_memory(gw, handshake(b"/echo", b"Origin: http://gw\r\n")) == (101, 1)
        elif (guard, kind) == ("Origin", "redirect"):
            assert _ask_memory(gw, handshake(owned_elsewhere.encode(), evil))[0] == 403
            assert _ask_memory(gw, handshake(owned_elsewhere.encode()))[0] == 307
        elif (guard, kind) == ("token", "upgrade"):
            assert _ask_memory(gw, handshake(b"/vnc?token=guessed0000")) == (403, 0)
            assert _ask_memory(gw, handshake(good.encode())) == (101, 1)
        elif (guard, kind) == ("token", "plain HTTP"):
            assert _ask_memory(gw, _plain(good, b"body")) == (426, 0)
        elif (guard, kind) == ("token", "lookup"):
            assert _ask_memory(gw, _plain("/lookup?token=guessed0000"))[0] == 403
            assert _ask_memory(gw, _plain(f"/lookup?token={TOKENS[0]}"))[0] == 200
        elif (guard, kind) == ("token", "redirect"):
            assert _ask_memory(gw, handshake(b"/vnc?token=guessed0000"))[0] == 403
            assert _ask_memory(gw, handshake(owned_elsewhere.encode()))[0] == 307
        elif (guard, kind) == ("limits", "upgrade"):
            assert _ask_memory(gw, handshake(b"/echo"), "127.0.0.5") == (101, 1)
            assert _ask_memory(gw, handshake(b"/echo"), "127.0.0.6") == (503, 0)
        elif guard == "rate":
            request = {"upgrade": handshake(b"/echo"), "lookup": _plain(f"/lookup?token={TOKENS[0]}"),
                       "redirect": handshake(owned_elsewhere.encode())}[kind]
            first = _ask_memory(gw, request, "127.0.0.7")[0]
            assert first in (101, 200, 307), first
            assert _ask_memory(gw, request, "127.0.0.7") == (429, 0)
        else:
            raise AssertionError(f"no in-memory case for {guard} x {kind}")
    finally:
        shutil.rmtree(folder, True)


_ROUTE_GUARDS = ("allowclients=", "auth=", "certname=")
_REPLAY_CASES = {"Origin": _replay_origin, "limits": _replay_limits, "rate": _replay_rate}
_CELLS = sorted(cell for cell, value in decision_table().items() if value == "yes")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("guard,kind", _CELLS)
def test_decision_table(guard: str, kind: str, request: pytest.FixtureRequest) -> None:
    """Each ``yes`` of the guard x request-kind table: the refused client is refused and reaches nothing, the honest one gets through."""
    if guard in _ROUTE_GUARDS:
        _route_guard_case(guard, kind, request.getfixturevalue("tls_world"))
    elif kind == "replay":
        _REPLAY_CASES[guard](request.getfixturevalue("tls_world"))
    else:
        _memory_case(guard, kind)


@pytest.mark.parametrize("target", [b"/desk/%zzdeskSecretAlpha01", b"/desk%2fdeskSecretAlpha01", b"/../desk"])
def test_unreadable_targets_give_one_access_line_each_kind(folder: Path, target: bytes) -> None:
    """An upgrade and a plain GET for a target the view refuses each give exactly one access-log line, with its status and no token."""
    gw, sinks = _world(folder)
    access = folder / "access.log"
    from tunnelgw.core.config import AccessLog
    from tunnelgw.core.errors import Location

    gw.service.access.reconfigure((AccessLog(str(access), "combined", Location("t.conf", 1)),))
    gw.service.access.start()
    try:
        for request in (handshake(target), b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n\r\n"):
            client = Gateway.client(gw)[1]
            client.protocol.dataReceived(request)
        lines = access.read_text().splitlines()
        status = b"404" if b"%2f" in target else b"400"
        assert len(lines) == 2 and all(f'" {status.decode()} ' in line for line in lines), lines
        assert all("(unparsed " in line for line in lines) and "deskSecretAlpha01" not in access.read_text()
    finally:
        gw.service.access.stop()
        sinks.close()


@pytest.mark.parametrize("before", [b"\r\n", b"\r\n\r\n", b"\n"])
def test_empty_lines_before_a_first_request_are_ignored(folder: Path, before: bytes) -> None:
    """Empty lines before the request line (RFC 9112 section 2.2) are skipped on a first request as twisted.web skips them on a kept-alive one: the request is answered, plain or upgrade."""
    gw, sinks = _world(folder)
    try:
        plain = Gateway.client(gw)[1]
        plain.protocol.dataReceived(before + b"GET /echo HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert _status(plain) == 426
        upgrade = Gateway.client(gw)[1]
        upgrade.protocol.dataReceived(before)
        upgrade.protocol.dataReceived(handshake(b"/desk/%zz"))
        assert _status(upgrade) == 400 and b"bad percent escape" in upgrade.value()
    finally:
        sinks.close()


def test_star_target_is_a_logged_refusal_but_for_options(folder: Path) -> None:
    """GET * (first or kept-alive) is a 400 with its line and audit event, as every unreadable target; OPTIONS * is answered."""
    gw, sinks = _world(folder)
    try:
        for first in (b"", b"GET /nothing-here HTTP/1.1\r\nHost: gw\r\n\r\n"):
            client = Gateway.client(gw)[1]
            client.protocol.dataReceived(first + b"GET * HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert re.findall(rb"HTTP/1.1 (\d{3}) ", client.value())[-1] == b"400", client.value()
        options = Gateway.client(gw)[1]
        options.protocol.dataReceived(b"OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert _status(options) == 200
        assert sinks.everything().count("the target * is for OPTIONS only") >= 4  # text and JSON lines, twice
    finally:
        sinks.close()
