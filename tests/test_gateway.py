"""
End-to-end sessions through a real ``twistd tunnelgw`` process, driven by the
independent ``websockets`` client library, to real loopback TCP backends.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from support import (GatewayProcess, RawClient, Sink, TcpServer, echo, make_pki, silent, rss_bytes, subprocess_env,
                     twistd_command, wait_until)

MiB = 1 << 20


def say_bye(conn: socket.socket) -> None:
    """Backend handler: send 'bye' and close in order."""
    conn.sendall(b"bye")
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
    conn.close()


def reset(conn: socket.socket) -> None:
    """Backend handler: read a little, then reset the connection (RST)."""
    conn.recv(16)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, TcpServer]]:
    found = {"echo": TcpServer(echo), "sink": TcpServer(Sink()), "bye": TcpServer(say_bye),
             "reset": TcpServer(reset), "silent": TcpServer(silent)}
    yield found
    for server in found.values():
        server.stop()


class TlsEcho:
    """Backend handler: TLS (Python's ssl module, the test PKI's certificate), then echo until the client closes."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    def __call__(self, conn: socket.socket) -> None:
        with self.context.wrap_socket(conn, server_side=True) as tls:
            while data := tls.recv(65536):
                tls.sendall(data)


@pytest.fixture(scope="module")
def tls_echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TcpServer, Path]]:
    """A TLS echo backend, and a trustRoots= folder holding its CA."""
    folder = tmp_path_factory.mktemp("tls-backend")
    pki = make_pki(folder / "pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.fullchain, pki.server_key)
    roots = folder / "roots"
    roots.mkdir()
    (roots / "ca.pem").write_bytes(pki.ca_cert.read_bytes())
    server = TcpServer(TlsEcho(context))
    yield server, roots
    server.stop()


@pytest.fixture(scope="module")
def refusing_port() -> Iterator[int]:
    """A port bound but not listening: connections to it are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture(scope="module")
def full_backlog() -> Iterator[int]:
    """A listening port whose accept queue is full: a new connect never completes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(8):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    yield port
    for c in fillers:
        c.close()
    server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, servers: dict[str, TcpServer], refusing_port: int,
            full_backlog: int, tls_echo: tuple[TcpServer, Path]) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("gw")
    tls_port, roots = tls_echo[0].port, tls_echo[1]
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
ProxyPass /echo {servers['echo'].endpoint} connecttimeout=3
ProxyPass /sink {servers['sink'].endpoint}
ProxyPass /bye {servers['bye'].endpoint}
ProxyPass /reset {servers['reset'].endpoint}
ProxyPass /refused tcp:host=127.0.0.1:port={refusing_port}
ProxyPass /hang tcp:host=127.0.0.1:port={full_backlog} connecttimeout=1
ProxyPass /tlshang tls:127.0.0.1:{servers['silent'].port} connecttimeout=1
ProxyPass /tlsecho tls:localhost:{tls_port}:trustRoots={roots}
ProxyPass /tlswrongname tls:desk.example:{tls_port}:trustRoots={roots}:endpoint=tcp\\:127.0.0.1\\:{tls_port}
ProxyPass /tlsplatform tls:localhost:{tls_port}
ProxyPass /nosocket unix:path={tmp}/missing.sock
ProxyPassMatch ^/port/(\\d+)$ tcp:host=127.0.0.1:port=$1
"""
    with GatewayProcess(config, tmp) as gw:
        yield gw


def url(gw: GatewayProcess, path: str) -> str:
    return f"ws://127.0.0.1:{gw.port()}{path}"


def refused(gw: GatewayProcess, path: str, **kwargs: object) -> tuple[int, str]:
    """Open a session that the gateway must refuse; return status and body."""
    with pytest.raises(InvalidStatus) as raised:
        with connect(url(gw, path), open_timeout=10, **kwargs):  # type: ignore[arg-type]
            pass
    response = raised.value.response
    return response.status_code, response.body.decode()


def test_echo_binary_and_text(gateway: GatewayProcess) -> None:
    """Binary and text frames reach the backend as bytes; replies come back as binary."""
    with connect(url(gateway, "/echo"), open_timeout=5) as ws:
        assert ws.subprotocol is None
        ws.send(b"\x00\x01hello\xff")
        assert ws.recv(timeout=5) == b"\x00\x01hello\xff"
        ws.send("h\u00e9llo")
        assert ws.recv(timeout=5) == "h\u00e9llo".encode()
    gateway.wait_log(r"session end .*path=/echo.*bytes_up=14 bytes_down=14")


def test_large_transfer_reaches_backend_intact(gateway: GatewayProcess, servers: dict[str, TcpServer]) -> None:
    """16 MiB in messages of varied size arrive at the echo backend and back, byte for byte."""
    payload = os.urandom(MiB)
    with connect(url(gateway, "/echo"), open_timeout=5, max_size=None) as ws:
        sent = bytearray()
        received = bytearray()
        for size in (1, 100, 4096, 65536, 300_000, MiB):
            ws.send(payload[:size])
            sent += payload[:size]
        while len(received) < len(sent):
            received += ws.recv(timeout=10)
        assert received == sent


def test_binary_subprotocol_is_negotiated(gateway: GatewayProcess) -> None:
    """A client offering 'binary' (noVNC) gets it."""
    with connect(url(gateway, "/echo"), subprotocols=["binary", "base64"], open_timeout=5) as ws:
        assert ws.subprotocol == "binary"
        ws.send(b"rfb")
        assert ws.recv(timeout=5) == b"rfb"


def test_base64_subprotocol_encodes_both_ways(gateway: GatewayProcess) -> None:
    """With 'base64', client text is decoded for the backend and backend bytes come back base64 text."""
    with connect(url(gateway, "/echo"), subprotocols=["base64"], open_timeout=5) as ws:
        assert ws.subprotocol == "base64"
        ws.send(base64.b64encode(b"\x00\xffdesk").decode())
        reply = ws.recv(timeout=5)
        assert isinstance(reply, str) and base64.b64decode(reply) == b"\x00\xffdesk"


def test_bad_base64_closes_with_1007(gateway: GatewayProcess) -> None:
    """A 'base64' client sending text that is not base64 is closed with 1007."""
    with connect(url(gateway, "/echo"), subprotocols=["base64"], open_timeout=5) as ws:
        ws.send("not base64!")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007


def test_unsupported_subprotocol_is_400(gateway: GatewayProcess) -> None:
    """A client that offers only unknown subprotocols is told what this route speaks."""
    status, body = refused(gateway, "/echo", subprotocols=["chat"])
    assert status == 400 and "binary" in body


def test_no_route_is_404(gateway: GatewayProcess) -> None:
    """A handshake on a path no rule matches gets 404 with a reason, and a log line."""
    status, body = refused(gateway, "/nowhere")
    assert status == 404 and "no route" in body
    gateway.wait_log(r"request refused .*path='/nowhere' status=404")


def test_refused_backend_is_502(gateway: GatewayProcess) -> None:
    """A backend that refuses the connection gives 502 naming the refusal."""
    status, body = refused(gateway, "/refused")
    assert status == 502 and "refused" in body
    gateway.wait_log(r"handshake refused .*path=/refused status=502")


def test_missing_unix_socket_is_502(gateway: GatewayProcess) -> None:
    """A unix: backend whose socket does not exist gives 502 (unreachable)."""
    status, body = refused(gateway, "/nosocket")
    assert status == 502 and "unreachable" in body


def test_connect_timeout_is_504(gateway: GatewayProcess) -> None:
    """A backend whose TCP handshake never completes gives 504 after the route's connecttimeout."""
    status, body = refused(gateway, "/hang")
    assert (status, body) == (504, "504 backend connect timed out (1 s)\n")


