"""
TLS listeners on real ``twistd tunnelgw`` processes and real TLS clients
(Python's ssl module, websockets, ``openssl s_client``): certificates
rotated by SIGHUP without touching live sessions, refused bad pairs, SNI,
client certificates with per-route name rules, the identity in the log and
in the header sent to ws:// backends; also with two workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Iterator, Optional

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from support import (GatewayProcess, Pki, RawClient, TcpServer, echo, make_client_cert, make_pki, require_tool, wait_until,
                     worker_group)
from test_wsbackend import Backend


def _client_context(cert: Optional[Path] = None) -> ssl.SSLContext:
    """A client context that accepts any server certificate (the tests compare fingerprints)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(str(cert))
    return context


def _served(port: int, server_name: Optional[str] = None) -> str:
    """SHA-256 of the certificate a new TLS handshake on port is served (for server_name, if given)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with _client_context().wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def _fingerprint(pem: Path) -> str:
    """SHA-256 of the first certificate in a PEM file."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).hexdigest()


def _install(pki: Pki, live: Path) -> None:
    """Copy pki's server key, certificate and chain to where the configuration points."""
    live.mkdir(exist_ok=True)
    for source, name in ((pki.server_key, "server.key"), (pki.server_cert, "server.pem"), (pki.chain, "chain.pem")):
        shutil.copyfile(source, live / name)


def _listen(live: Path, options: str = "") -> str:
    return (f"Listen ssl:port=0:interface=127.0.0.1:privateKey={live}/server.key:certKey={live}/server.pem"
            f":extraCertChain={live}/chain.pem {options}\n")


def _hup(gw: GatewayProcess, outcome: str) -> None:
    """SIGHUP the gateway and wait for one more log line matching outcome."""
    before = len(re.findall(outcome, gw.log()))
    gw.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    assert wait_until(lambda: len(re.findall(outcome, gw.log())) > before, 15), gw.log()[-2000:]


@contextlib.contextmanager
def _session(port: int, path: str, cert: Optional[Path] = None, headers: dict[str, str] = {}) -> Iterator[RawClient]:
    """A wss:// session (one thread on the TLS socket; see RawClient)."""
    client = RawClient(f"wss://127.0.0.1:{port}{path}", tls=_client_context(cert), headers=headers)
    try:
        yield client
    finally:
        client.close()


