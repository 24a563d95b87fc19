"""
End-to-end sessions through a real ``twistd tunnelgw`` process, driven by the
independent ``websockets`` client library, to real loopback TCP backends.
"""

from __future__ import annotations

import base64
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from support import GatewayProcess, Sink, TcpServer, echo, make_pki, rss_bytes, wait_until


@pytest.fixture(scope="module")
def echo_server() -> Iterator[TcpServer]:
    with TcpServer(echo) as server:
        yield server


@pytest.fixture(scope="module")
def sink() -> Iterator[tuple[TcpServer, Sink]]:
    handler = Sink()
    with TcpServer(handler) as server:
        yield server, handler


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, echo_server: TcpServer,
            sink: tuple[TcpServer, Sink]) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("gw")
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
ProxyPass /echo {echo_server.endpoint} connecttimeout=3
ProxyPass /sink {sink[0].endpoint}
ProxyPassMatch ^/port/(\\d+)$ tcp:host=127.0.0.1:port=$1
"""
    with GatewayProcess(config, tmp) as gw:
        yield gw


def url(gw: GatewayProcess, path: str) -> str:
    return f"ws://127.0.0.1:{gw.port()}{path}"


def test_echo_binary_and_text(gateway: GatewayProcess) -> None:
    """Binary and text frames reach the backend as bytes; replies come back as binary."""
    with connect(url(gateway, "/echo"), open_timeout=5) as ws:
        assert ws.subprotocol is None
        ws.send(b"\x00\x01hello\xff")
        assert ws.recv(timeout=5) == b"\x00\x01hello\xff"
        ws.send("h\u00e9llo")
        assert ws.recv(timeout=5) == "h\u00e9llo".encode()
    gateway.wait_log(r"session end .*path=/echo.*bytes_up=14 bytes_down=14")
