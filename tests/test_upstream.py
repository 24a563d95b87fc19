"""
The upstream code :mod:`tunnelgw.upstream` replaces is the code it was
written against: a hash of each replaced function's source, pinned for the
installed Twisted and Autobahn, so that an upgrade that changes one fails
here (and says which to look at again) instead of misbehaving quietly.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib
import inspect
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelgw.upstream import REPLACED, data_frame_head

_ROOT = Path(__file__).resolve().parent.parent


def _source_hash(dotted: str) -> str:
    module, owner, name = dotted.rsplit(".", 2)
    function = getattr(getattr(importlib.import_module(module), owner), name)
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


@pytest.mark.parametrize("dotted", sorted(REPLACED))
def test_replaced_upstream_source_unchanged(dotted: str) -> None:
    """The replaced function's source hashes as pinned (else: review the override in tunnelgw.upstream, re-pin)."""
    assert _source_hash(dotted) == REPLACED[dotted], (
        f"{dotted} changed upstream (autobahn {version('autobahn')}, h2 {version('h2')}): "
        "review its override in tunnelgw/upstream.py and pin the new hash")


def test_upper_bounds_in_setup_cfg() -> None:
    """setup.cfg bounds Twisted, Autobahn and h2 from above, and the installed versions are inside the bounds."""
    parser = configparser.ConfigParser()
    parser.read(_ROOT / "setup.cfg")
    requires = {line.split("[")[0].split(">")[0].strip(): line.strip()
                for line in parser["options"]["install_requires"].splitlines() if line.strip()}
    for name in ("twisted", "autobahn", "h2"):
        spec = requires[name]
        assert "<" in spec, spec
        bound = tuple(int(n) for n in spec.split("<")[1].split(",")[0].split("."))
        installed = tuple(int(n) for n in version(name).split(".")[:len(bound)])
        assert installed < bound, (name, version(name), spec)


def test_no_private_overrides_outside_upstream() -> None:
    """Outside tunnelgw/upstream.py no class defines an Autobahn or Twisted private method."""
    private = ("def _connectionMade", "def _connectionLost", "def _onOpen", "def _onConnect", "def _dataReceived",
               "def _actuallyStartHandshake", "def _flushSendBIO", "def _flushReceiveBIO")
    for path in (_ROOT / "tunnelgw").rglob("*.py"):
        if path.name == "upstream.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert not [p for p in private if p in text], path


def test_no_twisted_internals_are_replaced() -> None:
    """The gateway's transports are its own FileDescriptors: nothing of Twisted's is pinned, and nothing swaps classes."""
    assert not [dotted for dotted in REPLACED if dotted.startswith("twisted.")]
    for path in (_ROOT / "tunnelgw").rglob("*.py"):
        assert "__class__ = " not in path.read_text(encoding="utf-8"), path


def test_autobahn_traffic_counters_cost_no_memory_per_connection() -> None:
    """Autobahn's per-connection TrafficStats is one shared object that reads 0 and keeps nothing."""
    from autobahn.websocket.protocol import TrafficStats

    from tunnelgw.upstream import QuietClientProtocol, QuietServerProtocol

    stats = QuietServerProtocol.trafficStats
    assert stats is QuietClientProtocol.trafficStats
    for name in vars(TrafficStats()):  # every counter Autobahn increments: stats.name += n
        setattr(stats, name, getattr(stats, name) + 1000)
        assert getattr(stats, name) == 0
    stats.reset()
    assert not hasattr(stats, "__dict__")


def _h2_pair(window: int = 65535, connection_window: int = 65535) -> tuple[Any, Any, int]:
    """A server H2Connection with one open stream (the client's, id 1), the stream's and the connection's windows."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.settings import SettingCodes

    client = H2Connection(H2Configuration(client_side=True))
    server = H2Connection(H2Configuration(client_side=False))
    client.initiate_connection()
    client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "a")])
    if connection_window > 65535:
        client.increment_flow_control_window(connection_window - 65535)
    server.receive_data(client.data_to_send())
    server.data_to_send()
    return client, server, 1


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=16384), min_size=1, max_size=12),
       st.integers(min_value=0, max_value=12), st.sampled_from([20000, 65535, 1 << 20]),
       st.sampled_from([65535, 100000, 1 << 20]))
def test_data_frame_head_is_h2s_send_data_without_the_frame(sizes: list[int], end_after: int, window: int,
                                                            connection_window: int) -> None:
    """The same bytes on the wire, windows and stream states as h2's send_data, until the first refusal, alike."""
    from h2.exceptions import ProtocolError

    _, by_h2, stream_id = _h2_pair(window, connection_window)
    _, ours, _ = _h2_pair(window, connection_window)
    wire_h2, wire_ours = b"", b""
    for index, size in enumerate(sizes):
        payload = bytes([index % 251]) * size
        if index == end_after:
            by_h2.end_stream(stream_id)
            ours.end_stream(stream_id)
        try:
            by_h2.send_data(stream_id, payload)
        except ProtocolError as e:
            with pytest.raises(type(e)):
                data_frame_head(ours, stream_id, size)
            break
        wire_h2 += by_h2.data_to_send()
        wire_ours += ours.data_to_send() + data_frame_head(ours, stream_id, size) + payload
        assert by_h2.local_flow_control_window(stream_id) == ours.local_flow_control_window(stream_id)
        assert by_h2.outbound_flow_control_window == ours.outbound_flow_control_window
        assert (by_h2.streams[stream_id].outbound_flow_control_window
                == ours.streams[stream_id].outbound_flow_control_window)
    wire_h2 += by_h2.data_to_send()
    wire_ours += ours.data_to_send()
    assert wire_ours == wire_h2
    assert by_h2.streams[stream_id].state_machine.state == ours.streams[stream_id].state_machine.state


def test_data_frame_head_refuses_as_h2_does() -> None:
    """Unknown and reset streams, the window's edge, the frame size, a closed connection: h2's errors."""
    from h2.errors import ErrorCodes
    from h2.exceptions import (FlowControlError, FrameTooLargeError, NoSuchStreamError, ProtocolError,
                               StreamClosedError)

    _, server, stream_id = _h2_pair(window=20000)
    data_frame_head(server, stream_id, 16384)
    with pytest.raises(FlowControlError):
        data_frame_head(server, stream_id, 20000 - 16384 + 1)
    data_frame_head(server, stream_id, 20000 - 16384)
    assert server.local_flow_control_window(stream_id) == 0
    _, server, stream_id = _h2_pair()
    with pytest.raises(NoSuchStreamError):
        data_frame_head(server, 3, 10)
    with pytest.raises(FrameTooLargeError):
        data_frame_head(server, stream_id, 16385)
    server.reset_stream(stream_id, ErrorCodes.CANCEL)
    with pytest.raises(StreamClosedError):
        data_frame_head(server, stream_id, 10)
    _, server, stream_id = _h2_pair()
    server.close_connection()
    with pytest.raises(ProtocolError):
        data_frame_head(server, stream_id, 10)
    assert server.outbound_flow_control_window == 65535
