"""
The four deployment topologies end to end: real ``twistd tunnelgw`` processes
on distinct loopback addresses standing for hosts (127.0.0.2, 127.0.0.3 are
desktop hosts), desktops as loopback TCP servers on those hosts, the
``websockets`` client bound to chosen source addresses, and real nginx,
Apache httpd and HAProxy in front.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import time
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlsplit

import jwt
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from fronts import apache_config, free_port, haproxy_config, nginx_config
from support import REPO, GatewayProcess, TcpServer, subprocess_env, twistd_command, wait_until
from tunnelgw.core.redact import fingerprint

SECRET = b"topology-test-secret-0123456789abcdef"
HOSTS = ("127.0.0.2", "127.0.0.3")


def desktop(conn: socket.socket) -> None:
    """Desktop handler: greet with the host's address, then echo until EOF."""
    conn.sendall(f"desk {conn.getsockname()[0]}".encode())
    while True:
        data = conn.recv(65536)
        if not data:
            break
        conn.sendall(data)
    conn.close()


@pytest.fixture(scope="module")
def desktops() -> Iterator[dict[str, TcpServer]]:
    """A desktop on each host address."""
    found = {host: TcpServer(desktop, host=host) for host in HOSTS}
    yield found
    for server in found.values():
        server.stop()


def open_ws(url: str, source: Optional[str] = None, **kwargs: object) -> ClientConnection:
    """A WebSocket client for url whose socket is bound to source (a loopback address) first."""
    parts = urlsplit(url)
    connect_to = kwargs.pop("connect_to", (parts.hostname, parts.port))
    sock = socket.socket()
    sock.settimeout(10)
    if source:
        sock.bind((source, 0))
    sock.connect(connect_to)  # type: ignore[arg-type]
    return connect(url, sock=sock, open_timeout=10, close_timeout=3, **kwargs)  # type: ignore[call-overload]


def greeting(url: str, source: Optional[str] = None, **kwargs: object) -> str:
    """Open a session, return the desktop's greeting, close."""
    with open_ws(url, source, **kwargs) as ws:
        return ws.recv(timeout=10).decode()  # type: ignore[union-attr]


def refusal(url: str, source: Optional[str] = None, **kwargs: object) -> tuple[int, str, dict[str, str]]:
    """The status, body and headers of a refused (or redirected) handshake."""
    with pytest.raises((InvalidStatus, ValueError)) as raised:
        open_ws(url, source, **kwargs).close()
    # The client follows redirects itself, but not with a socket we connected: it
    # then raises ValueError from the 3xx response.
    error = raised.value if isinstance(raised.value, InvalidStatus) else raised.value.__cause__
    assert isinstance(error, InvalidStatus), raised.value
    response = error.response
    return response.status_code, response.body.decode(errors="replace"), response.headers  # type: ignore[return-value]


def sign(host: str, port: int, exp_in: float = 300, **claims: object) -> str:
    """A signed token for host:port expiring exp_in seconds from now."""
    return jwt.encode({"host": host, "port": port, "exp": int(time.time() + exp_in), **claims}, SECRET, algorithm="HS256")


def reload(gw: GatewayProcess, config: str) -> None:
    """Rewrite a gateway's configuration and SIGHUP it; wait until the reload is reported."""
    before = gw.log().count("reload:")
    gw.config_path.write_text(config.replace("{tmp}", str(gw.tmp)))
    gw.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    assert wait_until(lambda: gw.log().count("reload") > before, 10), gw.log()[-2000:]


def started(gw: GatewayProcess) -> GatewayProcess:
    """Wait until the gateway handles SIGHUP (installed once the reactor runs)."""
    gw.wait_log(r"reload: SIGHUP re-reads")
    return gw


# Topology 3: one hijacking gateway, token routing to any host.


