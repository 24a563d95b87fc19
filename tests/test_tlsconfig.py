"""
The pure TLS settings: ``ssl:`` endpoint strings split as Twisted splits
them, Listen options checked at their line, and ``certname=`` rules.
"""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from tunnelgw.core.config import ConfigError, parse_config
from tunnelgw.core.tlsconfig import (CertPattern, ClientCertificate, ListenTLS, TLSClientString, admits,
                                     parse_cert_pattern, parse_ssl_endpoint, parse_tls_client_string)
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


class ParseTlsClientStringTests:
    """parse_tls_client_string reads what Twisted's tls: client parser accepts."""

    def test_positional_and_named(self) -> None:
        """host and port positional or named; every other parameter by name or in Twisted's positional order."""
        assert parse_tls_client_string("tls:desk.example:5901") == TLSClientString("desk.example", 5901)
        assert parse_tls_client_string("TLS:host=desk.example:port=5901:timeout=5") == \
            TLSClientString("desk.example", 5901, 5.0)
        full = parse_tls_client_string(r"tls:h:1:9:10.0.0.1:c.pem:k.pem:/roots:unix\:/run/s.sock")
        assert full == TLSClientString("h", 1, 9.0, "10.0.0.1", "c.pem", "k.pem", "/roots", "unix:/run/s.sock")
        named = parse_tls_client_string(r"tls:\:\:1:443:bindAddress=\:\:1:certificate=C\:\\c.pem:privateKey=k.pem"
                                        r":trustRoots=/etc/ca:endpoint=tcp\:127.0.0.1\:443")
        assert named == TLSClientString("::1", 443, 30.0, "::1", r"C:\c.pem", "k.pem", "/etc/ca", "tcp:127.0.0.1:443")
        assert parse_tls_client_string(r"tls:h:0:endpoint=unix\:/s").port == 0  # the port is not used then
        assert parse_tls_client_string("tls:h:1:sessionReuse=off").session_reuse is False
        assert parse_tls_client_string("tls:h:1:sessionReuse=on").session_reuse is True

    @pytest.mark.parametrize("text, message", [
        ("tls:desk.example", "missing parameter 'port'"),
        ("tls:port=1", "missing parameter 'host'"),
        ("tls:h:http", "bad port 'http'"),
        ("tls:h:70000", "bad port '70000'"),
        ("tls:h:0", "bad port '0': a number from 1"),
        ("tls:h:1:timeout=soon", "bad timeout 'soon'"),
        ("tls:h:1:timeout=0", "bad timeout '0'"),
        ("tls:h:1:hst=x", "unknown parameter 'hst'"),
        ("tls:h:1:host=x", "parameter 'host' given twice"),
        ("tls:1:2:3:4:5:6:7:8:9", "too many parameters"),
        ("tls:h:1:sessionReuse=no", "bad sessionReuse 'no': on or off"),
        ("tcp:h:1", "not a tls: endpoint"),
    ])
    def test_mistakes(self, text: str, message: str) -> None:
        """Unknown, repeated and missing parameters and bad numbers are refused with what is wrong."""
        with pytest.raises(ValueError, match=message):
            parse_tls_client_string(text)


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

    def test_http2_is_opt_in(self) -> None:
        """http2=on turns HTTP/2 on for that ssl: listener only; it is off by default."""
        config = parse_config("Listen ssl:port=1:privateKey=k.pem http2=on\nListen ssl:port=2:privateKey=k.pem\n")
        assert [l.tls.http2 for l in config.listeners if l.tls is not None] == [True, False]

    @pytest.mark.parametrize("line, message", [
        ("Listen tcp:port=1 clientca=/ca.pem", "gw.conf:1: Listen options (certificates=, clientca=, clientcert=, "
                                               "crl=, http2=) apply to ssl: endpoints only"),
        ("Listen ssl:port=1 http2=yes", "gw.conf:1: http2 takes one of on, off"),
        ("Listen ssl:port=1 clientcert=required", "gw.conf:1: clientcert=required needs clientca=FILE"),
        ("Listen ssl:port=1 crl=/crl.pem", "gw.conf:1: crl= needs clientca=FILE"),
        ("Listen ssl:port=1 clientcert=maybe clientca=/c", "gw.conf:1: clientcert takes one of off, optional, required"),
        ("Listen ssl:port=1 colour=blue", "gw.conf:1: Listen: unknown option 'colour'"),
        ("Listen ssl:nokey=1:port=1", "gw.conf:1: bad Listen endpoint 'ssl:nokey=1:port=1': unknown ssl: parameter"),
        ("Listen tcp:port=1\nProxyPass /a tcp:host=a:port=1 certname=", "gw.conf:2: certname takes comma-separated name patterns"),
        ("Listen tcp:port=1\nProxyPass /a tcp:host=a:port=1 certname=alice,,bob", "gw.conf:2: certname takes comma-separated"),
        ("Listen tcp:port=1\nProxyPass /a tcp:host=a:port=1 certname=*@ops.example",
         "gw.conf:2: certname '*@ops.example' is ambiguous: write email:*@ops.example"),
        ("Listen tcp:port=1\nProxyPass /a tcp:host=a:port=1 certname=ip:10.0.0.1", "gw.conf:2: certname 'ip:10.0.0.1': the name types"),
        ("Listen tcp:port=1\nProxyPass /a tcp:host=a:port=1 certname=dns:*.example", "gw.conf:2: certname 'dns:*.example': a DNS glob"),
        ("Listen tcp:port=1\nProxyPass /a tcp:host=a:port=1 certname=dns:a.*.example", "gw.conf:2: certname 'dns:a.*.example': a DNS glob"),
        ("Listen tcp:port=1\nProxyPass /a tcp:host=a:port=1 certname=dns:a..example", "gw.conf:2: certname 'dns:a..example' is not a DNS"),
        ("Listen tcp:port=1\nProxyPass /a tcp:host=a:port=1 certname=email:*@*.example", "gw.conf:2: certname 'email:*@*.example': an e-mail pattern keeps"),
        ("Listen tcp:port=1\nProxyPass /a tcp:host=a:port=1 certname=email:ops.example", "gw.conf:2: certname 'email:ops.example' is not an e-mail"),
        ("Listen tcp:port=1\nProxyPass /a tcp:host=a:port=1 certname=uri:https://*.ops.example/", "gw.conf:2: certname 'uri:https://*.ops.example/': a URI pattern keeps"),
        ("Listen tcp:port=1\nProxyPass /a tcp:host=a:port=1 certname=uri:/x/*", "gw.conf:2: certname 'uri:/x/*' is not a URI"),
        ("Listen tcp:port=1\nProxyPass /a tcp:host=a:port=1 certname=cn:", "gw.conf:2: certname 'cn:' has nothing after cn:"),
    ])
    def test_mistakes_are_named(self, line: str, message: str) -> None:
        """Each mistake is one FILE:LINE problem."""
        found = _problems(line + "\n")
        assert any(p.startswith(message) for p in found), found


