"""
Pool hops: a gateway that does not own a desktop carries the session to the
owner over WebSocket (``OwnerSource ... mode=relay hopsecret=FILE``), and says
so in one header the owner can check::

    X-Tunnelgw-Hop: 2;TIME;NONCE;RELAYER;CLIENT;CERTIFICATE;MAC

- ``RELAYER`` is the relaying gateway's ``GatewayURL`` (percent-encoded),
  ``CLIENT`` the real client's address, ``CERTIFICATE`` the client's verified
  TLS certificate names (base64url JSON ``{"cn": ..., "names": [[TYPE, NAME], ...]}``,
  TYPE ``dns``, ``email`` or ``uri``, or ``-``), so that the owner's logs, audit and ``certname=`` see the client,
  not the relaying gateway;
- the MAC is an HMAC-SHA256 under the pool's shared secret of all of the
  above, the owner's own ``GatewayURL`` and the request URI: a hop made for
  one owner and one request is worth nothing elsewhere;
- ``NONCE`` makes each hop usable once: the owner remembers (relayer, nonce)
  for the hop's validity window (:class:`HopNonces` in memory, or the pool's
  Redis), so a captured header cannot be replayed, from any address.

The hop secret file holds one secret per line: the first signs, every line is
accepted, so that a new secret is rolled out without a flag day (add it as a
second line everywhere, move it first, then drop the old one; each step is a
SIGHUP).  Pure: secrets, nonces and time are passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Optional, Sequence
from urllib.parse import quote, unquote

__all__ = ["HOP_HEADER", "MAX_NONCES", "WINDOW", "Hop", "HopNonces", "check_hop", "hop_value", "parse_hop_secrets"]

HOP_HEADER = "x-tunnelgw-hop"
#: Seconds a hop header stays valid (clock skew between pool members included).
WINDOW = 30.0
#: Hops remembered at most at once by one gateway without Redis (beyond: refused until some expire).
MAX_NONCES = 100_000
_NONCE = re.compile(r"[0-9a-f]{32}")
_VERSION = "2"


@dataclass(frozen=True)
class Hop:
    """What a valid hop tells its owner."""

    when: int
    nonce: str
    relayer: str
    client: str
    #: The client's verified TLS certificate at the relaying gateway: its CN and (type, name) alternative
    #: names ("" and ()).
    certificate_cn: str = ""
    certificate_names: tuple[tuple[str, str], ...] = ()

    @property
    def has_certificate(self) -> bool:
        """Whether the client presented a verified certificate to the relaying gateway."""
        return bool(self.certificate_cn or self.certificate_names)


def parse_hop_secrets(text: bytes, minimum: int) -> tuple[bytes, ...]:
    """
    The secrets of a hop secret file: one per non-blank line, the first signs.

    :raises ValueError: when there is none, or one is shorter than minimum bytes.
    """
    secrets = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not secrets:
        raise ValueError("the hop secret file holds no secret")
    for number, secret in enumerate(secrets, start=1):
        if len(secret) < minimum:
            raise ValueError(f"hop secret {number} must hold at least {minimum} bytes")
    if len(secrets) > 2:
        raise ValueError("a hop secret file holds one secret, or two during a rotation")
    return secrets


_NAME_TYPES = ("dns", "email", "uri")


def _certificate_field(cn: str, names: tuple[tuple[str, str], ...]) -> str:
    if not cn and not names:
        return "-"
    raw = json.dumps({"cn": cn, "names": [list(n) for n in names]}, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _read_certificate(field: str) -> Optional[tuple[str, tuple[tuple[str, str], ...]]]:
    if field == "-":
        return "", ()
    try:
        found = json.loads(base64.urlsafe_b64decode(field + "=" * (-len(field) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(found, dict) or not isinstance(found.get("cn"), str) or not isinstance(found.get("names"), list):
        return None
    names = found["names"]
    if not all(isinstance(n, list) and len(n) == 2 and n[0] in _NAME_TYPES and isinstance(n[1], str) for n in names):
        return None
    return found["cn"], tuple((kind, name) for kind, name in names)


def _mac(secret: bytes, fields: Sequence[str], owner: str, uri: str) -> str:
    message = "|".join((*fields, owner.rstrip("/"), uri)).encode("utf-8", "surrogateescape")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def hop_value(secret: bytes, hop: Hop, owner: str, uri: str) -> str:
    """The header value a relaying gateway sends to owner (its GatewayURL) for the request of uri."""
    fields = [_VERSION, str(hop.when), hop.nonce, quote(hop.relayer, safe=""), hop.client,
              _certificate_field(hop.certificate_cn, hop.certificate_names)]
    return ";".join((*fields, _mac(secret, fields, owner, uri)))


def check_hop(secrets: Sequence[bytes], value: str, owner: str, uri: str, now: float) -> Optional[Hop]:
    """
    The hop a header names when its MAC is right under one of secrets, for this
    owner and uri, within :data:`WINDOW` of now; None otherwise (forged, stale,
    for another owner or request, an older format, or malformed).  Whether
    its nonce was seen before is the caller's question (:class:`HopNonces`).
    """
    parts = value.split(";")
    if len(parts) != 7 or parts[0] != _VERSION or not parts[1].isascii() or not parts[1].isdigit() \
            or not _NONCE.fullmatch(parts[2]):
        return None
    try:
        ipaddress.ip_address(parts[4])
    except ValueError:
        return None
    when = int(parts[1])
    if abs(now - when) > WINDOW:
        return None
    fields, mac = parts[:6], parts[6]
    if not any(hmac.compare_digest(mac, _mac(secret, fields, owner, uri)) for secret in secrets):
        return None
    certificate = _read_certificate(parts[5])
    if certificate is None:
        return None
    return Hop(when, parts[2], unquote(parts[3]), parts[4], certificate[0], certificate[1])


class HopNonces:
    """The hops a gateway has seen, each remembered until its window is over (at most :data:`MAX_NONCES`)."""

    def __init__(self, limit: int = MAX_NONCES) -> None:
        self._until: dict[tuple[str, str], float] = {}
        self._limit = limit

    def first_use(self, hop: Hop, now: float) -> bool:
        """True the first time hop's (relayer, nonce) is seen within its window; False for a replay (or when full)."""
        if len(self._until) >= self._limit:
            self._until = {key: until for key, until in self._until.items() if until > now}
        key = (hop.relayer, hop.nonce)
        if key in self._until and self._until[key] > now:
            return False
        if len(self._until) >= self._limit:
            return False
        self._until[key] = hop.when + WINDOW
        return True
