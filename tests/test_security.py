"""
Secure defaults (issue 11) at the glue points, in memory: a gateway service
on a ``MemoryReactorClock`` with clients on ``StringTransport`` (see
:mod:`test_session`).  Each test tries the attack and the honest case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import txaio
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from test_session import Gateway, handshake

txaio.use_twisted()


def status_of(client: StringTransport) -> int:
    """The status code of the answer written to client."""
    return int(client.value().split(b" ", 2)[1])


def ask(gw: Gateway, request: bytes) -> StringTransport:
    """A new client connection that sent request."""
    _, client = gw.client()
    client.protocol.dataReceived(request)
    return client


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
        tokens = Path(self.mktemp())
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
