"""
Tokens in a real redis-server, in websockify's TokenRedis layout
(tunnelgw.core.tokens.redis_target, tunnelgw.redistokens): both value forms,
a namespace, a broker's change followed at once, 403 for unknown and
forbidden targets, 503 while Redis is gone, and recovery without a restart.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from websockets.sync.client import connect

from support import GatewayProcess, RedisServer, TcpServer, backend, echo, redis_server, session_status, wait_until
from tunnelgw.core.errors import Location
from tunnelgw.core.routing import Reject
from tunnelgw.core.tokens import TargetAddress, redis_key, redis_target
from tunnelgw.core.topoconfig import AllowedTarget, TokenSourceSpec

SPEC = TokenSourceSpec("r", "redis", "redis://127.0.0.1:6379/0", (AllowedTarget("127.0.0.0/8", 5900, 5999),), 2.0,
                       False, Location("t", 1), namespace="vdi")


def test_redis_values() -> None:
    assert redis_key(SPEC, "desk1") == "vdi:desk1"
    assert redis_target(SPEC, b'{"host": "127.0.0.5:5901"}') == TargetAddress("127.0.0.5", 5901)
    assert redis_target(SPEC, b"127.0.0.5:5902") == TargetAddress("127.0.0.5", 5902)
    for bad in (None, b"10.0.0.1:5901", b"127.0.0.5:80", b'{"host": 5}', b"\xff", b"{nope", b"127.0.0.5:5901:x=1"):
        refused = redis_target(SPEC, bad)
        assert isinstance(refused, Reject) and (refused.status, refused.reason) == (403, "invalid token"), bad


def gw_metrics(gw: GatewayProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{gw.port(1)}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def echoes(url: str, data: bytes) -> bool:
    with connect(url, open_timeout=10) as ws:
        ws.send(data)
        return ws.recv(timeout=5) == data


def test_tokens_in_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    import redis

    store = redis.Redis(host="127.0.0.1", port=redis_server.port)
    first, second = TcpServer(echo, host="127.0.0.5"), TcpServer(echo, host="127.0.0.6")
    try:
        store.set("vdi:desk1", f'{{"host": "127.0.0.5:{first.port}"}}')
        store.set("vdi:desk2", f"127.0.0.6:{second.port}")
        store.set("vdi:evil", "10.1.2.3:22")
        config = f"""
