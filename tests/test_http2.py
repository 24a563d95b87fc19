"""
:mod:`tunnelgw.http2`: a gateway process with an ``http2=on`` ``ssl:``
listener, driven by an h2 client (the ``h2`` library over a real TLS
socket): extended CONNECT sessions, several on one connection, flow
control, resets, guards, malformed streams, GOAWAY on drain, plain requests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import struct
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import DataFrame, Frame

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from zope.interface import implementer

from rawws import frame_bytes, raw_handshake
from tunnelgw.core.relay import CLOSE_TIMEOUT
from tunnelgw.http2 import (RESET_AGE, RESET_WINDOW, STREAM_BUFFER, STREAM_WINDOW, WRITE_BATCH, Http2Connection, Http2Server,
                            StreamTransport)
from support import GatewayProcess, Pki, TcpServer, echo, free_port, make_client_cert, make_pki, silent, wait_until

Headers = list[tuple[str, str]]


@dataclass
class _Stream:
    """What one stream received."""

    status: Optional[int] = None
    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: Optional[int] = None


class H2Client:
    """An HTTP/2 client over TLS, every read bounded; nothing is read unless the test asks."""

    def __init__(self, port: int, ca: Path, alpn: tuple[str, ...] = ("h2", "http/1.1"), timeout: float = 10.0,
                 certificate: Optional[Path] = None) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        if certificate is not None:
            context.load_cert_chain(str(certificate))
        if alpn:
            context.set_alpn_protocols(list(alpn))
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.alpn = self.sock.selected_alpn_protocol()
        self.timeout = timeout
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8",
                                                 validate_outbound_headers=False, normalize_outbound_headers=False,
                                                 validate_inbound_headers=False))
        self.streams: dict[int, _Stream] = {}
        self.settings: dict[int, int] = {}
        self.goaway: Optional[ConnectionTerminated] = None
        self.auto_ack = True
        if self.alpn == "h2":
            self.conn.initiate_connection()
            self.flush()
            self.until(lambda: SettingCodes.ENABLE_CONNECT_PROTOCOL in self.settings)

    def flush(self) -> None:
        """Send what h2 has queued."""
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def read_once(self) -> bool:
        """Read once and take h2's events; False when the server closed."""
        try:
            data = self.sock.recv(65536)
        except (ConnectionError, ssl.SSLError):
            data = b""
        if not data:
            return False
        for event in self.conn.receive_data(data):
            if isinstance(event, RemoteSettingsChanged):
                self.settings.update({k: v.new_value for k, v in event.changed_settings.items()})
            elif isinstance(event, ResponseReceived):
                stream = self.streams.setdefault(event.stream_id, _Stream())
                headers = {_text(k): _text(v) for k, v in event.headers or []}
                stream.status = int(headers.pop(":status"))
                stream.headers = headers
            elif isinstance(event, DataReceived):
                self.streams.setdefault(event.stream_id, _Stream()).data += event.data or b""
                if self.auto_ack:
                    self.conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            elif isinstance(event, StreamEnded):
                self.streams.setdefault(event.stream_id, _Stream()).ended = True
            elif isinstance(event, StreamReset):
                self.streams.setdefault(event.stream_id, _Stream()).reset = event.error_code
            elif isinstance(event, ConnectionTerminated):
                self.goaway = event
        self.flush()
        return True

    def until(self, done: Callable[[], bool], timeout: Optional[float] = None) -> None:
        """Read until done() (or fail after timeout)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not get there in time")
            if not self.read_once():
                if not done():
                    raise ConnectionError("the server closed the connection")
                return

    def request(self, headers: Headers, end: bool = True) -> int:
        """Open a stream with headers; its id."""
        stream_id = self.conn.get_next_available_stream_id()
        self.streams[stream_id] = _Stream()
        self.conn.send_headers(stream_id, headers, end_stream=end)
        self.flush()
        return stream_id

    def get(self, path: str) -> _Stream:
        """A whole GET answer."""
        stream_id = self.request([(":method", "GET"), (":scheme", "https"), (":path", path),
                                  (":authority", "localhost")])
        stream = self.streams[stream_id]
        self.until(lambda: stream.ended or stream.reset is not None)
        return stream

    def websocket(self, path: str, extra: Optional[Headers] = None) -> int:
        """An extended CONNECT for a WebSocket at path; its stream id (the answer is awaited)."""
        stream_id = self.request([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                                  (":path", path), (":authority", "localhost"), ("sec-websocket-version", "13"),
                                  *(extra or [])], end=False)
        stream = self.streams[stream_id]
        self.until(lambda: stream.status is not None or stream.reset is not None)
        return stream_id

    def send_message(self, stream_id: int, payload: bytes) -> None:
        """One masked binary message on the stream, in DATA frames the windows admit."""
        self.send_body(stream_id, frame_bytes(2, payload))

    def send_body(self, stream_id: int, data: bytes) -> None:
        """data on the stream, in DATA frames the windows admit."""
        deadline = time.monotonic() + self.timeout
        while data:
            room = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if room <= 0:
                if time.monotonic() > deadline or not self.read_once():
                    raise TimeoutError("the server's window stayed closed")
                continue
            self.conn.send_data(stream_id, data[:room])
            data = data[room:]
            self.flush()

    def messages(self, stream_id: int, count: int) -> list[bytes]:
        """Read until count whole server messages arrived on the stream (and take them)."""
        stream = self.streams[stream_id]
        found: list[bytes] = []

        def enough() -> bool:
            while True:
                frame = _take_frame(stream.data)
                if frame is None:
                    return len(found) >= count
                found.append(frame[1])

        self.until(enough)
        return found

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def _http_hello(conn: socket.socket) -> None:
    """Handler: answer one HTTP/1.1 request with a short body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    body = b"hello over http/1.1"
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    conn.close()


