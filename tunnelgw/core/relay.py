"""
Per-session relay policy, free of I/O: subprotocols, payload codecs, the
statuses and close codes a session ends with, and what a log line reports.

The Twisted/Autobahn glue in :mod:`tunnelgw.session` feeds events in and
carries the answers out; nothing here knows about sockets or the clock
(time is passed in as ``now``).
"""

from __future__ import annotations

import binascii
import enum
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from tunnelgw.core.routing import Reject

__all__ = [
    "BACKEND_CLOSE_GRACE",
    "BACKEND_EARLY_LIMIT",
    "CLOSE_BACKEND_FAILED",
    "CLOSE_NORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_POLICY",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TIMEOUT",
    "CLOSE_TOO_BIG",
    "RELAY_WINDOW",
    "Base64Decoder",
    "Heartbeat",
    "IdleWatch",
    "Close",
    "ConnectFailure",
    "SessionRecord",
    "backend_ended",
    "choose_subprotocol",
    "check_close_frame",
    "close_reason",
    "connect_rejection",
    "idle_close",
]

#: Seconds a backend gets to take the bytes still queued for it after the
#: client has gone, before its connection is aborted.  A backend that stops
#: reading can therefore never hold a session (or its memory) open.
BACKEND_CLOSE_GRACE = 5.0

#: Bytes a session reads from one side at once, and queues for the other
#: side before it pauses the reading side (per direction; Twisted's default
#: is 64 KiB).  Larger reads mean fewer frames and fewer reactor turns.
RELAY_WINDOW = 128 * 1024

#: Bytes a WebSocket backend may send after its 101 before the session has
#: started relaying them (its reading is paused meanwhile, so one or two
#: reads at most); more fail the backend.
BACKEND_EARLY_LIMIT = 2 * RELAY_WINDOW

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_BACKEND_FAILED = 1011
CLOSE_BAD_GATEWAY = 1014

# WebSocket close frames carry at most 125 bytes: 2 for the code, 123 for the reason.
_MAX_REASON_BYTES = 123

#: Subprotocols of TCP routes, in order of preference: ``binary`` relays bytes
#: as binary messages; ``base64`` (websockify's convention for old clients)
#: relays them as base64 text both ways.
TCP_SUBPROTOCOLS = ("binary", "base64")


@dataclass(frozen=True)
class Close:
    """A WebSocket close to send: code and a reason of at most 123 UTF-8 bytes."""

    code: int
    reason: str


#: Seconds a client has to answer the gateway's close frame before its
#: connection is dropped (a reactor timer armed when the close is sent).
CLOSE_TIMEOUT = 3.0

#: Close codes a peer may send (RFC 6455 section 7.4): the registered ones
#: below 3000 and 3000-4999 for libraries and applications.
_SENDABLE_BELOW_3000 = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