def test_token_file_routing_origins_and_rejections(tmp_path: Path, desktops: dict[str, TcpServer]) -> None:
    """Tokens from a file (query, path, Host) reach each host; edits are picked up; every refusal says why."""
    p2, p3 = desktops["127.0.0.2"].port, desktops["127.0.0.3"].port
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# websockify format\ndesk2: 127.0.0.2:{p2}\nfar: 10.9.9.9:{p2}\nssh: 127.0.0.2:22\n")
    config = (f"Listen tcp:port=0:interface=127.0.0.4\n"
              f"TokenSource files file {tokens} allow=127.0.0.0/8:1024-65535 reload=0\n"
              f"TokenRoute /vnc files\n"
              f"TokenRoute /desk files from=path\n"
              f"TokenRoute /byhost files from=host\n"
              f"OriginAllow /vnc http://vdi.example\n")
    with GatewayProcess(config, tmp_path) as gw:
        base = f"ws://127.0.0.4:{gw.port()}"
        ok = {"origin": "http://vdi.example"}
        assert greeting(f"{base}/vnc?token=desk2", **ok) == "desk 127.0.0.2"  # type: ignore[arg-type]
        assert greeting(f"{base}/desk/desk2") == "desk 127.0.0.2"
        assert greeting("ws://desk2.vdi.example/byhost", connect_to=("127.0.0.4", gw.port())) == "desk 127.0.0.2"
        # The file changes: a new token works without a restart.
        tokens.write_text(tokens.read_text() + f"desk3: 127.0.0.3:{p3}\n")
        assert greeting(f"{base}/vnc?token=desk3", **ok) == "desk 127.0.0.3"  # type: ignore[arg-type]

        assert refusal(f"{base}/vnc", **ok)[:2] == (403, "403 missing token\n")  # type: ignore[arg-type]
        # Unknown, forbidden and malformed tokens get one answer, so probing tells nothing.
        same = (403, "403 invalid token\n")
        assert refusal(f"{base}/vnc?token=nope", **ok)[:2] == same  # type: ignore[arg-type]
        assert refusal(f"{base}/vnc?token=far", **ok)[:2] == same  # type: ignore[arg-type]
        assert refusal(f"{base}/desk/ssh")[:2] == same
        assert refusal(f"{base}/desk/bad%21token")[:2] == same
        assert refusal(f"{base}/vnc?token=desk2", origin="http://evil.example")[0] == 403
        assert refusal(f"{base}/vnc?token=desk2")[0] == 403  # no Origin at all
        with pytest.raises(urllib.error.HTTPError) as plain:
            urllib.request.urlopen(f"http://127.0.0.4:{gw.port()}/vnc?token=desk2", timeout=10)
        assert plain.value.code == 426
        log = gw.log()
        # With a from=host route, a page origin's first label may be a desktop's token: shown fingerprinted.
        for reason in ("missing token", "unknown token", "token target 10.9.9.9:", "token target 127.0.0.2:22 ",
                       "malformed token", f"origin 'http://{fingerprint('evil')}.example' is not allowed",
                       "origin '(none)'"):
            assert f"reason='{reason}" in log or reason in log, reason
        assert len(re.findall(r"request refused .* status=40[34]", log)) == 7
        # The operator's why names a token by its fingerprint only.
        assert re.search(rf"token refused .*token={fingerprint('nope')} .*detail='unknown token'", log)
        assert "status=426" in log


# Topologies 1 and 2: a gateway on each desktop host; redirect to the owner.


