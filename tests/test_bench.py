"""
The benchmark suite's smoke path: ``bench.run.main`` with tiny counts against
real tunnelgw, websockify, bridge and nginx processes, so the suite does not
rot.  No timing is asserted here; speed targets live in bench/ only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import require_module, require_tool


def _pids_of_children() -> set[int]:
    """This process's live children (the bench's servers would show up here if left running)."""
    import os

    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
            return {int(x) for x in f.read().split()}
    except OSError:
        return set()


# Two whole runs of every figure (desktops, routes and Redis ones included) take about 100 s
# on 2 idle cores: more than the suite's 120 s per test once CI's machine is busier.
@pytest.mark.timeout(360)
def test_bench_smoke_writes_every_figure(tmp_path: Path) -> None:
    """Two tiny runs measure every figure for every peer, write the table, JSON and plot, and stop every process."""
    require_module("matplotlib")
    require_tool("websockify")
    require_tool("/usr/sbin/nginx")
    from bench.run import SMOKE, main

    before = _pids_of_children()
    assert main(["--out", str(tmp_path), "--runs", "2"], counts=SMOKE) == 0
    assert _pids_of_children() <= before, "the bench left processes running"
    data = json.loads((tmp_path / "latest.json").read_text())
    assert data["meta"]["runs"] == 2 and len(data["runs"]) == 2
    figures = {row["figure"]: row for row in data["rows"]}
    assert "client->backend 64 KiB ws" in figures and "backend->client 1 KiB wss" in figures
    assert "new sessions/s, 32 concurrent" in figures and "memory per idle session" in figures
    for name in ("client->backend 64 KiB ws", "backend->client 1 KiB wss", "64 B echo round trip p99",
                 "new sessions/s, 32 concurrent"):
        # ws:// -> TCP: tunnelgw, websockify and the asyncio bridge, beside the direct ceiling.
        for peer in ("tunnelgw", "websockify", "bridge", "direct"):
            assert figures[name][peer] > 0, (name, peer)
        assert len(figures[name]["per_run_ratios"]["bridge"]) == 2
    wss_sessions = figures["new sessions/s, 32 concurrent, wss, ws:// backend"]  # TLS handshakes, both gateways
    assert wss_sessions["tunnelgw"] > 0 and wss_sessions["nginx"] > 0 and wss_sessions["ratios"]["nginx"] > 0
    assert figures["new sessions/s, 32 concurrent"]["floor"] > 0  # the Twisted floor relay
    assert data["meta"]["ws:// backend figures"] is True
    for name in ("new sessions/s, 32 concurrent, ws:// backend", "client->backend 64 KiB ws, ws:// backend",
                 "backend->client 1 KiB ws, ws:// backend", "64 B echo round trip p50, ws:// backend",
                 "client->backend 64 KiB wss, ws:// backend", "backend->client 1 KiB wss, ws:// backend"):
        # WS->WS: tunnelgw's ws:// route and nginx (ws and wss), beside the WebSocket backend itself.
        for peer in ("tunnelgw", "nginx", "direct"):
            assert figures[name][peer] > 0, (name, peer)
        assert figures[name]["ratios"]["nginx"] > 0
    assert any("2 workers" in name for name in figures)
    for name in ("backend->client 64 KiB ws, auth= route", "client->backend 64 KiB ws, record=on route",
                 "new sessions/s, 32 concurrent, auth= route"):
        # auth= (a real portal answers) and record=on routes beside the plain route, on the same gateway.
        assert figures[name]["tunnelgw"] > 0 and figures[name]["plain"] > 0, name
        assert len(figures[name]["per_run_ratios"]["plain"]) == 2
    assert "gateway CPU per MB, backend->client 64 KiB ws, record=on route" in figures
    for scheme in ("ws", "wss"):
        # The desktops figure: tunnelgw and websockify, measured the same way.
        cpu, most = f"desktops {scheme}: CPU per desktop at 2 desktops", f"desktops {scheme}: most desktops under one core, input p99 <= 20 ms"
        p99 = f"desktops {scheme}: input round trip p99 at 4 desktops"
        for peer in ("tunnelgw", "websockify"):
            assert figures[p99][peer] > 0 and figures[most][peer] is not None, (scheme, peer)
            assert cpu in figures
            if shutil.which("perf") or os.environ.get("CI") == "true":  # .ci/run installs linux-perf
                calls = f"desktops {scheme}: system calls per message relayed at 2 desktops"
                assert figures[calls][peer] > 0, (scheme, peer)
    assert figures["new sessions/s, 32 concurrent, plain route, Redis hung"]["tunnelgw"] > 0
    assert data["meta"]["autobahn NVX"] is True
    assert data["meta"]["client"].startswith("fast: bench/fastclient.py, picows")
    assert data["meta"]["pinning"].startswith("none")
    text = (tmp_path / "latest.md").read_text()
    assert ("| figure | tunnelgw | plain route | websockify | bridge | nginx | Twisted floor | direct ceiling "
            "| tunnelgw / plain route | tunnelgw / websockify |") in text
    assert "## Run 2" in text
    assert (tmp_path / "latest.png").stat().st_size > 10_000


@pytest.mark.timeout(360)
def test_bench_smoke_plain_client_pinned_two_session_clients(tmp_path: Path) -> None:
    """The plain client, --pin and --session-clients 2 measure the sessions and workers figures, say so in the meta, and stop every process."""
    require_module("matplotlib")
    require_tool("websockify")
    require_tool("taskset")
    from bench.run import SMOKE, main

    before = _pids_of_children()
    argv = ["--out", str(tmp_path), "--only", "sessions", "--only", "workers", "--client", "plain", "--pin",
            "--session-clients", "2"]
    assert main(argv, counts=SMOKE) == 0
    assert _pids_of_children() <= before, "the bench left processes running"
    data = json.loads((tmp_path / "latest.json").read_text())
    meta = data["meta"]
    assert meta["client"].startswith("plain: bench/client.py") and meta["session client processes"] == 2
    assert meta["pinning"].startswith("clients and backends on core 0, tunnelgw and each peer on core 1")
    figures = {row["figure"]: row for row in data["rows"]}
    for peer in ("tunnelgw", "websockify", "bridge", "direct"):
        assert figures["new sessions/s, 32 concurrent"][peer] > 0, peer
    assert figures["new sessions/s, 2 client processes, 2 workers"]["tunnelgw"] > 0
    # Tiny counts may take less than one clock tick of gateway CPU: the row is there, its value may be empty.
    assert "new sessions, 2 client processes, 1 worker, per gateway CPU-second" in figures


def test_quick_duration_is_told_the_same_way() -> None:
    """``python -m bench --help`` and docs/benchmarks.rst give the same measured duration of a --quick run."""
    import re
    import subprocess
    import sys

    from bench.run import QUICK_TIME

    helptext = subprocess.run([sys.executable, "-m", "bench", "--help"], capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).parent.parent).stdout
    assert QUICK_TIME in " ".join(helptext.split())
    docs = (Path(__file__).parent.parent / "docs/benchmarks.rst").read_text()
    assert f"--quick     # small counts, {QUICK_TIME}" in docs
    seconds = re.search(r"(\d+) s measured", QUICK_TIME)
    assert seconds and f"timed at {seconds.group(1)} s" in docs


@pytest.mark.timeout(120)
def test_http2_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """``bench.http2`` with tiny counts measures both paths' sessions and desktop direction, no error, nothing left running."""
    import re

    require_module("uvloop")
    from bench.http2 import main

    before = _pids_of_children()
    main(["--sessions", "64", "--mib", "2", "--rounds", "2", "--seconds", "30"])
    assert _pids_of_children() <= before, "the bench left processes running"
    out = capsys.readouterr().out
    assert re.search(r"new sessions/s, 32 at once: h2 streams on one connection \d+, wss HTTP/1.1 \d+ \(ratio [\d.]+; "
                     r"rounds [\d.]+ / [\d.]+\)\n", out), out
    assert re.search(r"desktop direction MiB/s: h2 stream \d+, wss HTTP/1.1 \d+", out), out


