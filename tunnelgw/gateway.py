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

import functools
import os
from typing import Any, Callable, Optional

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper

from tunnelgw.backends import BackendLink, BackendRefused, WrappedLink
from tunnelgw.backends.replay import ReplayLink
from tunnelgw.backends.tcp import TcpBackends, TcpLink
from tunnelgw.backends.websocket import WebSocketBackends, WebSocketLink
from tunnelgw.core.clientaddr import format_address, is_trusted
from tunnelgw.core.config import Config, RouteOptions
from tunnelgw.certificates import client_certificate
from tunnelgw.core.handshake import check_handshake
from tunnelgw.core.hop import HOP_HEADER, Hop
from tunnelgw.core.http import RequestHead
from tunnelgw.core.wsurl import parse_websocket_url
from tunnelgw.core.limits import HandshakeRate, SessionCounts
from tunnelgw.core.redact import Redaction
from tunnelgw.core.request import RequestView, view_request
from tunnelgw.core.relay import CLOSE_TIMEOUT, Close
from tunnelgw.core.routing import Reject, Route, RuleSet
from tunnelgw.core.topoconfig import TokenRouteSpec
from tunnelgw.core.targets import LookupTarget, PoolTarget, ReplayTarget, WebSocketURL
from tunnelgw.forwardauth import ForwardAuthLink, Portals
from tunnelgw.hops import HOP_REFUSED, RelayHops, certificate_of
from tunnelgw.core.tlsconfig import ClientCertificate, admits
from tunnelgw.metrics import GatewayMetrics
from tunnelgw.pool import PoolLimitLink, SingleUseLink
from tunnelgw.recording import Recordings
from tunnelgw.session import GatewaySession, client_label, http_error, log_refusal
from tunnelgw.upstream import SharedOptions

__all__ = ["GatewayFactory", "HeadRequest", "hand_over", "refuse_connection"]

_log = Logger(namespace="tunnelgw")
#: The redaction of a gateway without token routes (query ``token=`` and JWTs only).
_NO_PLACES = Redaction()


class OwnerCheckLink(WrappedLink):
    """
    A link that opens only on the gateway the ``OwnerSource`` names for its
    desktop host; elsewhere a 307 to the owner, or with relay, a hop that
    carries the session there (relay makes that link from the owner's URL).
    """

    def __init__(self, inner: BackendLink, topology: Any, host: str, uri: str,
                 relay: Optional[Callable[[str], BackendLink]] = None) -> None:
        super().__init__(inner)
        self._topology = topology
        self._host = host
        self._uri = uri
        self._relay = relay
        self._handshake: Any = None

    def check(self, handshake: Any) -> Optional[Reject]:
        self._handshake = handshake
        return self._inner.check(handshake)

    def connect(self) -> Any:
        relay = self._relay
        if relay is None:
            return self._topology.check_owner(self._host, self._uri).addCallback(lambda _: self._inner.connect())

        def decided(owner: Optional[str]) -> Any:
            if owner is None:
                return self._inner.connect()
            self._inner.close()
            self._inner = relay(owner)
            refused = self._inner.check(self._handshake)
            if refused is not None:
                raise BackendRefused(refused, "owner")
            return self._inner.connect()

        return self._topology.other_owner(self._host).addCallback(decided)


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

    @property
    def requestHeaders(self) -> "HeadRequest":
        """The headers (this: not an attribute, which would make each request a reference cycle)."""
        return self

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


