"""
SIGHUP applies a configuration whole, on real processes: a single
``twistd tunnelgw`` and ``python -m tunnelgw.workers`` with two workers.
Limits, timeouts and keepalive change for new sessions, live sessions go on,
a broken file is refused with FILE:LINE and the old configuration stays.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from support import GatewayProcess, TcpServer, echo, subprocess_env, wait_until

BASE = """\
Listen tcp:port=0:interface=127.0.0.1
Limit rate=0 perclient={perclient}
Timeout idle={idle}
KeepAlive ping={ping} pong=1
ProxyPass /echo {endpoint}
"""


def _hup(proc: subprocess.Popen[bytes], log: "callable", before: int) -> None:
    proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: log().count("reload:") + log().count("reload refused") > before, 15), log()[-2000:]


def test_sighup_applies_limit_timeout_keepalive(tmp_path: Path) -> None:
    """perclient=1 -> 0, idle 0 -> 1, a broken file: each reload does what it says, live sessions go on."""
    with TcpServer(echo) as backend:
        config = BASE.format(perclient=1, idle=0, ping=0, endpoint=backend.endpoint)
        with GatewayProcess(config, tmp_path) as gw:
            gw.wait_log(r"reload: SIGHUP re-reads")
            url = f"ws://127.0.0.1:{gw.port()}/echo"
            with connect(url, open_timeout=5) as first:
                with pytest.raises(InvalidStatus) as refused:
                    connect(url, open_timeout=5)
                assert refused.value.response.status_code == 503
                gw.config_path.write_text(BASE.format(perclient=0, idle=1, ping=0, endpoint=backend.endpoint))
                _hup(gw.proc, gw.log, gw.log().count("reload:"))
                gw.wait_log(r"\(every directive applied\)")
                with connect(url, open_timeout=5) as second:
                    second.send(b"two")
                    assert second.recv(timeout=5) == b"two"
                    # The new idle timeout (1 s) ends the new session without traffic.
                    with pytest.raises(ConnectionClosed) as closed:
                        second.recv(timeout=10)
                    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
                # The session from before the reload went on (and has the new idle timeout
                # only if it was opened after: it was not, so it still works after 1.5 s).
                first.send(b"one")
                assert first.recv(timeout=5) == b"one"
            # A broken file is refused with FILE:LINE; the running configuration stays.
            gw.config_path.write_text(BASE.format(perclient=0, idle=0, ping=0, endpoint=backend.endpoint)
                                      + "Limit perclient=lots\n")
            _hup(gw.proc, gw.log, gw.log().count("reload:") + gw.log().count("reload refused"))
            gw.wait_log(rf"reload refused.*\n.*{re.escape(str(gw.config_path))}:6:")
            # KeepAlive: pings every 2 s with a 1 s pong deadline apply to new sessions.
            gw.config_path.write_text(BASE.format(perclient=0, idle=0, ping=2, endpoint=backend.endpoint))
            _hup(gw.proc, gw.log, gw.log().count("reload:") + gw.log().count("reload refused"))
            with connect(url, open_timeout=5, ping_interval=None) as third:
                pinged = third.protocol
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and not any(
                        getattr(f, "opcode", None) is not None and f.opcode.name == "PING"
                        for f in getattr(pinged, "_tunnelgw_seen", [])):
                    third.send(b"x")
                    third.recv(timeout=5)
                    break
                assert wait_until(lambda: "session start" in gw.log(), 5)


def test_sighup_reaches_every_worker(tmp_path: Path) -> None:
    """Workers: SIGHUP to the parent is forwarded; both workers read the real file; the parent lives on."""
    with TcpServer(echo) as backend:
        config = tmp_path / "gw.conf"
        config.write_text(BASE.format(perclient=0, idle=0, ping=0, endpoint=backend.endpoint))
        log_path = tmp_path / "workers.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "tunnelgw.workers", "-n", "2", "--config", str(config)],
                                    stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=tmp_path)
            try:
                read = log_path.read_text
                assert wait_until(lambda: read().count("reload: SIGHUP re-reads") >= 2 or proc.poll() is not None,
                                  30), read()
                assert read().count(f"reload: SIGHUP re-reads {config}") == 2, read()
                port = int(re.search(r"name=line1 \(.*port=(\d+)\)", read()).group(1))
                config.write_text(BASE.format(perclient=0, idle=0, ping=0, endpoint=backend.endpoint)
                                  + f"ProxyPass /new {backend.endpoint}\n")
                proc.send_signal(signal.SIGHUP)
                assert wait_until(lambda: read().count("reload: configuration") >= 2, 15), read()
                assert proc.poll() is None
                # Every worker serves the new route: 32 sessions at once land on both.
                with contextlib.ExitStack() as stack:
                    sockets = [stack.enter_context(connect(f"ws://127.0.0.1:{port}/new", open_timeout=10))
                               for _ in range(32)]
                    for ws in sockets:
                        ws.send(b"new")
                        assert ws.recv(timeout=10) == b"new"
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(20) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
