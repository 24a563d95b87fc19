"""
Playbooks for :mod:`tunnelgw.core.sessionrelay`, in memory: events are fed
to a relay and the actions it answers with are expected, mitmproxy-style,
for both roles (the client's session towards a TCP or a WebSocket backend,
and a WebSocket hop); hypothesis tries orders of data, pings, pongs and
closes, and every split of the stream.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings, strategies as st
from websockets.frames import Close as WsClose
from websockets.frames import Frame, Opcode
from websockets.speedups import apply_mask  # type: ignore[import-not-found]

from tunnelgw.core.relay import Close
from tunnelgw.core.sessionrelay import (
    Action,
    ArmTimer,
    Carries,
    CloseReceived,
    Drop,
    Failed,
    Forward,
    PongReceived,
    RelayState,
    Role,
    SessionRelay,
    Write,
)

MASK = b"\x01\x02\x03\x04"


def client_frame(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    """A masked frame as a client sends it."""
    return Frame(opcode, payload, fin=fin).serialize(mask=True)


def server_frame(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    """An unmasked frame as a server sends it."""
    return Frame(opcode, payload, fin=fin).serialize(mask=False)


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload."""
    return WsClose(code, reason).serialize()


def session(carries: Carries = Carries.PAYLOAD, **kwargs: object) -> SessionRelay:
    """The client side of a session (the gateway is the server)."""
    return SessionRelay(Role.SERVER, carries, apply_mask, close_timeout=3.0, **kwargs)  # type: ignore[arg-type]


def hop(**kwargs: object) -> SessionRelay:
    """A WebSocket hop's side (the gateway is the client), with a fixed masking key."""
    return SessionRelay(Role.CLIENT, Carries.FRAMES, apply_mask, close_timeout=5.0, mask_key=lambda: MASK,
                        **kwargs)  # type: ignore[arg-type]


def forwarded(actions: list[Action]) -> bytes:
    """Every forwarded byte, joined."""
    return b"".join(b"".join(a.chunks) for a in actions if isinstance(a, Forward))


def written(actions: list[Action]) -> bytes:
    """Every byte written to the peer, joined."""
    return b"".join(a.data + a.payload for a in actions if isinstance(a, Write))


def pong(payload: bytes) -> Write:
    """The pong the gateway (a server) writes."""
    return Write(server_frame(Opcode.PONG, payload))


