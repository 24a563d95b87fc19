"""
Run the benchmark suite: ``python -m bench [--quick] [--runs N]`` from the
repository root.

It starts the loopback backends (TCP, and a WebSocket one for the WS->WS
figures), tunnelgw (``twistd -n tunnelgw`` from this tree) and its peers on
the same backends: websockify (from PyPI) and a minimal asyncio + websockets
bridge (:mod:`bench.bridge`) for ws:// -> TCP, nginx (one worker, as a
WebSocket reverse proxy) for WS->WS; a forward-auth portal (:mod:`bench.portal`)
and a recording folder for tunnelgw's ``auth=`` and ``record=on`` routes,
measured beside its plain route; simulated desktops (:mod:`bench.desktop`)
for the desktops figure, through tunnelgw and websockify.  Each is driven by the same load client
in its own process: picows on uvloop (:mod:`bench.fastclient`) by default,
the hand-written :mod:`bench.client` with ``--client plain``; ``--pin`` puts
the load side and the side under test on cores of their own.  With ``--runs N`` the whole run is made N times, with
fresh processes each time; the results (``bench/results/latest.md``,
``latest.json``, ``latest.png``) give medians and the per-run ratios.  See
docs/benchmarks.rst.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, Optional

from bench.procs import (CLIENTS, REPO, cores_named, cpu_seconds, Backends, Bridge, DesktopServer, Floor, Gateway, Nginx, Placement, Portal,
                         Redis, Websockify, WsBackend, memory_of, nginx_path, run_client, run_clients, self_signed,
                         start_idle_client)
from bench.report import Row, write_results

__all__ = ["Counts", "FULL", "QUICK", "SMOKE", "main", "ws_backends_supported"]

KIB = 1024
#: Sessions figure: concurrent workers in the client.
CONCURRENCY = 32


@dataclass(frozen=True)
class Counts:
    """How much work each figure does."""

    big: int  # 64 KiB messages per throughput run
    small: int  # 1 KiB messages per throughput run
    repeats: int  # throughput runs per figure (the median is kept)
    rtt: int  # round trips
    sessions: int  # new sessions (bounded by seconds too)
    session_seconds: float
    idle: int  # idle tunnelgw sessions
    idle_websockify: int  # idle websockify sessions (a process each)
    desktop_steps: tuple[int, ...] = (50, 100, 200, 300, 400, 600, 800, 1000, 1200, 1600)  # desktops at each step
    desktop_seconds: float = 5.0  # measured seconds per step
    desktop_cpu_at: int = 200  # the step whose CPU per desktop is reported
    desktop_p99_at: int = 400  # the step whose input p99 is reported


QUICK = Counts(big=2000, small=30_000, repeats=1, rtt=3000, sessions=2000, session_seconds=5, idle=3000,
               idle_websockify=100, desktop_steps=(100, 200, 400, 800), desktop_seconds=3.0)
FULL = Counts(big=5000, small=100_000, repeats=3, rtt=10_000, sessions=5000, session_seconds=20, idle=10_000,
              idle_websockify=200)
#: How long a ``--quick`` run takes, as measured (docs/benchmarks.rst says the same; a test checks).
QUICK_TIME = "about 3 minutes a run on 2 idle cores: 171 s measured, every figure"
#: Tiny counts for the test that keeps the suite from rotting.
SMOKE = Counts(big=20, small=200, repeats=1, rtt=50, sessions=20, session_seconds=5, idle=20, idle_websockify=4,
               desktop_steps=(2, 4), desktop_seconds=1.0, desktop_cpu_at=2, desktop_p99_at=4)
#: The desktops figure's bounds: input round trip p99 and gateway CPU (cores) for a step to count as carried.
DESKTOP_P99_MS = 20.0
DESKTOP_CORES = 1.0
#: A bound on one desktops job (one peer, one scheme, every step).
DESKTOP_JOB_SECONDS = 420.0


def ws_backends_supported() -> bool:
    """Whether this tree's tunnelgw accepts ``ws://`` backend targets."""
    from twisted.internet.testing import MemoryReactor

    from tunnelgw.core.config import ConfigError, parse_config
    from tunnelgw.service import check_config

    try:
        check_config(parse_config("Listen tcp:port=0\nProxyPass /x ws://127.0.0.1:1/x\n", "<probe>"), MemoryReactor())
        return True
    except ConfigError:
        return False


#: The Redis timeout= of the redis_hung figure.
REDIS_TIMEOUT = 0.5


def _refusal_wait(port: int, path: str) -> float:
    """Seconds from sending an upgrade for path to the gateway's answer (its status line), on a new connection."""
    with socket.create_connection(("127.0.0.1", port), 10) as s:
        started = time.monotonic()
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
        answer = s.recv(64)
        waited = time.monotonic() - started
    if not answer.startswith(b"HTTP/1.1 503"):
        raise RuntimeError(f"a Redis-route handshake with Redis hung got {answer[:40]!r}, not 503")
    return waited


def _target(kind: str, port: int, path: str = "/") -> dict[str, Any]:
    return {"kind": kind, "host": "127.0.0.1", "port": port, "path": path}


