"""
Server certificates of ``ssl:`` listeners: loaded by the gateway, swapped on reload.

An ``ssl:`` listener is a plain stream endpoint (``tcp:``, or ``systemd:`` in
a worker) whose accepted sockets are served by
:class:`tunnelgw.tlssocket.TLSSocketServerFactory` (OpenSSL reads and writes
the socket itself, without Twisted's memory buffers), with the OpenSSL
connections a :class:`ServerCertificates` makes: it holds the contexts built with
Twisted's :class:`~twisted.internet.ssl.CertificateOptions` from the
listener's files, and :meth:`ServerCertificates.take` replaces them whole.
New handshakes use the new contexts at once; connections already made keep
theirs, so live sessions are not touched.

Several names (SNI): each ``NAME.pem`` of a ``certificates=`` folder holds a
key, its certificate and the chain (txsni's layout); the default context's
server-name callback switches a connection to the context of the name the
client asked for, and an unknown or missing name keeps the default.  txsni
itself is not used: its endpoint parses strings of its own and loads the
folder once, where here the folder is reloaded with the rest of the
configuration and shares the client-certificate settings.

Client certificates (``clientca=``, ``clientcert=optional|required``,
``crl=``) are verified by OpenSSL during the handshake; :func:`client_certificate`
reads the verified one from a connection for the route decision and the logs.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Optional

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.defer import Deferred
from twisted.internet.ssl import Certificate, CertificateOptions, DiffieHellmanParameters, KeyPair
from twisted.python.filepath import FilePath
from zope.interface import implementer

from tunnelgw.core.tlsconfig import ClientCertificate, ListenTLS
from tunnelgw.tlssocket import TLSSocketServerFactory, select_protocol

__all__ = ["ServerCertificates", "TLSServerEndpoint", "client_certificate", "load_contexts", "read_file"]

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL)


def read_file(path: str, what: str) -> bytes:
    """
    The bytes of a file the configuration names (a certificate, a key, a CA file).

    :raises ValueError: ``cannot read WHAT 'PATH': REASON``.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path!r}: {e.strerror or e}") from None


def _certificates(data: bytes, path: str, what: str) -> list[Any]:
    """The pyOpenSSL certificates of a PEM text, in order."""
    try:
        return [Certificate.loadPEM(block).original for block in _PEM_CERTIFICATE.findall(data)]
    except (SSL.Error, crypto.Error, ValueError) as e:
        raise ValueError(f"bad certificate in {what} {path!r}: {_openssl_reason(e)}") from None


def _openssl_reason(e: BaseException) -> str:
    reasons = [str(r[2]) for r in (e.args[0] if e.args and isinstance(e.args[0], list) else []) if len(r) > 2]
    return ", ".join(r for r in reasons if r) or str(e) or type(e).__name__


@dataclass(frozen=True)
class _Verify:
    """What every context of a listener checks of clients."""

    ca_certs: tuple[Any, ...] = ()
    required: bool = False
    crl: Optional[x509.CertificateRevocationList] = None


def _context(key_pem: bytes, cert_pem: bytes, chain_pem: bytes, verify: _Verify, dh: Optional[str],
             names: str) -> SSL.Context:
    """One OpenSSL server context (Twisted's CertificateOptions); names says where its files are."""
    try:
        key = KeyPair.load(key_pem, crypto.FILETYPE_PEM).original
    except (SSL.Error, crypto.Error, ValueError) as e:
        raise ValueError(f"no usable private key in {names}: {_openssl_reason(e)}") from None
    certs = _certificates(cert_pem, names, "certificate file")
    if not certs:
        raise ValueError(f"no PEM certificate in {names}")
    chain = _certificates(chain_pem, names, "chain file") if chain_pem else certs[1:]
    if dh is not None and not os.path.isfile(dh):
        raise ValueError(f"cannot read the DH parameters file {dh!r}")
    options = CertificateOptions(
        privateKey=key, certificate=certs[0], extraCertChain=chain,
        verify=bool(verify.ca_certs), caCerts=list(verify.ca_certs) or None, requireCertificate=verify.required,
        dhParameters=DiffieHellmanParameters.fromFile(FilePath(dh)) if dh else None)
    try:
        context = options.getContext()
    except SSL.Error as e:
        reason = _openssl_reason(e)
        if "mismatch" in reason:
            raise ValueError(f"the certificate and the private key do not match ({names})") from None
        raise ValueError(f"cannot use the certificate and key in {names}: {reason}") from None
    context.set_alpn_select_callback(select_protocol)
    if verify.crl is not None:
        store = context.get_cert_store()
        assert store is not None
        store.add_crl(verify.crl)
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
    return context


