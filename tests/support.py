"""
Test harness: a real gateway process, real loopback backends, TLS material.

- :class:`GatewayProcess` runs ``twistd -n tunnelgw`` from this working tree
  (PYTHONPATH points at it, so the plugin in ``twisted/plugins`` is found) with
  a config written to a temporary folder; listeners use port 0 and the real
  ports are read from the gateway's log.
- :class:`TcpServer` runs a threaded loopback server with one handler call
  per connection: echo, sink, flood, close... as the test needs.
- :func:`make_pki` writes a CA, an intermediate and a server certificate.

Every wait is bounded; every process and thread is stopped on exit.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent

__all__ = ["GatewayProcess", "Pki", "RawClient", "free_port", "require_module", "silent", "stop_process", "TcpServer", "make_pki", "require_tool", "rss_bytes", "wait_until", "REPO"]


def stop_process(proc: Optional["subprocess.Popen[bytes]"], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal a child (SIGTERM by default), kill it if it has not exited within timeout, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll predicate until it is true or timeout seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def subprocess_env() -> dict[str, str]:
    """The environment for gateway processes: this tree first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def twistd_command(*args: str) -> list[str]:
    """``twistd`` run by this interpreter (so it sees the same packages)."""
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())", *args]


_LISTENING = re.compile(r"(\S+):(\d+): listening on .* port=(\d+)\)")


class GatewayProcess:
    """
    ``twistd -n tunnelgw --config FILE`` as a child process.

    :param config: configuration text; ``{tmp}`` is replaced by the folder, and
        ``ShutdownTimeout 1`` is appended unless the text sets its own.
    :ivar ports: {config line number: bound port}, read from the log.
    """

    def __init__(self, config: str, tmp: Path, name: str = "gw", args: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.config_path = tmp / f"{name}.conf"
        text = config.replace("{tmp}", str(tmp))
        if "shutdowntimeout" not in text.lower():
            # Tests stop gateways with sessions still open: drain for 1 s, not the 30 s default.
            text = text.rstrip("\n") + "\nShutdownTimeout 1\n"
        self.config_path.write_text(text)
        self.log_path = tmp / f"{name}.log"
        self.args = args
        self.ports: dict[int, int] = {}
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self, timeout: float = 20.0) -> "GatewayProcess":
        """Start and wait until every Listen line reports its port."""
        assert self.proc is None or self.proc.poll() is not None, "this gateway is already running"
        expected = sum(1 for line in self.config_path.read_text().splitlines()
                       if line.strip().lower().startswith(("listen ", "demobackend ", "adminlisten ")))
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            twistd_command("-n", "--pidfile=", "tunnelgw", "--config", str(self.config_path), *self.args),
            stdout=self._log, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=self.tmp,
        )

        def ready() -> bool:
            self.ports = {int(m.group(2)): int(m.group(3)) for m in _LISTENING.finditer(self.log())}
            return len(self.ports) >= expected or self.proc.poll() is not None  # type: ignore[union-attr]

        if not wait_until(ready, timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"gateway did not start:\n{self.log()}")
        return self

    def port(self, index: int = 0) -> int:
        """The port of the index-th listener, in config order."""
        return [self.ports[k] for k in sorted(self.ports)][index]

    def log(self) -> str:
        """Everything the gateway has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait for a log line matching a regular expression."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            m = re.search(pattern, self.log())
            if m:
                found.append(m)
            return bool(m)

        if not wait_until(seen, timeout):
            raise AssertionError(f"no log line matching {pattern!r} in:\n{self.log()[-4000:]}")
        return found[0]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Stop the gateway (SIGTERM, then SIGKILL); return its exit status."""
        if self.proc is None:
            return 0
        stop_process(self.proc, sig, timeout)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


Handler = Callable[[socket.socket], None]


