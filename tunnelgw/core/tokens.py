"""
Token routing: take a token from the request, look it up, and check that the
desktop it names is one the configuration allows.

Pure logic: file access is injected (``read`` and ``stamp`` callables) and
time is passed in as ``now``.  Token sources are

- a token file or a directory of them, in websockify's format (one
  ``token: host:port`` per line, ``#`` comments), re-read when its
  modification stamp changes, checked at most every ``reload`` seconds;
- tokens in Redis, in websockify's TokenRedis layout: the key is
  ``[NAMESPACE:]TOKEN``, the value ``{"host": "HOST:PORT"}`` (JSON) or plain
  ``HOST:PORT``; :func:`redis_key` and :func:`redis_target` are the pure part,
  :mod:`tunnelgw.redistokens` does the lookups off the reactor thread;
- signed tokens: JWTs (HS256, PyJWT) whose ``host`` and ``port`` claims name
  the desktop, with a required ``exp`` and, when the source binds tokens to
  addresses, an ``addr`` claim that must equal the client address.  Any
  gateway holding the secret can check them: a pool shares no state.

A target is never used as given: its host must be a plain name or address
and match an ``allow=HOST:PORTS`` of its source (a CIDR block, an address or an
exact name, see :mod:`tunnelgw.core.hostpattern`), so a token can never turn
the gateway into an open proxy nor add parameters to an endpoint string.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Hashable, Optional, Sequence, Union
from urllib.parse import parse_qs

import jwt

from tunnelgw.core.hostpattern import host_matches
from tunnelgw.core.jwtkeys import MIN_SECRET_BYTES, JwksKeys, PinnedKey, load_key
from tunnelgw.core.routing import Reject
from tunnelgw.core.topoconfig import AllowedTarget, TokenSourceSpec

__all__ = [
    "INVALID_REASON",
    "MIN_SECRET_BYTES",
    "FileTokens",
    "SignedTokens",
    "TargetAddress",
    "check_target",
    "extract_token",
    "invalid",
    "parse_target",
    "parse_token_text",
    "make_token_source",
    "redis_key",
    "redis_target",
    "user_name",
]

_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")
_USER = re.compile(r"[\w.@+-]{1,64}")
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{1,4096}")

MISSING = Reject(403, "missing token")
#: The one answer for a token that does not open a desktop: unknown, expired, malformed,
#: badly signed or naming a forbidden target all look alike, so answers tell a prober nothing.
INVALID_REASON = "invalid token"


def invalid(detail: str) -> Reject:
    """The uniform refusal of a token, with the operator-only detail of why."""
    return Reject(403, INVALID_REASON, detail)


UNKNOWN = invalid("unknown token")
EXPIRED = invalid("token expired")


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _port(value: object) -> Optional[int]:
    """A port claim as an int: an int, or a string of ASCII digits; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 1 <= value <= 65535 else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5:
        number = int(value)
        return number if 1 <= number <= 65535 else None
    return None


@dataclass(frozen=True)
class TargetAddress:
    """A desktop's address: a host name or IP address, and a TCP port; the token's user when it names one."""

    host: str
    port: int
    user: str = ""
    #: For single-use tokens: the ``jti`` claim and when the token expires (epoch seconds).
    once: Optional[tuple[str, float]] = None

    @property
    def endpoint(self) -> str:
        """The Twisted client endpoint string for this address (IPv6 colons escaped)."""
        return f"tcp:host={self.host.replace(':', chr(92) + ':')}:port={self.port}"


def parse_target(text: str) -> Optional[TargetAddress]:
    """``host:port`` or ``[v6]:port`` as a :class:`TargetAddress`, or None when malformed."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if not rest.startswith(":"):
            return None
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, _, port_text = text.rpartition(":")
        if not _HOST.fullmatch(host) or ".." in host:
            return None
    port = _port(port_text)
    if port is None:
        return None
    return TargetAddress(host.lower(), port)


def check_target(target: TargetAddress, allow: Sequence[AllowedTarget]) -> Optional[Reject]:
    """None when some allow entry covers the target's host and port, else a 403."""
    for entry in allow:
        if entry.low <= target.port <= entry.high and host_matches(target.host, entry.host_glob):
            return None
    return invalid(f"token target {target.host}:{target.port} is not allowed by the token source")


