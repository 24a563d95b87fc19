"""
A desktop in a real browser through the gateway: headless Chromium opens
noVNC's page served by the gateway itself (``Alias``), connects through a
``ProxyPass`` route to a real TigerVNC Xvnc, shows the desktop's known colours
on its canvas and types a line that reaches an xterm on the desktop; directly
over ws:// and wss://, and behind nginx and Apache httpd with TLS, configured
from the snippets in examples/front-proxies/ that docs/front-proxies.rst shows.

Screenshots are saved in tests/artifacts/screenshots/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from desktops import (BACKGROUND, RECORDER, SCREENSHOTS, TEXT_SHOWN, Apache, Browser, Nginx, Xvnc, canvas_pixel,
                      free_port, spki_hash, wait_for)
from support import REPO, GatewayProcess, Pki, make_pki, require_tool, wait_until

NOVNC = Path("/usr/share/novnc")
EXAMPLES = REPO / "examples" / "front-proxies"

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Browser]:
    b = Browser(tmp_path_factory.mktemp("chromium"), trusted_spki=(spki_hash(pki.server_cert),))
    try:
        yield b.start()
    finally:
        b.stop()


@pytest.fixture
def desktop(tmp_path: Path) -> Iterator[Xvnc]:
    with Xvnc(tmp_path) as x:
        yield x


@pytest.fixture
def gateway(tmp_path: Path, desktop: Xvnc, pki: Pki) -> Iterator[GatewayProcess]:
    if not (NOVNC / "vnc_lite.html").exists():
        from support import require_tool

        require_tool("novnc")  # Debian's novnc package installs the files and this command
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
Listen ssl:port=0:interface=127.0.0.1:privateKey={pki.server_key}:certKey={pki.server_cert}:extraCertChain={pki.chain}
TrustedProxy 127.0.0.1
Alias /novnc {NOVNC}
ProxyPass /websockify {desktop.endpoint}
"""
    with GatewayProcess(config, tmp_path) as gw:
        yield gw


def use_desktop(browser: Browser, url: str, desktop: Xvnc, name: str) -> None:
    """
    Open noVNC at url; check it connects, shows the desktop's colours, and
    that a typed line reaches the desktop's xterm; save a screenshot as name.
    """
    page = browser.page()
    try:
        page.goto(url, timeout=15000)
        status = page.locator("#status")
        wait_for(lambda: (status.text_content() or "").startswith("Connected"), 20,
                 f"noVNC to connect (status: {status.text_content()!r})")
        wait_for(lambda: canvas_pixel(page, 600, 440) == BACKGROUND and canvas_pixel(page, 2, 2) == RECORDER, 15,
                 "the desktop's orange background and the blue xterm on the canvas")
        canvas = page.locator("#screen canvas")
        box = canvas.bounding_box()
        assert box is not None and (box["width"], box["height"]) == (640, 480)
        # No window manager: keys go to the window under the pointer.
        page.mouse.click(box["x"] + 60, box["y"] + 40)
        page.keyboard.type("tunnelgw 7")
        page.keyboard.press("Enter")
        wait_for(lambda: desktop.typed() == "tunnelgw 7", 15,
                 f"the typed line on the desktop (got {desktop.typed()!r})")
        # The echoed text, white on blue, right of where the cursor started.
        wait_for(lambda: page.evaluate(TEXT_SHOWN), 10, "the typed text echoed in the xterm on the canvas")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    finally:
        page.close()


def test_novnc_over_ws(browser: Browser, gateway: GatewayProcess, desktop: Xvnc) -> None:
    """noVNC served by the gateway over http:// reaches Xvnc over ws://: pixels and keys."""
    use_desktop(browser, f"http://127.0.0.1:{gateway.port(0)}/novnc/vnc_lite.html", desktop, "novnc-ws")
    gateway.wait_log(r"session end .*path=/websockify")


def test_novnc_over_wss(browser: Browser, gateway: GatewayProcess, desktop: Xvnc) -> None:
    """noVNC served by the gateway over https:// reaches Xvnc over wss://: pixels and keys."""
    use_desktop(browser, f"https://127.0.0.1:{gateway.port(1)}/novnc/vnc_lite.html", desktop, "novnc-wss")