def _alert(port: int, cert: Optional[Path] = None) -> str:
    """The TLS alert a client gets when it sends a request (TLS 1.3 refuses client certificates after the handshake)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with _client_context(cert).wrap_socket(raw) as tls:
                tls.sendall(b"GET /any HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = tls.recv(100)
        except ssl.SSLError as e:
            return str(e.reason)
    return f"no alert, answer {answer!r}"


def _relays(ws: RawClient, data: bytes) -> bool:
    ws.send_binary(data)
    return ws.receive_payload(len(data)) == data


@pytest.fixture
def echo_backend() -> Iterator[TcpServer]:
    with TcpServer(echo) as server:
        yield server


def test_rotation_keeps_live_sessions_and_refuses_a_bad_pair(tmp_path: Path, echo_backend: TcpServer) -> None:
    """SIGHUP serves a renewed certificate to new clients while an older session relays; a mismatched pair is refused with FILE:LINE."""
    first, second, third = (make_pki(tmp_path / name) for name in ("first", "second", "third"))
    live = tmp_path / "live"
    _install(first, live)
    with GatewayProcess(_listen(live) + f"ProxyPass /echo {echo_backend.endpoint}\n", tmp_path) as gw:
        gw.wait_log(r"reload: SIGHUP re-reads")
        port = gw.port()
        assert _served(port) == _fingerprint(first.server_cert)
        with _session(port, "/echo") as old:
            assert _relays(old, b"before")
            _install(second, live)
            _hup(gw, r"\(every directive applied\)")
            assert _served(port) == _fingerprint(second.server_cert)
            assert _relays(old, b"after the rotation")
            # A renewal gone wrong: third's certificate with second's key.
            shutil.copyfile(third.server_cert, live / "server.pem")
            _hup(gw, r"reload refused")
            assert re.search(rf"{re.escape(str(gw.config_path))}:1: Listen ssl: the certificate and the private key "
                             r"do not match", gw.log()), gw.log()[-2000:]
            assert _served(port) == _fingerprint(second.server_cert)
            with _session(port, "/echo") as new:
                assert _relays(new, b"new client")
            assert _relays(old, b"still here")
            # A missing key file is refused the same way.
            (live / "server.key").unlink()
            _hup(gw, r"reload refused")
            assert re.search(r":1: Listen ssl: cannot read the private key file .*No such file", gw.log())
            assert _served(port) == _fingerprint(second.server_cert)


def test_sni_chooses_by_server_name_with_a_default(tmp_path: Path, echo_backend: TcpServer) -> None:
    """Two names get their own certificates, an unknown name and no name get the default; a name added is served after SIGHUP."""
    default = make_pki(tmp_path / "default")
    live = tmp_path / "live"
    _install(default, live)
    names = tmp_path / "names"
    names.mkdir()
    issued = {}
    for name in ("alpha.test", "beta.test", "gamma.test"):
        pki = make_pki(tmp_path / name, names=[name], ips=[])
        issued[name] = pki
        if name != "gamma.test":
            (names / f"{name}.pem").write_bytes(pki.server_key.read_bytes() + pki.fullchain.read_bytes())
    config = _listen(live, f"certificates={names}") + f"ProxyPass /echo {echo_backend.endpoint}\n"
    with GatewayProcess(config, tmp_path) as gw:
        gw.wait_log(r"reload: SIGHUP re-reads")
        port = gw.port()
        assert _served(port, "alpha.test") == _fingerprint(issued["alpha.test"].server_cert)
        assert _served(port, "BETA.test") == _fingerprint(issued["beta.test"].server_cert)
        assert _served(port, "unknown.test") == _fingerprint(default.server_cert)
        assert _served(port) == _fingerprint(default.server_cert)
        assert _served(port, "gamma.test") == _fingerprint(default.server_cert)
        # The chain comes with the name's certificate: a client trusting alpha's root verifies it.
        trusting = ssl.create_default_context(cafile=str(issued["alpha.test"].ca_cert))
        with connect(f"wss://alpha.test:{port}/echo", ssl=trusting, open_timeout=10,
                     sock=socket.create_connection(("127.0.0.1", port), timeout=10)) as checked:
            checked.send(b"alpha")
            assert checked.recv(timeout=10) == b"alpha"
        gamma = issued["gamma.test"]
        (names / "gamma.test.pem").write_bytes(gamma.server_key.read_bytes() + gamma.fullchain.read_bytes())
        _hup(gw, r"\(every directive applied\)")
        assert _served(port, "gamma.test") == _fingerprint(gamma.server_cert)


def test_sni_served_to_openssl_s_client(tmp_path: Path, echo_backend: TcpServer) -> None:
    """openssl s_client -servername gets the name's certificate (subject CN), the default otherwise."""
    openssl = require_tool("openssl")
    default = make_pki(tmp_path / "default")
    live = tmp_path / "live"
    _install(default, live)
    names = tmp_path / "names"
    names.mkdir()
    alpha = make_pki(tmp_path / "alpha", names=["alpha.test"], ips=[])
    (names / "alpha.test.pem").write_bytes(alpha.server_key.read_bytes() + alpha.fullchain.read_bytes())
    with GatewayProcess(_listen(live, f"certificates={names}") + f"ProxyPass /echo {echo_backend.endpoint}\n",
                        tmp_path) as gw:
        for name, subject in (("alpha.test", "CN ?= ?alpha.test"), ("other.test", "CN ?= ?localhost")):
            result = subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{gw.port()}", "-servername", name],
                                    input="", capture_output=True, text=True, timeout=30)
            assert re.search(r"subject=.*" + subject, result.stdout), result.stdout + result.stderr


def _mtls_config(live: Path, pki: Pki, mode: str, backend: str, extra: str = "") -> str:
    return (_listen(live, f"clientca={pki.ca_cert} clientcert={mode}")
            + f"ProxyPass /any {backend}\n"
            + f"ProxyPass /ops {backend} certname=alice,email:*@ops.example\n" + extra)


