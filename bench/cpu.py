"""
Where the machine's CPU goes while tunnelgw and websockify each relay 64 KiB
messages, ws:// -> TCP: ``python -m bench.cpu [--count N] [--rounds R]
[--scheme ws|wss ...]``.

On the bench's two cores the load client and the backend share the machine
with the gateway, so a throughput ratio between two gateways is bounded by
what the client and the backend take per MB whatever the gateway does.
This measures, per MB relayed, the CPU of the gateway (every process of
websockify's), of the backend (``bench.servers``) and of the whole machine
(``/proc/stat``, busy time of every core); what the machine used beyond the
gateway and the backend is the load client's (and the kernel's work that
no process is charged with).  It then prints the throughput ratio the two
gateways would reach if the machine's busy time per MB were all that
limited them: the machine's CPU per MB under websockify over that under
tunnelgw, and the same with tunnelgw's gateway share at zero (the most any
gateway could reach with this client and backend on this machine).

Each job moves N messages of 64 KiB (default 1500) one way (``download``:
backend->client, ``upload``: client->backend) through the fast client, the
two gateways in turn, R rounds (default 3); medians with each round.  CPU
time is counted in clock ticks (10 ms): keep N large enough that a job
takes a few hundred ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Callable, Optional

from bench.procs import Backends, Gateway, Websockify, cpu_seconds, run_client, self_signed

__all__ = ["machine_busy_seconds", "main"]

_NAMES = {"download": "source", "upload": "sink"}
_LABELS = {"download": "backend->client", "upload": "client->backend"}
_PEERS = ("tunnelgw", "websockify")


def machine_busy_seconds() -> float:
    """Busy CPU time of every core since boot (``/proc/stat``: all but idle and iowait), in seconds."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def main(argv: Optional[list[str]] = None) -> dict[str, dict[str, list[dict[str, float]]]]:
    """Measure and print; the rounds' figures (CPU-ms per MB by process, MB/s) by ``SCHEME JOB`` and peer."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1500, help="64 KiB messages per job (default 1500)")
    parser.add_argument("--rounds", type=int, default=3, help="jobs per gateway, scheme and direction (default 3)")
    parser.add_argument("--scheme", action="append", choices=("ws", "wss"),
                        help="ws or wss between client and gateway (repeatable; default both)")
    args = parser.parse_args(argv)
    schemes = args.scheme or ["ws", "wss"]
    figures: dict[str, dict[str, list[dict[str, float]]]] = {
        f"{scheme} {job}": {peer: [] for peer in _PEERS} for scheme in schemes for job in _NAMES}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        cert = self_signed(tmp)
        backends = Backends()
        try:
            gateway = Gateway(tmp, backends.ports, cert)
            try:
                websockify = {name: Websockify(tmp, backends.ports[name], cert, name) for name in _NAMES.values()}
                try:
                    for _ in range(max(args.rounds, 1)):
                        for key, found in figures.items():
                            scheme, job = key.split()
                            name = _NAMES[job]
                            wsfy = websockify[name]
                            gateways: dict[str, tuple[Callable[[], list[int]], int, str]] = {
                                "tunnelgw": (lambda: gateway.pids, gateway.wss_port if scheme == "wss"
                                             else gateway.ws_port, f"/{name}"),
                                "websockify": (lambda: wsfy.pids, wsfy.port, "/")}
                            for peer, (pids, port, path) in gateways.items():
                                found[peer].append(_measure(pids, [backends.proc.pid], {
                                    "job": job, "size": 64 * 1024, "count": args.count,
                                    "target": {"kind": scheme, "host": "127.0.0.1", "port": port, "path": path}}))
                finally:
                    for server in websockify.values():
                        server.stop()
            finally:
                gateway.stop()
        finally:
            backends.stop()
    for key, found in figures.items():
        scheme, job = key.split()
        print(f"{_LABELS[job]} 64 KiB {scheme}, CPU-ms per MB (gateway / backend / client and the rest / machine):",
              flush=True)
        for peer in _PEERS:
            runs = found[peer]
            print(f"  {peer}: " + " / ".join(f"{statistics.median(r[k] for r in runs):.2f}"
                                             for k in ("gateway", "backend", "rest", "machine"))
                  + f"; MB/s {statistics.median(r['mbps'] for r in runs):.0f} (rounds "
                  + ", ".join(f"{r['gateway']:.2f}/{r['backend']:.2f}/{r['rest']:.2f}/{r['machine']:.2f} "
                              f"{r['mbps']:.0f}" for r in runs) + ")", flush=True)
        ours, theirs = found["tunnelgw"], found["websockify"]
        bound = statistics.median(_ratio(t["machine"], o["machine"]) for o, t in zip(ours, theirs))
        ceiling = statistics.median(_ratio(t["machine"], o["machine"] - o["gateway"]) for o, t in zip(ours, theirs))
        measured = statistics.median(o["mbps"] / t["mbps"] for o, t in zip(ours, theirs))
        print(f"  tunnelgw / websockify: measured {measured:.2f}; the machine's CPU per MB gives {bound:.2f}; "
              f"with tunnelgw's gateway share at zero {ceiling:.2f}", flush=True)
    return figures


def _ratio(a: float, b: float) -> float:
    """a / b; infinite when b is no CPU at all (a job too short for the clock's ticks)."""
    return a / b if b > 0 else float("inf")


def _measure(gateway: Callable[[], list[int]], backend: list[int], job: dict[str, object]) -> dict[str, float]:
    """One job's MB/s and CPU-ms per MB: the gateway's, the backend's, the rest of the machine's, the machine's."""
    machine, ours, theirs = machine_busy_seconds(), cpu_seconds(gateway(), reaped=True), cpu_seconds(backend)
    result = run_client(job)
    machine, ours, theirs = (machine_busy_seconds() - machine, cpu_seconds(gateway(), reaped=True) - ours,
                             cpu_seconds(backend) - theirs)
    mb = result["bytes"] / 1e6
    return {"mbps": float(result["mbps"]), "gateway": ours * 1000 / mb, "backend": theirs * 1000 / mb,
            "rest": (machine - ours - theirs) * 1000 / mb, "machine": machine * 1000 / mb}


if __name__ == "__main__":
    main()
