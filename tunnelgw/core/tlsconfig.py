"""
TLS settings of ``ssl:`` listeners and client-certificate rules of routes, as values.

This module is pure: it splits an ``ssl:`` server endpoint string the way
Twisted's parser does (``:`` separates, ``=`` names, ``\\`` escapes) into the
plain ``tcp:`` endpoint that carries the bytes and the files that make the
TLS context, so that the gateway can build (and on SIGHUP rebuild) that
context itself, and so that :mod:`tunnelgw.workers` can hand the plain socket
to its workers.  The files are read by :mod:`tunnelgw.certificates`.

Client identities are matched here: a route's ``certname=`` patterns are
exact names or globs (``*`` any run of characters, ``?`` one, compared
without regard to letter case) tested against the verified certificate's
subject common name and its DNS, e-mail and URI subject alternative names.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Optional

__all__ = ["CLIENT_CERT_MODES", "ClientCertificate", "ListenTLS", "TLS_CLIENT_HEADER", "admits", "parse_ssl_endpoint"]

#: The header that carries a verified client certificate's identity to ws:// backends
#: (``forward=`` choice ``tlsclient``); the gateway sets it and never passes on a client's own.
TLS_CLIENT_HEADER = "X-Forwarded-TLS-Client"

#: ``clientcert=`` of a Listen line: ask for no, an optional or a required client certificate.
CLIENT_CERT_MODES = ("off", "optional", "required")

#: ``ssl:`` parameters the gateway understands (Twisted's, minus ``sslmethod``).
_SSL_KEYS = ("port", "interface", "backlog", "privateKey", "certKey", "extraCertChain", "dhParameters")


@dataclass(frozen=True)
class ListenTLS:
    """
    The TLS side of an ``ssl:`` listener.

    :ivar stream: the ``tcp:`` (or, in a worker, ``systemd:``) endpoint under TLS.
    :ivar private_key: PEM file of the default certificate's key;
        :ivar certificate: its certificate (the key file when not given);
        :ivar chain: intermediate certificates sent after it.
    :ivar dh_parameters: a DH parameters file, as Twisted's ``dhParameters=``.
    :ivar certificates: ``certificates=DIR``: a folder of ``NAME.pem`` files
        (key, certificate and chain in one file) chosen by server name (SNI).
    :ivar client_ca: ``clientca=FILE``: CA certificates that client certificates must chain to.
    :ivar client_cert: one of :data:`CLIENT_CERT_MODES`.
    :ivar crl: ``crl=FILE``: a PEM certificate revocation list checked for client certificates.
    """

    stream: str
    private_key: str
    certificate: str
    chain: Optional[str] = None
    dh_parameters: Optional[str] = None
    certificates: Optional[str] = None
    client_ca: Optional[str] = None
    client_cert: str = "off"
    crl: Optional[str] = None


def _split(text: str) -> tuple[list[str], dict[str, str]]:
    """Positional and named parameters of an endpoint string (after its kind), escapes removed."""
    words: list[str] = []
    current: list[str] = []
    keys: list[Optional[int]] = []
    key_end: Optional[int] = None
    chars = iter(text)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == ":":
            words.append("".join(current))
            keys.append(key_end)
            current, key_end = [], None
        elif c == "=" and key_end is None:
            key_end = len(current)
            current.append(c)
        else:
            current.append(c)
    words.append("".join(current))
    keys.append(key_end)
    positional: list[str] = []
    named: dict[str, str] = {}
    for word, end in zip(words, keys):
        if end is None:
            positional.append(word)
        else:
            named[word[:end]] = word[end + 1:]
    return positional, named


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def parse_ssl_endpoint(description: str) -> ListenTLS:
    """
    The TLS settings of an ``ssl:`` server endpoint string, with its plain ``tcp:`` stream.

    :raises ValueError: for another kind, unknown or missing parameters.
    """
    kind, _, rest = description.partition(":")
    if kind.lower() != "ssl":
        raise ValueError(f"not an ssl: endpoint: {description!r}")
    positional, named = _split(rest)
    if positional and "port" not in named:
        named["port"] = positional.pop(0)
    if positional:
        raise ValueError(f"unexpected parameter {positional[0]!r} in {description!r}")
    unknown = sorted(set(named) - set(_SSL_KEYS))
    if unknown:
        raise ValueError(f"unknown ssl: parameter {unknown[0]!r} (known: {', '.join(_SSL_KEYS)})")
    port = named.get("port", "")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError("missing parameter 'port'" if not port else f"bad port {port!r}")
    stream = f"tcp:port={port}"
    for key in ("interface", "backlog"):
        if key in named:
            stream += f":{key}={_escape(named[key])}"
    private_key = named.get("privateKey", "server.pem")
    return ListenTLS(stream, private_key, named.get("certKey", private_key), named.get("extraCertChain"),
                     named.get("dhParameters"))


@dataclass(frozen=True)
class ClientCertificate:
    """
    A client certificate that the TLS handshake verified.

    :ivar common_name: the subject's CN ('' without one).
    :ivar names: its DNS, e-mail and URI subject alternative names.
    """

    common_name: str
    names: tuple[str, ...] = ()

    @property
    def identity(self) -> str:
        """What logs and backends are told: the CN, else the first alternative name."""
        return self.common_name or (self.names[0] if self.names else "")


def admits(patterns: tuple[str, ...], certificate: Optional[ClientCertificate]) -> bool:
    """
    Whether a route's ``certname=`` patterns admit a client: no patterns admit
    everyone; otherwise a verified certificate must have a name that matches one.
    """
    if not patterns:
        return True
    if certificate is None:
        return False
    names = [n.lower() for n in (certificate.common_name, *certificate.names) if n]
    return any(fnmatchcase(name, pattern.lower()) for pattern in patterns for name in names)
