"""
Real desktops and real browsers for the end-to-end tests: TigerVNC's Xvnc
with a known picture and a key recorder, GTK's broadwayd, headless Chromium
driven by Playwright, nginx and Apache httpd as front proxies.

Each is a child process started on loopback (or a UNIX socket) in a temporary
folder; every wait is bounded and :meth:`stop` kills whatever is left, so a
failing test still cleans up.  Screenshots go to :data:`SCREENSHOTS`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import select
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from fronts import apache_main, apache_process, nginx_main, nginx_process
from support import REPO, free_port, require_module, require_tool, stop_process, wait_until

__all__ = [
    "SCREENSHOTS",
    "Apache",
    "Browser",
    "Broadway",
    "Nginx",
    "Xvnc",
    "free_port",
    "spki_hash",
]

#: Where browser tests save their screenshots (ignored by git).
SCREENSHOTS = REPO / "tests" / "artifacts" / "screenshots"

#: Folder of Debian's Apache modules.

#: The desktop's background, drawn by ``xsetroot``.
BACKGROUND = (0xFF, 0x80, 0x00)
#: The key recorder's window colour (an xterm at the top-left corner).
RECORDER = (0x00, 0x40, 0xFF)


def spki_hash(cert_pem: Path) -> str:
    """Base64 SHA-256 of a certificate's public key, as Chromium's
    ``--ignore-certificate-errors-spki-list`` takes it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