def test_tls_backend_that_never_handshakes_is_504(gateway: GatewayProcess) -> None:
    """A tls: backend is connected only after its TLS handshake: a silent one times out with 504."""
    status, body = refused(gateway, "/tlshang")
    assert status == 504


def test_tls_backend_relays_both_ways(gateway: GatewayProcess) -> None:
    """A tls: backend verified against trustRoots=: a megabyte goes there and back through its TLS."""
    payload = os.urandom(MiB)
    with connect(url(gateway, "/tlsecho"), open_timeout=5, max_size=None) as ws:
        for start in range(0, MiB, 64 * 1024):
            ws.send(payload[start:start + 64 * 1024])
        received = b""
        while len(received) < MiB:
            message = ws.recv(timeout=10)
            assert isinstance(message, bytes)
            received += message
    assert received == payload


def test_tls_backend_certificate_refusals_are_502(gateway: GatewayProcess) -> None:
    """A tls: backend whose certificate names another host, or chains to a CA the platform does not trust: 502 saying so."""
    assert refused(gateway, "/tlswrongname") == (
        502, "502 backend TLS handshake failed (certificate is not valid for desk.example)\n")
    assert refused(gateway, "/tlsplatform") == (502, "502 backend TLS handshake failed (certificate verify failed)\n")