def _text(value: object) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _take_frame(buffer: bytearray) -> Optional[tuple[int, bytes]]:
    """One unmasked server frame off buffer's front (opcode, payload), None while incomplete."""
    if len(buffer) < 2:
        return None
    length, at = buffer[1] & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        length, at = struct.unpack("!H", buffer[2:4])[0], 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        length, at = struct.unpack("!Q", buffer[2:10])[0], 10
    if len(buffer) < at + length:
        return None
    opcode, payload = buffer[0] & 0xF, bytes(buffer[at:at + length])
    del buffer[:at + length]
    return opcode, payload


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A CA and a server certificate for localhost."""
    return make_pki(tmp_path / "pki")


def _config(pki: Pki, echo_endpoint: str, silent_endpoint: str, http2: str = "on", extra: str = "") -> str:
    return (f"Listen ssl:port=0:interface=127.0.0.1:privateKey={pki.server_key}:certKey={pki.server_cert}"
            f":extraCertChain={pki.chain} http2={http2}\n"
            f"ProxyPass /echo {echo_endpoint}\n"
            f"ProxyPass /silent {silent_endpoint}\n"
            f"ProxyPass /local {echo_endpoint} allowclients=10.9.9.0/24\n"
            "DemoPage /demo /echo\n" + extra)


@pytest.fixture
def gateway(tmp_path: Path, pki: Pki) -> Iterator[GatewayProcess]:
    """A gateway with an http2=on listener, an echo route, a route to a backend that never reads."""
    with TcpServer(echo) as echoing, TcpServer(silent) as quiet:
        with GatewayProcess(_config(pki, echoing.endpoint, quiet.endpoint), tmp_path) as gw:
            yield gw


class Http2SessionTests:
    """WebSocket sessions as extended CONNECT streams."""

    def test_settings_and_one_session(self, gateway: GatewayProcess, pki: Pki) -> None:
        """ALPN picks h2; SETTINGS enable extended CONNECT and bound streams; a session answers 200 and relays."""
        client = H2Client(gateway.port(), pki.ca_cert)
        try:
            assert client.alpn == "h2"
            assert client.settings[SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
            assert client.settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 100
            stream_id = client.websocket("/echo")
            assert client.streams[stream_id].status == 200
            client.send_message(stream_id, b"hello")
            assert client.messages(stream_id, 1) == [b"hello"]
            line = gateway.wait_log(r"session start .*via=http2")
            assert "path='/echo'" in line.group(0) or "/echo" in line.group(0)
        finally:
            client.close()
        gateway.wait_log(r"session end .*via=http2")

    def test_several_sessions_and_a_close_ends_only_its_stream(self, gateway: GatewayProcess, pki: Pki) -> None:
        """Three sessions on one connection; closing one ends its stream, the others and the connection go on."""
        client = H2Client(gateway.port(), pki.ca_cert)
        try:
            ids = [client.websocket("/echo") for _ in range(3)]
            for n, stream_id in enumerate(ids):
                client.send_message(stream_id, b"m%d" % n)
            for n, stream_id in enumerate(ids):
                assert client.messages(stream_id, 1) == [b"m%d" % n]
            # A close frame on the first: the gateway answers it and ends the stream.
            client.conn.send_data(ids[0], frame_bytes(8, struct.pack("!H", 1000) + b"bye"), end_stream=True)
            client.flush()
            first = client.streams[ids[0]]
            client.until(lambda: first.ended or first.reset is not None)
            closing = _take_frame(first.data)
            assert first.reset is None and closing is not None and closing[0] == 8
            assert closing[1][:2] == struct.pack("!H", 1000)
            for stream_id in ids[1:]:
                client.send_message(stream_id, b"still")
                assert client.messages(stream_id, 1) == [b"still"]
            gateway.wait_log(r"session end .*close_code=1000.*via=http2")
            assert len(re.findall(r"session start ", gateway.log())) == 3
        finally:
            client.close()

    def test_a_stream_not_read_does_not_stall_the_others(self, gateway: GatewayProcess, pki: Pki) -> None:
        """One session whose client stops reading fills its stream window only; another keeps relaying."""
        client = H2Client(gateway.port(), pki.ca_cert)
        try:
            stalled = client.websocket("/echo")
            busy = client.websocket("/echo")
            client.auto_ack = False  # stop giving windows back: the stalled stream's echo piles up in the gateway
            chunk = b"x" * 60000
            for _ in range(4):
                client.send_message(stalled, chunk)
            client.until(lambda: len(client.streams[stalled].data) >= 60000)
            # The server sent at most the stream's initial window (65535) before waiting.
            assert len(client.streams[stalled].data) <= 65535
            client.auto_ack = True
            # Give the connection window back only (not the stalled stream's).
            client.conn.increment_flow_control_window(len(client.streams[stalled].data))
            client.flush()
            for n in range(20):
                client.send_message(busy, b"b%d" % n)
                assert client.messages(busy, 1) == [b"b%d" % n]
            assert len(client.streams[stalled].data) <= 65535
        finally:
            client.close()

    def test_reset_by_the_client_ends_the_session(self, gateway: GatewayProcess, pki: Pki) -> None:
        """RST_STREAM from the client ends that session (one end line), the connection stays usable."""
        client = H2Client(gateway.port(), pki.ca_cert)
        try:
            first = client.websocket("/echo")
            client.conn.reset_stream(first)
            client.flush()
            gateway.wait_log(r"session end .*client connection lost|session end .*reset")
            again = client.websocket("/echo")
            client.send_message(again, b"after")
            assert client.messages(again, 1) == [b"after"]
        finally:
            client.close()

    def test_guards_refuse_with_their_status(self, gateway: GatewayProcess, pki: Pki) -> None:
        """The same decision as HTTP/1.1: no route 404, allowclients= 403, a foreign Origin too; reason in the body."""
        client = H2Client(gateway.port(), pki.ca_cert)
        try:
            for path, extra, status in (("/nowhere", [], 404), ("/local", [], 403)):
                stream_id = client.websocket(path, extra)
                stream = client.streams[stream_id]
                client.until(lambda: stream.ended)
                assert stream.status == status, (path, stream.status, bytes(stream.data))
                assert bytes(stream.data).startswith(b"%d " % status)
            # No Sec-WebSocket-Version: the handshake check of HTTP/1.1 applies.
            stream_id = client.request([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                                        (":path", "/echo"), (":authority", "localhost")], end=False)
            stream = client.streams[stream_id]
            client.until(lambda: stream.ended)
            assert stream.status == 426
            # The connection is still good.
            ok = client.websocket("/echo")
            assert client.streams[ok].status == 200
        finally:
            client.close()

    @pytest.mark.parametrize("limit, status, reason", [("perclient=1 rate=0", 503, b"client"),
                                                       ("rate=1/m", 429, b"slow down")])
    def test_per_client_limit_and_rate(self, tmp_path: Path, pki: Pki, limit: str, status: int, reason: bytes) -> None:
        """Limit perclient= and rate= count streams as they count HTTP/1.1 upgrades: the second is refused."""
        with TcpServer(echo) as echoing:
            with GatewayProcess(_config(pki, echoing.endpoint, echoing.endpoint, extra=f"Limit {limit}\n"),
                                tmp_path) as gw:
                client = H2Client(gw.port(), pki.ca_cert)
                try:
                    first = client.websocket("/echo")
                    assert client.streams[first].status == 200
                    second = client.websocket("/echo")
                    refused = client.streams[second]
                    client.until(lambda: refused.ended)
                    assert refused.status == status and reason in bytes(refused.data), bytes(refused.data)
                    client.send_message(first, b"still")
                    assert client.messages(first, 1) == [b"still"]
                finally:
                    client.close()

    def test_stream_limit_is_a_directive_and_reloads(self, tmp_path: Path, pki: Pki) -> None:
        """
        ``Limit streams=N`` is the SETTINGS a connection gets: a stream beyond
        it ends the connection with GOAWAY while the sessions below it had
        relayed; a reload gives new connections the new limit.
        """
        with TcpServer(echo) as echoing:
            with GatewayProcess(_config(pki, echoing.endpoint, echoing.endpoint, extra="Limit streams=2\n"),
                                tmp_path) as gw:
                client = H2Client(gw.port(), pki.ca_cert)
                try:
                    assert client.settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 2
                    ids = [client.websocket("/echo") for _ in range(2)]
                    for stream_id in ids:
                        client.send_message(stream_id, b"in")
                        assert client.messages(stream_id, 1) == [b"in"]
                    # A client that ignores the limit (h2 would not let this one open a third stream).
                    client.conn.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 100
                    client.conn.remote_settings.acknowledge()
                    client.request([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                                    (":path", "/echo"), (":authority", "localhost"), ("sec-websocket-version", "13")],
                                   end=False)
                    client.until(lambda: client.goaway is not None)
                    assert client.goaway is not None and client.goaway.error_code == 1  # PROTOCOL_ERROR
                finally:
                    client.close()
                gw.config_path.write_text(gw.config_path.read_text().replace("Limit streams=2", "Limit streams=3"))
                gw.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
                gw.wait_log("reload: configuration .* in force")
                client = H2Client(gw.port(), pki.ca_cert)
                try:
                    assert client.settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 3
                finally:
                    client.close()

    def test_end_stream_on_a_live_session_ends_it(self, tmp_path: Path, pki: Pki) -> None:
        """The client's END_STREAM is the session's FIN: it ends (one end line), its perclient slot is free again."""
        with TcpServer(echo) as echoing:
            with GatewayProcess(_config(pki, echoing.endpoint, echoing.endpoint, extra="Limit perclient=1\n"),
                                tmp_path) as gw:
                client = H2Client(gw.port(), pki.ca_cert)
                try:
                    first = client.websocket("/echo")
                    assert client.streams[first].status == 200
                    client.conn.end_stream(first)
                    client.flush()
                    client.until(lambda: client.streams[first].ended or client.streams[first].reset is not None)
                    gw.wait_log(r"session end ")
                    again = client.websocket("/echo")
                    assert client.streams[again].status == 200
                    client.send_message(again, b"after")
                    assert client.messages(again, 1) == [b"after"]
                finally:
                    client.close()

    @pytest.mark.parametrize("headers, why", [
        ([(":method", "GET"), (":protocol", "websocket"), (":scheme", "https"), (":path", "/echo"),
          (":authority", "localhost")], ":protocol on a GET"),
        ([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":authority", "localhost")],
         "extended CONNECT without :path"),
        ([(":method", "GET"), (":scheme", "https"), (":path", "/demo"), (":authority", "localhost"),
          ("connection", "keep-alive")], "a connection-specific field"),
        ([(":method", "GET"), (":scheme", "https"), (":path", "/demo"), (":authority", "localhost"),
          ("Upper", "x")], "an upper-case field name"),
        ([(":method", "GET"), (":scheme", "https"), ("x", "1"), (":path", "/demo")], "a pseudo-header after a field"),
        ([(":method", "GET"), (":scheme", "https"), (":path", "/demo"), (":bogus", "1")], "an unknown pseudo-header"),
    ])
    def test_malformed_streams_are_reset_alone(self, gateway: GatewayProcess, pki: Pki, headers: Headers,
                                               why: str) -> None:
        """A malformed request is reset with PROTOCOL_ERROR; the connection and its session go on."""
        client = H2Client(gateway.port(), pki.ca_cert)
        try:
            live = client.websocket("/echo")
            bad = client.request(headers, end=False)
            client.until(lambda: client.streams[bad].reset is not None)
            assert client.streams[bad].reset == 1, why  # PROTOCOL_ERROR
            client.send_message(live, b"alive")
            assert client.messages(live, 1) == [b"alive"]
        finally:
            client.close()

    def test_a_connection_error_ends_with_goaway(self, gateway: GatewayProcess, pki: Pki) -> None:
        """A frame h2 must treat as a connection error (DATA on stream 0... here: a bad frame size) gets GOAWAY."""
        client = H2Client(gateway.port(), pki.ca_cert)
        try:
            # A PING frame with 7 bytes of payload: FRAME_SIZE_ERROR, a connection error (RFC 9113 6.7).
            client.sock.sendall(b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + b"\x00" * 7)
            client.until(lambda: client.goaway is not None)
            assert client.goaway is not None and client.goaway.error_code == 6  # FRAME_SIZE_ERROR
        finally:
            client.close()

    def test_goaway_on_drain(self, gateway: GatewayProcess, pki: Pki) -> None:
        """On SIGTERM the connection gets GOAWAY (NO_ERROR) and its live session still relays until closed."""
        client = H2Client(gateway.port(), pki.ca_cert)
        try:
            live = client.websocket("/echo")
            assert gateway.proc is not None
            gateway.proc.send_signal(signal.SIGTERM)
            client.until(lambda: client.goaway is not None)
            messages: list[bytes] = []
            assert client.goaway is not None and client.goaway.error_code == 0
            assert client.goaway.last_stream_id == live
            # h2 (as a client) sends nothing after a GOAWAY: read on with hyperframe.
            client.sock.sendall(DataFrame(live, frame_bytes(2, b"draining")).serialize())
            buffer, payload = b"", bytearray()
            deadline = time.monotonic() + 10
            closes: list[bytes] = []
            while not closes and time.monotonic() < deadline:
                buffer += client.sock.recv(65536)
                while len(buffer) >= 9:
                    frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
                    if len(buffer) < 9 + length:
                        break
                    frame.parse_body(memoryview(buffer[9:9 + length]))
                    buffer = buffer[9 + length:]
                    if isinstance(frame, DataFrame) and frame.stream_id == live:
                        payload += frame.data
                while (message := _take_frame(payload)) is not None:
                    (closes if message[0] == 8 else messages).append(message[1])
            assert messages == [b"draining"]
            # ShutdownTimeout 1: then the gateway closes the session with 1001 on its stream.
            assert closes and closes[0][:2] == struct.pack("!H", 1001)
        finally:
            client.close()


class Http2RequestTests:
    """Plain requests as streams, answered by the same site and decision."""

    def test_files_proxy_limits_and_admin_list(self, tmp_path: Path, pki: Pki) -> None:
        """
        An Alias file larger than every window arrives whole; a ws:// route's
        HTTP proxy answers a GET; maxsessions= refuses the second session with
        its status; the admin list shows the live session with via=http2.
        """
        files = tmp_path / "files"
        files.mkdir()
        big = os.urandom(3 * 1024 * 1024)
        (files / "big.bin").write_bytes(big)
        extra = (f"Alias /files {files}\nProxyPass /app ws://127.0.0.1:{{web}}/\n"
                 "ProxyPass /one {echo} maxsessions=1\nAdminListen tcp:port=0:interface=127.0.0.1\n"
                 f"AccessLog {tmp_path / 'access.log'}\n")
        with TcpServer(echo) as echoing, TcpServer(_http_hello) as web:
            text = _config(pki, echoing.endpoint, echoing.endpoint, extra=extra.replace("{web}", str(web.port))
                           .replace("{echo}", echoing.endpoint))
            with GatewayProcess(text, tmp_path) as gw:
                client = H2Client(gw.port(0), pki.ca_cert)
                try:
                    got = client.get("/files/big.bin")
                    assert got.status == 200 and bytes(got.data) == big
                    proxied = client.get("/app/x")
                    assert proxied.status == 200 and bytes(proxied.data) == b"hello over http/1.1"
                    first = client.websocket("/one")
                    assert client.streams[first].status == 200
                    second = client.websocket("/one")
                    refused = client.streams[second]
                    client.until(lambda: refused.ended)
                    assert refused.status == 503 and b"session limit" in bytes(refused.data), bytes(refused.data)
                    with urllib.request.urlopen(f"http://127.0.0.1:{gw.port(1)}/sessions", timeout=10) as answer:
                        listed = json.loads(answer.read())
                    sessions = listed["sessions"] if isinstance(listed, dict) else listed
                    assert [(e["path"], e.get("via")) for e in sessions] == [("/one", "http2")]
                    access = tmp_path / "access.log"
                    assert wait_until(lambda: access.exists() and "/app/x" in access.read_text())
                    lines = access.read_text().splitlines()
                    assert any('"GET /files/big.bin HTTP/2" 200' in line for line in lines), lines
                finally:
                    client.close()

    def test_demo_page_and_404(self, gateway: GatewayProcess, pki: Pki) -> None:
        """The demo page over a stream (200, HTML); an unrouted path 404 with its reason."""
        client = H2Client(gateway.port(), pki.ca_cert)
        try:
            page = client.get("/demo")
            assert page.status == 200 and b"<html" in bytes(page.data).lower()
            assert page.headers["content-type"].startswith("text/html")
            missing = client.get("/nowhere")
            assert missing.status == 404 and bytes(missing.data).startswith(b"404 ")
            local = client.get("/local")
            assert local.status == 403
            big = client.request([(":method", "GET"), (":scheme", "https"), (":path", "/demo"),
                                  (":authority", "localhost"), ("x-big", "a" * 20000)])
            client.until(lambda: client.streams[big].ended)
            assert client.streams[big].status == 431
            assert client.get("/demo").status == 200  # the connection goes on
            posted = client.request([(":method", "POST"), (":scheme", "https"), (":path", "/demo"),
                                     (":authority", "localhost")], end=False)
            client.send_body(posted, b"z" * 70000)
            client.until(lambda: client.streams[posted].ended or client.streams[posted].reset is not None)
            assert client.streams[posted].status == 413
        finally:
            client.close()

    def test_http11_clients_of_an_http2_listener_upgrade(self, gateway: GatewayProcess, pki: Pki) -> None:
        """A client asking for http/1.1 only, or for no ALPN, gets an HTTP/1.1 upgrade on an http2=on listener."""
        for alpn in (("http/1.1",), ()):
            client = H2Client(gateway.port(), pki.ca_cert, alpn=alpn)
            try:
                assert client.alpn == (alpn[0] if alpn else None)
                client.sock.sendall(raw_handshake("/echo", gateway.port()))
                answer = b""
                while b"\r\n\r\n" not in answer:
                    chunk = client.sock.recv(65536)
                    assert chunk, answer
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 101 ")
            finally:
                client.close()
        started = re.findall(r"session start .*", gateway.wait_log(r"(?s)(session start .*){2}").group(0))
        assert started and not any("via=http2" in line for line in started)

    def test_certname_uses_the_connections_certificate(self, tmp_path: Path, pki: Pki) -> None:
        """certname= admits a stream of a connection with a matching client certificate; 403 to one without."""
        alice = make_client_cert(pki, tmp_path / "clients", "alice")
        with TcpServer(echo) as echoing:
            text = (f"Listen ssl:port=0:interface=127.0.0.1:privateKey={pki.server_key}:certKey={pki.server_cert}"
                    f":extraCertChain={pki.chain} clientca={pki.ca_cert} clientcert=optional http2=on\n"
                    f"ProxyPass /ops {echoing.endpoint} certname=cn:alice\n")
            with GatewayProcess(text, tmp_path) as gw:
                for certificate, status in ((alice, 200), (None, 403)):
                    client = H2Client(gw.port(), pki.ca_cert, certificate=certificate)
                    try:
                        stream_id = client.websocket("/ops")
                        assert client.streams[stream_id].status == status
                        page = client.get("/ops")  # a plain request: the same guard
                        assert page.status == (426 if status == 200 else 403), (page.status, bytes(page.data))
                    finally:
                        client.close()
                gw.wait_log(r"session start .*tls_client=.*alice.*via=http2")

    def test_lookup_and_redirect(self, tmp_path: Path, pki: Pki) -> None:
        """/lookup answers its JSON over a stream; a session for a desktop another gateway owns gets its 307."""
        port = free_port()
        tokens = tmp_path / "tokens"
        tokens.write_text("desk2: 127.0.0.2:5902\n")
        text = (f"Listen ssl:port={port}:interface=127.0.0.1:privateKey={pki.server_key}:certKey={pki.server_cert}"
                f":extraCertChain={pki.chain} http2=on\n"
                f"TokenSource files file {tokens} allow=127.0.0.2:5902\nTokenRoute /vnc files\n"
                f"TokenLookup /lookup /vnc\nGatewayURL wss://localhost:{port}\n"
                f"GatewayOwner wss://localhost:{port} 127.0.0.1\nGatewayOwner wss://other.example 127.0.0.2\n")
        with GatewayProcess(text, tmp_path) as gw:
            client = H2Client(gw.port(), pki.ca_cert)
            try:
                looked_up = client.get("/lookup?token=desk2")
                assert looked_up.status == 200, bytes(looked_up.data)
                assert json.loads(bytes(looked_up.data)) == {"url": "wss://other.example/vnc?token=desk2",
                                                             "gateway": "wss://other.example"}
                stream_id = client.websocket("/vnc?token=desk2")
                redirected = client.streams[stream_id]
                client.until(lambda: redirected.ended)
                assert redirected.status == 307
                assert redirected.headers["location"] == "wss://other.example/vnc?token=desk2"
            finally:
                client.close()

    def test_http2_off_offers_http11_only(self, tmp_path: Path, pki: Pki) -> None:
        """Without http2=on ALPN chooses http/1.1 even when the client asks for h2 first."""
        with TcpServer(echo) as echoing:
            with GatewayProcess(_config(pki, echoing.endpoint, echoing.endpoint, http2="off"), tmp_path) as gw:
                client = H2Client(gw.port(), pki.ca_cert)
                try:
                    assert client.alpn == "http/1.1"
                finally:
                    client.close()


class _Gateway:
    """Stands in for GatewayFactory.upgrade: keeps the stream transports it is given."""

    def __init__(self) -> None:
        self.streams: list[StreamTransport] = []

    def upgrade(self, transport: StreamTransport, head: object, early: bytes, via: str = "") -> None:
        assert via == "http2"
        self.streams.append(transport)


@implementer(IPushProducer)
class _Producer:
    """A backend's producer as the session registers it: records pauses."""

    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class _FullAt(StringTransport):
    """A transport that pauses its producer once more than bound bytes wait, as Twisted's do above bufferSize."""

    def __init__(self, bound: int) -> None:
        super().__init__()
        self.bound = bound

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) > self.bound and self.producer is not None and self.producerState == "producing":
            self.producer.pauseProducing()


