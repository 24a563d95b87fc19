"""
Backend connections: byte streams reached through client endpoint strings
(``tcp:``, ``unix:`` and any endpoint plugin through Twisted's parser;
``tls:`` through :func:`tunnelgw.backends.tls.client_endpoint`, TLS on the socket).

A backend counts as connected once it can carry bytes: for ``tls:`` that is
after its TLS handshake (and certificate check) has completed, so a client's
WebSocket handshake is never answered for a backend that then fails.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Generic, Optional, Protocol as TypingProtocol, TypeVar

from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.hazmat import DNS_ID, IPAddress_ID
from twisted.internet import defer, error
from twisted.internet.interfaces import (
    IHandshakeListener,
    IReactorTime,
    ISSLTransport,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from tunnelgw.backends import BackendRefused, Carries, LinkOwner
from tunnelgw.backends.tls import client_endpoint
from tunnelgw.core.handshake import Handshake
from tunnelgw.core.relay import (
    BACKEND_CLOSE_GRACE,
    Close,
    ConnectFailure,
    backend_ended,
    choose_subprotocol,
    connect_rejection,
)
from tunnelgw.core.routing import Reject

__all__ = ["BackendConnection", "BackendSink", "BackendUnavailable", "EndpointCache", "TcpBackends", "TcpLink",
           "classify_connect_error"]

K = TypeVar("K")


class BackendUnavailable(Exception):
    """A backend could not be connected; ``failure`` says how, ``detail`` says more."""

    def __init__(self, failure: ConnectFailure, detail: str) -> None:
        super().__init__(f"{failure.value}: {detail}")
        self.failure = failure
        self.detail = detail


class BackendSink(TypingProtocol):
    """What a backend connection reports to: its session."""

    def backend_data(self, data: bytes) -> None:
        """Bytes arrived from the backend."""

    def backend_lost(self, clean: bool, detail: str) -> None:
        """The backend connection ended; clean is False for resets and errors."""


def _identity(mismatch: Any) -> str:
    """The name or address of a service_identity mismatch."""
    wanted = mismatch.mismatched_id
    if isinstance(wanted, DNS_ID):
        return wanted.hostname.decode("ascii") if isinstance(wanted.hostname, bytes) else str(wanted.hostname)
    if isinstance(wanted, IPAddress_ID):
        return str(wanted.ip)
    return repr(wanted)


def _describe(reason: BaseException) -> str:
    """A short human description of a connection error."""
    if isinstance(reason, VerificationError):  # the backend's certificate is valid, but for other names
        return f"certificate is not valid for {', '.join(_identity(e) for e in reason.errors)}"
    if isinstance(reason, SSL.Error):
        parts = [p for arg in reason.args for p in (arg if isinstance(arg, list) else [arg])]
        return "; ".join(str(p[-1]) if isinstance(p, tuple) else str(p) for p in parts) or "TLS error"
    text = str(reason).strip()
    return text or type(reason).__name__


def classify_connect_error(reason: BaseException, timeout: float) -> BackendUnavailable:
    """Turn a connect error into the failure kind the relay policy understands."""
    if isinstance(reason, (defer.TimeoutError, error.TimeoutError, defer.CancelledError,
                           error.ConnectingCancelledError)):
        return BackendUnavailable(ConnectFailure.TIMEOUT, f"{timeout:g} s")
    if isinstance(reason, error.ConnectionRefusedError):
        return BackendUnavailable(ConnectFailure.REFUSED, "connection refused")
    if isinstance(reason, (SSL.Error, VerificationError, CertificateError)):
        return BackendUnavailable(ConnectFailure.TLS, _describe(reason))
    if isinstance(reason, error.DNSLookupError):
        return BackendUnavailable(ConnectFailure.UNREACHABLE, "host name not found")
    return BackendUnavailable(ConnectFailure.UNREACHABLE, _describe(reason))


@implementer(IHandshakeListener)
class BackendConnection(Protocol):
    """
    One byte-stream connection to a backend, owned by one session.

    Bytes that arrive before the session attaches are held (and the backend
    paused) so nothing is lost between connect and the client's 101.
    """

    transport: Any  # a TCP or TLS transport: producer, consumer, abortConnection

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._sink: Optional[BackendSink] = None
        self._early: list[bytes] = []
        self._lost: Optional[tuple[bool, str]] = None
        self._abort_call: Any = None
        self.ready: defer.Deferred[BackendConnection] = defer.Deferred(self._cancel)

    def _cancel(self, _: object) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionMade(self) -> None:
        """
        Plain streams are ready now; TLS ones after :meth:`handshakeCompleted`.
        TCP_NODELAY is set (as nginx's ``tcp_nodelay`` and Autobahn's client
        side do): a desktop's input events are small writes that must not
        wait for the backend's delayed ACK.
        """
        if ITCPTransport.providedBy(self.transport):  # TCP, or TLS on a TCP socket (tunnelgw.tlssocket)
            self.transport.setTcpNoDelay(True)
        if not ISSLTransport.providedBy(self.transport):
            self.ready.callback(self)

    def handshakeCompleted(self) -> None:
        """The backend's TLS handshake, certificate check included, succeeded."""
        if not self.ready.called:
            self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        """Pass bytes to the session, or hold them until it attaches."""
        if self._sink is not None:
            self._sink.backend_data(data)
        else:
            self._early.append(data)
            self.transport.pauseProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Report the end to the session, or fail the pending connect."""
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        if not self.ready.called:
            self.ready.errback(reason)
            return
        clean = reason.check(error.ConnectionDone) is not None
        self._lost = (clean, _describe(reason.value))
        if self._sink is not None:
            self._sink.backend_lost(*self._lost)

    def attach(self, sink: BackendSink) -> None:
        """Start relaying to sink, first what arrived early."""
        self._sink = sink
        early, self._early = self._early, []
        for chunk in early:
            sink.backend_data(chunk)
        if self._lost is not None:
            sink.backend_lost(*self._lost)
        elif early:
            self.transport.resumeProducing()

    def write(self, data: bytes) -> None:
        """Send bytes to the backend."""
        self.transport.write(data)

    def close(self, grace: float = BACKEND_CLOSE_GRACE) -> None:
        """
        Close after queued bytes are written; abort if the backend has not taken
        them within grace seconds, so a stalled backend cannot keep us open.
        """
        self._sink = None
        if self._lost is not None or self.transport is None:
            return
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        if self._abort_call is None:
            self._abort_call = self._reactor.callLater(grace, self.transport.abortConnection)


class EndpointCache(Generic[K]):
    """
    Client endpoints made once per key and kept (least recently used first
    out, up to ``size``), so that trust roots and endpoint strings are read
    once, not once per session.
    """

    def __init__(self, make: Callable[[K], IStreamClientEndpoint], size: int) -> None:
        self._make = make
        self._size = size
        self._cache: OrderedDict[K, IStreamClientEndpoint] = OrderedDict()

    def get(self, key: K) -> IStreamClientEndpoint:
        """The endpoint for key, made on first use."""
        endpoint = self._cache.get(key)
        if endpoint is None:
            endpoint = self._make(key)
            self._cache[key] = endpoint
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return endpoint

    def clear(self) -> None:
        """Forget every endpoint (a reload: files named by the keys are read again on next use)."""
        self._cache.clear()


class _OneConnection(Factory):
    """The factory of one backend connection, which it builds (kept as long as the connection: slots, no closure)."""

    __slots__ = ("_connection", "numPorts")
    noisy = False

    def __init__(self, connection: BackendConnection) -> None:
        self._connection = connection
        self.numPorts = 0

    def buildProtocol(self, addr: Any) -> BackendConnection:
        """The connection, once."""
        return self._connection


class TcpBackends:
    """Connects sessions to byte-stream backends named by endpoint strings (parsed once each)."""

    def __init__(self, reactor: Any, cache_size: int = 1024,
                 parse: Callable[[Any, str], IStreamClientEndpoint] = client_endpoint) -> None:
        self._reactor = reactor
        self._endpoints: EndpointCache[str] = EndpointCache(lambda target: parse(reactor, target), cache_size)

    def endpoint(self, target: str) -> IStreamClientEndpoint:
        """The client endpoint for a target string, parsed once."""
        return self._endpoints.get(target)

    def forget_endpoints(self) -> None:
        """A reload: strings are parsed, and the files they name read, again (TLS sessions kept with them go too)."""
        self._endpoints.clear()

    def connect(self, target: str, timeout: float) -> "defer.Deferred[BackendConnection]":
        """
        Connect to target; the Deferred fires with a ready
        :class:`BackendConnection`, or fails with :class:`BackendUnavailable`
        (also after timeout seconds).  Cancelling it abandons the attempt.
        """
        try:
            endpoint = self.endpoint(target)
        except Exception as e:
            return defer.fail(BackendUnavailable(ConnectFailure.UNREACHABLE, f"bad target: {_describe(e)}"))
        connection = BackendConnection(self._reactor)
        connecting = endpoint.connect(_OneConnection(connection))
        d: defer.Deferred[BackendConnection] = connecting.addCallback(lambda _: connection.ready)
        d.addTimeout(timeout, self._reactor)

        def failed(failure: Failure) -> Failure:
            if failure.check(BackendUnavailable):
                return failure
            return Failure(classify_connect_error(failure.value, timeout))

        d.addErrback(failed)
        return d


class TcpLink:
    """
    A session's link to a byte-stream backend: payload bytes in, chunks out
    (each sent to the client as one message).  A balancer pool is the same
    link with a connector that picks the member and a release for its slot.

    :param connector: starts the connection; its Deferred fires with a ready
        :class:`BackendConnection` or fails with :class:`BackendUnavailable`.
    :param description: the backend as log lines name it (a pool link sets
        its member once chosen).
    """

    #: Payload bytes both ways.
    carries = Carries.PAYLOAD

    __slots__ = ("_connector", "description", "transport", "_connection", "_session", "_subprotocol", "_closed",
                 "release")

    def __init__(self, connector: Callable[[], "defer.Deferred[BackendConnection]"], description: str) -> None:
        self._connector = connector
        self.description = description
        self.transport: Any = None
        self._connection: Optional[BackendConnection] = None
        self._session: Any = None
        self._subprotocol: Optional[str] = None
        self._closed = False
        #: Called once when the link closes (a pool member's slot).
        self.release: Optional[Callable[[], None]] = None

    def check(self, handshake: Handshake) -> Optional[Reject]:
        """Pick ``binary`` or ``base64`` from the client's offer, or refuse (400)."""
        chosen = choose_subprotocol(handshake.protocols)
        if isinstance(chosen, Reject):
            return chosen
        self._subprotocol = chosen
        return None

    def connect(self) -> "defer.Deferred[Optional[str]]":
        """Connect; fires with the subprotocol chosen by :meth:`check`."""
        d = self._connector()

        def connected(connection: BackendConnection) -> Optional[str]:
            self._connection = connection
            self.transport = connection.transport
            if self._closed:
                connection.close()
            return self._subprotocol

        def failed(failure: Failure) -> Failure:
            failure.trap(BackendUnavailable)
            value = failure.value
            return Failure(BackendRefused(connect_rejection(value.failure, value.detail),
                                          f"backend_{value.failure.value}"))

        return d.addCallbacks(connected, failed)

    def start(self, owner: LinkOwner) -> None:
        """Relay to owner: the backend's early bytes first."""
        self._session = owner
        assert self._connection is not None
        self._connection.attach(self)

    # What the backend connection reports (it is a BackendSink of this link).

    def backend_data(self, data: bytes) -> None:
        """A chunk from the backend: one message to the client."""
        self._session.backend_data(data)

    def backend_lost(self, clean: bool, detail: str) -> None:
        """The backend connection ended."""
        self._connection = None
        self._session.backend_lost(backend_ended(clean, detail))

    # What the session sends.

    def client_payloads(self, payloads: list[bytes]) -> None:
        """Write the payloads of client frames in one call."""
        if self.transport is not None and not self._closed:
            if len(payloads) == 1:
                self.transport.write(payloads[0])
            else:
                self.transport.writeSequence(payloads)

    def client_frames(self, frames: bytes, left: int) -> None:
        """Not used: a byte stream takes payloads."""
        raise NotImplementedError("byte-stream links take payloads")

    def client_close(self, code: Optional[int], reason: Optional[str]) -> None:
        """The backend gets EOF when the session ends (queued bytes first)."""

    def close(self, close: Optional[Close] = None) -> None:
        """EOF to the backend after its queued bytes (aborted after a grace period); once."""
        if self._closed:
            return
        self._closed = True
        self._session = None
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
        release, self.release = self.release, None
        if release is not None:
            release()