def check_close_frame(code: Optional[int], reason: Optional[bytes]) -> Optional[Close]:
    """
    Check a received close frame's code and reason.

    :returns: None when valid; else the close to answer with: 1002 for a code
        that may not be sent (below 1000, 1004-1006, 1015, unassigned, 5000
        and above), 1007 for a reason that is not UTF-8.
    """
    if code is not None and not (code in _SENDABLE_BELOW_3000 or 3000 <= code <= 4999):
        return Close(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    if reason:
        try:
            reason.decode("utf-8")
        except UnicodeDecodeError:
            return Close(CLOSE_INVALID_PAYLOAD, "close reason is not UTF-8")
    return None


def close_reason(text: str) -> str:
    """Shorten text to fit a WebSocket close frame, on a UTF-8 character boundary."""
    data = text.encode("utf-8")
    if len(data) <= _MAX_REASON_BYTES:
        return text
    return data[: _MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


def choose_subprotocol(offered: Sequence[str]) -> Union[Optional[str], Reject]:
    """
    Pick the subprotocol a TCP route speaks with a client.

    No offer means plain binary messages (``None``).  Otherwise the first of
    :data:`TCP_SUBPROTOCOLS` the client offered; a client that offers only
    others gets a 400 naming what is spoken here.
    """
    if not offered:
        return None
    for name in TCP_SUBPROTOCOLS:
        if name in offered:
            return name
    return Reject(400, "unsupported WebSocket subprotocol; this route speaks 'binary' or 'base64'")


class Base64Decoder:
    """
    Decode base64 text messages as they stream in, frame by frame.

    Each message is a whole base64 text; its frames may split it anywhere.
    Up to three characters are carried between chunks, so memory stays
    constant however large the message.
    """

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, chunk: bytes) -> bytes:
        """Decode what can be decoded of chunk; keep the rest for later.

        :raises ValueError: on characters that are not base64.
        """
        data = self._carry + chunk.translate(None, b" \t\r\n")
        usable = len(data) - len(data) % 4
        self._carry = data[usable:]
        try:
            return binascii.a2b_base64(data[:usable], strict_mode=True)
        except binascii.Error as e:
            raise ValueError(f"invalid base64 payload: {e}") from None

    def end_message(self) -> None:
        """Close a message.

        :raises ValueError: when the message's length was not a multiple of 4.
        """
        if self._carry:
            self._carry = b""
            raise ValueError("base64 message ended with a partial quantum")


class ConnectFailure(enum.Enum):
    """Why a backend connection could not be made, as the glue classified it."""

    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    TLS = "tls"


def connect_rejection(failure: ConnectFailure, detail: str) -> Reject:
    """
    The HTTP answer to a client whose backend could not be reached: 504 for a
    connect timeout, 502 for everything else, with the detail in the reason.
    """
    if failure is ConnectFailure.TIMEOUT:
        return Reject(504, f"backend connect timed out ({detail})")
    if failure is ConnectFailure.REFUSED:
        return Reject(502, f"backend refused the connection ({detail})")
    if failure is ConnectFailure.TLS:
        return Reject(502, f"backend TLS handshake failed ({detail})")
    return Reject(502, f"backend unreachable ({detail})")


def backend_ended(clean: bool, detail: str) -> Close:
    """
    The close a client is sent when its backend connection ends: 1000 when the
    backend closed it in order, 1011 when it broke (reset, error).
    """
    if clean:
        return Close(CLOSE_NORMAL, "backend closed the connection")
    return Close(CLOSE_BACKEND_FAILED, close_reason(f"backend connection lost: {detail}"))


@dataclass(slots=True)
class SessionRecord:
    """
    What a session's log lines report; counters are updated by the glue.

    :ivar route: the route's name (``name=``, else its path or expression).
    :ivar bytes_up: payload bytes relayed client -> backend.
    :ivar bytes_down: payload bytes relayed backend -> client.
    """

    session_id: str
    client: str
    path: str
    backend: str
    started: float
    route: str = ""
    recording: str = ""
    #: The desktop's logical session id (the first channel's session id) when channels are grouped.
    desktop: str = ""
    #: The user the session's token names, when it names one.
    user: str = ""
    bytes_up: int = 0
    bytes_down: int = 0
    close_code: Optional[int] = None
    close_reason: str = ""
    ended: Optional[float] = field(default=None)

    def end(self, now: float, code: Optional[int], reason: str) -> None:
        """Record the end of the session once; later calls change nothing."""
        if self.ended is None:
            self.ended = now
            self.close_code = code
            self.close_reason = reason

    def fields(self, now: float) -> dict[str, object]:
        """The record as flat key/value pairs for a structured log line."""
        end = self.ended if self.ended is not None else now
        return {
            "session": self.session_id,
            "client": self.client,
            "path": self.path,
            "route": self.route,
            "backend": self.backend,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "duration": round(end - self.started, 3),
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            **({"recording": self.recording} if self.recording else {}),
            **({"desktop": self.desktop} if self.desktop else {}),
            **({"user": self.user} if self.user else {}),
        }


class IdleWatch:
    """
    Decide when a session has carried no payload either way for ``timeout``
    seconds, from its byte counters sampled now and then (the hot path
    carries no timer work).  A session is closed between ``timeout`` and
    ``1.25 * timeout`` seconds after its last byte.
    """

    __slots__ = ("timeout", "_seen", "_since")

    def __init__(self, timeout: float, now: float) -> None:
        self.timeout = timeout
        self._seen = 0
        self._since = now

    def check(self, total_bytes: int, now: float) -> Optional[float]:
        """None when idle too long; otherwise the seconds to wait before checking again."""
        if total_bytes != self._seen:
            self._seen = total_bytes
            self._since = now
        left = self._since + self.timeout - now
        if left <= 0:
            return None
        return min(left, max(self.timeout / 4, 0.05))


def idle_close(timeout: float) -> Close:
    """The close sent to a client whose session was idle too long (1001)."""
    return Close(CLOSE_GOING_AWAY, f"idle timeout: no data either way for {timeout:g} s")


class Heartbeat:
    """
    WebSocket ping policy towards a client: a ping every ``interval`` seconds,
    and a pong due within ``deadline`` seconds of it.  While the gateway has
    paused reading from the client (its backend is not taking data) a pong
    cannot be read, so the deadline starts over instead of condemning it.
    """

    __slots__ = ("interval", "deadline", "awaiting")

    def __init__(self, interval: float, deadline: float) -> None:
        self.interval = interval
        self.deadline = deadline
        self.awaiting: Optional[float] = None

    def ping_sent(self, now: float) -> None:
        """A ping went out at now."""
        self.awaiting = now

    def pong_received(self) -> None:
        """The client answered (any pong will do: it proves the peer reads)."""
        self.awaiting = None

    def verdict(self, now: float, reading_paused: bool) -> Optional[float]:
        """
        At a deadline check: None when the client is dead (drop it); 0.0 when
        all is well (next ping after the interval); else seconds to wait
        before checking again.
        """
        if self.awaiting is None:
            return 0.0
        if reading_paused:
            self.awaiting = now
            return self.deadline
        left = self.awaiting + self.deadline - now
        return None if left <= 0 else left