Listen tcp:port=0:interface=127.0.0.1
AdminListen tcp:port=0:interface=127.0.0.1
TokenSource broker redis redis://127.0.0.1:{redis_server.port}/0 namespace=vdi timeout=0.5 allow=127.0.0.0/8:1-65535
TokenRoute /vnc broker
"""
        with GatewayProcess(config, tmp_path) as gw:
            base = f"ws://127.0.0.1:{gw.port()}/vnc"
            assert echoes(base + "?token=desk1", b"one") and first.accepted == 1
            assert echoes(base + "?token=desk2", b"two") and second.accepted == 1
            assert session_status(base + "?token=nobody") == 403
            assert session_status(base + "?token=evil") == 403
            assert session_status(base) == 403
            # The broker moves desk1: the next session follows, no reload.
            store.set("vdi:desk1", f"127.0.0.6:{second.port}")
            assert echoes(base + "?token=desk1", b"moved") and second.accepted == 2
            gw.wait_log(rf"session end .*backend=tcp:host=127.0.0.6:port={second.port}")
            assert "nobody" not in gw.log()  # tokens are logged as fingerprints only

            redis_server.stop()
            assert session_status(base + "?token=desk1") == 503
            gw.wait_log(r"Redis broker at 127.0.0.1:[0-9]+ unreachable")
            assert session_status(base + "?token=desk1") == 503  # at once: the breaker is open
            metrics = gw_metrics(gw)
            assert re.search(r'tunnelgw_redis_lookup_seconds_count\{source="broker"\} [1-9]', metrics)
            assert 'tunnelgw_redis_lookup_errors_total{source="broker"} 2.0' in metrics
            assert 'tunnelgw_redis_degraded{source="broker"} 1.0' in metrics
            redis_server.start()
            store = redis.Redis(host="127.0.0.1", port=redis_server.port)
            store.set("vdi:desk1", f"127.0.0.5:{first.port}")
            gw.wait_log(r"Redis broker at 127.0.0.1:[0-9]+ reachable again \(1 call\(s\) failed fast")
            assert echoes(base + "?token=desk1", b"back")
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize("line, message", [
    ("TokenSource r redis http://127.0.0.1:6379 allow=127.0.0.1:5900", "a redis TokenSource takes redis://HOST:PORT/DB"),
    ("TokenSource r file /tmp/t namespace=x allow=127.0.0.1:5900", "namespace= applies to redis token sources only"),
])
def test_redis_source_mistakes(line: str, message: str) -> None:
    from tunnelgw.core.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as caught:
        parse_config(f"Listen tcp:port=1\n{line}\n", "gw.conf")
    assert f"gw.conf:2: {message}" in str(caught.value)


def test_owners_in_redis_are_followed_at_once(tmp_path: Path, redis_server: RedisServer, backend: TcpServer) -> None:
    """A broker's owner key redirects (307) to the owning gateway; a change is followed by the next session."""
    import redis

    from support import free_port

    store = redis.Redis(host="127.0.0.1", port=redis_server.port)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"desk1: 127.0.0.1:{backend.port}\n")
    ports = {n: free_port(f"127.0.0.{n}") for n in (2, 3)}
    urls = {n: f"ws://127.0.0.{n}:{ports[n]}" for n in (2, 3)}
    gateways = {}
    try:
        for n in (2, 3):
            config = f"""
Listen tcp:port={ports[n]}:interface=127.0.0.{n}
GatewayURL {urls[n]}
OwnerSource redis://127.0.0.1:{redis_server.port}/0 namespace=vdi timeout=0.5
TokenSource files file {tokens} allow=127.0.0.1:{backend.port}
TokenRoute /vnc files
"""
            gateways[n] = GatewayProcess(config, tmp_path, name=f"gw{n}").start()

        def answer(n: int) -> tuple[int, str]:
            """Status and Location of a handshake to gateway n (raw: WebSocket clients follow redirects)."""
            import http.client

            conn = http.client.HTTPConnection(f"127.0.0.{n}", ports[n], timeout=5)
            conn.request("GET", "/vnc?token=desk1", headers={
                "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
            response = conn.getresponse()
            conn.close()
            return response.status, response.getheader("Location", "")

        assert answer(2) == (101, "") and answer(3) == (101, "")  # no owner named: served where asked
        with connect(f"{urls[2]}/vnc?token=desk1", open_timeout=5) as ws:
            ws.send(b"x")
            assert ws.recv(timeout=5) == b"x"
        store.set("vdi:owner:127.0.0.1", urls[3])
        assert answer(2) == (307, f"{urls[3]}/vnc?token=desk1") and answer(3) == (101, "")
        with connect(f"{urls[2]}/vnc?token=desk1", open_timeout=5) as ws:  # a client that follows the 307
            ws.send(b"y")
            assert ws.recv(timeout=5) == b"y"
        gateways[3].wait_log(r"session end .*bytes_up=1 ")
        store.set("vdi:owner:127.0.0.1", urls[2] + "/")
        assert answer(3) == (307, f"{urls[2]}/vnc?token=desk1") and answer(2) == (101, "")
        redis_server.stop()
        assert answer(2)[0] == 503
        gateways[2].wait_log(r"owner lookup failed")
    finally:
        for gw in gateways.values():
            gw.stop()


def test_owner_relay_carries_the_session_to_its_owner(tmp_path: Path, redis_server: RedisServer,
                                                      backend: TcpServer) -> None:
    """mode=relay: a non-owner carries the session to the owner over a signed hop; a forged hop is refused."""
    import http.client
    import re

    import redis

    from support import free_port

    store = redis.Redis(host="127.0.0.1", port=redis_server.port)
    (tmp_path / "hop").write_bytes(b"h" * 32)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"desk1: 127.0.0.1:{backend.port}\n")
    ports = {n: free_port(f"127.0.0.{n}") for n in (2, 3)}
    urls = {n: f"ws://127.0.0.{n}:{ports[n]}" for n in (2, 3)}
    gateways = {}
    try:
        for n in (2, 3):
            config = f"""
Listen tcp:port={ports[n]}:interface=127.0.0.{n}
GatewayURL {urls[n]}
OwnerSource redis://127.0.0.1:{redis_server.port}/0 namespace=vdi mode=relay hopsecret={tmp_path}/hop
TokenSource files file {tokens} allow=127.0.0.1:{backend.port}
TokenRoute /vnc files
"""
            gateways[n] = GatewayProcess(config, tmp_path, name=f"gw{n}").start()
        store.set("vdi:owner:127.0.0.1", urls[3])
        # A browser page of gw2's own origin; gw2 relays, gw3 (the owner) connects the desktop.
        with connect(f"{urls[2]}/vnc?token=desk1", open_timeout=5,
                     additional_headers={"Origin": f"http://127.0.0.2:{ports[2]}"}) as ws:
            for data in (b"through", b"the pool" * 1000):
                ws.send(data)
                assert ws.recv(timeout=5) == data
        end3 = gateways[3].wait_log(r"session end session=\w+ client=(\S+) path=/vnc .*backend=tcp:host=127\.0\.0\.1")
        assert end3.group(1).startswith("127.0.0.1:")  # the real client, from the hop, not gw2's address
        gateways[2].wait_log(rf"session end .*backend=ws://127\.0\.0\.3:{ports[3]}/vnc\?token=tok:")
        assert "desk1" not in gateways[2].log() + gateways[3].log()
        # A client cannot pretend to be a hop.
        conn = http.client.HTTPConnection("127.0.0.3", ports[3], timeout=5)
        conn.request("GET", "/vnc?token=desk1", headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "X-Tunnelgw-Hop": "1;203.0.113.9;00"})
        assert conn.getresponse().status == 403
        conn.close()
        assert re.search(r"status=403 reason='not a valid hop", gateways[3].log())
    finally:
        for gw in gateways.values():
            gw.stop()


