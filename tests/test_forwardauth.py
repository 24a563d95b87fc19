"""Forward authentication against a real small HTTP portal (tunnelgw.core.forwardauth, tunnelgw.forwardauth)."""

from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from support import GatewayProcess, TcpServer, backend, echo, session_status
from tunnelgw.core.forwardauth import Admit, AnswerCache, portal_headers, read_answer
from tunnelgw.core.routing import Reject
from tunnelgw.core.tokens import TargetAddress
from tunnelgw.core.topoconfig import read_allowed


def test_answers() -> None:
    allow = [read_allowed("127.0.0.0/8:5900-5999")]
    assert read_answer(204, {}, allow) == Admit()
    assert read_answer(200, {"x-tunnelgw-target": "127.0.0.5:5901", "x-tunnelgw-user": "alice"}, allow) == \
        Admit(TargetAddress("127.0.0.5", 5901), "alice")
    assert read_answer(200, {"x-tunnelgw-user": "a b"}, allow) == Admit()  # not a plain name: dropped
    assert read_answer(401, {}, allow).status == 401 and read_answer(403, {}, allow).status == 403  # type: ignore[union-attr]
    for status, headers in ((500, {}), (302, {}), (200, {"x-tunnelgw-target": "10.0.0.1:5901"}),
                            (200, {"x-tunnelgw-target": "127.0.0.5:22"}), (200, {"x-tunnelgw-target": "h:p"})):
        refused = read_answer(status, headers, allow)
        assert isinstance(refused, Reject) and refused.status == 503, (status, headers)
    sent = portal_headers("203.0.113.9", "/vnc?x=1", {"cookie": "c", "authorization": "a", "origin": "o", "host": "h"})
    assert sent == {"cookie": "c", "authorization": "a", "origin": "o", "x-forwarded-for": "203.0.113.9",
                    "x-original-uri": "/vnc?x=1"}
    cache = AnswerCache(5, size=2)
    for i in range(3):
        cache.put((str(i),), Admit(), 0.0)
    assert cache.get(("0",), 1.0) is None and cache.get(("2",), 1.0) == Admit() and cache.get(("2",), 6.0) is None


class Portal:
    """A real HTTP portal on loopback deciding by the session cookie; counts what it was asked."""

    def __init__(self, other_port: int) -> None:
        self.asked: list[dict[str, str]] = []
        self.release = threading.Event()
        portal = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                portal.asked.append(headers)
                cookie = headers.get("cookie", "")
                if cookie == "session=slow":
                    portal.release.wait(10)  # longer than the gateway waits
                answers = {"session=good": (200, {"X-Tunnelgw-User": "alice"}),
                           "session=there": (204, {"X-Tunnelgw-Target": f"127.0.0.1:{other_port}"}),
                           "session=bad": (403, {}), "session=weird": (500, {}), "": (401, {})}
                status, extra = answers.get(cookie, (403, {}))
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def other() -> Iterator[TcpServer]:
    with TcpServer(echo) as server:
        yield server


def test_portal_decides_who_gets_a_desktop(tmp_path: Path, backend: TcpServer, other: TcpServer) -> None:
    portal = Portal(other.port)
    try:
        config = f"""
Listen tcp:port=0:interface=127.0.0.1
AuthPortal sso http://127.0.0.1:{portal.port}/auth timeout=0.5 cache=30 allow=127.0.0.1:{other.port}
ProxyPass /vnc {backend.endpoint} auth=sso
"""
        with GatewayProcess(config, tmp_path) as gw:
            url = f"ws://127.0.0.1:{gw.port()}/vnc?desk=1"

            def status(cookie: str) -> int:
                return session_status(url, {"Cookie": cookie} if cookie else {})

            assert status("session=good") == 101 and backend.accepted == 1
            assert portal.asked[0]["x-original-uri"] == "/vnc?desk=1"
            assert portal.asked[0]["x-forwarded-for"] == "127.0.0.1" and portal.asked[0]["cookie"] == "session=good"
            assert status("session=good") == 101 and len(portal.asked) == 1  # cached admission
            assert status("session=there") == 101 and other.accepted == 1  # the portal named the desktop
            assert status("session=there") == 101 and other.accepted == 2 and len(portal.asked) == 2  # cached too
            assert status("session=bad") == 403
            assert status("") == 401
            assert status("session=weird") == 503
            started = time.monotonic()
            assert status("session=slow") == 503
            assert time.monotonic() - started < 4  # bounded by timeout=0.5, never the portal's 10 s
            assert len(portal.asked) == 6 and backend.accepted == 2
            assert len(re.findall(r"session start .*user=alice", gw.log())) == 2
            assert "forward auth refused" in gw.log() and "timed out" in gw.log()
    finally:
        portal.stop()
