"""
A pool of three gateways (127.0.0.2-4) sharing their live sessions through a
real redis-server, behind the two balancers the deployment docs name beside
HAProxy: nginx (``upstream`` with ``hash $remote_addr consistent``) and Apache
httpd 2.4 (``mod_proxy_balancer`` with ``ws://`` members and a ROUTEID route
cookie).  Each front runs the recipe of examples/pool/ as written, with only
its addresses replaced, so the documented file and the tested one cannot
drift.  Every client's sessions land on one gateway, every gateway's pool list
shows all of them, and echo works through the front.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from fronts import FrontProcess, apache_main, apache_process, free_port, nginx_main, nginx_process
from support import REPO, GatewayProcess, RedisServer, TcpServer, backend, redis_server, wait_until

__all__ = ["backend", "redis_server"]  # fixtures used by name

pytestmark = pytest.mark.timeout(120)

EXAMPLES = REPO / "examples" / "pool"
GATEWAYS = ("gw2", "gw3", "gw4")  # on 127.0.0.2, .3, .4
FRONT = "127.0.0.5"
SESSIONS_PER_CLIENT = 3
APACHE_MODULES = ("mpm_event", "authz_core", "headers", "proxy", "proxy_http", "proxy_wstunnel", "proxy_balancer",
                  "slotmem_shm", "lbmethod_byrequests")


def recipe(name: str, replacements: dict[str, str]) -> str:
    """examples/pool/NAME with its addresses replaced; each placeholder must occur in the file."""
    text = (EXAMPLES / name).read_text()
    for old, new in replacements.items():
        assert old in text, f"{old!r} not in examples/pool/{name}"
        text = text.replace(old, new)
    return text


def admin(gw: GatewayProcess, path: str) -> tuple[int, Any]:
    """Status and decoded JSON body of a GET on gw's admin listener (on gw's own 127.0.0.N)."""
    host = "127.0.0." + gw.config_path.stem[2:]
    try:
        with urllib.request.urlopen(f"http://{host}:{gw.port(1)}{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def pool_list(gw: GatewayProcess) -> Optional[dict[str, dict[str, Any]]]:
    """session id -> its pool record (with "gateway" and "client"), as gw lists the pool; None if unavailable."""
    status, body = admin(gw, "/pool/sessions")
    return {s["session"]: s for s in body["sessions"]} if status == 200 else None


def own_sessions(gw: GatewayProcess) -> set[str]:
    """The ids of the sessions gw itself holds (its admin /sessions)."""
    status, body = admin(gw, "/sessions")
    assert status == 200, body
    return {s["session"] for s in body["sessions"]}


def open_ws(url: str, source: str, cookie: Optional[str] = None) -> ClientConnection:
    """A WebSocket client for url from a socket bound to source (a loopback address), sending cookie if given."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect((parts.hostname, parts.port))
    headers = {"Cookie": cookie} if cookie else None
    return connect(url, sock=sock, open_timeout=10, close_timeout=3, additional_headers=headers)


@pytest.fixture
def pool(tmp_path: Path, redis_server: RedisServer, backend: TcpServer) -> Iterator[dict[str, GatewayProcess]]:
    """Three gateways of one Redis pool, each on its own 127.0.0.N, trusting the front's X-Forwarded-For."""
    gateways: dict[str, GatewayProcess] = {}
    try:
        for name in GATEWAYS:
            host = "127.0.0." + name[2:]
            config = f"""
Listen tcp:port=0:interface={host}
AdminListen tcp:port=0:interface={host}
TrustedProxy 127.0.0.1
ProxyPass /echo {backend.endpoint}
Pool redis://127.0.0.1:{redis_server.port}/0 name={name} ttl=3 refresh=0.5
"""
            gateways[name] = GatewayProcess(config, tmp_path, name=name).start()
        yield gateways
    finally:
        for gw in gateways.values():
            gw.stop()


