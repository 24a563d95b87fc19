"""
TLS towards backends: trust roots from PEM files (``cafile=``) and the
unverified client connection of ``verify=off`` (SNI still sent).
"""

from __future__ import annotations

import re
from typing import Any

from OpenSSL import SSL
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, CertificateOptions, trustRootFromCertificates
from zope.interface import implementer

__all__ = ["UnverifiedTLS", "load_trust_root"]

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def load_trust_root(path: str) -> Any:
    """
    The CA certificates of a PEM file as a Twisted trust root.

    :raises ValueError: naming the file and what is wrong with it.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read cafile {path!r}: {e.strerror or e}") from None
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise ValueError(f"cafile {path!r} holds no PEM certificate")
    try:
        return trustRootFromCertificates([Certificate.loadPEM(block) for block in blocks])
    except Exception as e:
        raise ValueError(f"cafile {path!r} holds a bad certificate: {e}") from None


@implementer(IOpenSSLClientConnectionCreator)
class UnverifiedTLS:
    """TLS to a backend without any certificate check (``verify=off``); SNI is still sent."""

    def __init__(self, hostname: str) -> None:
        self._context = CertificateOptions(verify=False).getContext()
        ip = isIPAddress(hostname) or isIPv6Address(hostname)
        self._server_name = None if ip else hostname.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """A client connection that checks nothing."""
        connection = SSL.Connection(self._context, None)
        if self._server_name:
            connection.set_tlsext_host_name(self._server_name)
        connection.set_app_data(tlsProtocol)
        return connection
