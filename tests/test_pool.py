"""
A pool of three gateways (127.0.0.2-4) sharing one live-session list through a
real redis-server: pool-wide list, a close issued on one gateway ending a
session held by another, a SIGKILLed gateway leaving no ghosts after its TTL,
and Redis going away and coming back without a session being cut.
"""

from __future__ import annotations

import json
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from support import (GatewayProcess, RedisServer, TcpServer, backend, connect_from, redis_server, session_status,
                     wait_until)
from tunnelgw.core.config import ConfigError, parse_config

pytestmark = pytest.mark.timeout(120)


def admin(gw: GatewayProcess, path: str, method: str = "GET") -> tuple[int, Any]:
    """Status and body (JSON decoded) of a request to gw's admin listener (on gw's own 127.0.0.N)."""
    host = "127.0.0." + gw.config_path.stem[2:]
    request = urllib.request.Request(f"http://{host}:{gw.port(1)}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            body = answer.read().decode()
            return answer.status, json.loads(body) if body.startswith("{") else body
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def pool_ids(gw: GatewayProcess) -> Optional[dict[str, str]]:
    """session id -> gateway name, as the pool lists them (None when the list is unavailable)."""
    status, body = admin(gw, "/pool/sessions")
    return {s["session"]: s["gateway"] for s in body["sessions"]} if status == 200 else None


def test_pool_mistakes() -> None:
    for line, message in [("Pool redis://127.0.0.1:6379/0", "Pool needs name=GATEWAY"),
                          ("Pool http://127.0.0.1:6379 name=a", "Pool takes redis://HOST:PORT/DB"),
                          ("Pool redis://u:secret@127.0.0.1:6379 name=a", "Pool takes redis://HOST:PORT/DB"),
                          ("Pool redis://127.0.0.1 name=a ttl=4 refresh=3", "Pool refresh= (3) must be at most half"),
                          ("TokenSource s jwt /secret once=on allow=127.0.0.1:1", "once=on needs a Pool"),
                          ("TokenSource s file /tokens once=on allow=127.0.0.1:1", "once=on needs signed tokens")]:
        with pytest.raises(ConfigError) as caught:
            parse_config(f"Listen tcp:port=1\n{line}\n", "gw.conf")
        assert str(caught.value).startswith("gw.conf:2: " + message), str(caught.value)


def test_three_gateways_share_one_session_list(tmp_path: Path, redis_server: RedisServer,
                                               backend: TcpServer) -> None:
    gateways = []
    try:
        for n in (2, 3, 4):
            config = f"""
Listen tcp:port=0:interface=127.0.0.{n}
AdminListen tcp:port=0:interface=127.0.0.{n}
ProxyPass /echo {backend.endpoint}
Pool redis://127.0.0.1:{redis_server.port}/0 name=gw{n} ttl=3 refresh=0.5
"""
            gateways.append(GatewayProcess(config, tmp_path, name=f"gw{n}").start())
        gw2, gw3, gw4 = gateways
        with connect(f"ws://127.0.0.3:{gw3.port()}/echo", open_timeout=5) as on3, \
                connect(f"ws://127.0.0.4:{gw4.port()}/echo", open_timeout=5) as on4:
            on3.send(b"three")
            assert on3.recv(timeout=5) == b"three"
            on4.send(b"four")
            assert on4.recv(timeout=5) == b"four"
            assert wait_until(lambda: sorted((pool_ids(gw2) or {}).values()) == ["gw3", "gw4"], 10)
            listed = pool_ids(gw2) or {}
            held_by_3 = next(sid for sid, name in listed.items() if name == "gw3")
            held_by_4 = next(sid for sid, name in listed.items() if name == "gw4")
            assert {s["session"] for s in admin(gw3, "/sessions")[1]["sessions"]} == {held_by_3}
            # The operator's page of gw2 shows the pool's sessions, closing others' through the pool.
            status, page = admin(gw2, "/")
            assert status == 200 and "<td>gw3</td>" in page and "<td>gw4</td>" in page
            assert f'action="/pool/sessions/{held_by_3}/close"' in page
            forged = urllib.request.Request(f"http://127.0.0.2:{gw2.port(1)}/pool/sessions/{held_by_3}/close",
                                            data=b"csrf=guess", method="POST")
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(forged, timeout=5)
            assert caught.value.code == 403

            # A close issued on gw2 ends the session gw3 holds.
            assert admin(gw2, f"/pool/sessions/{held_by_3}/close", "POST")[0] == 202
            with pytest.raises(ConnectionClosed):
                on3.recv(timeout=5)
            assert on3.close_code == 1008
            assert admin(gw2, "/pool/sessions/nosuchsession/close", "POST")[0] == 404
            assert wait_until(lambda: list((pool_ids(gw2) or {"x": ""}).values()) == ["gw4"], 10)

            # Redis goes away: sessions go on, the pool list is 503; back, it is whole again.
            redis_server.stop()
            on4.send(b"still")
            assert on4.recv(timeout=5) == b"still"
            assert wait_until(lambda: admin(gw2, "/pool/sessions")[0] == 503, 10)
            assert wait_until(lambda: "tunnelgw_pool_degraded 1.0" in admin(gw4, "/metrics")[1], 10)
            on4.send(b"and still")
            assert on4.recv(timeout=5) == b"and still"
            redis_server.start()
            assert wait_until(lambda: pool_ids(gw2) == {held_by_4: "gw4"}, 15)
            assert wait_until(lambda: "tunnelgw_pool_degraded 0.0" in admin(gw4, "/metrics")[1], 10)
            assert "pool registry degraded" in gw4.log() and re.search(r"Redis pool at 127.0.0.1:[0-9]+ reachable again", gw4.log())

            # gw4 killed outright: its session leaves the list within its TTL.
            gw4.stop(signal.SIGKILL)
            assert wait_until(lambda: pool_ids(gw2) == {}, 3 + 5)
    finally:
        for gw in gateways:
            gw.stop()


def test_single_use_tokens_open_one_session_in_the_pool(tmp_path: Path, redis_server: RedisServer,
                                                        backend: TcpServer) -> None:
    """A once=on JWT opens one session on whichever gateway; used again anywhere it is 403; no Redis: 503."""
    import time

    import jwt

    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    gateways = []
    try:
        for n in (2, 3):
            config = f"""
Listen tcp:port=0:interface=127.0.0.{n}
AdminListen tcp:port=0:interface=127.0.0.{n}
Pool redis://127.0.0.1:{redis_server.port}/0 name=gw{n} ttl=3 refresh=0.5
TokenSource signed jwt {secret} once=on allow=127.0.0.1:{backend.port}
TokenRoute /vnc signed
"""
            gateways.append(GatewayProcess(config, tmp_path, name=f"gw{n}").start())
        gw2, gw3 = gateways

        def token(jti: object) -> str:
            claims = {"host": "127.0.0.1", "port": backend.port, "exp": int(time.time()) + 60, "jti": jti}
            return jwt.encode({k: v for k, v in claims.items() if v is not None}, b"s" * 32, algorithm="HS256")

        def status(gw: GatewayProcess, n: int, tok: str) -> int:
            return session_status(f"ws://127.0.0.{n}:{gw.port()}/vnc?token={tok}")

        once = token("a1")
        assert status(gw2, 2, once) == 101
        assert status(gw3, 3, once) == 403 and status(gw2, 2, once) == 403
        assert status(gw3, 3, token(None)) == 403  # no jti: refused
        gw3.wait_log(r"single-use token already used")
        redis_server.stop()
        assert status(gw2, 2, token("a2")) == 503
        redis_server.start()
        assert wait_until(lambda: status(gw3, 3, token("a3")) == 101, 10)
    finally:
        for gw in gateways:
            gw.stop()


def test_pool_wide_limits_per_desktop_and_user(tmp_path: Path, redis_server: RedisServer, backend: TcpServer) -> None:
    """maxperdesktop counts a desktop's clients: one client's channels count once on one gateway or two, a second client is refused on either; maxperuser counts desktops."""
    import time

    import jwt

    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    gateways = []
    try:
        for n in (2, 3):
            config = f"""
Listen tcp:port=0:interface=127.0.0.{n}
Pool redis://127.0.0.1:{redis_server.port}/0 name=gw{n} ttl=3 refresh=0.5
TokenSource signed jwt {secret} allow=127.0.0.1:{backend.port}
TokenRoute /vnc signed maxperdesktop=1 maxperuser=2
"""
            gateways.append(GatewayProcess(config, tmp_path, name=f"gw{n}").start())
        gw2, gw3 = gateways

        def token(desk: str, user: str) -> str:
            return jwt.encode({"host": "127.0.0.1", "port": backend.port, "exp": int(time.time()) + 60, "desk": desk,
                               "user": user}, b"s" * 32, algorithm="HS256")

        def url(n: int, tok: str) -> str:
            return f"ws://127.0.0.{n}:{gateways[n - 2].port()}/vnc?token={tok}"

        desk_a, desk_b, desk_c = token("a", "alice"), token("b", "alice"), token("c", "alice")
        one, other = "127.0.0.10", "127.0.0.11"
        with connect_from(url(2, desk_a), one), connect_from(url(2, desk_a), one):  # two channels of one client
            assert session_status(url(2, desk_a), source=other) == 503  # a second client, same gateway
            assert session_status(url(3, desk_a), source=other) == 503  # a second client, another gateway
            with connect_from(url(3, desk_a), one):  # the same client's channel on another gateway counts once
                with connect_from(url(3, desk_b), one):
                    assert session_status(url(2, desk_c), source=one) == 503  # alice has her two desktops
        assert wait_until(lambda: session_status(url(3, desk_a), source=other) == 101, 10)  # released on close, anywhere
        assert "this desktop is at its session limit in the pool" in gw2.log() + gw3.log()
        assert "this desktop is at its session limit in the pool" in gw3.log()
        assert "this user is at its session limit in the pool" in gw2.log()
    finally:
        for gw in gateways:
            gw.stop()


def test_one_gateway_admits_one_client_per_desktop(tmp_path: Path, redis_server: RedisServer, backend: TcpServer) -> None:
    """maxperdesktop=1 on a lone gateway: fifteen channels of one client open, a second client gets 503 until the first leaves; maxperuser counts a desktop with two clients once."""
    import contextlib
    import time

    import jwt

    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
Pool redis://127.0.0.1:{redis_server.port}/0 name=solo ttl=3 refresh=0.5
TokenSource signed jwt {secret} allow=127.0.0.1:{backend.port}
TokenRoute /spice signed maxperdesktop=1
TokenRoute /shared signed maxperdesktop=2 maxperuser=1
"""

    def mint(**claims: str) -> str:
        return jwt.encode({"host": "127.0.0.1", "port": backend.port, "exp": int(time.time()) + 60, **claims},
                          b"s" * 32, algorithm="HS256")

    token = mint()
    with GatewayProcess(config, tmp_path, name="solo") as gw:
        url = f"ws://127.0.0.1:{gw.port()}/spice?token={token}"
        with contextlib.ExitStack() as channels:
            for _ in range(15):
                ws = channels.enter_context(connect_from(url, "127.0.0.20"))
                ws.send(b"c")
                assert ws.recv(timeout=5) == b"c"
            for _ in range(3):
                assert session_status(url, source="127.0.0.21") == 503
        gw.wait_log(r"client=127\.0\.0\.21:\d+ .*status=503 reason='this desktop is at its session limit in the pool'")
        assert wait_until(lambda: gw.log().count("session end") == 15, 10)
        assert session_status(url, source="127.0.0.21") == 101
        # A user's limit counts desktops: two clients of one desktop are one desktop of bob's.
        shared = f"ws://127.0.0.1:{gw.port()}/shared?token="
        desk_a, desk_b = mint(desk="a", user="bob"), mint(desk="b", user="bob")
        with connect_from(shared + desk_a, "127.0.0.20"), connect_from(shared + desk_a, "127.0.0.21"):
            assert session_status(shared + desk_a, source="127.0.0.22") == 503  # its third client
            assert session_status(shared + desk_b, source="127.0.0.20") == 503  # bob's second desktop
        gw.wait_log(r"this user is at its session limit in the pool")


def test_a_redirect_does_not_burn_a_single_use_token(tmp_path: Path, redis_server: RedisServer,
                                                     backend: TcpServer) -> None:
    """The owner check runs before the single-use claim: the token redirected away still opens at its owner."""
    import http.client
    import time

    import jwt
    import redis

    from support import free_port

    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    ports = {n: free_port(f"127.0.0.{n}") for n in (2, 3)}
    gateways = []
    try:
        for n in (2, 3):
            config = f"""
Listen tcp:port={ports[n]}:interface=127.0.0.{n}
GatewayURL ws://127.0.0.{n}:{ports[n]}
Pool redis://127.0.0.1:{redis_server.port}/0 name=gw{n} ttl=3 refresh=0.5
OwnerSource redis://127.0.0.1:{redis_server.port}/0 namespace=tunnelgw
TokenSource signed jwt {secret} once=on allow=127.0.0.1:{backend.port}
TokenRoute /vnc signed
"""
            gateways.append(GatewayProcess(config, tmp_path, name=f"gw{n}").start())
        redis.Redis(port=redis_server.port).set("tunnelgw:owner:127.0.0.1", f"ws://127.0.0.3:{ports[3]}")
        token = jwt.encode({"host": "127.0.0.1", "port": backend.port, "exp": int(time.time()) + 60, "jti": "r1"},
                           b"s" * 32, algorithm="HS256")
        conn = http.client.HTTPConnection("127.0.0.2", ports[2], timeout=5)
        conn.request("GET", f"/vnc?token={token}", headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        answer = conn.getresponse()
        conn.close()
        assert answer.status == 307 and answer.getheader("Location", "").startswith(f"ws://127.0.0.3:{ports[3]}/")
        with connect(f"ws://127.0.0.3:{ports[3]}/vnc?token={token}", open_timeout=5) as ws:
            ws.send(b"x")
            assert ws.recv(timeout=5) == b"x"
    finally:
        for gw in gateways:
            gw.stop()