def gateway_addresses(pool: dict[str, GatewayProcess]) -> dict[str, str]:
    """The examples' gateway addresses (127.0.0.N:8080) -> the running gateways' ones (ports read after start)."""
    return {f"127.0.0.{name[2:]}:8080": f"127.0.0.{name[2:]}:{gw.port()}" for name, gw in pool.items()}


def front_folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    folder.chmod(0o755)  # httpd's children run as www-data
    return folder


def sessions_through(front: FrontProcess, pool: dict[str, GatewayProcess], clients: dict[str, Optional[str]],
                     each: int = SESSIONS_PER_CLIENT) -> dict[str, str]:
    """
    Through the running front, open ``each`` echo sessions from each
    client source address (with its cookie, if any) and keep them open; check
    that every gateway's pool list shows all of them, that each client's
    sessions are on one gateway (which each gateway's own list confirms), and
    that echo works while listed.  Return client address -> its gateway.
    """
    url = f"ws://{front.host}:{front.port}/echo"
    with contextlib.ExitStack() as stack:
        opened: dict[str, list[ClientConnection]] = {}
        for source, cookie in clients.items():
            opened[source] = [stack.enter_context(open_ws(url, source, cookie)) for _ in range(each)]
            for i, ws in enumerate(opened[source]):
                ws.send(f"{source} #{i}".encode())
                assert ws.recv(timeout=5) == f"{source} #{i}".encode()
        total = len(clients) * each
        for gw in pool.values():
            assert wait_until(lambda: len(pool_list(gw) or {}) == total, 10), (pool_list(gw), front.log())
        listed = pool_list(pool["gw2"]) or {}
        def placed(records: Optional[dict[str, dict[str, Any]]]) -> dict[str, tuple[str, str]]:
            return {sid: (r["gateway"], r["client"]) for sid, r in (records or {}).items()}

        for gw in pool.values():  # one view of the pool on every gateway (counters and times refresh meanwhile)
            assert placed(pool_list(gw)) == placed(listed)
        on: dict[str, set[str]] = {}
        for record in listed.values():
            on.setdefault(record["client"].rsplit(":", 1)[0], set()).add(record["gateway"])
        assert set(on) == set(clients), on  # the clients' own addresses, from the front's X-Forwarded-For
        assert all(len(names) == 1 for names in on.values()), on  # each client stuck to one gateway
        for name, gw in pool.items():
            assert own_sessions(gw) == {sid for sid, record in listed.items() if record["gateway"] == name}
        for source, sockets in opened.items():
            for ws in sockets:
                ws.send(b"still " + source.encode())
                assert ws.recv(timeout=5) == b"still " + source.encode()
    # Closed through the front: ended sessions leave the pool list at the next refresh.
    assert wait_until(lambda: pool_list(pool["gw3"]) == {}, 10)
    return {source: names.pop() for source, names in on.items()}


def test_pool_behind_nginx_hash_remote_addr(tmp_path: Path, pool: dict[str, GatewayProcess]) -> None:
    """examples/pool/nginx.conf: hash $remote_addr consistent keeps each client's sessions on one gateway."""
    folder = front_folder(tmp_path, "nginx")
    port = free_port(FRONT)
    http = recipe("nginx.conf", {"listen 127.0.0.1:8000;": f"listen {FRONT}:{port};", **gateway_addresses(pool)})
    front = nginx_process(folder, nginx_main(folder, http), FRONT, port)  # one worker process
    clients: dict[str, Optional[str]] = {f"127.0.0.{i}": None for i in range(20, 30)}
    with front:  # nginx_main allows 64 connections: 10 clients x 2 sessions x (client + upstream) fit
        served = sessions_through(front, pool, clients, each=2)
    # Ten client addresses over three gateways by consistent hashing: not all on one.
    assert len(set(served.values())) >= 2, served


