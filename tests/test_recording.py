"""
Session recording and replay (tunnelgw.core.recording, tunnelgw.recording,
tunnelgw.backends.replay): the file format noVNC's playback reads, limits that
stop a recording and never a session, and a real noVNC session to Xvnc
recorded and replayed through the gateway in Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from websockets.sync.client import connect

from desktops import BACKGROUND, RECORDER, TEXT_SHOWN, Browser, Xvnc, canvas_pixel, wait_for
from support import GatewayProcess, TcpServer, backend, free_port, require_tool, wait_until
from tunnelgw.core.config import Recording
from tunnelgw.core.errors import Location
from tunnelgw.core.recording import FOOTER, HEADER, Frame, encode_frame, encode_frames, parse_recording
from tunnelgw.core.sessionrelay import Carries
from tunnelgw.recording import FLUSH_BYTES, MAX_PENDING, Recordings, Writer, write_all

NOVNC = Path("/usr/share/novnc")

frames = st.lists(st.builds(Frame, st.booleans(), st.integers(0, 10**9), st.binary(max_size=300)), max_size=20)


def _lines(data: bytes) -> list[str]:
    """A recording's lines as the replay reads them (ASCII text)."""
    return data.decode("ascii").splitlines(True)


def _binary_line(frame: Frame) -> str:
    """A frame in websockify's ``binary`` encoding, as websockify writes it (and the gateway did before)."""
    mark = "{" if frame.to_client else "}"
    text = frame.data.decode("latin-1").encode("unicode_escape").decode("ascii").replace("'", "\\'")
    return f"'{mark}{frame.ms}{mark}{text}',\n"


@given(frames)
@settings(max_examples=200, deadline=None)
def test_format_round_trip(recorded: list[Frame]) -> None:
    data = HEADER + b"".join(encode_frames(recorded)) + FOOTER
    assert data == HEADER + b"".join(encode_frame(f) for f in recorded) + FOOTER
    assert list(parse_recording(_lines(data))) == recorded


@given(frames)
@settings(max_examples=100, deadline=None)
def test_binary_recordings_still_replay(recorded: list[Frame]) -> None:
    """Files in the binary encoding (websockify's default, the gateway's before) read back the same bytes."""
    text = "var VNC_frame_encoding = 'binary';\nvar VNC_frame_data = [\n" + "".join(map(_binary_line, recorded)) + "'EOF'];\n"
    assert list(parse_recording(text.splitlines(True))) == recorded


def test_encoding_guessed_as_novnc_guesses_it_without_its_line() -> None:
    """Old websockify files have no encoding line: base64 when the first frame starts with UkZC (RFB)."""
    rfb = [Frame(True, 0, b"RFB 003.008\n"), Frame(False, 3, b"RFB 003.008\n")]
    b64 = "var VNC_frame_data = [\n" + b"".join(encode_frame(f) for f in rfb).decode() + "'EOF'];\n"
    assert list(parse_recording(b64.splitlines(True))) == rfb
    binary = "var VNC_frame_data = [\n" + "".join(map(_binary_line, rfb)) + "'EOF'];\n"
    assert list(parse_recording(binary.splitlines(True))) == rfb