def test_required_client_certificates_and_route_rules(tmp_path: Path, echo_backend: TcpServer) -> None:
    """clientcert=required refuses clients without a certificate or with one from another CA; certname= gives 403 to the wrong name; the identity is logged."""
    pki = make_pki(tmp_path / "pki")
    stranger = make_pki(tmp_path / "stranger")
    live = tmp_path / "live"
    _install(pki, live)
    people = tmp_path / "people"
    alice = make_client_cert(pki, people, "alice")
    bob = make_client_cert(pki, people, "bob", emails=("bob@ops.example",))
    carol = make_client_cert(pki, people, "carol", emails=("carol@elsewhere.example",))
    mallory = make_client_cert(stranger, tmp_path / "strangers", "alice")
    with GatewayProcess(_mtls_config(live, pki, "required", echo_backend.endpoint), tmp_path) as gw:
        port = gw.port()
        assert _alert(port) == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
        # mallory's root has the same name as the real one: OpenSSL finds it and its signature fails.
        assert _alert(port, mallory) in ("TLSV1_ALERT_DECRYPT_ERROR", "TLSV1_ALERT_UNKNOWN_CA")
        with _session(port, "/any", carol) as ws:
            assert _relays(ws, b"carol")
        for cert, name in ((alice, "alice"), (bob, "bob")):
            with _session(port, "/ops", cert) as ws:
                assert _relays(ws, name.encode())
            gw.wait_log(rf"session start .*tls_client={name}\b")
        with pytest.raises(InvalidStatus) as refused:
            with _session(port, "/ops", carol):
                pass
        assert refused.value.response.status_code == 403
        gw.wait_log(r"status=403 reason='this route needs a client certificate with another name'")


def test_certname_patterns_match_their_own_name_type(tmp_path: Path, echo_backend: TcpServer) -> None:
    """Real certificates: a URI SAN ending in @ops.example is no e-mail, a DNS SAN alice no CN alice, a glob one label or segment; honest names pass."""
    pki, live = make_pki(tmp_path / "pki"), tmp_path / "live"
    _install(pki, live)
    backend = echo_backend.endpoint
    config = (_listen(live, f"clientca={pki.ca_cert} clientcert=optional")
              + f"ProxyPass /mail {backend} certname=email:*@ops.example\n"
              + f"ProxyPass /alice {backend} certname=alice\n"
              + f"ProxyPass /hosts {backend} certname=dns:*.ops.example\n"
              + f"ProxyPass /svc {backend} certname=uri:spiffe://ops.example/svc/*\n")

    def cert(folder: str, cn: str, emails: tuple[str, ...] = (), dns: tuple[str, ...] = (),
             uris: tuple[str, ...] = ()) -> Path:
        return make_client_cert(pki, tmp_path / folder, cn, emails, dns, uris)

    honest = {"/mail": cert("h1", "bob", emails=("bob@ops.example",)),
              "/alice": cert("h2", "alice"),
              "/hosts": cert("h3", "agent", dns=("desk1.ops.example",)),
              "/svc": cert("h4", "svc", uris=("spiffe://ops.example/svc/relay",))}
    attacks = {"/mail": [cert("a1", "m1", uris=("https://evil.example/x@ops.example",)),
                         cert("a2", "m2", emails=("a.b@ops.example", "bob@ops.example.evil.example")),
                         cert("a3", "m3@ops.example")],
               "/alice": [cert("a4", "mallory", dns=("alice",)), cert("a5", "mallory", emails=("alice@ops.example",))],
               "/hosts": [cert("a6", "m6", dns=("a.b.ops.example", "ops.example")), cert("a7", "x.ops.example")],
               "/svc": [cert("a8", "m8", uris=("spiffe://ops.example/svc/a/b", "spiffe://evil.example/svc/x")),
                        cert("a9", "m9", dns=("spiffe://ops.example/svc/x",))]}
    with GatewayProcess(config, tmp_path) as gw:
        port = gw.port()
        for path, good in honest.items():
            with _session(port, path, good) as ws:
                assert _relays(ws, path.encode())
        for path, bad in attacks.items():
            for certificate in bad:
                with pytest.raises(InvalidStatus) as refused:
                    with _session(port, path, certificate):
                        pass
                assert refused.value.response.status_code == 403, (path, certificate)
        gw.wait_log(r"status=403 reason='this route needs a client certificate with another name'")


def test_curl_with_and_without_a_client_certificate(tmp_path: Path, echo_backend: TcpServer) -> None:
    """curl without a certificate fails the handshake of a clientcert=required listener; with alice's it gets an HTTP answer."""
    curl = require_tool("curl")
    pki, live = make_pki(tmp_path / "pki"), tmp_path / "live"
    _install(pki, live)
    alice = make_client_cert(pki, tmp_path / "people", "alice")
    with GatewayProcess(_mtls_config(live, pki, "required", echo_backend.endpoint), tmp_path) as gw:
        url = f"https://localhost:{gw.port()}/nothing-here"
        common = [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(pki.ca_cert),
                  "--resolve", f"localhost:{gw.port()}:127.0.0.1", "--max-time", "20"]
        refused = subprocess.run([*common, url], capture_output=True, text=True, timeout=30)
        assert refused.returncode != 0, refused.stdout
        admitted = subprocess.run([*common, "--cert", str(alice), url], capture_output=True, text=True, timeout=30)
        assert admitted.returncode == 0 and admitted.stdout == "404", admitted.stdout + admitted.stderr


