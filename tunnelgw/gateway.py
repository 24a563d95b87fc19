"""
The gateway's state for new sessions, and the hand-over of an upgrade
request to a session.

:class:`GatewayFactory` holds what sessions are made from (rules, topology,
limits, metrics, the backend connectors, Autobahn's protocol options) and the
live sessions.  :meth:`GatewayFactory.upgrade` takes a connection whose
request head was parsed once (by the front, or by twisted.web for a later
request on a kept-alive connection), applies the topology and the rules,
and either answers it (a refusal or a redirect) or starts a
:class:`~tunnelgw.session.GatewaySession` on it with the route's backend link.
"""

from __future__ import annotations

import uuid
from typing import Any, Optional, Union

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper

from tunnelgw.backends import BackendLink
from tunnelgw.backends.replay import ReplayLink
from tunnelgw.backends.tcp import TcpBackends, TcpLink
from tunnelgw.backends.websocket import WebSocketBackends, WebSocketLink
from tunnelgw.certificates import client_certificate
from tunnelgw.core.clientaddr import format_address, in_networks
from tunnelgw.core.config import Config
from tunnelgw.core.handshake import check_handshake
from tunnelgw.core.http import RequestHead
from tunnelgw.core.limits import HandshakeRate, SessionCounts
from tunnelgw.core.relay import CLOSE_TIMEOUT, Close
from tunnelgw.core.routing import Reject, Route, RuleSet, choose_route
from tunnelgw.core.targets import PoolTarget, ReplayTarget, WebSocketURL
from tunnelgw.core.tlsconfig import ClientCertificate, admits
from tunnelgw.metrics import GatewayMetrics
from tunnelgw.recording import Recordings
from tunnelgw.session import GatewaySession, client_label, http_error, log_refusal

__all__ = ["GatewayFactory", "HeadRequest", "hand_over", "refuse_connection"]

_log = Logger(namespace="tunnelgw")


def hand_over(transport: Any, protocol: Any) -> None:
    """Make protocol the receiver of transport's events (under TLS or PROXY wrappers too)."""
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    else:
        transport.protocol = protocol


def _abort_if_open(transport: Any) -> None:
    """Abort transport unless its socket is closed already."""
    inner = transport
    while isinstance(inner, ProtocolWrapper):
        inner = inner.transport
    if inner is not None and not getattr(inner, "disconnected", True):
        transport.abortConnection()


def refuse_connection(reactor: Any, transport: Any, reject: Reject, headers: Any = ()) -> None:
    """
    Answer reject (a status and its reason as a text body) and close; a
    client that does not read its answer is aborted after CLOSE_TIMEOUT.
    """
    transport.write(http_error(reject.status, reject.reason, headers))
    transport.loseConnection()
    reactor.callLater(CLOSE_TIMEOUT, _abort_if_open, transport)


class HeadRequest:
    """
    A parsed head seen through the few twisted.web ``Request`` methods the
    topology reads, so that one decision code serves both parse paths.
    """

    def __init__(self, head: RequestHead, transport: Any) -> None:
        self._head = head
        self._transport = transport
        self.method = head.method
        self.uri = head.target
        self.path = head.path
        self.requestHeaders = self

    def getHeader(self, name: bytes) -> Optional[bytes]:
        """A header's value (its values joined), or None."""
        return self._head.get(name.lower())

    def getAllRawHeaders(self) -> list[tuple[bytes, list[bytes]]]:
        """Every header with its values (as twisted.web's Headers gives them)."""
        names: dict[bytes, list[bytes]] = {}
        for name, value in self._head.headers:
            names.setdefault(name, []).append(value)
        return list(names.items())

    def getClientAddress(self) -> Any:
        """The TCP (or UNIX) peer."""
        return self._transport.getPeer()

    def isSecure(self) -> bool:
        """Whether the connection is TLS."""
        return ISSLTransport.providedBy(self._transport)


