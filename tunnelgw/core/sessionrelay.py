"""
One side of a session's relay, sans-IO: a WebSocket connection after its
opening handshake, as :class:`SessionRelay` keeps it.  The client's session
(:class:`tunnelgw.session.GatewaySession`, role :attr:`Role.SERVER`) and a
WebSocket hop (:class:`tunnelgw.backends.websocket.BackendWebSocket`, role
:attr:`Role.CLIENT`) are two uses of this one class.

Bytes and events go in (:meth:`SessionRelay.receive`, :meth:`~SessionRelay.send_payload`,
:meth:`~SessionRelay.send_frames`, :meth:`~SessionRelay.send_close`,
:meth:`~SessionRelay.timer`...), typed actions come out (:class:`Write`,
:class:`Forward`, :class:`CloseReceived`, :class:`Failed`, :class:`PongReceived`,
:class:`Drop`, :class:`ArmTimer`); the glue carries them out in order.  Time
is passed in as ``now``.

The rules written once here:

- data frames are forwarded as they stream in, never reassembled: as whole
  frames byte for byte (:attr:`Carries.FRAMES`, a WebSocket on the other
  side: the masking of each direction already fits) or as unmasked payload
  bytes (:attr:`Carries.PAYLOAD`, a byte stream; base64 text decoded for
  ``base64`` sessions); an incomplete header is never forwarded;
- control frames are this connection's: a ping is answered, but never
  inside a frame still being relayed towards the peer nor while the peer is
  not reading (then the latest pong waits: at most one); the watch's pings
  wait likewise;
- a close never lands inside a frame under way: the connection is dropped
  instead (the frame's rest will never come);
- a received close is checked (1002 for a bad code or length, 1007 for a
  reason that is not UTF-8), answered, and passed on; a sent close that is
  not answered within ``close_timeout`` drops the connection, and so does a
  TCP end (after the close handshake or a failure) not over within it;
- the frame and message limits (1009), RSV bits, opcodes, masking,
  fragmentation and UTF-8 of text messages are checked (1002, 1007).
"""

from __future__ import annotations

import binascii
import codecs
import enum
import os
import struct
from dataclasses import dataclass
from typing import Callable, Optional, Union

from tunnelgw.core.frames import Unmask, frame_header, size_violation
from tunnelgw.core.relay import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    Base64Decoder,
    Close,
    check_close_frame,
    close_reason,
)

__all__ = [
    "Action",
    "ArmTimer",
    "Carries",
    "CloseReceived",
    "Drop",
    "Failed",
    "Forward",
    "PongReceived",
    "RelayState",
    "Role",
    "SessionRelay",
    "Write",
]

_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0, 1, 2, 8, 9, 10
_MASKED = 0x80
_FINAL_BINARY = 0x82  # FIN, no reserved bits, binary
_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")


class Carries(enum.Enum):
    """What a link carries between a session's two sides."""

    #: Unmasked payload bytes (a byte stream backend: each chunk one message back).
    PAYLOAD = "payload"
    #: Whole WebSocket frames as they are (a WebSocket hop).
    FRAMES = "frames"


class Role(enum.Enum):
    """Which end of the WebSocket connection the gateway is."""

    #: The gateway is the server: the client's session (masked frames in, unmasked out).
    SERVER = "server"
    #: The gateway is the client: a hop to a WebSocket backend (unmasked in, masked out).
    CLIENT = "client"


class RelayState(enum.Enum):
    """The connection's one state."""

    #: Frames flow both ways.
    OPEN = "open"
    #: The gateway sent a close and waits for the peer's.
    CLOSE_SENT = "close_sent"
    #: The close handshake is over (or the connection failed): only the TCP end is left.
    CLOSING = "closing"
    #: The connection is gone.
    GONE = "gone"


@dataclass(slots=True)
class Write:
    """Bytes to write to this connection's peer, in order."""

    data: bytes
    #: A payload to write right behind data (a frame's header and its payload, without a join).
    payload: bytes = b""


@dataclass(slots=True)
class Forward:
    """
    What the other side gets from this peer: whole frames (:attr:`Carries.FRAMES`)
    or payload pieces (:attr:`Carries.PAYLOAD`).

    :ivar chunks: the bytes, in order.
    :ivar payload: how many payload bytes they carry.
    :ivar left: payload bytes of the last forwarded frame still to come (0: a frame boundary).
    """

    chunks: list[bytes]
    payload: int
    left: int


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer sent a valid close (code None: an empty close); it was answered and is to be passed on."""

    code: Optional[int]
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The peer broke the protocol: close is what it was sent (or would have been) and what the session records."""

    close: Close


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The peer answered a ping (any pong proves it reads)."""


@dataclass(frozen=True, slots=True)
class Drop:
    """End the connection: at once (abort) or after what is queued; why, when it is not a clean end."""

    abort: bool
    why: str = ""


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Call :meth:`SessionRelay.timer` at (a time on the clock ``now`` is read from)."""

    at: float