class ClientCertificateTests:
    """certname= patterns are typed: each is tried only against names of its type, with separator-aware globs."""

    def test_no_patterns_admit_everyone(self) -> None:
        """A route without certname= asks nothing, with or without a certificate."""
        assert admits((), None) and admits((), ClientCertificate("x"))

    def test_patterns(self) -> None:
        """A bare name is the CN; typed patterns match their own type, ignoring case; no certificate never matches."""
        bob = ClientCertificate("Bob", (("email", "bob@ops.example"), ("dns", "bob.desk.example"),
                                        ("uri", "spiffe://ops.example/desk/bob")))

        def ok(*patterns: str) -> bool:
            return admits(tuple(parse_cert_pattern(p) for p in patterns), bob)

        assert ok("bob") and ok("cn:BOB") and ok("email:*@OPS.example") and ok("dns:*.desk.example")
        assert ok("uri:spiffe://OPS.example/desk/*") and ok("*") and ok("cn:b?b")
        assert not ok("alice", "email:*@other.example", "bo", "dns:bob", "uri:spiffe://ops.example/*")
        assert not ok("cn:bob@ops.example", "dns:*.ops.example", "uri:spiffe://ops.example/desk")
        assert not admits((parse_cert_pattern("*"),), None)
        assert bob.identity == "Bob" and ClientCertificate("", (("email", "a@b"),)).identity == "a@b"

    def test_the_attacks_of_issue_23(self) -> None:
        """A URI SAN ending in @ops.example is no e-mail name; a DNS SAN alice is no CN alice."""
        uri = ClientCertificate("mallory", (("uri", "https://evil.example/x@ops.example"),))
        assert not admits((parse_cert_pattern("email:*@ops.example"),), uri)
        dns = ClientCertificate("mallory", (("dns", "alice"),))
        assert not admits((parse_cert_pattern("alice"),), dns) and admits((parse_cert_pattern("dns:alice"),), dns)
        deep = ClientCertificate("", (("dns", "a.b.ops.example"), ("email", "x.y@ops.example"),
                                      ("email", "x@y@ops.example"), ("uri", "https://ops.example/a/b"),
                                      ("uri", "https://ops.example/a?b")))
        for pattern in ("dns:*.ops.example", "email:*@ops.example", "uri:https://ops.example/*", "cn:*"):
            assert not admits((parse_cert_pattern(pattern),), deep), pattern
        assert admits((parse_cert_pattern("dns:*.b.ops.example"),), deep)
        assert admits((parse_cert_pattern("email:*.*@ops.example"),), deep)

    def test_uri_paths_keep_their_case(self) -> None:
        """A URI's scheme and authority ignore case; its path does not."""
        cert = ClientCertificate("", (("uri", "SPIFFE://Ops.Example/Desk"),))
        assert admits((parse_cert_pattern("uri:spiffe://ops.example/Desk"),), cert)
        assert not admits((parse_cert_pattern("uri:spiffe://ops.example/desk"),), cert)

    def test_patterns_parse_to_types(self) -> None:
        """Bare names are CN patterns, a bare * is any certificate; the type is case-insensitive."""
        assert parse_cert_pattern("Alice") == CertPattern("cn", "alice")
        assert parse_cert_pattern("DNS:*.Ops.Example") == CertPattern("dns", "*.ops.example")
        assert parse_cert_pattern("*") == CertPattern("any", "*") and str(parse_cert_pattern("*")) == "*"
        assert str(parse_cert_pattern("uri:HTTPS://A.example/P")) == "uri:https://a.example/P"
        config = parse_config("Listen tcp:port=1\nProxyPass /a tcp:host=a:port=1 certname=alice,email:*@ops.example\n")
        assert config.rules[0].options.cert_names == (CertPattern("cn", "alice"), CertPattern("email", "*@ops.example"))


