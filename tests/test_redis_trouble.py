"""
A real redis-server that misbehaves under a running gateway: hung (SIGSTOP,
then SIGCONT), refused (stopped), and slow through a loopback proxy that
delays replies, stalls in the middle of one, or closes in the middle of one.
Every client waits at most the Redis ``timeout=`` (plus a bound for the
process round trip), later ones fail at once, the gateway's own sessions keep
relaying throughout, and everything works again once Redis is back.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from support import GatewayProcess, RedisServer, TcpServer, backend, redis_server, session_status, wait_until

pytestmark = pytest.mark.timeout(120)

#: The Redis timeout= of the gateways under test.
TIMEOUT = 0.5
#: What a test allows on top of it for the client's own round trip to a gateway process (the gateway's own
#: slack is measured in memory, tests/test_redisstore.py, and reported in docs/operations.rst).
ROUND_TRIP = 1.0


class RedisProxy:
    """
    A loopback TCP proxy in front of Redis whose replies can be passed on
    (``pass``), delayed by two seconds each (``delay``), stalled after their
    first three bytes (``stall``), or cut there (``close``); ``lag`` delays
    each by 0.3 s (within the gateways' timeout); ``hold`` keeps the reply to a
    script call (the limits) until the test sets :attr:`held`.
    """

    def __init__(self, port: int) -> None:
        self.mode = "pass"
        #: What clients sent, all connections together (to wait for a command to be under way).
        self.sent = b""
        #: In ``hold`` mode: cleared when a script call goes by; its reply waits until it is set again.
        self.held = threading.Event()
        self.held.set()
        self._upstream = port
        self._server = TcpServer(self._relay)
        self.port = self._server.port

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self._upstream), timeout=5)
        try:
            while True:
                ready, _, _ = select.select([client, upstream], [], [], 0.2)
                if self._server._stopping.is_set():
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        self.sent += data
                        if self.mode == "hold" and b"EVAL" in data:
                            self.held.clear()
                        upstream.sendall(data)
                        continue
                    mode = self.mode
                    if mode == "hold" and not self.held.is_set():
                        self.held.wait(10)
                    if mode in ("delay", "lag"):
                        time.sleep(2.0 if mode == "delay" else 0.3)
                        client.sendall(data)
                    elif mode in ("stall", "close"):
                        client.sendall(data[:3])
                        if mode == "close":
                            return
                        while self.mode == "stall" and not self._server._stopping.is_set():
                            time.sleep(0.05)
                        client.sendall(data[3:])
                    else:
                        client.sendall(data)
        finally:
            upstream.close()
            client.close()

    def stop(self) -> None:
        """Stop accepting and close every connection."""
        self._server.stop()


def admin(gw: GatewayProcess, path: str) -> tuple[int, str]:
    """Status and body of a GET on gw's admin listener."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gw.port(1)}{path}", timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def timed(call: Any, *args: Any) -> tuple[Any, float]:
    """call(*args) and the seconds it took."""
    started = time.monotonic()
    result = call(*args)
    return result, time.monotonic() - started


def config(redis_port: int, backend: TcpServer, secret: str = "") -> str:
    """A gateway with a plain route, a Redis token route and a Pool (and jwt routes needing the Pool with secret)."""
    signed = f"""
TokenSource signed jwt {secret} once=on allow=127.0.0.1:{backend.port}
TokenRoute /once signed
TokenSource reusable jwt {secret} allow=127.0.0.1:{backend.port}
TokenRoute /desk reusable maxperuser=1
""" if secret else ""
    return f"""
Listen tcp:port=0:interface=127.0.0.1
AdminListen tcp:port=0:interface=127.0.0.1
Limit rate=1000/s
ProxyPass /echo {backend.endpoint}
TokenSource broker redis redis://127.0.0.1:{redis_port}/0 namespace=vdi timeout={TIMEOUT} allow=127.0.0.0/8:1-65535
TokenRoute /vnc broker
Pool redis://127.0.0.1:{redis_port}/0 name=gw ttl=4 refresh=1 timeout={TIMEOUT}
""" + signed


def jwt_token(backend: TcpServer, jti: str) -> str:
    """A signed token of alice's for backend."""
    import jwt

    return jwt.encode({"host": "127.0.0.1", "port": backend.port, "exp": int(time.time()) + 60, "jti": jti,
                       "user": "alice"}, b"s" * 32, algorithm="HS256")


def relays(ws: ClientConnection, data: bytes) -> bool:
    """Whether data comes back through ws."""
    ws.send(data)
    return ws.recv(timeout=5) == data


@pytest.fixture
def stoppable_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The redis_server fixture, continued (SIGCONT) before it is stopped whatever the test did."""
    yield redis_server
    if redis_server.proc is not None and redis_server.proc.poll() is None:
        redis_server.proc.send_signal(signal.SIGCONT)


def check_trouble(gw: GatewayProcess, token_url: str, plain: ClientConnection, plain_url: str) -> list[float]:
    """While Redis misbehaves: bounded 503s, then at once; sessions relay.  Returns the waits measured."""
    status, first = timed(session_status, token_url)
    assert status == 503 and first < TIMEOUT + ROUND_TRIP, first
    (status, body), listed = timed(admin, gw, "/pool/sessions")
    assert status == 503 and listed < TIMEOUT + ROUND_TRIP, listed
    assert "failing fast" in body or "did not answer" in body or "Redis at" in body, body
    status, again = timed(session_status, token_url)
    assert status == 503 and again < ROUND_TRIP, again
    assert relays(plain, b"during")
    assert session_status(plain_url) == 101
    return [first, listed, again]


def check_back(gw: GatewayProcess, token_url: str, plain: ClientConnection) -> None:
    """Once Redis is back: both stores say so, a token session opens, the pool list answers, nothing is down."""
    gw.wait_log(r"Redis broker at 127.0.0.1:[0-9]+ reachable again", 10)
    gw.wait_log(r"Redis pool at 127.0.0.1:[0-9]+ reachable again", 10)
    assert session_status(token_url) == 101

    def listed() -> bool:
        status, body = admin(gw, "/pool/sessions")
        return status == 200 and bool(json.loads(body)["sessions"])

    # The registry is written again by the refresh that "reachable again" starts (in a Redis thread), or at the
    # latest by the next one (refresh=1): listed within a few refreshes, not at the instant of the log line.
    assert wait_until(listed, 5), admin(gw, "/pool/sessions")
    assert relays(plain, b"after")
    assert all(s["up"] for s in json.loads(admin(gw, "/redis")[1])["redis"])
    assert "Redis: " not in admin(gw, "/")[1]


def test_hung_redis(tmp_path: Path, stoppable_redis: RedisServer, backend: TcpServer) -> None:
    """SIGSTOPped Redis: a token session's 503 and the pool list's 503 within the timeout, then at once; SIGCONT heals."""
    import redis

    redis.Redis(port=stoppable_redis.port).set("vdi:desk", f"127.0.0.1:{backend.port}")
    assert stoppable_redis.proc is not None
    (tmp_path / "secret").write_bytes(b"s" * 32)
    with GatewayProcess(config(stoppable_redis.port, backend, str(tmp_path / "secret")), tmp_path) as gw:
        token_url = f"ws://127.0.0.1:{gw.port()}/vnc?token=desk"
        plain_url = f"ws://127.0.0.1:{gw.port()}/echo"
        with connect(plain_url, open_timeout=5) as plain:
            assert session_status(token_url) == 101 and relays(plain, b"before")
            stoppable_redis.proc.send_signal(signal.SIGSTOP)
            waits = check_trouble(gw, token_url, plain, plain_url)
            print("hung: token 503 after %.3f s, pool list 503 after %.3f s, then %.3f s" % tuple(waits))
            # Single-use tokens and limits ask the Pool's Redis, down since the list: 503 at once.
            for path, jti in (("/once", "o1"), ("/desk", "d1")):
                status, waited = timed(session_status, f"ws://127.0.0.1:{gw.port()}{path}?token={jwt_token(backend, jti)}")
                assert status == 503 and waited < ROUND_TRIP, (path, status, waited)
            assert len(gw.log().split("Redis broker at")) == 2  # one warning for the outage
            states = {s["name"]: s for s in json.loads(admin(gw, "/redis")[1])["redis"]}
            assert not states["broker"]["up"] and not states["pool"]["up"] and states["broker"]["failed_fast"] >= 1
            page = admin(gw, "/")[1]
            assert "Redis: pool (127.0.0.1:" in page and "broker (127.0.0.1:" in page
            stoppable_redis.proc.send_signal(signal.SIGCONT)
            check_back(gw, token_url, plain)


def test_refused_redis(tmp_path: Path, stoppable_redis: RedisServer, backend: TcpServer) -> None:
    """A stopped Redis (refused): 503 at once, sessions relay, and a restarted Redis is found by the probe."""
    import redis

    redis.Redis(port=stoppable_redis.port).set("vdi:desk", f"127.0.0.1:{backend.port}")
    with GatewayProcess(config(stoppable_redis.port, backend), tmp_path) as gw:
        token_url = f"ws://127.0.0.1:{gw.port()}/vnc?token=desk"
        plain_url = f"ws://127.0.0.1:{gw.port()}/echo"
        with connect(plain_url, open_timeout=5) as plain:
            assert session_status(token_url) == 101
            stoppable_redis.stop()
            check_trouble(gw, token_url, plain, plain_url)
            stoppable_redis.start()
            redis.Redis(port=stoppable_redis.port).set("vdi:desk", f"127.0.0.1:{backend.port}")
            check_back(gw, token_url, plain)


@pytest.mark.parametrize("mode", ["delay", "stall", "close"])
def test_slow_redis(tmp_path: Path, stoppable_redis: RedisServer, backend: TcpServer, mode: str) -> None:
    """Replies delayed, stalled mid-reply or cut mid-reply: bounded 503s, sessions relay, healed when it passes again."""
    import redis

    redis.Redis(port=stoppable_redis.port).set("vdi:desk", f"127.0.0.1:{backend.port}")
    proxy = RedisProxy(stoppable_redis.port)
    try:
        with GatewayProcess(config(proxy.port, backend), tmp_path) as gw:
            token_url = f"ws://127.0.0.1:{gw.port()}/vnc?token=desk"
            plain_url = f"ws://127.0.0.1:{gw.port()}/echo"
            with connect(plain_url, open_timeout=5) as plain:
                assert session_status(token_url) == 101
                proxy.mode = mode
                waits = check_trouble(gw, token_url, plain, plain_url)
                print("%s: token 503 after %.3f s, pool list 503 after %.3f s, then %.3f s" % (mode, *waits))
                proxy.mode = "pass"
                check_back(gw, token_url, plain)
    finally:
        proxy.stop()


def test_a_client_gone_during_the_limits_call_holds_no_place(tmp_path: Path, stoppable_redis: RedisServer,
                                                              backend: TcpServer) -> None:
    """
    A client that vanishes while Redis takes its place (maxperuser=1), the
    answer coming after the timeout, leaves the place free for the user's next
    session within seconds, not after ttl=.
    """
    import jwt

    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    proxy = RedisProxy(stoppable_redis.port)

    def token(desk: str) -> str:
        return jwt.encode({"host": "127.0.0.1", "port": backend.port, "exp": int(time.time()) + 60, "desk": desk,
                           "user": "alice"}, b"s" * 32, algorithm="HS256")

    try:
        config = f"""
Listen tcp:port=0:interface=127.0.0.1
AdminListen tcp:port=0:interface=127.0.0.1
Limit rate=1000/s
Pool redis://127.0.0.1:{proxy.port}/0 name=gw ttl=60 refresh=1 timeout={TIMEOUT}
TokenSource signed jwt {secret} allow=127.0.0.1:{backend.port}
TokenRoute /vnc signed maxperuser=1
"""
        with GatewayProcess(config, tmp_path) as gw:
            # A first session warms the connection up (redis-py's CLIENT SETINFO, the script load): under lag
            # those round trips would add up past the timeout.
            assert session_status(f"ws://127.0.0.1:{gw.port()}/vnc?token={token('warm')}") == 101
            proxy.sent = b""
            proxy.mode = "hold"
            with socket.create_connection(("127.0.0.1", gw.port()), timeout=5) as gone:
                gone.sendall(f"GET /vnc?token={token('a')} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port()}\r\n"
                             "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
                assert wait_until_sent(proxy, b"EVAL")  # the limits call is in Redis, its answer held
            # The gateway reads nothing from a client before its backend is up, so it learns that the client
            # left when it answers: 503 at the timeout, while Redis is still giving the place.
            gw.wait_log(r"handshake refused .*path=/vnc status=503 reason=\"the pool's limits cannot be checked\"")
            proxy.mode = "pass"
            proxy.held.set()
            # Redis's late answer took the place: it goes back as soon as Redis is reachable (not after ttl=60).
            gw.wait_log(r"Redis pool at 127.0.0.1:[0-9]+ reachable again")
            assert wait_until(lambda: session_status(f"ws://127.0.0.1:{gw.port()}/vnc?token={token('b')}") == 101,
                              10, 0.25)
    finally:
        proxy.stop()


def wait_until_sent(proxy: RedisProxy, command: bytes) -> bool:
    """Wait until a client of proxy has sent command."""
    return wait_until(lambda: command in proxy.sent, 10)


def test_redis_away_at_start(tmp_path: Path, stoppable_redis: RedisServer, backend: TcpServer) -> None:
    """A gateway started while Redis is away serves plain routes, then joins the pool (list, closes) once it is back."""
    stoppable_redis.stop()
    with GatewayProcess(config(stoppable_redis.port, backend), tmp_path) as gw:
        gw.wait_log(r"Redis pool at 127.0.0.1:[0-9]+ unreachable")
        with connect(f"ws://127.0.0.1:{gw.port()}/echo", open_timeout=5) as plain:
            assert relays(plain, b"alone")
            stoppable_redis.start()
            gw.wait_log(r"Redis pool at 127.0.0.1:[0-9]+ reachable again")
            session = json.loads(admin(gw, "/sessions")[1])["sessions"][0]["session"]
            assert wait_until(lambda: session in admin(gw, "/pool/sessions")[1], 10, 0.2)
            # The close listener subscribed once Redis was back: a pool close reaches the session.
            request = urllib.request.Request(f"http://127.0.0.1:{gw.port(1)}/pool/sessions/{session}/close",
                                             method="POST")
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 202
            with pytest.raises(ConnectionClosed) as closed:
                plain.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
