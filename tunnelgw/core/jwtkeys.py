"""
Keys of signed tokens, each pinned to one algorithm (no algorithm confusion):

- ``HS256`` with a shared secret of at least 32 bytes (RFC 7518 3.2);
- ``RS256``, ``ES256`` (P-256) and ``EdDSA`` (Ed25519) with a PEM public key;
- a JWKS file of public keys (RSA, EC P-256, OKP Ed25519; never symmetric
  keys), chosen by the token's ``kid``, each pinned to the algorithm its type
  implies (a JWK's own ``alg``, when given, must agree), re-read when the file
  changes (checked at most every ``reload`` seconds).

A token is verified with exactly the algorithm its key is pinned to: an RS256
public key offered as an HS256 secret never verifies anything.  Pure: files
are read through injected callables; PyJWT and cryptography do the crypto.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Hashable, Optional, Union

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

__all__ = ["ALGORITHMS", "MIN_SECRET_BYTES", "JwksKeys", "PinnedKey", "load_key"]

ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")
MIN_SECRET_BYTES = 32  # RFC 7518 section 3.2: an HS256 key at least as long as the hash
_KEY_TYPES = {"RS256": rsa.RSAPublicKey, "ES256": ec.EllipticCurvePublicKey, "EdDSA": ed25519.Ed25519PublicKey}

PinnedKey = tuple[Any, str]


def load_key(algorithm: str, data: bytes) -> PinnedKey:
    """
    The key for one algorithm from a file's bytes: the secret itself for
    HS256, a PEM public key for the others.

    :raises ValueError: saying what does not fit.
    """
    if algorithm == "HS256":
        secret = data.strip()
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the token secret must hold at least {MIN_SECRET_BYTES} bytes (RFC 7518)")
        if b"-----BEGIN" in secret:
            raise ValueError("an HS256 secret may not be a PEM key (alg= names the key's algorithm)")
        return secret, algorithm
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"not a PEM public key ({e})") from None
    if not isinstance(key, _KEY_TYPES[algorithm]):
        raise ValueError(f"the key is a {type(key).__name__.lstrip('_')}, not a key for {algorithm}")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name != "secp256r1":
        raise ValueError("ES256 needs a P-256 key")
    return key, algorithm


def _jwk_algorithm(jwk: dict[str, Any]) -> str:
    """The one algorithm a public JWK may verify, from its type (and its alg, which must agree)."""
    kty, crv = jwk.get("kty"), jwk.get("crv")
    implied = {"RSA": "RS256", "EC": "ES256" if crv == "P-256" else "", "OKP": "EdDSA" if crv == "Ed25519" else ""}
    algorithm = implied.get(str(kty), "")
    if not algorithm:
        raise ValueError(f"unsupported key type {kty!r} {crv or ''} (RSA, EC P-256 or OKP Ed25519; no symmetric keys)")
    if "alg" in jwk and jwk["alg"] != algorithm:
        raise ValueError(f"key alg {jwk['alg']!r} does not fit its type ({algorithm})")
    if "d" in jwk or "k" in jwk:
        raise ValueError("a JWKS of verification keys may not hold private or symmetric key material")
    return algorithm


def parse_jwks(text: str) -> tuple[dict[str, PinnedKey], list[str]]:
    """The usable keys of a JWKS document by kid, and a problem per key left out."""
    try:
        document = json.loads(text)
    except ValueError as e:
        return {}, [f"not JSON ({e})"]
    keys: dict[str, PinnedKey] = {}
    problems: list[str] = []
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return {}, ["no \"keys\" list"]
    for entry in entries:
        kid = entry.get("kid") if isinstance(entry, dict) else None
        if not isinstance(kid, str) or not kid:
            problems.append("a key without kid")
            continue
        try:
            algorithm = _jwk_algorithm(entry)
            keys[kid] = (jwt.PyJWK(entry, algorithm).key, algorithm)
        except (ValueError, jwt.PyJWKError, jwt.InvalidKeyError) as e:
            problems.append(f"key {kid!r}: {e}")
    return keys, problems


class JwksKeys:
    """The keys of a JWKS file, re-read when its stamp changes (checked at most every ``reload`` seconds)."""

    def __init__(self, path: str, reload: float, read: Callable[[str], str], stamp: Callable[[str], Hashable]) -> None:
        self._path = path
        self._reload = reload
        self._read = read
        self._stamp = stamp
        self._keys: dict[str, PinnedKey] = {}
        self._seen: Hashable = object()
        self._checked: Optional[float] = None
        self.problems: list[str] = []

    def key_for(self, header: dict[str, Any], now: float) -> Union[PinnedKey, str]:
        """The pinned key the token's ``kid`` names, or why there is none."""
        if self._checked is None or now - self._checked >= self._reload:
            self._checked = now
            stamp = self._stamp(self._path)
            if stamp != self._seen:
                self._seen = stamp
                self._keys, self.problems = parse_jwks(self._read(self._path)) if stamp is not None else ({}, [])
        kid = header.get("kid")
        if not isinstance(kid, str):
            return "token has no kid (a JWKS source picks keys by kid)"
        found = self._keys.get(kid)
        return found if found is not None else f"no key {kid[:40]!r} in the JWKS"
