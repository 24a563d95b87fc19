"""
TLS towards backends, on the socket (:mod:`tunnelgw.tlssocket`, no memory
BIO): the endpoints of ``tls:`` backend strings and of ``wss://`` backends,
their trust roots (``cafile=``, ``trustRoots=``), client certificates, and the
unverified connection of ``verify=off`` (SNI still sent).

Verification is Twisted's ``optionsForClientTLS``'s, with public API: the
context comes from :class:`~twisted.internet.ssl.CertificateOptions` (the
given trust root, else :func:`~twisted.internet.ssl.platformTrust`), and
after the handshake the peer's certificate must name the host
(service_identity's ``verify_hostname``, or ``verify_ip_address`` for an
address) before the application hears ``handshakeCompleted`` or sends a byte.

Each endpoint offers the last resumable TLS session of its connections to
its next one (:class:`LastSession`), as nginx (``proxy_ssl_session_reuse``,
on by default) and HAProxy do towards their backends.

Every endpoint string other than ``tls:`` goes to Twisted's
``clientFromString`` (:func:`client_endpoint`).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Optional

from OpenSSL import SSL
from service_identity.pyopenssl import verify_hostname, verify_ip_address
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    platformTrust,
    trustRootFromCertificates,
)

from tunnelgw.certificates import read_file
from tunnelgw.core.tlsconfig import TLSClientString, parse_tls_client_string
from tunnelgw.sockettransport import SocketClientEndpoint
from tunnelgw.tlssocket import TLSSocketClientEndpoint

__all__ = ["LastSession", "client_endpoint", "load_client_certificate", "load_trust_root", "load_trust_roots_folder",
           "stream_endpoint", "tls_endpoint"]

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def _certificates(data: bytes, what: str) -> list[Certificate]:
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise ValueError(f"{what} holds no PEM certificate")
    try:
        return [Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise ValueError(f"{what} holds a bad certificate: {e}") from None


def load_trust_root(path: str) -> Any:
    """
    The CA certificates of a PEM file as a Twisted trust root.

    :raises ValueError: naming the file and what is wrong with it.
    """
    return trustRootFromCertificates(_certificates(read_file(path, "cafile"), f"cafile {path!r}"))


def load_trust_roots_folder(path: str) -> Any:
    """
    The CA certificates of the ``*.pem`` files of a folder (``trustRoots=`` of
    a ``tls:`` string, as Twisted reads it) as a Twisted trust root.

    :raises ValueError: naming the folder or file and what is wrong with it.
    """
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        raise ValueError(f"cannot read trustRoots folder {path!r}: {e.strerror or e}") from None
    certificates: list[Certificate] = []
    for name in names:
        if name.lower().endswith(".pem") and os.path.isfile(os.path.join(path, name)):
            file = os.path.join(path, name)
            certificates += _certificates(read_file(file, "trust root"), f"trust root {file!r}")
    if not certificates:
        raise ValueError(f"trustRoots folder {path!r} holds no .pem certificate")
    return trustRootFromCertificates(certificates)


def load_client_certificate(certificate: str, private_key: Optional[str]) -> PrivateCertificate:
    """
    The gateway's client certificate: a PEM file with certificate and key, or
    the key in its own file (``certificate=``, ``privateKey=`` of ``tls:``).

    :raises ValueError: naming the file and what is wrong with it.
    """
    data = read_file(certificate, "certificate")
    key = read_file(private_key, "privateKey") if private_key is not None else None
    try:
        if key is None:
            return PrivateCertificate.loadPEM(data)
        return PrivateCertificate.fromCertificateAndKeyPair(Certificate.loadPEM(data),
                                                            KeyPair.load(key, SSL.FILETYPE_PEM))
    except Exception as e:
        raise ValueError(f"bad client certificate or key in {certificate!r}"
                         f"{'' if private_key is None else f' / {private_key!r}'}: {e}") from None


def _context(verify: bool, trust_root: Any, certificate: Optional[PrivateCertificate], tickets: bool) -> SSL.Context:
    """
    The client context: Twisted's CertificateOptions as optionsForClientTLS
    makes them (or unverified), with TLS 1.2 session tickets if told (Twisted
    leaves them off: without them a TLS 1.2 server resumes by session id only,
    which servers that keep no session cache cannot).
    """
    extra: dict[str, Any] = {"enableSessionTickets": tickets}
    if certificate is not None:
        extra.update(privateKey=certificate.privateKey.original, certificate=certificate.original)
    if not verify:
        return CertificateOptions(verify=False, **extra).getContext()
    return CertificateOptions(trustRoot=trust_root if trust_root is not None else platformTrust(), **extra).getContext()


def _name_check(host: str) -> Callable[[SSL.Connection], None]:
    """The peer-name check after the handshake: the certificate must name host (a DNS name or an address)."""
    if isIPAddress(host) or isIPv6Address(host):
        return lambda connection: verify_ip_address(connection, host)
    name = host.encode("idna").decode("ascii")
    return lambda connection: verify_hostname(connection, name)


def stream_endpoint(reactor: Any, host: str, port: int, timeout: float,
                    bind_address: Optional[str] = None) -> IStreamClientEndpoint:
    """
    The plain TCP endpoint to host: an address needs no name resolution
    (``HostnameEndpoint`` would ask a thread for ``getaddrinfo`` on every connect).
    """
    bind = None if bind_address is None else (bind_address, 0)
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
    return HostnameEndpoint(reactor, host.encode("idna"), port, timeout=timeout, bindAddress=bind)


class LastSession:
    """
    The last resumable TLS session of one endpoint's connections, offered by
    its next connection.  A server that resumes it skips its certificate and
    its signature, the gateway the chain's verification: a cheaper handshake
    for both (a tenth less of the gateway's CPU per session to an ECDSA
    server over TLS 1.3).  A server that does not resume it answers with a full
    handshake.  The host name check runs on every connection all the same (on
    the certificate the session was verified with).  One session is kept,
    the newest: an endpoint stands for one server name and one trust, and
    TLS 1.3 servers send new tickets on every connection.
    """

    __slots__ = ("session",)

    def __init__(self) -> None:
        self.session: Optional[SSL.Session] = None

    def keep(self, session: SSL.Session) -> None:
        """A connection's resumable session (:class:`~tunnelgw.tlssocket.TLSSocketConnection`'s ``keep_session``)."""
        self.session = session


def tls_endpoint(reactor: Any, stream: IStreamClientEndpoint, host: str, timeout: float, verify: bool = True,
                 trust_root: Any = None, certificate: Optional[PrivateCertificate] = None,
                 reuse: bool = True) -> TLSSocketClientEndpoint:
    """
    TLS to host over stream: SNI (unless host is an address), the
    certificate checked against trust_root (the platform's when None) and
    host unless verify is False, certificate presented when asked; the
    handshake bounded by timeout seconds; the last session offered to the
    server unless reuse is False (:class:`LastSession`).

    :raises ValueError: when OpenSSL refuses the client certificate (a key that does not match it).
    """
    try:
        context = _context(verify, trust_root, certificate, tickets=reuse)
    except SSL.Error as e:  # a client certificate whose key does not match it, a key OpenSSL refuses
        reasons = [str(p[-1]) for arg in e.args if isinstance(arg, list) for p in arg if isinstance(p, tuple)]
        raise ValueError(f"cannot use the client certificate: {'; '.join(reasons) or e}") from None
    ip = isIPAddress(host) or isIPv6Address(host)
    server_name = None if ip else host.encode("idna")

    last = LastSession() if reuse else None

    def connection_for(sock: Any) -> SSL.Connection:
        connection = SSL.Connection(context, sock)
        if server_name:
            connection.set_tlsext_host_name(server_name)
        if last is not None and last.session is not None:
            connection.set_session(last.session)
        return connection

    return TLSSocketClientEndpoint(stream, connection_for, reactor, check=_name_check(host) if verify else None,
                                   handshake_timeout=timeout, keep_session=last.keep if last is not None else None)


def _tls_string_endpoint(reactor: Any, parsed: TLSClientString) -> IStreamClientEndpoint:
    trust_root = load_trust_roots_folder(parsed.trust_roots) if parsed.trust_roots is not None else None
    certificate = load_client_certificate(parsed.certificate, parsed.private_key) \
        if parsed.certificate is not None else None
    if parsed.endpoint is not None:
        stream = clientFromString(reactor, parsed.endpoint)
    else:
        stream = stream_endpoint(reactor, parsed.host, parsed.port, parsed.timeout, parsed.bind_address)
    return tls_endpoint(reactor, stream, parsed.host, parsed.timeout, trust_root=trust_root, certificate=certificate,
                        reuse=parsed.session_reuse)


def client_endpoint(reactor: Any, description: str) -> IStreamClientEndpoint:
    """
    The client endpoint of a backend string: ``tls:`` parsed here (TLS on the
    socket), every other kind by Twisted's ``clientFromString``.  Files named
    by the string (trust roots, client certificate) are read now.

    :raises ValueError: (or Twisted's parser's errors) saying what is wrong.
    """
    if description.split(":", 1)[0].lower() == "tls":
        return _tls_string_endpoint(reactor, parse_tls_client_string(description))
    return SocketClientEndpoint(clientFromString(reactor, description), reactor)
