"""The Origin decision (:mod:`tunnelgw.core.origin`): same-origin by default, OriginAllow lists, ``*``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tunnelgw.core.origin import origin_refusal, own_origin, parse_origin


def test_own_origin_spellings() -> None:
    """Default ports are implied, names are case-folded, IPv6 brackets are dropped."""
    assert parse_origin("http://GW.example") == ("http", "gw.example", 80)
    assert parse_origin("https://gw.example:443/") == ("https", "gw.example", 443)
    assert own_origin("gw.example:80", False) == ("http", "gw.example", 80)
    assert own_origin("[::1]:8080", True) == ("https", "::1", 8080)
    for bad in ("null", "file://", "http://a@gw", "http://gw/x", "http://gw:99999", "ws://gw", "http://gw?x"):
        assert parse_origin(bad) is None, bad
    for bad in ("", "gw/x", "a@gw", "gw x", "gw:port"):
        assert own_origin(bad, False) is None, bad


def test_same_origin_by_default() -> None:
    """Without a rule: the gateway's own origin and no Origin pass; another site, scheme or port is refused."""
    assert origin_refusal("http://gw:8080", "gw:8080", False, None) is None
    assert origin_refusal("https://gw", "gw:443", True, None) is None
    assert origin_refusal(None, "gw:8080", False, None) is None  # not a browser
    for other in ("http://evil.example", "https://gw:8080", "http://gw:8081", "http://gw.evil:8080", "null"):
        why = origin_refusal(other, "gw:8080", False, None)
        assert why is not None and "not this gateway's own (http://gw:8080)" in why and "OriginAllow" in why
    assert origin_refusal("http://gw", "", False, None) is not None  # no Host: no own origin to match


def test_allow_lists_and_any() -> None:
    """An OriginAllow list admits exactly its origins (not the gateway's own, nor none); ``*`` admits all."""
    allowed = ("https://vdi.example",)
    assert origin_refusal("https://VDI.example/", "gw", False, allowed) is None
    assert origin_refusal("http://gw", "gw", False, allowed) == "origin 'http://gw' is not allowed here"
    assert origin_refusal(None, "gw", False, allowed) == "origin '(none)' is not allowed here"
    assert origin_refusal("http://evil.example", "gw", False, ("*",)) is None
    assert origin_refusal(None, "gw", False, ("*",)) is None


@given(st.text(max_size=40), st.text(max_size=40), st.booleans())
def test_free_form_origins_admitted_only_when_equal(origin: str, host: str, secure: bool) -> None:
    """For any Origin and Host text, the default admits only when both name one scheme, host and port."""
    why = origin_refusal(origin, host, secure, None)
    own = own_origin(host, secure)
    assert (why is None) == (own is not None and parse_origin(origin) == own)
