"""
ws:// and wss:// backends end to end: a real ``twistd tunnelgw`` process
between the independent ``websockets`` library as client and as backend
server, on loopback.
"""

from __future__ import annotations

import json
import queue
import ssl
import threading
import urllib.error
import urllib.request
from http import HTTPStatus
from typing import Any, Iterator, Optional
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.sync.server import Server, ServerConnection, serve

from support import GatewayProcess, TcpServer, free_port, make_pki, silent, rss_bytes

MiB = 1024 * 1024


def _select(connection: ServerConnection, offered: Any) -> Any:
    """Choose chat, superchat or base64 when offered; speak no subprotocol otherwise."""
    return next((name for name in offered if name in ("chat", "superchat", "base64")), None)


class Backend:
    """
    A ``websockets`` server in a thread; what each connection does is chosen
    by the first segment of its path.

    :ivar closes: (path, close code, close reason) of each ended connection.
    """

    def __init__(self, host: str = "127.0.0.1", tls: Optional[ssl.SSLContext] = None) -> None:
        self.closes: queue.Queue[tuple[str, Optional[int], Optional[str]]] = queue.Queue()
        self.server: Server = serve(self._handle, host, 0, ssl=tls, select_subprotocol=_select,
                                    process_request=self._process_request, max_size=None, compression=None,
                                    ping_interval=None, logger=None)
        self.port = self.server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _process_request(self, connection: ServerConnection, request: Any) -> Any:
        path = urlsplit(request.path).path
        if path.startswith("/forbidden"):
            return connection.respond(HTTPStatus.FORBIDDEN, "go away\n")
        if path.startswith("/page"):
            return connection.respond(HTTPStatus.OK, "a page for " + request.path + "\n")
        return None

    def _handle(self, ws: ServerConnection) -> None:
        split = urlsplit(ws.request.path)
        kind = split.path.strip("/").split("/")[0]
        query = parse_qs(split.query)
        try:
            if kind == "echo":
                for message in ws:
                    ws.send(message)
            elif kind == "info":
                headers = {k.lower(): v for k, v in ws.request.headers.raw_items()}
                ws.send(json.dumps({"path": ws.request.path, "headers": headers, "subprotocol": ws.subprotocol}))
                for _ in ws:
                    pass
            elif kind == "closer":
                message = ws.recv()
                code, _, reason = str(message).partition(" ")
                ws.close(int(code), reason)
            elif kind == "big":
                received = frames = 0
                for fragment in ws.recv_streaming():
                    received += len(fragment)
                    frames += 1
                ws.send(f"{received} {frames}")
                size, frame = int(query["size"][0]), int(query["frame"][0])
                ws.send(bytes(frame) for _ in range(size // frame))
                for _ in ws:
                    pass
            elif kind == "watch":
                for _ in ws:
                    pass
        except ConnectionClosed:
            pass
        finally:
            self.closes.put((split.path, ws.close_code, ws.close_reason))

    def stop(self) -> None:
        self.server.shutdown()
        self._thread.join(5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_pki(tmp_path_factory.mktemp("pki"), names=["localhost"], ips=["127.0.0.1"])


@pytest.fixture(scope="module")
def backends(pki: Any) -> Iterator[dict[str, Any]]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.fullchain, pki.server_key)
    plain, tls, tls_other = Backend(), Backend(tls=context), Backend("127.0.0.2", tls=context)
    quiet = TcpServer(silent)
    try:
        yield {"plain": plain, "tls": tls, "tls_other": tls_other, "silent": quiet}
    finally:
        for backend in (plain, tls, tls_other):
            backend.stop()
        quiet.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, backends: dict[str, Any], pki: Any) -> Iterator[GatewayProcess]:
    plain, tls, other = backends["plain"].port, backends["tls"].port, backends["tls_other"].port
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
ProxyPass /ws ws://127.0.0.1:{plain}
ProxyPass /nofwd ws://127.0.0.1:{plain}/info forward=none
ProxyPass /dead ws://127.0.0.1:{free_port()}/ connecttimeout=3
ProxyPass /hang ws://127.0.0.1:{backends['silent'].port}/ connecttimeout=3
ProxyPassMatch ^/n/(\\d+)/(\\w+)$ ws://127.0.0.1:$1/$2
ProxyPass /tls wss://127.0.0.1:{tls}/ cafile={pki.ca_cert}
ProxyPass /tls-platform wss://127.0.0.1:{tls}/
ProxyPass /tls-wrong-name wss://127.0.0.2:{other}/ cafile={pki.ca_cert}
ProxyPass /tls-unverified wss://127.0.0.2:{other}/ verify=off
"""
    with GatewayProcess(config, tmp_path_factory.mktemp("gw")) as gw:
        yield gw


def url(gw: GatewayProcess, path: str) -> str:
    return f"ws://127.0.0.1:{gw.port()}{path}"


def _refusal(gw: GatewayProcess, path: str) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        connect(url(gw, path), open_timeout=10)
    return info.value


def test_text_and_binary_preserved(gateway: GatewayProcess) -> None:
    """Text comes back as text and binary as binary, byte for byte, fragmented or not."""
    with connect(url(gateway, "/ws/echo"), open_timeout=5, max_size=None) as ws:
        ws.send("h\u00e9llo \U0001f600")
        assert ws.recv(timeout=5) == "h\u00e9llo \U0001f600"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(timeout=5) == b"\x00\x01\xff"
        ws.send(b"")
        assert ws.recv(timeout=5) == b""
        ws.send(iter(["fr", "ag", "\u00e9"]))
        assert ws.recv(timeout=5) == "frag\u00e9"
        ws.send(iter([b"a" * 70000, b"b" * 10]))
        assert ws.recv(timeout=5) == b"a" * 70000 + b"b" * 10
        assert ws.ping(b"hop").wait(5)
    gateway.wait_log(r"session end .*path=/ws/echo")


def test_path_remainder_and_query_passed_on(gateway: GatewayProcess, backends: dict[str, Any]) -> None:
    """The path after the route's prefix and the query are appended to the backend URL; $N works in URLs."""
    with connect(url(gateway, "/ws/info/x%20y?a=1&b=%C3%A9"), open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["path"] == "/info/x%20y?a=1&b=%C3%A9"
    with connect(url(gateway, f"/n/{backends['plain'].port}/info"), open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["path"] == "/info"


def test_base64_between_websocket_peers_is_theirs(gateway: GatewayProcess) -> None:
    """When client and ws:// backend agree on base64, frames pass untouched (decoding is for byte-stream backends)."""
    with connect(url(gateway, "/ws/echo"), subprotocols=["base64"], open_timeout=5) as ws:
        assert ws.subprotocol == "base64"
        for text in ("aGVsbG8=", "AAEC" * 5000):
            ws.send(text)
            assert ws.recv(timeout=5) == text


def test_subprotocol_passthrough(gateway: GatewayProcess) -> None:
    """The client's offer reaches the backend and the backend's choice reaches the client."""
    with connect(url(gateway, "/ws/info"), subprotocols=["nope", "superchat"], open_timeout=5) as ws:
        info = json.loads(ws.recv(timeout=5))
        assert info["headers"]["sec-websocket-protocol"] == "nope,superchat"
        assert info["subprotocol"] == "superchat"
        assert ws.subprotocol == "superchat"
    with connect(url(gateway, "/ws/info"), open_timeout=5) as ws:
        assert ws.subprotocol is None
        assert "sec-websocket-protocol" not in json.loads(ws.recv(timeout=5))["headers"]


def test_forwarded_headers(gateway: GatewayProcess) -> None:
    """The backend sees X-Forwarded-For (extended), X-Forwarded-Proto, Forwarded, Origin and Cookie."""
    own = f"http://127.0.0.1:{gateway.port()}"  # a page served by the gateway itself (same origin)
    with connect(url(gateway, "/ws/info"), origin=own, open_timeout=5,  # type: ignore[arg-type]
                 additional_headers={"Cookie": "session=abc", "X-Forwarded-For": "10.1.2.3"}) as ws:
        headers = json.loads(ws.recv(timeout=5))["headers"]
    assert headers["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["forwarded"] == f'for=127.0.0.1;proto=http;host="127.0.0.1:{gateway.port()}"'
    assert headers["origin"] == own
    assert headers["cookie"] == "session=abc"


def test_forward_none(gateway: GatewayProcess) -> None:
    """With forward=none the backend gets none of the forwarded headers, nor Origin or Cookie."""
    with connect(url(gateway, "/nofwd"), origin=f"http://127.0.0.1:{gateway.port()}", open_timeout=5,  # type: ignore[arg-type]
                 additional_headers={"Cookie": "session=abc"}) as ws:
        headers = json.loads(ws.recv(timeout=5))["headers"]
    assert not {"x-forwarded-for", "x-forwarded-proto", "forwarded", "origin", "cookie"} & set(headers)


def test_close_from_backend_passes_through(gateway: GatewayProcess) -> None:
    """A backend's close code and reason reach the client unchanged."""
    with connect(url(gateway, "/ws/closer"), open_timeout=5) as ws:
        ws.send("4002 backend says bye")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4002, "backend says bye")


def test_close_from_client_passes_through(gateway: GatewayProcess, backends: dict[str, Any]) -> None:
    """A client's close code and reason reach the backend unchanged, both custom and standard codes."""
    closes = backends["plain"].closes
    for code, reason in ((4001, "client says bye"), (1001, "tab closed"), (1000, "")):
        with connect(url(gateway, f"/ws/watch/{code}"), open_timeout=5) as ws:
            ws.close(code, reason)
        seen = [closes.get(timeout=5) for _ in range(1)]
        while seen[-1][0] != f"/watch/{code}":
            seen.append(closes.get(timeout=5))
        assert seen[-1][1:] == (code, reason)


def test_client_drop_gives_backend_going_away(gateway: GatewayProcess, backends: dict[str, Any]) -> None:
    """A client that vanishes without a close makes the backend get 1001."""
    closes = backends["plain"].closes
    ws = connect(url(gateway, "/ws/watch/drop"), open_timeout=5)
    ws.socket.close()
    while True:
        path, code, reason = closes.get(timeout=10)
        if path == "/watch/drop":
            break
    assert code == 1001 and reason is not None and "client connection lost" in reason


def test_backend_http_error_gives_502(gateway: GatewayProcess) -> None:
    """A backend answering 403 makes the client's handshake fail with 502 naming the 403."""
    error = _refusal(gateway, "/ws/forbidden")
    assert error.response.status_code == 502
    assert "403 Forbidden" in error.response.reason_phrase
    gateway.wait_log(r"handshake refused .*path=/ws/forbidden status=502 .*403 Forbidden")


def test_nothing_listening_gives_502(gateway: GatewayProcess) -> None:
    """A backend port with nothing listening makes the client's handshake fail with 502."""
    error = _refusal(gateway, "/dead")
    assert error.response.status_code == 502
    assert "refused" in error.response.reason_phrase


def test_backend_handshake_timeout_gives_504(gateway: GatewayProcess) -> None:
    """A backend that accepts but never answers its handshake gives 504 after connecttimeout."""
    error = _refusal(gateway, "/hang")
    assert error.response.status_code == 504
    assert "timed out" in error.response.reason_phrase


def test_wss_with_test_ca(gateway: GatewayProcess) -> None:
    """A wss backend whose certificate chains to cafile= is accepted."""
    with connect(url(gateway, "/tls/echo"), open_timeout=5) as ws:
        ws.send("over tls")
        assert ws.recv(timeout=5) == "over tls"


def test_wss_platform_trust_refuses_test_ca(gateway: GatewayProcess) -> None:
    """Without cafile= the platform's trust store is used, which does not know the test CA: 502."""
    error = _refusal(gateway, "/tls-platform/echo")
    assert error.response.status_code == 502
    assert "backend TLS handshake failed (certificate verify failed)" in error.response.reason_phrase


def test_wss_wrong_hostname_refused(gateway: GatewayProcess) -> None:
    """A certificate from the trusted CA but for another address is refused (502)."""
    error = _refusal(gateway, "/tls-wrong-name/echo")
    assert error.response.status_code == 502
    assert "backend TLS handshake failed (certificate is not valid for 127.0.0.2)" in error.response.reason_phrase


def test_wss_verify_off(gateway: GatewayProcess) -> None:
    """verify=off accepts the same certificate the checked route refuses."""
    with connect(url(gateway, "/tls-unverified/echo"), open_timeout=5) as ws:
        ws.send(b"unchecked")
        assert ws.recv(timeout=5) == b"unchecked"


def test_plain_http_is_proxied(gateway: GatewayProcess) -> None:
    """A plain GET on a ws:// route is reverse-proxied to the backend's http:// URL."""
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.port()}/ws/page/x?q=1", timeout=5) as response:
        assert response.status == 200
        assert response.read() == b"a page for /page/x?q=1\n"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{gateway.port()}/dead/page", timeout=10)
    assert info.value.code == 502


def test_large_fragmented_message_bounded_memory(gateway: GatewayProcess) -> None:
    """
    A 96 MiB message in 384 frames goes up and another comes down, both
    streamed by the ends, while the gateway's resident memory grows far less
    than a message.
    """
    size, frame = 96 * MiB, 256 * 1024
    base = rss_bytes(gateway.pid)
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_bytes(gateway.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with connect(url(gateway, f"/ws/big?size={size}&frame={frame}"), open_timeout=5, max_size=None) as ws:
            ws.send(bytes(frame) for _ in range(size // frame))
            # websockets ends a streamed message with an empty FIN frame; the
            # gateway keeps frame boundaries, so the backend sees it too.
            assert ws.recv(timeout=30) == f"{size} {size // frame + 1}"
            received = frames = 0
            for fragment in ws.recv_streaming():
                received += len(fragment)
                frames += 1
            assert (received, frames) == (size, size // frame + 1)
    finally:
        done.set()
        sampler.join(5)
    growth = peak[0] - base
    print(f"gateway RSS {base / MiB:.1f} MiB, peak growth {growth / MiB:.1f} MiB for 2 x {size // MiB} MiB")
    assert growth < 32 * MiB
