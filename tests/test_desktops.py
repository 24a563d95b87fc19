"""
One logical session per desktop and client: WebSockets that carry one token
from one client (the channels of a SPICE client) share one desktop id in logs
and the admin list, take one slot of the limits, and close together from the
admin listener; another client of the same desktop is another session.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from support import GatewayProcess, TcpServer, backend, connect_from, wait_until
from tunnelgw.core.limits import MAX_CHANNELS, SessionCounts
from tunnelgw.core.routing import Reject


def test_channels_of_a_desktop_take_one_slot() -> None:
    counts = SessionCounts(total=1, per_client=0)
    first = counts.admit("/spice", None, "c", desktop="tok:1", session_id="s1")
    second = counts.admit("/spice", None, "c", desktop="tok:1", session_id="s2")
    assert not isinstance(first, Reject) and not isinstance(second, Reject)
    assert (first.group, second.group) == ("s1", "s1") and counts.live == 1 and counts.desktops == 1
    assert isinstance(counts.admit("/spice", None, "c", desktop="tok:2", session_id="s3"), Reject)
    counts.release(first)
    assert counts.live == 1  # the second channel still holds the desktop's slot
    counts.release(second)
    assert counts.live == 0 and counts.desktops == 0
    assert not isinstance(counts.admit("/spice", None, "c", desktop="tok:2", session_id="s4"), Reject)


def test_a_second_client_of_a_desktop_is_a_second_session() -> None:
    """Another client address with the same token takes a slot of its own (and is refused when none is left)."""
    counts = SessionCounts(total=2, per_client=0)
    first = counts.admit("/spice", None, "10.0.0.1", desktop="tok:1", session_id="s1")
    other = counts.admit("/spice", None, "10.0.0.2", desktop="tok:1", session_id="s2")
    again = counts.admit("/spice", None, "10.0.0.1", desktop="tok:1", session_id="s3")
    assert not isinstance(first, Reject) and not isinstance(other, Reject) and not isinstance(again, Reject)
    assert (first.group, other.group, again.group) == ("s1", "s2", "s1")
    assert counts.live == 2 and counts.desktops == 2
    assert isinstance(counts.admit("/spice", None, "10.0.0.3", desktop="tok:1", session_id="s4"), Reject)
    for admission in (first, again, other):
        counts.release(admission)
    assert counts.live == 0 and counts.desktops == 0 and counts.client_count("10.0.0.1") == 0


def test_two_clients_of_one_token_are_two_sessions(tmp_path: Path, backend: TcpServer) -> None:
    """Real sockets: with Limit sessions=1, one client's two channels pass and the same token from another address gets 503."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"desk1: 127.0.0.1:{backend.port}\n")
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
Limit sessions=1
TokenSource files file {tokens} allow=127.0.0.0/8:1024-65535 reload=0
TokenRoute /spice files
"""
    with GatewayProcess(config, tmp_path) as gw:
        url = f"ws://127.0.0.1:{gw.port()}/spice?token=desk1"
        with connect_from(url, "127.0.0.1") as main, connect_from(url, "127.0.0.1") as display:
            for ws in (main, display):
                ws.send(b"x")
                assert ws.recv(timeout=5) == b"x"
            with pytest.raises(InvalidStatus) as refused:
                with connect_from(url, "127.0.0.2"):
                    pass
            assert refused.value.response.status_code == 503
        gw.wait_log(r"client=127\.0\.0\.2:\d+ .*status=503 reason='the gateway is at its session limit'")
        assert wait_until(lambda: gw.log().count("session end") == 2, 5)
        with connect_from(url, "127.0.0.2") as ws:  # the first client left: the slot is free
            ws.send(b"y")
            assert ws.recv(timeout=5) == b"y"


def test_channels_sharing_a_slot_are_bounded() -> None:
    """One client's session of a desktop takes at most MAX_CHANNELS channels; the next gets 503, and one may come back after a release."""
    counts = SessionCounts(total=0, per_client=0)
    channels = [counts.admit("/spice", None, "c", desktop="tok:1", session_id=f"s{i}") for i in range(MAX_CHANNELS)]
    assert not any(isinstance(c, Reject) for c in channels) and counts.live == 1
    refused = counts.admit("/spice", None, "c", desktop="tok:1", session_id="over")
    assert isinstance(refused, Reject) and refused.status == 503 and "channels" in refused.reason
    last = channels.pop()
    assert not isinstance(last, Reject)
    counts.release(last)
    assert not isinstance(counts.admit("/spice", None, "c", desktop="tok:1", session_id="back"), Reject)