@pytest.fixture
def h2_gateway(tmp_path: Path, desktop: Xvnc, pki: Pki) -> Iterator[GatewayProcess]:
    """A gateway whose ssl: listeners offer HTTP/2 (the first) and do not (the second)."""
    if not (NOVNC / "vnc_lite.html").exists():
        require_tool("novnc")
    tls = f"privateKey={pki.server_key}:certKey={pki.server_cert}:extraCertChain={pki.chain}"
    config = f"""
Listen ssl:port=0:interface=127.0.0.1:{tls} http2=on
Listen ssl:port=0:interface=127.0.0.1:{tls}
Alias /novnc {NOVNC}
ProxyPass /websockify {desktop.endpoint}
"""
    with GatewayProcess(config, tmp_path) as gw:
        yield gw


def test_novnc_over_http2(browser: Browser, h2_gateway: GatewayProcess, desktop: Xvnc) -> None:
    """
    With http2=on Chromium loads noVNC over HTTP/2 and opens the desktop as an
    extended CONNECT stream of that connection (the session line says via=http2):
    pixels and keys.
    """
    use_desktop(browser, f"https://127.0.0.1:{h2_gateway.port(0)}/novnc/vnc_lite.html", desktop, "novnc-http2")
    h2_gateway.wait_log(r"session start .*path=/websockify.*via=http2")
    h2_gateway.wait_log(r"session end .*path=/websockify.*via=http2")


def test_novnc_without_http2_falls_back(browser: Browser, h2_gateway: GatewayProcess, desktop: Xvnc) -> None:
    """Without http2=on the same page and desktop work over HTTP/1.1 (an upgrade: no via=http2)."""
    use_desktop(browser, f"https://127.0.0.1:{h2_gateway.port(1)}/novnc/vnc_lite.html", desktop, "novnc-http11")
    started = h2_gateway.wait_log(r"session start .*path=/websockify.*")
    assert "via=http2" not in started.group(0)


def _example(name: str, replacements: dict[str, str]) -> str:
    """An example front-proxy snippet with its addresses and paths replaced; each must occur."""
    text = (EXAMPLES / name).read_text()
    for old, new in replacements.items():
        assert old in text, f"{old!r} not in examples/front-proxies/{name}"
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("front_proxy", [Nginx, Apache], ids=["nginx", "apache"])
def test_novnc_behind_front_proxy(browser: Browser, gateway: GatewayProcess, desktop: Xvnc, pki: Pki,
                                  tmp_path: Path, front_proxy: Any) -> None:
    """
    noVNC through a TLS front proxy to the gateway's ws:// listener, configured
    by the documented recipe: nginx (examples/front-proxies/nginx.conf) or
    Apache httpd 2.4 with mod_proxy_wstunnel (examples/front-proxies/apache.conf).
    """
    name = front_proxy.__name__.lower()
    front = tmp_path / name
    front.mkdir()
    front.chmod(0o755)  # httpd's children run as www-data
    port = free_port()
    # The recipe's certificate folder holds fullchain.pem and server.key, as make_pki writes them.
    recipe = _example(f"{name}.conf", {"127.0.0.1:8443": f"127.0.0.1:{port}",
                                        "/etc/ssl/tunnelgw": str(pki.fullchain.parent),
                                        "127.0.0.1:8080": f"127.0.0.1:{gateway.port(0)}"})
    proxy = front_proxy(front, recipe, port)
    try:
        proxy.start()
        use_desktop(browser, f"https://127.0.0.1:{port}/novnc/vnc_lite.html", desktop, f"novnc-{name}")
    finally:
        proxy.stop()
    gateway.wait_log(r"session end .*path=/websockify")


def test_novnc_example_script(browser: Browser, tmp_path: Path) -> None:
    """examples/novnc/run.sh serves noVNC over https and wss to its own Xvnc; Chromium shows its desktop."""
    import os
    import signal
    import ssl
    import subprocess

    from websockets.sync.client import connect

    for tool in ("Xvnc", "xsetroot", "xterm", "openssl"):
        require_tool(tool)
    port = free_port()
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen(["bash", str(REPO / "examples" / "novnc" / "run.sh")], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PORT": str(port), "WORKDIR": str(tmp_path), "GEOMETRY": "800x600"},
                            start_new_session=True)
    cdp = None
    try:
        context = ssl.create_default_context(cafile=None)

        def serving() -> bool:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "run.log").read_text())
            if not (tmp_path / "cert.pem").exists():
                return False
            try:
                context.load_verify_locations(str(tmp_path / "cert.pem"))
                with connect(f"wss://localhost:{port}/websockify", ssl=context, open_timeout=3) as ws:
                    greeting.append(ws.recv(timeout=5))
                return True
            except (OSError, ssl.SSLError, Exception):
                return False

        greeting: list[object] = []
        wait_for(serving, 20, "the example's gateway to relay a session")
        assert greeting[0] == b"RFB 003.008\n"
        page = browser.page()
        # The example's own self-signed certificate, made by the script: accepted for this
        # page only (Chromium's DevTools switch, reset below); the client check above
        # verified it against the script's certificate file.
        cdp = page.context.new_cdp_session(page)
        cdp.send("Security.setIgnoreCertificateErrors", {"ignore": True})
        page.goto(f"https://localhost:{port}/novnc/vnc.html?autoconnect=true&resize=scale", timeout=15000)
        wait_for(lambda: page.evaluate("document.documentElement.classList.contains('noVNC_connected')"), 20,
                 "noVNC's full client to connect")
        wait_for(lambda: page.evaluate("""() => { const c = document.querySelector('#noVNC_container canvas');
            const d = c.getContext('2d').getImageData(2, c.height - 3, 1, 1).data;
            return d[0] === 0x2e && d[1] === 0x5e && d[2] === 0x8e; }"""), 15, "the example desktop's background")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "novnc-example.png"))
    finally:
        if cdp is not None:
            cdp.send("Security.setIgnoreCertificateErrors", {"ignore": False})
            page.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()