class PayloadPlaybookTests:
    """The client's session towards a byte stream (TCP) backend."""

    def test_binary_frames_become_payloads(self) -> None:
        """Two binary frames in one read: one Forward with both payloads unmasked, no frame left open."""
        relay = session()
        assert relay.receive(client_frame(Opcode.BINARY, b"abc") + client_frame(Opcode.BINARY, b"de"), 0) == [
            Forward([b"abc", b"de"], 5, 0)]

    def test_ping_between_frames_is_answered_in_order(self) -> None:
        """Data before a ping is forwarded before the pong; data after it after."""
        relay = session()
        stream = client_frame(Opcode.BINARY, b"one") + client_frame(Opcode.PING, b"p") + client_frame(
            Opcode.BINARY, b"two")
        assert relay.receive(stream, 0) == [Forward([b"one"], 3, 0), pong(b"p"), Forward([b"two"], 3, 0)]

    def test_payload_to_the_client_is_one_binary_message(self) -> None:
        """A backend chunk is written as a frame header and the chunk as it is."""
        relay = session()
        assert relay.send_payload(b"x" * 200) == Write(server_frame(Opcode.BINARY, b"x" * 200)[:4], b"x" * 200)
        for n in (0, 125, 126, 65535, 65536):
            write = relay.send_payload(b"y" * n)
            assert write is not None and write.data + write.payload == server_frame(Opcode.BINARY, b"y" * n)

    def test_close_from_the_client(self) -> None:
        """A valid close: passed on, answered with 1000, then the TCP connection ends after it."""
        relay = session()
        actions = relay.receive(client_frame(Opcode.CLOSE, close_payload(1001, "bye")), 0)
        assert actions == [CloseReceived(1001, "bye"), Write(server_frame(Opcode.CLOSE, close_payload(1000))),
                           Drop(False), ArmTimer(3.0)]
        assert relay.clean and relay.state is RelayState.CLOSING
        assert relay.receive(client_frame(Opcode.BINARY, b"late"), 1) == []

    def test_empty_close_is_answered_empty(self) -> None:
        """A close without a code is passed on without one and answered with an empty close."""
        relay = session()
        assert relay.receive(client_frame(Opcode.CLOSE, b""), 0) == [
            CloseReceived(None, ""), Write(server_frame(Opcode.CLOSE, b"")), Drop(False), ArmTimer(3.0)]

    def test_bad_close_codes_and_reasons(self) -> None:
        """5000, 999 and 1005 get 1002; a reason that is not UTF-8 gets 1007; one byte gets 1002."""
        for payload, code in ((struct.pack("!H", 5000), 1002), (struct.pack("!H", 999), 1002),
                              (struct.pack("!H", 1005), 1002), (struct.pack("!H", 1000) + b"\xff", 1007),
                              (b"\x03", 1002)):
            relay = session()
            actions = relay.receive(client_frame(Opcode.CLOSE, payload), 0)
            assert isinstance(actions[0], Failed) and actions[0].close.code == code
            assert actions[1] == Write(server_frame(Opcode.CLOSE, close_payload(code, actions[0].close.reason)))
            assert actions[2:] == [Drop(False, actions[0].close.reason), ArmTimer(3.0)]
            assert relay.timer(3.0) == [Drop(True, "the peer did not end the connection after the close handshake")]

    def test_protocol_violations_after_good_frames(self) -> None:
        """Reserved bits, an unmasked frame, a new message inside a fragmented one, a bad opcode: data first, then 1002."""
        for bad in (bytes([0xC2, 0x80, 1, 2, 3, 4]), server_frame(Opcode.BINARY, b"u"),
                    client_frame(Opcode.BINARY, b"a", fin=False) + client_frame(Opcode.BINARY, b"b"),
                    bytes([0x83, 0x80, 1, 2, 3, 4]), client_frame(Opcode.CONT, b"c"),
                    bytes([0x09, 0x80, 1, 2, 3, 4])):
            relay = session()
            actions = relay.receive(client_frame(Opcode.BINARY, b"ok") + bad, 0)
            assert actions[0] == Forward([b"ok"], 2, 0) or forwarded(actions).startswith(b"ok")
            failed = [a for a in actions if isinstance(a, Failed)]
            assert failed and failed[0].close.code == 1002, bad
            assert relay.receive(client_frame(Opcode.BINARY, b"more"), 0) == []

    def test_limits_give_1009(self) -> None:
        """A frame or message above its limit fails with 1009 before any of it is forwarded."""
        relay = session(max_frame=10)
        actions = relay.receive(client_frame(Opcode.BINARY, b"x" * 11), 0)
        assert isinstance(actions[0], Failed) and actions[0].close.code == 1009
        relay = session(max_message=10)
        actions = relay.receive(client_frame(Opcode.BINARY, b"x" * 6, fin=False) + client_frame(Opcode.CONT, b"y" * 6), 0)
        assert actions[0] == Forward([b"x" * 6], 6, 0)
        assert isinstance(actions[1], Failed) and actions[1].close.code == 1009

    def test_text_must_be_utf8(self) -> None:
        """A text message that is not UTF-8 fails with 1007, even split inside a character."""
        relay = session()
        good = "caf\u00e9".encode()
        assert forwarded(relay.receive(client_frame(Opcode.TEXT, good[:4], fin=False), 0)) == good[:4]
        assert forwarded(relay.receive(client_frame(Opcode.CONT, good[4:]), 0)) == good[4:]
        actions = relay.receive(client_frame(Opcode.TEXT, b"\xff"), 0)
        assert [a.close.code for a in actions if isinstance(a, Failed)] == [1007]
        relay = session()
        actions = relay.receive(client_frame(Opcode.TEXT, good[:4]), 0)
        assert [a.close.code for a in actions if isinstance(a, Failed)] == [1007]

    def test_base64_both_ways(self) -> None:
        """base64 sessions: text decoded on the way in, chunks sent as base64 text; bad base64 gets 1007."""
        relay = session(base64=True)
        assert forwarded(relay.receive(client_frame(Opcode.TEXT, b"aGVs") + client_frame(Opcode.TEXT, b"bG8="), 0)) \
            == b"hello"
        assert relay.send_payload(b"hi") == Write(server_frame(Opcode.TEXT, b"aGk="))
        actions = relay.receive(client_frame(Opcode.TEXT, b"a!!!"), 0)
        assert [a.close.code for a in actions if isinstance(a, Failed)] == [1007]

    def test_close_answered_in_time_or_dropped(self) -> None:
        """The gateway's close: a timer at now + close_timeout; the answer ends cleanly, silence drops."""
        relay = session()
        assert relay.send_close(1001, "going", 10.0) == [
            Write(server_frame(Opcode.CLOSE, close_payload(1001, "going"))), ArmTimer(13.0)]
        assert relay.send_close(1000, "again", 10.0) == []
        assert relay.timer(12.9) == []
        assert relay.receive(client_frame(Opcode.CLOSE, close_payload(1001)), 11) == [Drop(False), ArmTimer(14.0)]
        assert relay.clean and relay.timer(13.0) == []
        # The end itself is bounded too: a client that reads nothing keeps the queue (and the TCP end) waiting.
        assert relay.timer(14.0) == [Drop(True, "the peer did not end the connection after the close handshake")]
        relay = session()
        relay.send_close(1001, "going", 10.0)
        assert relay.timer(13.0) == [Drop(True, "the peer did not answer the close in time")]
        assert not relay.clean

    def test_pongs_held_while_the_client_does_not_read(self) -> None:
        """10,000 pings while the writer is paused leave one pong, the latest, sent on resume."""
        relay = session()
        relay.writer_paused(True)
        for i in range(10_000):
            assert relay.receive(client_frame(Opcode.PING, str(i).encode()), 0) == []
        assert relay.writer_paused(False) == [pong(b"9999")]
        assert relay.writer_paused(False) == []

    def test_pong_from_the_client_is_reported(self) -> None:
        """A pong is reported to the watch, whatever its payload."""
        assert session().receive(client_frame(Opcode.PONG, b"whatever"), 0) == [PongReceived()]