def _throughput_goals(scheme: str, job: str, size: int) -> tuple[tuple[str, float], ...]:
    """
    The targets of a ws:// -> TCP throughput row (issues 13 and 22): client->backend
    3x websockify; backend->client 64 KiB 1.5x websockify and 0.6x the direct
    ceiling, 1 KiB no worse than websockify; over wss 1.5x websockify, but
    client->backend 64 KiB 2x (issue 22).
    """
    if scheme == "wss":
        return (("websockify", 2.0),) if job == "upload" and size > KIB else (("websockify", 1.5),)
    if job == "upload":
        return (("websockify", 3.0),)
    return (("websockify", 1.5), ("direct", 0.6)) if size > KIB else (("websockify", 1.0),)


def _median(results: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in results))


#: The backends' names, as paths on every WebSocket peer.
NAMES = ("echo", "sink", "source")


class Suite:
    """One run: the processes, the counts, and the rows measured so far."""

    def __init__(self, counts: Counts, tmp: Path, stack: contextlib.ExitStack, log: Callable[[str], None],
                 placement: Placement = Placement(), session_clients: int = 1) -> None:
        self.c = counts
        self.tmp = tmp
        self.log = log
        self.at = placement
        self.session_clients = session_clients
        self.rows: list[Row] = []
        load, under_test = placement.load, placement.gateway
        self.backends = Backends(load)
        stack.callback(self.backends.stop)
        self.ws_backend_server = WsBackend(load)
        stack.callback(self.ws_backend_server.stop)
        self.cert = self_signed(tmp)
        self.ws_route = ws_backends_supported()
        extra = ""
        if self.ws_route:
            # tunnelgw's WS->WS route: /ws-NAME to the WebSocket backend's /NAME.
            extra = "\n".join(f"ProxyPass /ws-{name} ws://127.0.0.1:{self.ws_backend_server.port}/{name}"
                              for name in NAMES)
        self.gateway = Gateway(tmp, self.backends.ports, self.cert, extra_rules=extra, cores=under_test)
        stack.callback(self.gateway.stop)
        self.websockify = {}
        for name, port in self.backends.ports.items():
            w = Websockify(tmp, port, self.cert, name, cores=under_test)
            stack.callback(w.stop)
            self.websockify[name] = w
        self.bridge = Bridge(self.backends.ports, self.cert, cores=under_test)
        stack.callback(self.bridge.stop)
        self.floor = Floor(self.backends.ports["echo"], cores=under_test)
        stack.callback(self.floor.stop)
        self.nginx: Optional[Nginx] = None
        if nginx_path():
            self.nginx = Nginx(tmp / "nginx", self.ws_backend_server.port, self.cert, cores=under_test)
            stack.callback(self.nginx.stop)
        else:
            log("nginx is not installed: no nginx figures")

    def _run(self, job: dict[str, Any], key: str, repeats: int = 1) -> float:
        return _median([run_client(job, self.at) for _ in range(repeats)], key)

    def _ws_to_tcp(self, scheme: str, name: str) -> dict[str, Optional[dict[str, Any]]]:
        """The targets of the ws:// -> TCP peers for backend name."""
        tls = scheme == "wss"
        return {"tunnelgw": _target(scheme, self.gateway.wss_port if tls else self.gateway.ws_port, f"/{name}"),
                "websockify": _target(scheme, self.websockify[name].port),
                "bridge": _target(scheme, self.bridge.tls_port if tls else self.bridge.port, f"/{name}"),
                "direct": _target("tcp", self.backends.ports[name])}

    def _ws_to_ws(self, name: str, scheme: str = "ws") -> dict[str, Optional[dict[str, Any]]]:
        """The targets of the WS->WS peers for backend name (None: not measured); wss: TLS at the gateways."""
        tls = scheme == "wss"
        return {"tunnelgw": _target(scheme, self.gateway.wss_port if tls else self.gateway.ws_port, f"/ws-{name}")
                if self.ws_route else None,
                "nginx": _target(scheme, self.nginx.tls_port if tls else self.nginx.port, f"/{name}")
                if self.nginx else None,
                "direct": _target("ws", self.ws_backend_server.port, f"/{name}")}

    def _each(self, targets: dict[str, Optional[dict[str, Any]]], measure: Callable[[dict[str, Any]], Any],
              failed: Optional[list[str]] = None) -> dict[str, Any]:
        """
        measure for each target.  With a failed list, a peer's failed job
        (not tunnelgw's, nor the ceiling's: those raise) leaves the peer out
        and is told in failed, so one peer's fault does not end the run.
        """
        found = {}
        for peer, t in targets.items():
            if t is None:
                continue
            try:
                found[peer] = measure(t)
            except RuntimeError as e:
                if failed is None or peer in ("tunnelgw", "direct"):
                    raise
                why = str(e).strip().splitlines()[-1]
                failed.append(f"{peer} failed ({why})")
                self.log(f"{peer} failed: {why}")
        return found

    def throughput(self) -> None:
        """Client->backend and backend->client MB/s, 64 KiB and 1 KiB, ws and wss, ws:// -> TCP."""
        direct: dict[tuple[str, int], float] = {}
        for scheme in ("ws", "wss"):
            for size, count in ((64 * KIB, self.c.big), (KIB, self.c.small)):
                for job, name, label in (("upload", "sink", "client->backend"), ("download", "source", "backend->client")):
                    spec = {"job": job, "size": size, "count": count}
                    targets = self._ws_to_tcp(scheme, name)
                    if (job, size) in direct:  # the direct ceiling is the same for ws and wss
                        del targets["direct"]
                    failed: list[str] = []
                    v = self._each(targets, lambda t: self._run(spec | {"target": t}, "mbps", self.c.repeats), failed)
                    direct.setdefault((job, size), v.get("direct", 0.0))
                    v["direct"] = direct[(job, size)]
                    row = Row(f"{label} {size // KIB} KiB {scheme}", "MB/s", goals=_throughput_goals(scheme, job, size),
                              note="; ".join(failed), **v)
                    self.log(f"{row.figure}: " + ", ".join(f"{k} {x:.0f}" for k, x in v.items()))
                    self.rows.append(row)

    def round_trip(self) -> None:
        """64-byte echo round trips, ws:// -> TCP: p50 (issue 22: <= 0.75x websockify) and p99 in microseconds."""
        v = self._each(self._ws_to_tcp("ws", "echo"), lambda t: run_client({"job": "rtt", "count": self.c.rtt, "target": t}, self.at))
        for key, label, goal in (("p50_us", "p50", 0.75), ("p99_us", "p99", 1.0)):
            self.rows.append(Row(f"64 B echo round trip {label}", "µs", higher=False, goals=(("websockify", goal),),
                                 **{peer: r[key] for peer, r in v.items()}))
        self.log("rtt: " + ", ".join(f"{k} {r['p50_us']:.0f}/{r['p99_us']:.0f}" for k, r in v.items()))

    def _sessions(self, target: dict[str, Any]) -> dict[str, Any]:
        """
        The sessions job, by ``session_clients`` client processes at once
        (CONCURRENCY workers and the count shared among them): sessions
        summed, over the longest process's time.
        """
        k = self.session_clients
        job = {"job": "sessions", "concurrency": CONCURRENCY // k, "count": -(-self.c.sessions // k),
               "seconds": self.c.session_seconds, "target": target}
        if k == 1:
            return run_client(job, self.at)
        results = run_clients([job] * k, self.at)
        seconds = max(r["seconds"] for r in results)
        done = sum(r["sessions"] for r in results)
        return {"sessions": done, "errors": sum(r["errors"] for r in results), "seconds": seconds,
                "per_second": done / seconds, "processes": k,
                "client_cpu_seconds": sum(r.get("client_cpu_seconds", 0.0) for r in results)}

    def sessions(self) -> None:
        """
        New sessions per second (32 concurrent), ws:// -> TCP and WS->WS
        (nginx, tunnelgw's ws:// route), and WS->WS with wss:// at the
        gateways (TLS handshakes included).  Issue 22's targets: ws:// -> TCP
        >= 0.8x the Twisted floor and >= 8x websockify; WS->WS >= 0.6x
        nginx; over wss >= 0.8x nginx over wss.
        """
        tcp = self._each(self._ws_to_tcp("ws", "echo") | {"floor": _target("ws", self.floor.port, "/echo")},
                         self._sessions)
        ws = self._each(self._ws_to_ws("echo"), self._sessions)
        wss = self._each({peer: t for peer, t in self._ws_to_ws("echo", "wss").items() if peer != "direct"},
                         self._sessions)
        errors = {f"{peer}{' ws->ws' if route is ws else ' wss' if route is wss else ''}": r["errors"]
                  for route in (tcp, ws, wss) for peer, r in route.items() if r["errors"]}
        note = ("errors: " + ", ".join(f"{k} {n}" for k, n in errors.items())) if errors else ""
        self.rows.append(Row(f"new sessions/s, {CONCURRENCY} concurrent", "sessions/s",
                             goals=(("websockify", 8.0), ("floor", 0.8)), note=note,
                             **{peer: r["per_second"] for peer, r in tcp.items()}))
        self.rows.append(Row(f"new sessions/s, {CONCURRENCY} concurrent, ws:// backend", "sessions/s",
                             goals=(("nginx", 0.6),), **{peer: r["per_second"] for peer, r in ws.items()}))
        self.rows.append(Row(f"new sessions/s, {CONCURRENCY} concurrent, wss, ws:// backend", "sessions/s",
                             goals=(("nginx", 0.8),), **{peer: r["per_second"] for peer, r in wss.items()}))
        self.log("sessions ws->tcp: " + ", ".join(f"{k} {r['per_second']:.0f}" for k, r in tcp.items())
                 + "; ws->ws: " + ", ".join(f"{k} {r['per_second']:.0f}" for k, r in ws.items())
                 + "; wss ws->ws: " + ", ".join(f"{k} {r['per_second']:.0f}" for k, r in wss.items())
                 + (f"; {note}" if note else ""))

    def tokens(self) -> None:
        """New sessions/s on token routes: the token looked up in a file, and in Redis (issue 15: >= 0.8x)."""
        folder = self.tmp / "tokens"
        folder.mkdir(exist_ok=True)
        redis = Redis(folder / "redis", self.at.load)
        try:
            echo = self.backends.ports["echo"]
            (folder / "tokens").write_text(f"t: 127.0.0.1:{echo}\n")
            redis.set("bench:t", f"127.0.0.1:{echo}")
            rules = (f"TokenSource file file {folder / 'tokens'} allow=127.0.0.1:{echo}\nTokenRoute /tf file\n"
                     f"TokenSource redis redis redis://127.0.0.1:{redis.port}/0 namespace=bench "
                     f"allow=127.0.0.1:{echo}\nTokenRoute /tr redis\n")
            gateway = Gateway(folder, {}, self.cert, tls=False, extra_rules=rules, cores=self.at.gateway)
            try:
                found = {kind: self._sessions(_target("ws", gateway.ws_port, f"/t{kind}?token=t")) for kind in "fr"}
            finally:
                gateway.stop()
        finally:
            redis.stop()
        file, from_redis = found["f"]["per_second"], found["r"]["per_second"]
        ratio = from_redis / file if file else float("nan")
        self.rows.append(Row(f"new sessions/s, {CONCURRENCY} concurrent, file token route", "sessions/s", tunnelgw=file))
        self.rows.append(Row(f"new sessions/s, {CONCURRENCY} concurrent, Redis token route", "sessions/s",
                             tunnelgw=from_redis, note=f"Redis/file {ratio:.2f} in this run (target >= 0.9)"))
        self.log(f"token routes: file {file:.0f}/s, redis {from_redis:.0f}/s ({ratio:.2f}x)")

    def redis_hung(self) -> None:
        """
        With the token Redis hung (SIGSTOP): sessions/s on a plain route against the healthy figure, and the
        longest wait of a Redis-route handshake for its 503 (issue 24: within 10 %, and timeout= + 0.2 s).
        """
        folder = self.tmp / "redis_hung"
        folder.mkdir(exist_ok=True)
        redis = Redis(folder / "redis", self.at.load)
        try:
            echo = self.backends.ports["echo"]
            redis.set("bench:t", f"127.0.0.1:{echo}")
            rules = (f"TokenSource redis redis redis://127.0.0.1:{redis.port}/0 namespace=bench timeout={REDIS_TIMEOUT} "
                     f"allow=127.0.0.1:{echo}\nTokenRoute /tr redis\n")
            gateway = Gateway(folder, {"echo": echo}, self.cert, tls=False, extra_rules=rules, cores=self.at.gateway)
            try:
                plain = _target("ws", gateway.ws_port, "/echo")
                healthy = self._sessions(plain)
                redis.proc.send_signal(signal.SIGSTOP)
                try:
                    waits = [_refusal_wait(gateway.ws_port, "/tr?token=t") for _ in range(5)]
                    hung = self._sessions(plain)
                finally:
                    redis.proc.send_signal(signal.SIGCONT)
            finally:
                gateway.stop()
        finally:
            redis.stop()
        if not healthy["per_second"] or not hung["per_second"]:
            raise RuntimeError(f"the plain route opened no session: healthy {healthy}, hung {hung}")
        ratio = hung["per_second"] / healthy["per_second"]
        self.rows.append(Row(f"new sessions/s, {CONCURRENCY} concurrent, plain route, Redis hung", "sessions/s",
                             tunnelgw=hung["per_second"],
                             note=f"healthy {healthy['per_second']:.0f}/s: {ratio:.2f}x (target >= 0.9); Redis-route "
                                  f"503 after {waits[0]:.3f} s then at most {max(waits[1:]):.3f} s "
                                  f"(timeout={REDIS_TIMEOUT}; target <= timeout + 0.2 s)"))
        self.log(f"redis hung: plain {hung['per_second']:.0f}/s vs healthy {healthy['per_second']:.0f}/s "
                 f"({ratio:.2f}x); Redis-route waits " + ", ".join(f"{w:.3f}" for w in waits))

    def _idle_memory(self, pids: Callable[[], list[int]], target: dict[str, Any], count: int, key: str) -> tuple[float, int]:
        before = memory_of(pids())[key]
        proc, report = start_idle_client(target, count, self.at)
        try:
            time.sleep(1.0)  # let the last sessions settle before reading memory (not a synchronisation)
            after = memory_of(pids())[key]
        finally:
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(60)
        opened = int(report["opened"])
        return ((after - before) / opened if opened else float("nan")), opened

    def memory(self) -> None:
        """Memory per idle session: tunnelgw at (up to) 10,000, websockify at a few hundred."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        wanted = self.c.idle
        # The gateway holds two descriptors per session (client and backend).
        count = min(wanted, (hard - 200) // 2) if hard != resource.RLIM_INFINITY else wanted
        # Warm up code paths and allocator pools first.
        run_client({"job": "sessions", "concurrency": 8, "count": 50, "seconds": 5,
                    "target": _target("ws", self.gateway.ws_port, "/echo")}, self.at)
        tg, opened = self._idle_memory(lambda: self.gateway.pids, _target("ws", self.gateway.ws_port, "/echo"), count, "rss")
        ws = self.websockify["echo"]
        wf, wf_opened = self._idle_memory(lambda: ws.pids, _target("ws", ws.port), self.c.idle_websockify, "pss")
        note = f"tunnelgw at {opened} sessions (RSS), websockify at {wf_opened} (PSS sum)"
        if count < wanted:
            note += f"; RLIMIT_NOFILE hard limit {hard} caps the count"
        self.rows.append(Row("memory per idle session", "KB", tg / 1000, wf / 1000, higher=False, goals=(("", 8.0),),
                             note=note))
        self.log(f"memory: tunnelgw {tg / 1000:.1f} KB/session at {opened}; websockify {wf / 1000:.1f} KB at {wf_opened}")

    def ws_backend(self) -> None:
        """WS->WS: tunnelgw's ws:// route, nginx and the WebSocket backend itself (the ceiling)."""
        for scheme in ("ws", "wss"):
            for size, count in ((64 * KIB, self.c.big), (KIB, self.c.small)):
                for job, name, label in (("upload", "sink", "client->backend"), ("download", "source", "backend->client")):
                    spec = {"job": job, "size": size, "count": count}
                    failed: list[str] = []
                    v = self._each(self._ws_to_ws(name, scheme),
                                   lambda t: self._run(spec | {"target": t}, "mbps", self.c.repeats), failed)
                    row = Row(f"{label} {size // KIB} KiB {scheme}, ws:// backend", "MB/s", goals=(("nginx", 1.0),),
                              note="; ".join(failed), **v)
                    self.log(f"{row.figure}: " + ", ".join(f"{k} {x:.0f}" for k, x in v.items()))
                    self.rows.append(row)
        rtt = self._each(self._ws_to_ws("echo"), lambda t: run_client({"job": "rtt", "count": self.c.rtt, "target": t}, self.at))
        for key, label, goals in (("p50_us", "p50", (("nginx", 1.0),)), ("p99_us", "p99", ())):
            self.rows.append(Row(f"64 B echo round trip {label}, ws:// backend", "µs", higher=False, goals=goals,
                                 **{peer: r[key] for peer, r in rtt.items()}))
        self.log("rtt ws->ws: " + ", ".join(f"{k} {r['p50_us']:.0f}/{r['p99_us']:.0f}" for k, r in rtt.items()))

    def routes(self) -> None:
        """
        tunnelgw's ``auth=`` route (a real portal, :mod:`bench.portal`, answers;
        ``cache=5``) and ``record=on`` route beside its plain route, on one
        gateway of their own, ws:// -> TCP: 64 KiB MB/s both ways (and the
        gateway's CPU per MB, the recording writer thread included), new
        sessions/s on the auth= route.  After a warm-up on each, the routes
        take turns within each repeat, each first in turn; a portal that was never asked or a recording never written
        ends the run (the figure would not be what it says).
        """
        folder = self.tmp / "routes"
        recordings = folder / "recordings"
        recordings.mkdir(parents=True)
        portal = Portal(self.at.load)
        try:
            rules = [f"AuthPortal bench http://127.0.0.1:{portal.port}/auth timeout=2 cache=5",
                     # maxbytes far above what a figure relays: no recording stops half-way.
                     f"Recording {recordings} maxbytes={1 << 40}"]
            for name, port in self.backends.ports.items():
                rules.append(f"ProxyPass /auth-{name} tcp:host=127.0.0.1:port={port} auth=bench")
                rules.append(f"ProxyPass /rec-{name} tcp:host=127.0.0.1:port={port} record=on")
            gateway = Gateway(folder, self.backends.ports, self.cert, tls=False, extra_rules="\n".join(rules),
                              cores=self.at.gateway)
            try:
                self._routes_on(gateway, portal, recordings)
            finally:
                gateway.stop()
        finally:
            portal.stop()

    def _routes_on(self, gateway: Gateway, portal: Portal, recordings: Path) -> None:
        prefixes = {"plain": "/", "auth": "/auth-", "record": "/rec-"}
        kinds = list(prefixes)
        recorded = 0
        for kind, prefix in prefixes.items():  # warm-up: first sessions, the portal's connection, the writer thread
            run_client({"job": "download", "size": 64 * KIB, "count": 20,
                        "target": _target("ws", gateway.ws_port, f"{prefix}source")}, self.at)
        for job, name, label in (("download", "source", "backend->client"), ("upload", "sink", "client->backend")):
            mbps: dict[str, list[float]] = {kind: [] for kind in prefixes}
            cpu = dict.fromkeys(prefixes, 0.0)
            moved = dict.fromkeys(prefixes, 0)
            for repeat in range(self.c.repeats):
                for kind in kinds[repeat % 3:] + kinds[:repeat % 3]:  # each route first in turn
                    prefix = prefixes[kind]
                    spec = {"job": job, "size": 64 * KIB, "count": self.c.big,
                            "target": _target("ws", gateway.ws_port, f"{prefix}{name}")}
                    before = cpu_seconds(gateway.pids)
                    result = run_client(spec, self.at)
                    cpu[kind] += cpu_seconds(gateway.pids) - before
                    moved[kind] += result["bytes"]
                    mbps[kind].append(result["mbps"])
                    for f in recordings.iterdir():  # recorded bytes are not kept: a full run would fill the disk
                        recorded += f.stat().st_size
                        f.unlink()
            if not recorded:
                raise RuntimeError("the record=on route wrote no recording")
            values = {kind: float(statistics.median(v)) for kind, v in mbps.items()}
            per_mb = {kind: (cpu[kind] * 1000 / (moved[kind] / 1e6) if cpu[kind] else None) for kind in prefixes}
            figure = f"{label} 64 KiB ws"
            self.rows.append(Row(f"{figure}, auth= route", "MB/s", tunnelgw=values["auth"], plain=values["plain"],
                                 goals=(("plain", 0.9),)))
            self.rows.append(Row(f"{figure}, record=on route", "MB/s", tunnelgw=values["record"], plain=values["plain"]))
            self.rows.append(Row(f"gateway CPU per MB, {figure}, record=on route", "CPU-ms/MB", tunnelgw=per_mb["record"],
                                 plain=per_mb["plain"], higher=False, goals=(("plain", 2.0),),
                                 note="the writer thread included"))
            self.log(f"routes {figure}: " + ", ".join(f"{k} {values[k]:.0f} MB/s ({cpu[k]:.2f} CPU-s)" for k in prefixes))
        # Each route first once (plain, auth, auth, plain): the second of two back-to-back session runs meets the
        # first one's TIME_WAIT sockets and the gateway's grown heap, so a fixed order favours one route.
        done: dict[str, list[float]] = {"plain": [0.0, 0.0], "auth": [0.0, 0.0]}
        for kind in ("plain", "auth", "auth", "plain"):
            result = self._sessions(_target("ws", gateway.ws_port, f"{prefixes[kind]}echo"))
            done[kind][0] += result["sessions"]
            done[kind][1] += result["seconds"]
        sessions = {kind: {"per_second": n / seconds if seconds else 0.0} for kind, (n, seconds) in done.items()}
        asked = portal.asked()
        if not asked:
            raise RuntimeError("the auth= route never asked its portal")
        self.rows.append(Row(f"new sessions/s, {CONCURRENCY} concurrent, auth= route", "sessions/s",
                             tunnelgw=sessions["auth"]["per_second"], plain=sessions["plain"]["per_second"],
                             goals=(("plain", 0.9),),
                             note=f"portal cache=5: {asked} questions in this run"))
        self.log(f"routes sessions: plain {sessions['plain']['per_second']:.0f}/s, "
                 f"auth {sessions['auth']['per_second']:.0f}/s; the portal was asked {asked} times")

    def desktops(self) -> None:
        """
        The desktops figure, ws:// -> TCP to :mod:`bench.desktop`, tunnelgw
        (one process, a gateway of its own) and websockify (all its
        processes), over ws and wss: steps of ever more desktops
        (:attr:`Counts.desktop_steps`), each measured for
        :attr:`Counts.desktop_seconds` by one fast load client process
        (whatever ``--client`` says).  Rows: the
        CPU per desktop at :attr:`Counts.desktop_cpu_at` desktops, the most
        desktops carried (input p99 <= DESKTOP_P99_MS, CPU <= DESKTOP_CORES
        cores, every desktop open) and the input p99 at
        :attr:`Counts.desktop_p99_at` desktops.
        """
        folder = self.tmp / "desktops"
        folder.mkdir()
        # Only the fast client has the desktops job (hundreds of sessions in one process).
        fast = Placement("fast", self.at.load, self.at.gateway)
        with contextlib.ExitStack() as stack:
            desk = DesktopServer(self.at.load)
            stack.callback(desk.stop)
            gateway = Gateway(folder, {"desktop": desk.port}, self.cert, cores=self.at.gateway)
            stack.callback(gateway.stop)
            websockify = Websockify(folder, desk.port, self.cert, "desktop", cores=self.at.gateway)
            stack.callback(websockify.stop)
            for scheme in ("ws", "wss"):
                targets = {"tunnelgw": (_target(scheme, gateway.wss_port if scheme == "wss" else gateway.ws_port,
                                                "/desktop"), gateway.proc.pid),
                           "websockify": (_target(scheme, websockify.port), websockify.proc.pid)}
                found = {peer: run_client({"job": "desktops", "target": target, "cpu_of": [pid],
                                           "steps": list(self.c.desktop_steps), "seconds": self.c.desktop_seconds,
                                           "p99_limit_ms": DESKTOP_P99_MS, "cpu_limit": DESKTOP_CORES,
                                           "report_up_to": max(self.c.desktop_cpu_at, self.c.desktop_p99_at),
                                           "max_seconds": DESKTOP_JOB_SECONDS},
                                          fast, timeout=DESKTOP_JOB_SECONDS + 60)
                         for peer, (target, pid) in targets.items()}
                self._desktop_rows(scheme, found)

    def _desktop_rows(self, scheme: str, found: dict[str, dict[str, Any]]) -> None:
        def step(peer: str, count: int) -> Optional[dict[str, Any]]:
            return next((s for s in found[peer]["steps"] if s["asked"] == count and s["desktops"] == count), None)

        cpu: dict[str, Optional[float]] = {}
        calls: dict[str, Optional[float]] = {}
        p99: dict[str, Optional[float]] = {}
        carried: dict[str, Optional[float]] = {}
        for peer in found:
            at = step(peer, self.c.desktop_cpu_at)
            cpu[peer] = at["cores"] * 1000 / at["desktops"] if at and at["cores"] else None
            calls[peer] = at.get("syscalls_per_message") if at else None
            at = step(peer, self.c.desktop_p99_at)
            p99[peer] = at["p99_ms"] if at else None
            carried[peer] = float(max((s["desktops"] for s in found[peer]["steps"] if s["carried"]), default=0))
            self.log(f"desktops {scheme} {peer}: " + "; ".join(
                f"{s['desktops']}: p99 {s['p99_ms']:.1f} ms, {s['cores']:.2f} cores (client {s['client_cores']:.2f}), "
                f"screens {s['screens_delivered']:.2f}"
                + (f", {s['syscalls_per_message']:.2f} system calls per message"
                   if s.get("syscalls_per_message") is not None else "") for s in found[peer]["steps"])
                + (f"; {found[peer]['errors']} errors ({found[peer]['last_error']})" if found[peer]["errors"] else ""))
        steps = ", ".join(str(n) for n in self.c.desktop_steps)
        self.rows.append(Row(f"desktops {scheme}: CPU per desktop at {self.c.desktop_cpu_at} desktops", "CPU-ms/s",
                             tunnelgw=cpu["tunnelgw"], websockify=cpu["websockify"], higher=False,
                             goals=(("websockify", 0.25),)))
        self.rows.append(Row(f"desktops {scheme}: system calls per message relayed at {self.c.desktop_cpu_at} desktops",
                             "calls", tunnelgw=calls["tunnelgw"], websockify=calls["websockify"], higher=False,
                             note="perf stat (linux-perf); 2 when each message is read once and written once"))
        self.rows.append(Row(f"desktops {scheme}: most desktops under one core, input p99 <= {DESKTOP_P99_MS:g} ms",
                             "desktops", tunnelgw=carried["tunnelgw"], websockify=carried["websockify"],
                             note=f"the largest step carried of {steps}"))
        self.rows.append(Row(f"desktops {scheme}: input round trip p99 at {self.c.desktop_p99_at} desktops", "ms",
                             tunnelgw=p99["tunnelgw"], websockify=p99["websockify"], higher=False,
                             goals=(("", 5.0),) if scheme == "wss" else ()))

    def _worker_cores(self, n: int) -> Optional[str]:
        """Where n workers run when pinned: the gateway's cores for one, every core for more."""
        if self.at.gateway is None:
            return None
        return self.at.gateway if n == 1 else f"0-{(os.cpu_count() or 2) - 1}"

    def workers(self, counts: tuple[int, ...] = (1, 2)) -> None:
        """
        ``python -m tunnelgw.workers -n 1`` and ``-n 2``: aggregate
        client->backend MB/s (64 KiB, ws, 2 parallel clients) and new
        sessions/s (2 client processes, 16 concurrent each).
        """
        for n in counts:
            folder = self.tmp / f"workers-{n}"
            folder.mkdir()
            cores = self._worker_cores(n)
            gateway = Gateway(folder, self.backends.ports, self.cert, workers=n, tls=False, cores=cores)
            try:
                jobs = [{"job": "upload", "size": 64 * KIB, "count": self.c.big,
                         "target": _target("ws", gateway.ws_port, "/sink")} for _ in range(2)]
                # The gateway's own CPU time per job (all its processes): what one core of gateway does,
                # whether or not the machine has a free core for each worker.
                cpu = cpu_seconds(gateway.pids)
                results = run_clients(jobs, self.at)
                upload_cpu, cpu = cpu_seconds(gateway.pids) - cpu, cpu_seconds(gateway.pids)
                sessions = [{"job": "sessions", "concurrency": CONCURRENCY // 2, "count": self.c.sessions // 2,
                             "seconds": self.c.session_seconds, "target": _target("ws", gateway.ws_port, "/echo")}] * 2
                opened = run_clients(sessions, self.at)
                sessions_cpu = cpu_seconds(gateway.pids) - cpu
            finally:
                gateway.stop()
            sent = sum(r["bytes"] for r in results) / 1e6
            total = sent / max(r["seconds"] for r in results)
            done = sum(r["sessions"] for r in opened)
            rate = done / max(r["seconds"] for r in opened)
            where = f"workers on {cores_named(cores)}, clients on {cores_named(self.at.load)}" if cores else ""
            workers = f"{n} worker{'s' if n > 1 else ''}"
            self.rows.append(Row(f"client->backend 64 KiB ws, 2 clients, {workers}", "MB/s", total, note=where))
            self.rows.append(Row(f"client->backend 64 KiB ws, 2 clients, {workers}, per gateway CPU-second",
                                 "MB/CPU-s", sent / upload_cpu if upload_cpu else None))
            self.rows.append(Row(f"new sessions/s, 2 client processes, {workers}", "sessions/s", rate, note=where))
            self.rows.append(Row(f"new sessions, 2 client processes, {workers}, per gateway CPU-second",
                                 "sessions/CPU-s", done / sessions_cpu if sessions_cpu else None))
            self.log(f"workers {n}: {total:.0f} MB/s ({upload_cpu:.2f} gateway CPU-s), {rate:.0f} sessions/s "
                     f"({sessions_cpu:.2f} gateway CPU-s)" + (f" ({where})" if where else ""))


