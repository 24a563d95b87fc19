"""
Glue for deployment topologies: token routes, redirect mode, origin checks,
the real client address, and balancer pools, applied to twisted.web requests
and gateway sessions.  The decisions live in the pure modules
:mod:`tunnelgw.core.tokens`, :mod:`tunnelgw.core.balancer`, :mod:`tunnelgw.core.redirect`
and :mod:`tunnelgw.core.clientaddr`; this module reads requests, files and the
reactor's clock and carries the answers out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from tunnelgw.backends.tcp import BackendConnection, BackendUnavailable
from tunnelgw.backends.tls import client_endpoint
from tunnelgw.core.balancer import Member, Pool
from tunnelgw.core.breaker import BreakerState
from tunnelgw.core.clientaddr import is_trusted, resolve_client
from tunnelgw.core.hop import parse_hop_secrets
from tunnelgw.core.config import Problem, RouteOptions
from tunnelgw.core.limits import HandshakeRate
from tunnelgw.core.origin import origin_refusal
from tunnelgw.core.redact import Redaction, TokenPlace, fingerprint
from tunnelgw.core.request import RequestView
from tunnelgw.core.redirect import lookup_answer, owner_of, redirect_location
from tunnelgw.core.relay import ConnectFailure
from tunnelgw.core.routing import Reject, Route
from tunnelgw.backends import BackendRefused
from tunnelgw.core.jwtkeys import load_key, parse_jwks
from tunnelgw.core.targets import EndpointTarget, LookupTarget, PoolTarget
from tunnelgw.redistokens import RedisOwners, RedisTokens
from tunnelgw.core.tokens import MIN_SECRET_BYTES, FileTokens, SignedTokens, TargetAddress, extract_token, make_token_source
from tunnelgw.core.topoconfig import OriginRule, TokenRouteSpec, TopologyConfig

__all__ = ["JsonAnswer", "Redirect", "Topology", "check_topology", "read_hop_secrets", "read_secret"]

_log = Logger(namespace="tunnelgw")


@dataclass(frozen=True)
class Redirect:
    """Answer 307 with this Location: another gateway owns the desktop."""

    location: str
    reason: str


@dataclass(frozen=True)
class JsonAnswer:
    """Answer 200 with this JSON body (the token lookup)."""

    body: dict[str, str]


Decision = Union[None, Reject, Route, Redirect, JsonAnswer]


def read_secret(path: str) -> bytes:
    """A signing secret from a file, surrounding white space removed.

    :raises ValueError: when the file cannot be read or is too short.
    """
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as e:
        raise ValueError(f"cannot read the token secret: {e}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the token secret must hold at least {MIN_SECRET_BYTES} bytes (RFC 7518 section 3.2)")
    return secret


def read_hop_secrets(path: str) -> tuple[bytes, ...]:
    """The pool's hop secrets from a file, one per line (the first signs; see :mod:`tunnelgw.core.hop`).

    :raises ValueError: when the file cannot be read or a secret is too short.
    """
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"cannot read the hop secret: {e}") from None
    return parse_hop_secrets(text, MIN_SECRET_BYTES)


def check_topology(config: TopologyConfig, reactor: Any) -> list[Problem]:
    """Problems Twisted or the file system find: bad member endpoints, unreadable secrets."""
    problems: list[Problem] = []
    for pool in config.balancers:
        for member in pool.members:
            try:
                client_endpoint(reactor, member.endpoint)
            except Exception as e:
                problems.append(Problem(member.where, f"bad BalancerMember endpoint {member.endpoint!r}: {e}"))
    for source in config.token_sources:
        if source.kind == "jwt":
            try:
                load_key(source.algorithm, read_secret(source.path))
            except ValueError as e:
                problems.append(Problem(source.where, str(e)))
        elif source.kind == "jwks":
            try:
                with open(source.path, encoding="utf-8") as f:
                    keys, bad = parse_jwks(f.read())
            except (OSError, UnicodeDecodeError) as e:
                keys, bad = {}, [str(e)]
            if not keys:
                problems.append(Problem(source.where, f"{source.path}: no usable key ({'; '.join(bad) or 'empty'})"))
    for where, password in [(s.where, s.password_file) for s in config.token_sources if s.kind == "redis"] + (
            [(config.owner_source.where, config.owner_source.password_file)] if config.owner_source else []):
        if password and not os.access(password, os.R_OK):
            problems.append(Problem(where, f"cannot read the Redis password file {password!r}"))
    owners = config.owner_source
    if owners is not None and owners.mode == "relay":
        messages = []
        try:
            read_hop_secrets(owners.hop_secret)
        except ValueError as e:
            messages.append(f"hop secret: {e}")
        if owners.hop_ca_file and not os.access(owners.hop_ca_file, os.R_OK):
            messages.append(f"cannot read hopcafile {owners.hop_ca_file!r}")
        problems.extend(Problem(owners.where, message) for message in messages)
    return problems


def _under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def _header(request: Any, name: bytes) -> str:
    return (request.getHeader(name) or b"").decode("latin-1")


class Topology:
    """
    The live topology state of one configuration: token sources, pools and
    rules.  A reload builds a new one from the old, keeping pool state.
    """

    def __init__(self, config: TopologyConfig, reactor: Any, backends: Any,
                 previous: Optional["Topology"] = None,
                 secret: Callable[[str], bytes] = read_secret, metrics: Any = None,
                 hop_secrets: Callable[[str], tuple[bytes, ...]] = read_hop_secrets) -> None:
        self.config = config
        self._reactor = reactor
        self._backends = backends
        old_sources = previous.sources if previous else {}
        self.sources: dict[str, Union[FileTokens, SignedTokens, RedisTokens]] = {}
        for spec in config.token_sources:
            kept = old_sources.get(spec.name)
            if kept is not None and kept.spec == spec:
                self.sources[spec.name] = kept
            else:
                self.sources[spec.name] = (RedisTokens(spec, reactor, metrics) if spec.kind == "redis"
                                           else make_token_source(spec, secret))
        old_pools = previous.pools if previous else {}
        self.pools: dict[str, Pool] = {b.name: Pool.from_spec(b, old_pools.get(b.name)) for b in config.balancers}
        kept_owners = previous.owners_source if previous else None
        if kept_owners is not None and kept_owners.spec == config.owner_source:
            self.owners_source: Optional[RedisOwners] = kept_owners
        else:
            self.owners_source = (RedisOwners(config.owner_source, reactor, metrics)
                                  if config.owner_source is not None else None)
        #: The pool's hop secrets (``OwnerSource mode=relay``), read again on each reload: the first signs
        #: relayed sessions, each is accepted (two during a rotation).
        self.hop_secrets: tuple[bytes, ...] = (
            hop_secrets(config.owner_source.hop_secret)
            if config.owner_source is not None and config.owner_source.mode == "relay" else ())
        self.token_places = tuple(TokenPlace(r.path, r.origin, r.param) for r in config.token_routes)
        #: The one redaction of this configuration (see :class:`tunnelgw.core.redact.Redaction`).
        self.redaction = Redaction(self.token_places)
        # Built whole: now the Redis stores the new configuration dropped or changed can stop.
        if kept_owners is not None and kept_owners is not self.owners_source:
            kept_owners.store.stop()
        for name, old in old_sources.items():
            if isinstance(old, RedisTokens) and self.sources.get(name) is not old:
                old.store.stop()

    def redis_states(self) -> list[BreakerState]:
        """The state of each Redis this topology asks (token sources, the owner source), for the operator."""
        stores = [s.store for s in self.sources.values() if isinstance(s, RedisTokens)]
        if self.owners_source is not None:
            stores.append(self.owners_source.store)
        return [store.state() for store in stores]

    def stop(self) -> None:
        """Stop the threads and probes of the Redis stores (at shutdown)."""
        for source in self.sources.values():
            if isinstance(source, RedisTokens):
                source.store.stop()
        if self.owners_source is not None:
            self.owners_source.store.stop()

    def redact(self, uri: str) -> str:
        """A request URI or URL with every token this topology knows how to find fingerprinted."""
        return self.redaction(uri)

    # The client address.

    def client_of(self, request: Any) -> str:
        """
        The real client address of a request (see
        :func:`tunnelgw.core.clientaddr.resolve_client`); a trusted proxy's
        header that names no IP address is logged and the peer is used.
        """
        peer = request.getClientAddress()
        host = getattr(peer, "host", None) or str(getattr(peer, "name", "") or peer)
        if not self.config.trusted_proxies:  # no proxy's header counts: the peer, without reading the headers
            return host
        header = self.config.proxy_header
        values = [v.decode("latin-1") for name, vs in request.requestHeaders.getAllRawHeaders()
                  if name.lower() == header.encode("ascii") for v in vs]
        client, problem = resolve_client(host, self.config.trusted_proxies, {header: values}, header)
        if problem is not None:
            _log.info("client address from peer={peer} path={path!r}: {problem}",
                      peer=host, path=self.redact(request.path.decode("latin-1")), problem=problem)
        return client

    # Requests.

    def screen(self, view: RequestView, request: Any, client: str, upgrade: bool,
               rate: Optional[HandshakeRate] = None, hop: bool = False) -> Decision:
        """
        What the topology says about a request before the ordinary rules:
        None (not ours), a refusal, a token route, a redirect or a JSON answer.

        :param view: the request's canonical view (its path, query and token are read from it only).
        :param request: the request's headers (``Origin``, ``Host``, forwarded ones), for the Origin check.
        :param rate: the gateway's per-client handshake bucket, charged before
            a token lookup answers a plain request, so that a prober pays for
            every guess.  Upgrades are charged once, by
            :meth:`tunnelgw.gateway.GatewayFactory.decide`, before this is called.
        """
        if view.refusal is not None:
            return view.refusal
        path, query = view.path, view.query
        for lookup in self.config.token_lookups:
            if path == lookup.path.rstrip("/") or path == lookup.path:
                return self._charge(rate, client) or self._lookup(lookup.route_path, query, request, client)
        route_spec = self._token_route(path)
        if not upgrade:
            if route_spec is None:
                return None
            return Reject(426, "this path is a WebSocket endpoint; open it with a WebSocket client")
        # A pool hop's Origin was checked by the gateway that relayed it.
        refused = None if hop else self._check_origin(view, request)
        if refused is not None:
            return refused
        if route_spec is None:
            return None
        options = RouteOptions(connect_timeout=route_spec.connect_timeout)
        token = self._token_of(route_spec, view, client)
        if isinstance(token, Reject):
            return token
        # The channels that carry one token are one desktop (SPICE opens several).
        desktop = fingerprint(token)
        source = self.sources[route_spec.source]
        if isinstance(source, RedisTokens):
            # Looked up when the session connects (off the reactor thread); no redirect for these.
            return Route(route_spec, LookupTarget(route_spec.source, token), options, desktop=desktop)
        target = source.lookup(token, self._reactor.seconds(), client)
        if isinstance(target, Reject):
            return self._refused_token(target, client, token)
        owner = owner_of(target.host, self.config.owners)
        if owner is not None and owner != self.config.gateway_url:
            return Redirect(redirect_location(owner, view.target),
                            f"desktop host {target.host} is served by {owner}")
        return Route(route_spec, EndpointTarget(target.endpoint), options, desktop=desktop, user=target.user,
                     once=target.once, desktop_host=target.host)

    def _token_route(self, path: str) -> Optional[TokenRouteSpec]:
        found = [r for r in self.config.token_routes if _under(path, r.path)]
        return max(found, key=lambda r: len(r.path)) if found else None

    def _check_origin(self, view: RequestView, request: Any) -> Optional[Reject]:
        """
        The longest ``OriginAllow`` rule over the path decides; without one,
        only the gateway's own origin.  The reason names origins redacted
        (the gateway's own holds a ``from=host`` token).
        """
        rules: list[OriginRule] = [r for r in self.config.origins if _under(view.path, r.path)]
        allowed = max(rules, key=lambda r: len(r.path)).origins if rules else None
        origin = request.getHeader(b"origin")
        host, secure = self._seen_by_client(request)

        def show(url: str) -> str:
            return view.scrub(self.redaction.url(url, page=True) if "://" in url else url)

        why = origin_refusal(None if origin is None else origin.decode("latin-1"), host, secure, allowed, show)
        return Reject(403, why) if why is not None else None

    def from_proxy(self, request: Any) -> bool:
        """Whether request's peer is a ``TrustedProxy`` (whose forwarded headers are believed)."""
        peer = getattr(request.getClientAddress(), "host", None) or ""
        return is_trusted(peer, self.config.trusted_proxies)

    def _seen_by_client(self, request: Any) -> tuple[str, bool]:
        """
        The Host the client asked for and whether its connection was TLS: ours,
        or, from a TrustedProxy peer only, X-Forwarded-Host and X-Forwarded-Proto
        (their last element: the one our peer wrote; Apache appends to a client's).
        """
        host, secure = _header(request, b"host"), bool(request.isSecure())
        if self.from_proxy(request):
            forwarded_host = _header(request, b"x-forwarded-host").split(",")[-1].strip()
            proto = _header(request, b"x-forwarded-proto").split(",")[-1].strip().lower()
            host = forwarded_host or host
            secure = proto in ("https", "wss") if proto else secure
        return host, secure

    def _charge(self, rate: Optional[HandshakeRate], client: str) -> Optional[Reject]:
        refused = rate.allow(client, self._reactor.seconds()) if rate is not None else None
        if refused is not None:
            _log.info("token refused client={client} status={status} detail={detail!r}",
                      client=client, status=refused.status, detail="handshake rate exceeded before token lookup")
        return refused

    def _refused_token(self, refused: Reject, client: str, token: str) -> Reject:
        """Log why a token was refused (the answer itself says only 'invalid token')."""
        _log.info("token refused client={client} token={token} status={status} detail={detail!r}",
                  client=client, token=fingerprint(token) if token else "-", status=refused.status,
                  detail=refused.detail or refused.reason)
        return refused

    def _token_of(self, spec: TokenRouteSpec, view: RequestView, client: str) -> Union[str, Reject]:
        """The view's token (read once, where the route says), or why there is none."""
        if view.token:
            return view.token
        remainder = view.path[len(spec.path):] if spec.path != "/" else view.path
        token = extract_token(spec.origin, spec.param, remainder, view.query, view.host)
        return self._refused_token(token, client, "") if isinstance(token, Reject) else token

    def other_owner(self, host: str) -> "defer.Deferred[Optional[str]]":
        """
        With an ``OwnerSource``: the URL of the other gateway that owns host,
        or None when this one may serve it; fails with BackendRefused (503)
        when Redis cannot say.
        """
        owners = self.owners_source
        if owners is None:
            return defer.succeed(None)

        def unavailable(failure: Failure) -> None:
            _log.info("owner lookup failed: {error}", error=str(failure.value))  # the store warned once
            raise BackendRefused(Reject(503, "owner lookup unavailable"), "owner")

        d = owners.owner_of(host).addCallbacks(
            lambda owner: owner if owner is not None and owner != self.config.gateway_url else None, unavailable)
        return d

    def check_owner(self, host: str, uri: str) -> "defer.Deferred[None]":
        """Fail with a 307 to the owning gateway when another one owns host (redirect mode); else fire None."""
        def decided(owner: Optional[str]) -> None:
            if owner is not None:
                raise BackendRefused(Reject(307, f"desktop host {host} is served by {owner}"), "redirect",
                                     (("Location", redirect_location(owner, uri)),))

        return self.other_owner(host).addCallback(decided)

    def connect_token(self, route: Route, target: LookupTarget, client: str, uri: str,
                      found: Callable[[str], None]) -> "defer.Deferred[BackendConnection]":
        """
        Look a token up (a Redis source), then connect to the desktop it names;
        found gets the endpoint.  Refusals fail with BackendRefused (403, 503).
        """
        source = self.sources.get(target.source)
        if not isinstance(source, RedisTokens):
            return defer.fail(BackendRefused(Reject(503, "token lookup unavailable"), "token"))

        def looked_up(address: Union[TargetAddress, Reject]) -> Any:
            if isinstance(address, Reject):
                self._refused_token(address, client, target.token)
                raise BackendRefused(Reject(address.status, address.reason), "token")
            found(address.endpoint)
            checked = self.check_owner(address.host, uri)
            return checked.addCallback(lambda _: self._backends.connect(address.endpoint, route.options.connect_timeout))

        return source.lookup(target.token, client).addCallback(looked_up)

    def _lookup(self, route_path: str, query: str, request: Any, client: str) -> Union[Reject, JsonAnswer]:
        spec = next(r for r in self.config.token_routes if r.path == route_path)
        token = extract_token("query", "token", "", query, "")
        if isinstance(token, Reject):
            return self._refused_token(token, client, "")
        source = self.sources[spec.source]
        if isinstance(source, RedisTokens):
            return Reject(404, "lookups answer for file and jwt token sources only")
        target = source.lookup(token, self._reactor.seconds(), client)
        if isinstance(target, Reject):
            return self._refused_token(target, client, token)
        owner = owner_of(target.host, self.config.owners) or self.config.gateway_url
        if owner is None:
            return Reject(404, "no GatewayURL is configured to answer lookups with")
        return JsonAnswer({"url": lookup_answer(owner, spec.path, spec.origin, spec.param, token),
                           "gateway": owner})

    # Pools.

    def connect_pool(self, route: Route, target: PoolTarget, client: str,
                     started: Callable[[str, Callable[[], None]], None]) -> "defer.Deferred[BackendConnection]":
        """
        Connect a session to a member of the route's pool, trying the next
        member when one fails (and marking it down for the retry interval).

        :param started: called with the member's endpoint and a release
            callable (to call once when the session ends) on success.
        """
        pool = self.pools.get(target.name)
        if pool is None:
            return defer.fail(BackendUnavailable(ConnectFailure.UNREACHABLE, f"no balancer {target.text}"))
        candidates = pool.order(client, self._reactor.seconds())
        current: list[Any] = [None]
        result: defer.Deferred[BackendConnection] = defer.Deferred(lambda _: current[0] and current[0].cancel())
        tried: list[str] = []

        def attempt(index: int) -> None:
            if index >= len(candidates):
                detail = f"no member of {target.text} is available" + (
                    f" (tried {', '.join(tried)})" if tried else "")
                result.errback(BackendUnavailable(ConnectFailure.UNREACHABLE, detail))
                return
            member = candidates[index]
            current[0] = self._backends.connect(member.endpoint, route.options.connect_timeout)
            current[0].addCallbacks(lambda c: won(member, c), lambda f: lost(member, index, f))

        def won(member: Member, connection: BackendConnection) -> None:
            if result.called:  # the session gave up meanwhile
                connection.close()
                return
            pool.mark_up(member)
            pool.acquire(member)
            released = [False]

            def release() -> None:
                if not released[0]:
                    released[0] = True
                    pool.release(member)

            started(member.endpoint, release)
            result.callback(connection)

        def lost(member: Member, index: int, failure: Failure) -> None:
            if result.called:
                return
            if failure.check(defer.CancelledError):
                return
            pool.mark_down(member, self._reactor.seconds())
            tried.append(member.endpoint)
            _log.info("balancer member down pool={pool} member={member} retry={retry} reason={reason!r}",
                      pool=pool.name, member=member.endpoint, retry=pool.retry,
                      reason=str(failure.value))
            attempt(index + 1)

        attempt(0)
        return result