Action = Union[Write, Forward, CloseReceived, Failed, PongReceived, Drop, ArmTimer]


def _random_mask() -> bytes:
    return os.urandom(4)


class SessionRelay:
    """
    One WebSocket connection of a session after its opening handshake.

    :param role: which end the gateway is.
    :param carries: what the other side takes from this peer.
    :param unmask: the XOR function (also masks, for :attr:`Role.CLIENT`).
    :param max_frame: the largest frame payload taken (0: no limit); max_message likewise.
    :param base64: decode received data frames as base64 text, and send
        payloads as base64 text messages (``base64`` sessions on byte streams).
    :param close_timeout: seconds the peer has to answer a close, and the
        connection has to end after the close handshake or a failure (then it is aborted).
    :param mask_key: makes the masking key of each frame the gateway makes (Role.CLIENT).
    """

    __slots__ = ("role", "carries", "state", "_unmask", "_masked_in", "_max_frame", "_max_message", "_limit", "_decoder",
                 "_close_timeout", "_mask_key", "_carry", "_need", "_mask", "_control", "_control_opcode", "_fin",
                 "_in_message", "_message_size", "_text", "_send_left", "_writer_paused", "_held_pong",
                 "_held_ping", "_deadline", "clean", "remote_close")

    def __init__(self, role: Role, carries: Carries, unmask: Unmask, max_frame: int = 0, max_message: int = 0,
                 base64: bool = False, close_timeout: float = 3.0,
                 mask_key: Callable[[], bytes] = _random_mask) -> None:
        self.role = role
        self.carries = carries
        self.state = RelayState.OPEN
        self._unmask = unmask
        self._masked_in = role is Role.SERVER
        self._max_frame = max_frame
        self._max_message = max_message
        # Frames up to this size take the fast path (larger ones are checked against both limits).
        self._limit = min(n for n in (max_frame, max_message, 1 << 63) if n)
        self._decoder: Optional[Base64Decoder] = Base64Decoder() if base64 else None
        self._close_timeout = close_timeout
        self._mask_key = mask_key
        # Receiving: the frame under way.
        self._carry = b""  # the start of a header split over reads
        self._need = 0  # payload bytes of the current frame still to come
        self._mask = b""  # the current frame's mask, rotated to where its payload resumes
        self._control: Optional[bytearray] = None  # a control frame's payload being gathered
        self._control_opcode = 0
        self._fin = True
        self._in_message = False  # inside a fragmented message
        self._message_size = 0
        self._text: Optional[codecs.BufferedIncrementalDecoder] = None  # UTF-8 check of a text message
        # Sending: the frame under way towards the peer, and what waits for its end.
        self._send_left = 0
        self._writer_paused = False
        self._held_pong: Optional[bytes] = None
        self._held_ping: Optional[bytes] = None
        self._deadline: Optional[float] = None
        #: Whether the close handshake completed (both closes seen).
        self.clean = False
        #: The peer's close (code, reason), once received.
        self.remote_close: Optional[tuple[Optional[int], str]] = None

    # Bytes from the peer.

    def receive(self, data: bytes, now: float) -> list[Action]:
        """Bytes the peer sent: what to forward, answer and do, in order."""
        if self.state is not RelayState.OPEN and self.state is not RelayState.CLOSE_SENT:
            return []
        if self._carry:
            data = self._carry + data
            self._carry = b""
        actions: list[Action] = []
        # After the gateway's close, frames are read (to find the answer) but go nowhere.
        forwarding = self.state is RelayState.OPEN
        frames = self.carries is Carries.FRAMES
        chunks: list[bytes] = []
        payload = 0
        start = 0  # where the frame bytes not yet forwarded begin (FRAMES)
        pos = 0
        end = len(data)
        masked_in = self._masked_in
        mask_bit = _MASKED if masked_in else 0
        plain = self._decoder is None
        limit = self._limit
        view = memoryview(data)
        unmask = self._unmask
        append = chunks.append
        while pos < end:
            need = self._need
            if need:
                stop = pos + need if need <= end - pos else end
                take = stop - pos
                self._need = need - take
                control = self._control
                if control is not None:
                    control += data[pos:stop]
                    pos = start = stop
                    if not self._need:
                        self._control = None
                        if (chunks or payload) and forwarding:
                            actions.append(Forward(chunks, payload, 0))
                        chunks, payload = [], 0
                        append = chunks.append
                        if not self._control_frame(bytes(control), actions, now):
                            return actions
                    continue
                text = self._text
                if not frames or text is not None:
                    if masked_in:
                        piece = self._unmask(view[pos:stop], self._mask)
                        shift = take & 3
                        if shift:
                            self._mask = self._mask[shift:] + self._mask[:shift]
                    else:
                        piece = data if take == end else data[pos:stop]
                    if text is not None:
                        try:
                            text.decode(piece)
                        except UnicodeDecodeError:
                            return self._fail(actions, now, chunks, payload, data, start, pos,
                                              Close(CLOSE_INVALID_PAYLOAD, "text message is not UTF-8"),
                                              take + self._need)
                    if not frames:
                        if self._decoder is not None:
                            try:
                                piece = self._decoder.feed(piece)
                            except ValueError as e:
                                return self._fail(actions, now, chunks, payload, data, start, pos,
                                                  Close(CLOSE_INVALID_PAYLOAD, str(e)))
                        if piece:
                            chunks.append(piece)
                pos = stop
                payload += take
                if not self._need and self._fin:
                    failed = self._message_end()
                    if failed is not None:
                        return self._fail(actions, now, chunks, payload, data, start, pos, failed)
                continue
            # A frame header (kept whole before anything of it is forwarded).
            if end - pos < 2:
                break
            first = data[pos]
            second = data[pos + 1]
            length = second & 0x7F
            head = pos + 2
            if length == 126:
                head = pos + 4
                if end < head:
                    break
                length = data[pos + 2] << 8 | data[pos + 3]
            elif length == 127:
                head = pos + 10
                if end < head:
                    break
                length = int.from_bytes(data[pos + 2:head], "big")
            if second & _MASKED:
                head += 4
            if end < head:
                break
            stop = head + length
            if first == _FINAL_BINARY and second & _MASKED == mask_bit and stop <= end and length <= limit \
                    and plain and not self._in_message:
                # The common case, whole in this read: a final binary frame within the limits.
                if not frames and length:
                    append(unmask(view[head:stop], data[head - 4:head]) if masked_in else data[head:stop])
                pos = stop
                payload += length
                continue
            opcode = first & 0x0F
            fin = first & 0x80 != 0
            violation = self._check_header(first, second, opcode, fin, length)
            if violation is not None:
                return self._fail(actions, now, chunks, payload, data, start, pos, violation)
            if masked_in:
                self._mask = data[head - 4:head]
            if opcode >= 8:
                if frames and start < pos:
                    chunks.append(data[start:pos])
                pos = start = head
                self._control_opcode = opcode
                if length:
                    self._control = bytearray()
                    self._need = length
                    continue
                if (chunks or payload) and forwarding:
                    actions.append(Forward(chunks, payload, 0))
                chunks, payload = [], 0
                append = chunks.append
                if not self._control_frame(b"", actions, now):
                    return actions
                continue
            if opcode != _CONT:
                self._in_message = True
                self._message_size = 0
                self._text = _utf8() if opcode == _TEXT and self._decoder is None else None
            self._message_size += length
            too_big = size_violation(length, self._message_size, self._max_frame, self._max_message)
            if too_big is not None:
                return self._fail(actions, now, chunks, payload, data, start, pos, Close(CLOSE_TOO_BIG, too_big))
            self._fin = fin
            self._need = length
            pos = head
            if not length and fin:
                failed = self._message_end()
                if failed is not None:
                    return self._fail(actions, now, chunks, payload, data, start, pos, failed)
        if pos < end:
            self._carry = data[pos:]
        if frames and start < pos:
            chunks.append(data if start == 0 and pos == end else data[start:pos])
        if (chunks or payload) and forwarding:
            actions.append(Forward(chunks, payload, self._need if self._control is None else 0))
        return actions

    def _check_header(self, first: int, second: int, opcode: int, fin: bool, length: int) -> Optional[Close]:
        if first & 0x70:
            return Close(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was agreed)")
        if bool(second & _MASKED) is not self._masked_in:
            return Close(CLOSE_PROTOCOL_ERROR, "frame masked wrongly for its direction")
        if length >> 63:
            return Close(CLOSE_PROTOCOL_ERROR, "frame length out of range")
        if opcode >= 8:
            if opcode > _PONG:
                return Close(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            if not fin or length > 125:
                return Close(CLOSE_PROTOCOL_ERROR, "control frame fragmented or longer than 125 bytes")
            return None
        if opcode > _BINARY:
            return Close(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if opcode == _CONT and not self._in_message:
            return Close(CLOSE_PROTOCOL_ERROR, "continuation frame outside a fragmented message")
        if opcode != _CONT and self._in_message:
            return Close(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented message")
        return None

    def _message_end(self) -> Optional[Close]:
        self._in_message = False
        text, self._text = self._text, None
        if text is not None:
            try:
                text.decode(b"", True)
            except UnicodeDecodeError:
                return Close(CLOSE_INVALID_PAYLOAD, "text message is not UTF-8")
        if self._decoder is not None:
            try:
                self._decoder.end_message()
            except ValueError as e:
                return Close(CLOSE_INVALID_PAYLOAD, str(e))
        return None

    def _control_frame(self, payload: bytes, actions: list[Action], now: float) -> bool:
        """Act on a whole control frame; False when nothing more is to be read."""
        if self._masked_in and payload:
            payload = self._unmask(payload, self._mask)
        opcode = self._control_opcode
        if opcode == _PING:
            if self.state is RelayState.OPEN:
                self._pong(payload, actions)
            return True
        if opcode == _PONG:
            actions.append(PongReceived())
            return True
        # A close.
        if len(payload) == 1:
            return self._fail_close(actions, now, Close(CLOSE_PROTOCOL_ERROR, "close frame of one byte"))
        code: Optional[int] = struct.unpack("!H", payload[:2])[0] if payload else None
        raw_reason = payload[2:]
        violation = check_close_frame(code, raw_reason)
        if violation is not None:
            return self._fail_close(actions, now, violation)
        reason = raw_reason.decode("utf-8")
        self.remote_close = (code, reason)
        if self.state is RelayState.CLOSE_SENT:
            # The answer to our close.
            self.clean = True
            self.state = RelayState.CLOSING
            self._deadline = None
            self._end_after_handshake(actions, now)
            return False
        actions.append(CloseReceived(code, reason))
        self.state = RelayState.CLOSING
        if self._send_left:
            # The reply would land inside an unfinished frame.
            actions.append(Drop(True, "close received inside a relayed frame"))
            return False
        self.clean = True
        if self.role is Role.SERVER:
            reply = _close_payload(CLOSE_NORMAL, "") if code is not None else b""
        else:
            reply = _close_payload(code, reason) if code is not None else b""
        actions.append(Write(self._frame(_CLOSE, reply)))
        self._end_after_handshake(actions, now)
        return False

    def _end_after_handshake(self, actions: list[Action], now: float) -> None:
        if self.role is Role.SERVER:
            actions.append(Drop(False))  # a server ends the TCP connection (RFC 6455 7.1.1)
        # A client waits for the server to end it; a server's end waits for a
        # queue the peer may never read: either way, at the deadline it is aborted.
        self._deadline = now + self._close_timeout
        actions.append(ArmTimer(self._deadline))

    def _fail_close(self, actions: list[Action], now: float, close: Close) -> bool:
        self._fail_now(actions, now, close)
        return False

    def _fail(self, actions: list[Action], now: float, chunks: list[bytes], payload: int, data: bytes, start: int,
              pos: int, close: Close, left: int = 0) -> list[Action]:
        """
        The peer broke the protocol at pos: forward what came before it (left:
        payload bytes of the last forwarded frame that will never come), then fail.
        """
        self._carry = b""
        if self.carries is Carries.FRAMES and start < pos:
            chunks.append(data[start:pos])
        if (chunks or payload) and self.state is RelayState.OPEN:
            actions.append(Forward(chunks, payload, left if self.carries is Carries.FRAMES else 0))
        self._fail_now(actions, now, close)
        return actions

    def _fail_now(self, actions: list[Action], now: float, close: Close) -> None:
        was = self.state
        self.state = RelayState.CLOSING
        self._need = 0
        self._control = None
        if was is not RelayState.OPEN:
            actions.append(Drop(False, close.reason))
            return
        actions.append(Failed(close))
        if self._send_left:
            actions.append(Drop(True, close.reason))
            return
        actions.append(Write(self._frame(_CLOSE, _close_payload(close.code, close.reason))))
        actions.append(Drop(False, close.reason))
        # The close may sit behind a queue the peer never reads: a bound of its own.
        self._deadline = now + self._close_timeout
        actions.append(ArmTimer(self._deadline))

    def _pong(self, payload: bytes, actions: list[Action]) -> None:
        if self._send_left or self._writer_paused:
            self._held_pong = payload  # only the latest needs an answer (RFC 6455 5.5.3)
        else:
            actions.append(Write(self._frame(_PONG, payload)))

    # Towards the peer.

    def send_payload(self, data: bytes) -> Optional[Write]:
        """
        A chunk of the other side's byte stream: the one write of one binary
        message (base64 text for base64 sessions), or None when nothing can
        be sent any more.  (One chunk is always one whole frame: no list.)
        """
        if self.state is not RelayState.OPEN or self._send_left:
            return None
        if self._decoder is not None:
            return Write(self._frame(_TEXT, binascii.b2a_base64(data, newline=False)))
        if self.role is Role.SERVER:
            n = len(data)
            # The header of a final binary frame, without frame_header's checks (the hot path).
            head = bytes((_FINAL_BINARY, n)) if n < 126 else _HEAD16.pack(_FINAL_BINARY, 126, n) if n < 65536 \
                else _HEAD64.pack(_FINAL_BINARY, 127, n)
            return Write(head, data)
        return Write(self._frame(_BINARY, data))

    def send_frames(self, frames: bytes, left: int) -> list[Action]:
        """
        Whole frames from the other side, as they are (the last may go on:
        left payload bytes of it are still to come).
        """
        if self.state is not RelayState.OPEN:
            return []
        self._send_left = left
        actions: list[Action] = [Write(frames)]
        if not left and (self._held_pong is not None or self._held_ping is not None):
            self._flush_held(actions)
        return actions

    def send_ping(self, payload: bytes) -> list[Action]:
        """The watch's ping (it waits for the end of a frame under way, or for the peer to read)."""
        if self.state is not RelayState.OPEN:
            return []
        if self._send_left or self._writer_paused:
            self._held_ping = payload
            return []
        return [Write(self._frame(_PING, payload))]

    def writer_paused(self, paused: bool) -> list[Action]:
        """The peer's write buffer filled (True) or drained (False): pongs wait meanwhile."""
        self._writer_paused = paused
        actions: list[Action] = []
        if not paused and self.state is RelayState.OPEN and not self._send_left:
            self._flush_held(actions)
        return actions

    def _flush_held(self, actions: list[Action]) -> None:
        if self._writer_paused:
            return
        pong, self._held_pong = self._held_pong, None
        if pong is not None:
            actions.append(Write(self._frame(_PONG, pong)))
        ping, self._held_ping = self._held_ping, None
        if ping is not None:
            actions.append(Write(self._frame(_PING, ping)))

    def send_close(self, code: Optional[int], reason: str, now: float) -> list[Action]:
        """
        Close towards the peer (code None: an empty close), answered within
        ``close_timeout``; inside a frame under way the connection is dropped.
        """
        if self.state is not RelayState.OPEN:
            return []
        if self._send_left:
            self.state = RelayState.CLOSING
            return [Drop(True, "closed inside a relayed frame")]
        self.state = RelayState.CLOSE_SENT
        self._deadline = now + self._close_timeout
        payload = _close_payload(code, close_reason(reason)) if code is not None else b""
        return [Write(self._frame(_CLOSE, payload)), ArmTimer(self._deadline)]

    def timer(self, now: float) -> list[Action]:
        """An :class:`ArmTimer` time came: drop a peer that did not answer or end in time."""
        deadline = self._deadline
        if deadline is None or now < deadline or self.state is RelayState.GONE:
            return []
        self._deadline = None
        if self.state is RelayState.CLOSE_SENT:
            self.state = RelayState.CLOSING
            return [Drop(True, "the peer did not answer the close in time")]
        return [Drop(True, "the peer did not end the connection after the close handshake")]

    def connection_lost(self) -> None:
        """The connection is gone (clean only when the close handshake completed)."""
        self.state = RelayState.GONE
        self._deadline = None
        self._held_pong = self._held_ping = None

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        if self.role is Role.SERVER:
            return frame_header(opcode, True, len(payload)) + payload
        mask = self._mask_key()
        return frame_header(opcode, True, len(payload), mask) + (self._unmask(payload, mask) if payload else b"")


def _utf8() -> codecs.BufferedIncrementalDecoder:
    decoder: codecs.BufferedIncrementalDecoder = codecs.getincrementaldecoder("utf-8")("strict")
    return decoder


def _close_payload(code: Optional[int], reason: str) -> bytes:
    if code is None:
        return b""
    return struct.pack("!H", code) + close_reason(reason).encode("utf-8")