class GatewayFactory(SharedOptions, WebSocketServerFactory):  # type: ignore[misc]  # Autobahn and Twisted type "protocol" apart
    """
    What sessions are made from, and the live ones.

    :ivar sessions: open sessions by id (the admin list and the live gauge).
    :ivar session_counts: admitted sessions (connecting ones included).
    """

    #: Token routes, pools, redirects (:class:`tunnelgw.topology.Topology`), set by the service.
    topology: Any = None
    #: The pool's shared session registry (:class:`tunnelgw.pool.PoolRegistry`), set by the service.
    pool: Any = None

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
        self.portals = Portals(reactor, self.metrics.registry)
        self.session_counts = SessionCounts(config.limits.sessions, config.limits.per_client)
        self.handshake_rate = HandshakeRate(config.limits.rate)
        self.hops = RelayHops(reactor, lambda: self.pool)
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """
        Take config's limits, timeouts and keepalive for new sessions; live
        sessions and their slots are kept.
        """
        self.config = config
        # Backend endpoints are made anew: trust roots and client certificates named by the configuration are
        # read again (a replaced cafile= or trustRoots= file applies), and the TLS sessions kept with them go.
        self.backends.forget_endpoints()
        self.websocket_backends.forget_endpoints()
        self.recordings.reconfigure(config.recording)
        self.portals.reconfigure(config.auth_portals)
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

    @property
    def redaction(self) -> Redaction:
        """The one redaction every writer applies (the topology's token places, when there is one)."""
        return self.topology.redaction if self.topology is not None else _NO_PLACES

    def view(self, head: RequestHead) -> RequestView:
        """The canonical view of a request (see :mod:`tunnelgw.core.request`): made once per request."""
        return view_request(head, self.rules, self.redaction)

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

    def redact(self, text: str) -> str:
        """
        A request path, URI or URL with its tokens (query, path segment, JWT)
        replaced by fingerprints: what logs and the admin list may show.
        """
        return self.redaction(text)

    def decide(self, view: RequestView, request: Any, client: str, upgrade: bool, hop: bool = False,
               certificate: Optional[ClientCertificate] = None) -> Any:
        """
        The one decision for a request of any kind (upgrade, plain HTTP, file,
        lookup): a Route, Reject, Redirect or JSON answer.  The guards a route
        has (``allowclients=``, ``certname=``) are applied here to every kind;
        ``auth=`` is asked by the caller before the route's backend or file
        (see :meth:`guard`).

        :param upgrade: a WebSocket handshake (charged to the handshake rate;
            Origin and tokens checked); plain requests pay the rate only for lookups.
        :param hop: a session another gateway of the pool relays.
        :param certificate: the client's verified TLS certificate, for ``certname=``.
        """
        if view.refusal is not None:
            return view.refusal
        if upgrade:
            refused = self.handshake_rate.allow(client, self.reactor.seconds())
            if refused is not None:
                return refused
        if self.topology is not None:
            decision = self.topology.screen(view, request, client, upgrade,
                                            None if upgrade else self.handshake_rate, hop=hop)
            if decision is not None:
                return decision
        decision = view.route
        if isinstance(decision, Route):
            return self.guard(decision, client, certificate) or decision
        return decision

    def guard(self, route: Route, client: str, certificate: Optional[ClientCertificate]) -> Optional[Reject]:
        """The refusal of a route's address and certificate guards for client, or None when both admit it."""
        if route.options.allow_clients and not is_trusted(client, route.options.allow_clients):
            return Reject(403, "this route does not admit your address")
        if not admits(route.options.cert_names, certificate):
            return Reject(403, "this route needs a client certificate with another name")
        return None

    def upgrade(self, transport: Any, head: RequestHead, early: bytes, request: Any = None,
                via: str = "") -> Optional[GatewaySession]:
        """
        Answer or start the session of an upgrade request on transport (paused
        by the caller); early is what the client sent after the head.

        :param via: ``"http2"`` for an extended CONNECT on an HTTP/2 stream
            (:mod:`tunnelgw.http2`: transport is the stream's), shown in the session's lines.
        """
        request = request if request is not None else HeadRequest(head, transport)
        view = self.view(head)
        client = self.client_of(request)
        path = view.shown_path
        label = client_label(client, transport)
        if view.refusal is not None:
            # kind "target": an upgrade refused for its target (the access log gives it a line, as any upgrade).
            self._answer(transport, label, path, view.refusal, "target")
            return None
        handshake = check_handshake(head)
        if isinstance(handshake, Reject):
            self._answer(transport, label, path, handshake, "handshake")
            return None
        hop = head.get(HOP_HEADER.encode("ascii"))
        received: Optional[Hop] = None
        certificate = client_certificate(transport) if ISSLTransport.providedBy(transport) else None
        if hop is not None:
            topology = self.topology
            received = self.hops.check(topology.hop_secrets, hop.decode("latin-1"), topology.config.gateway_url or "",
                                       head.target.decode("latin-1")) if topology is not None else None
            if received is None:
                self._answer(transport, label, path, HOP_REFUSED, "hop")
                return None
            # The client as the relaying gateway saw it: its address and its verified certificate.
            client, certificate = received.client, certificate_of(received)
        decision = self.decide(view, request, client, True, hop is not None, certificate)
        if isinstance(decision, Reject):
            kind = "rate" if decision.status == 429 else "route"
            self._answer(transport, label, path, Reject(decision.status, view.scrub(decision.reason)), kind)
            return None
        if not isinstance(decision, Route):  # a redirect (JSON answers are for plain requests)
            location = getattr(decision, "location", None)
            if location is None:
                self._answer(transport, label, path, Reject(400, "not a WebSocket endpoint"), "route")
                return None
            _log.info("redirected client={client} path={path!r} location={location} reason={reason!r}",
                      client=label, path=path, location=view.scrub(self.redact(location)), reason=decision.reason)
            refuse_connection(self.reactor, transport, Reject(307, decision.reason), [("Location", location)])
            return None
        session_id = os.urandom(6).hex()
        identity = certificate.identity if certificate is not None else ""
        link = self.link_for(decision, head, view, client, ISSLTransport.providedBy(transport), identity)
        link, authorised = self._with_steps(decision, head, view, client, link, hop is not None,
                                            ISSLTransport.providedBy(transport), certificate)
        if received is not None:
            link = self.hops.guard(link, received)  # outermost: a replayed hop is refused before anything
        recording = ""
        if decision.options.record and self.recordings.spec is not None:
            recorded = self.recordings.link(link, session_id)
            link, recording = recorded, recorded.recording
        session = GatewaySession(self, decision, head, handshake, client, link, session_id, recording)
        if authorised is not None:
            authorised.named_user = session.name_user
        session.tls_client = identity
        session.via = via
        session.shown_path = view.shown_path
        hand_over(transport, session)
        session.makeConnection(transport)
        session.begin(early)
        return session

    def _with_steps(self, decision: Route, head: RequestHead, view: RequestView, client: str, link: BackendLink,
                    hopped: bool, secure: bool, certificate: Optional[ClientCertificate] = None
                    ) -> tuple[BackendLink, Optional[ForwardAuthLink]]:
        """
        The route's steps before its backend, wrapped around link innermost
        first; on connect the outermost runs first: the owner check (a redirect
        burns nothing), pool-wide limits, the single-use claim, then the portal
        (which may swap the link it wraps for the desktop it names).  The
        portal and a redirect see the view's target: the path routing chose.
        """
        uri = view.target
        authorised: Optional[ForwardAuthLink] = None
        if decision.options.auth is not None:
            timeout = decision.options.connect_timeout
            authorised = link = ForwardAuthLink(
                link, self.portals.portals[decision.options.auth], client, uri,
                {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in head.headers},
                lambda endpoint: TcpLink(lambda: self.backends.connect(endpoint, timeout), endpoint))
        if decision.once is not None:
            link = SingleUseLink(link, self.pool, *decision.once)  # the parser refuses once=on without a Pool
        rule = decision.rule
        # A desktop counts its clients (one client's channels once); a user counts desktops.
        limits = [(key, n, group) for key, n, group in (
            (f"desktop:{decision.desktop}", rule.max_per_desktop, client),
            (f"user:{decision.user}", rule.max_per_user if decision.user else 0, decision.desktop)) if n
        ] if isinstance(rule, TokenRouteSpec) else []
        if limits and self.pool is not None:
            link = PoolLimitLink(link, self.pool, f"{rule.path} {decision.desktop} {client}", limits)
        topology = self.topology
        if decision.desktop_host and not hopped and topology is not None and topology.owners_source is not None:
            relay: Optional[Callable[[str], BackendLink]] = None
            if topology.hop_secrets:
                def relay(owner: str) -> BackendLink:
                    return self._hop(decision, head, client, secure, owner, topology, certificate)
            link = OwnerCheckLink(link, topology, decision.desktop_host, uri, relay)
        return link, authorised

    def _hop(self, decision: Route, head: RequestHead, client: str, secure: bool, owner: str, topology: Any,
             certificate: Optional[ClientCertificate]) -> BackendLink:
        """A WebSocket link carrying the session to the owning gateway, signed as a hop of this pool."""
        try:
            url = parse_websocket_url(owner + head.path.decode("latin-1"))
        except ValueError as e:
            raise BackendRefused(Reject(502, f"the owner's URL is not usable: {e}"), "owner") from None
        options = RouteOptions(connect_timeout=decision.options.connect_timeout,
                               cafile=topology.config.owner_source.hop_ca_file or None)
        route = Route(decision.rule, WebSocketURL(url.url, url), options)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in head.headers}
        uri = head.target.decode("latin-1")
        signed = self.hops.sign(topology.hop_secrets[0], topology.config.gateway_url or "", client, certificate,
                                owner, uri)
        return WebSocketLink(self.websocket_backends, route, head.query, client, secure, headers,
                             extra={"X-Tunnelgw-Hop": signed})

    def _answer(self, transport: Any, client: str, path: str, reject: Reject, kind: str) -> None:
        log_refusal(client, path, reject, kind)
        self.metrics.handshake_failed("", kind, reject.status)
        refuse_connection(self.reactor, transport, reject)

    def link_for(self, route: Route, head: RequestHead, view: RequestView, client: str, secure: bool,
                 tls_client: str = "") -> BackendLink:
        """
        The backend link for a route: a pool member, a WebSocket hop, a replay or a byte stream.

        :param tls_client: the client certificate's identity, for ws:// hops.
        """
        backend = route.backend
        if isinstance(backend, LookupTarget):
            topology = self.topology
            assert topology is not None, "lookup targets come from token routes"
            uri = view.target
            looked_up = TcpLink(lambda: topology.connect_token(route, backend, client, uri, named), backend.text)

            def named(endpoint: str) -> None:
                looked_up.description = endpoint

            return looked_up
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
            return WebSocketLink(self.websocket_backends, route, view.query.encode("latin-1"), client, secure, headers,
                                 tls_client)
        endpoint, timeout = backend.endpoint, route.options.connect_timeout
        return TcpLink(functools.partial(self.backends.connect, endpoint, timeout), endpoint)
