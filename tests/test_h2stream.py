"""
:mod:`tunnelgw.core.h2stream`: a stream's header block as the HTTP/1.1 request
it stands for (or malformed), and the gateway's HTTP/1.1 answer as the
stream's response headers.  Plain asserts over values.
"""

from __future__ import annotations

import pytest

from tunnelgw.core.h2stream import WEBSOCKET_KEY, Malformed, StreamRequest, response_head, stream_request
from tunnelgw.core.handshake import Handshake, check_handshake

_WS = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":path", b"/vnc?token=a"),
       (b":authority", b"gw.example"), (b"origin", b"https://gw.example"), (b"sec-websocket-version", b"13"),
       (b"sec-websocket-protocol", b"binary, base64")]


class StreamRequestTests:
    """Request header blocks."""

    def test_extended_connect_is_the_upgrade_it_stands_for(self) -> None:
        """The HTTP/1.1 handshake check accepts it with the client's Origin, subprotocols and Host."""
        checked = stream_request(_WS, True)
        assert isinstance(checked, StreamRequest) and checked.websocket and checked.refusal is None
        head = checked.head
        assert (head.method, head.target, head.version) == (b"GET", b"/vnc?token=a", b"1.1")
        handshake = check_handshake(head)
        assert handshake == Handshake(WEBSOCKET_KEY.decode(), ("binary", "base64"), "https://gw.example", "gw.example")

    def test_plain_get_and_cookies(self) -> None:
        """A GET keeps its fields; split cookie fields are joined (RFC 9113 8.2.3); :authority wins over host."""
        checked = stream_request([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/demo"),
                                  (b":authority", b"a.example"), (b"cookie", b"a=1"), (b"host", b"b.example"),
                                  (b"cookie", b"b=2")], True)
        assert isinstance(checked, StreamRequest) and not checked.websocket
        assert checked.head.get(b"host") == b"a.example"
        assert checked.head.get(b"cookie") == b"a=1; b=2"

    def test_refusals_that_are_statuses(self) -> None:
        """A plain CONNECT is 405, another :protocol 501: answered, not reset."""
        plain = stream_request([(b":method", b"CONNECT"), (b":authority", b"a:443")], True)
        assert isinstance(plain, StreamRequest) and plain.refusal is not None and plain.refusal.status == 405
        other = stream_request([(n, b"chat" if n == b":protocol" else v) for n, v in _WS], True)
        assert isinstance(other, StreamRequest) and other.refusal is not None and other.refusal.status == 501

    @pytest.mark.parametrize("headers", [
        [(b":method", b"GET"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":path", b"/")],
        [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":authority", b"a")],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":path", b"/x")],
        [(b":method", b"GET"), (b":scheme", b"https"), (b"a", b"1"), (b":path", b"/")],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b"Upper", b"1")],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b"connection", b"close")],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b"te", b"gzip")],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b"x", b"a\r\nb")],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":status", b"200")],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"")],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"x")],
        [(b":scheme", b"https"), (b":path", b"/")],
    ])
    def test_malformed(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Each of RFC 9113's malformed cases (and RFC 8441's) is Malformed: the stream is reset."""
        assert isinstance(stream_request(headers, True), Malformed)

    def test_header_list_size(self) -> None:
        """A header list larger than max_size (names, values, 32 per field) is refused with 431."""
        fields = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b"x", b"y" * 100)]
        size = sum(len(n) + len(v) + 32 for n, v in fields)
        assert isinstance(stream_request(fields, True, size), StreamRequest)
        refused = stream_request(fields, True, size - 1)
        assert isinstance(refused, StreamRequest) and refused.refusal is not None and refused.refusal.status == 431

    def test_protocol_needs_the_setting(self) -> None:
        """:protocol is malformed where SETTINGS_ENABLE_CONNECT_PROTOCOL was not sent (h2 does not check)."""
        assert isinstance(stream_request(_WS, False), Malformed)


class ResponseHeadTests:
    """The session's HTTP/1.1 answer as HTTP/2 response headers."""

    def test_101_is_200_without_connection_fields(self) -> None:
        """101 becomes 200; Upgrade, Connection and the accept key are left out; the subprotocol stays."""
        status, fields = response_head(b"HTTP/1.1 101 Switching Protocols\r\nServer: tunnelgw\r\nUpgrade: WebSocket\r\n"
                                       b"Connection: Upgrade\r\nSec-WebSocket-Protocol: binary\r\n"
                                       b"Sec-WebSocket-Accept: xyz=\r\n\r\n")
        assert status == 200
        assert fields == [(b"server", b"tunnelgw"), (b"sec-websocket-protocol", b"binary")]

    def test_refusal_keeps_its_status(self) -> None:
        """A refusal keeps its status and content fields."""
        status, fields = response_head(b"HTTP/1.1 403 no\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n"
                                       b"Connection: close\r\n\r\n")
        assert status == 403 and fields == [(b"content-type", b"text/plain"), (b"content-length", b"7")]

    def test_garbage(self) -> None:
        """What is not an HTTP/1.1 response head is an error."""
        with pytest.raises(ValueError):
            response_head(b"SSH-2.0\r\n\r\n")
