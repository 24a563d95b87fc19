"""
The pure TLS settings: ``ssl:`` endpoint strings split as Twisted splits
them, Listen options checked at their line, and ``certname=`` rules.
"""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from tunnelgw.core.config import ConfigError, parse_config
from tunnelgw.core.tlsconfig import ClientCertificate, ListenTLS, admits, parse_ssl_endpoint
from tunnelgw.core.wsrelay import forwarded_headers
from tunnelgw.core.proxyheaders import backend_request_headers


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "gw.conf")
    return str(raised.value).splitlines()


class ParseSslEndpointTests:
    """parse_ssl_endpoint reads Twisted's ssl: parameters and gives the plain tcp: stream."""

    def test_defaults_and_stream(self) -> None:
        """certKey defaults to privateKey (as in Twisted); interface and backlog go to the tcp: stream."""
        tls = parse_ssl_endpoint("ssl:8443:interface=127.0.0.1:backlog=5:privateKey=k.pem")
        assert tls == ListenTLS("tcp:port=8443:interface=127.0.0.1:backlog=5", "k.pem", "k.pem")
        assert parse_ssl_endpoint("ssl:port=1").private_key == "server.pem"

    def test_escapes(self) -> None:
        """Backslash escapes colons in values; an IPv6 interface stays escaped in the stream."""
        tls = parse_ssl_endpoint(r"ssl:port=443:interface=\:\:1:privateKey=C\:\\k.pem:certKey=a=b.pem")
        assert tls.stream == r"tcp:port=443:interface=\:\:1"
        assert tls.private_key == r"C:\k.pem" and tls.certificate == "a=b.pem"

    @pytest.mark.parametrize("text, message", [
        ("ssl:privateKey=k.pem", "missing parameter 'port'"),
        ("ssl:port=http", "bad port"),
        ("ssl:port=1:sslmethod=TLSv1_METHOD", "unknown ssl: parameter 'sslmethod'"),
        ("ssl:1:2", "unexpected parameter '2'"),
    ])
    def test_mistakes(self, text: str, message: str) -> None:
        """Unknown, missing and stray parameters are refused with what is wrong."""
        with pytest.raises(ValueError, match=message):
            parse_ssl_endpoint(text)

    @given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1))
    def test_any_file_name_round_trips(self, name: str) -> None:
        """Any file name written with Twisted's escapes is read back as it was."""
        escaped = name.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")
        assert parse_ssl_endpoint(f"ssl:port=1:privateKey={escaped}").private_key == name


class ListenOptionTests:
    """Listen options are read for ssl: endpoints and checked at their line."""

    def test_options_are_read(self) -> None:
        """certificates=, clientca=, clientcert= and crl= land in the listener's TLS settings."""
        config = parse_config("Listen ssl:port=1:privateKey=k.pem certificates=/etc/names clientca=/ca.pem "
                              "clientcert=required crl=/crl.pem\n")
        tls = config.listeners[0].tls
        assert tls is not None and tls.stream == "tcp:port=1"
        assert (tls.certificates, tls.client_ca, tls.client_cert, tls.crl) == (
            "/etc/names", "/ca.pem", "required", "/crl.pem")
        assert config.listeners[0].endpoint == "ssl:port=1:privateKey=k.pem"
        assert parse_config("Listen ssl:port=1 clientca=/ca.pem\n").listeners[0].tls.client_cert == "optional"  # type: ignore[union-attr]
        assert parse_config("Listen tcp:port=1\n").listeners[0].tls is None

    @pytest.mark.parametrize("line, message", [
        ("Listen tcp:port=1 clientca=/ca.pem", "gw.conf:1: Listen options (certificates=, clientca=, clientcert=, "
                                               "crl=) apply to ssl: endpoints only"),
        ("Listen ssl:port=1 clientcert=required", "gw.conf:1: clientcert=required needs clientca=FILE"),
        ("Listen ssl:port=1 crl=/crl.pem", "gw.conf:1: crl= needs clientca=FILE"),
        ("Listen ssl:port=1 clientcert=maybe clientca=/c", "gw.conf:1: clientcert takes one of off, optional, required"),
        ("Listen ssl:port=1 colour=blue", "gw.conf:1: Listen: unknown option 'colour'"),
        ("Listen ssl:nokey=1:port=1", "gw.conf:1: bad Listen endpoint 'ssl:nokey=1:port=1': unknown ssl: parameter"),
        ("Listen tcp:port=1\nProxyPass /a tcp:host=a:port=1 certname=", "gw.conf:2: certname takes comma-separated names"),
    ])
    def test_mistakes_are_named(self, line: str, message: str) -> None:
        """Each mistake is one FILE:LINE problem."""
        found = _problems(line + "\n")
        assert any(p.startswith(message) for p in found), found


class ClientCertificateTests:
    """certname= patterns admit certificates by CN or alternative name, exactly or by glob."""

    def test_no_patterns_admit_everyone(self) -> None:
        """A route without certname= asks nothing, with or without a certificate."""
        assert admits((), None) and admits((), ClientCertificate("x"))

    def test_patterns(self) -> None:
        """Exact names and globs match CN or any alternative name, ignoring case; no certificate never matches."""
        bob = ClientCertificate("Bob", ("bob@ops.example", "bob.desk.example"))
        assert admits(("bob",), bob) and admits(("*@OPS.example",), bob) and admits(("*.desk.example",), bob)
        assert not admits(("alice", "*@other.example", "bo"), bob)
        assert not admits(("*",), None)
        assert bob.identity == "Bob" and ClientCertificate("", ("a@b",)).identity == "a@b"

    def test_identity_header(self) -> None:
        """forward=tlsclient sends the verified identity; the HTTP proxy drops a client's own copy."""
        assert forwarded_headers(frozenset({"tlsclient"}), "10.0.0.1", True, None, {}, "alice") == {
            "X-Forwarded-TLS-Client": "alice"}
        assert forwarded_headers(frozenset({"tlsclient"}), "10.0.0.1", True, None,
                                 {"x-forwarded-tls-client": "root"}) == {}
        out = backend_request_headers([(b"X-Forwarded-TLS-Client", [b"root"]), (b"Accept", [b"*/*"])], "b:1", [])
        assert (b"x-forwarded-tls-client", [b"root"]) not in out and (b"accept", [b"*/*"]) in out