def test_redirect_mode_direct_lookup_and_behind_balancer(tmp_path: Path, desktops: dict[str, TcpServer]) -> None:
    """A gateway not owning the desktop answers 307 to the owner; the JSON lookup and an HAProxy front agree."""
    p2, p3 = desktops["127.0.0.2"].port, desktops["127.0.0.3"].port
    tokens = tmp_path / "tokens"
    tokens.write_text(f"desk2: 127.0.0.2:{p2}\ndesk3: 127.0.0.3:{p3}\n")
    common = (f"TokenSource files file {tokens} allow=127.0.0.2:{p2} allow=127.0.0.3:{p3}\n"
              "TokenRoute /vnc files\nTokenLookup /lookup /vnc\n")
    gws = {host: GatewayProcess(f"Listen tcp:port=0:interface={host}\n" + common, tmp_path, f"gw{host[-1]}")
           for host in HOSTS}
    try:
        for gw in gws.values():
            started(gw.start())
        urls = {host: f"ws://{host}:{gw.port()}" for host, gw in gws.items()}
        owners = "".join(f"GatewayOwner {urls[h]} {h}\n" for h in HOSTS)
        for host, gw in gws.items():
            reload(gw, f"Listen tcp:port=0:interface={host}\n{common}GatewayURL {urls[host]}\n{owners}")
            gw.wait_log("configuration .* in force")

        status, body, headers = refusal(f"{urls['127.0.0.2']}/vnc?token=desk3")
        assert status == 307
        assert headers["Location"] == f"{urls['127.0.0.3']}/vnc?token=desk3"
        assert greeting(headers["Location"]) == "desk 127.0.0.3"
        with connect(f"{urls['127.0.0.2']}/vnc?token=desk3", open_timeout=10) as following:
            assert following.recv(timeout=10) == b"desk 127.0.0.3"  # a client that follows redirects
        assert greeting(f"{urls['127.0.0.2']}/vnc?token=desk2") == "desk 127.0.0.2"
        assert "redirected client=127.0.0.1" in gws["127.0.0.2"].log()

        http = urls["127.0.0.3"].replace("ws://", "http://")
        with urllib.request.urlopen(f"{http}/lookup?token=desk2", timeout=10) as answer:
            assert json.load(answer) == {"url": f"{urls['127.0.0.2']}/vnc?token=desk2", "gateway": urls["127.0.0.2"]}
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"{http}/lookup?token=nope", timeout=10)
        assert (raised.value.code, raised.value.read()) == (403, b"403 invalid token\n")

        # Topology 2: HAProxy spreads first connections round-robin; redirects do the rest.
        front = free_port("127.0.0.5")
        servers = [(f"gw{h[-1]}", f"{h}:{gws[h].port()}", "") for h in HOSTS]
        with haproxy_config(tmp_path, f"127.0.0.5:{front}", servers, "roundrobin"):
            ways = []
            for _ in range(6):  # round-robin: both gateways answer within a few connections
                url = f"ws://127.0.0.5:{front}/vnc?token=desk3"
                try:
                    reached = greeting(url)
                    ways.append("direct")
                except ValueError as e:
                    assert isinstance(e.__cause__, InvalidStatus) and e.__cause__.response.status_code == 307
                    ways.append("redirected")
                    reached = greeting(e.__cause__.response.headers["Location"])
                assert reached == "desk 127.0.0.3"
                if set(ways) == {"direct", "redirected"}:
                    break
            assert set(ways) == {"direct", "redirected"}, ways
    finally:
        for gw in gws.values():
            gw.stop()


# Topology 3 with pools: balancer methods, failover, drain by reload.


POOLS = """Listen tcp:port=0:interface=127.0.0.4
<Proxy balancer://rr>
  BalancerMember tcp:host=127.0.0.6:port={refused}
  BalancerMember tcp:host=127.0.0.2:port={p2}{drain2}
  BalancerMember tcp:host=127.0.0.3:port={p3}
  ProxySet lbmethod=byrequests retry=600
</Proxy>
<Proxy balancer://busy>
  BalancerMember tcp:host=127.0.0.2:port={p2}
  BalancerMember tcp:host=127.0.0.3:port={p3}
  ProxySet lbmethod=bybusyness
</Proxy>
<Proxy balancer://src>
  BalancerMember tcp:host=127.0.0.2:port={p2}
  BalancerMember tcp:host=127.0.0.3:port={p3}
  ProxySet lbmethod=bysource
</Proxy>
<Proxy balancer://dead>
  BalancerMember tcp:host=127.0.0.6:port={refused}
</Proxy>
ProxyPass /rr balancer://rr
ProxyPass /dead balancer://dead
ProxyPass /busy balancer://busy
ProxyPass /src balancer://src
"""


@pytest.fixture()
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.6 that is bound but not listening: connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.6", 0))
    yield sock.getsockname()[1]
    sock.close()


