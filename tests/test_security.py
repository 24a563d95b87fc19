"""
Secure defaults (issue 11) at the glue points, in memory: a gateway service
on a ``MemoryReactorClock`` with clients on ``StringTransport`` (see
:mod:`test_session`).  Each test tries the attack and the honest case.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import txaio
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from twisted.web.test.requesthelper import DummyRequest

from test_session import Gateway, handshake, lose
from tunnelgw.admin import admin_site, is_own_host
from tunnelgw.core.config import ConfigError, parse_config
from tunnelgw.service import GatewayService
from tunnelgw.core.redact import fingerprint
from tunnelgw.web import access_log_formatter

txaio.use_twisted()


def status_of(client: StringTransport) -> int:
    """The status code of the answer written to client."""
    return int(client.value().split(b" ", 2)[1])


def ask(gw: Gateway, request: bytes) -> StringTransport:
    """A new client connection that sent request."""
    _, client = gw.client()
    client.protocol.dataReceived(request)
    return client


def temporary_file(case: TestCase) -> Path:
    """A path in a fresh temporary folder, removed after the test (trial's mktemp writes below the working directory)."""
    folder = Path(tempfile.mkdtemp(prefix="tunnelgw-security-"))
    case.addCleanup(shutil.rmtree, folder, True)
    return folder / "tokens"


def capture_log(case: TestCase) -> list[str]:
    """The text of every log event from now until the end of the test."""
    lines: list[str] = []

    def observer(event: Any) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines


def plain(path: bytes, extra: bytes = b"") -> bytes:
    """A plain GET for path."""
    return b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\n" + extra + b"\r\n"


class HandshakeRateTests(TestCase):
    """Token resolution sits behind the gateway's one per-client handshake bucket, charged once."""

    def setUp(self) -> None:
        self.patch(txaio.config, "loop", MemoryReactorClock())
        tokens = temporary_file(self)
        tokens.write_text("desk1: 127.0.0.2:5901\n")
        self.gw = Gateway(f"Limit rate=3\nTokenSource files file {tokens} allow=127.0.0.2:5901 reload=0\n"
                          "TokenRoute /vnc files\nTokenLookup /lookup /vnc\nGatewayURL ws://gw\n")

    def test_token_handshake_spends_one_token(self) -> None:
        """With rate=3, three token handshakes at one instant are admitted (one charge each), the fourth gets 429."""
        answers = [ask(self.gw, handshake(b"/vnc?token=desk1")) for _ in range(4)]
        self.assertEqual(len(self.gw.reactor.tcpClients), 3)
        self.assertEqual(status_of(answers[3]), 429)

    def test_probes_pay_before_any_lookup(self) -> None:
        """Unknown tokens, lookups and handshakes spend from the same bucket; past it, 429 and no lookup."""
        self.assertEqual(status_of(ask(self.gw, handshake(b"/vnc?token=guess1"))), 403)
        self.assertEqual(status_of(ask(self.gw, plain(b"/lookup?token=guess2"))), 403)
        self.assertEqual(status_of(ask(self.gw, plain(b"/lookup?token=desk1"))), 200)
        self.assertEqual(status_of(ask(self.gw, plain(b"/lookup?token=desk1"))), 429)
        self.assertEqual(status_of(ask(self.gw, handshake(b"/vnc?token=desk1"))), 429)
        self.assertEqual(self.gw.reactor.tcpClients, [])
        self.gw.reactor.advance(1.0)
        self.assertEqual(status_of(ask(self.gw, plain(b"/lookup?token=desk1"))), 200)

    def test_plain_pages_are_not_charged(self) -> None:
        """Requests that resolve no token (a 404 here) never spend from the bucket."""
        for _ in range(5):
            self.assertEqual(status_of(ask(self.gw, plain(b"/other"))), 404)
        self.assertEqual(status_of(ask(self.gw, plain(b"/lookup?token=desk1"))), 200)


class SameOriginTests(TestCase):
    """With no OriginAllow, a browser handshake from another site is refused; non-browser clients pass."""

    def setUp(self) -> None:
        self.patch(txaio.config, "loop", MemoryReactorClock())

    def opened(self, config: str, extra: bytes) -> StringTransport:
        """A client that sent a handshake for /echo with the extra headers."""
        gw = Gateway(config + "ProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        self.gw = gw
        return ask(gw, handshake(b"/echo", extra))

    def test_cross_site_page_refused(self) -> None:
        """Origin: http://evil.example gets 403 with the reason and no backend connection."""
        client = self.opened("", b"Origin: http://evil.example\r\n")
        self.assertEqual(status_of(client), 403)
        self.assertIn(b"not this gateway's own (http://gw)", client.value())
        self.assertEqual(self.gw.reactor.tcpClients, [])

    def test_own_page_and_non_browser_pass(self) -> None:
        """The gateway's own origin (from Host) and a request without Origin reach the backend."""
        self.opened("", b"Origin: http://GW:80\r\n")
        self.assertEqual(len(self.gw.reactor.tcpClients), 1)
        self.opened("", b"")
        self.assertEqual(len(self.gw.reactor.tcpClients), 1)

    def test_upgrade_on_a_kept_alive_connection_is_checked_too(self) -> None:
        """An upgrade after a plain request (parsed by twisted.web) meets the same Origin check."""
        gw = Gateway("ProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        _, client = gw.client()
        client.protocol.dataReceived(plain(b"/other"))
        self.assertEqual(status_of(client), 404)
        client.clear()
        client.protocol.dataReceived(handshake(b"/echo", b"Origin: http://evil.example\r\n"))
        self.assertEqual(status_of(client), 403)
        self.assertEqual(gw.reactor.tcpClients, [])

    def test_origin_allow_any_restores_every_origin(self) -> None:
        """``OriginAllow / *`` admits a page anywhere."""
        self.opened("OriginAllow / *\n", b"Origin: http://elsewhere.example\r\n")
        self.assertEqual(len(self.gw.reactor.tcpClients), 1)

    def test_forwarded_scheme_and_host_only_from_a_trusted_proxy(self) -> None:
        """X-Forwarded-Proto/Host describe the client's view only when the peer is a TrustedProxy."""
        front = b"Origin: https://vdi.example\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: vdi.example\r\n"
        self.assertEqual(status_of(self.opened("", front)), 403)
        self.opened("TrustedProxy 127.0.0.1\n", front)
        self.assertEqual(len(self.gw.reactor.tcpClients), 1)
        # The front says the client used http: an https page is another origin.
        mixed = b"Origin: https://gw\r\nX-Forwarded-Proto: http\r\n"
        self.assertEqual(status_of(self.opened("TrustedProxy 127.0.0.1\n", mixed)), 403)


class ClientAddressTests(TestCase):
    """The client address comes only from the header TrustedProxy names, as a plain IP literal."""

    def setUp(self) -> None:
        self.patch(txaio.config, "loop", MemoryReactorClock())
        self.log = capture_log(self)

    def client_of_session(self, config: str, extra: bytes) -> str:
        """The client= of the session started by a handshake from the trusted peer 127.0.0.1."""
        gw = Gateway(config + "ProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        ask(gw, handshake(b"/echo", extra))
        gw.connect_backend()
        (started,) = [line for line in self.log if line.startswith("session start")]
        return started.split("client=", 1)[1].split()[0]

    def test_client_forwarded_does_not_beat_the_proxy_xff(self) -> None:
        """X-Forwarded-For from the proxy names the client; the client's own Forwarded is not read."""
        both = b"X-Forwarded-For: 203.0.113.9\r\nForwarded: for=198.51.100.7\r\n"
        self.assertEqual(self.client_of_session("TrustedProxy 127.0.0.1\n", both), "203.0.113.9")

    def test_header_forwarded_reads_only_forwarded(self) -> None:
        """With header=forwarded the roles swap: a client's X-Forwarded-For is not read."""
        both = b"Forwarded: for=203.0.113.9\r\nX-Forwarded-For: 198.51.100.7\r\n"
        self.assertEqual(self.client_of_session("TrustedProxy 127.0.0.1 header=forwarded\n", both), "203.0.113.9")

    def test_scope_id_injection_gives_the_peer_and_a_log_line(self) -> None:
        """A scope id with spaces (log-field injection) is not an address: the peer is the client, and it is logged."""
        forged = b'Forwarded: for="[fe80::1%x y status=200]"\r\n'
        client = self.client_of_session("TrustedProxy 127.0.0.1 header=forwarded\n", forged)
        self.assertTrue(client.startswith("127.0.0.1"), client)
        self.assertTrue([line for line in self.log if "is not an IP address" in line and "peer=127.0.0.1" in line])


class HostCaptureTests(TestCase):
    """A ProxyPassMatch capture in a target's host never makes a DNS name the client chose."""

    def setUp(self) -> None:
        self.patch(txaio.config, "loop", MemoryReactorClock())

    def test_dns_suffix_capture_refused_before_any_connection(self) -> None:
        """``/vm/5.attacker.example`` gets 404 and nothing is connected or resolved; ``/vm/5`` connects."""
        gw = Gateway("ProxyPassMatch ^/vm/([^/]+)$ tcp:host=10.0.0.$1:port=5700\n")
        refused = ask(gw, handshake(b"/vm/5.attacker.example"))
        self.assertEqual(status_of(refused), 404)
        self.assertEqual(gw.reactor.tcpClients, [])
        ask(gw, handshake(b"/vm/5"))
        self.assertEqual([(host, port) for host, port, *_ in gw.reactor.tcpClients], [("10.0.0.5", 5700)])


class RedactionTests(TestCase):
    """Tokens never reach session lines, refusal and redirect lines, the access log or the admin list."""

    def setUp(self) -> None:
        self.patch(txaio.config, "loop", MemoryReactorClock())
        self.log = capture_log(self)
        tokens = temporary_file(self)
        tokens.write_text("secretdesk1: 127.0.0.2:5901\nsecretremote: 127.0.0.3:5901\n")
        self.gw = Gateway(f"TokenSource files file {tokens} allow=127.0.0.0/8:5901 reload=0\n"
                          "TokenRoute /vnc files\nTokenRoute /desk files from=path\n"
                          "GatewayURL ws://gw2\nGatewayOwner ws://gw3 127.0.0.3\n")

    def assert_no_token(self, text: str) -> None:
        self.assertNotIn("secretdesk1", text)
        self.assertNotIn("secretremote", text)

    def test_path_token_in_session_lines_and_admin_list(self) -> None:
        """A from=path token shows as its fingerprint in session start/end lines and in the admin list."""
        client = ask(self.gw, handshake(b"/desk/secretdesk1"))
        self.gw.connect_backend()
        self.assertTrue(client.value().startswith(b"HTTP/1.1 101 "))
        (session,) = self.gw.factory.sessions.values()
        listed = repr(session.describe())
        self.assertIn(fingerprint("secretdesk1"), listed)
        self.assert_no_token(listed)
        lose(client)
        lines = "\n".join(self.log)
        self.assertRegex(lines, rf"session start .*path=/desk/{fingerprint('secretdesk1')}")
        self.assertIn("session end", lines)
        self.assert_no_token(lines)

    def test_redirect_and_refusal_lines(self) -> None:
        """The redirect's Location (sent whole to the client) is logged with the token fingerprinted; so are refusals."""
        client = ask(self.gw, handshake(b"/vnc?token=secretremote"))
        self.assertIn(b"Location: ws://gw3/vnc?token=secretremote", client.value())
        ask(self.gw, plain(b"/desk/secretdesk1"))  # a plain request on a token route: refused, path logged
        ask(self.gw, handshake(b"/desk/secretdesk1/x", b"Origin: http://evil.example\r\n"))
        lines = "\n".join(self.log)
        self.assertIn(f"location=ws://gw3/vnc?token={fingerprint('secretremote')}", lines)
        self.assertEqual(len([line for line in self.log if line.startswith("request refused")]), 2)
        self.assert_no_token(lines)

    def test_access_log_line(self) -> None:
        """The access-log formatter the gateway's Site uses fingerprints the URI's and the Referer's tokens."""
        request = DummyRequest([b""])
        request.uri = b"/desk/secretdesk1/app.js?token=secretremote&x=1"
        request.code, request.clientproto, request.sentLength = 200, b"HTTP/1.1", 10  # type: ignore[attr-defined]
        request.requestHeaders.setRawHeaders(b"referer", [b"https://gw/desk/secretdesk1?token=secretremote"])
        line = access_log_formatter(self.gw.factory.redact)("[ts]", request)  # type: ignore[arg-type]
        self.assertIn(f"/desk/{fingerprint('secretdesk1')}/app.js?token={fingerprint('secretremote')}"
                      f"&x={fingerprint('1')}", line)  # the access log keeps no query value raw
        self.assert_no_token(line)


class AdminHostTests(TestCase):
    """The admin listener answers only requests whose Host is its own address."""

    def test_own_addresses_and_rebinding(self) -> None:
        """ip:port and localhost:port on loopback pass; another name, a missing Host or another port do not."""
        local = IPv4Address("TCP", "127.0.0.1", 9090)
        for host in (b"127.0.0.1:9090", b"localhost:9090", b"LOCALHOST:9090"):
            self.assertTrue(is_own_host(host, local), host)
        for host in (b"rebind.example:9090", b"127.0.0.1:9091", b"127.0.0.1", None, b"localhost"):
            self.assertFalse(is_own_host(host, local), host)
        self.assertFalse(is_own_host(b"localhost:9090", IPv4Address("TCP", "192.0.2.1", 9090)))
        self.assertTrue(is_own_host(b"[::1]:9090", IPv6Address("TCP", "::1", 9090)))
        self.assertTrue(is_own_host(b"192.0.2.1", IPv4Address("TCP", "192.0.2.1", 80)))
        self.assertTrue(is_own_host(b"anything", UNIXAddress(b"/run/admin.sock")))


class ChunkedBodyTests(TestCase):
    """A chunked request body is counted as it arrives: past the bound, 413 and the connection ends."""

    def setUp(self) -> None:
        self.patch(txaio.config, "loop", MemoryReactorClock())

    def test_chunked_body_over_the_bound_is_413(self) -> None:
        """80 KiB sent in 1 KiB chunks (no Content-Length) gets 413; a small chunked body does not."""
        gw = Gateway("ProxyPass /echo tcp:host=10.0.0.1:port=5900\n")
        head = b"POST /other HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        small = ask(gw, head + b"5\r\nhello\r\n0\r\n\r\n")
        self.assertEqual(status_of(small), 404)
        _, big = gw.client()
        big.protocol.dataReceived(head)
        for _ in range(80):
            big.protocol.dataReceived(b"400\r\n" + b"x" * 1024 + b"\r\n")
        self.assertEqual(status_of(big), 413)
        self.assertTrue(big.disconnecting)


class AdminListenTests(TestCase):
    """An AdminListen other hosts can reach needs the word ``public``; loopback and UNIX sockets do not."""

    def test_non_loopback_needs_public(self) -> None:
        """tcp:port=9090 (every interface) is a FILE:LINE problem; with ``public`` it is accepted (and warned about)."""
        with self.assertRaises(ConfigError) as raised:
            parse_config("Listen tcp:port=0\nAdminListen tcp:port=9090\n", "gw.conf")
        self.assertIn("gw.conf:2: AdminListen tcp:port=9090 is reachable from other hosts", str(raised.exception))
        with self.assertRaises(ConfigError):
            parse_config("Listen tcp:port=0\nAdminListen tcp:port=9090:interface=0.0.0.0 publik\n", "gw.conf")
        config = parse_config("Listen tcp:port=0\nAdminListen tcp:port=9090 public\n"
                              "AdminListen tcp:port=9091:interface=127.0.0.1\nAdminListen unix:/run/a.sock\n", "gw.conf")
        self.assertEqual([a.endpoint for a in config.admin_listeners],
                         ["tcp:port=9090", "tcp:port=9091:interface=127.0.0.1", "unix:/run/a.sock"])
        log = capture_log(self)
        admin_site(GatewayService(config, MemoryReactorClock()).factory, lambda: False, "tcp:port=9090")
        admin_site(GatewayService(config, MemoryReactorClock()).factory, lambda: False, "unix:/run/a.sock")
        self.assertEqual(len([line for line in log if "serves the session list and close to the network" in line]), 1)


    def test_admin_requests_are_not_logged_but_refusals_are(self) -> None:
        """Scrapes and page loads on the admin listener write no line (no twisted.web access line with the raw URI); a foreign Host's 403 is one refusal line with its reason."""
        config = parse_config("Listen tcp:port=0\nAdminListen tcp:port=9091:interface=127.0.0.1\n", "gw.conf")
        site = admin_site(GatewayService(config, MemoryReactorClock()).factory, lambda: False,
                          "tcp:port=9091:interface=127.0.0.1")
        log = capture_log(self)
        site.startFactory()
        self.addCleanup(site.stopFactory)
        for host, path in ((b"127.0.0.1:9091", b"/healthz?token=adminSECRET1"), (b"127.0.0.1:9091", b"/sessions"),
                           (b"rebound.example", b"/sessions?token=adminSECRET2")):
            transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 9091),
                                        peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
            channel = site.buildProtocol(transport.getPeer())
            channel.makeConnection(transport)
            channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            self.assertIn(b" 403 " if host == b"rebound.example" else b" 200 ", transport.value().split(b"\r\n")[0] + b" ")
            channel.connectionLost(None)
        self.assertEqual([line for line in log if "adminSECRET1" in line or "GET /" in line], [])
        refused = [line for line in log if "refused" in line]
        self.assertEqual(len(refused), 1, log)
        self.assertIn("Host is not this admin listener's address", refused[0])
        self.assertNotIn("adminSECRET2", "\n".join(log))


def test_haproxy_listeners_are_documented_as_trusting_every_peer() -> None:
    """Point 10: the README's haproxy: example binds to loopback and says what such a listener believes."""
    from support import REPO

    readme = (REPO / "README.rst").read_text()
    example = re.search(r"``(haproxy:[^`]*)``", readme)
    assert example is not None and "interface=127.0.0.1" in example.group(1)
    assert "believes the PROXY header of every peer" in readme
    assert "``haproxy:`` listeners believe the PROXY header of every peer" in (REPO / "docs" / "security.rst").read_text()
