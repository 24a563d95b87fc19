"""Tests for tunnelgw.core.tokens: extraction, token files, signed tokens, target checks."""

from __future__ import annotations

from typing import Hashable

import jwt
from hypothesis import given
from hypothesis import strategies as st

from tunnelgw.core.routing import Reject
from tunnelgw.core.tokens import (FileTokens, SignedTokens, TargetAddress, check_target, extract_token, parse_target,
                             parse_token_text)
from tunnelgw.core.topoconfig import AllowedTarget, TokenSourceSpec

ALLOW = (AllowedTarget("127.0.0.0/24", 5900, 5999), AllowedTarget("desk1.example", 5901, 5901))
SECRET = b"0123456789abcdef0123456789abcdef"


def spec(kind: str = "file", reload: float = 2.0, bind: bool = False) -> TokenSourceSpec:
    """A token source spec over ALLOW."""
    return TokenSourceSpec("t", kind, "/tokens", ALLOW, reload, bind, None)


def test_parse_token_text_reads_websockify_format() -> None:
    """``token: host:port`` lines are read; comments, blanks and lines without a colon are not."""
    assert parse_token_text("# c\n\ndesk1: 127.0.0.2:5901\n desk2 :[::1]:5902\nnonsense\n") == {
        "desk1": "127.0.0.2:5901", "desk2": "[::1]:5902"}


def test_parse_target_forms() -> None:
    """Names, IPv4 and bracketed IPv6 parse; anything that could inject endpoint syntax does not."""
    assert parse_target("127.0.0.2:5901") == TargetAddress("127.0.0.2", 5901)
    assert parse_target("[::1]:5900") == TargetAddress("::1", 5900)
    assert parse_target("Desk1.Example:5901") == TargetAddress("desk1.example", 5901)
    for bad in ("127.0.0.2", "127.0.0.2:0", "127.0.0.2:70000", "h:x", "a=b:1", "h\\:x:1", "[zz]:1",
                "host:port=5:1", "..:1", "-x:1", "a b:1", ":5900"):
        assert parse_target(bad) is None, bad


def test_endpoint_escapes_ipv6() -> None:
    """An IPv6 target becomes an endpoint string with escaped colons."""
    assert TargetAddress("::1", 5900).endpoint == "tcp:host=\\:\\:1:port=5900"


@given(st.text(max_size=40))
def test_parse_target_never_yields_endpoint_syntax(text: str) -> None:
    """Whatever the text, a parsed host holds no '=', '\\' or whitespace."""
    target = parse_target(text)
    if target is not None:
        assert not set(target.host) & set("=\\ \t\n/")


def test_check_target_allows_only_configured_hosts_and_ports() -> None:
    """A target outside every allow entry is refused with 403."""
    assert check_target(TargetAddress("127.0.0.3", 5900), ALLOW) is None
    assert check_target(TargetAddress("desk1.example", 5901), ALLOW) is None
    assert check_target(TargetAddress("127.0.0.3", 22), ALLOW).status == 403  # type: ignore[union-attr]
    assert check_target(TargetAddress("10.0.0.1", 5900), ALLOW).status == 403  # type: ignore[union-attr]
    assert check_target(TargetAddress("desk1.example", 5900), ALLOW).status == 403  # type: ignore[union-attr]


def test_extract_token_from_query_path_and_host() -> None:
    """Each origin finds its token; absence is a 403 'missing token'; odd characters are refused."""
    assert extract_token("query", "token", "", "a=1&token=abc", "") == "abc"
    assert extract_token("query", "t", "", "t=x%2By", "") == "x+y"
    assert extract_token("path", "token", "/abc/rest", "", "") == "abc"
    assert extract_token("host", "token", "", "", "desk1.vdi.example:8443") == "desk1"
    assert extract_token("query", "token", "", "other=1", "") == Reject(403, "missing token")
    assert extract_token("path", "token", "", "", "") == Reject(403, "missing token")
    assert extract_token("query", "token", "", "token=a%00b", "") == Reject(403, "invalid token")