class FramesPlaybookTests:
    """The client's session towards a WebSocket hop, and the hop's own side."""

    def test_frames_pass_as_they_are(self) -> None:
        """Client frames are forwarded byte for byte (still masked), a split frame with its payload left."""
        relay = session(Carries.FRAMES)
        one = client_frame(Opcode.BINARY, b"a" * 300)
        two = client_frame(Opcode.BINARY, b"b" * 300)
        assert relay.receive(one + two[:100], 0) == [Forward([one + two[:100]], 300 + 92, 300 - 92)]
        assert relay.receive(two[100:], 0) == [Forward([two[100:]], 208, 0)]

    def test_split_header_is_never_forwarded(self) -> None:
        """A header cut anywhere is kept until whole."""
        relay = session(Carries.FRAMES)
        frame = client_frame(Opcode.BINARY, b"z" * 70_000)
        for cut in range(1, 14):
            relay = session(Carries.FRAMES)
            first = relay.receive(frame[:cut], 0)
            assert first == [] or forwarded(first) == frame[:cut] and cut >= 14
            assert forwarded(relay.receive(frame[cut:], 0)) == frame

    def test_control_frames_are_taken_out(self) -> None:
        """Pings and pongs between relayed frames are answered or reported, never forwarded."""
        relay = session(Carries.FRAMES)
        a, b = client_frame(Opcode.BINARY, b"a"), client_frame(Opcode.TEXT, b"b", fin=False)
        c = client_frame(Opcode.CONT, b"c")
        actions = relay.receive(a + client_frame(Opcode.PING, b"p") + b + client_frame(Opcode.PONG, b"") + c, 0)
        assert actions == [Forward([a], 1, 0), pong(b"p"), Forward([b], 1, 0), PongReceived(), Forward([c], 1, 0)]

    def test_ping_while_a_frame_is_relayed_to_the_client(self) -> None:
        """The client pings while a backend frame is half written to it: the pong waits for the frame's end."""
        relay = session(Carries.FRAMES)
        frame = server_frame(Opcode.BINARY, b"d" * 1000)
        assert relay.send_frames(frame[:500], 504) == [Write(frame[:500])]
        assert relay.receive(client_frame(Opcode.PING, b"1"), 0) == []
        assert relay.receive(client_frame(Opcode.PING, b"2"), 0) == []
        assert relay.send_frames(frame[500:], 0) == [Write(frame[500:]), pong(b"2")]

    def test_watch_ping_waits_for_the_frame(self) -> None:
        """The watch's ping is not put inside a relayed frame."""
        relay = session(Carries.FRAMES)
        relay.send_frames(b"\x82\x7e\x03\xe8", 1000)
        assert relay.send_ping(b"tunnelgw") == []
        assert relay.send_frames(b"d" * 1000, 0) == [Write(b"d" * 1000), Write(server_frame(Opcode.PING, b"tunnelgw"))]

    def test_close_from_the_client_while_a_frame_is_relayed_to_it(self) -> None:
        """No close reply fits inside a frame under way: passed on, then the connection is dropped."""
        relay = session(Carries.FRAMES)
        relay.send_frames(b"\x82\x7e\x03\xe8", 1000)
        assert relay.receive(client_frame(Opcode.CLOSE, close_payload(1000)), 0) == [
            CloseReceived(1000, ""), Drop(True, "close received inside a relayed frame")]
        assert not relay.clean

    def test_backend_close_while_a_frame_is_relayed_to_the_client(self) -> None:
        """The other side's close cannot cut into the frame under way: drop."""
        relay = session(Carries.FRAMES)
        relay.send_frames(b"\x82\x7e\x03\xe8", 1000)
        assert relay.send_close(1000, "", 0) == [Drop(True, "closed inside a relayed frame")]
        assert relay.send_frames(b"late", 0) == []

    def test_close_while_the_client_is_inside_a_frame(self) -> None:
        """A client frame half received, then the gateway closes: the close goes out, the frame's rest is read on."""
        relay = session(Carries.FRAMES)
        frame = client_frame(Opcode.BINARY, b"q" * 1000)
        relay.receive(frame[:100], 0)
        assert relay.send_close(1001, "bye", 0)[1] == ArmTimer(3.0)
        # The rest of the frame and the answer: the frame's rest is not mistaken for a new frame.
        assert relay.receive(frame[100:] + client_frame(Opcode.CLOSE, close_payload(1001)), 1)[-2:] == [
            Drop(False), ArmTimer(4.0)]
        assert relay.clean

    def test_hop_masks_what_it_makes_and_echoes_closes(self) -> None:
        """The hop (a client) masks its pongs and closes, echoes the backend's close and waits for its end."""
        relay = hop()
        assert relay.receive(server_frame(Opcode.PING, b"hi"), 0) == [
            Write(bytes([0x8A, 0x82]) + MASK + apply_mask(b"hi", MASK))]
        actions = relay.receive(server_frame(Opcode.CLOSE, close_payload(4000, "done")), 10)
        assert actions == [CloseReceived(4000, "done"),
                           Write(bytes([0x88, 0x86]) + MASK + apply_mask(close_payload(4000, "done"), MASK)),
                           ArmTimer(15.0)]
        assert relay.timer(15.0) == [Drop(True, "the peer did not end the connection after the close handshake")]

    def test_hop_refuses_masked_frames_from_the_backend(self) -> None:
        """A server must not mask: 1002 towards the backend."""
        actions = hop().receive(client_frame(Opcode.BINARY, b"x"), 0)
        assert isinstance(actions[0], Failed) and actions[0].close.code == 1002

    def test_hop_pong_waits_for_the_client_frame_relayed_to_the_backend(self) -> None:
        """The backend pings while a client frame is half written to it: the (masked) pong waits."""
        relay = hop()
        frame = client_frame(Opcode.BINARY, b"w" * 2000)
        relay.send_frames(frame[:1000], 1008)
        assert relay.receive(server_frame(Opcode.PING, b"b"), 0) == []
        actions = relay.send_frames(frame[1000:], 0)
        assert actions[0] == Write(frame[1000:]) and actions[1].data[:2] == bytes([0x8A, 0x81])

    def test_hop_close_from_the_backend_while_a_client_frame_is_under_way(self) -> None:
        """The backend's close while a client frame is half relayed to it: passed on, then dropped."""
        relay = hop()
        relay.send_frames(b"\x82\xfe\x03\xe8" + MASK, 1000)
        assert relay.receive(server_frame(Opcode.CLOSE, close_payload(1000)), 0) == [
            CloseReceived(1000, ""), Drop(True, "close received inside a relayed frame")]

    def test_text_checked_on_the_way_through(self) -> None:
        """A text frame that is not UTF-8 fails with 1007; the forwarded part says its frame will not end."""
        relay = session(Carries.FRAMES)
        frame = client_frame(Opcode.TEXT, b"ab\xff")
        actions = relay.receive(frame, 0)
        assert actions[0] == Forward([frame[:6]], 0, 3)
        assert isinstance(actions[1], Failed) and actions[1].close.code == 1007