class TcpServer:
    """
    A threaded loopback TCP server calling handler(conn) for each connection.

    :ivar connections: accepted sockets (closed on :meth:`stop`).
    :ivar open_count: connections whose handler has not returned yet.
    """

    def __init__(self, handler: Handler, host: str = "127.0.0.1", backlog: int = 64) -> None:
        self.handler = handler
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()[:2]
        self.connections: list[socket.socket] = []
        self.accepted = 0
        self.open_count = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """A Twisted client endpoint string for this server."""
        return f"tcp:host={self.host}:port={self.port}"

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            conn.settimeout(30)
            with self._lock:
                self.connections.append(conn)
                self.accepted += 1
                self.open_count += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            with self._lock:
                self.open_count -= 1

    def stop(self) -> None:
        """Stop accepting, close every connection, join the accept thread."""
        self._stopping.set()
        self._thread.join(5)
        self.sock.close()
        for conn in self.connections:
            try:
                conn.close()
            except OSError:
                pass

    def __enter__(self) -> "TcpServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def worker_group(config: Path, count: int = 2) -> Iterator[tuple["subprocess.Popen[bytes]", Callable[[], str]]]:
    """
    ``python -m tunnelgw.workers -n count --config config`` (log next to the
    config); yields the parent and a reader of its log; stops what is left.
    """
    log_path = config.with_suffix(".workers.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tunnelgw.workers", "-n", str(count), "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=config.parent)
        try:
            yield proc, log_path.read_text
        finally:
            stop_process(proc)


def free_port(host: str = "127.0.0.1") -> int:
    """A port with nothing listening on host right now (bound, then released)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """
    count distinct free ports on host: all are held bound until every one is
    chosen, since the kernel may hand a just-released port out again (two
    ``free_port()`` calls in a row can return the same number).
    """
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET))
            s.bind((host, 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def silent(conn: socket.socket) -> None:
    """Handler: accept and say nothing until the peer goes away."""
    while conn.recv(65536):
        pass


def echo(conn: socket.socket) -> None:
    """Handler: send back what arrives until EOF, then close."""
    while True:
        data = conn.recv(65536)
        if not data:
            break
        conn.sendall(data)
    conn.close()


@dataclass
class Sink:
    """Handler state: count what arrives until EOF; ``eof`` is set at EOF."""

    received: int = 0

    def __post_init__(self) -> None:
        self.eof = threading.Event()
        self.data = bytearray()
        self.keep = False

    def __call__(self, conn: socket.socket) -> None:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            self.received += len(data)
            if self.keep:
                self.data += data
        self.eof.set()
        conn.close()


@dataclass
class Pki:
    """Paths of generated TLS material."""

    ca_cert: Path
    chain: Path  # the intermediate certificate
    server_cert: Path
    server_key: Path
    fullchain: Path  # the server certificate followed by the intermediate
    ca_key: Optional[Path] = None  # the root's key, for client certificates (make_client_cert)


def make_pki(folder: Path, names: Iterator[str] | list[str] = ("localhost",),
             ips: list[str] = ["127.0.0.1"]) -> Pki:
    """
    Write a root CA, an intermediate CA and a server certificate it signs
    (for the given DNS names and IP addresses) into folder.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: Optional[tuple[x509.Certificate, ec.EllipticCurvePrivateKey]],
             ca: bool, sans: list[x509.GeneralName] = []) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (x509.CertificateBuilder().subject_name(name)
                   .issuer_name(issuer[0].subject if issuer else name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   # Python 3.13's VERIFY_X509_STRICT wants key identifiers and key usages on every certificate.
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       (issuer[1] if issuer else key).public_key()), critical=False))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        else:
            builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                                   ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(issuer[1] if issuer else key, hashes.SHA256())

    root_key, mid_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = cert("tunnelgw test root", root_key, None, True)
    mid = cert("tunnelgw test intermediate", mid_key, (root, root_key), True)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    leaf = cert(list(names)[0] if names else "server", leaf_key, (mid, mid_key), False, sans)

    def pem(c: x509.Certificate) -> bytes:
        return c.public_bytes(serialization.Encoding.PEM)

    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(folder / "ca.pem", folder / "chain.pem", folder / "server.pem", folder / "server.key",
              folder / "fullchain.pem")
    pki.ca_cert.write_bytes(pem(root))
    pki.chain.write_bytes(pem(mid))
    pki.server_cert.write_bytes(pem(leaf))
    pki.fullchain.write_bytes(pem(leaf) + pem(mid))
    pki.server_key.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    pki.ca_key = folder / "ca.key"
    pki.ca_key.write_bytes(root_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return pki


def make_client_cert(pki: Pki, folder: Path, common_name: str, emails: tuple[str, ...] = (),
                     dns: tuple[str, ...] = (), uris: tuple[str, ...] = ()) -> Path:
    """
    Write a client certificate for common_name (and e-mail, DNS and URI
    alternative names) signed by pki's root into folder as NAME.pem, its key
    in the same file.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    assert pki.ca_key is not None
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    sans: list[x509.GeneralName] = [x509.RFC822Name(e) for e in emails]
    sans += [x509.DNSName(d) for d in dns] + [x509.UniformResourceIdentifier(u) for u in uris]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{common_name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


def require_module(name: str) -> object:
    """
    Import a Python module the test needs.  Missing, it skips the test, except
    under CI=true where a missing module is a failure (.ci/run installs the extras).
    """
    import importlib

    import pytest

    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"Python module {name} is not installed (pip install '.[test,bench]')"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def require_tool(path_or_name: str) -> str:
    """
    The full path of an external program the test needs.  Missing, it skips
    the test, except under CI=true where a missing tool is a failure.
    """
    import shutil

    import pytest

    found = shutil.which(path_or_name)
    if found:
        return found
    message = f"{path_or_name} is not installed (.ci/run installs it from .ci/apt-packages.txt)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class RawClient:
    """
    A WebSocket client over a plain socket using the ``websockets`` library's
    sans-IO protocol, for tests that need control the sync client does not
    give: never reading, vanishing without a close frame; and one thread per
    TLS socket (the sync client reads in a thread of its own while it sends,
    and over TLS 1.3 about one handshake in a few hundred then stalls).

    :param tls: for wss:// URLs, the client's TLS context.
    :param headers: extra request headers.
    """

    def __init__(self, url: str, subprotocols: Optional[list[str]] = None, timeout: float = 10.0,
                 tls: Optional[ssl.SSLContext] = None, headers: dict[str, str] = {}) -> None:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        uri = parse_uri(url)
        self.protocol = ClientProtocol(uri, subprotocols=subprotocols, max_size=None)  # type: ignore[arg-type]
        self.sock = socket.create_connection((uri.host, uri.port), timeout=timeout)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock)
        request = self.protocol.connect()
        for name, value in headers.items():
            request.headers[name] = value
        self.protocol.send_request(request)
        self.flush()
        deadline = time.monotonic() + timeout
        while self.protocol.handshake_exc is None and self.protocol.state.name == "CONNECTING":
            if time.monotonic() > deadline:
                raise TimeoutError("no handshake answer")
            data = self.sock.recv(65536)
            if not data:
                break
            self.protocol.receive_data(data)
        self.events = list(self.protocol.events_received())
        if self.protocol.handshake_exc is not None:
            raise self.protocol.handshake_exc

    def flush(self) -> None:
        """Send what the protocol has queued."""
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.sock.sendall(chunk)

    def send_binary(self, data: bytes) -> None:
        """Send one binary message (blocking until the kernel takes it)."""
        self.protocol.send_binary(data)
        self.flush()

    def receive_payload(self, limit: int, timeout: float = 10.0) -> bytes:
        """Read messages until limit payload bytes arrived (or timeout); return them."""
        from websockets.frames import Opcode

        out = bytearray()
        deadline = time.monotonic() + timeout
        self.sock.settimeout(1.0)
        while len(out) < limit and time.monotonic() < deadline:
            for event in self.events:
                if getattr(event, "opcode", None) in (Opcode.BINARY, Opcode.TEXT, Opcode.CONT):
                    out += event.data
            self.events = []
            if len(out) >= limit:
                break
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not data:
                break
            self.protocol.receive_data(data)
            self.events = list(self.protocol.events_received())
            self.flush()
        return bytes(out)

    def close(self) -> None:
        """Drop the socket without a close frame."""
        self.sock.close()


@pytest.fixture
def backend() -> Iterator[TcpServer]:
    """An echo server on loopback: the byte-stream backend of a test (import this fixture to use it)."""
    with TcpServer(echo) as server:
        yield server


class RedisServer:
    """redis-server on loopback with its own port and data folder, no persistence."""

    def __init__(self, folder: Path, password: str = "") -> None:
        self.folder = folder
        folder.mkdir(exist_ok=True)
        self.port = free_port()
        self.password = password
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [require_tool("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=open(self.folder / "redis.log", "ab"), stderr=subprocess.STDOUT)
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password or None, socket_timeout=1,
                             socket_connect_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return self.proc is not None and self.proc.poll() is not None

        assert wait_until(up, 10) and self.proc.poll() is None, (self.folder / "redis.log").read_text()
        return self

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@contextlib.contextmanager
def connect_from(url: str, source: str) -> Iterator[Any]:
    """A websockets client (ws:// only) whose connection comes from the loopback address source."""
    from websockets.sync.client import connect

    host, port = url.split("/")[2].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0))
    with connect(url, sock=sock, open_timeout=5) as ws:
        yield ws


def session_status(url: str, headers: Optional[dict[str, str]] = None, source: Optional[str] = None) -> int:
    """
    101 when a session at url opens and echoes a byte, else the status its
    handshake was refused with; source: the client's loopback address.
    """
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    try:
        with (connect(url, additional_headers=headers, open_timeout=5) if source is None
              else connect_from(url, source)) as ws:
            ws.send(b"x")
            assert ws.recv(timeout=5) == b"x"
            return 101
    except InvalidStatus as e:
        return int(e.response.status_code)
