"""Tests for tunnelgw.core.relay: subprotocols, base64 streaming, statuses and close codes."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelgw.core.relay import (Base64Decoder, Close, ConnectFailure, SessionRecord, backend_ended,
                            choose_subprotocol, close_reason, connect_rejection)
from tunnelgw.core.routing import Reject


def test_subprotocol_choice() -> None:
    """binary is preferred, base64 accepted, none means binary, others are refused with 400."""
    assert choose_subprotocol([]) is None
    assert choose_subprotocol(["base64", "binary"]) == "binary"
    assert choose_subprotocol(["base64"]) == "base64"
    refused = choose_subprotocol(["chat"])
    assert isinstance(refused, Reject) and refused.status == 400 and "binary" in refused.reason


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=5), st.data())
def test_base64_decoder_streams_any_split(messages: list[bytes], data: st.DataObject) -> None:
    """Messages split at any points decode to the original bytes, with at most 3 characters carried."""
    decoder = Base64Decoder()
    out = b""
    for message in messages:
        text = base64.b64encode(message)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=4)))
        for start, end in zip([0, *cuts], [*cuts, len(text)]):
            out += decoder.feed(text[start:end])
            assert len(decoder._carry) < 4
        decoder.end_message()
    assert out == b"".join(messages)


def test_base64_decoder_errors() -> None:
    """Non-base64 input and a message cut mid-quantum are errors."""
    with pytest.raises(ValueError):
        Base64Decoder().feed(b"!!!!")
    decoder = Base64Decoder()
    decoder.feed(b"QUJ")
    with pytest.raises(ValueError):
        decoder.end_message()


def test_connect_rejections() -> None:
    """A connect timeout is 504; refusal, TLS failure and unreachable backends are 502."""
    assert connect_rejection(ConnectFailure.TIMEOUT, "5 s").status == 504
    for failure in (ConnectFailure.REFUSED, ConnectFailure.TLS, ConnectFailure.UNREACHABLE):
        assert connect_rejection(failure, "x").status == 502


def test_backend_end_close_codes() -> None:
    """An orderly backend close is 1000; a broken one is 1011 with the detail."""
    assert backend_ended(True, "") == Close(1000, "backend closed the connection")
    broken = backend_ended(False, "Connection reset by peer")
    assert broken.code == 1011 and "reset" in broken.reason


@given(st.text(max_size=200))
def test_close_reason_fits_a_frame(text: str) -> None:
    """Close reasons never exceed 123 UTF-8 bytes and stay valid UTF-8."""
    assert len(close_reason(text).encode("utf-8")) <= 123


def test_session_record_ends_once() -> None:
    """The first end of a session is the one recorded."""
    record = SessionRecord("s", "c", "/p", "tcp:host=a:port=1", started=10.0)
    record.end(12.5, 1000, "bye")
    record.end(99.0, 1011, "late")
    assert record.fields(100.0)["duration"] == 2.5
    assert record.fields(100.0)["close_code"] == 1000