def parse_token_text(text: str) -> dict[str, str]:
    """``token: host:port`` lines into {token: target text}; other lines are ignored."""
    table: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token, colon, target = line.partition(":")
        if colon and token.strip():
            table[token.strip()] = target.strip()
    return table


def extract_token(origin: str, param: str, remainder: str, query: str, host: str) -> Union[str, Reject]:
    """
    The token of a request, or 403 when it carries none (or a malformed one).

    :param origin: ``query`` (``?param=``), ``path`` (first segment after the
        route's path) or ``host`` (first label of the Host header).
    :param remainder: the normalised path after the route's path.
    :param query: the raw query string (no ``?``).
    """
    if origin == "query":
        values = parse_qs(query, keep_blank_values=True).get(param, [])
        token = values[0] if values else ""
    elif origin == "path":
        # The remainder is normalised (percent escapes decoded once): decoding again would let
        # ``%2541`` and ``A`` name one token.
        token = remainder.lstrip("/").split("/")[0]
    else:
        name = host.strip()
        name = name[1:name.find("]")] if name.startswith("[") else name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        token = name.split(".")[0]
    if not token:
        return MISSING
    if not _TOKEN.fullmatch(token):
        return invalid("malformed token")
    return token


def _file_stamp(path: str) -> Hashable:
    """A value that changes when a token file, or any file in a token folder, changes."""
    try:
        if os.path.isdir(path):
            return tuple(sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in os.scandir(path)
                                if e.is_file()))
        info = os.stat(path)
        return (info.st_mtime_ns, info.st_size)
    except OSError:
        return None


def _file_read(path: str) -> dict[str, str]:
    """Read a token file or every file in a token folder (later files win)."""
    names = sorted(os.path.join(path, n) for n in os.listdir(path)) if os.path.isdir(path) else [path]
    table: dict[str, str] = {}
    for name in names:
        try:
            with open(name, encoding="utf-8", errors="replace") as f:
                table.update(parse_token_text(f.read()))
        except OSError:
            continue
    return table


class FileTokens:
    """
    Tokens from a file or folder, re-read when its stamp changes; the stamp is
    checked at most once every ``reload`` seconds, so lookups stay cheap.
    """

    def __init__(self, spec: TokenSourceSpec, read: Callable[[str], dict[str, str]] = _file_read,
                 stamp: Callable[[str], Hashable] = _file_stamp) -> None:
        self.spec = spec
        self._read = read
        self._stamp = stamp
        self._table: dict[str, str] = {}
        self._seen: Hashable = object()
        self._checked: Optional[float] = None
        self.reloads = 0

    def _refresh(self, now: float) -> None:
        if self._checked is not None and now - self._checked < self.spec.reload:
            return
        self._checked = now
        stamp = self._stamp(self.spec.path)
        if stamp != self._seen:
            self._seen = stamp
            self._table = self._read(self.spec.path) if stamp is not None else {}
            self.reloads += 1

    def lookup(self, token: str, now: float, client: str) -> Union[TargetAddress, Reject]:
        """The allowed target of token, or the uniform 403 (:func:`invalid`)."""
        self._refresh(now)
        text = self._table.get(token)
        if text is None:
            return UNKNOWN
        target = parse_target(text)
        if target is None:
            return invalid("token names a malformed target (expected host:port)")
        return check_target(target, self.spec.allow) or target


KeySource = Callable[[dict[str, Any], float], Union[PinnedKey, str]]