# Hypothesis: any order of data, pings, pongs and at most one close, split anywhere.

_events = st.lists(st.one_of(
    st.tuples(st.just(Opcode.BINARY), st.binary(max_size=300)),
    st.tuples(st.just(Opcode.BINARY), st.binary(min_size=65536, max_size=65600)),
    st.tuples(st.just(Opcode.TEXT), st.text(max_size=20).map(str.encode)),
    st.tuples(st.just(Opcode.PING), st.binary(max_size=125)),
    st.tuples(st.just(Opcode.PONG), st.binary(max_size=125)),
), max_size=8)


def unfinished(stream: bytes) -> int:
    """Payload bytes still to come of the last frame in stream (which must not end inside a header)."""
    pos = 0
    while pos < len(stream):
        assert pos + 2 <= len(stream), "a partial header was forwarded"
        length = stream[pos + 1] & 0x7F
        head = pos + 2
        if length == 126:
            length = int.from_bytes(stream[head:head + 2], "big")
            head += 2
        elif length == 127:
            length = int.from_bytes(stream[head:head + 8], "big")
            head += 8
        if stream[pos + 1] & 0x80:
            head += 4
        assert head <= len(stream), "a partial header was forwarded"
        pos = head + length
    return pos - len(stream)


def _replay(relay: SessionRelay, stream: bytes, cuts: list[int]) -> list[Action]:
    actions: list[Action] = []
    start = 0
    for cut in sorted(set(c % (len(stream) + 1) for c in cuts)) + [len(stream)]:
        actions += relay.receive(stream[start:cut], 0)
        start = cut
    return actions


