"""
tunnelgw.workers: the pure planning/rewriting, and a real launcher with two
``twistd`` workers sharing one listening port.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.sync.client import connect

from support import TcpServer, echo, wait_until, worker_group
from tunnelgw.core.config import ConfigError, parse_config
from tunnelgw.service import inherit_listeners
from tunnelgw.workers import plan_sockets

CONFIG = """\
# two server endpoints
Listen tcp:port=0:interface=127.0.0.1
DemoBackend echo tcp:port=0:interface=127.0.0.1
ProxyPass /echo tcp:host=127.0.0.1:port={port}
# the test opens batches of 16 sessions at once from one address
Limit rate=0
"""


def test_plan_lists_listeners_and_demo_backends_in_order() -> None:
    """Listen and DemoBackend endpoints are planned in line order, named by line."""
    plan = plan_sockets(parse_config(CONFIG.format(port=1), "c.conf"))
    assert [(s.where.line, s.endpoint, s.name) for s in plan] == [
        (2, "tcp:port=0:interface=127.0.0.1", "line2"), (3, "tcp:port=0:interface=127.0.0.1", "line3")]

def test_ssl_listener_shares_its_plain_socket() -> None:
    """An ssl: listener is planned as its tcp: socket; a haproxy: one is refused with FILE:LINE."""
    plan = plan_sockets(parse_config("Listen ssl:port=0:interface=127.0.0.1:privateKey=k.pem\n", "c.conf"))
    assert [(s.where.line, s.endpoint) for s in plan] == [(1, "tcp:port=0:interface=127.0.0.1")]
    with pytest.raises(ConfigError, match=r"c\.conf:1: haproxy: listeners cannot be shared"):
        plan_sockets(parse_config("Listen haproxy:tcp:port=0\n", "c.conf"))

def test_workers_read_the_real_file_with_inherited_sockets() -> None:
    """A worker's configuration is the real file's, its planned endpoints mapped to inherited systemd: sockets."""
    text = CONFIG.format(port=1)
    config = parse_config(text, "/etc/tunnelgw/gw.conf")
    mapping = json.dumps({"2": "systemd:domain=INET:name=line2", "3": "systemd:domain=INET6:name=line3"})
    inherited = inherit_listeners(config, mapping)
    assert [l.endpoint for l in inherited.listeners] == ["systemd:domain=INET:name=line2"]
    assert [d.endpoint for d in inherited.demo_backends] == ["systemd:domain=INET6:name=line3"]
    assert inherited.listeners[0].where == config.listeners[0].where
    assert inherited.rules == config.rules
    assert inherit_listeners(config, None) is config


def test_two_workers_share_one_port(tmp_path: Path) -> None:
    """Two workers accept on one port: sessions are served by both pids, and SIGTERM stops all."""
    with TcpServer(echo) as backend:
        config = tmp_path / "gw.conf"
        config.write_text(CONFIG.format(port=backend.port))
        with worker_group(config) as (proc, read):
            assert wait_until(lambda: read().count("name=line2 (") >= 2 or proc.poll() is not None, 30), read()
            assert proc.poll() is None, read()
            port = int(re.search(r"name=line2 \(.*port=(\d+)\)", read()).group(1))  # type: ignore[union-attr]
            children = _worker_pids(proc.pid)
            assert len(children) == 2
            # Hold batches of live sessions until both workers carry some (bounded).
            busy: set[int] = set()
            for _ in range(5):
                with contextlib.ExitStack() as stack:
                    sockets = [stack.enter_context(connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10))
                               for _ in range(16)]
                    for ws in sockets:
                        ws.send(b"ping")
                        assert ws.recv(timeout=10) == b"ping"
                    busy |= {pid for pid in children if _established(pid) > 0}
                if busy == set(children):
                    break
            assert busy == set(children)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            assert all(not os.path.exists(f"/proc/{pid}") or _is_zombie(pid) for pid in children)


def _worker_pids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _established(pid: int) -> int:
    """Established TCP connections held by pid (its sockets that are in /proc/net/tcp state 01)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for row in rows if row[3] == "01" and row[9] in inodes)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