_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
_any_text = st.text(st.sampled_from("ab.@/:?#-x"), max_size=12)


@given(_any_text)
def test_dns_glob_matches_exactly_one_label(name: str) -> None:
    """dns:*.ops.example admits a DNS name iff it is one non-empty label without separators before .ops.example."""
    cert = ClientCertificate("", (("dns", name + ".ops.example"),))
    expected = bool(name) and "." not in name
    assert admits((parse_cert_pattern("dns:*.ops.example"),), cert) == expected


@given(_any_text)
def test_email_glob_crosses_neither_at_nor_dot(local: str) -> None:
    """email:*@ops.example admits an e-mail name iff its local part has no @ and no dot; never a URI or DNS name."""
    name = local + "@ops.example"
    pattern = (parse_cert_pattern("email:*@ops.example"),)
    assert admits(pattern, ClientCertificate("", (("email", name),))) == (bool(local) and not set(local) & set("@."))
    assert not admits(pattern, ClientCertificate(name, (("uri", name), ("dns", name))))


@given(_any_text)
def test_uri_glob_crosses_no_slash(rest: str) -> None:
    """uri:https://ops.example/* admits a URI name iff what follows the slash holds none of / ? # @ :."""
    name = "https://ops.example/" + rest
    pattern = (parse_cert_pattern("uri:https://ops.example/*"),)
    assert admits(pattern, ClientCertificate("", (("uri", name),))) == (bool(rest) and not set(rest) & set("/?#@:"))
    assert not admits(pattern, ClientCertificate("", (("email", name), ("dns", name))))


@given(st.sampled_from(["cn", "dns", "email", "uri"]), st.sampled_from(["cn", "dns", "email", "uri"]),
       st.lists(_label, min_size=2, max_size=4))
def test_a_pattern_never_matches_another_type(kind: str, other: str, labels: list[str]) -> None:
    """A literal pattern of one type admits the same text under that type only."""
    text = {"cn": ".".join(labels), "dns": ".".join(labels), "email": labels[0] + "@" + ".".join(labels[1:]),
            "uri": "https://" + ".".join(labels[1:]) + "/" + labels[0]}[kind]
    cert = ClientCertificate(text, ()) if other == "cn" else ClientCertificate("", ((other, text),))
    assert admits((parse_cert_pattern(f"{kind}:{text}"),), cert) == (kind == other)


    def test_identity_header(self) -> None:
        """forward=tlsclient sends the verified identity; the HTTP proxy drops a client's own copy."""
        assert forwarded_headers(frozenset({"tlsclient"}), "10.0.0.1", True, None, {}, "alice") == {
            "X-Forwarded-TLS-Client": "alice"}
        assert forwarded_headers(frozenset({"tlsclient"}), "10.0.0.1", True, None,
                                 {"x-forwarded-tls-client": "root"}) == {}
        out = backend_request_headers([(b"X-Forwarded-TLS-Client", [b"root"]), (b"Accept", [b"*/*"])], "b:1", [])
        assert (b"x-forwarded-tls-client", [b"root"]) not in out and (b"accept", [b"*/*"]) in out