def test_optional_client_certificates_and_the_forwarded_identity(tmp_path: Path) -> None:
    """clientcert=optional admits clients without a certificate except on certname= routes; a ws:// backend gets the verified identity, never a client's own header."""
    pki = make_pki(tmp_path / "pki")
    live = tmp_path / "live"
    _install(pki, live)
    alice = make_client_cert(pki, tmp_path / "people", "alice")
    backend = Backend()
    try:
        ws_backend = f"ws://127.0.0.1:{backend.port}"
        config = _mtls_config(live, pki, "optional", f"{ws_backend}/echo",
                              f"ProxyPass /info {ws_backend}/info\nProxyPass /quiet {ws_backend}/info forward=xff\n")
        forged = {"X-Forwarded-TLS-Client": "root"}
        with GatewayProcess(config, tmp_path) as gw:
            port = gw.port()
            with _session(port, "/any") as ws:
                assert _relays(ws, b"anonymous")
            with pytest.raises(InvalidStatus) as refused:
                with _session(port, "/ops"):
                    pass
            assert refused.value.response.status_code == 403
            with _session(port, "/ops", alice) as ws:
                assert _relays(ws, b"alice")
            def seen(path: str, cert: Optional[Path]) -> dict[str, str]:
                with _session(port, path, cert, headers=forged) as ws:
                    return dict(json.loads(ws.receive_payload(1))["headers"])

            assert seen("/info", alice)["x-forwarded-tls-client"] == "alice"
            assert "x-forwarded-tls-client" not in seen("/info", None)
            assert "x-forwarded-tls-client" not in seen("/quiet", alice)
            assert re.search(r"session start .*path='?/info'? .*tls_client=alice", gw.log()), gw.log()[-2000:]
    finally:
        backend.stop()