def test_balancer_pools_failover_stickiness_drain_and_reload(tmp_path: Path, desktops: dict[str, TcpServer],
                                                            refused_port: int) -> None:
    """Round-robin fails over past a refusing member; least-busy and source hashing choose as documented;
    a reload drains a member while its live session keeps running, and a broken reload changes nothing."""
    values = dict(refused=refused_port, p2=desktops["127.0.0.2"].port, p3=desktops["127.0.0.3"].port, drain2="")
    with GatewayProcess(POOLS.format(**values), tmp_path) as gw:
        started(gw)
        base = f"ws://127.0.0.4:{gw.port()}"
        seen = [greeting(f"{base}/rr") for _ in range(4)]
        assert set(seen) == {"desk 127.0.0.2", "desk 127.0.0.3"}
        downs = re.findall(r"balancer member down pool=rr member=(\S+)", gw.log())
        assert downs == [f"tcp:host=127.0.0.6:port={refused_port}"]  # marked down once, skipped after
        status, body, _ = refusal(f"{base}/dead")
        assert status == 502 and "no member of balancer://dead is available (tried tcp:host=127.0.0.6" in body
        status, body, _ = refusal(f"{base}/dead")
        assert status == 502 and body.endswith("(no member of balancer://dead is available)\n")  # down: not even tried

        # Least busy: with one session open, the next goes to the other member.
        with open_ws(f"{base}/busy") as first:
            one = first.recv(timeout=10)
            with open_ws(f"{base}/busy") as second:
                two = second.recv(timeout=10)
                assert one != two
                first.close()
                assert wait_until(lambda: gw.log().count("session end") >= 5, 10)
                with open_ws(f"{base}/busy") as third:
                    assert third.recv(timeout=10) == one

        # Source hashing: each client address keeps its member; addresses spread over both.
        chosen = {}
        for i in range(20, 32):
            source = f"127.0.0.{i}"
            first_pick = greeting(f"{base}/src", source)
            assert greeting(f"{base}/src", source) == first_pick
            chosen[source] = first_pick
        assert set(chosen.values()) == set(f"desk {h}" for h in HOSTS)
        assert re.search(r"session start .*client=127\.0\.0\.20:\d+ .*backend=balancer://src/", gw.log())

        # Drain 127.0.0.2 by reload while a session on it is live.
        with contextlib.ExitStack() as stack:
            for _ in range(4):
                live = stack.enter_context(open_ws(f"{base}/rr"))
                if live.recv(timeout=10) == b"desk 127.0.0.2":
                    break
            else:
                pytest.fail("no session reached 127.0.0.2")
            reload(gw, POOLS.format(**(values | {"drain2": " status=drain"})))
            gw.wait_log("configuration .* in force")
            assert {greeting(f"{base}/rr") for _ in range(4)} == {"desk 127.0.0.3"}
            live.send(b"still here")
            assert live.recv(timeout=10) == b"still here"

            # A broken configuration is refused with FILE:LINE; the running one stays.
            reload(gw, POOLS.format(**values) + "<Proxy balancer://broken>\n")
            gw.wait_log(r"reload refused")
            assert re.search(rf"{re.escape(str(gw.config_path))}:\d+: <Proxy> block is not closed", gw.log())
            assert greeting(f"{base}/rr") == "desk 127.0.0.3"
            live.send(b"and here")
            assert live.recv(timeout=10) == b"and here"


# Topology 4: a pool of hijacking gateways behind HAProxy (balance source, PROXY protocol).


def test_gateway_pool_behind_haproxy_source_balance(tmp_path: Path, desktops: dict[str, TcpServer]) -> None:
    """HAProxy keeps each client address on one gateway; PROXY v1/v2 give the gateways the real address,
    so address-bound signed tokens work without shared state, and every token refusal is a 403."""
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    p2 = desktops["127.0.0.2"].port
    common = (f"TokenSource signed jwt {secret} allow=127.0.0.0/8:1024-65535 bind=address\n"
              "TokenRoute /vnc signed\n")
    gws = {host: GatewayProcess(f"Listen haproxy:tcp:port=0:interface={host}\n" + common, tmp_path,
                                f"gw{host[-1]}") for host in HOSTS}
    try:
        for gw in gws.values():
            gw.start()
        front = free_port("127.0.0.5")
        servers = [("gw2", f"127.0.0.2:{gws['127.0.0.2'].port()}", "send-proxy"),
                   ("gw3", f"127.0.0.3:{gws['127.0.0.3'].port()}", "send-proxy-v2")]
        with haproxy_config(tmp_path, f"127.0.0.5:{front}", servers, "source"):
            base = f"ws://127.0.0.5:{front}/vnc"
            for i in range(20, 30):
                source = f"127.0.0.{i}"
                token = sign("127.0.0.2", p2, addr=source)
                for _ in range(2):
                    assert greeting(f"{base}?token={token}", source) == "desk 127.0.0.2"
            served = {h: set(re.findall(r"session start .*client=(127\.0\.0\.\d+):", gws[h].log())) for h in HOSTS}
            assert served["127.0.0.2"] and served["127.0.0.3"], served  # both versions of PROXY carried addresses
            assert not served["127.0.0.2"] & served["127.0.0.3"]  # each address stuck to one gateway
            assert served["127.0.0.2"] | served["127.0.0.3"] == {f"127.0.0.{i}" for i in range(20, 30)}

            bound = sign("127.0.0.2", p2, addr="127.0.0.20")
            same = (403, "403 invalid token\n")
            assert refusal(f"{base}?token={bound}", "127.0.0.21")[:2] == same
            assert refusal(f"{base}?token={sign('127.0.0.2', p2, -5, addr='127.0.0.20')}", "127.0.0.20")[:2] == same
            forged = jwt.encode({"host": "127.0.0.2", "port": p2, "exp": int(time.time()) + 60, "addr": "127.0.0.20"},
                                b"another-secret-0123456789abcdefghijk", algorithm="HS256")
            assert refusal(f"{base}?token={forged}", "127.0.0.20")[:2] == same
            assert refusal(f"{base}?token={sign('127.0.0.2', 22, addr='127.0.0.20')}", "127.0.0.20")[0] == 403
    finally:
        for gw in gws.values():
            gw.stop()