#: The figures of one run, in order, by the name ``--only`` takes.
FIGURES = ("throughput", "round_trip", "sessions", "tokens", "redis_hung", "routes", "ws_backend", "memory", "workers",
           "desktops")


#: What each figure measures, for ``--help``.
FIGURE_HELP = {
    "throughput": "MB/s both ways, 64 KiB and 1 KiB, ws and wss, ws:// -> TCP",
    "round_trip": "64 B echo round trips p50/p99",
    "sessions": "new sessions/s, ws:// -> TCP and WS->WS",
    "tokens": "new sessions/s on file and Redis token routes",
    "redis_hung": "new sessions/s on a plain route with the Redis of a token route hung (SIGSTOP), and the 503 waits",
    "routes": "auth= (a real portal) and record=on routes beside the plain route: MB/s, gateway CPU per MB, "
              "sessions/s",
    "ws_backend": "WS->WS MB/s and round trips beside nginx",
    "memory": "memory per idle session",
    "workers": "1 and 2 worker processes",
    "desktops": "sessions at once with 20 KB screens at 10 Hz and 100 B input at 20 Hz answered at once, tunnelgw "
                "and websockify over ws and wss: CPU per desktop at 200, most desktops under one core with input "
                "p99 <= 20 ms, input p99 at 400",
}