def test_demo_page_shows_text_as_text(browser: Browser, tmp_path: Path) -> None:
    """The demo page sends a typed line through the echo route and shows the binary answer as UTF-8 text."""
    echo = free_port()
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
DemoBackend echo tcp:port={echo}:interface=127.0.0.1
ProxyPass /echo tcp:host=127.0.0.1:port={echo}
DemoPage / /echo
"""
    with GatewayProcess(config, tmp_path) as gw:
        page = browser.page()
        try:
            page.goto(f"http://127.0.0.1:{gw.port()}/", timeout=15000)
            shown = page.locator("#log")
            wait_for(lambda: "connected to" in (shown.text_content() or ""), 15, "the demo page's session")
            page.fill("#t", "héllo, desktop ✓")
            page.press("#t", "Enter")
            wait_for(lambda: "echo: héllo, desktop ✓" in (shown.text_content() or ""), 15,
                     f"the echoed line as text (page shows {shown.text_content()!r})")
        finally:
            page.close()
    assert "path=/echo" in gw.log()


def test_front_proxy_docs_match_examples() -> None:
    """docs/front-proxies.rst shows the tested nginx and Apache files verbatim, and README.rst the nginx one."""
    for doc, names in (("docs/front-proxies.rst", ("nginx.conf", "apache.conf")), ("README.rst", ("nginx.conf",))):
        text = (REPO / doc).read_text()
        for name in names:
            example = (EXAMPLES / name).read_text()
            indented = "\n".join(("    " + line) if line else "" for line in example.splitlines())
            assert indented in text, f"{doc} no longer shows examples/front-proxies/{name}"


def test_broadway_through_gateway(browser: Browser, tmp_path: Path) -> None:
    """A GTK app on broadwayd in Chromium through a ws:// backend route: its colour shows and typed text reaches it."""
    import io

    from PIL import Image

    from desktops import Broadway

    python = require_tool("/usr/bin/python3")
    typed = tmp_path / "typed.txt"
    desktop = Broadway(tmp_path, [python, str(REPO / "tests" / "apps" / "gtk_recorder.py"), str(typed)])
    page = None
    try:
        desktop.start()
        # One ws:// route: broadwayd's page and script come through it as HTTP,
        # its /socket WebSocket as a WebSocket session.
        config = f"""
Listen tcp:port=0:interface=127.0.0.1
ProxyPass /broadway ws://127.0.0.1:{desktop.port}
"""
        with GatewayProcess(config, tmp_path) as gw:
            page = browser.page()
            page.goto(f"http://127.0.0.1:{gw.port()}/broadway/", timeout=15000)

            def pixel() -> tuple[int, int, int]:
                image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
                return image.getpixel((100, 100))  # type: ignore[return-value]

            wait_for(lambda: pixel() == (0, 0xCC, 0), 20, "the GTK window's green area in the page")
            # The page may still be setting up its input when the first keys come:
            # select what the entry holds and type the line again, at most 3 times.
            def arrived() -> bool:
                return typed.exists() and typed.read_text() == "broadway 7"

            for _ in range(3):
                page.mouse.click(200, 320)  # the entry, under the green area
                page.keyboard.press("Control+a")
                page.keyboard.type("broadway 7")
                page.keyboard.press("Enter")
                if wait_until(arrived, 5):
                    break
            assert arrived(), f"the GTK app recorded {typed.read_text() if typed.exists() else 'nothing'!r}"
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "broadway.png"))
    finally:
        if page is not None:
            page.close()
        desktop.stop()
