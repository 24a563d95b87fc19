"""
Plain HTTP on routes to ws:// and wss:// backends, end to end: a real
``twistd tunnelgw`` process reverse-proxies to Python's ``http.server`` (in a
thread, over TCP or TLS) on loopback, with ``http.client`` and raw sockets as
clients.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Optional
from urllib.parse import parse_qs, urlsplit

import pytest

from support import REPO, GatewayProcess, TcpServer, free_port, make_pki, silent, rss_bytes, subprocess_env, wait_until

MiB = 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    """What each path of the backend answers; see :class:`HttpBackend`."""

    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet."""

    def _send(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = (),
              reason: Optional[str] = None) -> None:
        self.send_response(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        query = parse_qs(split.query)
        path = split.path
        if path == "/echo":
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            info = {"method": self.command, "path": self.path,
                    "headers": [[k.lower(), v] for k, v in self.headers.items()],
                    "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            self._send(200, json.dumps(info).encode())
        elif path == "/cookies":
            self._send(200, b"cookies\n", (
                ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; HttpOnly"), ("X-Many", "one"), ("X-Many", "two"),
                ("Connection", "X-Secret-Hop"), ("X-Secret-Hop", "drop me"), ("Keep-Alive", "timeout=5"),
                ("Proxy-Authenticate", "Basic"), ("Upgrade", "h2c"), ("X-Kept", "yes")))
        elif path == "/reason":
            self._send(404, b"nothing here\n", reason="Nothing Here At All")
        elif path == "/notmodified":
            self.send_response(304)
            self.send_header("ETag", '"v1"')
            self.end_headers()
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"first ", b"second ", b"third\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/big":
            self._big(int(query["size"][0]))
        else:
            self._send(404, b"no such page\n")

    def _big(self, size: int) -> None:
        """Send size bytes with a Content-Length, counting what the socket took."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.flush()
        block = bytes(64 * 1024)
        self.server.big_sent = 0
        self.server.big_done.clear()
        try:
            while self.server.big_sent < size:
                piece = block[: size - self.server.big_sent]
                self.connection.sendall(piece)
                self.server.big_sent += len(piece)
        except OSError:
            self.close_connection = True
        finally:
            self.server.big_done.set()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    big_sent = 0
    big_done: threading.Event


class HttpBackend:
    """
    ``http.server`` in a thread, over TCP or TLS.  Paths: ``/echo`` (the
    request as JSON), ``/cookies`` (repeated and hop-by-hop headers),
    ``/reason`` (404 with its own reason), ``/notmodified`` (304),
    ``/chunked``, ``/big?size=N`` (N bytes; ``big_sent`` counts them).
    """

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.big_done = threading.Event()
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_pki(tmp_path_factory.mktemp("pki"), names=["localhost"], ips=["127.0.0.1"])


@pytest.fixture(scope="module")
def backends(pki: Any) -> Iterator[dict[str, Any]]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.fullchain, pki.server_key)
    plain, tls, quiet = HttpBackend(), HttpBackend(context), TcpServer(silent)
    try:
        yield {"plain": plain, "tls": tls, "silent": quiet}
    finally:
        plain.stop()
        tls.stop()
        quiet.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, backends: dict[str, Any], pki: Any) -> Iterator[GatewayProcess]:
    plain, tls = backends["plain"].port, backends["tls"].port
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
ProxyPass /app ws://127.0.0.1:{plain}
ProxyPass /nofwd ws://127.0.0.1:{plain}/echo forward=none
ProxyPass /dead ws://127.0.0.1:{free_port()}/ connecttimeout=3
ProxyPass /hang ws://127.0.0.1:{backends['silent'].port}/ connecttimeout=2
ProxyPass /tls wss://127.0.0.1:{tls}/ cafile={pki.ca_cert}
ProxyPass /tls-platform wss://127.0.0.1:{tls}/
ProxyPass /tls-unverified wss://127.0.0.1:{tls}/ verify=off
"""
    with GatewayProcess(config, tmp_path_factory.mktemp("gw")) as gw:
        yield gw


def _connection(gw: GatewayProcess, timeout: float = 10) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", gw.port(), timeout=timeout)


def _get(gw: GatewayProcess, path: str, method: str = "GET", body: Optional[bytes] = None,
         headers: Optional[dict[str, str]] = None, timeout: float = 10) -> tuple[http.client.HTTPResponse, bytes]:
    conn = _connection(gw, timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def test_repeated_response_headers_kept_and_hop_by_hop_dropped(gateway: GatewayProcess) -> None:
    """Both Set-Cookie values and both X-Many values reach the client; hop-by-hop headers do not."""
    response, body = _get(gateway, "/app/cookies")
    assert (response.status, body) == (200, b"cookies\n")
    headers = [(k.lower(), v) for k, v in response.getheaders()]
    assert [v for k, v in headers if k == "set-cookie"] == ["a=1; Path=/", "b=2; HttpOnly"]
    assert [v for k, v in headers if k == "x-many"] == ["one", "two"]
    assert ("x-kept", "yes") in headers
    assert ("content-length", "8") in headers
    names = {k for k, _ in headers}
    assert not names & {"x-secret-hop", "keep-alive", "proxy-authenticate", "upgrade", "transfer-encoding"}


def test_request_headers_host_and_forwarding(gateway: GatewayProcess, backends: dict[str, Any]) -> None:
    """
    The backend gets Host set to its own authority, all values of repeated
    headers, the forwarded headers, and none of the client's hop-by-hop headers.
    """
    conn = _connection(gateway)
    try:
        conn.putrequest("GET", "/app/echo?q=1", skip_host=True)
        for name, value in (("Host", "desk.example"), ("X-Multi", "one"), ("X-Multi", "two"),
                            ("Connection", "X-Secret-Hop"), ("X-Secret-Hop", "drop"), ("Keep-Alive", "300"),
                            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="), ("TE", "trailers"), ("Upgrade", "h2c"),
                            ("X-Forwarded-For", "10.1.2.3"), ("Cookie", "s=abc"), ("Origin", "http://desk.example")):
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        info = json.loads(response.read())
    finally:
        conn.close()
    assert info["method"] == "GET" and info["path"] == "/echo?q=1"
    headers = info["headers"]
    names = [k for k, _ in headers]
    assert ["host", f"127.0.0.1:{backends['plain'].port}"] in headers
    assert names.count("host") == 1
    assert [v for k, v in headers if k == "x-multi"] == ["one", "two"]
    assert not set(names) & {"x-secret-hop", "keep-alive", "proxy-authorization", "te", "upgrade"}
    assert ["x-forwarded-for", "10.1.2.3, 127.0.0.1"] in headers
    assert ["x-forwarded-proto", "http"] in headers
    assert ["forwarded", 'for=127.0.0.1;proto=http;host="desk.example"'] in headers
    assert ["cookie", "s=abc"] in headers and ["origin", "http://desk.example"] in headers


def test_forward_none(gateway: GatewayProcess) -> None:
    """With forward=none the backend gets no forwarded headers, nor Origin or Cookie."""
    response, body = _get(gateway, "/nofwd", headers={"Cookie": "s=abc", "Origin": "http://desk.example"})
    assert response.status == 200
    names = {k for k, _ in json.loads(body)["headers"]}
    assert not names & {"x-forwarded-for", "x-forwarded-proto", "forwarded", "origin", "cookie"}


def test_post_body_passed(gateway: GatewayProcess) -> None:
    """A POST body up to the gateway's body limit (64 KiB) reaches the backend whole, with its Content-Type."""
    body = os.urandom(60 * 1024)
    response, answer = _get(gateway, "/app/echo", "POST", body, {"Content-Type": "application/x-test"})
    info = json.loads(answer)
    assert (response.status, info["method"], info["length"]) == (200, "POST", len(body))
    assert info["sha256"] == hashlib.sha256(body).hexdigest()
    assert ["content-type", "application/x-test"] in info["headers"]
    # A larger body is refused from its Content-Length, before it is read.
    with socket.create_connection(("127.0.0.1", gateway.port()), timeout=10) as sock:
        sock.sendall(b"POST /app/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % (3 * MiB))
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"too large" in answer


def test_status_reason_and_chunked_body(gateway: GatewayProcess) -> None:
    """The backend's status and reason reach the client; a chunked body arrives whole."""
    response, body = _get(gateway, "/app/reason")
    assert (response.status, response.reason, body) == (404, "Nothing Here At All", b"nothing here\n")
    response, body = _get(gateway, "/app/chunked")
    assert (response.status, body) == (200, b"first second third\n")


def test_head_and_304_have_no_body(gateway: GatewayProcess) -> None:
    """HEAD keeps the backend's Content-Length but sends no body, nor does a 304: the next request on the connection works."""
    conn = _connection(gateway)
    try:
        conn.request("HEAD", "/app/cookies")
        response = conn.getresponse()
        assert (response.status, response.getheader("content-length"), response.read()) == (200, "8", b"")
        conn.request("GET", "/app/notmodified", headers={"If-None-Match": '"v1"'})
        response = conn.getresponse()
        assert (response.status, response.getheader("etag"), response.read()) == (304, '"v1"', b"")
        conn.request("GET", "/app/cookies")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"cookies\n")
    finally:
        conn.close()


def test_https_backend_uses_route_tls_settings(gateway: GatewayProcess) -> None:
    """wss routes proxy over https with their cafile=/verify=off; platform trust refuses the test CA: 502."""
    for path in ("/tls/cookies", "/tls-unverified/cookies"):
        response, body = _get(gateway, path)
        assert (response.status, body) == (200, b"cookies\n")
    response, body = _get(gateway, "/tls-platform/cookies")
    assert response.status == 502
    assert body.startswith(b"502 backend") and b"certificate" in body.lower()


def test_nothing_listening_gives_502(gateway: GatewayProcess) -> None:
    """A backend port with nothing listening gives 502 with a text body, and the refusal is logged."""
    response, body = _get(gateway, "/dead/page")
    assert (response.status, body) == (502, b"502 backend refused the connection (connection refused)\n")
    assert response.getheader("content-type") == "text/plain; charset=utf-8"
    gateway.wait_log(r"request refused .*path='/dead/page' status=502")


def test_backend_that_never_answers_gives_504(gateway: GatewayProcess) -> None:
    """A backend that accepts but never answers gives 504 after the route's connect timeout."""
    response, body = _get(gateway, "/hang/page", timeout=15)
    assert (response.status, body) == (504, b"504 backend connect timed out (2 s)\n")
    gateway.wait_log(r"request refused .*path='/hang/page' status=504")


def test_client_leaving_cancels_backend_request(gateway: GatewayProcess, backends: dict[str, Any]) -> None:
    """A client that closes while the backend has not answered makes the gateway drop the backend connection."""
    silent: TcpServer = backends["silent"]
    before = silent.accepted
    with socket.create_connection(("127.0.0.1", gateway.port()), timeout=5) as s:
        s.sendall(b"GET /hang/x HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert wait_until(lambda: silent.accepted > before and silent.open_count > 0, 5)
    assert wait_until(lambda: silent.open_count == 0, 5)


def _read_head(s: socket.socket) -> bytes:
    """Read up to the end of a response head; return what came after it."""
    data = b""
    for _ in range(1000):
        if b"\r\n\r\n" in data:
            break
        chunk = s.recv(65536)
        assert chunk, "connection closed before the response head"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return rest


def _unchanged(server: _Server, seen: int, checks: int = 5) -> bool:
    """True when the backend's byte count stays at seen over a few short polls (it is blocked)."""
    return all(not wait_until(lambda: server.big_sent != seen, 0.1) for _ in range(checks))


def test_large_response_flow_controlled(gateway: GatewayProcess, backends: dict[str, Any]) -> None:
    """
    A 64 MiB response to a client that stops reading stalls the backend
    instead of filling the gateway: the backend gets stuck well short of the
    end while the gateway's memory stays flat; then the whole body arrives.
    """
    size = 64 * MiB
    server = backends["plain"].server
    base = rss_bytes(gateway.pid)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.settimeout(20)
    try:
        s.connect(("127.0.0.1", gateway.port()))
        s.sendall(f"GET /app/big?size={size} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        received = len(_read_head(s))

        # Stop reading, and wait for the backend's writes to stall.
        def stalled() -> bool:
            sent = server.big_sent
            return sent > 0 and not server.big_done.is_set() and _unchanged(server, sent)

        assert wait_until(stalled, 15, 0.1), f"backend never stalled ({server.big_sent} bytes sent)"
        stuck = server.big_sent
        growth = rss_bytes(gateway.pid) - base
        print(f"backend stalled after {stuck / MiB:.1f} MiB; gateway RSS growth {growth / MiB:.1f} MiB")
        assert stuck < size // 2
        assert growth < 24 * MiB
        peak = base
        for count in range(100000):
            if received >= size:
                break
            chunk = s.recv(1024 * 1024)
            assert chunk, f"connection closed after {received} bytes"
            received += len(chunk)
            if count % 64 == 0:
                peak = max(peak, rss_bytes(gateway.pid))
        assert received == size
        print(f"gateway RSS peak growth while reading {(peak - base) / MiB:.1f} MiB")
        assert (peak - base) < 24 * MiB
    finally:
        s.close()


def test_client_leaving_mid_body_drops_backend(gateway: GatewayProcess, backends: dict[str, Any]) -> None:
    """A client that closes in the middle of a large body makes the backend's writes end early."""
    server = backends["plain"].server
    size = 64 * MiB
    with socket.create_connection(("127.0.0.1", gateway.port()), timeout=10) as s:
        s.sendall(f"GET /app/big?size={size} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        _read_head(s)
        assert wait_until(lambda: server.big_sent > 0, 5)
    assert wait_until(server.big_done.is_set, 10)
    assert server.big_sent < size


def test_no_twisted_web_proxy_deprecation() -> None:
    """The gateway's modules load without twisted.web.proxy and without the HTTPClient DeprecationWarning."""
    code = (
        "import sys, warnings\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    import tunnelgw.web, tunnelgw.service, tunnelgw.backends.http\n"
        "print('proxy loaded' if 'twisted.web.proxy' in sys.modules else 'proxy not loaded')\n"
        "print('\\n'.join(str(w.message) for w in seen))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("proxy not loaded")
    assert "HTTPClient" not in result.stdout