def one_run(counts: Counts, folder: Path, log: Callable[[str], None],
            figures: tuple[str, ...] = FIGURES, placement: Placement = Placement(), session_clients: int = 1) -> list[Row]:
    """Start every process, measure the figures named (all by default), stop every process; return the rows."""
    with contextlib.ExitStack() as stack:
        suite = Suite(counts, folder, stack, log, placement, session_clients)
        for name in FIGURES:
            if name in figures:
                getattr(suite, name)()
        return suite.rows


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises SystemExit, so every started process is stopped on the way out."""
    def handler(signum: int, frame: Optional[FrameType]) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave the signal alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _client_meta(name: str) -> str:
    """The load client in words, with the versions it runs on."""
    if name == "plain":
        return "plain: bench/client.py (blocking sockets; asyncio for sessions and idle)"
    from importlib.metadata import version

    return (f"fast: bench/fastclient.py, picows {version('picows')} on uvloop {version('uvloop')} "
            "(raw TCP stream jobs and idle: bench/client.py)")


def main(argv: Optional[list[str]] = None, counts: Optional[Counts] = None) -> int:
    """Run the suite (N times with ``--runs``) and write the results; return 0 (the table says whether targets are met)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     epilog="figures: " + "; ".join(f"{k}: {v}" for k, v in FIGURE_HELP.items())
                                     + " (docs/benchmarks.rst).")
    parser.add_argument("--quick", action="store_true", help=f"small counts ({QUICK_TIME})")
    parser.add_argument("--runs", type=int, default=1, help="make the whole run N times; report medians and per-run ratios")
    parser.add_argument("--out", type=Path, help="where to write latest.* (default: bench/results)")
    parser.add_argument("--idle-sessions", type=int, help="idle tunnelgw sessions for the memory figure")
    parser.add_argument("--only", action="append", choices=FIGURES, metavar="FIGURE",
                        help=f"measure only this figure (repeatable; one of {', '.join(FIGURES)}); "
                             "the results go to --out only if it is given, else the table is only printed")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="fast",
                        help="the load client: fast (picows on uvloop, bench/fastclient.py; the default) or plain "
                             "(the hand-written blocking-socket client, bench/client.py)")
    parser.add_argument("--pin", action="store_true",
                        help="taskset -c 0 for clients and backends, -c 1 for tunnelgw and each peer (2 workers: 0-1)")
    parser.add_argument("--session-clients", type=int, default=1, metavar="K",
                        help="run the sessions figures as K client processes at once and sum them (default 1)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not 1 <= args.session_clients <= CONCURRENCY:
        parser.error(f"--session-clients must be between 1 and {CONCURRENCY}")
    placement = Placement(args.client)
    if args.pin:
        if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
            parser.error("--pin needs two cores and taskset (util-linux)")
        placement = Placement(args.client, load="0", gateway="1")
    figures = tuple(args.only) if args.only else FIGURES
    if counts is None:
        counts = QUICK if args.quick else FULL
    if args.idle_sessions:
        counts = Counts(**{**counts.__dict__, "idle": args.idle_sessions})
    from autobahn.websocket import USES_NVX

    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)

    runs: list[list[Row]] = []
    run_seconds: list[float] = []
    with _sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="tunnelgw-bench-") as folder:
        for i in range(1, args.runs + 1):
            log(f"run {i} of {args.runs}")
            run_started = time.monotonic()
            run_folder = Path(folder) / f"run-{i}"
            run_folder.mkdir()
            runs.append(one_run(counts, run_folder, log, figures, placement, args.session_clients))
            run_seconds.append(round(time.monotonic() - run_started, 1))
    meta: dict[str, object] = {"mode": "quick" if counts == QUICK else ("full" if counts == FULL else "custom"),
            "counts": counts.__dict__, "autobahn NVX": USES_NVX, "ws:// backend figures": ws_backends_supported(),
            "nginx": "1 worker, master_process off, proxy_buffer_size 64k" if nginx_path() else "not installed",
            "tree": str(REPO), "cores": os.cpu_count(), "client": _client_meta(args.client),
            "session client processes": args.session_clients, "pinning": placement.describe(),
            "seconds per run": run_seconds,
            "seconds": round(time.monotonic() - started, 1)}
    if args.only:
        meta["figures"] = ", ".join(figures)
    out = args.out
    if out is None and not args.only:
        out = REPO / "bench" / "results"
    if out is None:
        # A subset must not overwrite the full results the README links: write to a scratch folder, print the table.
        with tempfile.TemporaryDirectory(prefix="tunnelgw-bench-only-") as scratch:
            print(write_results(runs, Path(scratch), meta))
    else:
        print(write_results(runs, out, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
