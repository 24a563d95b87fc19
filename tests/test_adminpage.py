"""The operator's page on the admin listener (tunnelgw.core.adminpage, tunnelgw.admin), in Chromium too."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from desktops import Browser
from support import GatewayProcess, TcpServer, backend, wait_until
from tunnelgw.core.adminpage import csrf_refusal, csrf_token, render_page

SECRET = b"k" * 32
OWN = ["http://127.0.0.1:9090"]


@pytest.mark.parametrize("headers, body, refused", [
    ({}, b"", None),  # a script: curl -X POST
    ({"origin": "http://127.0.0.1:9090", "content-type": "application/x-www-form-urlencoded"},
     b"csrf=" + csrf_token(SECRET, "s1").encode(), None),
    ({"origin": "http://evil.example", "content-type": "application/x-www-form-urlencoded"},
     b"csrf=" + csrf_token(SECRET, "s1").encode(), "cross-site request refused"),
    ({"origin": "null", "content-type": "text/plain"}, b"", "cross-site request refused"),
    ({"content-type": "application/x-www-form-urlencoded"}, b"csrf=" + csrf_token(SECRET, "s2").encode(),
     "missing or wrong csrf token"),
    ({"sec-fetch-site": "same-origin"}, b"", "missing or wrong csrf token"),
    ({"content-type": "multipart/form-data; boundary=x"}, b"", "missing or wrong csrf token"),
])
def test_csrf_guard(headers: dict[str, str], body: bytes, refused: str | None) -> None:
    """Browser requests need this page's origin and the session's token; scripts without a body pass."""
    answer = csrf_refusal(SECRET, "s1", headers, body, OWN)
    assert (answer is None) if refused is None else (answer is not None and answer.startswith(refused))


def test_page_escapes_everything() -> None:
    page = render_page([{"session": "s1", "client": "<script>x</script>", "path": '/a"b', "route": "r"}],
                       SECRET, False)
    assert "<script>x" not in page and "&lt;script&gt;" in page and "/a&quot;b" in page
    assert f'value="{csrf_token(SECRET, "s1")}"' in page
    assert "no live session" in render_page([], SECRET, True) and "draining" in render_page([], SECRET, True)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    (tmp_path / "chromium").mkdir()
    b = Browser(tmp_path / "chromium").start()
    yield b
    b.stop()


def test_operator_page_in_chromium(tmp_path: Path, backend: TcpServer, browser: Browser) -> None:
    """Chromium lists a live session, closes it with the button (1008), and another site's form is refused."""
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
AdminListen tcp:port=0:interface=127.0.0.1
ProxyPass /echo {backend.endpoint} name=echo
"""
    with GatewayProcess(config, tmp_path) as gw:
        admin = f"http://127.0.0.1:{gw.port(1)}"
        with connect(f"ws://127.0.0.1:{gw.port()}/echo", open_timeout=5) as ws:
            ws.send(b"hi")
            assert ws.recv(timeout=5) == b"hi"
            [live] = json.loads(urllib.request.urlopen(admin + "/sessions", timeout=5).read())["sessions"]
            sid = live["session"]

            # Another site (here: a page with no origin) posting the right token still gets 403.
            attacker = browser.page()
            attacker.set_content(f'<form id="f" method="post" action="{admin}/sessions/{sid}/close">'
                                 f'<input name="csrf" value="{csrf_token(b"guess", sid)}"></form>')
            with attacker.expect_navigation():
                attacker.evaluate("document.getElementById('f').submit()")
            assert "cross-site request refused" in attacker.content()
            assert sid in json.loads(urllib.request.urlopen(admin + "/sessions", timeout=5).read())["sessions"][0]["session"]

            page = browser.page()
            page.goto(admin + "/")
            assert page.text_content("#count") == "1"
            row = page.locator(f"#session-{sid}")
            assert "echo" in row.inner_text() and "127.0.0.1" in row.inner_text()
            with page.expect_navigation():
                row.locator("button").click()
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            assert ws.close_code == 1008
        assert wait_until(lambda: json.loads(urllib.request.urlopen(admin + "/sessions", timeout=5).read())
                          == {"sessions": []}, 5)
        assert f"closing session {sid}" in page.content()
        page.goto(admin + "/")
        assert page.text_content("#count") == "0" and "no live session" in page.content()
        headers = urllib.request.urlopen(admin + "/", timeout=5).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(urllib.request.Request(admin + f"/sessions/{sid}/close", data=b"csrf=x",
                                                          method="POST"), timeout=5)
        assert caught.value.code == 403
        assert "admin close" in gw.log() and f"session={sid}" in gw.log()