@settings(max_examples=150, deadline=None)
@given(_events, st.booleans(), st.lists(st.integers(min_value=0), max_size=6), st.booleans())
def test_any_order_and_split_payload(events: list[tuple[Opcode, bytes]], close: bool, cuts: list[int],
                                     paused: bool) -> None:
    """Payload relay: data in order, a pong per ping (or the latest, held), pongs reported, the close last."""
    relay = session()
    relay.writer_paused(paused)
    stream = b"".join(client_frame(op, data) for op, data in events)
    if close:
        stream += client_frame(Opcode.CLOSE, close_payload(1000, "end")) + client_frame(Opcode.BINARY, b"ignored")
    actions = _replay(relay, stream, cuts)
    assert forwarded(actions) == b"".join(d for op, d in events if op in (Opcode.BINARY, Opcode.TEXT))
    pings = [d for op, d in events if op == Opcode.PING]
    pongs = [a for a in actions if isinstance(a, Write) and a.data[0] == 0x8A]
    if paused:
        assert pongs == []
        resumed = relay.writer_paused(False)
        assert resumed == ([pong(pings[-1])] if pings and not close else [])
    else:
        assert pongs == [pong(p) for p in pings]
    assert sum(isinstance(a, PongReceived) for a in actions) == sum(op == Opcode.PONG for op, _ in events)
    if close:
        assert actions[-4:] == [CloseReceived(1000, "end"), Write(server_frame(Opcode.CLOSE, close_payload(1000))),
                                Drop(False), ArmTimer(3.0)]
    assert not any(isinstance(a, Failed) for a in actions)


