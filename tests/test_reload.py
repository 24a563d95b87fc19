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
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Opcode
from websockets.sync.client import connect

from rawws import RawClient
from support import GatewayProcess, TcpServer, echo, wait_until, worker_group

BASE = """\
Listen tcp:port=0:interface=127.0.0.1
Limit rate=0 perclient={perclient}
Timeout idle={idle}
KeepAlive ping={ping} pong=1
ProxyPass /echo {endpoint}
"""


def _reload(gw: GatewayProcess, config: str, outcome: str) -> None:
    """Write config, SIGHUP the gateway and wait for one more log line matching outcome."""
    before = len(re.findall(outcome, gw.log()))
    gw.config_path.write_text(config)
    gw.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    assert wait_until(lambda: len(re.findall(outcome, gw.log())) > before, 15), gw.log()[-2000:]


def test_sighup_applies_limit_timeout_keepalive(tmp_path: Path) -> None:
    """perclient=1 -> 0, idle 0 -> 1, ping 0 -> 2, a broken file: each reload does what it says, live sessions go on."""
    with TcpServer(echo) as backend:
        with GatewayProcess(BASE.format(perclient=1, idle=0, ping=0, endpoint=backend.endpoint), tmp_path) as gw:
            gw.wait_log(r"reload: SIGHUP re-reads")
            url = f"ws://127.0.0.1:{gw.port()}/echo"
            with connect(url, open_timeout=5) as first:
                with pytest.raises(InvalidStatus) as refused:
                    connect(url, open_timeout=5)
                assert refused.value.response.status_code == 503
                _reload(gw, BASE.format(perclient=0, idle=1, ping=0, endpoint=backend.endpoint),
                        r"\(every directive applied\)")
                with connect(url, open_timeout=5) as second:
                    second.send(b"two")
                    assert second.recv(timeout=5) == b"two"
                    # The new idle timeout (1 s) ends a new session that carries nothing.
                    with pytest.raises(ConnectionClosed) as closed:
                        second.recv(timeout=10)
                    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
                # The session from before the reload keeps its own (no) idle timeout.
                first.send(b"one")
                assert first.recv(timeout=5) == b"one"
            # A broken file is refused with FILE:LINE and the running configuration stays.
            _reload(gw, BASE.format(perclient=0, idle=0, ping=0, endpoint=backend.endpoint) + "Limit perclient=lots\n",
                    rf"reload refused.*\n.*{re.escape(str(gw.config_path))}:6:")
            # KeepAlive: pings every 2 s reach sessions opened after the reload, not those from before.
            _reload(gw, BASE.format(perclient=0, idle=0, ping=0, endpoint=backend.endpoint),
                    r"\(every directive applied\)")
            before = RawClient(gw.port(), "/echo")
            _reload(gw, BASE.format(perclient=0, idle=0, ping=2, endpoint=backend.endpoint),
                    r"\(every directive applied\)")
            after = RawClient(gw.port(), "/echo")
            try:
                pings = [f for f in after.frames(timeout=5) if f.opcode is Opcode.PING]
                assert pings, "no ping within 5 s of a 2 s KeepAlive"
                assert before.frames(timeout=0.1) == []
            finally:
                before.close()
                after.close()


def test_sighup_reaches_every_worker(tmp_path: Path) -> None:
    """Workers: SIGHUP to the parent is forwarded; both workers read the real file; the parent lives on."""
    with TcpServer(echo) as backend:
        config = tmp_path / "gw.conf"
        config.write_text(BASE.format(perclient=0, idle=0, ping=0, endpoint=backend.endpoint))
        with worker_group(config) as (proc, read):
            assert wait_until(lambda: read().count("reload: SIGHUP re-reads") >= 2 or proc.poll() is not None,
                              30), read()
            assert read().count(f"reload: SIGHUP re-reads {config}") == 2, read()
            port = int(re.search(r"name=line1 \(.*port=(\d+)\)", read()).group(1))  # type: ignore[union-attr]
            config.write_text(BASE.format(perclient=0, idle=0, ping=0, endpoint=backend.endpoint)
                              + f"ProxyPass /new {backend.endpoint}\n")
            proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: read().count("reload: configuration") >= 2, 15), read()
            assert proc.poll() is None
            # Every worker serves the new route: 32 sessions at once, none refused.
            with contextlib.ExitStack() as stack:
                sockets = [stack.enter_context(connect(f"ws://127.0.0.1:{port}/new", open_timeout=10))
                           for _ in range(32)]
                for ws in sockets:
                    ws.send(b"new")
                    assert ws.recv(timeout=10) == b"new"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