def route_cookie(front: FrontProcess, source: str) -> str:
    """A plain HTTP GET through Apache from source, as a browser loading its page: the ROUTEID cookie set."""
    conn = http.client.HTTPConnection(front.host, front.port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", "/")
        answer = conn.getresponse()
        answer.read()
        cookies = [value for key, value in answer.getheaders() if key.lower() == "set-cookie"]
    finally:
        conn.close()
    assert len(cookies) == 1 and cookies[0].startswith("ROUTEID=."), (answer.status, cookies, front.log())
    return cookies[0].split(";", 1)[0]


def test_pool_behind_apache_balancer_route_cookie(tmp_path: Path, pool: dict[str, GatewayProcess]) -> None:
    """
    examples/pool/apache.conf: mod_proxy_balancer with ws:// members; the
    ROUTEID cookie set on a client's first request, sent back on its WebSocket
    handshakes as browsers do, keeps its sessions on the gateway it names.
    """
    folder = front_folder(tmp_path, "apache")
    port = free_port(FRONT)
    site = recipe("apache.conf", {"127.0.0.1:8000": f"{FRONT}:{port}", **gateway_addresses(pool)})
    front = apache_process(folder, apache_main(folder, site, APACHE_MODULES), FRONT, port)
    with front:
        clients: dict[str, Optional[str]] = {source: route_cookie(front, source)
                                             for source in ("127.0.0.20", "127.0.0.21", "127.0.0.22")}
        # byrequests gives three new clients the three gateways in turn.
        assert sorted(str(c).split(".", 1)[1] for c in clients.values()) == list(GATEWAYS), clients
        served = sessions_through(front, pool, clients)
        # The control: without the cookie, byrequests spreads one client's sessions over the pool.
        with contextlib.ExitStack() as stack:
            for i in range(3):
                ws = stack.enter_context(open_ws(f"ws://{FRONT}:{port}/echo", "127.0.0.23"))
                ws.send(b"no cookie %d" % i)
                assert ws.recv(timeout=5) == b"no cookie %d" % i
            assert wait_until(lambda: len(pool_list(pool["gw4"]) or {}) == 3, 10)
            assert sorted(r["gateway"] for r in (pool_list(pool["gw4"]) or {}).values()) == list(GATEWAYS)
    for source, cookie in clients.items():
        assert served[source] == str(cookie).split(".", 1)[1], (served, clients)  # the gateway its cookie names


def test_pool_fronts_docs_name_the_tested_recipes() -> None:
    """docs/topologies.rst links both recipes and names the stickiness each one uses, as the files do."""
    text = (REPO / "docs" / "topologies.rst").read_text()
    section = text[text.index("Pool behind nginx or Apache"):]
    for name, lines in (("nginx.conf", ("hash $remote_addr consistent",)),
                        ("apache.conf", ("stickysession=ROUTEID", "BalancerMember ws://", "env=BALANCER_ROUTE_CHANGED"))):
        assert f"<../examples/pool/{name}>`_" in section, name
        example = (EXAMPLES / name).read_text()
        for line in lines:
            assert line in example and line in section, (name, line)
    assert "browsers send" in section and "WebSocket handshake" in section


def test_pool_without_stickiness_relays_to_the_owner(tmp_path: Path, redis_server: RedisServer,
                                                     backend: TcpServer) -> None:
    """nginx round robin (examples/pool/nginx.conf without its hash line): sessions land on any gateway and
    reach the desktop through its owner (OwnerSource mode=relay), which sees the real client."""
    import redis

    (tmp_path / "hop").write_bytes(b"p" * 32)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"desk1: 127.0.0.1:{backend.port}\n")
    ports = {name: free_port("127.0.0." + name[2:]) for name in GATEWAYS}
    gateways: dict[str, GatewayProcess] = {}
    try:
        for name in GATEWAYS:
            host = "127.0.0." + name[2:]
            config = f"""
Listen tcp:port={ports[name]}:interface={host}
AdminListen tcp:port=0:interface={host}
TrustedProxy 127.0.0.1
GatewayURL ws://{host}:{ports[name]}
Pool redis://127.0.0.1:{redis_server.port}/0 name={name} ttl=3 refresh=0.5
OwnerSource redis://127.0.0.1:{redis_server.port}/0 mode=relay hopsecret={tmp_path}/hop
TokenSource files file {tokens} allow=127.0.0.1:{backend.port}
TokenRoute /vnc files
"""
            gateways[name] = GatewayProcess(config, tmp_path, name=name).start()
        redis.Redis(port=redis_server.port).set("tunnelgw:owner:127.0.0.1", f"ws://127.0.0.4:{ports['gw4']}")
        folder = front_folder(tmp_path, "nginx")
        port = free_port(FRONT)
        http = recipe("nginx.conf", {"listen 127.0.0.1:8000;": f"listen {FRONT}:{port};",
                                     "    hash $remote_addr consistent;\n": "",
                                     **{f"127.0.0.{n[2:]}:8080": f"127.0.0.{n[2:]}:{ports[n]}" for n in GATEWAYS}})
        front = nginx_process(folder, nginx_main(folder, http), FRONT, port)
        with front, contextlib.ExitStack() as stack:
            opened = [stack.enter_context(open_ws(f"ws://{FRONT}:{port}/vnc?token=desk1", "127.0.0.20"))
                      for _ in range(6)]
            for i, ws in enumerate(opened):
                ws.send(b"#%d" % i)
                assert ws.recv(timeout=5) == b"#%d" % i
            owner = admin(gateways["gw4"], "/sessions")[1]["sessions"]
            direct = [s for s in owner if s["backend"].startswith("tcp:")]
            assert len(direct) == 6, owner  # every desktop connection is made by the owner
            assert {s["client"] for s in direct} == {"127.0.0.20"}  # the real client (from nginx, through the hops)
            relayed = [s for name in ("gw2", "gw3") for s in admin(gateways[name], "/sessions")[1]["sessions"]]
            assert relayed and all(s["backend"].startswith(f"ws://127.0.0.4:{ports['gw4']}/vnc") for s in relayed)
    finally:
        for gw in gateways.values():
            gw.stop()