def test_pattern_route_reaches_substituted_port(gateway: GatewayProcess, servers: dict[str, TcpServer]) -> None:
    """ProxyPassMatch puts the captured port in the target."""
    with connect(url(gateway, f"/port/{servers['echo'].port}"), open_timeout=5) as ws:
        ws.send(b"via pattern")
        assert ws.recv(timeout=5) == b"via pattern"


def test_plain_http_gets_clear_4xx(gateway: GatewayProcess) -> None:
    """A plain HTTP request gets 426 on a WebSocket path and 404 elsewhere, never a traceback."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", gateway.port(), timeout=5)
    conn.request("GET", "/echo")
    response = conn.getresponse()
    assert response.status == 426 and response.getheader("Upgrade") == "websocket"
    assert b"WebSocket endpoint" in response.read()
    conn.request("POST", "/nowhere", body=b"x")
    response = conn.getresponse()
    assert response.status == 404 and response.read() == b"404 no route for this path\n"
    assert "Traceback" not in gateway.log()


def test_backend_close_closes_client_1000(gateway: GatewayProcess) -> None:
    """A backend closing in order ends the session with 1000 after its last bytes."""
    with connect(url(gateway, "/bye"), open_timeout=5) as ws:
        assert ws.recv(timeout=5) == b"bye"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_backend_reset_closes_client_1011(gateway: GatewayProcess) -> None:
    """A backend connection reset ends the session with 1011 and a reason."""
    with connect(url(gateway, "/reset"), open_timeout=5) as ws:
        ws.send(b"x")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert "backend connection lost" in closed.value.rcvd.reason


def test_client_close_and_vanish_close_the_backend(gateway: GatewayProcess) -> None:
    """The backend sees EOF promptly when a client closes cleanly and when it just disappears."""
    closes: list[threading.Event] = []

    def record(conn: socket.socket) -> None:
        done = threading.Event()
        closes.append(done)
        while conn.recv(65536):
            pass
        done.set()

    with TcpServer(record) as backend, GatewayProcess(
            f"Listen tcp:port=0:interface=127.0.0.1\nProxyPass /r {backend.endpoint}\n",
            Path(gateway.tmp), name="closes") as gw:
        with connect(url(gw, "/r"), open_timeout=5) as ws:
            ws.send(b"hi")
        assert wait_until(lambda: len(closes) == 1) and closes[0].wait(5)
        raw = RawClient(url(gw, "/r"))
        raw.send_binary(b"hi")
        assert wait_until(lambda: len(closes) == 2)
        raw.close()
        assert closes[1].wait(5)
        assert wait_until(lambda: backend.open_count == 0, 5)


def test_flow_control_client_never_reads(tmp_path: Path) -> None:
    """
    A backend flooding a client that reads nothing is stopped by the gateway:
    the backend can send only a bounded amount, the gateway's memory stays
    bounded, and once the client reads, every byte arrives in order.
    """
    chunk = bytes(range(256)) * 256  # 64 KiB with a recognisable pattern
    cap = 512 * MiB
    sent = [0]
    stalled = threading.Event()

    def flood(conn: socket.socket) -> None:
        conn.settimeout(2.0)
        try:
            while sent[0] < cap:
                conn.sendall(chunk)
                sent[0] += len(chunk)
        except socket.timeout:
            stalled.set()
            conn.settimeout(30)
            while sent[0] < cap:
                conn.sendall(chunk)
                sent[0] += len(chunk)
                if sent[0] >= 64 * MiB:
                    break
            conn.close()

    with TcpServer(flood) as backend, GatewayProcess(
            f"Listen tcp:port=0:interface=127.0.0.1\nProxyPass /flood {backend.endpoint}\n", tmp_path) as gw:
        client = RawClient(url(gw, "/flood"))
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        before = rss_bytes(gw.pid)
        assert stalled.wait(60), f"backend never stalled after {sent[0]} bytes"
        grown = rss_bytes(gw.pid) - before
        held = sent[0]
        print(f"client never reads: backend sent {held / MiB:.1f} MiB before stalling, gateway RSS +{grown / MiB:.1f} MiB")
        assert held < 16 * MiB, f"backend could send {held} bytes to a client that reads nothing"
        assert grown < 8 * MiB, f"gateway grew by {grown} bytes"
        received = client.receive_payload(held, timeout=30)
        assert len(received) >= held
        assert received[:held] == (chunk * (held // len(chunk) + 1))[:held]
        client.close()


def test_flow_control_backend_never_reads(tmp_path: Path) -> None:
    """A client flooding a backend that reads nothing is stopped by the gateway, its memory bounded."""
    release = threading.Event()
    sink = Sink()

    def slow(conn: socket.socket) -> None:
        release.wait(60)
        sink(conn)

    with TcpServer(slow) as backend, GatewayProcess(
            f"Listen tcp:port=0:interface=127.0.0.1\nProxyPass /slow {backend.endpoint}\n", tmp_path) as gw:
        client = RawClient(url(gw, "/slow"))
        client.sock.settimeout(2.0)
        before = rss_bytes(gw.pid)
        message = b"\x5a" * 65536
        sent = 0
        with pytest.raises(socket.timeout):
            while sent < 512 * MiB:
                client.send_binary(message)
                sent += len(message)
        grown = rss_bytes(gw.pid) - before
        print(f"backend never reads: client sent {sent / MiB:.1f} MiB before stalling, gateway RSS +{grown / MiB:.1f} MiB")
        assert sent < 16 * MiB, f"client could send {sent} bytes to a backend that reads nothing"
        assert grown < 8 * MiB, f"gateway grew by {grown} bytes"
        sink.keep = False
        release.set()
        client.sock.settimeout(30)
        assert wait_until(lambda: sink.received >= sent - 65536 * 2, 30)
        client.close()


def test_tls_listener_with_chain(tmp_path: Path, servers: dict[str, TcpServer]) -> None:
    """wss:// on an ssl: listener presents the intermediate too, so a client trusting only the root verifies it."""
    pki = make_pki(tmp_path / "pki")
    config = (f"Listen ssl:port=0:interface=127.0.0.1:privateKey={pki.server_key}:certKey={pki.server_cert}"
              f":extraCertChain={pki.chain}\nProxyPass /echo {servers['echo'].endpoint}\n")
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.set_alpn_protocols(["h2", "http/1.1"])  # as browsers do
    with GatewayProcess(config, tmp_path) as gw:
        with connect(f"wss://localhost:{gw.port()}/echo", ssl=context, open_timeout=5) as ws:
            ws.send(b"secret")
            assert ws.recv(timeout=5) == b"secret"
        gw.wait_log(r"session end .*bytes_up=6 bytes_down=6")


