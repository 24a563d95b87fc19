"""
Links from a session to its backend, one module per kind: byte streams
through client endpoint strings, balancer members among them (:mod:`.tcp`),
WebSocket hops (:mod:`.websocket`), plain HTTP reverse proxying on ws://
routes (:mod:`.http`), TLS settings for backends (:mod:`.tls`).

Every link has the small interface :class:`BackendLink`, and reports to its
session through :class:`LinkOwner`; a new backend kind is a new link.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Protocol

from tunnelgw.core.handshake import Handshake
from tunnelgw.core.relay import Close
from tunnelgw.core.routing import Reject

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = ["BackendLink", "BackendRefused", "LinkOwner", "WrappedLink"]


class BackendRefused(Exception):
    """
    A backend could not be opened: ``reject`` is the client's answer, ``kind``
    its metrics reason, ``headers`` extra response headers (a redirect's Location).
    """

    def __init__(self, reject: Reject, kind: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{reject.status} {reject.reason}")
        self.reject = reject
        self.kind = kind
        self.headers = headers


class LinkOwner(Protocol):
    """What a link reports to: its session (:class:`tunnelgw.session.GatewaySession`)."""

    def backend_data(self, data: bytes) -> None:
        """A chunk of a byte-stream backend, to send as one message."""

    def backend_frame_begin(self, opcode: int, fin: bool, length: int) -> None:
        """A frame of a WebSocket backend starts; its payload follows."""

    def backend_frame_data(self, payload: bytes) -> None:
        """A piece of that frame."""

    def backend_close(self, code: Optional[int], reason: Optional[str]) -> None:
        """A WebSocket backend sent a close frame."""

    def backend_lost(self, close: Close) -> None:
        """The backend connection ended; close is what the client gets."""


class BackendLink(Protocol):
    """
    A session's connection to its backend, whatever the kind.

    :ivar transport: the backend's transport once connected (producer and
        consumer; None before).
    :ivar description: what the session's log lines name as its backend.
    :ivar byte_stream: whether client frames may be read by the direct
        binary-frame reader and handed over as payloads.
    """

    @property
    def transport(self) -> Any:
        """The backend's transport once connected."""

    @property
    def description(self) -> str:
        """The backend as log lines name it."""

    @property
    def byte_stream(self) -> bool:
        """Whether client frames may be read directly and handed over as payloads."""

    def check(self, handshake: Handshake) -> Optional[Reject]:
        """Refuse an offer this backend cannot serve, before any slot is taken."""

    def connect(self) -> "Deferred[Optional[str]]":
        """Connect; fires with the subprotocol to answer or fails with :class:`BackendRefused`; cancellable."""

    def start(self, owner: LinkOwner) -> None:
        """The client's WebSocket is open: relay to owner, first what the backend sent early."""

    def client_frame_begin(self, opcode: int, fin: bool, length: int) -> None:
        """A client frame starts (its payload follows)."""

    def client_frame_data(self, payload: bytes) -> None:
        """A piece of the client frame under way."""

    def client_payloads(self, payloads: list[bytes]) -> None:
        """Payloads of whole binary client frames read directly (byte-stream links only)."""

    def client_close(self, code: Optional[int], reason: Optional[str]) -> None:
        """The client sent a valid close frame."""

    def close(self, close: Optional[Close] = None) -> None:
        """End the backend side (queued bytes get a grace period; close says why, for hops that can); once."""


class WrappedLink:
    """
    A link around another: every call goes to the inner link.  Subclasses
    add one thing (recording, a single-use check) by overriding what they need.
    """

    def __init__(self, inner: BackendLink) -> None:
        self._inner = inner

    @property
    def byte_stream(self) -> bool:
        return self._inner.byte_stream

    @property
    def transport(self) -> Any:
        return self._inner.transport

    @property
    def description(self) -> str:
        return self._inner.description

    def check(self, handshake: Handshake) -> Optional[Reject]:
        return self._inner.check(handshake)

    def connect(self) -> "Deferred[Optional[str]]":
        return self._inner.connect()

    def start(self, owner: LinkOwner) -> None:
        self._inner.start(owner)

    def client_frame_begin(self, opcode: int, fin: bool, length: int) -> None:
        self._inner.client_frame_begin(opcode, fin, length)

    def client_frame_data(self, payload: bytes) -> None:
        self._inner.client_frame_data(payload)

    def client_payloads(self, payloads: list[bytes]) -> None:
        self._inner.client_payloads(payloads)

    def client_close(self, code: Optional[int], reason: Optional[str]) -> None:
        self._inner.client_close(code, reason)

    def close(self, close: Optional[Close] = None) -> None:
        self._inner.close(close)