@pytest.mark.timeout(120)
def test_wss_hop_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """``bench.wsshop`` with tiny counts measures both hops both ways through nginx's TLS, nothing left running."""
    import re

    require_tool("nginx")
    require_module("uvloop")
    from bench.wsshop import main

    before = _pids_of_children()
    figures = main(["--count", "20", "--rounds", "2"])
    assert _pids_of_children() <= before, "the bench left processes running"
    assert sorted(figures) == ["ws-sink", "ws-source", "wss-sink", "wss-source"]
    assert all(len(runs) == 2 and all(mbps > 0 for _, mbps in runs) for runs in figures.values()), figures
    out = capsys.readouterr().out
    for label in ("client->backend", "backend->client"):
        assert re.search(rf"gateway CPU-ms per MB, {label} 64 KiB: ws:// hop [\d.]+ .*, wss:// hop [\d.]+ ", out), out


def test_http2_bench_client_speaks_http2() -> None:
    """The bench's hand-framed HTTP/2 client against the h2 library's server: SETTINGS, PING, padding, windows."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import PingAckReceived, RequestReceived, SettingsAcknowledged, WindowUpdated

    from bench.http2 import CLIENT_SETTINGS, _H2Client

    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    client = _H2Client()
    events = server.receive_data(bytes(client.out))
    client.out.clear()
    assert dict(server.remote_settings).get(4) == CLIENT_SETTINGS[2][1]
    client.feed(server.data_to_send())
    assert client.settings
    stream_id = client.open("/x")
    events = server.receive_data(bytes(client.out))
    client.out.clear()
    [request] = [e for e in events if isinstance(e, RequestReceived)]
    assert (b":protocol", b"websocket") in (request.headers or [])
    assert any(isinstance(e, SettingsAcknowledged) for e in events)
    server.send_headers(stream_id, [(b":status", b"200")])
    server.ping(b"12345678")
    half = CLIENT_SETTINGS[2][1] // 2
    for _ in range(half // 16000 + 1):
        server.send_data(stream_id, b"\x82\x7e\x3e\x7a" + b"p" * 15994, pad_length=2)  # one 15994-byte frame each
    data = server.data_to_send()
    for at in range(0, len(data), 1000):  # bytes arrive in any split
        client.feed(data[at:at + 1000])
    stream = client.streams[stream_id]
    assert stream.status == 200 and stream.frames.payload == (half // 16000 + 1) * 15994
    events = server.receive_data(bytes(client.out))
    assert any(isinstance(e, PingAckReceived) and e.ping_data == b"12345678" for e in events)
    # One WINDOW_UPDATE for the stream once half its window is read, not one per frame.
    assert len([e for e in events if isinstance(e, WindowUpdated) and e.stream_id == stream_id]) == 1


_BUSY = "import os, select, sys\nwhile not select.select([sys.stdin], [], [], 0)[0]: os.stat('/')\n"


def test_syscall_count_counts_the_processes_named() -> None:
    """perf counts the system calls of the processes named (a busy one: many; one blocked in a read: few), not the machine's."""
    require_tool("perf")
    from bench.procs import SyscallCount

    busy = subprocess.Popen([sys.executable, "-c", _BUSY], stdin=subprocess.PIPE)
    idle = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        counts = [SyscallCount([busy.pid], 0.5), SyscallCount([idle.pid], 0.5)]
        busy_calls, idle_calls = (count.result() for count in counts)
    finally:
        for proc in (busy, idle):
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(10)
    assert busy_calls is not None and busy_calls > 10_000  # a stat and a select per turn, for half a second
    assert idle_calls is not None and idle_calls < 100  # blocked in read: (almost) nothing