class GatewayFactory(WebSocketServerFactory):
    """
    What sessions are made from, and the live ones.

    :ivar sessions: open sessions by id (the admin list and the live gauge).
    :ivar session_counts: admitted sessions (connecting ones included).
    """

    #: Token routes, pools, redirects (:class:`tunnelgw.topology.Topology`), set by the service.
    topology: Any = None

    def __init__(self, rules: RuleSet, reactor: Any, backends: Optional[TcpBackends] = None,
                 config: Optional[Config] = None, metrics: Optional[GatewayMetrics] = None) -> None:
        super().__init__(server="tunnelgw", reactor=reactor)
        self.noisy = False
        self.rules = rules
        self.backends = backends if backends is not None else TcpBackends(reactor)
        self.websocket_backends = WebSocketBackends(reactor)
        self.sessions: dict[str, GatewaySession] = {}
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        self.metrics.watch(self)
        config = config if config is not None else Config(source="<defaults>")
        self.recordings = Recordings(reactor, config.recording, self.metrics.registry)
        self.session_counts = SessionCounts(config.limits.sessions, config.limits.per_client)
        self.handshake_rate = HandshakeRate(config.limits.rate)
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """
        Take config's limits, timeouts and keepalive for new sessions; live
        sessions and their slots are kept.
        """
        self.config = config
        self.recordings.reconfigure(config.recording)
        self.session_counts.total_limit = config.limits.sessions
        self.session_counts.per_client_limit = config.limits.per_client
        if config.limits.rate != self.handshake_rate.rate:
            self.handshake_rate = HandshakeRate(config.limits.rate)
        self.setProtocolOptions(
            # The handshake is driven by the gateway, and the wait for the
            # backend is bounded by the route's connect timeout.
            openHandshakeTimeout=0,
            # Closes are timed by the session with the reactor (txaio's timers
            # are batched to whole seconds).
            closeHandshakeTimeout=0,
            webStatus=False,
            # failByDrop=False: a client breaking a rule gets a close frame with
            # the code (1009, 1002, 1007) and reason before the connection ends.
            failByDrop=False,
            maxFramePayloadSize=config.limits.frame,
            maxMessagePayloadSize=config.limits.message,
        )

    def route(self, raw_path: bytes) -> Union[Route, Reject]:
        """Route a raw request path (see :mod:`tunnelgw.core.routing`)."""
        return choose_route(self.rules, raw_path)

    def close_all(self, close: Close) -> None:
        """Close every live session with close (shutdown)."""
        for session in list(self.sessions.values()):
            session.close_session(close)

    # Upgrades.

    def client_of(self, request: Any) -> str:
        """The request's real client address (from trusted proxies when configured)."""
        if self.topology is not None:
            return str(self.topology.client_of(request))
        peer = request.getClientAddress()
        return getattr(peer, "host", None) or format_address(peer)

    def decide(self, request: Any, client: str, certificate: Optional[ClientCertificate] = None) -> Any:
        """
        The topology's and the rules' answer for an upgrade request: a Route, Reject or Redirect.

        :param certificate: the client's verified TLS certificate, for ``certname=``.
        """
        refused = self.handshake_rate.allow(client, self.reactor.seconds())
        if refused is not None:
            return refused
        if self.topology is not None:
            decision = self.topology.screen(request, client, True)
            if decision is not None:
                return decision
        decision = self.route(request.path)
        if isinstance(decision, Route) and decision.options.allow_clients and not in_networks(
                client, decision.options.allow_clients):
            return Reject(403, "this route does not admit your address")
        if isinstance(decision, Route) and not admits(decision.options.cert_names, certificate):
            return Reject(403, "this route needs a client certificate with another name")
        return decision

    def upgrade(self, transport: Any, head: RequestHead, early: bytes, request: Any = None) -> Optional[GatewaySession]:
        """
        Answer or start the session of an upgrade request on transport (paused
        by the caller); early is what the client sent after the head.
        """
        request = request if request is not None else HeadRequest(head, transport)
        client = self.client_of(request)
        path = head.path.decode("latin-1")
        label = client_label(client, transport)
        handshake = check_handshake(head)
        if isinstance(handshake, Reject):
            self._answer(transport, label, path, handshake, "handshake")
            return None
        certificate = client_certificate(transport) if ISSLTransport.providedBy(transport) else None
        decision = self.decide(request, client, certificate)
        if isinstance(decision, Reject):
            kind = "rate" if decision.status == 429 else "route"
            self._answer(transport, label, path, decision, kind)
            return None
        if not isinstance(decision, Route):  # a redirect (JSON answers are for plain requests)
            location = getattr(decision, "location", None)
            if location is None:
                self._answer(transport, label, path, Reject(400, "not a WebSocket endpoint"), "route")
                return None
            _log.info("redirected client={client} path={path!r} location={location} reason={reason!r}",
                      client=label, path=path, location=location, reason=decision.reason)
            refuse_connection(self.reactor, transport, Reject(307, decision.reason), [("Location", location)])
            return None
        session_id = uuid.uuid4().hex[:12]
        identity = certificate.identity if certificate is not None else ""
        link = self.link_for(decision, head, client, ISSLTransport.providedBy(transport), identity)
        recording = ""
        if decision.options.record and self.recordings.spec is not None:
            recorded = self.recordings.link(link, session_id)
            link, recording = recorded, recorded.recording
        session = GatewaySession(self, decision, head, handshake, client, link, session_id, recording)
        session.tls_client = identity
        hand_over(transport, session)
        session.makeConnection(transport)
        session.begin(early)
        return session

    def _answer(self, transport: Any, client: str, path: str, reject: Reject, kind: str) -> None:
        log_refusal(client, path, reject, kind)
        self.metrics.handshake_failed("", kind, reject.status)
        refuse_connection(self.reactor, transport, reject)

    def link_for(self, route: Route, head: RequestHead, client: str, secure: bool, tls_client: str = "") -> BackendLink:
        """
        The backend link for a route: a pool member, a WebSocket hop, a replay or a byte stream.

        :param tls_client: the client certificate's identity, for ws:// hops.
        """
        backend = route.backend
        if isinstance(backend, ReplayTarget):
            return ReplayLink(self.reactor, backend.folder, route.remainder, route.options.speed)
        if isinstance(backend, PoolTarget):
            topology = self.topology
            assert topology is not None, "the parser refuses balancer:// without a <Proxy> block"
            link = TcpLink(lambda: topology.connect_pool(route, backend, client, chosen), backend.text)

            def chosen(member: str, release: Any) -> None:
                link.description = f"{backend.text}/{member}"
                link.release = release

            return link
        if isinstance(backend, WebSocketURL):
            headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers}
            return WebSocketLink(self.websocket_backends, route, head.query, client, secure, headers, tls_client)
        endpoint, timeout = backend.endpoint, route.options.connect_timeout
        return TcpLink(lambda: self.backends.connect(endpoint, timeout), endpoint)