def test_pool_behind_haproxy_shares_one_list_and_closes_across(tmp_path: Path, pool: dict[str, GatewayProcess]) -> None:
    """Three Redis-pooled gateways behind HAProxy (roundrobin): one session list on all, and a close issued on
    one gateway ends a session another holds."""
    from fronts import haproxy_config

    port = free_port(FRONT)
    servers = [(name, f"127.0.0.{name[2:]}:{gw.port()}", "") for name, gw in pool.items()]
    with haproxy_config(front_folder(tmp_path, "haproxy"), f"{FRONT}:{port}", servers, "roundrobin"), \
            contextlib.ExitStack() as stack:
        opened = [stack.enter_context(open_ws(f"ws://{FRONT}:{port}/echo", "127.0.0.20")) for _ in range(6)]
        for i, ws in enumerate(opened):
            ws.send(b"#%d" % i)
            assert ws.recv(timeout=5) == b"#%d" % i
        for gw in pool.values():
            assert wait_until(lambda: len(pool_list(gw) or {}) == 6, 10)
        listed = pool_list(pool["gw2"]) or {}
        assert len({r["gateway"] for r in listed.values()}) == 3  # round robin: every gateway holds some
        # Close, from gw2's admin, a session gw4 holds: its client sees 1008.
        victim = next(sid for sid, r in listed.items() if r["gateway"] == "gw4")
        request = urllib.request.Request(f"http://127.0.0.2:{pool['gw2'].port(1)}/pool/sessions/{victim}/close",
                                         method="POST")
        assert urllib.request.urlopen(request, timeout=5).status == 202
        assert wait_until(lambda: victim not in own_sessions(pool["gw4"]), 5)
        closed = []
        for ws in opened:
            try:
                ws.send(b"ping")
                ws.recv(timeout=2)
            except ConnectionClosed:
                closed.append(ws.close_code)
        assert closed == [1008]