def test_syscall_count_without_perf_is_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without perf on PATH nothing is started and the count is None (the row then shows '-')."""
    from bench.procs import SyscallCount

    monkeypatch.setenv("PATH", str(tmp_path))
    assert SyscallCount([os.getpid()], 0.1).result() is None


_REAPED_CHILD = """import os, sys, time
pid = os.fork()
if pid == 0:
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    os._exit(0)
os.waitpid(pid, 0)
sys.stdout.write("reaped\\n")
sys.stdout.flush()
sys.stdin.read()
"""


def test_cpu_seconds_counts_children_already_reaped() -> None:
    """With reaped, a child that worked, ended and was reaped still counts for its parent (websockify's sessions)."""
    from bench.procs import cpu_seconds

    parent = subprocess.Popen([sys.executable, "-c", _REAPED_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "reaped\n"
        own, tree = cpu_seconds([parent.pid]), cpu_seconds([parent.pid], reaped=True)
    finally:
        assert parent.stdin is not None
        parent.stdin.close()
        parent.wait(10)
    assert tree - own >= 0.25, (own, tree)  # the child's 0.3 s, charged to its parent once reaped


@pytest.mark.timeout(180)
def test_cpu_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """``bench.cpu`` with tiny counts measures both gateways both ways over wss, says the bounds, leaves nothing running."""
    import re

    require_tool("websockify")
    require_module("uvloop")
    from bench.cpu import main

    before = _pids_of_children()
    figures = main(["--count", "200", "--rounds", "1", "--scheme", "wss"])
    assert _pids_of_children() <= before, "the bench left processes running"
    assert sorted(figures) == ["wss download", "wss upload"]
    for found in figures.values():
        for peer in ("tunnelgw", "websockify"):
            (run,) = found[peer]
            assert run["mbps"] > 0 and run["machine"] > 0, (peer, run)
    out = capsys.readouterr().out
    for label in ("backend->client", "client->backend"):
        assert f"{label} 64 KiB wss, CPU-ms per MB" in out, out
    number = r"(?:[\d.]+|inf)"  # inf: a job shorter than the clock's ticks
    assert len(re.findall(rf"tunnelgw / websockify: measured [\d.]+; the machine's CPU per MB gives {number}; "
                          rf"with tunnelgw's gateway share at zero {number}", out)) == 2, out
