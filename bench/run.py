"""
Run the benchmark suite: ``python -m bench [--quick]`` from the repository root.

It starts the loopback backends, tunnelgw (``twistd -n tunnelgw`` from this
tree) and websockify (from PyPI) on the same backends, drives each with the
same load client in its own process, and writes ``bench/results/latest.md``,
``latest.json`` and ``latest.png``.  See docs/benchmarks.rst.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from bench.procs import (REPO, Backends, Gateway, Websockify, memory_of, run_client, run_clients, self_signed,
                         start_idle_client)
from bench.report import Row, write_results

__all__ = ["Counts", "FULL", "QUICK", "main", "ws_backends_supported"]

KIB = 1024


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


QUICK = Counts(big=2000, small=30_000, repeats=1, rtt=3000, sessions=2000, session_seconds=5, idle=3000,
               idle_websockify=100)
FULL = Counts(big=5000, small=100_000, repeats=3, rtt=10_000, sessions=5000, session_seconds=20, idle=10_000,
              idle_websockify=200)
#: Tiny counts for the test that keeps the suite from rotting.
SMOKE = Counts(big=20, small=200, repeats=1, rtt=50, sessions=20, session_seconds=5, idle=20, idle_websockify=4)


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


def _target(kind: str, port: int, path: str = "/") -> dict[str, Any]:
    return {"kind": kind, "host": "127.0.0.1", "port": port, "path": path}


def _median(results: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in results))


class Suite:
    """One run: the processes, the counts, and the rows measured so far."""

    def __init__(self, counts: Counts, tmp: Path, stack: contextlib.ExitStack, log: Callable[[str], None]) -> None:
        self.c = counts
        self.tmp = tmp
        self.stack = stack
        self.log = log
        self.rows: list[Row] = []
        self.backends = Backends()
        stack.callback(self.backends.stop)
        self.cert = self_signed(tmp)
        self.ws_route = ws_backends_supported()
        extra = ""
        if self.ws_route:
            # A second tunnelgw stands for a WebSocket backend in front of the same TCP backends.
            (tmp / "inner").mkdir()
            inner = Gateway(tmp / "inner", self.backends.ports, self.cert, tls=False)
            stack.callback(inner.stop)
            extra = "\n".join(f"ProxyPass /ws-{name} ws://127.0.0.1:{inner.ws_port}/{name}"
                              for name in self.backends.ports)
        self.gateway = Gateway(tmp, self.backends.ports, self.cert, extra_rules=extra)
        stack.callback(self.gateway.stop)
        self.websockify = {}
        for name, port in self.backends.ports.items():
            w = Websockify(tmp, port, self.cert, name)
            stack.callback(w.stop)
            self.websockify[name] = w

    def _run(self, job: dict[str, Any], key: str, repeats: int = 1) -> float:
        return _median([run_client(job) for _ in range(repeats)], key)

    def throughput(self) -> None:
        """Client->backend and backend->client MB/s, 64 KiB and 1 KiB, ws and wss."""
        direct: dict[tuple[str, int], float] = {}
        for scheme in ("ws", "wss"):
            for size, count in ((64 * KIB, self.c.big), (KIB, self.c.small)):
                for job, name, label in (("upload", "sink", "client->backend"), ("download", "source", "backend->client")):
                    spec = {"job": job, "size": size, "count": count}
                    port = self.gateway.ws_port if scheme == "ws" else self.gateway.wss_port
                    tg = self._run(spec | {"target": _target(scheme, port, f"/{name}")}, "mbps", self.c.repeats)
                    wf = self._run(spec | {"target": _target(scheme, self.websockify[name].port)}, "mbps", self.c.repeats)
                    if (job, size) not in direct:
                        direct[(job, size)] = self._run(
                            spec | {"target": _target("tcp", self.backends.ports[name])}, "mbps", self.c.repeats)
                    goal = 2.0 if job == "upload" else 1.0
                    row = Row(f"{label} {size // KIB} KiB {scheme}", "MB/s", tg, wf, direct[(job, size)], goal)
                    self.log(f"{row.figure}: tunnelgw {tg:.0f}, websockify {wf:.0f}, direct {direct[(job, size)]:.0f}")
                    self.rows.append(row)

    def round_trip(self) -> None:
        """64-byte echo round trips: p50 and p99 in microseconds."""
        spec = {"job": "rtt", "count": self.c.rtt}
        tg = run_client(spec | {"target": _target("ws", self.gateway.ws_port, "/echo")})
        wf = run_client(spec | {"target": _target("ws", self.websockify["echo"].port)})
        direct = run_client(spec | {"target": _target("tcp", self.backends.ports["echo"])})
        self.rows.append(Row("64 B echo round trip p50", "µs", tg["p50_us"], wf["p50_us"], direct["p50_us"], 1.0, higher=False))
        self.rows.append(Row("64 B echo round trip p99", "µs", tg["p99_us"], wf["p99_us"], direct["p99_us"], 0.99, higher=False))
        self.log(f"rtt: tunnelgw {tg}, websockify {wf}, direct {direct}")

    def sessions(self) -> None:
        """New sessions per second with 32 concurrent clients."""
        spec = {"job": "sessions", "concurrency": 32, "count": self.c.sessions, "seconds": self.c.session_seconds}
        tg = run_client(spec | {"target": _target("ws", self.gateway.ws_port, "/echo")})
        wf = run_client(spec | {"target": _target("ws", self.websockify["echo"].port)})
        direct = run_client(spec | {"target": _target("tcp", self.backends.ports["echo"])})
        note = f"errors: {tg['errors']}/{wf['errors']}" if tg["errors"] or wf["errors"] else ""
        self.rows.append(Row("new sessions/s, 32 concurrent", "sessions/s", tg["per_second"], wf["per_second"],
                             direct["per_second"], 5.0, note=note))
        self.log(f"sessions: tunnelgw {tg}, websockify {wf}, direct {direct}")

    def _idle_memory(self, pids: Callable[[], list[int]], target: dict[str, Any], count: int, key: str) -> tuple[float, int]:
        before = memory_of(pids())[key]
        proc, report = start_idle_client(target, count)
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
                    "target": _target("ws", self.gateway.ws_port, "/echo")})
        tg, opened = self._idle_memory(lambda: self.gateway.pids, _target("ws", self.gateway.ws_port, "/echo"), count, "rss")
        ws = self.websockify["echo"]
        wf, wf_opened = self._idle_memory(lambda: ws.pids, _target("ws", ws.port), self.c.idle_websockify, "pss")
        note = f"tunnelgw at {opened} sessions (RSS), websockify at {wf_opened} (PSS sum)"
        if count < wanted:
            note += f"; RLIMIT_NOFILE hard limit {hard} caps the count"
        self.rows.append(Row("memory per idle session", "KB", tg / 1000, wf / 1000, None, 25.0, higher=False,
                             absolute=True, note=note))
        self.log(f"memory: tunnelgw {tg / 1000:.1f} KB/session at {opened}; websockify {wf / 1000:.1f} KB at {wf_opened}")

    def ws_backend(self) -> None:
        """The same kinds of figures through a ws:// backend route (a second tunnelgw as the WebSocket server)."""
        if not self.ws_route:
            self.log("ws:// backends are not supported by this tree: skipping those figures")
            return
        port = self.gateway.ws_port
        for job, name, label in (("upload", "sink", "client->backend"), ("download", "source", "backend->client")):
            spec = {"job": job, "size": 64 * KIB, "count": self.c.big}
            v = self._run(spec | {"target": _target("ws", port, f"/ws-{name}")}, "mbps", self.c.repeats)
            self.rows.append(Row(f"{label} 64 KiB ws via ws:// backend", "MB/s", v, None))
        rtt = run_client({"job": "rtt", "count": self.c.rtt, "target": _target("ws", port, "/ws-echo")})
        self.rows.append(Row("64 B round trip p50 via ws:// backend", "µs", rtt["p50_us"], None, higher=False))
        self.rows.append(Row("64 B round trip p99 via ws:// backend", "µs", rtt["p99_us"], None, higher=False))
        s = run_client({"job": "sessions", "concurrency": 32, "count": self.c.sessions, "seconds": self.c.session_seconds,
                        "target": _target("ws", port, "/ws-echo")})
        self.rows.append(Row("new sessions/s via ws:// backend", "sessions/s", s["per_second"], None))

    def workers(self, counts: tuple[int, ...] = (1, 2)) -> None:
        """Aggregate client->backend MB/s (64 KiB, ws, 2 parallel clients) with 1 and 2 worker processes."""
        values = []
        for n in counts:
            folder = self.tmp / f"workers-{n}"
            folder.mkdir()
            gateway = Gateway(folder, self.backends.ports, self.cert, workers=n, tls=False)
            try:
                jobs = [{"job": "upload", "size": 64 * KIB, "count": self.c.big,
                         "target": _target("ws", gateway.ws_port, "/sink")} for _ in range(2)]
                results = run_clients(jobs)
            finally:
                gateway.stop()
            total = sum(r["bytes"] for r in results) / max(r["seconds"] for r in results) / 1e6
            values.append(total)
            self.rows.append(Row(f"client->backend 64 KiB ws, 2 clients, {n} worker{'s' if n > 1 else ''}", "MB/s",
                                 total, None))
            self.log(f"workers {n}: {total:.0f} MB/s")