def test_redis_with_a_password(tmp_path: Path, backend: TcpServer) -> None:
    """passwordfile= authenticates to a Redis that requires it; a wrong password is 503, an unreadable file FILE:LINE."""
    import redis

    server = RedisServer(tmp_path / "redis", password="s3cret-redis").start()
    try:
        redis.Redis(port=server.port, password="s3cret-redis").set("desk1", f"127.0.0.1:{backend.port}")
        (tmp_path / "good").write_text("s3cret-redis\n")
        (tmp_path / "bad").write_text("nope\n")
        for name, expected in (("good", 101), ("bad", 503)):
            config = f"""
Listen tcp:port=0:interface=127.0.0.1
TokenSource broker redis redis://127.0.0.1:{server.port}/0 passwordfile={tmp_path}/{name} allow=127.0.0.1:{backend.port}
TokenRoute /vnc broker
"""
            with GatewayProcess(config, tmp_path, name=f"gw-{name}") as gw:
                assert session_status(f"ws://127.0.0.1:{gw.port()}/vnc?token=desk1") == expected
        missing = GatewayProcess(config.replace(f"{tmp_path}/bad", f"{tmp_path}/missing"), tmp_path, name="gw-missing")
        with pytest.raises(RuntimeError, match=r"gw-missing.conf:3: cannot read the Redis password file"):
            missing.start()
    finally:
        server.stop()