def run_twistd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(twistd_command("-n", "--pidfile=", "tunnelgw", *args), capture_output=True, text=True,
                          env=subprocess_env(), cwd=tmp_path, timeout=60)


def test_bad_config_is_refused_with_located_errors(tmp_path: Path) -> None:
    """A bad config exits non-zero before listening, one FILE:LINE line per problem, all of them at once."""
    conf = tmp_path / "bad.conf"
    conf.write_text(
        "Listen tcp:port=0:interface=127.0.0.1\n"
        f"Listen ssl:port=0:privateKey={tmp_path}/nokey.pem:certKey={tmp_path}/nocert.pem\n"
        "ProxyPass /a nosuch:thing\n"
        "ProxyPass /b tcp:host=127.0.0.1\n"
        "ProxyPassMatch ( tcp:host=a:port=1\n"
        "Whatever\n")
    result = run_twistd(tmp_path, "--config", str(conf))
    assert result.returncode != 0
    lines = [l for l in result.stderr.splitlines() if l.startswith(str(conf))]
    # Syntax and what a start checks (files, endpoints) in one pass, in line order.
    assert [l.split(":")[1] for l in lines] == ["2", "3", "4", "5", "6"], result.stderr
    assert "listening" not in result.stdout
    conf.write_text(
        "Listen tcp:port=0:interface=127.0.0.1\n"
        f"Listen ssl:port=0:privateKey={tmp_path}/nokey.pem:certKey={tmp_path}/nocert.pem\n"
        "ProxyPass /a nosuch:thing\n"
        "ProxyPass /b tcp:host=127.0.0.1\n")
    result = run_twistd(tmp_path, "--config", str(conf))
    assert result.returncode != 0
    lines = [l for l in result.stderr.splitlines() if l.startswith(str(conf))]
    assert [l.split(":")[1] for l in lines] == ["2", "3", "4"], result.stderr
    assert "No such file" in lines[0] and "nosuch" in lines[1] and "missing parameter 'port'" in lines[2]
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    """A config path that does not exist is a one-line error."""
    result = run_twistd(tmp_path, "--config", str(tmp_path / "none.conf"))
    assert result.returncode != 0 and "cannot read the configuration" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_reported_at_its_line(tmp_path: Path) -> None:
    """A Listen endpoint that cannot bind stops the gateway with FILE:LINE and the reason."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        conf = tmp_path / "busy.conf"
        conf.write_text(f"Listen tcp:port={busy.getsockname()[1]}:interface=127.0.0.1\n")
        result = run_twistd(tmp_path, "--config", str(conf))
        assert result.returncode != 0
        assert f"{conf}:1: cannot listen on" in result.stdout + result.stderr
        assert "Address already in use" in result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
    finally:
        busy.close()
