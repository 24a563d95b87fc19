"""
The processes a benchmark run starts: the TCP backends, the WebSocket backend,
tunnelgw (``twistd -n tunnelgw`` from this working tree, or its multi-worker
launcher), websockify from PyPI, the asyncio bridge, nginx (Debian's, as a
WebSocket reverse proxy with a configuration of its own in a temporary folder)
and the load client (the module a :class:`Placement` names), each under
``taskset -c`` when the placement pins it.  Each is stopped when the run
ends, on error too.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent

__all__ = ["Backends", "Bridge", "CLIENTS", "cores_named", "cpu_seconds", "DesktopServer", "Floor", "Portal", "Gateway", "Nginx", "Placement", "SyscallCount", "WsBackend", "Websockify", "memory_of",
           "process_tree", "run_client", "run_clients", "self_signed", "start_idle_client"]

#: The load clients by the name ``--client`` takes: the module run for each job.
CLIENTS = {"fast": "bench.fastclient", "plain": "bench.client"}


@dataclass(frozen=True)
class Placement:
    """
    Which load client runs the jobs, and on which cores (``taskset -c``
    lists; None: wherever the kernel likes) the load side (clients,
    backends, Redis) and the side under test (tunnelgw and each peer) run.
    """

    client: str = "fast"
    load: Optional[str] = None
    gateway: Optional[str] = None

    @property
    def client_module(self) -> str:
        """The load client's module."""
        return CLIENTS[self.client]

    def describe(self) -> str:
        """The placement in words, for the results' metadata."""
        if self.load is None and self.gateway is None:
            return "none (the kernel places every process)"
        return (f"clients and backends on {cores_named(self.load)}, tunnelgw and each peer on "
                f"{cores_named(self.gateway)} (taskset -c)")


def cores_named(cores: Optional[str]) -> str:
    """A ``taskset -c`` list in words: "core 1", "cores 0-1"."""
    return f"core{'s' if cores and (',' in cores or '-' in cores) else ''} {cores}"


def pinned(command: list[str], cores: Optional[str]) -> list[str]:
    """command run on the given cores (``taskset -c``, which execs it: the process keeps its pid), or as it is."""
    return ["taskset", "-c", cores, *command] if cores is not None else command


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _stop(proc: Optional[subprocess.Popen[Any]], timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def self_signed(folder: Path, rsa_bits: int = 0) -> tuple[Path, Path]:
    """
    Write a self-signed certificate for 127.0.0.1/localhost; return (cert, key).

    :param rsa_bits: an RSA key of this size instead of ECDSA P-256 (0).
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key: Any = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits) if rsa_bits \
        else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _ChildServer:
    """``python -m MODULE ARGS...`` that prints one JSON line once listening and exits when stdin closes."""

    def __init__(self, module: str, *args: str, cores: Optional[str] = None) -> None:
        self.proc = subprocess.Popen(pinned([sys.executable, "-m", module, *args], cores), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env(), cwd=REPO,
                                     preexec_fn=_raise_nofile_in_child)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            _stop(self.proc)
            raise RuntimeError(f"{module} did not start")
        self.listening: dict[str, int] = json.loads(line)

    @property
    def pids(self) -> list[int]:
        """The server's process."""
        return [self.proc.pid]

    def stop(self) -> None:
        """Close stdin (the server's signal to exit) and wait."""
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            _stop(self.proc)


class Backends(_ChildServer):
    """``python -m bench.servers`` in its own process; :attr:`ports` by name."""

    def __init__(self, cores: Optional[str] = None) -> None:
        super().__init__("bench.servers", cores=cores)
        self.ports = self.listening


class WsBackend(_ChildServer):
    """``python -m bench.wsservers``: a WebSocket echo, sink and source on one :attr:`port` (by path)."""

    def __init__(self, cores: Optional[str] = None) -> None:
        super().__init__("bench.wsservers", cores=cores)
        self.port = self.listening["port"]


class Bridge(_ChildServer):
    """``python -m bench.bridge``: the asyncio + websockets bridge to the TCP backends, :attr:`port` and :attr:`tls_port`."""

    def __init__(self, backends: dict[str, int], cert: tuple[Path, Path], cores: Optional[str] = None) -> None:
        super().__init__("bench.bridge", json.dumps(backends), str(cert[0]), str(cert[1]), cores=cores)
        self.port = self.listening["ws"]
        self.tls_port = self.listening["wss"]


class DesktopServer(_ChildServer):
    """``python -m bench.desktop``: the simulated desktops of the desktops figure, :attr:`port`."""

    def __init__(self, cores: Optional[str] = None) -> None:
        super().__init__("bench.desktop", cores=cores)
        self.port = self.listening["port"]


class Portal(_ChildServer):
    """``python -m bench.portal``: the forward-auth portal of the ``auth=`` route, :attr:`port`."""

    def __init__(self, cores: Optional[str] = None) -> None:
        super().__init__("bench.portal", cores=cores)
        self.port = self.listening["port"]

    def asked(self) -> int:
        """How many questions the portal has answered so far."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"\n")
        self.proc.stdin.flush()
        return int(json.loads(self.proc.stdout.readline())["asked"])


class Floor(_ChildServer):
    """``python -m bench.floor``: the Twisted floor relay to the TCP echo, :attr:`port`."""

    def __init__(self, echo_port: int, cores: Optional[str] = None) -> None:
        super().__init__("bench.floor", str(echo_port), cores=cores)
        self.port = self.listening["ws"]


NGINX = "/usr/sbin/nginx"

_NGINX_CONF = """\
# Written by bench/procs.py for one benchmark run: one worker, loopback only.
worker_processes 1;
master_process off;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
worker_rlimit_nofile {nofile};
events {{
    worker_connections {connections};
}}
http {{
    access_log off;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    tcp_nodelay on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        listen 127.0.0.1:{tls_port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://127.0.0.1:{backend};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_buffer_size {buffer};
            proxy_buffers 4 {buffer};
            proxy_busy_buffers_size {buffer};
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
        }}
    }}
}}
"""


def nginx_path() -> Optional[str]:
    """Debian's nginx, or one on PATH; None when there is none."""
    return NGINX if os.access(NGINX, os.X_OK) else shutil.which("nginx")