# Front HTTP proxies: nginx and Apache httpd pass the client address in X-Forwarded-For.


@pytest.mark.parametrize("front", ["nginx", "apache"])
def test_reverse_proxy_in_front_passes_client_address(tmp_path: Path, desktops: dict[str, TcpServer],
                                                      front: str) -> None:
    """Behind a trusted nginx or Apache (mod_proxy_wstunnel) the client address comes from X-Forwarded-For,
    never from a client-sent Forwarded; the same header from an untrusted peer is ignored."""
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    p3 = desktops["127.0.0.3"].port
    config = ("Listen tcp:port=0:interface=127.0.0.7\nTrustedProxy 127.0.0.1\n"
              f"TokenSource signed jwt {secret} allow=127.0.0.3:{p3} bind=address\nTokenRoute /vnc signed\n")
    with GatewayProcess(config, tmp_path) as gw:
        port = free_port("127.0.0.8")
        upstream = f"127.0.0.7:{gw.port()}"
        proxy = (nginx_config(tmp_path, f"127.0.0.8:{port}", upstream) if front == "nginx"
                 else apache_config(tmp_path, f"127.0.0.8:{port}", upstream, "/vnc"))
        with proxy:
            token = sign("127.0.0.3", p3, addr="127.0.0.23")
            # A client-sent Forwarded naming another address is not believed (only X-Forwarded-For is read).
            with open_ws(f"ws://127.0.0.8:{port}/vnc?token={token}", "127.0.0.23",
                         additional_headers={"Forwarded": "for=127.0.0.24"}) as ws:
                assert ws.recv(timeout=10) == b"desk 127.0.0.3"
                ws.send(b"through the front")
                assert ws.recv(timeout=10) == b"through the front"
            assert re.search(r"session start .*client=127\.0\.0\.23 ", gw.log()), gw.log()[-2000:]
            status, body, _ = refusal(f"ws://127.0.0.8:{port}/vnc?token={token}", "127.0.0.24",
                                      additional_headers={"Forwarded": "for=127.0.0.23"})
            assert (status, body) == (403, "403 invalid token\n")
            assert re.search(r"token refused client=127\.0\.0\.24 .*bound to another client address", gw.log())
        # Directly, from an untrusted peer, the header is not believed.
        assert refusal(f"ws://{upstream}/vnc?token={token}", "127.0.0.24",
                       additional_headers={"X-Forwarded-For": "127.0.0.23"})[0] == 403


def test_check_validates_offline(tmp_path: Path) -> None:
    """``twistd tunnelgw --check`` exits 0 for a valid configuration and 1 with FILE:LINE problems."""
    good = tmp_path / "good.conf"
    good.write_text("Listen tcp:port=0:interface=127.0.0.1\n<Proxy balancer://p>\n"
                    "BalancerMember tcp:host=127.0.0.2:port=5900\n</Proxy>\nProxyPass /p balancer://p\n")
    bad = tmp_path / "bad.conf"
    bad.write_text("Listen tcp:port=0:interface=127.0.0.1\n<Proxy balancer://p>\n"
                   "BalancerMember nosuch:endpoint\n</Proxy>\nTokenSource s jwt /nonexistent allow=a:1\n")

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(twistd_command("-n", "tunnelgw", "--config", str(path), "--check"),
                              capture_output=True, text=True, env=subprocess_env(), timeout=30)

    ok = check(good)
    assert (ok.returncode, ok.stdout.strip()) == (0, f"{good}: configuration OK")
    failed = check(bad)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert lines[0].startswith(f"{bad}:3: bad BalancerMember endpoint 'nosuch:endpoint'")
    assert lines[1].startswith(f"{bad}:5: cannot read the token secret")