class SignedTokens:
    """
    JWTs with ``host``, ``port`` and ``exp`` claims (and ``addr`` when bound),
    verified with the one algorithm their key is pinned to (:mod:`tunnelgw.core.jwtkeys`),
    with the source's ``aud``/``iss`` and ``leeway``.

    :param keys: the pinned key for a token's header, or why there is none;
        a :class:`bytes` secret stands for an HS256 key.
    """

    def __init__(self, spec: TokenSourceSpec, keys: Union[bytes, KeySource]) -> None:
        self.spec = spec
        if isinstance(keys, bytes):
            pinned: PinnedKey = (keys, "HS256")
            self._keys: KeySource = lambda header, now: pinned
        else:
            self._keys = keys

    def lookup(self, token: str, now: float, client: str) -> Union[TargetAddress, Reject]:
        """The allowed target a valid token names, or 403 with why it is refused."""
        spec = self.spec
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.InvalidTokenError, ValueError, TypeError) as e:
            return invalid(f"malformed token ({type(e).__name__})")
        found = self._keys(header, now)
        if isinstance(found, str):
            return invalid(found)
        key, algorithm = found
        if header.get("alg") != algorithm:
            return invalid(f"token alg {str(header.get('alg'))[:16]!r} is not its key's {algorithm}")
        try:
            claims = jwt.decode(token, key, algorithms=[algorithm], audience=spec.audience or None,
                                issuer=spec.issuer or None, options={
                                    "require": ["exp"] + (["aud"] if spec.audience else []) + (
                                        ["iss"] if spec.issuer else []),
                                    "verify_exp": False, "verify_nbf": False, "verify_iat": False})
        except jwt.InvalidSignatureError:
            return invalid("token signature is not valid")
        except jwt.MissingRequiredClaimError as e:
            return invalid(f"token has no {e.claim} claim")
        except jwt.InvalidAudienceError:
            return invalid("token is for another audience (aud)")
        except jwt.InvalidIssuerError:
            return invalid("token is from another issuer (iss)")
        except (jwt.InvalidTokenError, ValueError, TypeError, OverflowError) as e:
            return invalid(f"malformed token ({type(e).__name__})")
        if not isinstance(claims, dict):
            return invalid("malformed token (claims are not an object)")
        # Expiry is checked against the injected time, not the system clock; NaN and
        # Infinity would never expire, so only finite numbers are accepted.
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not _finite_number(exp) or (nbf is not None and not _finite_number(nbf)):
            return invalid("token has a malformed exp or nbf claim")
        if now >= exp + spec.leeway:  # type: ignore[operator]
            return EXPIRED
        if nbf is not None and now < nbf - spec.leeway:
            return invalid("token not valid yet")
        if self.spec.bind_address and claims.get("addr") != client:
            return invalid("token is bound to another client address")
        host, port = claims.get("host"), _port(claims.get("port"))
        if not isinstance(host, str) or port is None:
            return invalid("token has no valid host and port claims")
        target = parse_target(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        if target is None:
            return invalid("token names a malformed target")
        once = None
        if self.spec.single_use:
            jti = claims.get("jti")
            if not isinstance(jti, str) or not _TOKEN.fullmatch(jti) or len(jti) > 256:
                return invalid("a single-use token needs a jti claim")
            once = (jti, float(exp))  # type: ignore[arg-type]
        return check_target(target, self.spec.allow) or replace(target, user=user_name(claims), once=once)


def user_name(claims: object) -> str:
    """The user a token names (``user``, else ``sub``) for logs and audit; "" when none or not plain text."""
    if not isinstance(claims, dict):
        return ""
    for key in ("user", "sub"):
        value = claims.get(key)
        if isinstance(value, str) and _USER.fullmatch(value):
            return value
    return ""


def redis_key(spec: TokenSourceSpec, token: str) -> str:
    """The Redis key of a token: ``NAMESPACE:TOKEN``, or ``TOKEN`` without a namespace."""
    return f"{spec.namespace}:{token}" if spec.namespace else token


def redis_target(spec: TokenSourceSpec, value: Optional[bytes]) -> Union[TargetAddress, Reject]:
    """The allowed target a Redis value names (websockify's JSON or plain form), or the uniform 403."""
    if value is None:
        return UNKNOWN
    try:
        text = value.decode("utf-8").strip()
        if text.startswith("{"):
            import json

            record = json.loads(text)
            host = record.get("host")
            text, user = (host if isinstance(host, str) else ""), user_name(record)
        else:
            user = ""
    except (UnicodeDecodeError, ValueError, AttributeError):
        return invalid("the Redis value is neither websockify's JSON nor host:port")
    target = parse_target(text)
    if target is None:
        return invalid("token names a malformed target (expected host:port)")
    return check_target(target, spec.allow) or replace(target, user=user)


def _text_read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def make_token_source(spec: TokenSourceSpec, read_secret: Callable[[str], bytes]) -> Union[FileTokens, SignedTokens]:
    """
    The lookup object for a source; jwt sources read their key (secret or
    PEM public key) through read_secret, jwks sources re-read their file.

    :raises ValueError: for a key that does not fit the source's ``alg=``.
    """
    if spec.kind == "jwt":
        pinned = load_key(spec.algorithm, read_secret(spec.path))
        return SignedTokens(spec, lambda header, now: pinned)
    if spec.kind == "jwks":
        return SignedTokens(spec, JwksKeys(spec.path, spec.reload, _text_read, _file_stamp).key_for)
    return FileTokens(spec)