class Nginx:
    """
    nginx as a WebSocket reverse proxy to a ws:// backend: one worker, no
    daemon and no master (the process we start is the worker, so stopping it
    stops nginx), its prefix, configuration, logs and temp folders in folder.
    """

    def __init__(self, folder: Path, backend_port: int, cert: tuple[Path, Path], buffer: str = "64k",
                 cores: Optional[str] = None) -> None:
        exe = nginx_path()
        if exe is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.tls_port = _free_port()
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = hard if hard != resource.RLIM_INFINITY else 65536
        self.config = folder / "nginx.conf"
        self.config.write_text(_NGINX_CONF.format(folder=folder, port=self.port, tls_port=self.tls_port,
                                                  cert=cert[0], key=cert[1], backend=backend_port,
                                                  buffer=buffer, nofile=nofile, connections=max(1024, nofile // 2 - 100)))
        self.log_path = folder / "error.log"
        self._log = open(folder / "stderr.log", "wb")
        self.proc = subprocess.Popen(pinned([exe, "-p", str(folder), "-c", str(self.config), "-e", str(self.log_path)], cores),
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, cwd=folder,
                                     preexec_fn=_raise_nofile_in_child)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(folder / 'stderr.log').read_text()}"
                                   f"{self.log_path.read_text() if self.log_path.exists() else ''}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return True
            except OSError:
                return False

        try:
            _wait(ready, 20, "nginx to listen")
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> list[int]:
        """nginx's process (the only one: master_process off)."""
        return [self.proc.pid] + _children(self.proc.pid)

    def stop(self) -> None:
        """Stop nginx (SIGTERM is its fast shutdown)."""
        _stop(self.proc)
        self._log.close()


class Redis:
    """redis-server on loopback (its own port and folder, no persistence) for the token-lookup figure."""

    def __init__(self, folder: Path, cores: Optional[str] = None) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.access(exe, os.X_OK):
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self._log = open(folder / "redis.log", "wb")
        self.proc = subprocess.Popen(pinned([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
                                             "--save", "", "--appendonly", "no"], cores), stdout=self._log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(folder / 'redis.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        try:
            _wait(ready, 20, "redis-server to answer")
        except BaseException:
            self.stop()
            raise

    def set(self, key: str, value: str) -> None:
        """SET key value (RESP over a socket: the bench needs no Redis client of its own)."""
        parts = [b"SET", key.encode(), value.encode()]
        command = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection(("127.0.0.1", self.port), 5) as s:
            s.sendall(command)
            assert s.recv(16).startswith(b"+OK")

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


_LISTENING = re.compile(r"(\S+):(\d+): listening on .* port=(\d+)\)")


class Gateway:
    """
    tunnelgw as a real process, from this working tree, routing /echo, /sink
    and /source (and a ws:// route set if given); ws and wss listeners on
    port 0, ports read from the log.  With workers > 1 it runs
    ``python -m tunnelgw.workers``.
    """

    def __init__(self, tmp: Path, backends: dict[str, int], cert: tuple[Path, Path], workers: int = 1,
                 tls: bool = True, extra_rules: str = "", cores: Optional[str] = None) -> None:
        lines = ["Listen tcp:port=0:interface=127.0.0.1:backlog=4096"]
        if tls:
            lines.append(f"Listen ssl:port=0:interface=127.0.0.1:backlog=4096:certKey={cert[0]}:privateKey={cert[1]}")
        lines += [f"ProxyPass /{name} tcp:host=127.0.0.1:port={port}" for name, port in backends.items()]
        # A load generator is one client hammering from a few addresses: the
        # per-client limits and handshake rate that protect a real gateway
        # would measure themselves, so they are off; frames up to 16 MiB.
        lines.append("Limit sessions=0 perclient=0 rate=0 frame=16777216")
        lines.append(extra_rules)
        self.config = tmp / f"tunnelgw-{workers}.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.log_path = tmp / f"tunnelgw-{workers}.log"
        self._log = open(self.log_path, "wb")
        if workers > 1:
            command = [sys.executable, "-m", "tunnelgw.workers", "-n", str(workers), "--config", str(self.config)]
        else:
            command = [sys.executable, "-c", "import sys, tunnelgw; print('tunnelgw from', tunnelgw.__file__, flush=True); "
                       "from twisted.scripts.twistd import run; sys.exit(run())",
                       "-n", "--pidfile=", "tunnelgw", "--config", str(self.config)]
        self.proc = subprocess.Popen(pinned(command, cores), stdout=self._log, stderr=subprocess.STDOUT, env=_env(), cwd=tmp,
                                     preexec_fn=_raise_nofile_in_child)
        expected = 2 if tls else 1

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tunnelgw exited:\n{self.log()}")
            log = self.log()
            self.ports = {int(m.group(2)): int(m.group(3)) for m in _LISTENING.finditer(log)}
            # With workers the parent binds first; each worker then says it listens on the inherited sockets.
            inherited = log.count("listening on systemd:") if workers > 1 else 0
            return len(self.ports) >= expected and inherited >= (workers * expected if workers > 1 else 0)

        try:
            _wait(ready, 30, "tunnelgw to listen")
        except BaseException:
            self.stop()
            raise
        where = re.search(r"tunnelgw from (\S+)", self.log())
        if workers == 1 and (where is None or not Path(where.group(1)).is_relative_to(REPO)):
            self.stop()
            raise RuntimeError(f"tunnelgw was not imported from {REPO}: {where.group(1) if where else '?'}")
        ordered = [self.ports[k] for k in sorted(self.ports)]
        self.ws_port = ordered[0]
        self.wss_port = ordered[1] if tls else 0

    def log(self) -> str:
        """The gateway's log so far."""
        return self.log_path.read_text(errors="replace")

    @property
    def pids(self) -> list[int]:
        """The gateway's process and its children (workers)."""
        return [self.proc.pid] + _children(self.proc.pid)

    def stop(self) -> None:
        """Stop the gateway."""
        _stop(self.proc, 20)
        self._log.close()


def _raise_nofile_in_child() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Websockify:
    """``websockify 127.0.0.1:PORT 127.0.0.1:BACKEND`` with a certificate (ws and wss on one port)."""

    def __init__(self, tmp: Path, backend_port: int, cert: tuple[Path, Path], name: str, cores: Optional[str] = None) -> None:
        exe = shutil.which("websockify")
        if exe is None:
            raise RuntimeError("websockify is not installed: pip install '.[bench]'")
        self.port = _free_port()
        self.log_path = tmp / f"websockify-{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(pinned([exe, "--cert", str(cert[0]), "--key", str(cert[1]),
                                             f"127.0.0.1:{self.port}", f"127.0.0.1:{backend_port}"], cores),
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True,
                                     preexec_fn=_raise_nofile_in_child)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"websockify exited: {self.log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return True
            except OSError:
                return False

        _wait(ready, 20, "websockify to listen")

    @property
    def pids(self) -> list[int]:
        """websockify's process and its per-session children."""
        return [self.proc.pid] + _children(self.proc.pid)

    def stop(self) -> None:
        """Stop websockify and the session processes it forked."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _stop(self.proc)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()


def _children(pid: int) -> list[int]:
    """Descendants of pid, from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            kids = []
        found += kids
        todo += kids
    return found


def process_tree(pids: list[int]) -> list[int]:
    """pids and all their live descendants."""
    return [p for pid in pids for p in [pid, *_children(pid)]]


def cpu_seconds(pids: list[int], reaped: bool = False) -> float:
    """
    Summed user + system CPU time (seconds) of live processes, from
    /proc/PID/stat; with reaped, also that of the children they have waited
    for, which /proc charges to their parent (``cutime``, ``cstime``):
    websockify's per-session processes end with their session.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        if reaped:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / tick


class SyscallCount:
    """
    The system calls that processes make over a stretch of time, counted by
    Linux ``perf stat`` on the ``raw_syscalls:sys_enter`` tracepoint (every
    thread of each process): how many calls a relayed message costs, the
    figure that says how close a relay is to the kernel's own floor (one
    read and one write per message).  Without ``perf`` (Debian's
    ``linux-perf``) or the right to trace, :meth:`result` is None.
    """

    def __init__(self, pids: list[int], seconds: float) -> None:
        perf = shutil.which("perf")
        self._out: Optional[Path] = None
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._seconds = seconds
        if perf is not None and pids:
            handle, name = tempfile.mkstemp(prefix="bench-syscalls-")
            os.close(handle)
            self._out = Path(name)
            self._proc = subprocess.Popen(
                [perf, "stat", "-x", ",", "-o", str(self._out), "-e", "raw_syscalls:sys_enter",
                 "-p", ",".join(str(pid) for pid in pids), "--", "sleep", f"{seconds:.3f}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def result(self) -> Optional[int]:
        """The count once the stretch is over (waiting for perf at most the stretch and 10 s more), or None."""
        proc, self._proc, out = self._proc, None, self._out
        if proc is None or out is None:
            return None
        try:
            if proc.wait(timeout=self._seconds + 10) != 0:
                return None
            for line in out.read_text().splitlines():
                fields = line.split(",")
                if len(fields) > 2 and fields[2].startswith("raw_syscalls:sys_enter"):
                    if fields[0] == "<not counted>":  # the processes never ran while counted
                        return 0
                    return int(fields[0]) if fields[0].isdigit() else None
            return None
        except (subprocess.TimeoutExpired, OSError, ValueError):
            proc.kill()
            proc.wait()
            return None
        finally:
            out.unlink(missing_ok=True)


def memory_of(pids: list[int]) -> dict[str, int]:
    """Summed RSS and PSS (bytes) of processes, from /proc/PID/smaps_rollup."""
    total = {"rss": 0, "pss": 0}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("Rss", "Pss"):
                        total[key.lower()] += int(value.split()[0]) * 1024
        except OSError:
            continue
    return total


def _client_command(job: dict[str, Any], placement: Placement) -> list[str]:
    return pinned([sys.executable, "-m", placement.client_module, json.dumps(job)], placement.load)


def run_client(job: dict[str, Any], placement: Placement = Placement(), timeout: float = 300.0) -> dict[str, Any]:
    """Run one load-client job in its own process (the placement's client, on its load cores); return its JSON result."""
    out = subprocess.run(_client_command(job, placement), capture_output=True,
                         env=_env(), cwd=REPO, timeout=timeout, preexec_fn=_raise_nofile_in_child)
    if out.returncode != 0:
        raise RuntimeError(f"client job {job['job']} to {job['target']} failed: {out.stderr.decode(errors='replace')[-2000:]}")
    return dict(json.loads(out.stdout.splitlines()[-1]))


def start_idle_client(target: dict[str, Any], count: int, placement: Placement = Placement(),
                      timeout: float = 300.0) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a client holding count idle sessions; return it (close its stdin to end) and its report."""
    proc = subprocess.Popen(_client_command({"job": "idle", "target": target, "count": count}, placement),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_env(), cwd=REPO,
                            preexec_fn=_raise_nofile_in_child)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line:
        proc.kill()
        proc.wait(5)
        raise RuntimeError("the idle client failed")
    return proc, json.loads(line)


def run_clients(jobs: list[dict[str, Any]], placement: Placement = Placement(),
                timeout: float = 300.0) -> list[dict[str, Any]]:
    """Run load-client jobs in parallel processes; return their results in order (every process ends, on error too)."""
    procs = [subprocess.Popen(_client_command(job, placement), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_env(), cwd=REPO, preexec_fn=_raise_nofile_in_child)
             for job in jobs]
    try:
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"client failed: {err.decode(errors='replace')[-2000:]}")
            results.append(dict(json.loads(out.splitlines()[-1])))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
