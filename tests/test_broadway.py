"""
A real GTK Broadway daemon (``broadwayd`` from Debian's libgtk-3-bin) behind
the gateway: its page and script load over HTTP through the gateway, its
WebSocket opens with the ``broadway`` subprotocol, and the drawing commands
of a small GTK application reach the client.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from websockets.sync.client import connect

from support import GatewayProcess, free_port, require_tool, wait_until

# A GTK 3 window with a label, closing itself after a while (python3-gi, gir1.2-gtk-3.0).
_APP = """
import sys
import gi
gi.require_version("Gtk", "3.0")
from gi.repository import GLib, Gtk
window = Gtk.Window(title="tunnelgw")
window.add(Gtk.Label(label="hello through tunnelgw"))
window.connect("destroy", Gtk.main_quit)
window.show_all()
GLib.timeout_add_seconds(int(sys.argv[1]), Gtk.main_quit)
Gtk.main()
"""

#: Broadway's first byte of a "new surface" command (BROADWAY_OP_NEW_SURFACE).
_NEW_SURFACE = ord("s")


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _gtk_python() -> str:
    """The system Python that has PyGObject with GTK 3, or skip (fail under CI)."""
    python = require_tool("/usr/bin/python3")
    probe = subprocess.run([python, "-c", "import gi; gi.require_version('Gtk', '3.0')"], capture_output=True)
    if probe.returncode != 0:
        message = "python3-gi and gir1.2-gtk-3.0 are not installed (.ci/run installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return python


@pytest.fixture
def broadway(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """broadwayd on a throwaway display and loopback port; yields the port and the environment for apps."""
    daemon = require_tool("broadwayd")
    port = free_port()
    display = f":{200 + port % 500}"
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), GDK_BACKEND="broadway", BROADWAY_DISPLAY=display)
    log = open(tmp_path / "broadwayd.log", "wb")
    proc = subprocess.Popen([daemon, display, "--port", str(port), "--address", "127.0.0.1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        assert wait_until(lambda: _accepts(port) or proc.poll() is not None, 10) and proc.poll() is None, \
            (tmp_path / "broadwayd.log").read_text(errors="replace")
        yield port, env
    finally:
        _stop(proc)
        log.close()


def test_broadway_through_gateway(broadway: tuple[int, dict[str, str]], tmp_path: Path) -> None:
    """Broadway's page and script load through the gateway and a GTK window's first commands arrive over its WebSocket."""
    port, env = broadway
    python = _gtk_python()
    config = f"Listen tcp:port=0:interface=127.0.0.1\nProxyPass /broadway ws://127.0.0.1:{port}\n"
    with GatewayProcess(config, tmp_path) as gw:
        base = f"127.0.0.1:{gw.port()}/broadway"
        with urllib.request.urlopen(f"http://{base}/", timeout=5) as page:
            assert page.status == 200
            html = page.read().decode()
        assert "<title>broadway" in html and 'src="broadway.js"' in html
        with urllib.request.urlopen(f"http://{base}/broadway.js", timeout=5) as script:
            assert script.status == 200
            # The script opens its WebSocket next to the page: /broadway/socket here.
            assert 'new WebSocket(loc, "broadway")' in script.read().decode()

        with connect(f"ws://{base}/socket", subprotocols=["broadway"], open_timeout=5, max_size=None) as ws:
            assert ws.subprotocol == "broadway"
            app = subprocess.Popen([python, "-c", _APP, "15"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                first = b""
                deadline = time.monotonic() + 15
                while not first and time.monotonic() < deadline:
                    message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
                    assert isinstance(message, bytes), "Broadway speaks binary messages"
                    if message[:1] == bytes([_NEW_SURFACE]):
                        first = message
                assert first, "no new-surface command from broadwayd"
            finally:
                _stop(app)
        gw.wait_log(r"session end .*path=/broadway/socket .*bytes_down=[1-9]")
