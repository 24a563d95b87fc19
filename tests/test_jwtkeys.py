"""Asymmetric and JWKS tokens (tunnelgw.core.jwtkeys, SignedTokens): RS256, ES256, EdDSA, aud/iss, leeway, no alg confusion."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from support import GatewayProcess, TcpServer, backend, session_status
from tunnelgw.core.errors import Location
from tunnelgw.core.jwtkeys import load_key, parse_jwks
from tunnelgw.core.routing import Reject
from tunnelgw.core.tokens import SignedTokens, TargetAddress, make_token_source
from tunnelgw.core.topoconfig import AllowedTarget, TokenSourceSpec

PRIVATE = {"RS256": rsa.generate_private_key(65537, 2048), "ES256": ec.generate_private_key(ec.SECP256R1()),
           "EdDSA": ed25519.Ed25519PrivateKey.generate()}


def pem(algorithm: str) -> bytes:
    return PRIVATE[algorithm].public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def jwk(algorithm: str, kid: str) -> dict[str, Any]:
    """The public key as a JWK with a kid (PyJWT's own serialisation)."""
    text = jwt.algorithms.get_default_algorithms()[algorithm].to_jwk(PRIVATE[algorithm].public_key())
    return dict(json.loads(text)) | {"kid": kid}


def spec(kind: str, path: str, **fields: Any) -> TokenSourceSpec:
    return TokenSourceSpec("s", kind, path, (AllowedTarget("127.0.0.0/8", 5900, 5999),), 0.0, False,
                           Location("t", 1), **fields)


def sign(algorithm: str, kid: str = "", **claims: Any) -> str:
    body = {"host": "127.0.0.2", "port": 5901, "exp": 200} | claims
    return jwt.encode(body, PRIVATE[algorithm], algorithm=algorithm, headers={"kid": kid} if kid else None)


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_public_key_sources(tmp_path: Path, algorithm: str) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(pem(algorithm))
    source = make_token_source(spec("jwt", str(key), algorithm=algorithm, audience="vdi", issuer="portal",
                                    leeway=10), lambda p: Path(p).read_bytes())
    good = sign(algorithm, aud="vdi", iss="portal")
    assert source.lookup(good, 100.0, "c") == TargetAddress("127.0.0.2", 5901)
    assert isinstance(source.lookup(good, 205.0, "c"), TargetAddress)  # within the leeway
    assert source.lookup(good, 210.0, "c").detail == "token expired"  # type: ignore[union-attr]
    for bad, why in [(sign(algorithm, aud="other", iss="portal"), "token is for another audience (aud)"),
                     (sign(algorithm, iss="portal"), "token has no aud claim"),
                     (sign(algorithm, aud="vdi", iss="evil"), "token is from another issuer (iss)"),
                     # Algorithm confusion: HS256 with the public key as the secret.
                     (jwt.encode({"host": "127.0.0.2", "port": 5901, "exp": 200, "aud": "vdi", "iss": "portal"},
                                 b"x" * 32, algorithm="HS256"), f"token alg 'HS256' is not its key's {algorithm}")]:
        refused = source.lookup(bad, 100.0, "c")
        assert isinstance(refused, Reject) and (refused.status, refused.reason, refused.detail) == (403, "invalid token", why)


def forged_with_public_key(algorithm: str, kid: str = "", **claims: Any) -> str:
    """The classic confusion attack: an HS256 token whose MAC key is the PEM text of the public key."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = {"alg": "HS256", "typ": "JWT"} | ({"kid": kid} if kid else {})
    body = {"host": "127.0.0.2", "port": 5901, "exp": 200} | claims
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    mac = hmac.new(pem(algorithm), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def test_hs256_with_a_public_key_as_secret_is_refused(tmp_path: Path) -> None:
    """The classic confusion: a token MACed with the PEM text of the public key never verifies."""
    pinned = load_key("RS256", pem("RS256"))
    source = SignedTokens(spec("jwt", "-", algorithm="RS256"), lambda header, now: pinned)
    forged = forged_with_public_key("RS256")
    assert source.lookup(forged, 100.0, "c").detail == "token alg 'HS256' is not its key's RS256"  # type: ignore[union-attr]
    path = tmp_path / "keys.jwks"
    path.write_text(json.dumps({"keys": [jwk("RS256", "r1")]}))
    jwks = make_token_source(spec("jwks", str(path)), lambda p: b"")
    refused = jwks.lookup(forged_with_public_key("RS256", "r1"), 100.0, "c")
    assert isinstance(refused, Reject) and refused.detail == "token alg 'HS256' is not its key's RS256"
    with pytest.raises(ValueError):
        load_key("HS256", pem("RS256"))  # a PEM key is never taken as a secret
    with pytest.raises(ValueError):
        load_key("ES256", pem("RS256"))


def test_jwks_by_kid_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys.jwks"
    keys = [jwk("RS256", "r1"), jwk("ES256", "e1"), {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"}]
    path.write_text(json.dumps({"keys": keys}))
    usable, problems = parse_jwks(path.read_text())
    assert set(usable) == {"r1", "e1"} and any("sym" in p for p in problems)
    source = make_token_source(spec("jwks", str(path)), lambda p: b"")
    assert isinstance(source.lookup(sign("RS256", "r1"), 100.0, "c"), TargetAddress)
    assert isinstance(source.lookup(sign("ES256", "e1"), 100.0, "c"), TargetAddress)
    assert source.lookup(sign("RS256", "e1"), 100.0, "c").detail == "token alg 'RS256' is not its key's ES256"  # type: ignore[union-attr]
    assert source.lookup(sign("RS256", "nope"), 100.0, "c").detail == "no key 'nope' in the JWKS"  # type: ignore[union-attr]
    assert source.lookup(sign("RS256"), 100.0, "c").detail.startswith("token has no kid")  # type: ignore[union-attr]
    # A new key set is used once the file changes (reload=0 here: checked on every lookup).
    path.write_text(json.dumps({"keys": [jwk("EdDSA", "d1")]}) + " ")
    assert isinstance(source.lookup(sign("EdDSA", "d1"), 101.0, "c"), TargetAddress)
    assert source.lookup(sign("RS256", "r1"), 102.0, "c").detail == "no key 'r1' in the JWKS"  # type: ignore[union-attr]


def test_jwks_tokens_through_the_gateway(tmp_path: Path, backend: TcpServer) -> None:
    keys = tmp_path / "keys.jwks"
    keys.write_text(json.dumps({"keys": [jwk("RS256", "r1"), jwk("ES256", "e1"), jwk("EdDSA", "d1")]}))
    bad = tmp_path / "bad.jwks"
    bad.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "sym"}]}))
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
TokenSource portal jwks {keys} aud=vdi leeway=5 allow=127.0.0.1:{backend.port}
TokenRoute /vnc portal
"""
    with GatewayProcess(config, tmp_path) as gw:
        def status(token: str) -> int:
            return session_status(f"ws://127.0.0.1:{gw.port()}/vnc?token={token}")

        def token(algorithm: str, kid: str, **claims: Any) -> str:
            body = {"host": "127.0.0.1", "port": backend.port, "exp": int(time.time()) + 60, "aud": "vdi"} | claims
            return jwt.encode(body, PRIVATE[algorithm], algorithm=algorithm, headers={"kid": kid})

        assert [status(token(a, k)) for a, k in (("RS256", "r1"), ("ES256", "e1"), ("EdDSA", "d1"))] == [101] * 3
        assert status(token("RS256", "r1", aud="else")) == 403
        assert status(token("RS256", "zz")) == 403
        hs = forged_with_public_key("RS256", "r1", host="127.0.0.1", port=backend.port, exp=int(time.time()) + 60,
                                    aud="vdi")
        assert status(hs) == 403
        assert "token alg 'HS256' is not its key's RS256" in gw.log()
    broken = GatewayProcess(config.replace(str(keys), str(bad)), tmp_path, name="broken")
    with pytest.raises(RuntimeError, match=r"broken.conf:3: .*no usable key"):
        broken.start()