class _Writes(StringTransport):
    """A transport that counts write calls (writeSequence is one)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.writes += 1
        super().write(b"".join(data))


class _Session:
    """A session as the stream sees it: what it received and how it was lost."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Optional[Failure] = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        assert self.lost is None
        self.lost = reason


def _written(connection: Http2Connection, transport: StringTransport) -> bytes:
    """What the connection has written once this turn of its reactor (a Clock) is over."""
    connection.server.reactor.advance(0)
    return transport.value()


def _extended_connect(client: H2Connection, connection: Http2Connection) -> int:
    """A WebSocket opened by extended CONNECT (RFC 8441) on /x, given to the connection; its stream id."""
    stream_id: int = client.get_next_available_stream_id()
    client.send_headers(stream_id, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                                    (":path", "/x"), (":authority", "a"), ("sec-websocket-version", "13")])
    connection.dataReceived(client.data_to_send())
    return stream_id


class Http2FlowControlTests:
    """The glue in memory (StringTransport, Clock): windows, bounds and the producer chain."""

    def _connect(self, clock: Optional[Clock] = None, transport: Optional[StringTransport] = None
                 ) -> tuple[H2Connection, Http2Connection, StringTransport, _Gateway]:
        gateway = _Gateway()
        server = Http2Server(gateway, site=None, reactor=clock or Clock(), idle_timeout=10)
        transport = transport or StringTransport()
        connection = Http2Connection(server)
        connection.makeConnection(transport)
        client = H2Connection(H2Configuration(client_side=True))
        client.initiate_connection()
        client.receive_data(transport.value())
        transport.clear()
        connection.dataReceived(client.data_to_send())
        return client, connection, transport, gateway

    def _sessions(self, client: H2Connection, connection: Http2Connection, gateway: _Gateway, count: int
                  ) -> list[tuple[int, StreamTransport]]:
        """count extended CONNECT streams, each answered 101 by its session."""
        opened = []
        for _ in range(count):
            stream_id = _extended_connect(client, connection)
            stream = gateway.streams[-1]
            stream.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            opened.append((stream_id, stream))
        return opened

    def test_the_answers_of_one_turn_go_out_in_one_write(self) -> None:
        """Small writes of several streams in one reactor turn are one transport write at the turn's end, in order."""
        transport = _Writes()
        client, connection, _, gateway = self._connect(transport=transport)
        opened = self._sessions(client, connection, gateway, 3)
        client.receive_data(_written(connection, transport))
        transport.clear()
        transport.writes = 0
        for n, (_, stream) in enumerate(opened):
            stream.write(b"key %d" % n)
        assert transport.writes == 0
        connection.server.reactor.advance(0)
        assert transport.writes == 1
        events = client.receive_data(transport.value())
        assert [(e.stream_id, e.data) for e in events if isinstance(e, DataReceived)] == \
            [(stream_id, b"key %d" % n) for n, (stream_id, _) in enumerate(opened)]

    def test_data_for_a_stream_h2_has_closed_is_dropped_whole(self) -> None:
        """
        Writes that reach a stream h2 has already closed (the DATA frame's
        header refused) leave no payload on the wire: the client reads what
        went before and the connection goes on.
        """
        client, connection, transport, gateway = self._connect()
        [(stream_id, stream), (other_id, other)] = self._sessions(client, connection, gateway, 2)
        client.receive_data(_written(connection, transport))
        transport.clear()
        connection._h2.reset_stream(stream_id)  # (as if h2 had ended it behind the stream's back)
        queue = deque([b"a" * 100, b"b" * 100])
        assert connection.send(stream_id, queue, False) == (0, True)
        assert not queue
        other.write(b"still here")
        events = client.receive_data(_written(connection, transport))
        assert [type(e).__name__ for e in events] == ["StreamReset", "DataReceived"]
        assert events[1].stream_id == other_id and events[1].data == b"still here"

    def test_a_write_batch_goes_at_once_and_a_goaway_after_what_waits(self) -> None:
        """From WRITE_BATCH bytes the output is written at once; a drain's GOAWAY follows what was waiting."""
        client, connection, transport, gateway = self._connect()
        [(stream_id, stream)] = self._sessions(client, connection, gateway, 1)
        client.receive_data(_written(connection, transport))
        transport.clear()
        # Windows for all of it (WRITE_BATCH is more than the default 64 KiB stream window).
        client.increment_flow_control_window(1 << 20)
        client.increment_flow_control_window(1 << 20, stream_id)
        connection.dataReceived(client.data_to_send())
        client.receive_data(_written(connection, transport))
        transport.clear()
        stream.write(b"k" * 100)
        assert transport.value() == b""
        stream.write(b"x" * WRITE_BATCH)
        assert len(transport.value()) > WRITE_BATCH  # not waiting for the turn's end
        stream.write(b"last")
        connection.go_away()
        events = client.receive_data(transport.value())
        data = b"".join(e.data or b"" for e in events if isinstance(e, DataReceived))
        assert data == b"k" * 100 + b"x" * WRITE_BATCH + b"last"
        assert isinstance(events[-1], ConnectionTerminated) and events[-1].error_code == 0

    def test_queued_writes_fill_data_frames(self) -> None:
        """Writes that waited for the window go out in full DATA frames; a header and its payload share one."""
        client, connection, transport, gateway = self._connect()
        client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
        connection.dataReceived(client.data_to_send())
        [(stream_id, stream)] = self._sessions(client, connection, gateway, 1)
        client.receive_data(_written(connection, transport))
        transport.clear()
        for n in range(10):
            stream.write(b"%d" % n * 1000)
        stream.writeSequence([b"\x82\x7f" + (40000).to_bytes(8, "big"), b"p" * 40000])
        client.increment_flow_control_window(1 << 20, stream_id)
        connection.dataReceived(client.data_to_send())
        sizes, data = [], _written(connection, transport)
        for event in client.receive_data(data):
            if isinstance(event, DataReceived):
                sizes.append(len(event.data or b""))
        assert sizes == [16384, 16384, 16384, 858]  # 50,010 bytes, not 12 frames of 1000s, 10 and 40000
        assert stream.queued == 0

    def test_writes_wait_for_the_window_and_pause_the_producer(self) -> None:
        """Beyond the client's window a stream queues; beyond STREAM_BUFFER its producer is paused until acks."""
        client, connection, transport, gateway = self._connect()
        stream_id = _extended_connect(client, connection)
        [stream] = gateway.streams
        producer = _Producer()
        stream.registerProducer(producer, True)
        stream.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        stream.write(b"x" * (STREAM_BUFFER + 100000))
        received = 0
        for event in client.receive_data(_written(connection, transport)):
            if isinstance(event, DataReceived):
                received += len(event.data or b"")
        transport.clear()
        assert received == 65535  # the client's initial stream window, no more
        assert producer.paused and stream.queued == STREAM_BUFFER + 100000 - 65535
        # The client reads: windows come back, the queue drains, the producer resumes.
        while stream.queued:
            client.increment_flow_control_window(65535, stream_id)
            client.increment_flow_control_window(65535)
            connection.dataReceived(client.data_to_send())
            for event in client.receive_data(_written(connection, transport)):
                if isinstance(event, DataReceived):
                    received += len(event.data or b"")
            transport.clear()
        assert received == STREAM_BUFFER + 100000 and not producer.paused

    def test_a_paused_reader_holds_at_most_its_window(self) -> None:
        """A stream whose reader is paused acknowledges nothing: the client cannot send past the stream window."""
        client, connection, transport, gateway = self._connect()
        stream_id = _extended_connect(client, connection)
        client.receive_data(_written(connection, transport))
        transport.clear()
        # Paused since the upgrade (as the front pauses an HTTP/1.1 upgrade): nothing acknowledged.
        sent = 0
        while client.local_flow_control_window(stream_id) > 0:
            size = min(client.local_flow_control_window(stream_id), client.max_outbound_frame_size)
            client.send_data(stream_id, b"y" * size)
            sent += size
        connection.dataReceived(client.data_to_send())
        client.receive_data(_written(connection, transport))
        assert sent == STREAM_WINDOW and client.local_flow_control_window(stream_id) == 0
        # A stream reset by the server's session ends it alone.
        stream = gateway.streams[0]
        stream.abortConnection()
        events = client.receive_data(_written(connection, transport))
        assert any(isinstance(e, StreamReset) and e.stream_id == stream_id for e in events)

    def test_a_client_that_does_not_read_is_not_read(self) -> None:
        """While the write buffer is full nothing is read or answered; then the answers stop at the buffer's bound."""
        transport = _FullAt(4096)
        client, connection, _, gateway = self._connect(transport=transport)
        client.receive_data(transport.value())  # the SETTINGS ACK
        transport.clear()
        assert transport.producer is connection
        connection.pauseProducing()  # what the TLS transport does when its buffer is full
        assert transport.producerState == "paused"
        for n in range(1000):
            client.ping(b"%08d" % n)
        pings = client.data_to_send()
        for at in range(0, len(pings), 1000):  # what the transport still hands over after the pause
            connection.dataReceived(pings[at:at + 1000])
        assert transport.value() == b""  # not one PING read, so none answered
        answered = rounds = 0
        while answered < 1000:
            rounds += 1
            connection.resumeProducing()  # the client read what was written
            assert transport.producerState == "paused" or answered + len(transport.value()) // 17 == 1000
            written = transport.value()
            # At most one step of held input read past the bound: 4096 bytes of PINGs, 17 bytes each.
            assert len(written) <= 4096 + (4096 // 17 + 1) * 17
            acks = [e for e in client.receive_data(written) if isinstance(e, PingAckReceived)]
            assert [a.ping_data for a in acks] == [b"%08d" % n for n in range(answered, answered + len(acks))]
            answered += len(acks)
            transport.clear()
        assert rounds >= 4 and connection._input_size == 0  # 17,000 bytes of answers, at most ~8 KiB per round

    def test_an_idle_connection_is_closed_with_goaway(self) -> None:
        """Without streams for idle_timeout seconds the connection gets GOAWAY (NO_ERROR) and is closed."""
        clock = Clock()
        client, connection, transport, gateway = self._connect(clock)
        clock.advance(9)
        assert not transport.disconnecting
        clock.advance(1)
        events = client.receive_data(transport.value())
        assert [e.error_code for e in events if isinstance(e, ConnectionTerminated)] == [0]
        assert transport.disconnecting

    def test_a_closing_connection_the_client_does_not_read_is_aborted(self) -> None:
        """After the idle GOAWAY, a protocol error or the client's GOAWAY, the close waits CLOSE_TIMEOUT, then aborts."""
        for cause in ("idle", "error", "goaway"):
            clock = Clock()
            client, connection, transport, gateway = self._connect(clock)
            if cause == "idle":
                clock.advance(10)
            elif cause == "error":
                connection.dataReceived(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")  # zero increment
            else:
                client.close_connection()
                connection.dataReceived(client.data_to_send())
            assert transport.disconnecting and not transport.disconnected, cause
            clock.advance(CLOSE_TIMEOUT - 0.5)
            assert not transport.disconnected, cause
            clock.advance(0.5)
            assert transport.disconnected, cause  # StringTransport.abortConnection
            connection.connectionLost()
            assert not clock.getDelayedCalls(), cause

    def test_a_connection_lost_in_time_cancels_the_abort(self) -> None:
        """A connection that closes before CLOSE_TIMEOUT leaves no abort pending."""
        clock = Clock()
        client, connection, transport, gateway = self._connect(clock)
        clock.advance(10)
        assert clock.getDelayedCalls()
        connection.connectionLost()
        assert not clock.getDelayedCalls()

    def test_an_answer_the_client_does_not_take_is_reset(self) -> None:
        """A complete request whose answer waits on a closed stream window is reset (CANCEL) after idle_timeout."""
        clock = Clock()
        root = Resource()
        root.putChild(b"f", Data(b"x" * 300000, "text/plain"))
        site = Site(root)
        server = Http2Server(_Gateway(), site=site, reactor=clock, idle_timeout=10)
        transport = StringTransport()
        connection = Http2Connection(server)
        connection.makeConnection(transport)
        client = H2Connection(H2Configuration(client_side=True))
        client.initiate_connection()
        client.receive_data(_written(connection, transport))
        transport.clear()
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, [(":method", "GET"), (":scheme", "https"), (":path", "/f"),
                                        (":authority", "a")], end_stream=True)
        connection.dataReceived(client.data_to_send())
        received = sum(len(e.data or b"") for e in client.receive_data(_written(connection, transport))
                       if isinstance(e, DataReceived))
        transport.clear()
        assert received == STREAM_WINDOW  # the rest waits for a window the client never gives
        clock.advance(9)
        # The client reads a little: the deadline starts again.
        client.increment_flow_control_window(1000, stream_id)
        client.increment_flow_control_window(1000)
        connection.dataReceived(client.data_to_send())
        assert sum(len(e.data or b"") for e in client.receive_data(_written(connection, transport))
                   if isinstance(e, DataReceived)) == 1000
        transport.clear()
        clock.advance(9)
        assert not _written(connection, transport)
        clock.advance(1)
        events = client.receive_data(_written(connection, transport))
        assert [e.error_code for e in events if isinstance(e, StreamReset)] == [ErrorCodes.CANCEL]
        assert not connection._streams
        assert not transport.disconnecting  # the connection goes on

    def test_the_clients_end_stream_ends_a_live_session(self) -> None:
        """END_STREAM on a live session is its FIN: connectionLost(ConnectionDone), our side ended, the stream slot free."""
        client, connection, transport, gateway = self._connect()
        stream_id = _extended_connect(client, connection)
        [stream] = gateway.streams
        session = _Session()
        stream.protocol = session
        stream.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        stream.resumeProducing()  # the session is live
        client.receive_data(_written(connection, transport))
        transport.clear()
        client.send_data(stream_id, b"last", end_stream=True)
        connection.dataReceived(client.data_to_send())
        assert session.received == b"last"
        assert session.lost is not None and session.lost.check(ConnectionDone)
        events = client.receive_data(_written(connection, transport))
        assert any(isinstance(e, StreamEnded) and e.stream_id == stream_id for e in events)
        assert not connection._streams and connection._h2.open_inbound_streams == 0

    def test_the_clients_end_stream_before_the_answer_resets_the_stream(self) -> None:
        """An extended CONNECT ended before the session answers: the session is lost, the stream reset (CANCEL)."""
        client, connection, transport, gateway = self._connect()
        stream_id = _extended_connect(client, connection)
        [stream] = gateway.streams
        session = _Session()
        stream.protocol = session
        client.receive_data(_written(connection, transport))
        transport.clear()
        client.end_stream(stream_id)
        connection.dataReceived(client.data_to_send())
        assert session.lost is not None and session.lost.check(ConnectionDone)
        events = client.receive_data(_written(connection, transport))
        assert [e.error_code for e in events if isinstance(e, StreamReset)] == [ErrorCodes.CANCEL]
        assert not connection._streams and connection._h2.open_inbound_streams == 0

    def test_the_clients_end_stream_waits_for_what_a_paused_session_holds(self) -> None:
        """A paused session gets what was held first, then the end."""
        client, connection, transport, gateway = self._connect()
        stream_id = _extended_connect(client, connection)
        [stream] = gateway.streams
        session = _Session()
        stream.protocol = session
        stream.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        stream.write(b"z" * (STREAM_WINDOW + 10))  # more than the client's window: our side cannot end at once
        client.send_data(stream_id, b"held", end_stream=True)
        connection.dataReceived(client.data_to_send())
        assert session.lost is None and session.received == b""
        transport.clear()
        stream.resumeProducing()
        assert session.received == b"held" and session.lost is not None and session.lost.check(ConnectionDone)
        events = client.receive_data(_written(connection, transport))
        assert [e.error_code for e in events if isinstance(e, StreamReset)] == [ErrorCodes.NO_ERROR]
        assert not connection._streams and connection._h2.open_inbound_streams == 0

    def test_rapid_reset_ends_the_connection(self) -> None:
        """More than max_streams resets of young streams within RESET_WINDOW: GOAWAY ENHANCE_YOUR_CALM, then closed."""
        clock = Clock()
        client, connection, transport, gateway = self._connect(clock)
        connect = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":path", "/x"),
                   (":authority", "a"), ("sec-websocket-version", "13")]
        transport.clear()
        for n in range(101):
            stream_id = client.get_next_available_stream_id()
            client.send_headers(stream_id, connect)
            client.reset_stream(stream_id)
            connection.dataReceived(client.data_to_send())
            clock.advance(0.1)
            if n < 100:
                assert not transport.disconnecting, n
        assert len(gateway.streams) == 101 and transport.disconnecting
        events = client.receive_data(transport.value())
        assert [e.error_code for e in events if isinstance(e, ConnectionTerminated)] == [ErrorCodes.ENHANCE_YOUR_CALM]

    def test_resets_of_older_streams_or_spread_out_are_allowed(self) -> None:
        """Resets of streams older than RESET_AGE, or of young ones spread over more than RESET_WINDOW, are fine."""
        clock = Clock()
        client, connection, transport, gateway = self._connect(clock)
        connect = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":path", "/x"),
                   (":authority", "a"), ("sec-websocket-version", "13")]
        for n in range(150):
            stream_id = client.get_next_available_stream_id()
            client.send_headers(stream_id, connect)
            connection.dataReceived(client.data_to_send())
            clock.advance(RESET_AGE)  # old enough
            client.reset_stream(stream_id)
            connection.dataReceived(client.data_to_send())
        for n in range(150):
            stream_id = client.get_next_available_stream_id()
            client.send_headers(stream_id, connect)
            client.reset_stream(stream_id)
            connection.dataReceived(client.data_to_send())
            clock.advance(RESET_WINDOW / 90)  # young, but at most 90 of them within a window
        assert not transport.disconnecting

    def test_a_stream_keeps_the_connection(self) -> None:
        """A live stream keeps the connection past idle_timeout; its end starts the wait again."""
        clock = Clock()
        client, connection, transport, gateway = self._connect(clock)
        stream_id = _extended_connect(client, connection)
        clock.advance(60)
        assert not transport.disconnecting
        gateway.streams[0].abortConnection()
        clock.advance(10)
        assert transport.disconnecting