@settings(max_examples=150, deadline=None)
@given(_events, st.lists(st.integers(min_value=0), max_size=6), st.integers(min_value=0, max_value=9))
def test_any_order_and_split_frames(events: list[tuple[Opcode, bytes]], cuts: list[int], close_at: int) -> None:
    """
    Frame relay (both roles), a close anywhere among the frames: the data
    frames before it come out byte for byte, never a partial header, with
    left exact; the close is passed on once and answered; nothing after it moves.
    """
    for role in (Role.SERVER, Role.CLIENT):
        make = client_frame if role is Role.SERVER else server_frame
        relay = session(Carries.FRAMES) if role is Role.SERVER else hop()
        frames = [make(op, data) for op, data in events]
        closing = close_at <= len(frames)
        before = frames[:close_at] if closing else frames
        stream = b"".join(before)
        if closing:
            stream += make(Opcode.CLOSE, close_payload(4000, "x")) + b"".join(frames[close_at:])
        actions = _replay(relay, stream, cuts)
        data_before = [f for f, (op, _) in zip(before, events) if op in (Opcode.BINARY, Opcode.TEXT)]
        assert forwarded(actions) == b"".join(data_before)
        # After each Forward, left is exactly the unfinished payload of the last
        # frame forwarded so far; the other side's relay, fed it, agrees: a
        # ping waits inside a frame and goes out at its end, never inside it.
        other = hop() if role is Role.SERVER else session(Carries.FRAMES)
        so_far = b""
        held = False
        for action in actions:
            if isinstance(action, Forward):
                joined = b"".join(action.chunks)
                so_far += joined
                assert unfinished(so_far) == action.left
                out = other.send_frames(joined, action.left)
                assert out[0] == Write(joined)
                assert len(out) == (2 if held and not action.left else 1)
                held = held and action.left > 0
                ping = other.send_ping(b"p")
                assert (ping == []) is (action.left > 0)
                held = held or action.left > 0
        assert unfinished(so_far) == 0 and not held
        assert not any(isinstance(a, Failed) for a in actions)
        received = [a for a in actions if isinstance(a, CloseReceived)]
        assert received == ([CloseReceived(4000, "x")] if closing else [])
        if closing:
            assert relay.state is RelayState.CLOSING and relay.clean


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=2000), st.integers(min_value=0, max_value=2000),
       st.sampled_from(["ping", "close", "backend_close", "gateway_close"]))
def test_control_events_while_a_frame_is_in_flight_to_the_client(size: int, sent: int, event: str) -> None:
    """Whatever arrives while a frame is half written to the client, no control frame lands inside it."""
    relay = session(Carries.FRAMES)
    frame = server_frame(Opcode.BINARY, b"f" * size)
    sent = min(sent, len(frame) - 1)
    header = len(frame) - size
    sent = max(sent, header)
    writes = written(relay.send_frames(frame[:sent], len(frame) - sent))
    if event == "ping":
        writes += written(relay.receive(client_frame(Opcode.PING, b"x"), 0))
    elif event == "close":
        actions = relay.receive(client_frame(Opcode.CLOSE, close_payload(1000)), 0)
        writes += written(actions)
        assert Drop(True, "close received inside a relayed frame") in actions
    else:
        actions = relay.send_close(1000, "", 0)
        writes += written(actions)
        assert actions == [Drop(True, "closed inside a relayed frame")]
    rest = relay.send_frames(frame[sent:], 0)
    writes += written(rest)
    assert writes.startswith(frame) or event != "ping"
    if event == "ping":
        assert writes == frame + server_frame(Opcode.PONG, b"x")
    else:
        assert writes == frame[:sent]


class InFlightPlaybookTests:
    """Pongs and the gateway's own closes while a frame is in flight, each way."""

    def test_pong_while_a_frame_is_relayed_to_the_client(self) -> None:
        """A pong from the client while a backend frame is half written: reported, nothing written."""
        relay = session(Carries.FRAMES)
        relay.send_frames(b"\x82\x7e\x03\xe8", 1000)
        assert relay.receive(client_frame(Opcode.PONG, b"tunnelgw"), 0) == [PongReceived()]

    def test_pong_from_the_backend_while_a_client_frame_is_relayed_to_it(self) -> None:
        """A pong from the backend while a client frame is half written to it: reported, nothing written."""
        relay = hop()
        relay.send_frames(b"\x82\xfe\x03\xe8" + MASK, 1000)
        assert relay.receive(server_frame(Opcode.PONG, b""), 0) == [PongReceived()]

    def test_gateway_close_while_a_client_frame_is_half_received(self) -> None:
        """TCP backend ended while the client is inside a frame: the close goes out, the frame's rest and a ping after it are read, not relayed nor answered."""
        relay = session()
        frame = client_frame(Opcode.BINARY, b"r" * 500)
        assert relay.receive(frame[:200], 0) == [Forward([b"r" * 192], 192, 308)]
        assert relay.send_close(1000, "backend closed the connection", 1.0)[1] == ArmTimer(4.0)
        rest = frame[200:] + client_frame(Opcode.PING, b"late") + client_frame(Opcode.CLOSE, close_payload(1000))
        assert relay.receive(rest, 2.0) == [Drop(False), ArmTimer(5.0)]
        assert relay.clean and relay.remote_close == (1000, "")

    def test_hop_close_from_the_client_while_a_backend_frame_is_half_received(self) -> None:
        """The client's close reaches the hop while a backend frame is half read: the close goes to the backend, the frame's rest is read on."""
        relay = hop()
        frame = server_frame(Opcode.BINARY, b"s" * 300)
        assert relay.receive(frame[:100], 0)[0].left == 300 - 96
        actions = relay.send_close(4000, "bye", 0)
        assert actions[0] == Write(bytes([0x88, 0x85]) + MASK + apply_mask(close_payload(4000, "bye"), MASK))
        assert relay.receive(frame[100:] + server_frame(Opcode.CLOSE, close_payload(4000, "bye")), 1) == [ArmTimer(6.0)]