class Xvnc:
    """
    A TigerVNC desktop on a free display, without authentication, serving RFB
    on a UNIX socket only (no TCP at all), with an orange background and an
    xterm at the top-left whose shell writes the first typed line to
    :attr:`typed_path` (and then stays, showing it, until stopped).
    """

    def __init__(self, tmp: Path, geometry: str = "640x480") -> None:
        self.tmp = tmp
        self.geometry = geometry
        self.socket_path = tmp / "vnc.sock"
        self.typed_path = tmp / "typed.txt"
        self.display = ""
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def endpoint(self) -> str:
        """The gateway's client endpoint string for this desktop."""
        return f"unix:path={self.socket_path}:timeout=5"

    def start(self, timeout: float = 15.0) -> "Xvnc":
        """Start the server and the picture; return once the display answers."""
        xvnc = require_tool("Xvnc")
        xsetroot = require_tool("xsetroot")
        xterm = require_tool("xterm")
        log = open(self.tmp / "xvnc.log", "wb")
        read_fd, write_fd = os.pipe()
        try:
            self._procs.append(subprocess.Popen(
                [xvnc, "-displayfd", str(write_fd), "-geometry", self.geometry, "-depth", "24",
                 "-SecurityTypes", "None", "-rfbport", "-1", "-rfbunixpath", str(self.socket_path),
                 "-nolisten", "tcp", "-desktop", "tunnelgw-test", "-AlwaysShared"],
                pass_fds=(write_fd,), stdout=log, stderr=subprocess.STDOUT))
            os.close(write_fd)
            # Xvnc writes the number and the newline separately; closing the
            # pipe before the newline makes it exit (EPIPE).
            answer = b""
            deadline = time.monotonic() + timeout
            while not answer.endswith(b"\n") and time.monotonic() < deadline:
                ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
                chunk = os.read(read_fd, 32) if ready else b""
                if not chunk:
                    break
                answer += chunk
            number = answer.decode().strip()
        finally:
            os.close(read_fd)
            log.close()
        if not number.isdigit():
            self.stop()
            raise RuntimeError(f"Xvnc did not report a display:\n{(self.tmp / 'xvnc.log').read_text()}")
        self.display = f":{number}"
        env = {**os.environ, "DISPLAY": self.display}
        subprocess.run([xsetroot, "-solid", "#%02x%02x%02x" % BACKGROUND], env=env, check=True, timeout=10)
        self._procs.append(subprocess.Popen(
            [xterm, "-geometry", "40x8+0+0", "-bg", "#%02x%02x%02x" % RECORDER, "-fg", "white",
             "-e", "sh", "-c", 'read line; printf %s "$line" > "$0"; exec sleep 600', str(self.typed_path)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return self

    def typed(self) -> str:
        """The line typed into the recorder so far ("" before Enter)."""
        return self.typed_path.read_text() if self.typed_path.exists() else ""

    def stop(self) -> None:
        """Stop the xterm and the server."""
        for proc in reversed(self._procs):
            stop_process(proc, timeout=5)
        self._procs = []

    def __enter__(self) -> "Xvnc":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Broadway:
    """
    GTK's Broadway display server on a free display (HTTP and WebSocket on a
    loopback port) running a GTK application.
    """

    def __init__(self, tmp: Path, app: list[str]) -> None:
        self.tmp = tmp
        self.app = app
        self.port = 0
        self.display = ""
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, timeout: float = 15.0) -> "Broadway":
        """Start broadwayd and the application; return once the port answers."""
        broadwayd = require_tool("broadwayd")
        require_tool(self.app[0])
        log = open(self.tmp / "broadwayd.log", "wb")
        for attempt in range(5):
            number = 40 + (os.getpid() + attempt * 7) % 50
            self.port = 8080 + number
            proc = subprocess.Popen([broadwayd, "--address", "127.0.0.1", "--port", str(self.port), f":{number}"],
                                    stdout=log, stderr=subprocess.STDOUT)

            def listening() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return True
                except OSError:
                    return proc.poll() is not None

            wait_until(listening, timeout)
            if proc.poll() is None:
                self._procs.append(proc)
                self.display = f":{number}"
                break
        log.close()
        if not self.display:
            raise RuntimeError(f"broadwayd did not start:\n{(self.tmp / 'broadwayd.log').read_text()}")
        env = {**os.environ, "GDK_BACKEND": "broadway", "BROADWAY_DISPLAY": self.display}
        self._procs.append(subprocess.Popen(self.app, env=env, stdout=open(self.tmp / "app.log", "wb"),
                                            stderr=subprocess.STDOUT))
        return self

    def stop(self) -> None:
        """Stop the application and broadwayd."""
        for proc in reversed(self._procs):
            stop_process(proc, timeout=5)
        self._procs = []


class Browser:
    """
    Headless Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright,
    with a fresh profile; :meth:`page` opens a page, closed with the browser.

    :param trusted_spki: base64 SHA-256 public key hashes whose certificates
        Chromium accepts without a trusted chain (the tests' own server keys).
    """

    def __init__(self, tmp: Path, trusted_spki: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.trusted_spki = trusted_spki
        self._playwright: Any = None
        self._context: Any = None

    def start(self, timeout: float = 30.0) -> "Browser":
        """Launch Chromium; fails with the browser's reason after timeout seconds."""
        chromium = require_tool("/usr/bin/chromium")
        sync_playwright = require_module("playwright.sync_api").sync_playwright  # type: ignore[attr-defined]
        args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--password-store=basic"]
        if self.trusted_spki:
            args.append("--ignore-certificate-errors-spki-list=" + ",".join(self.trusted_spki))
        self._playwright = sync_playwright().start()
        try:
            self._context = self._playwright.chromium.launch_persistent_context(
                tempfile.mkdtemp(prefix="chromium-", dir=self.tmp), executable_path=chromium, headless=True,
                args=args, viewport={"width": 900, "height": 700}, timeout=timeout * 1000)
        except BaseException:
            self.stop()
            raise
        return self

    def page(self) -> Any:
        """A new tab."""
        return self._context.new_page()

    def stop(self) -> None:
        """Close the browser (its processes with it) and Playwright's driver."""
        if self._context is not None:
            try:
                self._context.close()
            except Exception:
                pass
            self._context = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None


class Nginx:
    """
    nginx in the foreground with its own prefix, pid file and logs in tmp,
    serving ``server_block`` (http context text) on loopback.
    """

    def __init__(self, tmp: Path, server_block: str, port: int) -> None:
        self.port = port
        self.conf = nginx_main(tmp, server_block, master_process=True)
        self._process = nginx_process(tmp, self.conf, "127.0.0.1", port)

    def start(self, timeout: float = 10.0) -> "Nginx":
        """Start nginx and wait for its port."""
        self._process.start(timeout)
        return self

    def stop(self) -> None:
        """Stop nginx (its workers follow the master)."""
        self._process.stop()


class Apache:
    """
    Apache httpd 2.4 (Debian's ``apache2`` binary) in the foreground with a
    generated configuration in tmp, serving ``site`` (server context text).
    """

    MODULES = ("mpm_event", "authz_core", "headers", "proxy", "proxy_http", "proxy_wstunnel", "socache_shmcb", "ssl")

    def __init__(self, tmp: Path, site: str, port: int) -> None:
        self.port = port
        self.conf = apache_main(tmp, f"SSLSessionCache shmcb:{tmp}/ssl_scache(512000)\n{site}", self.MODULES)
        self._process = apache_process(tmp, self.conf, "127.0.0.1", port)

    def start(self, timeout: float = 10.0) -> "Apache":
        """Start httpd and wait for its port."""
        self._process.start(timeout)
        return self

    def stop(self) -> None:
        """Stop httpd (SIGTERM to the parent stops its children)."""
        self._process.stop()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll predicate (bounded); fail with what when it stays false."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def canvas_pixel(page: Any, x: int, y: int) -> tuple[int, int, int]:
    """The RGB colour of the noVNC canvas at (x, y), read back with getImageData."""
    rgba = page.evaluate("([x, y]) => Array.from(document.querySelector('#screen canvas')"
                         ".getContext('2d').getImageData(x, y, 1, 1).data)", [x, y])
    return (rgba[0], rgba[1], rgba[2])


#: True once white text (the xterm's echo of a typed line) is on the canvas, right of the cursor's start.
TEXT_SHOWN = """() => {
    const d = document.querySelector('#screen canvas').getContext('2d').getImageData(40, 0, 60, 16).data;
    for (let i = 0; i < d.length; i += 4) { if (d[i] > 200 && d[i + 1] > 200 && d[i + 2] > 200) return true; }
    return false;
}"""
