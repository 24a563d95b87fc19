"""
TLS settings of ``ssl:`` listeners, of ``tls:`` backend strings and
client-certificate rules of routes, as values.

``tls:`` client strings are read with the grammar of Twisted's ``tls:``
parser (:func:`parse_tls_client_string`), so that the gateway builds their
endpoint itself (TLS on the socket, :mod:`tunnelgw.backends.tls`).

This module is pure: it splits an ``ssl:`` server endpoint string the way
Twisted's parser does (``:`` separates, ``=`` names, ``\\`` escapes) into the
plain ``tcp:`` endpoint that carries the bytes and the files that make the
TLS context, so that the gateway can build (and on SIGHUP rebuild) that
context itself, and so that :mod:`tunnelgw.workers` can hand the plain socket
to its workers.  The files are read by :mod:`tunnelgw.certificates`.

Client identities are matched here.  A route's ``certname=`` patterns are
typed, and a pattern is tried only against names of its type
(:func:`parse_cert_pattern`)::

    cn:alice                   the subject's common name (CN)
    alice                      the same: a bare pattern is a CN pattern
    *                          (alone) any certificate the client CA verified
    dns:*.ops.example          a DNS subject alternative name (SAN)
    email:*@ops.example        an e-mail (rfc822Name) SAN
    uri:spiffe://ops.example/* a URI SAN

A glob's ``*`` matches one or more characters and ``?`` exactly one, never
across the separators of its type: ``.``, ``@`` and ``/`` for CN, ``.`` for
DNS (``*.ops.example`` is exactly one label), ``@`` and ``.`` for e-mail,
``/ ? # @ :`` for URI.  DNS globs sit in the leftmost label and leave two
labels fixed; e-mail globs keep the domain literal; URI globs keep the scheme
and authority literal.  Letter case is ignored except in a URI's path.  A
bare pattern holding ``@``, ``/`` or ``:`` is refused as ambiguous (write
``cn:`` or ``email:``): untyped patterns used to be tried against every name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

__all__ = ["CERT_NAME_KINDS", "CLIENT_CERT_MODES", "CertPattern", "ClientCertificate", "ListenTLS", "TLSClientString",
           "TLS_CLIENT_HEADER", "admits", "parse_cert_pattern", "parse_ssl_endpoint", "parse_tls_client_string"]

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
    :ivar http2: ``http2=on``: ALPN offers h2 first (pages and RFC 8441 WebSockets on one connection).
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
    http2: bool = False


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


#: ``tls:`` client parameters, in the order Twisted's parser takes them positionally.
_TLS_KEYS = ("host", "port", "timeout", "bindAddress", "certificate", "privateKey", "trustRoots", "endpoint")
#: ``tls:`` client parameters of the gateway's own, by name only.
_TLS_NAMED_ONLY = ("sessionReuse",)


@dataclass(frozen=True)
class TLSClientString:
    """
    A ``tls:`` backend string.

    :ivar host: the server's name (SNI, and what its certificate must name) or address.
    :ivar port: its port.
    :ivar timeout: seconds for the TCP connect (and for the TLS handshake).
    :ivar bind_address: the local address to connect from.
    :ivar certificate: a PEM file of the gateway's client certificate (and its key, without private_key).
    :ivar private_key: a PEM file of that certificate's key.
    :ivar trust_roots: a folder of ``*.pem`` CA certificates (else the platform's trust store).
    :ivar endpoint: another client endpoint string to carry the TLS (then host is for SNI and the check only).
    :ivar session_reuse: offer the server the last session to resume (``sessionReuse=off``: never).
    """

    host: str
    port: int
    timeout: float = 30.0
    bind_address: Optional[str] = None
    certificate: Optional[str] = None
    private_key: Optional[str] = None
    trust_roots: Optional[str] = None
    endpoint: Optional[str] = None
    session_reuse: bool = True


def parse_tls_client_string(description: str) -> TLSClientString:
    """
    A ``tls:`` client endpoint string, as Twisted's parser reads it:
    ``host`` and ``port`` positional or named, then ``timeout=``,
    ``bindAddress=``, ``certificate=``, ``privateKey=``, ``trustRoots=``,
    ``endpoint=`` (each also positional, in that order); and the gateway's
    own ``sessionReuse=on|off``, by name only.

    :raises ValueError: for another kind, unknown, repeated or missing
        parameters and bad numbers, saying which.
    """
    kind, _, rest = description.partition(":")
    if kind.lower() != "tls":
        raise ValueError(f"not a tls: endpoint: {description!r}")
    positional, named = _split(rest)
    if len(positional) > len(_TLS_KEYS):
        raise ValueError(f"too many parameters: {len(positional)} positional, at most {len(_TLS_KEYS)}")
    for key, value in zip(_TLS_KEYS, positional):
        if key in named:
            raise ValueError(f"parameter {key!r} given twice")
        named[key] = value
    unknown = sorted(set(named) - set(_TLS_KEYS) - set(_TLS_NAMED_ONLY))
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r} (known: {', '.join(_TLS_KEYS + _TLS_NAMED_ONLY)})")
    reuse = named.get("sessionReuse", "on")
    if reuse not in ("on", "off"):
        raise ValueError(f"bad sessionReuse {reuse!r}: on or off is expected")
    for key in ("host", "port"):
        if not named.get(key):
            raise ValueError(f"missing parameter {key!r}")
    port = named["port"]
    lowest = 0 if named.get("endpoint") else 1  # with endpoint= the port is not used (as in Twisted)
    if not port.isdigit() or not lowest <= int(port) <= 65535:
        raise ValueError(f"bad port {port!r}: a number from {lowest} to 65535 is expected")
    timeout_text = named.get("timeout", "30")
    try:
        timeout = float(timeout_text)
    except ValueError:
        timeout = -1.0
    if not timeout > 0 or timeout == float("inf"):
        raise ValueError(f"bad timeout {timeout_text!r}: a number of seconds above 0 is expected")
    return TLSClientString(named["host"], int(port), timeout, named.get("bindAddress") or None,
                           named.get("certificate") or None, named.get("privateKey") or None,
                           named.get("trustRoots") or None, named.get("endpoint") or None, reuse == "on")


#: The name types of a client certificate that ``certname=`` patterns name: the subject's
#: common name and the DNS, e-mail and URI subject alternative names.
CERT_NAME_KINDS = ("cn", "dns", "email", "uri")

#: What ``*`` and ``?`` never match, by name type.
_SEPARATORS = {"cn": "./@", "dns": ".", "email": "@.", "uri": "/?#@:"}


@dataclass(frozen=True)
class CertPattern:
    """
    One ``certname=`` pattern.

    :ivar kind: one of :data:`CERT_NAME_KINDS`, or ``any`` for a bare ``*``
        (every verified certificate).
    :ivar glob: the pattern after its type, normalised (lower case but a URI's path).
    """

    kind: str
    glob: str

    def __str__(self) -> str:
        return "*" if self.kind == "any" else f"{self.kind}:{self.glob}"


def _fold(kind: str, text: str) -> str:
    """Text compared without regard to letter case: all of it, but a URI's path, query and fragment."""
    if kind != "uri":
        return text.lower()
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return f"{scheme.lower()}://{rest[:end].lower()}{rest[end:]}"


def parse_cert_pattern(text: str) -> CertPattern:
    """
    A ``certname=`` pattern: ``TYPE:GLOB`` with TYPE one of :data:`CERT_NAME_KINDS`,
    a bare CN glob, or ``*`` alone for any verified certificate.

    :raises ValueError: saying what is wrong (an unknown type, an ambiguous
        bare pattern, a glob in a place its type keeps literal).
    """
    if not text or not text.isprintable() or any(c.isspace() or c == "," for c in text):
        raise ValueError(f"a certname pattern is printable text without spaces, got {text!r}")
    if text == "*":
        return CertPattern("any", "*")
    kind, sep, glob = text.partition(":")
    if not sep:
        kind, glob = "cn", text
        if any(c in text for c in "@/"):
            raise ValueError(f"{text!r} is ambiguous: write email:{text} for an e-mail name, "
                             f"uri:... for a URI or cn:{text} for the subject's common name")
    elif kind.lower() not in CERT_NAME_KINDS:
        raise ValueError(f"{text!r}: the name types are cn:, dns:, email: and uri: "
                         "(or write cn:NAME for a common name holding ':')")
    kind = kind.lower()
    if not glob:
        raise ValueError(f"{text!r} has nothing after {kind}:")
    wild = "*?"
    if kind == "dns":
        labels = glob.split(".")
        if "" in labels or not all(re.fullmatch(r"[A-Za-z0-9_*?-]+", label) for label in labels):
            raise ValueError(f"{text!r} is not a DNS name pattern (labels of letters, digits, '-', '_', '*', '?')")
        if any(c in wild for label in labels[1:] for c in label) or (
                any(c in wild for c in labels[0]) and len(labels) < 3):
            raise ValueError(f"{text!r}: a DNS glob sits in the leftmost label and keeps two labels fixed "
                             "(dns:*.ops.example)")
    elif kind == "email":
        local, at, domain = glob.rpartition("@")
        if not at or not local or not domain or "@" in local:
            raise ValueError(f"{text!r} is not an e-mail pattern (LOCAL@DOMAIN, e.g. email:*@ops.example)")
        if any(c in wild for c in domain):
            raise ValueError(f"{text!r}: an e-mail pattern keeps its domain literal")
    elif kind == "uri":
        scheme, slashes, rest = glob.partition("://")
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        if not slashes or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) or not rest[:end]:
            raise ValueError(f"{text!r} is not a URI pattern (SCHEME://AUTHORITY/PATH, e.g. uri:spiffe://ops.example/*)")
        if any(c in wild for c in rest[:end]):
            raise ValueError(f"{text!r}: a URI pattern keeps its scheme and authority literal")
    return CertPattern(kind, _fold(kind, glob))


@lru_cache(maxsize=1024)
def _compiled(kind: str, glob: str) -> "re.Pattern[str]":
    """A glob as a regular expression: ``*`` one or more, ``?`` one character other than the type's separators."""
    other = "[^" + re.escape(_SEPARATORS[kind]) + "]"
    parts = [other + "+" if c == "*" else other if c == "?" else re.escape(c) for c in glob]
    return re.compile("".join(parts), re.DOTALL)


def _matches(pattern: CertPattern, kind: str, name: str) -> bool:
    return pattern.kind == kind and _compiled(kind, pattern.glob).fullmatch(_fold(kind, name)) is not None


@dataclass(frozen=True)
class ClientCertificate:
    """
    A client certificate that the TLS handshake verified.

    :ivar common_name: the subject's CN ('' without one).
    :ivar names: its subject alternative names as (type, name) pairs, in
        certificate order, type ``dns``, ``email`` or ``uri``.
    """

    common_name: str
    names: tuple[tuple[str, str], ...] = ()

    @property
    def identity(self) -> str:
        """What logs and backends are told: the CN, else the first alternative name."""
        return self.common_name or (self.names[0][1] if self.names else "")


def admits(patterns: tuple[CertPattern, ...], certificate: Optional[ClientCertificate]) -> bool:
    """
    Whether a route's ``certname=`` patterns admit a client: no patterns admit
    everyone; otherwise a verified certificate must have a name of a
    pattern's type that the pattern matches (see :func:`parse_cert_pattern`).
    """
    if not patterns:
        return True
    if certificate is None:
        return False
    names = ((("cn", certificate.common_name),) if certificate.common_name else ()) + certificate.names
    return any(pattern.kind == "any" or _matches(pattern, kind, name) for pattern in patterns for kind, name in names)