# A state machine over every order of the events that meet a frame in flight to the client.

from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule  # noqa: E402

_FILL = 0x70  # payload bytes that, read as a header, have reserved bits set: a frame landing inside one shows


def _frames_in(stream: bytes) -> tuple[list[int], bool]:
    """The opcodes of the whole frames in a server's stream, and whether all of it parses (the last may be cut)."""
    opcodes, pos = [], 0
    while pos < len(stream):
        if len(stream) - pos < 2:
            return opcodes, True
        first, length = stream[pos], stream[pos + 1] & 0x7F
        if first & 0x70 or (first & 0x0F) not in (0, 1, 2, 8, 9, 10) or stream[pos + 1] & 0x80:
            return opcodes, False
        head = pos + 2
        if length == 126:
            head, length = pos + 4, int.from_bytes(stream[pos + 2:pos + 4], "big")
        elif length == 127:
            head, length = pos + 10, int.from_bytes(stream[pos + 2:pos + 10], "big")
        if head + length > len(stream):
            return opcodes, True
        opcodes.append(first & 0x0F)
        pos = head + length
    return opcodes, True


class InFlightMachine(RuleBasedStateMachine):
    """A WebSocket backend's frames reach the client in pieces while pings, pongs, pauses and closes come in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.hop = hop()
        self.client = session(Carries.FRAMES)
        self.backend = b"".join(server_frame(Opcode.BINARY, bytes([_FILL]) * n) for n in (3, 200, 70_000, 0, 1000))
        self.sent = 0
        self.written = b""
        self.dropped = False
        self.paused = False
        self.pings = 0

    def _out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Write):
                assert not self.dropped
                self.written += action.data + action.payload
            elif isinstance(action, Drop):
                self.dropped = True

    @precondition(lambda self: self.sent < len(self.backend))
    @rule(size=st.integers(min_value=1, max_value=30_000))
    def backend_piece(self, size: int) -> None:
        """Some of the backend's frames arrive at the hop and go on to the client."""
        piece = self.backend[self.sent:self.sent + size]
        self.sent += len(piece)
        for action in self.hop.receive(piece, 0):
            if isinstance(action, Forward):
                self._out(self.client.send_frames(b"".join(action.chunks), action.left))

    @rule(payload=st.binary(max_size=20))
    def client_ping(self, payload: bytes) -> None:
        """The client pings."""
        self.pings += 1
        self._out(self.client.receive(client_frame(Opcode.PING, payload), 0))

    @rule()
    def client_pong(self) -> None:
        """The client answers a ping of the watch (reported while the connection is read)."""
        reading = self.client.state in (RelayState.OPEN, RelayState.CLOSE_SENT)
        assert self.client.receive(client_frame(Opcode.PONG, b"tunnelgw"), 0) == ([PongReceived()] if reading else [])

    @rule()
    def watch_ping(self) -> None:
        """The watch pings the client."""
        self._out(self.client.send_ping(b"tunnelgw"))

    @rule()
    def toggle_writer(self) -> None:
        """The client's write buffer fills or drains."""
        self.paused = not self.paused
        self._out(self.client.writer_paused(self.paused))

    @precondition(lambda self: self.sent > 0)
    @rule()
    def gateway_close(self) -> None:
        """The backend's end or the admin closes the client."""
        self._out(self.client.send_close(1001, "bye", 0))

    @precondition(lambda self: self.sent > 0)
    @rule()
    def client_close(self) -> None:
        """The client closes."""
        self._out(self.client.receive(client_frame(Opcode.CLOSE, close_payload(1000)), 0))

    @invariant()
    def no_frame_inside_a_frame(self) -> None:
        """What the client got parses as whole frames: nothing ever landed inside a relayed frame."""
        opcodes, whole = _frames_in(self.written)
        assert whole
        assert opcodes.count(10) <= self.pings
        assert opcodes.count(8) <= 1


