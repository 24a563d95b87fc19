"""
Relay hops between two real gateways over wss://: the owner sees the client's
address and TLS identity, a hop replayed is refused (its nonce is remembered
in the pool's Redis), and the hop secret is rotated with SIGHUPs without a
session refused.
"""

from __future__ import annotations

import signal
import ssl
import time
from pathlib import Path
from typing import Optional

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from support import (GatewayProcess, RedisServer, TcpServer, backend, free_port, make_client_cert, make_pki,
                     redis_server, wait_until)
from tunnelgw.core.hop import Hop, hop_value

pytestmark = pytest.mark.timeout(120)

OLD, NEW = b"o" * 32, b"n" * 32


def status(url: str, context: ssl.SSLContext, headers: Optional[dict[str, str]] = None) -> int:
    """101 when a wss:// session at url opens and echoes, else its refusal's status."""
    try:
        with connect(url, ssl=context, additional_headers=headers, open_timeout=10) as ws:
            ws.send(b"x")
            assert ws.recv(timeout=5) == b"x"
            return 101
    except InvalidStatus as e:
        return int(e.response.status_code)


def hup(gw: GatewayProcess) -> None:
    """SIGHUP gw and wait until the new configuration (and its hop secrets) is in force."""
    before = gw.log().count("reload: configuration")
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: gw.log().count("reload: configuration") > before, 10), gw.log()


def test_hops_over_wss_carry_identity_refuse_replays_and_rotate(tmp_path: Path, redis_server: RedisServer,
                                                                backend: TcpServer) -> None:
    """A client with alice's certificate at gw2 is relayed over wss:// to gw3, which logs alice; replays are 403."""
    import redis

    pki = make_pki(tmp_path / "pki", ["localhost"], ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    alice = make_client_cert(pki, tmp_path / "people", "alice")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"desk1: 127.0.0.1:{backend.port}\n")
    secrets = {2: tmp_path / "hop2", 3: tmp_path / "hop3"}
    secrets[2].write_bytes(OLD + b"\n")
    secrets[3].write_bytes(OLD + b"\n" + NEW + b"\n")  # the owner already accepts the next secret
    ports = {n: free_port(f"127.0.0.{n}") for n in (2, 3)}
    urls = {n: f"wss://127.0.0.{n}:{ports[n]}" for n in (2, 3)}
    gateways: dict[int, GatewayProcess] = {}
    client_tls = ssl.create_default_context(cafile=str(pki.ca_cert))
    client_tls.load_cert_chain(str(alice))
    try:
        for n in (2, 3):
            config = f"""
Listen ssl:port={ports[n]}:interface=127.0.0.{n}:privateKey={pki.server_key}:certKey={pki.server_cert}:extraCertChain={pki.chain} clientca={pki.ca_cert} clientcert=optional
AdminListen tcp:port=0:interface=127.0.0.{n}
GatewayURL {urls[n]}
Pool redis://127.0.0.1:{redis_server.port}/0 name=gw{n} ttl=4 refresh=1
OwnerSource redis://127.0.0.1:{redis_server.port}/0 namespace=vdi mode=relay hopsecret={secrets[n]} hopcafile={pki.ca_cert}
TokenSource files file {tokens} allow=127.0.0.1:{backend.port}
TokenRoute /vnc files
"""
            gateways[n] = GatewayProcess(config, tmp_path, name=f"gw{n}").start()
        gw2, gw3 = gateways[2], gateways[3]
        redis.Redis(port=redis_server.port).set("vdi:owner:127.0.0.1", urls[3])
        origin = {"Origin": f"https://127.0.0.2:{ports[2]}"}
        assert status(f"{urls[2]}/vnc?token=desk1", client_tls, origin) == 101
        gw3.wait_log(r"session start .*client=127\.0\.0\.1:\d+ .*tls_client=alice")
        gw2.wait_log(rf"session end .*backend=wss://127\.0\.0\.3:{ports[3]}/vnc\?token=tok:")

        # A hop captured once is refused the second time (its nonce is in Redis).
        uri = "/vnc?token=desk1"
        hop = Hop(int(time.time()), "ab" * 16, urls[2], "203.0.113.9", "mallory")
        header = {"X-Tunnelgw-Hop": hop_value(OLD, hop, urls[3], uri)}
        plain_tls = ssl.create_default_context(cafile=str(pki.ca_cert))
        assert status(urls[3] + uri, plain_tls, header) == 101
        gw3.wait_log(r"session start .*client=203\.0\.113\.9 .*tls_client=mallory")
        assert status(urls[3] + uri, plain_tls, header) == 403
        gw3.wait_log(r"hop refused relayer=wss://127\.0\.0\.2:\d+ client=203\.0\.113\.9 detail='replayed hop")
        assert redis.Redis(port=redis_server.port).keys("tunnelgw:hop:*")

        # Rotation: gw2 signs with the new secret (gw3 holds both), then gw3 drops the old one.
        secrets[2].write_bytes(NEW + b"\n")
        hup(gw2)
        assert status(f"{urls[2]}/vnc?token=desk1", client_tls, origin) == 101
        secrets[3].write_bytes(NEW + b"\n")
        hup(gw3)
        assert status(f"{urls[2]}/vnc?token=desk1", client_tls, origin) == 101
        stale = Hop(int(time.time()), "cd" * 16, urls[2], "203.0.113.9")
        assert status(urls[3] + uri, plain_tls, {"X-Tunnelgw-Hop": hop_value(OLD, stale, urls[3], uri)}) == 403
    finally:
        for gw in gateways.values():
            gw.stop()