def main(argv: Optional[list[str]] = None, counts: Optional[Counts] = None) -> int:
    """Run the suite and write the results; return 0 (the table says whether targets are met)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (under about two minutes)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where to write latest.*")
    parser.add_argument("--idle-sessions", type=int, help="idle tunnelgw sessions for the memory figure")
    args = parser.parse_args(argv)
    if counts is None:
        counts = QUICK if args.quick else FULL
    if args.idle_sessions:
        counts = Counts(**{**counts.__dict__, "idle": args.idle_sessions})
    from autobahn.websocket import USES_NVX

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tunnelgw-bench-") as folder, contextlib.ExitStack() as stack:
        suite = Suite(counts, Path(folder), stack, lambda s: print(f"[{time.monotonic() - started:6.1f}s] {s}", flush=True))
        suite.throughput()
        suite.round_trip()
        suite.sessions()
        suite.memory()
        suite.ws_backend()
        suite.workers()
        rows = suite.rows
    meta = {"mode": "quick" if counts == QUICK else ("full" if counts == FULL else "custom"),
            "counts": counts.__dict__, "autobahn NVX": USES_NVX, "ws:// backend figures": suite.ws_route,
            "cores": __import__("os").cpu_count(), "seconds": round(time.monotonic() - started, 1)}
    print(write_results(rows, args.out, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
