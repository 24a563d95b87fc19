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
from tunnelgw.core.sessionrelay import Carries

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = ["BackendLink", "BackendRefused", "Carries", "LinkOwner", "WrappedLink"]


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
        """A chunk of a byte-stream backend (:attr:`Carries.PAYLOAD`), to send as one message."""

    def backend_frames(self, frames: bytes, payload: int, left: int) -> None:
        """
        Whole frames of a WebSocket backend (:attr:`Carries.FRAMES`), as they
        are: payload bytes in them, left bytes of the last one's payload still to come.
        """

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
    :ivar carries: what the link carries both ways: payload bytes
        (:meth:`client_payloads`, :meth:`LinkOwner.backend_data`) or whole
        WebSocket frames (:meth:`client_frames`, :meth:`LinkOwner.backend_frames`).
    """

    @property
    def transport(self) -> Any:
        """The backend's transport once connected."""

    @property
    def description(self) -> str:
        """The backend as log lines name it."""

    @property
    def carries(self) -> Carries:
        """What the link carries: payload bytes or whole frames."""

    def check(self, handshake: Handshake) -> Optional[Reject]:
        """Refuse an offer this backend cannot serve, before any slot is taken."""

    def connect(self) -> "Deferred[Optional[str]]":
        """Connect; fires with the subprotocol to answer or fails with :class:`BackendRefused`; cancellable."""

    def start(self, owner: LinkOwner) -> None:
        """The client's WebSocket is open: relay to owner, first what the backend sent early."""

    def client_payloads(self, payloads: list[bytes]) -> None:
        """Payload bytes of client frames, in order (:attr:`Carries.PAYLOAD` links)."""

    def client_frames(self, frames: bytes, left: int) -> None:
        """Whole client frames as they are, the last one's payload going on for left bytes (:attr:`Carries.FRAMES`)."""

    def client_close(self, code: Optional[int], reason: Optional[str]) -> None:
        """The client sent a valid close frame."""

    def close(self, close: Optional[Close] = None) -> None:
        """End the backend side (queued bytes get a grace period; close says why, for hops that can); once."""


class WrappedLink:
    """
    A link around another: every call goes to the inner link, and it carries
    what the inner link carries.  Subclasses add one thing (recording, a
    single-use check) by overriding what they need.
    """

    def __init__(self, inner: BackendLink) -> None:
        self._inner = inner

    @property
    def carries(self) -> Carries:
        """What the inner link carries (a wrapper never changes it)."""
        return self._inner.carries

    @property
    def transport(self) -> Any:
        """The inner link's transport."""
        return self._inner.transport

    @property
    def description(self) -> str:
        """The inner link's description."""
        return self._inner.description

    def check(self, handshake: Handshake) -> Optional[Reject]:
        """The inner link's check."""
        return self._inner.check(handshake)

    def connect(self) -> "Deferred[Optional[str]]":
        """The inner link's connect."""
        return self._inner.connect()

    def start(self, owner: LinkOwner) -> None:
        """Start the inner link."""
        self._inner.start(owner)

    def client_payloads(self, payloads: list[bytes]) -> None:
        """To the inner link."""
        self._inner.client_payloads(payloads)

    def client_frames(self, frames: bytes, left: int) -> None:
        """To the inner link."""
        self._inner.client_frames(frames, left)

    def client_close(self, code: Optional[int], reason: Optional[str]) -> None:
        """To the inner link."""
        self._inner.client_close(code, reason)

    def close(self, close: Optional[Close] = None) -> None:
        """Close the inner link."""
        self._inner.close(close)