def admin_get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return str(answer.read().decode())


def test_channels_with_one_token_are_one_desktop(tmp_path: Path, backend: TcpServer) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"desk1: 127.0.0.1:{backend.port}\ndesk2: 127.0.0.1:{backend.port}\n")
    config = f"""
Listen tcp:port=0:interface=127.0.0.1
AdminListen tcp:port=0:interface=127.0.0.1
Limit sessions=1
TokenSource files file {tokens} allow=127.0.0.0/8:1024-65535 reload=0
TokenRoute /spice files
"""
    with GatewayProcess(config, tmp_path) as gw:
        url = f"ws://127.0.0.1:{gw.port()}/spice?token="
        with connect(url + "desk1", open_timeout=5) as main, connect(url + "desk1", open_timeout=5) as display:
            for ws in (main, display):
                ws.send(b"x")
                assert ws.recv(timeout=5) == b"x"
            with pytest.raises(InvalidStatus) as refused:  # another desktop: over the limit of one
                connect(url + "desk2", open_timeout=5)
            assert refused.value.response.status_code == 503
            sessions = json.loads(admin_get(gw.port(1), "/sessions"))["sessions"]
            assert len(sessions) == 2 and len({s["desktop"] for s in sessions}) == 1
            desktop = sessions[0]["desktop"]
            assert desktop in {s["session"] for s in sessions}  # the first channel's id names the desktop
            metrics = admin_get(gw.port(1), "/metrics")
            assert 'tunnelgw_sessions_live{route="/spice"} 2.0' in metrics
            assert 'tunnelgw_desktops_live{route="/spice"} 1.0' in metrics
            starts = re.findall(r"session start session=(\w+) .*desktop=(\w+)", gw.log())
            assert len(starts) == 2 and {d for _, d in starts} == {desktop}
            # Closing one channel from the admin closes the desktop: every channel.
            other = next(s["session"] for s in sessions if s["session"] != desktop)
            request = urllib.request.Request(f"http://127.0.0.1:{gw.port(1)}/sessions/{other}/close", method="POST")
            assert urllib.request.urlopen(request, timeout=5).status == 200
            for ws in (main, display):
                with pytest.raises(ConnectionClosed):
                    ws.recv(timeout=5)
                assert ws.close_code == 1008
        assert wait_until(lambda: json.loads(admin_get(gw.port(1), "/sessions")) == {"sessions": []}, 5)
        assert len(re.findall(r"admin close .*desktop=" + desktop, gw.log())) == 2
        with connect(url + "desk2", open_timeout=5) as ws:  # the slot is free again
            ws.send(b"y")
            assert ws.recv(timeout=5) == b"y"


def test_second_client_refused_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In memory (MemoryReactorClock, StringTransport): one client's two channels share the slot of Limit sessions=1; another client's channel gets 503 until they end."""
    import txaio
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock

    from test_session import Gateway, Transport, handshake, lose

    txaio.use_twisted()
    monkeypatch.setattr(txaio.config, "loop", MemoryReactorClock())  # as test_session does: no global reactor
    tokens = tmp_path / "tokens"
    tokens.write_text("desk1: 10.0.0.1:5900\n")
    gw = Gateway(f"Limit sessions=1 rate=0\nTokenSource files file {tokens} allow=10.0.0.0/8:1-65535 reload=0\n"
                 "TokenRoute /spice files\n")

    def channel(host: str, port: int) -> Transport:
        transport = Transport(peerAddress=IPv4Address("TCP", host, port))
        protocol = gw.service.front.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        transport.protocol = protocol
        protocol.dataReceived(handshake(b"/spice?token=desk1"))
        return transport

    main = channel("192.0.2.1", 40001)
    gw.connect_backend()
    display = channel("192.0.2.1", 40002)
    gw.connect_backend()
    assert main.value().startswith(b"HTTP/1.1 101 ") and display.value().startswith(b"HTTP/1.1 101 ")
    assert gw.factory.session_counts.live == 1
    other = channel("192.0.2.2", 40003)
    assert other.value().startswith(b"HTTP/1.1 503 "), other.value()
    for transport in (other, main, display):
        lose(transport)
    assert gw.factory.session_counts.live == 0 and gw.factory.session_counts.desktops == 0
    again = channel("192.0.2.2", 40004)
    gw.connect_backend()
    assert again.value().startswith(b"HTTP/1.1 101 ")
    lose(again)
