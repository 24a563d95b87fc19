"""The operator's page on the admin listener (tunnelgw.core.adminpage, tunnelgw.admin), in Chromium too."""

from __future__ import annotations

import json
import re
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


def test_overview_is_bounded_and_pure() -> None:
    """Refusals leave the hour window; reasons past the bound are grouped; rates need a baseline; slowest first."""
    from tunnelgw.core.adminpage import slowest_first
    from tunnelgw.core.overview import HealthTracker, RefusalWindow, TrafficRates, group_rates

    window = RefusalWindow(window=3600, bucket=60, max_reasons=2)
    for when, reason in [(0, "a"), (10, "a"), (70, "b"), (80, "c"), (90, "d"), (3000, "b")]:
        window.add(when, reason)
    assert window.counts(3000) == [("a", 2), ("b", 2), (RefusalWindow.OTHER, 1), ("c", 1)]
    assert window.counts(3600 + 61) == [("b", 1)]  # the first minutes have left the hour
    rates = TrafficRates(window=60, spacing=5)
    assert rates.sample(100, {"s1": (0, 0)}) == (0.0, {})
    seconds, found = rates.sample(102, {"s1": (2000, 4000), "s2": (100, 0)})
    assert seconds == 2 and found == {"s1": (1000.0, 2000.0), "s2": (50.0, 0.0)}
    assert group_rates([("s1", "r"), ("s2", "r")], found) == {"r": (1050.0, 2000.0)}
    health = HealthTracker(recent=300)
    assert health.update(0, "p", 0, 0, "").state == "unknown"
    assert health.update(10, "p", 1, 5, "x").state == "trouble"
    assert health.update(400, "p", 1, 9, "x").state == "ok"
    ordered = slowest_first([{"session": "a"}, {"session": "b", "round_trip_ms": 5.0},
                             {"session": "c", "round_trip_ms": 50.0}])
    assert [s["session"] for s in ordered] == ["c", "b", "a"]


def test_operator_overview_in_chromium(tmp_path: Path, backend: TcpServer, browser: Browser) -> None:
    """
    The page a gateway of a pool serves shows traffic per route and gateway
    with rates, refusals by reason, Redis and portal health, a recording that
    stopped and each session's measured round trip, the slowest first (Chromium).
    """
    from desktops import SCREENSHOTS
    from support import RedisServer, free_port, session_status

    redis = RedisServer(tmp_path / "redis").start()
    (tmp_path / "rec").mkdir()
    try:
        config = f"""
Listen tcp:port=0:interface=127.0.0.1
AdminListen tcp:port=0:interface=127.0.0.1
ProxyPass /echo {backend.endpoint} name=desktops
ProxyPass /recorded {backend.endpoint} name=recorded record=on
ProxyPass /portal {backend.endpoint} name=portal auth=sso
AuthPortal sso http://127.0.0.1:{free_port()}/auth timeout=1
Recording {{tmp}}/rec maxbytes=1024
KeepAlive ping=1 pong=0.9
GatewayURL ws://127.0.0.1:1
Pool redis://127.0.0.1:{redis.port}/0 name=gw1 ttl=4 refresh=1
"""
        with GatewayProcess(config, tmp_path) as gw:
            admin = f"http://127.0.0.1:{gw.port(1)}"
            ws_base = f"ws://127.0.0.1:{gw.port()}"
            assert session_status(f"{ws_base}/nowhere") == 404
            assert session_status(f"{ws_base}/nowhere/else") == 404
            assert session_status(f"{ws_base}/portal") == 503
            with connect(f"{ws_base}/echo", open_timeout=5) as one, \
                    connect(f"{ws_base}/recorded", open_timeout=5) as two:
                two.send(b"r" * 3000)  # past maxbytes=1024: the recording stops, the session goes on
                assert len(two.recv(timeout=5)) > 0

                def sessions() -> list[dict[str, object]]:
                    return list(json.loads(urllib.request.urlopen(admin + "/sessions", timeout=5).read())["sessions"])

                # The websockets clients answer the gateway's pings: each gets a measured round trip.
                assert wait_until(lambda: all("round_trip_ms" in s for s in sessions()) and len(sessions()) == 2, 10)
                page = browser.page()
                page.goto(admin + "/")
                one.send(b"x" * 20000)
                echoed = 0
                while echoed < 20000:
                    echoed += len(one.recv(timeout=5))
                page.goto(admin + "/")  # the second look has a baseline: rates
                routes = page.inner_text("#routes")
                assert "desktops" in routes and "recorded" in routes and "portal" in routes
                assert "kB/s" in routes or " B/s" in routes, routes
                assert "gw1" in page.inner_text("#gateways")
                refusals = page.inner_text("#refusals")
                assert "404 no route for this path\t2" in refusals, refusals
                assert "503 the portal cannot decide now\t1" in refusals, refusals
                health = page.inner_text("#health")
                assert re.search(r"Redis \(Pool\)\tok\tredis 127\.0\.0\.1:\d+/0: reachable", health), health
                assert re.search(r"portal sso\ttrouble\tanswers 503: 1", health), health
                stopped = page.inner_text("#stopped")
                assert "size_limit" in stopped, stopped
                rtts = [float(t) for t in page.locator("#sessions td.rtt").all_inner_texts()]
                assert len(rtts) == 2 and rtts == sorted(rtts, reverse=True), rtts
                assert page.evaluate("document.scripts.length") == 0
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / "operator-page.png"), full_page=True)
            metrics = urllib.request.urlopen(admin + "/metrics", timeout=5).read().decode()
            assert re.search(r'^tunnelgw_session_round_trip_seconds_count\{route="desktops"\} [1-9]', metrics, re.M)
    finally:
        redis.stop()
