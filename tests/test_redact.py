"""Tests for tunnelgw.core.redact: tokens never shown, fingerprints stable."""

from __future__ import annotations

import jwt
from hypothesis import assume, given
from hypothesis import strategies as st

from tunnelgw.core.redact import TokenPlace, fingerprint, redact_path, redact_uri, redact_url

PLACES = (TokenPlace("/desk", "path"), TokenPlace("/vnc", "query", "t"))
_TOKEN = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-", min_size=4, max_size=40)


def test_fingerprint_is_short_and_stable() -> None:
    """The same token always gives the same ``tok:`` and 8 hex digits; different tokens differ."""
    assert fingerprint("desk3") == fingerprint("desk3")
    assert fingerprint("desk3") != fingerprint("desk4")
    assert len(fingerprint("x" * 500)) == 12


@given(_TOKEN)
def test_query_path_and_redirect_tokens_never_shown(token: str) -> None:
    """A token in a query, a path segment or a redirect Location is replaced by its fingerprint."""
    assume(token not in "ws://gw2.example:8080/vnc?t=&x=1/desk/rest/other?token=tok:")  # not a piece of the text around it
    for shown in (redact_uri(f"/vnc?t={token}&x=1", PLACES), redact_uri(f"/desk/{token}/rest", PLACES),
                  redact_url(f"ws://gw2.example:8080/vnc?t={token}", PLACES), redact_uri(f"/other?token={token}")):
        assert token not in shown and fingerprint(token) in shown, shown


def test_jwt_anywhere_is_redacted() -> None:
    """A JWT in an unknown query parameter or path is fingerprinted too."""
    token = jwt.encode({"host": "127.0.0.2", "port": 5901, "exp": 1}, "k" * 32, algorithm="HS256")
    assert token not in redact_uri(f"/x/{token}?other={token}")
    assert redact_path("/vnc/plain") == "/vnc/plain"
    assert redact_uri("/vnc?x=1") == "/vnc?x=1"