EXAMPLES = REPO / "examples" / "topologies"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "examples" / "topologies").glob("*.conf")))
def test_example_configs_are_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each example gateway configuration passes the offline check from the repository root."""
    from twisted.internet.testing import MemoryReactor

    from tunnelgw.service import check_config, load_config

    monkeypatch.chdir(REPO)
    check_config(load_config(f"examples/topologies/{name}"), MemoryReactor())


@pytest.mark.parametrize("name", ["2-haproxy-redirect.cfg", "4-haproxy-source.cfg"])
def test_example_haproxy_configs_are_valid(name: str) -> None:
    """HAProxy accepts the example balancer configurations (haproxy -c)."""
    from support import require_tool

    result = subprocess.run([require_tool("haproxy"), "-c", "-f", str(EXAMPLES / name)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_single_gateway_runs(tmp_path: Path) -> None:
    """examples/topologies/3-single-hijack.conf runs as written (ports moved to free ones): tokens and the pool relay."""
    gw_port = free_port("127.0.0.4")
    for _ in range(20):  # one port free on both desktop hosts
        desk = free_port("127.0.0.2")
        if _free("127.0.0.3", desk):
            break
    tokens = tmp_path / "tokens"
    tokens.write_text((EXAMPLES / "tokens").read_text().replace("5901", str(desk)))
    text = ((EXAMPLES / "3-single-hijack.conf").read_text().replace("5901", str(desk)).replace("8080", str(gw_port))
            .replace("examples/topologies/tokens", str(tokens)).replace("5900-5999", "1024-65535"))
    gw = GatewayProcess(text, tmp_path)
    gw.start()
    try:
        base = f"ws://127.0.0.4:{gw_port}"
        for url in (f"{base}/vnc?token=desk2", f"{base}/desk/desk3", f"{base}/pool"):
            with open_ws(url, origin=f"http://127.0.0.4:{gw_port}") as ws:  # type: ignore[arg-type]
                ws.send(b"hello")
                assert ws.recv(timeout=10) == b"hello"
    finally:
        gw.stop()


def _free(host: str, port: int) -> bool:
    """True when port can be bound on host now."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def test_tokens_never_reach_the_log(tmp_path: Path, desktops: dict[str, TcpServer]) -> None:
    """Query and path tokens, a lookup and a redirect: the gateway's log shows their fingerprints only."""
    p2 = desktops["127.0.0.2"].port
    tokens = tmp_path / "tokens"
    tokens.write_text(f"qsecret2: 127.0.0.2:{p2}\npsecret2: 127.0.0.2:{p2}\nrsecret3: 127.0.0.3:{p2}\n")
    config = ("Listen tcp:port=0:interface=127.0.0.4\n"
              f"TokenSource files file {tokens} allow=127.0.0.0/8:{p2}\n"
              "TokenRoute /vnc files\nTokenRoute /desk files from=path\nTokenLookup /lookup /vnc\n"
              "GatewayURL ws://gw.example\nGatewayOwner ws://other.example 127.0.0.3\n")
    with GatewayProcess(config, tmp_path) as gw:
        base = f"ws://127.0.0.4:{gw.port()}"
        assert greeting(f"{base}/vnc?token=qsecret2") == "desk 127.0.0.2"
        assert greeting(f"{base}/desk/psecret2") == "desk 127.0.0.2"
        assert refusal(f"{base}/vnc?token=rsecret3")[2]["Location"] == "ws://other.example/vnc?token=rsecret3"
        assert refusal(f"{base}/desk/unknownsecret")[:2] == (403, "403 invalid token\n")
        http = base.replace("ws://", "http://")
        with urllib.request.urlopen(f"{http}/lookup?token=qsecret2", timeout=10) as answer:
            assert json.load(answer)["url"] == "ws://gw.example/vnc?token=qsecret2"
        gw.wait_log(r"session end .*path=/desk/tok:")
        gw.wait_log(r"redirected .*location=ws://other\.example/vnc\?token=tok:")
        assert "secret" not in gw.log(), gw.log()[-3000:]