def test_workers_reload_certificates(tmp_path: Path, echo_backend: TcpServer) -> None:
    """Two workers share an ssl: listener's socket; SIGHUP to the parent makes both serve the renewed certificate, a live session goes on."""
    first, second = make_pki(tmp_path / "first"), make_pki(tmp_path / "second")
    live = tmp_path / "live"
    _install(first, live)
    config = tmp_path / "gw.conf"
    config.write_text(_listen(live) + f"ProxyPass /echo {echo_backend.endpoint}\n")
    with worker_group(config) as (proc, read):
        assert wait_until(lambda: read().count("reload: SIGHUP re-reads") >= 2 or proc.poll() is not None, 30), read()
        port = int(re.search(r":1: listening on .*port=(\d+)\)+ for the workers", read()).group(1))  # type: ignore[union-attr]
        with contextlib.ExitStack() as stack:
            old = [stack.enter_context(_session(port, "/echo")) for _ in range(8)]
            assert all(_relays(ws, b"before") for ws in old)
            assert _served(port) == _fingerprint(first.server_cert)
            _install(second, live)
            proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: read().count("every directive applied") >= 2, 15), read()
            assert {_served(port) for _ in range(16)} == {_fingerprint(second.server_cert)}
            assert all(_relays(ws, b"after") for ws in old)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def _revoke(pki: Pki, cert: Path, crl: Path) -> None:
    """Write a CRL signed by pki's root that revokes cert."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    assert pki.ca_key is not None
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    now = datetime.datetime.now(datetime.timezone.utc)
    revoked = (x509.RevokedCertificateBuilder().serial_number(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number)
               .revocation_date(now - datetime.timedelta(hours=1)).build())
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(now - datetime.timedelta(hours=1))
               .next_update(now + datetime.timedelta(days=1)).add_revoked_certificate(revoked))
    crl.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))  # type: ignore[arg-type]


def test_crl_refuses_a_revoked_client_certificate(tmp_path: Path, echo_backend: TcpServer) -> None:
    """With crl=, a revoked client certificate fails the handshake and a valid one is admitted."""
    pki = make_pki(tmp_path / "pki")
    live = tmp_path / "live"
    _install(pki, live)
    alice = make_client_cert(pki, tmp_path / "people", "alice")
    eve = make_client_cert(pki, tmp_path / "people", "eve")
    crl = tmp_path / "crl.pem"
    _revoke(pki, eve, crl)
    config = _listen(live, f"clientca={pki.ca_cert} clientcert=required crl={crl}") + f"ProxyPass /any {echo_backend.endpoint}\n"
    with GatewayProcess(config, tmp_path) as gw:
        with _session(gw.port(), "/any", alice) as ws:
            assert _relays(ws, b"alice")
        assert _alert(gw.port(), eve) == "SSLV3_ALERT_CERTIFICATE_REVOKED"


class LoadContextsTests:
    """Every file a TLS listener names is checked, and each mistake is named with its file, at the Listen line."""

    def test_mistakes_are_named_at_the_listen_line(self, tmp_path: Path) -> None:
        """Missing files, a mismatched pair, a bad CA file, a bad CRL and a missing SNI folder are ConfigError at line 1."""
        from twisted.internet import reactor

        from tunnelgw.core.config import ConfigError, parse_config
        from tunnelgw.service import check_config

        pki, other = make_pki(tmp_path / "pki"), make_pki(tmp_path / "other")
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("not PEM at all\n")
        base = f"ssl:port=0:interface=127.0.0.1:privateKey={pki.server_key}"
        cases = [
            (f"{base}:certKey={other.server_cert}", "the certificate and the private key do not match"),
            (f"{base}:certKey={tmp_path}/none.pem", "cannot read the certificate file"),
            (f"{base}:certKey={garbage}", "no PEM certificate in"),
            (f"ssl:port=0:privateKey={garbage}:certKey={pki.server_cert}", "no usable private key"),
            (f"{base}:certKey={pki.server_cert} clientca={garbage}", "no PEM certificate in the client CA file"),
            (f"{base}:certKey={pki.server_cert} clientca={pki.ca_cert} crl={garbage}", "bad CRL file"),
            (f"{base}:certKey={pki.server_cert} certificates={tmp_path}/nowhere", "cannot read the certificates folder"),
            (f"{base}:certKey={pki.server_cert}:dhParameters={tmp_path}/none.pem", "cannot read the DH parameters file"),
        ]
        for line, message in cases:
            with pytest.raises(ConfigError) as raised:
                check_config(parse_config(f"Listen {line}\nProxyPass /a tcp:host=a:port=1\n", "gw.conf"), reactor)
            assert str(raised.value).startswith(f"gw.conf:1: Listen ssl: {message}"), (line, str(raised.value))
        good = parse_config(f"Listen {base}:certKey={pki.server_cert}\nProxyPass /a tcp:host=a:port=1\n", "gw.conf")
        [(where, _, endpoint)] = check_config(good, reactor)
        assert where.line == 1 and endpoint.certificates.names == []  # type: ignore[attr-defined]


def test_chromium_keeps_its_session_over_a_rotation(tmp_path: Path, echo_backend: TcpServer) -> None:
    """Chromium's wss:// session opened before a rotation relays after it; a page loaded afterwards is served the new certificate."""
    from desktops import Browser, spki_hash

    first = make_pki(tmp_path / "first")
    second = make_pki(tmp_path / "second", names=["rotated.localhost", "localhost"])
    live = tmp_path / "live"
    _install(first, live)
    config = _listen(live) + f"ProxyPass /echo {echo_backend.endpoint}\nDemoPage / /echo\n"
    browser = Browser(tmp_path / "chromium", (spki_hash(first.server_cert), spki_hash(second.server_cert)))
    (tmp_path / "chromium").mkdir()
    with GatewayProcess(config, tmp_path) as gw:
        browser.start()
        try:
            page = browser.page()
            answer = page.goto(f"https://localhost:{gw.port()}/")
            assert answer.status == 200 and answer.security_details()["subjectName"] == "localhost"
            page.evaluate("""() => new Promise((opened, failed) => {
                window.session = new WebSocket(`wss://${location.host}/echo`);
                window.session.onopen = opened; window.session.onerror = failed; })""")
            echo_js = """text => new Promise(answered => {
                window.session.onmessage = async e => answered(typeof e.data === "string" ? e.data : await e.data.text());
                window.session.send(text); })"""
            assert page.evaluate(echo_js, "before") == "before"
            _install(second, live)
            _hup(gw, r"\(every directive applied\)")
            assert page.evaluate(echo_js, "after the rotation") == "after the rotation"
            fresh = browser.page().goto(f"https://127.0.0.1:{gw.port()}/")
            assert fresh.security_details()["subjectName"] == "rotated.localhost"
            assert page.evaluate(echo_js, "still") == "still"
        finally:
            browser.stop()