class Files:
    """An in-memory token file whose stamp and contents a test changes."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.stamp: Hashable = 1
        self.reads = 0

    def read(self, path: str) -> dict[str, str]:
        self.reads += 1
        return parse_token_text(self.text)


def test_file_tokens_lookup_unknown_and_bad_target() -> None:
    """Known tokens give their target; unknown ones and forbidden targets the uniform 403."""
    files = Files("a: 127.0.0.2:5901\nb: 10.1.1.1:5901\nc: garbage\n")
    source = FileTokens(spec(), files.read, lambda p: files.stamp)
    assert source.lookup("a", 0.0, "c") == TargetAddress("127.0.0.2", 5901)
    assert source.lookup("zz", 0.0, "c") == Reject(403, "invalid token")
    assert source.lookup("b", 0.0, "c").status == 403  # type: ignore[union-attr]
    assert source.lookup("c", 0.0, "c").status == 403  # type: ignore[union-attr]


def test_file_tokens_reload_when_stamp_changes_rate_limited() -> None:
    """A changed file is re-read on the first lookup after the reload interval, not before."""
    files = Files("a: 127.0.0.2:5901\n")
    source = FileTokens(spec(reload=2.0), files.read, lambda p: files.stamp)
    assert source.lookup("a", 100.0, "c") == TargetAddress("127.0.0.2", 5901)
    files.text, files.stamp = "a: 127.0.0.3:5901\n", 2
    assert source.lookup("a", 101.0, "c") == TargetAddress("127.0.0.2", 5901)
    assert source.lookup("a", 102.0, "c") == TargetAddress("127.0.0.3", 5901)
    assert files.reads == 2
    source.lookup("a", 110.0, "c")
    assert files.reads == 2  # stamp unchanged: not read again


def test_file_tokens_missing_file_means_no_tokens() -> None:
    """A token file that vanished (stamp None) knows no token."""
    files = Files("a: 127.0.0.2:5901\n")
    source = FileTokens(spec(reload=0), files.read, lambda p: files.stamp)
    assert isinstance(source.lookup("a", 0.0, "c"), TargetAddress)
    files.stamp = None
    assert source.lookup("a", 1.0, "c") == Reject(403, "invalid token")


def sign(claims: dict[str, object], secret: bytes = SECRET) -> str:
    """An HS256 token over claims."""
    return jwt.encode(claims, secret, algorithm="HS256")


def test_signed_tokens_every_refusal() -> None:
    """Valid tokens route; bad signature, no exp, expired, early, other address, forbidden target are 403."""
    source = SignedTokens(spec("jwt"), SECRET)
    good = {"host": "127.0.0.2", "port": 5901, "exp": 200}
    assert source.lookup(sign(good), 100.0, "127.0.0.9") == TargetAddress("127.0.0.2", 5901)
    assert source.lookup(sign(good, b"x" * 32), 100.0, "c").detail == "token signature is not valid"  # type: ignore[union-attr]
    assert source.lookup(sign({"host": "127.0.0.2", "port": 5901}), 100.0, "c").detail == "token has no exp claim"  # type: ignore[union-attr]
    assert source.lookup(sign(good), 200.0, "c").detail == "token expired"  # type: ignore[union-attr]
    assert source.lookup(sign(good | {"nbf": 150}), 100.0, "c").detail == "token not valid yet"  # type: ignore[union-attr]
    assert source.lookup(sign(good | {"port": 22}), 100.0, "c").status == 403  # type: ignore[union-attr]
    assert source.lookup(sign(good | {"host": "a=b"}), 100.0, "c").status == 403  # type: ignore[union-attr]
    assert source.lookup("not.a.token", 100.0, "c").status == 403  # type: ignore[union-attr]
    unsigned = jwt.encode(good, None, algorithm="none")  # type: ignore[arg-type]
    assert source.lookup(unsigned, 100.0, "c").status == 403  # type: ignore[union-attr]


def test_signed_tokens_bound_to_address() -> None:
    """With bind=address a token works only from the address in its addr claim."""
    source = SignedTokens(spec("jwt", bind=True), SECRET)
    token = sign({"host": "127.0.0.2", "port": 5901, "exp": 200, "addr": "127.0.0.9"})
    assert source.lookup(token, 100.0, "127.0.0.9") == TargetAddress("127.0.0.2", 5901)
    refused = source.lookup(token, 100.0, "127.0.0.8")
    assert refused == Reject(403, "invalid token") and refused.detail == "token is bound to another client address"  # type: ignore[union-attr]


def test_signed_tokens_refuse_non_finite_times_and_odd_ports() -> None:
    """exp NaN/Infinity, boolean exp, a port of '²' or ' 5901' are the uniform 403; a digit string port works."""
    source = SignedTokens(spec("jwt"), SECRET)
    good = {"host": "127.0.0.2", "port": 5901, "exp": 200}
    assert source.lookup(sign(good | {"port": "5901"}), 100.0, "c") == TargetAddress("127.0.0.2", 5901)
    for bad in ({"exp": float("nan")}, {"exp": float("inf")}, {"exp": True}, {"nbf": float("-inf")},
                {"nbf": float("nan")}, {"port": "²"}, {"port": "٥٩٠١"}, {"port": " 5901"}, {"port": True},
                {"port": 0}, {"port": "65536"}):
        assert source.lookup(sign(good | bad), 100.0, "c") == Reject(403, "invalid token"), bad


def test_unknown_expired_and_malformed_tokens_answer_alike() -> None:
    """Unknown, expired, malformed and forbidden-target tokens give the same status and reason (body)."""
    files = Files("a: 127.0.0.2:5901\nb: 10.1.1.1:5901\n")
    file_source = FileTokens(spec(), files.read, lambda p: files.stamp)
    jwt_source = SignedTokens(spec("jwt"), SECRET)
    answers = {(r.status, r.reason) for r in (  # type: ignore[union-attr]
        file_source.lookup("zz", 0.0, "c"), file_source.lookup("b", 0.0, "c"),
        extract_token("query", "token", "", "token=a%00b", ""),
        jwt_source.lookup(sign({"host": "127.0.0.2", "port": 5901, "exp": 1}), 100.0, "c"),
        jwt_source.lookup("not.a.token", 100.0, "c"), jwt_source.lookup(sign({"host": "x"}, b"y" * 32), 0.0, "c"))}
    assert answers == {(403, "invalid token")}


@given(st.text(max_size=60))
def test_any_token_text_gets_a_target_or_the_uniform_answer(token: str) -> None:
    """Whatever a client sends as a token, lookup never raises and refuses with the one answer."""
    source = SignedTokens(spec("jwt"), SECRET)
    answer = source.lookup(token, 100.0, "c")
    assert isinstance(answer, TargetAddress) or (answer.status, answer.reason) == (403, "invalid token")


def test_short_hs256_secret_refused() -> None:
    """A 16-byte secret is refused when the source is built; 32 bytes work."""
    import pytest
    from tunnelgw.core.tokens import make_token_source
    with pytest.raises(ValueError, match="32 bytes"):
        make_token_source(spec("jwt"), lambda p: b"x" * 16)
    assert isinstance(make_token_source(spec("jwt"), lambda p: b"x" * 32), SignedTokens)


def test_tokens_name_their_user() -> None:
    """A token's user (claim user, else sub; Redis JSON user) reaches logs and audit; odd values are dropped."""
    from tunnelgw.core.tokens import redis_target

    source = SignedTokens(spec("jwt"), SECRET)
    good = {"host": "127.0.0.2", "port": 5901, "exp": 200}
    assert source.lookup(sign(good | {"user": "alice"}), 100.0, "c") == TargetAddress("127.0.0.2", 5901, "alice")
    assert source.lookup(sign(good | {"sub": "bob@example.org"}), 100.0, "c").user == "bob@example.org"  # type: ignore[union-attr]
    assert source.lookup(sign(good | {"user": "eve status=200"}), 100.0, "c").user == ""  # type: ignore[union-attr]
    assert source.lookup(sign(good | {"user": 7}), 100.0, "c").user == ""  # type: ignore[union-attr]
    assert redis_target(spec(), b'{"host": "127.0.0.2:5901", "user": "carol"}') == TargetAddress("127.0.0.2", 5901, "carol")
