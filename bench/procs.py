"""
The processes a benchmark run starts: the backends, tunnelgw (``twistd -n
tunnelgw`` from this working tree, or its multi-worker launcher), websockify
from PyPI, and the load client.  Each is stopped when the run ends.
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
import time
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent

__all__ = ["Backends", "Gateway", "Websockify", "memory_of", "run_client", "self_signed", "start_idle_client"]


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


def self_signed(folder: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1/localhost; return (cert, key)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
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


class Backends:
    """``python -m bench.servers`` in its own process; :attr:`ports` by name."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.servers"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env(), cwd=REPO)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError("the backends did not start")
        self.ports: dict[str, int] = json.loads(line)

    def stop(self) -> None:
        """Close stdin (the backends' signal to exit) and wait."""
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            _stop(self.proc)


_LISTENING = re.compile(r"(\S+):(\d+): listening on .* port=(\d+)\)")


class Gateway:
    """
    tunnelgw as a real process, from this working tree, routing /echo, /sink
    and /source (and a ws:// route set if given); ws and wss listeners on
    port 0, ports read from the log.  With workers > 1 it runs
    ``python -m tunnelgw.workers``.
    """

    def __init__(self, tmp: Path, backends: dict[str, int], cert: tuple[Path, Path], workers: int = 1,
                 tls: bool = True, extra_rules: str = "") -> None:
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
            command = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
                       "-n", "--pidfile=", "tunnelgw", "--config", str(self.config)]
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=_env(), cwd=tmp,
                                     preexec_fn=_raise_nofile_in_child)
        expected = 2 if tls else 1

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tunnelgw exited:\n{self.log()}")
            self.ports = {int(m.group(2)): int(m.group(3)) for m in _LISTENING.finditer(self.log())}
            return len(self.ports) >= expected

        _wait(ready, 30, "tunnelgw to listen")
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

    def __init__(self, tmp: Path, backend_port: int, cert: tuple[Path, Path], name: str) -> None:
        exe = shutil.which("websockify")
        if exe is None:
            raise RuntimeError("websockify is not installed: pip install '.[bench]'")
        self.port = _free_port()
        self.log_path = tmp / f"websockify-{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([exe, "--cert", str(cert[0]), "--key", str(cert[1]),
                                      f"127.0.0.1:{self.port}", f"127.0.0.1:{backend_port}"],
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


def run_client(job: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Run one load-client job in its own process; return its JSON result."""
    out = subprocess.run([sys.executable, "-m", "bench.client", json.dumps(job)], capture_output=True,
                         env=_env(), cwd=REPO, timeout=timeout, preexec_fn=_raise_nofile_in_child)
    if out.returncode != 0:
        raise RuntimeError(f"client job {job['job']} failed: {out.stderr.decode(errors='replace')[-2000:]}")
    return dict(json.loads(out.stdout.splitlines()[-1]))


def start_idle_client(target: dict[str, Any], count: int, timeout: float = 300.0) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a client holding count idle sessions; return it (close its stdin to end) and its report."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.client", json.dumps({"job": "idle", "target": target, "count": count})],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_env(), cwd=REPO,
                            preexec_fn=_raise_nofile_in_child)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line:
        proc.kill()
        raise RuntimeError("the idle client failed")
    return proc, json.loads(line)


def run_clients(jobs: list[dict[str, Any]], timeout: float = 300.0) -> list[dict[str, Any]]:
    """Run load-client jobs in parallel processes; return their results in order."""
    procs = [subprocess.Popen([sys.executable, "-m", "bench.client", json.dumps(job)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=_env(), cwd=REPO, preexec_fn=_raise_nofile_in_child)
             for job in jobs]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"client failed: {err.decode(errors='replace')[-2000:]}")
        results.append(dict(json.loads(out.splitlines()[-1])))
    return results
