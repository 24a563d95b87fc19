"""
The benchmark suite's smoke path: ``bench.run.main`` with tiny counts against
real tunnelgw and websockify processes, so the suite does not rot.  No timing
is asserted here; speed targets live in bench/ only.
"""

from __future__ import annotations

import json
from pathlib import Path


from support import require_module, require_tool


def test_bench_smoke_writes_every_figure(tmp_path: Path) -> None:
    """A tiny run measures every figure for tunnelgw and websockify and writes the table, JSON and plot."""
    require_module("matplotlib")
    require_tool("websockify")
    from bench.run import SMOKE, main

    assert main(["--out", str(tmp_path)], counts=SMOKE) == 0
    data = json.loads((tmp_path / "latest.json").read_text())
    figures = {row["figure"]: row for row in data["rows"]}
    assert "client->backend 64 KiB ws" in figures and "backend->client 1 KiB wss" in figures
    assert "new sessions/s, 32 concurrent" in figures and "memory per idle session" in figures
    for name in ("client->backend 64 KiB ws", "64 B echo round trip p99", "new sessions/s, 32 concurrent"):
        assert figures[name]["tunnelgw"] > 0 and figures[name]["websockify"] > 0
    assert any("2 workers" in name for name in figures)
    assert data["meta"]["autobahn NVX"] is True
    assert "| figure | tunnelgw | websockify | ratio |" in (tmp_path / "latest.md").read_text()
    assert (tmp_path / "latest.png").stat().st_size > 10_000