TestInFlight = InFlightMachine.TestCase
TestInFlight.settings = settings(max_examples=400, stateful_step_count=30, deadline=None)


def _masked_frames_in(stream: bytes) -> tuple[list[int], bool]:
    """As :func:`_frames_in`, for a client's (masked) stream."""
    opcodes, pos = [], 0
    while pos < len(stream):
        if len(stream) - pos < 2:
            return opcodes, True
        first, length = stream[pos], stream[pos + 1] & 0x7F
        if first & 0x70 or (first & 0x0F) not in (0, 1, 2, 8, 9, 10) or not stream[pos + 1] & 0x80:
            return opcodes, False
        head = pos + 6
        if length == 126:
            head, length = pos + 8, int.from_bytes(stream[pos + 2:pos + 4], "big")
        elif length == 127:
            head, length = pos + 14, int.from_bytes(stream[pos + 2:pos + 10], "big")
        if head + length > len(stream):
            return opcodes, True
        opcodes.append(first & 0x0F)
        pos = head + length
    return opcodes, True


class HopInFlightMachine(RuleBasedStateMachine):
    """The client's frames reach the backend in pieces while the backend pings, pongs and closes, and the gateway closes, in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.client = session(Carries.FRAMES)
        self.hop = hop()
        # Masked with a zero key, so that the fill's reserved bits stay set on the wire.
        self.stream = b"".join(_masked_fill(n) for n in (5, 300, 70_000, 0, 2000))
        self.sent = 0
        self.written = b""
        self.dropped = False
        self.pings = 0

    def _out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Write):
                assert not self.dropped
                self.written += action.data + action.payload
            elif isinstance(action, Drop):
                self.dropped = True

    @precondition(lambda self: self.sent < len(self.stream))
    @rule(size=st.integers(min_value=1, max_value=30_000))
    def client_piece(self, size: int) -> None:
        """Some of the client's frames arrive and go on to the backend."""
        piece = self.stream[self.sent:self.sent + size]
        self.sent += len(piece)
        for action in self.client.receive(piece, 0):
            if isinstance(action, Forward):
                self._out(self.hop.send_frames(b"".join(action.chunks), action.left))

    @rule(payload=st.binary(max_size=20))
    def backend_ping(self, payload: bytes) -> None:
        """The backend pings."""
        self.pings += 1
        self._out(self.hop.receive(server_frame(Opcode.PING, payload), 0))

    @rule()
    def backend_pong(self) -> None:
        """The backend sends a pong (unasked, as RFC 6455 allows)."""
        self._out(self.hop.receive(server_frame(Opcode.PONG, b""), 0))

    @precondition(lambda self: self.sent > 0)
    @rule()
    def gateway_close(self) -> None:
        """The session ends: the hop closes the backend."""
        self._out(self.hop.send_close(1001, "session closed by the gateway", 0))

    @precondition(lambda self: self.sent > 0)
    @rule()
    def backend_close(self) -> None:
        """The backend closes."""
        self._out(self.hop.receive(server_frame(Opcode.CLOSE, close_payload(1000)), 0))

    @invariant()
    def no_frame_inside_a_frame(self) -> None:
        """What the backend got parses as whole masked frames: nothing landed inside a relayed frame."""
        opcodes, whole = _masked_frames_in(self.written)
        assert whole
        assert opcodes.count(10) <= self.pings
        assert opcodes.count(8) <= 1


def _masked_fill(n: int) -> bytes:
    """A masked binary client frame whose payload bytes, read as a header, have reserved bits set."""
    mask = b"\x00\x00\x00\x00"
    return bytes([0x82]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big") if n < 65536
                            else bytes([0x80 | 127]) + n.to_bytes(8, "big")) + mask + bytes([_FILL]) * n


TestHopInFlight = HopInFlightMachine.TestCase
TestHopInFlight.settings = settings(max_examples=400, stateful_step_count=30, deadline=None)
