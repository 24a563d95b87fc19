"""
The gateway's CPU per MB on a ``wss://`` backend hop against a ``ws://`` one,
same gateway, same backend, same run: ``python -m bench.wsshop [--count N]
[--rounds R]``.

The backend is ``bench.wsservers`` (sink and source); the ``wss://`` route
reaches it through the bench's nginx (one worker), which terminates TLS, so
the gateway's only TLS is its connection to the backend: the client (the
bench's fast client) speaks ``ws://`` to the gateway.  Routes::

    ProxyPass /wss-NAME wss://127.0.0.1:NGINX_TLS/NAME verify=off
    ProxyPass /ws-NAME  ws://127.0.0.1:WSSERVERS/NAME

Each job moves N messages of 64 KiB (default 1500, about 98 MB) one way:
client->backend (``sink``: the gateway encrypts towards the backend) and
backend->client (``source``: it decrypts).  The gateway's CPU time comes
from /proc before and after each job; each hop and direction is taken R
times (default 3), the hops in turn, and the median CPU-ms per MB is
printed with every round's figure and MB/s.  CPU time is counted in clock
ticks (10 ms): keep N large enough that a job takes a few hundred ms of CPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any, Optional

from bench.procs import Gateway, Nginx, WsBackend, cpu_seconds, run_client, self_signed

__all__ = ["main"]

_NAMES = ("sink", "source")
_LABELS = {"sink": "client->backend", "source": "backend->client"}


def _job(port: int, hop: str, name: str, count: int) -> dict[str, Any]:
    return {"job": "upload" if name == "sink" else "download", "size": 64 * 1024, "count": count,
            "target": {"kind": "ws", "host": "127.0.0.1", "port": port, "path": f"/{hop}-{name}"}}


def main(argv: Optional[list[str]] = None) -> dict[str, list[tuple[float, float]]]:
    """Measure, print the medians; the figures (CPU-ms per MB, MB/s) by ``HOP-NAME``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1500, help="64 KiB messages per job (default 1500)")
    parser.add_argument("--rounds", type=int, default=3, help="jobs per hop and direction, hops in turn (default 3)")
    args = parser.parse_args(argv)
    figures: dict[str, list[tuple[float, float]]] = {f"{hop}-{name}": [] for hop in ("ws", "wss") for name in _NAMES}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        cert = self_signed(tmp)
        backend = WsBackend()
        try:
            nginx = Nginx(tmp / "nginx", backend.port, cert)
            try:
                rules = "\n".join(f"ProxyPass /wss-{name} wss://127.0.0.1:{nginx.tls_port}/{name} verify=off\n"
                                  f"ProxyPass /ws-{name} ws://127.0.0.1:{backend.port}/{name}" for name in _NAMES)
                gateway = Gateway(tmp, {}, cert, tls=False, extra_rules=rules)
                try:
                    for key in figures:  # warm-up: first sessions, nginx's upstream connection, TLS contexts
                        hop, name = key.split("-")
                        run_client(_job(gateway.ws_port, hop, name, min(args.count, 50)))
                    for _ in range(max(args.rounds, 1)):
                        for key in figures:
                            hop, name = key.split("-")
                            before = cpu_seconds(gateway.pids)
                            result = run_client(_job(gateway.ws_port, hop, name, args.count))
                            used = cpu_seconds(gateway.pids) - before
                            figures[key].append((used * 1000 / (result["bytes"] / 1e6), float(result["mbps"])))
                finally:
                    gateway.stop()
            finally:
                nginx.stop()
        finally:
            backend.stop()
    for name in _NAMES:
        line = [f"gateway CPU-ms per MB, {_LABELS[name]} 64 KiB:"]
        for hop in ("ws", "wss"):
            runs = figures[f"{hop}-{name}"]
            line.append(f"{hop}:// hop {statistics.median(c for c, _ in runs):.2f} "
                        f"(rounds {' / '.join(f'{c:.2f}' for c, _ in runs)}; "
                        f"MB/s {' / '.join(f'{m:.0f}' for _, m in runs)})")
        print(" ".join(line[:2]) + ", " + line[2], flush=True)
    return figures


if __name__ == "__main__":
    main()