@dataclass
class _Contexts:
    """A listener's default context and those chosen by server name."""

    default: SSL.Context
    by_name: dict[bytes, SSL.Context] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.by_name:
            self.default.set_tlsext_servername_callback(self._choose)

    def _choose(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        chosen = self.by_name.get(name.lower().rstrip(b".")) if name else None
        if chosen is not None:
            connection.set_context(chosen)


def load_contexts(tls: ListenTLS) -> _Contexts:
    """
    Read a listener's files and build its contexts.

    :raises ValueError: naming the file and what is wrong with it.
    """
    verify = _Verify()
    if tls.client_ca is not None and tls.client_cert != "off":
        cas = _certificates(read_file(tls.client_ca, "the client CA file"), tls.client_ca, "client CA file")
        if not cas:
            raise ValueError(f"no PEM certificate in the client CA file {tls.client_ca!r}")
        crl = None
        if tls.crl is not None:
            try:
                crl = x509.load_pem_x509_crl(read_file(tls.crl, "the CRL file"))
            except ValueError as e:
                raise ValueError(f"bad CRL file {tls.crl!r}: {e}") from None
        verify = _Verify(tuple(cas), tls.client_cert == "required", crl)
    names = f"{tls.certificate!r} and {tls.private_key!r}"
    default = _context(read_file(tls.private_key, "the private key file"),
                       read_file(tls.certificate, "the certificate file"),
                       read_file(tls.chain, "the chain file") if tls.chain else b"", verify, tls.dh_parameters, names)
    by_name: dict[bytes, SSL.Context] = {}
    if tls.certificates is not None:
        try:
            files = sorted(f for f in os.listdir(tls.certificates) if f.endswith(".pem"))
        except OSError as e:
            raise ValueError(f"cannot read the certificates folder {tls.certificates!r}: {e.strerror or e}") from None
        for name in files:
            path = os.path.join(tls.certificates, name)
            data = read_file(path, "the certificate file")
            by_name[name[:-4].lower().encode("idna")] = _context(data, data, b"", verify, tls.dh_parameters, repr(path))
    return _Contexts(default, by_name)


class ServerCertificates:
    """What makes the OpenSSL connections of one ``ssl:`` listener; a reload replaces its contexts."""

    def __init__(self, contexts: _Contexts) -> None:
        self._contexts = contexts

    def take(self, other: "ServerCertificates") -> None:
        """Use other's contexts for new handshakes from now on."""
        self._contexts = other._contexts

    @property
    def names(self) -> list[str]:
        """The server names with a certificate of their own."""
        return sorted(n.decode("idna") for n in self._contexts.by_name)

    def socket_connection(self, sock: socket.socket) -> SSL.Connection:
        """A server-side connection over sock on the current default context (SNI may switch it)."""
        return SSL.Connection(self._contexts.default, sock)


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """A stream server endpoint under TLS made by a :class:`ServerCertificates`."""

    def __init__(self, stream: IStreamServerEndpoint, certificates: ServerCertificates, reactor: Any) -> None:
        self.stream = stream
        self.certificates = certificates
        self._reactor = reactor

    def listen(self, protocolFactory: Any) -> "Deferred[IListeningPort]":
        """Listen on the stream endpoint, TLS served on every accepted socket."""
        return self.stream.listen(TLSSocketServerFactory(self.certificates.socket_connection, protocolFactory,
                                                         self._reactor))


#: The subject alternative name types that ``certname=`` patterns name.
_SAN_KINDS = ((x509.DNSName, "dns"), (x509.RFC822Name, "email"), (x509.UniformResourceIdentifier, "uri"))


def _alternative_names(cert: x509.Certificate) -> tuple[tuple[str, str], ...]:
    """The DNS, e-mail and URI alternative names of cert, typed, in certificate order."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple((kind, str(n.value)) for n in sans for cls, kind in _SAN_KINDS if isinstance(n, cls))


def client_certificate(transport: Any) -> Optional[ClientCertificate]:
    """The verified client certificate of a TLS transport; None without TLS or certificate."""
    get = getattr(transport, "getPeerCertificate", None)
    peer = get() if get is not None else None
    if peer is None:
        return None
    cert = peer.to_cryptography()
    common = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return ClientCertificate(str(common[0].value) if common else "", _alternative_names(cert))
