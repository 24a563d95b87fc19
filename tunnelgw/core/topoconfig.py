"""
The deployment-topology directives of the configuration file, parsed into
frozen values (pure: no Twisted, no I/O).

The directive table of :mod:`tunnelgw.core.config` hands each of these
directives to its ``read_*`` method of :class:`TopologyParser` and calls
:meth:`TopologyParser.finish` at the end, which reports unclosed blocks and
references to undefined names as ``FILE:LINE`` problems.

Directives::

    TokenSource NAME file|dir|jwt|jwks|redis PATH allow=HOST:PORTS ... [reload=S] [bind=address] ...
    TokenRoute PATH SOURCE [from=query|path|host] [param=token] [connecttimeout=S]
    TokenLookup PATH TOKENROUTEPATH
    <Proxy balancer://NAME>
      BalancerMember ENDPOINT [status=drain]
      ProxySet lbmethod=byrequests|bybusyness|bysource retry=S
    </Proxy>
    GatewayURL URL
    OwnerSource redis://HOST:PORT/DB [namespace=NS] [timeout=S] [mode=redirect|relay] ...
        (each redis:// URL may also be sentinel://HOST:PORT,HOST:PORT,.../SERVICE[/DB])
    GatewayOwner URL HOST (CIDR block, address or exact name) ...
    TrustedProxy ADDRESS-OR-NETWORK ... [header=x-forwarded-for|forwarded]
    OriginAllow PATH ORIGIN ...
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

from tunnelgw.core.clientaddr import PROXY_HEADERS, XFF
from tunnelgw.core.errors import Location
from tunnelgw.core.hostpattern import host_pattern_problem
from tunnelgw.core.jwtkeys import ALGORITHMS
from tunnelgw.core.options import choice, matching, number, read_options, whole

__all__ = [
    "AllowedTarget",
    "BalancerMemberSpec",
    "BalancerSpec",
    "GatewayOwner",
    "OPTION_TABLES",
    "OriginRule",
    "TokenLookupSpec",
    "TokenRouteSpec",
    "TokenSourceSpec",
    "TopologyConfig",
    "TopologyParser",
]

LB_METHODS = ("byrequests", "bybusyness", "bysource")
TOKEN_KINDS = ("file", "dir", "jwt", "jwks", "redis")
SIGNED_KINDS = ("jwt", "jwks")
TOKEN_FROM = ("query", "path", "host")
DEFAULT_RETRY = 60.0
DEFAULT_TOKEN_RELOAD = 2.0

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class AllowedTarget:
    """``allow=HOST:LO-HI``: token targets may name these hosts and ports only."""

    host_glob: str
    low: int
    high: int


@dataclass(frozen=True)
class TokenSourceSpec:
    """``TokenSource``: where tokens are looked up and which targets they may name."""

    name: str
    kind: str
    path: str
    allow: tuple[AllowedTarget, ...]
    reload: float
    bind_address: bool
    where: Location
    #: For redis sources: keys are ``NAMESPACE:TOKEN`` (websockify's TokenRedis layout); empty: ``TOKEN``.
    namespace: str = ""
    #: For redis sources: seconds a lookup may take before the client gets 503.
    timeout: float = 1.0
    #: For jwt sources (``once=on``): each token opens one session in the whole pool (its ``jti`` is
    #: recorded in the Pool's Redis until the token expires).
    single_use: bool = False
    #: For jwt sources: the key's algorithm (``alg=``; HS256: PATH holds the secret, else a PEM public key).
    algorithm: str = "HS256"
    #: For signed sources: the required ``aud`` and ``iss`` claims ("" : not checked) and the clock leeway.
    audience: str = ""
    issuer: str = ""
    leeway: float = 0.0
    #: For redis sources: a file holding the Redis password ("": none).
    password_file: str = ""

    @property
    def redis(self) -> "RedisAddress":
        """For redis sources: where the server is (the parser checked the URL)."""
        found = redis_address(self.path)
        assert found is not None
        return found


@dataclass(frozen=True)
class RedisAddress:
    """
    ``redis://HOST:PORT/DB`` (``rediss://``: TLS), or the primary of a
    Sentinel service: ``sentinel://HOST:PORT,HOST:PORT,.../SERVICE[/DB]``
    (``host`` and ``port`` are then the first sentinel's).
    """

    host: str
    port: int
    db: int
    tls: bool
    #: Sentinel form: the sentinels' (host, port), and the service (master) name.
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""

    @property
    def where(self) -> str:
        """The address as messages name it."""
        if self.sentinels:
            return f"sentinel service {self.service} ({','.join(f'{h}:{p}' for h, p in self.sentinels)})"
        return f"{self.host}:{self.port}"


_SENTINEL = re.compile(r"sentinel://([^/?#@]+)/([A-Za-z0-9_.-]{1,64})(?:/([0-9]|1[0-5]))?/?")


def _sentinel_address(text: str) -> Optional[RedisAddress]:
    found = _SENTINEL.fullmatch(text)
    if found is None:
        return None
    sentinels = []
    for item in found.group(1).split(","):
        host, _, port = item.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            return None
        sentinels.append((host, int(port)))
    first = sentinels[0]
    return RedisAddress(first[0], first[1], int(found.group(3) or 0), False, tuple(sentinels), found.group(2))


def redis_address(text: str) -> Optional[RedisAddress]:
    """
    A Redis URL without credentials (passwords go in files), in the plain or
    the Sentinel form, or None when it is not one.
    """
    if text.startswith("sentinel://"):
        return _sentinel_address(text)
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError:
        return None
    if url.scheme not in ("redis", "rediss") or not url.hostname or url.username or url.password or url.query \
            or url.fragment or url.path.strip("/") not in ("", *map(str, range(16))):
        return None
    return RedisAddress(url.hostname, port or 6379, int(url.path.strip("/") or 0), url.scheme == "rediss")


@dataclass(frozen=True)
class TokenRouteSpec:
    """``TokenRoute``: requests at PATH (or below) go where their token says."""

    path: str
    source: str
    origin: str
    param: str
    connect_timeout: float
    where: Location
    #: With a Pool: at most this many sessions of one desktop (token) in the whole pool, a session
    #: being one client's channels (0: no limit).
    max_per_desktop: int = 0
    #: With a Pool: at most this many desktops of one user (the token's user) in the whole pool (0: no limit).
    max_per_user: int = 0

    @property
    def label(self) -> str:
        """The route's name in metrics and logs: its path."""
        return self.path


@dataclass(frozen=True)
class TokenLookupSpec:
    """``TokenLookup``: a JSON endpoint at PATH answering a token route's gateway URL."""

    path: str
    route_path: str
    where: Location


@dataclass(frozen=True)
class BalancerMemberSpec:
    """``BalancerMember``: one backend of a pool; drained members take no new sessions."""

    endpoint: str
    drain: bool
    where: Location


@dataclass(frozen=True)
class BalancerSpec:
    """``<Proxy balancer://NAME>``: a named pool of members and how to choose among them."""

    name: str
    members: tuple[BalancerMemberSpec, ...]
    method: str
    retry: float
    where: Location


@dataclass(frozen=True)
class GatewayOwner:
    """``GatewayOwner``: the gateway at URL serves the desktop hosts these patterns name."""

    url: str
    host_globs: tuple[str, ...]
    where: Location


@dataclass(frozen=True)
class OriginRule:
    """``OriginAllow``: WebSocket handshakes at PATH (or below) need one of these Origins."""

    path: str
    origins: tuple[str, ...]
    where: Location


@dataclass(frozen=True)
class OwnerSourceSpec:
    """``OwnerSource redis://HOST:PORT/DB``: which gateway owns a desktop host, as a broker writes it.

    The key is ``NAMESPACE:owner:HOST``, the value the owner's gateway URL.
    """

    url: str
    namespace: str
    timeout: float
    where: Location
    #: ``redirect`` (307 to the owner) or ``relay`` (carry the session to it over WebSocket).
    mode: str = "redirect"
    #: For relay: a file holding the pool's shared hop secret (at least 32 bytes).
    hop_secret: str = ""
    #: A file holding the Redis password ("": none).
    password_file: str = ""
    #: For relay to ``wss://`` owners: a PEM file of the CA certificates their TLS certificates chain to
    #: ("": the platform's trust store).
    hop_ca_file: str = ""

    @property
    def redis(self) -> "RedisAddress":
        found = redis_address(self.url)
        assert found is not None
        return found


@dataclass(frozen=True)
class TopologyConfig:
    """Everything the topology directives configured; empty by default."""

    token_sources: tuple[TokenSourceSpec, ...] = ()
    token_routes: tuple[TokenRouteSpec, ...] = ()
    token_lookups: tuple[TokenLookupSpec, ...] = ()
    balancers: tuple[BalancerSpec, ...] = ()
    gateway_url: Optional[str] = None
    owners: tuple[GatewayOwner, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    #: The header the trusted proxies name the client in (``TrustedProxy ... header=``).
    proxy_header: str = XFF
    origins: tuple[OriginRule, ...] = ()
    owner_source: Optional[OwnerSourceSpec] = None


def _ports(text: str) -> Optional[tuple[int, int]]:
    """``5900`` or ``5900-5999`` as an inclusive range, or None when invalid."""
    low_text, dash, high_text = text.partition("-")
    if not low_text.isdigit() or (dash and not high_text.isdigit()):
        return None
    low = int(low_text)
    high = int(high_text) if dash else low
    return (low, high) if 1 <= low <= high <= 65535 else None


def read_allowed(value: str) -> AllowedTarget:
    host, _, ports = value.rpartition(":")
    span = _ports(ports)
    if not host or host_pattern_problem(host) or span is None:
        raise ValueError(f"takes HOST:PORT or HOST:LOW-HIGH with HOST a CIDR block, address or exact name, "
                         f"e.g. 10.0.0.0/16:5900-5999, got {value!r}")
    return AllowedTarget(host.lower(), *span)


_SECONDS = number(0, 86400)
_TOKEN_SOURCE_OPTIONS = {"allow": read_allowed, "reload": _SECONDS, "bind": choice("address", "none"),
                         "namespace": matching(_NAME.pattern, "a plain name"), "timeout": number(0.05, 60),
                         "passwordfile": matching(r"/.+", "an absolute file name"),
                         "once": choice("on", "off"), "alg": choice(*(a.lower() for a in ALGORITHMS)),
                         "aud": matching(r"[!-~]{1,256}", "printable text"), "iss": matching(r"[!-~]{1,256}", "printable text"),
                         "leeway": number(0, 300)}
_TOKEN_ROUTE_OPTIONS = {"from": choice(*TOKEN_FROM), "param": matching(_NAME.pattern, "a plain name"),
                        "connecttimeout": number(0, 86400, above_low=True),
                        "maxperdesktop": whole(1, 10**6), "maxperuser": whole(1, 10**6)}
_MEMBER_OPTIONS = {"status": choice("drain", "+n", "active")}
_POOL_OPTIONS = {"lbmethod": choice(*LB_METHODS), "retry": _SECONDS}
_OWNER_OPTIONS = {"namespace": matching(_NAME.pattern, "a plain name"), "timeout": number(0.05, 60),
                  "mode": choice("redirect", "relay"), "hopsecret": matching(r"/.+", "an absolute file name"),
                  "hopcafile": matching(r"/.+", "an absolute file name"),
                  "passwordfile": matching(r"/.+", "an absolute file name")}
_TRUSTED_PROXY_OPTIONS = {"header": choice(*PROXY_HEADERS)}
#: The ``key=value`` readers of each topology directive (the reference lists their keys).
OPTION_TABLES: dict[str, dict[str, Any]] = {
    "TokenSource": _TOKEN_SOURCE_OPTIONS, "TokenRoute": _TOKEN_ROUTE_OPTIONS, "BalancerMember": _MEMBER_OPTIONS,
    "ProxySet": _POOL_OPTIONS, "OwnerSource": _OWNER_OPTIONS, "TrustedProxy": _TRUSTED_PROXY_OPTIONS}


def _is_ws_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port
    except ValueError:
        return False
    return parts.scheme in ("ws", "wss", "http", "https") and bool(parts.hostname) and parts.path in ("", "/") \
        and not parts.query and not parts.fragment


@dataclass
class TopologyParser:
    """Collects topology directives line by line; :meth:`finish` gives the value."""

    token_sources: list[TokenSourceSpec] = field(default_factory=list)
    token_routes: list[TokenRouteSpec] = field(default_factory=list)
    token_lookups: list[TokenLookupSpec] = field(default_factory=list)
    balancers: list[BalancerSpec] = field(default_factory=list)
    gateway_url: Optional[str] = None
    owners: list[GatewayOwner] = field(default_factory=list)
    owner_source: Optional[OwnerSourceSpec] = None
    trusted: list[Network] = field(default_factory=list)
    proxy_header: str = XFF
    proxy_header_where: Optional[Location] = None
    origins: list[OriginRule] = field(default_factory=list)
    _block: Optional[tuple[str, Location, list[BalancerMemberSpec], dict[str, Any]]] = None

    @property
    def in_block(self) -> bool:
        """True between ``<Proxy ...>`` and ``</Proxy>``."""
        return self._block is not None

    def read_token_source(self, args: list[str], where: Location, problem: Callable[[str], None], _: object) -> None:
        if len(args) < 3 or args[1] not in TOKEN_KINDS or not _NAME.fullmatch(args[0]):
            problem("TokenSource takes a name, a kind (file, dir, jwt, jwks, redis), a path (for jwt: a file "
                    "holding the secret; for redis: redis://HOST:PORT/DB) and allow=HOST:PORTS options")
            return
        name, kind, path = args[:3]
        if any(s.name == name for s in self.token_sources):
            problem(f"duplicate TokenSource {name!r}")
            return
        found = read_options(args[3:], _TOKEN_SOURCE_OPTIONS, problem, "TokenSource", repeatable=("allow",))
        allow: list[AllowedTarget] = found.get("allow", [])
        reload = found.get("reload", DEFAULT_TOKEN_RELOAD)
        bind = found.get("bind") == "address"
        if not allow:
            problem("TokenSource needs at least one allow=HOST:PORTS: tokens may not name any host")
            return
        if bind and kind not in SIGNED_KINDS:
            problem("bind=address needs signed tokens (kind jwt or jwks)")
        for key in ("aud", "iss", "leeway"):
            if key in found and kind not in SIGNED_KINDS:
                problem(f"{key}= applies to signed token sources (jwt, jwks) only")
        if "alg" in found and kind != "jwt":
            problem("alg= applies to jwt sources (a jwks file pins each key's algorithm itself)")
        algorithm = {a.lower(): a for a in ALGORITHMS}[found.get("alg", "hs256")]
        if kind == "redis" and redis_address(path) is None:
            problem("a redis TokenSource takes redis://HOST:PORT/DB (rediss:// for TLS, sentinel://HOST:PORT,.../SERVICE/DB "
                    f"for a Sentinel service, no password in it), got {path!r}")
        for key in ("namespace", "timeout", "passwordfile"):
            if key in found and kind != "redis":
                problem(f"{key}= applies to redis token sources only")
        if found.get("once") == "on" and kind not in SIGNED_KINDS:
            problem("once=on needs signed tokens (kind jwt or jwks) with a jti claim")
        self.token_sources.append(TokenSourceSpec(name, kind, path, tuple(allow), reload, bind, where,
                                                  found.get("namespace", ""), found.get("timeout", 1.0),
                                                  found.get("once") == "on", algorithm, found.get("aud", ""),
                                                  found.get("iss", ""), found.get("leeway", 0.0),
                                                  found.get("passwordfile", "")))

    def read_token_route(self, args: list[str], where: Location, problem: Callable[[str], None],
                    is_safe_path: Callable[[str], bool]) -> None:
        if len(args) < 2 or not is_safe_path(args[0]):
            problem("TokenRoute takes an absolute path and a TokenSource name, then from=query|path|host, "
                    "param=NAME, connecttimeout=S")
            return
        found = read_options(args[2:], _TOKEN_ROUTE_OPTIONS, problem, "TokenRoute")
        origin, param = found.get("from", "query"), found.get("param", "token")
        timeout = found.get("connecttimeout", 10.0)
        path = args[0] if args[0] == "/" else args[0].rstrip("/")
        if any(r.path == path for r in self.token_routes):
            problem(f"duplicate TokenRoute path {path!r}")
            return
        self.token_routes.append(TokenRouteSpec(path, args[1], origin, param, timeout, where,
                                                found.get("maxperdesktop", 0), found.get("maxperuser", 0)))

    def read_token_lookup(self, args: list[str], where: Location, problem: Callable[[str], None],
                     is_safe_path: Callable[[str], bool]) -> None:
        if len(args) != 2 or not all(is_safe_path(a) for a in args):
            problem("TokenLookup takes the lookup's path and a TokenRoute path, e.g. TokenLookup /lookup /vnc")
            return
        self.token_lookups.append(TokenLookupSpec(args[0], args[1].rstrip("/") or "/", where))

    def read_proxy(self, args: list[str], where: Location, problem: Callable[[str], None], _: object) -> None:
        text = " ".join(args)
        if not text.endswith(">"):
            problem("a block opens with <Proxy balancer://NAME>")
            return
        url = text[:-1].strip()
        name = url[len("balancer://"):] if url.startswith("balancer://") else ""
        if not _NAME.fullmatch(name):
            problem(f"<Proxy> takes balancer://NAME with a plain NAME, got {url!r}")
            name = "-"
        elif any(b.name == name for b in self.balancers):
            problem(f"duplicate balancer {name!r}")
        self._block = (name, where, [], {})

    def read_proxy_end(self, args: list[str], where: Location, problem: Callable[[str], None], _: object) -> None:
        if self._block is None:
            problem("</Proxy> without <Proxy balancer://NAME>")
            return
        name, opened, members, settings = self._block
        self._block = None
        if not members:
            problem(f"balancer {name!r} has no BalancerMember")
            return
        method = settings.get("lbmethod", "byrequests")
        retry = settings.get("retry", DEFAULT_RETRY)
        self.balancers.append(BalancerSpec(name, tuple(members), method, retry, opened))

    def read_balancer_member(self, args: list[str], where: Location, problem: Callable[[str], None], _: object) -> None:
        if self._block is None:
            problem("BalancerMember belongs inside <Proxy balancer://NAME> ... </Proxy>")
            return
        if not args:
            problem("BalancerMember takes a client endpoint string, then optional status=drain")
            return
        drain = read_options(args[1:], _MEMBER_OPTIONS, problem, "BalancerMember").get("status") in ("drain", "+n")
        if any(m.endpoint == args[0] for m in self._block[2]):
            problem(f"duplicate BalancerMember {args[0]!r}")
            return
        self._block[2].append(BalancerMemberSpec(args[0], drain, where))

    def read_proxy_set(self, args: list[str], where: Location, problem: Callable[[str], None], _: object) -> None:
        if self._block is None:
            problem("ProxySet belongs inside <Proxy balancer://NAME> ... </Proxy>")
            return
        self._block[3].update(read_options(args, _POOL_OPTIONS, problem, "ProxySet"))

    def read_owner_source(self, args: list[str], where: Location, problem: Callable[[str], None], _: object) -> None:
        if not args or redis_address(args[0]) is None:
            problem("OwnerSource takes redis://HOST:PORT/DB (rediss:// for TLS; sentinel://HOST:PORT,.../SERVICE/DB "
                    "for a Sentinel service), then namespace=NS timeout=S")
            return
        if self.owner_source is not None:
            problem(f"OwnerSource is given twice (first at {self.owner_source.where})")
            return
        found = read_options(args[1:], _OWNER_OPTIONS, problem, "OwnerSource")
        mode = found.get("mode", "redirect")
        if (mode == "relay") != ("hopsecret" in found):
            problem("OwnerSource mode=relay and hopsecret=FILE go together (the pool's shared hop secret)")
        if "hopcafile" in found and mode != "relay":
            problem("OwnerSource hopcafile= applies to mode=relay (the CA of wss:// owners)")
        self.owner_source = OwnerSourceSpec(args[0], found.get("namespace", "tunnelgw"), found.get("timeout", 1.0),
                                            where, mode, found.get("hopsecret", ""), found.get("passwordfile", ""),
                                            found.get("hopcafile", ""))

    def read_gateway_url(self, args: list[str], where: Location, problem: Callable[[str], None], _: object) -> None:
        if len(args) != 1 or not _is_ws_url(args[0]):
            problem("GatewayURL takes this gateway's base URL, e.g. wss://host1.example:8443")
            return
        self.gateway_url = args[0].rstrip("/")

    def read_gateway_owner(self, args: list[str], where: Location, problem: Callable[[str], None], _: object) -> None:
        if len(args) < 2 or not _is_ws_url(args[0]) or any(host_pattern_problem(g) for g in args[1:]):
            problem("GatewayOwner takes a gateway's base URL and the desktop hosts it serves "
                    "(CIDR blocks, addresses or exact names, no globs)")
            return
        self.owners.append(GatewayOwner(args[0].rstrip("/"), tuple(g.lower() for g in args[1:]), where))

    def read_trusted_proxy(self, args: list[str], where: Location, problem: Callable[[str], None], _: object) -> None:
        addresses = [a for a in args if "=" not in a]
        if not addresses:
            problem("TrustedProxy takes addresses or networks, e.g. TrustedProxy 127.0.0.1 10.1.0.0/16")
        for arg in addresses:
            try:
                self.trusted.append(ipaddress.ip_network(arg, strict=False))
            except ValueError:
                problem(f"TrustedProxy takes IP addresses or networks, got {arg!r}")
        value = read_options([a for a in args if "=" in a], _TRUSTED_PROXY_OPTIONS, problem, "TrustedProxy").get("header")
        if value is not None:
            if self.proxy_header_where is not None and value != self.proxy_header:
                problem(f"TrustedProxy header={value} contradicts header={self.proxy_header} at "
                        f"{self.proxy_header_where}: the client address comes from one header")
            else:
                self.proxy_header, self.proxy_header_where = value, where

    def read_origin_allow(self, args: list[str], where: Location, problem: Callable[[str], None],
                     is_safe_path: Callable[[str], bool]) -> None:
        if len(args) < 2 or not is_safe_path(args[0]):
            problem("OriginAllow takes a path and the allowed origins, e.g. OriginAllow /vnc https://vdi.example")
            return
        self.origins.append(OriginRule(args[0].rstrip("/") or "/", tuple(o.rstrip("/").lower() for o in args[1:]),
                                       where))

    def finish(self, pools: list[tuple[str, Location]], problem_at: Callable[[Location, str], None]) -> TopologyConfig:
        """
        Check cross references and close the parse.

        :param pools: (name, where) of every rule whose target is
            ``balancer://NAME``, so that each names a defined pool.
        """
        if self._block is not None:
            problem_at(self._block[1], "<Proxy> block is not closed (missing </Proxy>)")
        names = {b.name for b in self.balancers}
        for name, where in pools:
            if name not in names:
                problem_at(where, f"no <Proxy balancer://{name}> block defines this balancer")
        sources = {s.name for s in self.token_sources}
        for route in self.token_routes:
            if route.source not in sources:
                problem_at(route.where, f"no TokenSource named {route.source!r}")
        for lookup in self.token_lookups:
            if not any(r.path == lookup.route_path for r in self.token_routes):
                problem_at(lookup.where, f"no TokenRoute at {lookup.route_path!r}")
        if self.owner_source is not None and self.gateway_url is None:
            problem_at(self.owner_source.where, "OwnerSource needs GatewayURL (this gateway's own URL)")
        if self.owners and self.gateway_url is None:
            problem_at(self.owners[0].where, "GatewayOwner needs GatewayURL (this gateway's own URL)")
        return TopologyConfig(
            token_sources=tuple(self.token_sources),
            token_routes=tuple(self.token_routes),
            token_lookups=tuple(self.token_lookups),
            balancers=tuple(self.balancers),
            gateway_url=self.gateway_url,
            owners=tuple(self.owners),
            trusted_proxies=tuple(self.trusted),
            proxy_header=self.proxy_header,
            origins=tuple(self.origins),
            owner_source=self.owner_source,
        )