@pytest.mark.parametrize("text, problem", [
    ("var VNC_frame_encoding = 'hex';\n'{0{00',\n", "line 1: frame encoding 'hex' is not one of base64, binary"),
    ("var VNC_frame_encoding = 'base64';\n'{0{UkZC*',\n", "line 2 is not a recorded frame"),
    ("var VNC_frame_encoding = 'base64';\n'{0{UkZ',\n", "line 2 is not a recorded frame"),
    ("var VNC_frame_encoding = 'binary';\n'{0{\\xZZ',\n", "line 2 is not a recorded frame"),
    ("var VNC_frame_encoding = 'base64';\nalert(1)\n", "line 2 is not a recorded frame"),
])
def test_a_frame_not_in_its_encoding_names_its_line(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        list(parse_recording(text.splitlines(True)))


def test_javascript_reads_the_same_bytes(tmp_path: Path) -> None:
    """The file is JavaScript: node evaluates it and each frame's char codes are the recorded bytes (as noVNC reads them)."""
    node = require_tool("node")
    recorded = [Frame(True, 0, bytes(range(256))), Frame(False, 7, b"it's \\ 'quoted'\n"), Frame(True, 9, b"\x00'\\")]
    path = tmp_path / "r.js"
    path.write_bytes(HEADER + b"".join(encode_frames(recorded)) + FOOTER)
    # As noVNC's playback page reads a frame: the text after the second mark, base64-decoded.
    script = (f"const fs = require('fs'); eval(fs.readFileSync({json.dumps(str(path))}, 'ascii') + "
              "'; globalThis.d = VNC_frame_data; globalThis.e = VNC_frame_encoding;');"
              "console.log(JSON.stringify({e, d: d.slice(0, -1).map(f => { const s = f.indexOf(f[0], 1) + 1; "
              "return [f.slice(0, s), Array.from(Buffer.from(f.slice(s), 'base64'))]; }), last: d[d.length - 1]}));")
    out = json.loads(subprocess.run([node, "-e", script], capture_output=True, check=True, timeout=30).stdout)
    assert out["e"] == "base64" and out["last"] == "EOF" and len(out["d"]) == len(recorded)
    for (head, data), frame in zip(out["d"], recorded):
        mark = "{" if frame.to_client else "}"
        assert head == f"{mark}{frame.ms}{mark}" and bytes(data) == frame.data


# The recorder in memory (the writer thread is a direct call, or a queue the test empties).


def recordings(folder: Path, max_bytes: int = 1 << 30, run: Callable[..., None] | None = None
               ) -> tuple[Recordings, MemoryReactorClock, CollectorRegistry]:
    reactor, registry = MemoryReactorClock(), CollectorRegistry()
    spec = Recording(str(folder), max_bytes, 3600, 30, Location("t", 1))
    direct: Callable[..., None] = lambda work, *args: work(*args)
    rec = Recordings(reactor, spec, registry, run_in_thread=run or direct, call_from_thread=direct)
    return rec, reactor, registry


class _Link:
    """A byte-stream link standing in for the backend side (its owner is what the test checks)."""

    carries = Carries.PAYLOAD
    transport = None
    description = "tcp:host=10.0.0.1:port=5900"

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.owner: Any = None
        self.closed = False

    def start(self, owner: Any) -> None:
        self.owner = owner

    def client_payloads(self, payloads: list[bytes]) -> None:
        self.sent += payloads

    def close(self, close: Any = None) -> None:
        self.closed = True


class _Owner:
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def backend_data(self, data: bytes) -> None:
        self.got.append(data)


def test_size_limit_stops_the_recording_not_the_session(tmp_path: Path) -> None:
    rec, reactor, registry = recordings(tmp_path, max_bytes=4096)
    inner, owner = _Link(), _Owner()
    link = rec.link(inner, "0123456789ab")  # type: ignore[arg-type]
    link.start(owner)  # type: ignore[arg-type]
    for i in range(10):
        reactor.advance(0.01)
        inner.owner.backend_data(b"d" * 1000)
        link.client_payloads([b"k%d" % i])
    assert len(owner.got) == 10 and len(inner.sent) == 10  # everything relayed
    reactor.advance(1)
    assert link.recorder.outcome == "size_limit"
    data = (tmp_path / "0123456789ab.js").read_bytes()
    assert data.startswith(HEADER) and data.endswith(FOOTER)
    kept = list(parse_recording(_lines(data)))
    assert sum(len(f.data) for f in kept) <= 4096 and kept[0] == Frame(True, 10, b"d" * 1000)
    assert stat_mode(tmp_path / "0123456789ab.js") == 0o600
    link.close()
    assert registry.get_sample_value("tunnelgw_recordings_total", {"outcome": "size_limit"}) == 1
    assert registry.get_sample_value("tunnelgw_recordings_total", {"outcome": "complete"}) is None


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def test_unwritable_folder_and_slow_disk_drop_the_recording(tmp_path: Path) -> None:
    """A folder that is gone: outcome error; a disk that does not keep up: too_slow; relaying goes on."""
    rec, reactor, registry = recordings(tmp_path / "gone")
    inner, owner = _Link(), _Owner()
    link = rec.link(inner, "aaaaaaaaaaaa")  # type: ignore[arg-type]
    link.start(owner)  # type: ignore[arg-type]
    inner.owner.backend_data(b"x" * FLUSH_BYTES)
    inner.owner.backend_data(b"y")
    assert link.recorder.outcome == "error" and owner.got[-1] == b"y"
    queued: list[Any] = []
    rec, reactor, registry = recordings(tmp_path, run=lambda work, *args: queued.append((work, args)))
    inner, owner = _Link(), _Owner()
    link = rec.link(inner, "bbbbbbbbbbbb")  # type: ignore[arg-type]
    link.start(owner)  # type: ignore[arg-type]
    for _ in range(MAX_PENDING // FLUSH_BYTES + 2):
        inner.owner.backend_data(b"z" * FLUSH_BYTES)
    assert link.recorder.outcome == "too_slow" and len(owner.got) == MAX_PENDING // FLUSH_BYTES + 2
    for work, args in queued:
        work(*args)
    assert (tmp_path / "bbbbbbbbbbbb.js").read_bytes().endswith(FOOTER)
    assert registry.get_sample_value("tunnelgw_recordings_total", {"outcome": "too_slow"}) == 1


def test_only_bytes_the_writer_has_not_written_count_against_the_bound(tmp_path: Path) -> None:
    """What waits for the disk is what was handed over less what the writer is done with, without a call back per batch."""
    queued: list[Any] = []
    rec, _, _ = recordings(tmp_path, run=lambda work, *args: queued.append((work, args)))
    inner, owner = _Link(), _Owner()
    link = rec.link(inner, "dddddddddddd")  # type: ignore[arg-type]
    link.start(owner)  # type: ignore[arg-type]
    for _ in range(2):
        for _ in range(MAX_PENDING // FLUSH_BYTES):  # exactly the bound, each round
            inner.owner.backend_data(b"w" * FLUSH_BYTES)
        assert link.recorder.outcome is None
        for work, args in queued:  # the disk catches up
            work(*args)
        queued.clear()
    inner.owner.backend_data(b"w")
    link.close()
    for work, args in queued:
        work(*args)
    kept = list(parse_recording(_lines((tmp_path / "dddddddddddd.js").read_bytes())))
    assert sum(len(f.data) for f in kept) == 2 * (MAX_PENDING // FLUSH_BYTES) * FLUSH_BYTES + 1


def test_writer_runs_work_in_order_survives_a_failure_and_stops_bounded() -> None:
    """The writer thread: submission order, a raising piece of work logged and passed, stop() waits at most its bound."""
    done: list[int] = []
    failed: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_format", "").startswith("recording writer"):
            failed.append(event["log_format"])

    def boom() -> None:
        raise OSError("disk gone")

    globalLogPublisher.addObserver(observe)
    try:
        writer = Writer("test-writer")
        writer.start()
        for i in range(100):
            writer.submit(done.append, i)
            if i == 50:
                writer.submit(boom)
        assert writer.stop(timeout=30)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert done == list(range(100)) and len(failed) == 1
    hung, release = Writer("test-hung"), threading.Event()
    hung.start()
    hung.submit(release.wait, 30)  # a disk that does not answer
    assert not hung.stop(timeout=0.05)  # the bound, not the disk, ends the wait
    release.set()
    assert hung.stop(timeout=30)


def test_stopping_with_a_hung_disk_is_bounded_and_said(tmp_path: Path) -> None:
    """The gateway's stop waits for the writer at most its bound, then says the recordings may be cut short."""
    said: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_format", "").startswith("Recordings: the disk took"):
            said.append(event["log_format"].format(**event))

    rec = Recordings(MemoryReactorClock(), Recording(str(tmp_path), 1 << 30, 3600, 30, Location("t", 1)),
                     CollectorRegistry())
    rec.start()
    release = threading.Event()
    rec.run(release.wait, 30)  # a disk that does not answer
    globalLogPublisher.addObserver(observe)
    try:
        rec.stop(timeout=0.05)
    finally:
        globalLogPublisher.removeObserver(observe)
        release.set()
    assert said == ["Recordings: the disk took more than 0.05 s to write what was queued; "
                    "recordings under way may be cut short (they still replay)"]


def test_write_all_resumes_short_writes_and_raises_on_a_full_disk(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A vectored write that takes part of a piece, or fewer pieces than IOV_MAX, goes on where it stopped."""
    real = os.writev
    calls: list[int] = []

    def short(fd: int, views: list[memoryview]) -> int:
        calls.append(len(views))
        return real(fd, views[:2]) if len(calls) % 2 else os.write(fd, bytes(views[0])[:3])

    monkeypatch.setattr(os, "writev", short)
    parts = [b"head", b"", b"x" * 10, b"y"] + [b"%d," % i for i in range(3000)]
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_all(fd, parts)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(parts) and max(calls) == 1024
    monkeypatch.setattr(os, "writev", real)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(OSError):
            write_all(full, [b"data"])
    finally:
        os.close(full)


def test_refused_session_leaves_no_file(tmp_path: Path) -> None:
    rec, _, registry = recordings(tmp_path)
    link = rec.link(_Link(), "cccccccccccc")  # type: ignore[arg-type]
    link.close()
    assert list(tmp_path.iterdir()) == []
    assert registry.get_sample_value("tunnelgw_recordings_total", {"outcome": "complete"}) is None


# Real processes.


def test_recording_folder_gone_never_ends_a_session(tmp_path: Path, backend: TcpServer) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
Recording {folder}
ProxyPass /echo {backend.endpoint} record=on
"""
    with GatewayProcess(config, tmp_path) as gw:
        shutil.rmtree(folder)
        with connect(f"ws://127.0.0.1:{gw.port()}/echo", open_timeout=5) as ws:
            for i in range(20):
                ws.send(b"%d" % i * 20000)
                assert ws.recv(timeout=5) == b"%d" % i * 20000
        gw.wait_log(r"recording stopped session=\w+ .*outcome=error")
        gw.wait_log(r"session end .*bytes_up=\d+ .*close_code=1000 .*recording=\w+\.js")


def test_novnc_session_recorded_and_replayed_in_chromium(tmp_path: Path) -> None:
    """A noVNC session to Xvnc is recorded (keys included); replayed through the gateway it ends on the same canvas."""
    if not (NOVNC / "vnc_lite.html").exists():
        require_tool("novnc")
    folder = tmp_path / "recordings"
    folder.mkdir()
    (tmp_path / "chromium").mkdir()
    browser = Browser(tmp_path / "chromium").start()
    try:
        with Xvnc(tmp_path) as desktop:
            replay_after_recording(tmp_path, folder, desktop, browser)
    finally:
        browser.stop()


def replay_after_recording(tmp_path: Path, folder: Path, desktop: Xvnc, browser: Browser) -> None:
    """Record a typed line through the gateway, then replay the recording."""
    port = free_port()
    config = f"""
Listen tcp:port={port}:interface=127.0.0.1
AdminListen tcp:port=0:interface=127.0.0.1
Alias /novnc {NOVNC}
Recording {folder} viewer=http://127.0.0.1:{port}/novnc/vnc_lite.html?path=replay/{{session}}
ProxyPass /websockify {desktop.endpoint} record=on
ProxyPass /replay replay:{folder} speed=4 allowclients=127.0.0.0/8
"""
    with GatewayProcess(config, tmp_path) as gw:
        base = f"http://127.0.0.1:{gw.port()}/novnc/vnc_lite.html"
        page = browser.page()
        page.goto(base + "?path=websockify", timeout=15000)
        wait_for(lambda: (page.text_content("#status") or "").startswith("Connected"), 20, "noVNC to connect")
        wait_for(lambda: canvas_pixel(page, 600, 440) == BACKGROUND and canvas_pixel(page, 2, 2) == RECORDER, 15,
                 "the desktop's colours")
        box = page.locator("#screen canvas").bounding_box()
        page.mouse.click(box["x"] + 60, box["y"] + 40)
        page.keyboard.type("tunnelgw 7")
        page.keyboard.press("Enter")
        wait_for(lambda: desktop.typed() == "tunnelgw 7", 15, "the typed line on the desktop")
        wait_for(lambda: page.evaluate(TEXT_SHOWN), 10, "the typed text on the canvas")
        digests: list[int] = []

        def steady() -> bool:
            digests.append(page.evaluate(_DIGEST))
            return len(digests) > 3 and len(set(digests[-3:])) == 1

        assert wait_until(steady, 10, interval=0.3)
        live = digests[-1]
        admin = f"http://127.0.0.1:{gw.port(1)}"
        [listed] = json.loads(urllib.request.urlopen(admin + "/sessions", timeout=5).read())["sessions"]
        assert listed["recording"] == f"{listed['session']}.js"
        operator_page = urllib.request.urlopen(admin + "/", timeout=5).read().decode()
        assert f'vnc_lite.html?path=replay/{listed["session"]}" target="_blank"' in operator_page
        page.close()
        found = gw.wait_log(r"session end session=(\w+) .*path=/websockify .*recording=(\w+\.js)")
        session, name = found.group(1), found.group(2)
        assert name == f"{session}.js"
        path = folder / name
        assert wait_until(lambda: path.read_bytes().endswith(FOOTER), 10)
        assert stat_mode(path) == 0o600
        recorded = list(parse_recording(_lines(path.read_bytes())))
        typed = b"".join(f.data for f in recorded if not f.to_client)
        for key in b"tunnelgw 7":  # a key press: RFB KeyEvent (4) or QEMU's extended key event (255, 0)
            assert bytes([4, 1, 0, 0, 0, 0, 0, key]) in typed or bytes([255, 0, 0, 1, 0, 0, 0, key]) in typed

        # The operator's page lists the recording; its link opens the replay in noVNC.
        operator = browser.page()
        operator.goto(admin + "/")
        with operator.expect_popup() as opened:
            operator.locator(f"#recordings a:has-text('{name}')").click()
        replay = opened.value
        wait_for(lambda: replay.evaluate(_DIGEST) == live, 30, "the replayed canvas to end as the live one did")
        assert canvas_pixel(replay, 600, 440) == BACKGROUND and replay.evaluate(TEXT_SHOWN)
        gw.wait_log(r"replay finished: the last screen stays")
        assert (replay.text_content("#status") or "").startswith("Connected")  # the last screen stays
        replay.close()
        gw.wait_log(rf"session end .*path=/replay/{session} .*close_code=1001")
        missing = browser.page()
        missing.goto(base + "?path=replay/0000000000ff", timeout=15000)
        gw.wait_log(r"path=/replay/0000000000ff status=404 reason='no such recording'")


_DIGEST = """() => {
    const c = document.querySelector('#screen canvas');
    if (!c || !c.width || !c.height) return 0;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let h = c.width * 65536 + c.height;
    for (let i = 0; i < d.length; i++) { h = (Math.imul(h, 31) + d[i]) >>> 0; }
    return h;
}"""


# Retention deletes only the gateway's recordings; a folder holding other files is refused.


def _aged(path: Path, days: float) -> Path:
    """Set path's modification time days back (the link itself for a symbolic link)."""
    when = os.stat(path, follow_symlinks=False).st_mtime - days * 86400
    os.utime(path, (when, when), follow_symlinks=False)
    return path


def test_retention_deletes_only_old_recordings(tmp_path: Path) -> None:
    """keepdays deletes old files named as recordings, never another old file, a link named as one, or a folder."""
    folder, elsewhere = tmp_path / "recordings", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    old = folder / "0123456789ab.js"
    old.write_bytes(HEADER)
    _aged(old, 40)
    young = folder / "ba9876543210.js"
    young.write_bytes(HEADER)
    foreign = [folder / "app.js", folder / "0123456789AB.js", folder / "0123456789ab.js.bak", folder / "notes.txt"]
    for path in foreign:
        path.write_text("not a recording")
        _aged(path, 40)
    private = elsewhere / "private.js"
    private.write_text("secret")
    _aged(private, 40)
    (folder / "abcdef012345.js").symlink_to(private)
    _aged(folder / "abcdef012345.js", 40)
    (folder / "fedcba987654.js").mkdir()
    rec, reactor, _ = recordings(folder)
    rec.start()  # the sweep runs at start
    rec.stop()
    assert not old.exists() and young.exists() and all(path.exists() for path in foreign)
    assert private.exists() and (folder / "abcdef012345.js").is_symlink() and (folder / "fedcba987654.js").is_dir()


def test_a_folder_holding_other_files_is_refused_unless_shared(tmp_path: Path) -> None:
    """With keepdays, a Recording folder holding anything but recordings is a FILE:LINE error; shared=on or keepdays=0 accepts it."""
    from tunnelgw.core.config import ConfigError, parse_config
    from tunnelgw.recording import foreign_entries
    from tunnelgw.service import check_config

    folder = tmp_path / "recordings"
    folder.mkdir()
    (folder / "0123456789ab.js").write_bytes(HEADER)

    def problems(options: str) -> str:
        try:
            config = parse_config(f"Listen tcp:port=0:interface=127.0.0.1\nRecording {folder} {options}\n", "gw.conf")
            check_config(config, MemoryReactorClock())
        except ConfigError as e:
            return str(e)
        return ""

    assert problems("keepdays=30") == "" and foreign_entries(str(folder)) == []
    (folder / "app.js").write_text("console.log(1)")
    (folder / "abcdef012345.js").symlink_to(folder / "app.js")
    refused = problems("keepdays=30")
    assert refused.startswith("gw.conf:2: Recording folder") and "'abcdef012345.js', 'app.js'" in refused
    assert "shared=on" in refused
    assert problems("keepdays=30 shared=on") == "" and problems("keepdays=0") == ""
    assert problems("shared=maybe").startswith("gw.conf:2: shared takes one of on, off")


def test_a_folder_of_other_files_stops_the_gateway_at_start(tmp_path: Path) -> None:
    """twistd tunnelgw --check on a shared folder (as /var/tmp is) exits 1 with the Recording line."""
    from support import subprocess_env, twistd_command

    folder = tmp_path / "tmp"
    folder.mkdir()
    (folder / "someone-else.js").write_text("x")
    conf = tmp_path / "gw.conf"
    conf.write_text(f"Listen tcp:port=0:interface=127.0.0.1\nRecording {folder} keepdays=30\n")
    result = subprocess.run(twistd_command("tunnelgw", "--config", str(conf), "--check"),
                            capture_output=True, text=True, timeout=60, env=subprocess_env(), cwd=tmp_path)
    assert result.returncode == 1 and f"{conf}:2: Recording folder" in result.stderr, result.stderr
    assert (folder / "someone-else.js").exists()


# Replay opens only regular files of its folder.


def _raw_upgrade(port: int, path: str) -> tuple[int, bytes]:
    """Status and body of a WebSocket upgrade request for path."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                           "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        answer = conn.getresponse()
        return answer.status, answer.read() if answer.status != 101 else b""
    finally:
        conn.close()


def test_replay_refuses_links_and_hides_unreadable_bytes(tmp_path: Path) -> None:
    """A recording is replayed; a link to a file elsewhere is 404; a file that is not ASCII is a generic 502, its bytes logged nowhere."""
    folder, elsewhere = tmp_path / "recordings", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    recorded = HEADER + encode_frame(Frame(True, 0, b"RFB 003.008\n")) + FOOTER
    (folder / "0123456789ab.js").write_bytes(recorded)
    (elsewhere / "private.js").write_bytes(HEADER + encode_frame(Frame(True, 0, b"PRIVATE")) + FOOTER)
    (folder / "abcdef012345.js").symlink_to(elsewhere / "private.js")
    (elsewhere / "latin.js").write_bytes(HEADER + "'{0{s\u00e9cr\u00e8t',\n".encode("utf-8"))
    (folder / "aaaaaaaaaaaa.js").symlink_to(elsewhere / "latin.js")
    (folder / "bbbbbbbbbbbb.js").write_bytes((elsewhere / "latin.js").read_bytes())
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
ProxyPass /replay replay:{folder}
"""
    with GatewayProcess(config, tmp_path) as gw:
        with connect(f"ws://127.0.0.1:{gw.port()}/replay/0123456789ab", open_timeout=5) as ws:
            assert ws.recv(timeout=5) == b"RFB 003.008\n"
        for session in ("abcdef012345", "aaaaaaaaaaaa"):
            status, body = _raw_upgrade(gw.port(), f"/replay/{session}")
            assert status == 404 and b"PRIVATE" not in body, body
        status, body = _raw_upgrade(gw.port(), "/replay/bbbbbbbbbbbb")
        assert status == 502 and b"the recording cannot be read" in body, body
        gw.wait_log(r"replay refused: replay:\S+/bbbbbbbbbbbb cannot be read: not ASCII text")
        assert "\u00e9" not in gw.log() and "\\xc3" not in gw.log() and "0xc3" not in gw.log()
        assert "0xc3" not in body.decode("latin-1") and "\u00c3" not in body.decode("latin-1")


def test_open_inside_refuses_what_is_not_a_regular_file_of_the_folder(tmp_path: Path) -> None:
    """open_inside opens a file of the folder; a link (even to a file inside), a folder, a FIFO or a climbing name is refused."""
    from tunnelgw.files import open_inside

    (tmp_path / "file.js").write_text("ok")
    (tmp_path / "link.js").symlink_to(tmp_path / "file.js")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    fd = open_inside(str(tmp_path), "file.js")
    with os.fdopen(fd) as f:
        assert f.read() == "ok"
    for name in ("link.js", "folder", "fifo", "..", "../x", ""):
        with pytest.raises(PermissionError):
            os.close(open_inside(str(tmp_path), name))
    with pytest.raises(FileNotFoundError):
        open_inside(str(tmp_path), "missing.js")


def test_a_recording_unreadable_after_its_first_batch_closes_with_a_generic_reason(tmp_path: Path) -> None:
    """Bytes that are not ASCII past the first batch end the replay with 1011 and a reason that quotes nothing of the file."""
    from websockets.exceptions import ConnectionClosed

    from tunnelgw.backends.replay import BATCH_BYTES, UNREADABLE

    folder = tmp_path / "recordings"
    folder.mkdir()
    chunk = b"a" * (BATCH_BYTES // 2 + 1)
    # The third frame keeps the bad bytes out of the text buffer that the first batch decodes.
    text = (HEADER + encode_frame(Frame(True, 0, chunk)) + encode_frame(Frame(True, 1, chunk))
            + encode_frame(Frame(True, 2, b"b" * 65536)))
    (folder / "0123456789ab.js").write_bytes(text + "'{2{s\u00e9cret',\n".encode("utf-8") + FOOTER)
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
ProxyPass /replay replay:{folder}
"""
    with GatewayProcess(config, tmp_path) as gw:
        with connect(f"ws://127.0.0.1:{gw.port()}/replay/0123456789ab", open_timeout=5, max_size=None) as ws:
            received = 0
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    received += len(ws.recv(timeout=10))
            assert 2 * len(chunk) <= received <= 2 * len(chunk) + 65536
            assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, UNREADABLE)
        gw.wait_log(r"replay stopped: replay:\S+/0123456789ab cannot be read: not ASCII text")
        assert "\u00e9" not in gw.log()


def test_a_missing_folder_is_made_at_start_when_its_parent_exists(tmp_path: Path) -> None:
    """A Recording folder that does not exist yet passes the check when its parent does (a replay route on it too), and is made at start, mode 0700; a missing parent is a FILE:LINE problem."""
    from tunnelgw.core.config import ConfigError, parse_config
    from tunnelgw.service import check_config

    folder = tmp_path / "tunnelgw-recordings"

    def check(recording: Path) -> str:
        config = parse_config(f"Listen tcp:port=0:interface=127.0.0.1\nRecording {recording} keepdays=30\n"
                              f"ProxyPass /replay replay:{recording}\n", "gw.conf")
        try:
            check_config(config, MemoryReactorClock())
        except ConfigError as e:
            return str(e)
        return ""

    assert check(folder) == "" and not folder.exists()  # --check makes nothing
    missing = check(tmp_path / "nowhere" / "recordings")
    assert missing.startswith("gw.conf:2: Recording folder") and "its parent" in missing, missing
    recordings = Recordings(MemoryReactorClock(), Recording(str(folder), 1000, 60.0, 30.0, Location("gw.conf", 2)),
                            CollectorRegistry(), run_in_thread=lambda work, *args: work(*args))
    recordings.start()
    recordings.stop()
    assert folder.is_dir() and (folder.stat().st_mode & 0o777) == 0o700


def test_a_folder_in_a_parent_others_write_must_be_the_gateways_own(tmp_path: Path) -> None:
    """In a parent every user may write to (/var/tmp), a Recording folder that is a link, another user's or open to others is refused: another user could read the desktops."""
    from tunnelgw.core.config import ConfigError, parse_config
    from tunnelgw.service import check_config

    shared = tmp_path / "vartmp"
    shared.mkdir()
    shared.chmod(0o1777)

    def check(recording: Path) -> str:
        config = parse_config(f"Listen tcp:port=0:interface=127.0.0.1\nRecording {recording}\n", "gw.conf")
        try:
            check_config(config, MemoryReactorClock())
        except ConfigError as e:
            return str(e)
        return ""

    own = shared / "mine"
    own.mkdir(mode=0o700)
    own.chmod(0o700)
    assert check(own) == ""
    own.chmod(0o777)
    assert "others can use" in check(own)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (shared / "link").symlink_to(elsewhere)
    assert "is a symbolic link" in check(shared / "link")
