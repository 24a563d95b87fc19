"""
Parse tunnelgw's Apache-flavoured configuration text into frozen values.

This module is pure: it reads text and returns a :class:`Config`, or raises
:class:`ConfigError` naming every problem as ``FILE:LINE: what is wrong``.  It
checks syntax, numbers, regular expressions and duplicates; endpoint strings
are checked against Twisted by :func:`tunnelgw.service.check_config`, which
adds its problems to the same error type.

The parser is one table, :data:`DIRECTIVES`: each entry names a directive,
its syntax, a line of help and the function that reads it (topology
directives included).  ``twistd tunnelgw --directives``, the example
configuration and the docs are kept in step with this table by tests.
Route targets are typed here (:mod:`tunnelgw.core.targets`), once.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping, Optional, Union

from tunnelgw.core.audit import FACILITIES
from tunnelgw.core.errors import ConfigError, Location, Problem
from tunnelgw.core.hostpattern import listener_is_local, target_host
from tunnelgw.core.options import Reader, choice, matching, number, read_options, whole
from tunnelgw.core.tlsconfig import CLIENT_CERT_MODES, CertPattern, ListenTLS, parse_cert_pattern, parse_ssl_endpoint
from tunnelgw.core.targets import SUBSTITUTION, BackendTarget, PoolTarget, ReplayTarget, WebSocketURL, parse_target
from tunnelgw.core.topoconfig import (OPTION_TABLES, AllowedTarget, Network, RedisAddress, TopologyConfig,
                                      TopologyParser, read_allowed, redis_address)

__all__ = [
    "DEFAULT_CONFIG",
    "Alias",
    "AccessLog",
    "AuditLog",
    "AuthPortal",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_FORWARD",
    "DIRECTIVES",
    "FORWARD_CHOICES",
    "Config",
    "ConfigError",
    "DemoBackend",
    "Directive",
    "KeepAlive",
    "Limits",
    "Listener",
    "Location",
    "PatternRule",
    "PrefixRule",
    "PoolSpec",
    "Problem",
    "Recording",
    "RouteOptions",
    "Rule",
    "SUBSTITUTION",
    "Timeouts",
    "parse_config",
    "read_config",
    "needed_packages",
    "redis_servers",
    "directive_reference",
    "OPTIONAL_PACKAGES",
]

#: Seconds allowed for a backend connection (TCP and, for ``tls:``, the TLS
#: handshake) before the client is answered 504.
DEFAULT_CONNECT_TIMEOUT = 10.0

#: The configuration used when ``twistd tunnelgw`` is started without
#: ``--config``: a loopback listener, the built-in echo backend, a page to try it.
DEFAULT_CONFIG = """\
# tunnelgw's embedded default configuration.
# A WebSocket listener on loopback port 8080.
Listen tcp:port=8080:interface=127.0.0.1
# The built-in demo backend: a TCP echo service on loopback port 8081.
DemoBackend echo tcp:port=8081:interface=127.0.0.1
# ws://127.0.0.1:8080/echo is relayed to that echo service.
ProxyPass /echo tcp:host=127.0.0.1:port=8081 connecttimeout=5
# http://127.0.0.1:8080/ serves a page that opens a session to /echo.
DemoPage / /echo
"""

_DEMO_KINDS = ("echo",)

#: What a WebSocket route may forward to its backend (``forward=``):
#: X-Forwarded-For, X-Forwarded-Proto, Forwarded (RFC 7239), Origin, Cookie, and
#: the verified client certificate's identity (``tlsclient``:
#: :data:`tunnelgw.core.tlsconfig.TLS_CLIENT_HEADER`).
FORWARD_CHOICES = ("xff", "proto", "forwarded", "origin", "cookie", "tlsclient")
#: WebSocket routes forward all of :data:`FORWARD_CHOICES` unless told otherwise.
DEFAULT_FORWARD = frozenset(FORWARD_CHOICES)


@dataclass(frozen=True)
class RouteOptions:
    """
    Per-route settings given as ``key=value`` after a target.

    :ivar forward: for ws:// and wss:// targets, the headers sent on behalf of
        the client (see :data:`FORWARD_CHOICES`).
    :ivar cafile: for wss:// targets, a PEM file of trusted CA certificates
        instead of the platform's trust store.
    :ivar verify: for wss:// targets, False only with ``verify=off``: no
        certificate or host name check.
    :ivar session_reuse: for wss:// targets, False only with
        ``sessionreuse=off``: no TLS session offered for resumption.
    :ivar idle_timeout: seconds without payload either way before the session
        is closed (0: never); None takes ``Timeout idle=``.
    :ivar max_sessions: concurrent sessions on this route; None: no own limit.
    :ivar name: the route's name in metrics, logs and the admin list
        (``name=``); None: its path or expression.
    :ivar record: record this route's sessions (``record=on``, needs ``Recording``).
    :ivar speed: for ``replay:`` targets, the playback speed factor.
    :ivar allow_clients: client networks admitted on this route
        (``allowclients=CIDR,...``); empty: every client.
    :ivar auth: the forward-authentication portal of the route (``auth=NAME``).
    :ivar cert_names: ``certname=PATTERN,...``: a verified client certificate
        must carry a name one of these typed patterns matches (``cn:``,
        ``dns:``, ``email:``, ``uri:``; see :mod:`tunnelgw.core.tlsconfig`);
        empty: no client certificate is asked of this route.
    """

    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    forward: frozenset[str] = DEFAULT_FORWARD
    cafile: Optional[str] = None
    verify: bool = True
    session_reuse: bool = True
    idle_timeout: Optional[float] = None
    max_sessions: Optional[int] = None
    name: Optional[str] = None
    record: bool = False
    speed: float = 1.0
    allow_clients: tuple[Network, ...] = ()
    #: ``auth=NAME``: the ``AuthPortal`` asked before the backend is connected.
    auth: Optional[str] = None
    cert_names: tuple[CertPattern, ...] = ()


@dataclass(frozen=True)
class Timeouts:
    """``Timeout handshake=S connect=S idle=S``: global timeouts in seconds (idle 0: off).

    :ivar handshake: from accepting a connection until its request head has
        been read in full (slow clients, slowloris); plain HTTP connections
        live at most this long.
    """

    handshake: float = 10.0
    connect: float = DEFAULT_CONNECT_TIMEOUT
    idle: float = 3600.0


@dataclass(frozen=True)
class KeepAlive:
    """``KeepAlive ping=S pong=S tcpidle=S tcpinterval=S tcpcount=N``: orphan detection.

    WebSocket pings go to clients every ``ping`` seconds and a pong must come
    back within ``pong`` seconds (0: no pings).  Backend sockets get TCP
    keepalive probes after ``tcpidle`` idle seconds, every ``tcpinterval``
    seconds, ``tcpcount`` times (tcpidle 0: off).
    """

    ping: float = 30.0
    pong: float = 15.0
    tcp_idle: int = 60
    tcp_interval: int = 15
    tcp_count: int = 4


@dataclass(frozen=True)
class Limits:
    """``Limit sessions=N perclient=N rate=N/s headers=B frame=B message=B streams=N`` (0: no limit).

    :ivar rate: handshakes per second allowed to one client address (a token
        bucket holding ``max(rate, 1)`` tokens).
    :ivar headers: bytes of request line plus headers.
    :ivar streams: concurrent streams per HTTP/2 connection (``http2=on``
        listeners; never unlimited).
    """

    sessions: int = 10000
    per_client: int = 100
    rate: float = 20.0
    headers: int = 16384
    frame: int = 1048576
    message: int = 0
    streams: int = 100


@dataclass(frozen=True)
class PrefixRule:
    """``ProxyPass PATH TARGET``: requests at PATH or below it go to TARGET.

    :ivar target: the target as written; :ivar backend: the same, typed.
    """

    path: str
    target: str
    options: RouteOptions
    where: Location
    backend: BackendTarget

    @property
    def label(self) -> str:
        """The route's name: ``name=``, else its path."""
        return self.options.name or self.path


@dataclass(frozen=True)
class PatternRule:
    """``ProxyPassMatch REGEX TARGET``: ``$N`` in TARGET takes group N of the match."""

    pattern: "re.Pattern[str]"
    target: str
    options: RouteOptions
    where: Location
    backend: BackendTarget

    @property
    def label(self) -> str:
        """The route's name: ``name=``, else its expression."""
        return self.options.name or self.pattern.pattern


Rule = Union[PrefixRule, PatternRule]


@dataclass(frozen=True)
class Listener:
    """``Listen ENDPOINT [OPTIONS]``: a Twisted server endpoint string to accept clients on.

    :ivar tls: for ``ssl:`` endpoints, the TLS settings the gateway loads
        itself (and again on reload); None for other kinds.
    """

    endpoint: str
    where: Location
    tls: Optional[ListenTLS] = None


@dataclass(frozen=True)
class DemoBackend:
    """``DemoBackend KIND ENDPOINT``: a built-in service (``echo``) for trying the gateway."""

    kind: str
    endpoint: str
    where: Location


@dataclass(frozen=True)
class DemoPage:
    """``DemoPage PATH WSPATH``: a page at PATH that opens a session to WSPATH."""

    path: str
    websocket_path: str
    where: Location


@dataclass(frozen=True)
class Alias:
    """``Alias URL-PATH FOLDER``: plain GET/HEAD requests at URL-PATH or below it
    are served files from FOLDER (an absolute path; see :mod:`tunnelgw.files`)."""

    path: str
    folder: str
    where: Location


@dataclass(frozen=True)
class Recording:
    """
    ``Recording FOLDER [maxbytes=B] [maxseconds=S] [keepdays=D] [shared=on]``: where
    ``record=on`` routes write their sessions (see :mod:`tunnelgw.recording`).

    :ivar max_bytes: a recording stops (the session goes on) after this many
        recorded payload bytes; :ivar max_seconds: likewise after this long.
    :ivar keep_days: recordings older than this are deleted (0: kept).
    :ivar viewer: ``viewer=URL`` with ``{session}``: where the operator's page
        links each recording (a noVNC page on a ``replay:`` route); "" for no links.
    :ivar shared: ``shared=on``: the folder may hold files that are not the
        gateway's recordings (retention still deletes only its recordings);
        without it, a folder holding any is refused at start when ``keepdays`` is set.
    """

    folder: str
    max_bytes: int
    max_seconds: float
    keep_days: float
    where: Location
    viewer: str = ""
    shared: bool = False


@dataclass(frozen=True)
class PoolSpec:
    """
    ``Pool redis://HOST:PORT/DB name=GATEWAY [ttl=S] [refresh=S] [timeout=S]
    [namespace=NS] [passwordfile=FILE] [waitreplicas=N]`` (``rediss://`` for TLS, ``sentinel://...`` for a Sentinel service): the shared
    registry of a pool of gateways (see :mod:`tunnelgw.pool`).
    """

    host: str
    port: int
    db: int
    tls: bool
    name: str
    ttl: float
    refresh: float
    timeout: float
    namespace: str
    password_file: Optional[str]
    where: Location
    #: Sentinel form (``sentinel://HOST:PORT,.../SERVICE/DB``): the sentinels and the service name.
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    #: ``waitreplicas=N``: a single-use token's claim counts only once N replicas hold it (Redis ``WAIT``),
    #: so that a failover cannot forget it; 0: the primary's word is enough.
    wait_replicas: int = 0

    @property
    def redis(self) -> RedisAddress:
        """Where the registry's Redis is."""
        return RedisAddress(self.host, self.port, self.db, self.tls, self.sentinels, self.service)


@dataclass(frozen=True)
class AuthPortal:
    """``AuthPortal NAME URL [timeout=S] [cache=S] [allow=HOST:PORTS ...]``: see :mod:`tunnelgw.core.forwardauth`."""

    name: str
    url: str
    timeout: float
    cache: float
    allow: tuple[AllowedTarget, ...]
    where: Location


@dataclass(frozen=True)
class AuditLog:
    """
    ``AuditLog syslog ADDRESS [facility=F] [app=NAME] [sdid=ID]`` or ``AuditLog json FILE``:
    where audit events go (see :mod:`tunnelgw.core.audit`).

    :ivar kind: ``syslog`` or ``json``.
    :ivar transport: for syslog: ``udp``, ``tcp`` or ``unix``; for json: ``file``.
    :ivar host: for udp and tcp; :ivar port: likewise.
    :ivar path: the unix socket (``/dev/log``) or the JSON lines file.
    """

    kind: str
    transport: str
    host: str
    port: int
    path: str
    facility: int
    app: str
    sdid: str
    where: Location


@dataclass(frozen=True)
class AccessLog:
    """``AccessLog FILE|- [format=combined|json]``: one line per HTTP request and session.

    :ivar path: an absolute file name, or ``-`` for the gateway's own log.
    :ivar format: ``combined`` (Apache/nginx combined) or ``json``.
    """

    path: str
    format: str
    where: Location


@dataclass(frozen=True)
class Config:
    """A whole validated configuration: listeners, rules and demo services."""

    source: str
    listeners: tuple[Listener, ...] = ()
    prefix_rules: tuple[PrefixRule, ...] = ()
    pattern_rules: tuple[PatternRule, ...] = ()
    demo_backends: tuple[DemoBackend, ...] = ()
    demo_pages: tuple[DemoPage, ...] = field(default=())
    aliases: tuple[Alias, ...] = ()
    topology: TopologyConfig = field(default=TopologyConfig())
    timeouts: Timeouts = Timeouts()
    keepalive: KeepAlive = KeepAlive()
    limits: Limits = Limits()
    shutdown_timeout: float = 30.0
    admin_listeners: tuple[Listener, ...] = ()
    log_format: str = "text"
    audit_logs: tuple[AuditLog, ...] = ()
    recording: Optional[Recording] = None
    pool: Optional[PoolSpec] = None
    auth_portals: tuple[AuthPortal, ...] = ()
    access_logs: tuple[AccessLog, ...] = ()

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every routing rule, prefix rules first, in file order within each kind."""
        return (*self.prefix_rules, *self.pattern_rules)


def _tokens(text: str) -> list[str]:
    """
    Split a directive line into words: white space separates, double quotes
    group (``\\"`` inside quotes is a quote), ``#`` outside quotes starts a comment.

    :raises ValueError: on an unterminated quote.
    """
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            break
        elif c == '"':
            j, word = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n and text[j + 1] == '"':
                    j += 1
                word.append(text[j])
                j += 1
            if j >= n:
                raise ValueError("unterminated double quote")
            words.append("".join(word))
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace():
                j += 1
            words.append(text[i:j])
            i = j
    return words


def _is_safe_path(path: str) -> bool:
    """A rule path is absolute, printable and free of dot segments and empty segments."""
    if not path.startswith("/") or any(not c.isprintable() or c.isspace() for c in path):
        return False
    if path == "/":
        return True
    segments = path.rstrip("/").split("/")[1:]
    return all(s not in ("", ".", "..") for s in segments) and "?" not in path and "#" not in path


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield (line number, line) pairs, joining lines that end in a backslash."""
    pending: list[str] = []
    start = 0
    for number_, line in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number_
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        yield start, " ".join(pending)
        pending = []
    if pending:
        yield start, " ".join(pending)


# Value readers of route options and global settings.

def _forward(value: str) -> frozenset[str]:
    names = [n.strip().lower() for n in value.split(",")]
    if names == ["none"]:
        return frozenset()
    if not all(n in FORWARD_CHOICES for n in names):
        raise ValueError(f"takes 'none' or a comma-separated list of {', '.join(FORWARD_CHOICES)}, got {value!r}")
    return frozenset(names)


def _networks(value: str) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in value.split(","))
    except ValueError:
        raise ValueError(f"takes comma-separated IP addresses or networks, got {value!r}") from None


def _file_name(value: str) -> str:
    if not value or any(not c.isprintable() for c in value):
        raise ValueError(f"must name a PEM file of CA certificates, got {value!r}")
    return value


def _cert_names(value: str) -> tuple[CertPattern, ...]:
    names = [n.strip() for n in value.split(",")]
    if not all(names):
        raise ValueError(f"takes comma-separated name patterns (cn:, dns:, email:, uri: or a bare CN), got {value!r}")
    return tuple(parse_cert_pattern(n) for n in names)


def _rate(value: str) -> float:
    """``N``, ``N/s`` or ``N/m``: handshakes per second."""
    per_minute = value.lower().endswith("/m")
    text = value[:-2] if value.lower().endswith(("/s", "/m")) else value
    found: float = number(0, 10**6)(text)
    return found / 60 if per_minute else found


#: Options after a ProxyPass/ProxyPassMatch target.
ROUTE_OPTIONS: dict[str, Reader] = {
    "connecttimeout": number(0, 3600, above_low=True),
    "idletimeout": number(0, 7 * 86400),
    "maxsessions": whole(1, 10**7),
    "name": matching(r"[A-Za-z0-9_.:/-]{1,64}", "1 to 64 letters, digits or _.:/-"),
    "forward": _forward,
    "cafile": _file_name,
    "verify": choice("on", "off"),
    "sessionreuse": choice("on", "off"),
    "record": choice("on", "off"),
    "speed": number(0.01, 100),
    "allowclients": _networks,
    "auth": matching(r"[A-Za-z0-9_.-]{1,64}", "the name of an AuthPortal"),
    "certname": _cert_names,
}
_WEBSOCKET_ONLY = ("forward", "cafile", "verify", "sessionreuse")
_SECURE_ONLY = ("cafile", "verify", "sessionreuse")

_TIMEOUT_SETTINGS: dict[str, Reader] = {
    "handshake": number(0.5, 3600), "connect": number(0.1, 3600), "idle": number(0, 7 * 86400)}
_KEEPALIVE_SETTINGS: dict[str, Reader] = {
    "ping": number(0, 86400), "pong": number(0.1, 3600), "tcpidle": whole(0, 86400),
    "tcpinterval": whole(1, 3600), "tcpcount": whole(1, 100)}
_LIMIT_SETTINGS: dict[str, Reader] = {
    "sessions": whole(0, 10**7), "perclient": whole(0, 10**7), "rate": _rate, "headers": whole(1024, 1 << 20),
    "frame": whole(0, 1 << 40), "message": whole(0, 1 << 50), "streams": whole(1, 1000)}
#: Option and setting keys whose dataclass field is spelt otherwise.
_FIELD_NAMES = {"connecttimeout": "connect_timeout", "idletimeout": "idle_timeout", "maxsessions": "max_sessions",
                "allowclients": "allow_clients", "certname": "cert_names",
                "tcpidle": "tcp_idle", "tcpinterval": "tcp_interval", "tcpcount": "tcp_count",
                "perclient": "per_client", "sessionreuse": "session_reuse"}


@dataclass
class _Parse:
    """What the directives of one file have said so far."""

    filename: str
    problems: list[Problem] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)
    admin_listeners: list[Listener] = field(default_factory=list)
    prefix_rules: list[PrefixRule] = field(default_factory=list)
    pattern_rules: list[PatternRule] = field(default_factory=list)
    demo_backends: list[DemoBackend] = field(default_factory=list)
    demo_pages: list[DemoPage] = field(default_factory=list)
    aliases: list[Alias] = field(default_factory=list)
    seen_paths: dict[str, Location] = field(default_factory=dict)
    names: dict[str, Location] = field(default_factory=dict)
    topology: TopologyParser = field(default_factory=TopologyParser)
    timeouts: Timeouts = Timeouts()
    keepalive: KeepAlive = KeepAlive()
    limits: Limits = Limits()
    shutdown_timeout: float = 30.0
    log_format: str = "text"
    audit_logs: list[AuditLog] = field(default_factory=list)
    recording: Optional[Recording] = None
    pool: Optional[PoolSpec] = None
    auth_portals: list[AuthPortal] = field(default_factory=list)
    access_logs: list[AccessLog] = field(default_factory=list)
    # Rules that set connecttimeout themselves; the others take Timeout connect=.
    own_connect_timeout: set[Location] = field(default_factory=set)


Problems = Callable[[str], None]


@dataclass(frozen=True)
class Directive:
    """
    One entry of the directive table.

    :ivar name: as written in files and docs (matched in any letter case).
    :ivar syntax: its arguments, for the reference.
    :ivar help: one line saying what it does.
    :ivar read: reads the words after the name into the parse.
    :ivar in_pool: allowed inside ``<Proxy>`` (and only there when the
        reader says so).
    :ivar options: its ``key=value`` readers; :ivar option_help: their reference lines.
    """

    name: str
    syntax: str
    help: str
    read: Callable[[_Parse, list[str], Location, Problems], None]
    in_pool: bool = False
    #: The ``key=value`` readers the directive's reader uses (the parser's own table).
    options: Mapping[str, Reader] = field(default_factory=dict)
    #: key -> ``VALUE: what it does (default: ...)``, one for each key of options.
    option_help: Mapping[str, str] = field(default_factory=dict)


#: Options after an ``ssl:`` Listen endpoint.
_LISTEN_TLS_OPTIONS: dict[str, Reader] = {
    "certificates": _file_name, "clientca": _file_name, "clientcert": choice(*CLIENT_CERT_MODES), "crl": _file_name,
    "http2": choice("on", "off")}


def _listen(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
    if not args:
        problem("Listen takes one server endpoint string, e.g. Listen tcp:port=8080:interface=127.0.0.1")
        return
    if not args[0].lower().startswith("ssl:"):
        if len(args) != 1:
            problem("Listen options (certificates=, clientca=, clientcert=, crl=, http2=) apply to ssl: endpoints only")
        else:
            p.listeners.append(Listener(args[0], where))
        return
    try:
        tls = parse_ssl_endpoint(args[0])
    except ValueError as e:
        problem(f"bad Listen endpoint {args[0]!r}: {e}")
        return
    found = read_options(args[1:], _LISTEN_TLS_OPTIONS, problem, "Listen")
    mode = found.get("clientcert", "optional" if "clientca" in found else "off")
    if mode != "off" and "clientca" not in found:
        problem(f"clientcert={mode} needs clientca=FILE (the CA certificates client certificates chain to)")
    elif "crl" in found and "clientca" not in found:
        problem("crl= needs clientca=FILE (it revokes client certificates)")
    tls = replace(tls, certificates=found.get("certificates"), client_ca=found.get("clientca"),
                  client_cert=mode, crl=found.get("crl"), http2=found.get("http2") == "on")
    p.listeners.append(Listener(args[0], where, tls))


def _admin_listen(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
    # The admin API (session list, close) leaves the host only when the operator says so.
    public = args[1:] == ["public"]
    if not 1 <= len(args) <= 2 or (len(args) == 2 and not public):
        problem("AdminListen takes one server endpoint string, e.g. AdminListen tcp:port=9090:interface=127.0.0.1")
    elif not public and not listener_is_local(args[0]):
        problem(f"AdminListen {args[0]} is reachable from other hosts (not loopback nor a UNIX socket); "
                "write 'public' after it to serve the session list and close to the network")
    else:
        p.admin_listeners.append(Listener(args[0], where))


def _rule_parts(directive: str, args: list[str], problem: Problems) -> Optional[tuple[BackendTarget, RouteOptions]]:
    """The typed target and options of a rule, or None when they are wrong."""
    target, extra = args[1], args[2:]
    try:
        backend = parse_target(target)
    except ValueError as e:
        problem(str(e))
        return None
    found = read_options(extra, ROUTE_OPTIONS, problem, directive)
    for flag in ("verify", "record", "sessionreuse"):
        if flag in found:
            found[flag] = found[flag] == "on"
    if "speed" in found and not isinstance(backend, ReplayTarget):
        problem("speed= applies to replay: targets only")
    if found.get("record") and isinstance(backend, ReplayTarget):
        problem("record=on would record a replay; replay: routes are not recorded")
    secure = isinstance(backend, WebSocketURL) and backend.secure
    for key in sorted(found):
        if key in _WEBSOCKET_ONLY and not isinstance(backend, WebSocketURL):
            problem(f"{key}= applies to ws:// and wss:// targets only")
        elif key in _SECURE_ONLY and not secure:
            problem(f"{key}= applies to wss:// targets only")
    if found.get("cafile") is not None and found.get("verify") is False:
        problem("cafile= and verify=off contradict each other: with verify=off nothing is checked")
    return backend, RouteOptions(**{_FIELD_NAMES.get(k, k): v for k, v in found.items()})


def _rule(p: _Parse, directive: str, args: list[str], where: Location, problem: Problems) -> None:
    match_text = args[0]
    parts = _rule_parts(directive, args, problem)
    if parts is None:
        return
    backend, options = parts
    if any(w.lower().startswith("connecttimeout=") for w in args[2:]):
        p.own_connect_timeout.add(where)
    if options.name is not None:
        if options.name in p.names:
            problem(f"duplicate route name {options.name!r} (first at {p.names[options.name]})")
            return
        p.names[options.name] = where
    target = args[1]
    if directive == "ProxyPass":
        path = match_text if match_text == "/" else match_text.rstrip("/")
        if not _is_safe_path(match_text):
            problem(f"ProxyPass path must be an absolute URL path without '.', '..', "
                    f"empty segments, spaces, '?' or '#', got {match_text!r}")
        elif SUBSTITUTION.search(target):
            problem("$N substitutions need ProxyPassMatch; ProxyPass has no groups")
        elif path in p.seen_paths:
            problem(f"duplicate ProxyPass path {path!r} (first at {p.seen_paths[path]})")
        else:
            p.seen_paths[path] = where
            p.prefix_rules.append(PrefixRule(path, target, options, where, backend))
        return
    try:
        pattern = re.compile(match_text)
    except (re.error, RecursionError, OverflowError, ValueError) as e:
        problem(f"bad regular expression {match_text!r}: {e}")
        return
    groups = {int(g) for g in SUBSTITUTION.findall(target)}
    missing = sorted(g for g in groups if g > pattern.groups or g == 0)
    never = _host_template_problem(target)
    if never is not None:
        problem(never)
    elif missing:
        problem(f"target uses ${missing[0]} but the expression has "
                f"{pattern.groups} group(s); use $1..${max(pattern.groups, 1)}")
    else:
        p.pattern_rules.append(PatternRule(pattern, target, options, where, backend))


def _host_template_problem(target: str) -> Optional[str]:
    """Why a ProxyPassMatch target's host can never be valid once ``$N`` is filled in (None: it can)."""
    host = target_host(target)
    if host is None or not SUBSTITUTION.search(host) or SUBSTITUTION.fullmatch(host):
        return None  # no capture, or the whole host is one (it must then be an IP literal, checked per request)
    labels = host.split(".")
    numeric = all(re.fullmatch(r"(?:\d|\$\d)+", label) for label in labels)
    if numeric and len(labels) != 4:
        return (f"the host {host!r} looks like an IPv4 address but has {len(labels)} parts: "
                "filled in, it could only be refused (each capture fills one part of an address)")
    if numeric:
        try:
            ipaddress.IPv4Address(SUBSTITUTION.sub("1", host))
        except ValueError:
            return f"the host {host!r} can never be an IP address once $N is filled in"
    return None


def _rule_reader(directive: str, what: str) -> Callable[[_Parse, list[str], Location, Problems], None]:
    def read(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
        if len(args) < 2:
            problem(f"{directive} takes a {what} and a target, then optional key=value options")
        else:
            _rule(p, directive, args, where, problem)
    return read


def _demo_backend(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
    if len(args) != 2 or args[0] not in _DEMO_KINDS:
        problem(f"DemoBackend takes a kind ({', '.join(_DEMO_KINDS)}) and a server endpoint string")
    else:
        p.demo_backends.append(DemoBackend(args[0], args[1], where))


def _demo_page(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
    if len(args) != 2 or not all(_is_safe_path(a) for a in args):
        problem("DemoPage takes the page's path and the WebSocket path it opens, e.g. DemoPage / /echo")
    else:
        p.demo_pages.append(DemoPage(args[0], args[1], where))


def _alias(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
    if len(args) != 2:
        problem("Alias takes a URL path and an absolute folder, e.g. Alias /novnc /usr/share/novnc")
    elif not _is_safe_path(args[0]):
        problem(f"Alias path must be an absolute URL path without '.', '..', "
                f"empty segments, spaces, '?' or '#', got {args[0]!r}")
    elif not args[1].startswith("/"):
        problem(f"Alias folder must be an absolute path, got {args[1]!r}")
    else:
        alias_path = args[0] if args[0] == "/" else args[0].rstrip("/")
        earlier = [a for a in p.aliases if a.path == alias_path]
        if earlier:
            problem(f"duplicate Alias path {alias_path!r} (first at {earlier[0].where})")
        else:
            p.aliases.append(Alias(alias_path, args[1], where))


def _settings(directive: str, readers: dict[str, Reader], args: list[str], problem: Problems) -> dict[str, Any]:
    """A global directive's ``key=value`` settings, keyed by field name."""
    if not args:
        problem(f"{directive} takes key=value settings (known: {', '.join(readers)})")
    found = read_options(args, readers, problem, directive)
    return {_FIELD_NAMES.get(k, k): v for k, v in found.items()}


def _timeout(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
    p.timeouts = replace(p.timeouts, **_settings("Timeout", _TIMEOUT_SETTINGS, args, problem))


def _keepalive(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
    p.keepalive = replace(p.keepalive, **_settings("KeepAlive", _KEEPALIVE_SETTINGS, args, problem))


def _limit(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
    p.limits = replace(p.limits, **_settings("Limit", _LIMIT_SETTINGS, args, problem))


def _shutdown_timeout(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
    if len(args) != 1:
        problem("ShutdownTimeout takes the seconds live sessions may run after SIGTERM, e.g. ShutdownTimeout 30")
        return
    try:
        p.shutdown_timeout = number(0, 86400)(args[0])
    except ValueError as e:
        problem(f"ShutdownTimeout {e}")


def _log_format(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
    if len(args) != 1 or args[0].lower() not in ("text", "json"):
        problem("LogFormat takes text or json")
    else:
        p.log_format = args[0].lower()


def _viewer(value: str) -> str:
    if not value.startswith(("http://", "https://")) or "{session}" not in value or not value.isprintable() \
            or any(c in value for c in ' "<>'):
        raise ValueError(f"must be an http(s) URL holding {{session}}, got {value!r}")
    return value


_RECORDING_OPTIONS: dict[str, Reader] = {
    "maxbytes": whole(1024, 1 << 50), "maxseconds": number(1, 365 * 86400), "keepdays": number(0, 36500),
    "viewer": _viewer, "shared": choice("on", "off")}


def _recording(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
    if not args or not args[0].startswith("/"):
        problem("Recording takes an absolute folder, then maxbytes=B maxseconds=S keepdays=D viewer=URL shared=on")
        return
    if p.recording is not None:
        problem(f"Recording is given twice (first at {p.recording.where})")
        return
    found = read_options(args[1:], _RECORDING_OPTIONS, problem, "Recording")
    p.recording = Recording(args[0], found.get("maxbytes", 256 << 20), found.get("maxseconds", 86400.0),
                            found.get("keepdays", 30.0), where, found.get("viewer", ""), found.get("shared") == "on")


_POOL_OPTIONS: dict[str, Reader] = {
    "name": matching(r"[A-Za-z0-9_.-]{1,64}", "1 to 64 letters, digits or _.-"),
    "ttl": number(2, 3600), "refresh": number(0.1, 600), "timeout": number(0.05, 60), "waitreplicas": whole(0, 16),
    "namespace": matching(r"[A-Za-z0-9_.-]{1,64}", "1 to 64 letters, digits or _.-"),
    "passwordfile": matching(r"/.+", "an absolute file name"),
}


def _pool(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
    if p.pool is not None:
        problem(f"Pool is given twice (first at {p.pool.where})")
        return
    address = redis_address(args[0]) if args else None
    if address is None:
        problem("Pool takes redis://HOST:PORT/DB (rediss:// for TLS; sentinel://HOST:PORT,.../SERVICE/DB for a "
                "Sentinel service; no password in the URL: passwordfile=), "
                "then name=GATEWAY ttl=S refresh=S timeout=S namespace=NS")
        return
    found = read_options(args[1:], _POOL_OPTIONS, problem, "Pool")
    if "name" not in found:
        problem("Pool needs name=GATEWAY: this gateway's name in the pool")
        return
    ttl, refresh = found.get("ttl", 10.0), found.get("refresh", 2.0)
    if refresh * 2 > ttl:
        problem(f"Pool refresh= ({refresh:g}) must be at most half of ttl= ({ttl:g}), or live sessions expire")
    p.pool = PoolSpec(address.host, address.port, address.db, address.tls, found["name"], ttl, refresh, found.get("timeout", 1.0), found.get("namespace", "tunnelgw"),
                      found.get("passwordfile"), where, address.sentinels, address.service,
                      found.get("waitreplicas", 0))


_PORTAL_OPTIONS: dict[str, Reader] = {"timeout": number(0.05, 30), "cache": number(0, 3600), "allow": read_allowed}


def _auth_portal(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
    if len(args) < 2 or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args[0]) \
            or not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:-]+(/[!-~]*)?", args[1]):
        problem("AuthPortal takes a name and the portal's http(s) URL, then timeout=S cache=S allow=HOST:PORTS")
        return
    if any(a.name == args[0] for a in p.auth_portals):
        problem(f"duplicate AuthPortal {args[0]!r}")
        return
    found = read_options(args[2:], _PORTAL_OPTIONS, problem, "AuthPortal", repeatable=("allow",))
    p.auth_portals.append(AuthPortal(args[0], args[1], found.get("timeout", 2.0), found.get("cache", 5.0),
                                     tuple(found.get("allow", [])), where))


_AUDIT_OPTIONS: dict[str, Reader] = {
    "facility": choice(*FACILITIES), "app": matching(r"[!-~]{1,48}", "1 to 48 printable characters"),
    "sdid": matching(r"[!-<>-Z\\^-~]{1,32}", "an SD-ID such as tunnelgw@32473 (no space, '=', ']' or '\"')"),
}


def _audit_address(text: str) -> tuple[str, str, int, str]:
    """``udp://HOST:PORT``, ``tcp://HOST:PORT`` or ``unix:///PATH`` -> (transport, host, port, path)."""
    scheme, sep, rest = text.partition("://")
    if scheme == "unix" and sep and rest.startswith("/"):
        return "unix", "", 0, rest
    if scheme in ("udp", "tcp") and sep:
        host, colon, port = rest.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            address = str(ipaddress.ip_address(host))
        except ValueError:
            address = ""
        if colon and address and port.isascii() and port.isdigit() and 0 < int(port) < 65536:
            return scheme, address, int(port), ""
    raise ValueError(f"a syslog address is udp://IP:PORT, tcp://IP:PORT (an IP address, no DNS name) "
                     f"or unix:///PATH, got {text!r}")


def _audit_log(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
    if len(args) < 2 or args[0].lower() not in ("syslog", "json"):
        problem("AuditLog takes syslog ADDRESS [facility=local0] [app=tunnelgw] [sdid=ID], or json FILE")
        return
    kind = args[0].lower()
    if kind == "json":
        if len(args) != 2 or not args[1].startswith("/"):
            problem(f"AuditLog json takes one absolute file name, got {' '.join(args[1:])!r}")
        else:
            p.audit_logs.append(AuditLog("json", "file", "", 0, args[1], 0, "", "", where))
        return
    try:
        transport, host, port, path = _audit_address(args[1])
    except ValueError as e:
        problem(str(e))
        return
    found = read_options(args[2:], _AUDIT_OPTIONS, problem, "AuditLog")
    p.audit_logs.append(AuditLog("syslog", transport, host, port, path, FACILITIES[found.get("facility", "local0")],
                                 found.get("app", "tunnelgw"), found.get("sdid", "tunnelgw@32473"), where))


_ACCESS_LOG_OPTIONS: dict[str, Reader] = {"format": choice("combined", "json")}


def _access_log(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
    if not args or not (args[0] == "-" or args[0].startswith("/")):
        problem("AccessLog takes an absolute file name or - (the gateway's log), then format=combined|json")
        return
    if any(a.path == args[0] for a in p.access_logs):
        problem(f"duplicate AccessLog {args[0]!r}")
        return
    found = read_options(args[1:], _ACCESS_LOG_OPTIONS, problem, "AccessLog")
    p.access_logs.append(AccessLog(args[0], found.get("format", "combined"), where))


def _topology(method: Callable[[TopologyParser, list[str], Location, Problems, Callable[[str], bool]], None]
              ) -> Callable[[_Parse, list[str], Location, Problems], None]:
    """A reader that hands the words to one of the topology parser's readers."""
    def read(p: _Parse, args: list[str], where: Location, problem: Problems) -> None:
        method(p.topology, args, where, problem, _is_safe_path)
    return read


_ROUTE_HELP = {
    "connecttimeout": "S: backend connect deadline, 504 after it (default: Timeout connect=)",
    "idletimeout": "S: close after S without payload either way, 0 never (default: Timeout idle=)",
    "maxsessions": "N: concurrent sessions on this route (default: no own limit)",
    "name": "NAME: the route's name in metrics, logs and the admin page (default: its path)",
    "forward": "xff,proto,forwarded,origin,cookie,tlsclient|none: headers a ws:// target is sent (default: all)",
    "cafile": "FILE: PEM trust roots of a wss:// target (default: the platform's)",
    "verify": "on|off: check a wss:// target's certificate and name (default: on)",
    "sessionreuse": "on|off: offer a wss:// target the last TLS session to resume (default: on)",
    "record": "on|off: record sessions into the Recording folder (default: off)",
    "speed": "F: playback speed of a replay: target (default: 1)",
    "allowclients": "CIDR,...: client networks admitted (default: every client)",
    "auth": "NAME: the AuthPortal asked before each session (default: none)",
    "certname": "cn:|dns:|email:|uri:PATTERN,...: a verified client certificate must carry a matching name "
                "(default: none asked)",
}

#: Every directive, in the order the reference lists them.
DIRECTIVES: tuple[Directive, ...] = (
    Directive("Listen", "ENDPOINT [OPTIONS]",
              "a server endpoint string to accept clients on (tcp:, ssl:, unix:, systemd:, haproxy:); "
              "the options apply to ssl: endpoints", _listen, options=_LISTEN_TLS_OPTIONS, option_help={
                  "certificates": "DIR: a folder of KEY+CERT PEM files picked by SNI (default: none)",
                  "clientca": "FILE: CA certificates client certificates chain to (default: none)",
                  "clientcert": "optional|required: ask clients for a certificate "
                                "(default: optional with clientca=, else off)",
                  "crl": "FILE: revoked client certificates, PEM (default: none)",
                  "http2": "on|off: offer HTTP/2 by ALPN (h2, then http/1.1): pages and WebSocket sessions "
                           "(RFC 8441 extended CONNECT) as streams of one connection (default: off)"}),
    Directive("ProxyPass", "PATH TARGET [OPTIONS]",
              "sessions at PATH relayed to a tcp:/tls:/unix: endpoint, ws:// or wss:// URL, balancer://NAME "
              "or replay:FOLDER", _rule_reader("ProxyPass", "path"), options=ROUTE_OPTIONS, option_help=_ROUTE_HELP),
    Directive("ProxyPassMatch", "REGEX TARGET [OPTIONS]",
              "like ProxyPass for paths matching REGEX; $1..$9 in TARGET",
              _rule_reader("ProxyPassMatch", "regular expression"), options=ROUTE_OPTIONS, option_help=_ROUTE_HELP),
    Directive("DemoBackend", "echo ENDPOINT", "run the built-in echo service on ENDPOINT", _demo_backend),
    Directive("DemoPage", "PATH WSPATH", "serve the demo page at PATH, opening a session to WSPATH", _demo_page),
    Directive("Alias", "PATH FOLDER", "serve the files of an absolute FOLDER at PATH", _alias),
    Directive("Timeout", "[OPTIONS]", "request head, backend connect and idle deadlines", _timeout,
              options=_TIMEOUT_SETTINGS, option_help={
                  "handshake": "S: from accept to the whole request head (default: 10)",
                  "connect": "S: backend connect of every route (default: 10)",
                  "idle": "S: no payload either way, 0 never (default: 3600)"}),
    Directive("KeepAlive", "[OPTIONS]", "WebSocket pings to clients, TCP keepalive to backends", _keepalive,
              options=_KEEPALIVE_SETTINGS, option_help={
                  "ping": "S: a WebSocket ping to each client every S, 0 none (default: 30)",
                  "pong": "S: the pong deadline, shorter than ping (default: 15)",
                  "tcpidle": "S: backend TCP keepalive after S idle, 0 off (default: 60)",
                  "tcpinterval": "S: between keepalive probes (default: 15)",
                  "tcpcount": "N: unanswered probes before the backend is dropped (default: 4)"}),
    Directive("Limit", "[OPTIONS]", "bounds on sessions, per client, new sessions and sizes (0: no limit)",
              _limit, options=_LIMIT_SETTINGS, option_help={
                  "sessions": "N: live sessions in all (default: 10000)",
                  "perclient": "N: live sessions per client address (default: 100)",
                  "rate": "N[/s|/m]: new sessions per client address (default: 20/s)",
                  "headers": "B: request line plus headers (default: 16384)",
                  "frame": "B: one WebSocket frame (default: 1048576)",
                  "message": "B: one WebSocket message (default: 0, no limit)",
                  "streams": "N: concurrent streams per HTTP/2 connection (http2=on listeners), 1 to 1000; "
                             "more resets of young streams than this within 30 s end the connection "
                             "(default: 100)"}),
    Directive("ShutdownTimeout", "SECONDS", "how long a drain lets live sessions run (default 30)",
              _shutdown_timeout),
    Directive("AdminListen", "ENDPOINT [public]",
              "the operator's page at /, /healthz, /metrics and /sessions on an endpoint of their own "
              "(loopback or UNIX socket unless 'public')", _admin_listen),
    Directive("LogFormat", "text|json", "log text lines or JSON lines (where twistd logs)", _log_format),
    Directive("AccessLog", "FILE|- [OPTIONS]",
              "one line per HTTP request and session to an absolute FILE, or - for the gateway's log; "
              "tokens, query strings and Referer are redacted", _access_log, options=_ACCESS_LOG_OPTIONS,
              option_help={"format": "combined|json: Apache's combined format or JSON lines (default: combined)"}),
    Directive("AuthPortal", "NAME URL [OPTIONS]",
              "a portal asked before each session of auth=NAME routes (nginx auth_request)", _auth_portal,
              options=_PORTAL_OPTIONS, option_help={
                  "timeout": "S: the portal's answer deadline, 503 after it (default: 2)",
                  "cache": "S: how long an answer is reused (default: 5)",
                  "allow": "HOST:PORTS: a target the portal may name, repeatable (default: none)"}),
    Directive("Recording", "FOLDER [OPTIONS]",
              "where record=on routes write their sessions, with size, age and retention limits (a missing folder is made at start, mode 0700)", _recording,
              options=_RECORDING_OPTIONS, option_help={
                  "maxbytes": "B: a recording stops at this size (default: 268435456)",
                  "maxseconds": "S: a recording stops at this age (default: 86400)",
                  "keepdays": "D: recordings older are deleted, 0 never (default: 30)",
                  "viewer": "URL: a player link on the admin page, holding {session} (default: none)",
                  "shared": "on|off: the folder may hold other files; retention deletes only recordings "
                            "(default: off, such a folder is refused with keepdays=)"}),
    Directive("Pool", "redis://HOST:PORT/DB|sentinel://HOST:PORT,.../SERVICE/DB name=GATEWAY [OPTIONS]",
              "share the live-session list with a pool of gateways through Redis "
              "(needs: pip install 'tunnelgw[pool]')", _pool, options=_POOL_OPTIONS, option_help={
                  "name": "GATEWAY: this gateway's name in the pool (required)",
                  "ttl": "S: a gateway's entries expire S after its last refresh (default: 10)",
                  "refresh": "S: between refreshes, at most ttl/2 (default: 2)",
                  "timeout": "S: each Redis call's deadline (default: 1)",
                  "namespace": "NS: prefix of the pool's keys (default: tunnelgw)",
                  "passwordfile": "FILE: the Redis password, absolute path (default: none)",
                  "waitreplicas": "N: a single-use token counts once N replicas hold it (default: 0)"}),
    Directive("AuditLog", "syslog udp://H:P|tcp://H:P|unix:///PATH [OPTIONS] | json FILE",
              "send audit events (sessions, refusals, admin actions) to syslog (RFC 5424) or a JSON lines file",
              _audit_log, options=_AUDIT_OPTIONS, option_help={
                  "facility": "F: syslog facility (default: local0)",
                  "app": "A: APP-NAME of each record (default: tunnelgw)",
                  "sdid": "ID: SD-ID of the structured data (default: tunnelgw@32473)"}),
    Directive("TokenSource", "NAME file|dir|jwt|jwks|redis PATH allow=HOST:PORTS ... [OPTIONS]",
              "where tokens name their desktops: a file, a folder, signed JWTs (jwt: a secret or key file; "
              "jwks: a JWKS file) or Redis (PATH redis://HOST:PORT/DB, needs: pip install 'tunnelgw[pool]')",
              _topology(TopologyParser.read_token_source), options=OPTION_TABLES["TokenSource"], option_help={
                  "allow": "HOST:PORTS: targets tokens may name, repeatable (required)",
                  "reload": "S: re-read file and dir sources every S (default: 2)",
                  "bind": "address|none: a signed token's addr claim must be the client's (default: none)",
                  "once": "on|off: a signed token (jti) opens one session; needs Pool (default: off)",
                  "alg": "ALG: jwt's algorithm, e.g. hs256, rs256, es256, eddsa (default: hs256)",
                  "aud": "TEXT: the aud claim signed tokens must carry (default: not checked)",
                  "iss": "TEXT: the iss claim signed tokens must carry (default: not checked)",
                  "leeway": "S: clock skew allowed for exp/nbf (default: 0)",
                  "namespace": "NS: redis: key prefix (default: none)",
                  "timeout": "S: redis: each lookup's deadline (default: 1)",
                  "passwordfile": "FILE: redis: the password, absolute path (default: none)"}),
    Directive("TokenRoute", "PATH SOURCE [OPTIONS]", "sessions at PATH go where their token says",
              _topology(TopologyParser.read_token_route), options=OPTION_TABLES["TokenRoute"], option_help={
                  "from": "query|path|host: where the token is (default: query)",
                  "param": "NAME: the query parameter of from=query (default: token)",
                  "connecttimeout": "S: backend connect deadline (default: 10)",
                  "maxperdesktop": "N: pool-wide sessions per desktop, needs Pool (default: 0, none)",
                  "maxperuser": "N: pool-wide sessions per token subject, needs Pool (default: 0, none)"}),
    Directive("TokenLookup", "PATH ROUTEPATH", "answer which gateway owns a token, as JSON",
              _topology(TopologyParser.read_token_lookup)),
    Directive("<Proxy", "balancer://NAME> ... </Proxy>",
              "a pool of backends, with BalancerMember and ProxySet inside", _topology(TopologyParser.read_proxy)),
    Directive("</Proxy>", "", "ends a <Proxy> block", _topology(TopologyParser.read_proxy_end), in_pool=True),
    Directive("BalancerMember", "ENDPOINT [OPTIONS]", "one member of a <Proxy> pool",
              _topology(TopologyParser.read_balancer_member), in_pool=True,
              options=OPTION_TABLES["BalancerMember"], option_help={
                  "status": "active|drain: a draining member takes no new sessions (default: active)"}),
    Directive("ProxySet", "[OPTIONS]", "the pool's balancing method and retry time",
              _topology(TopologyParser.read_proxy_set), in_pool=True,
              options=OPTION_TABLES["ProxySet"], option_help={
                  "lbmethod": "byrequests|bybusyness|bysource (default: byrequests)",
                  "retry": "S: a failed member is tried again after S (default: 60)"}),
    Directive("GatewayURL", "URL", "this gateway's own URL, for redirects between gateways",
              _topology(TopologyParser.read_gateway_url)),
    Directive("GatewayOwner", "URL HOST...", "the gateway that owns desktops on HOST",
              _topology(TopologyParser.read_gateway_owner)),
    Directive("OwnerSource", "redis://HOST:PORT/DB|sentinel://HOST:PORT,.../SERVICE/DB [OPTIONS]",
              "which gateway owns a desktop host, as a broker writes it in Redis (redirects follow at once; "
              "needs: pip install 'tunnelgw[pool]')", _topology(TopologyParser.read_owner_source),
              options=OPTION_TABLES["OwnerSource"], option_help={
                  "namespace": "NS: key prefix (default: tunnelgw)",
                  "timeout": "S: each lookup's deadline (default: 1)",
                  "mode": "redirect|relay: 307 to the owner, or relay through it (default: redirect)",
                  "hopsecret": "FILE: the pool's shared hop secrets, one per line (two while rotating), with "
                                "mode=relay (default: none)",
                  "hopcafile": "FILE: CA certificates of wss:// owners, with mode=relay (default: the "
                               "platform's)",
                  "passwordfile": "FILE: the Redis password, absolute path (default: none)"}),
    Directive("TrustedProxy", "ADDRESS... [OPTIONS]", "front proxies whose forwarded client address is believed",
              _topology(TopologyParser.read_trusted_proxy), options=OPTION_TABLES["TrustedProxy"], option_help={
                  "header": "x-forwarded-for|forwarded: where they put it (default: x-forwarded-for)"}),
    Directive("OriginAllow", "PATH ORIGIN...", "browser Origins allowed to open sessions on PATH",
              _topology(TopologyParser.read_origin_allow)),
)
_BY_NAME = {d.name.lower(): d for d in DIRECTIVES}


def parse_config(text: str, filename: str = "<config>", require_listeners: bool = True) -> Config:
    """
    Parse configuration text into a :class:`Config`.

    :param text: the whole file's text.
    :param filename: the name used in problem messages.
    :param require_listeners: refuse a configuration without ``Listen`` (not
        needed for rules given to :func:`tunnelgw.service.build_resource`).
    :raises ConfigError: with one :class:`Problem` per mistake found; parsing goes
        on after a mistake so that a user sees all of them at once.
    """
    config, problems = read_config(text, filename, require_listeners)
    if problems:
        raise ConfigError(problems)
    return config


def read_config(text: str, filename: str = "<config>",
                require_listeners: bool = True) -> tuple[Config, tuple[Problem, ...]]:
    """
    Parse configuration text into what could be read and every problem found.

    The configuration holds each directive that was read without a mistake,
    so that the checks a start makes (endpoints, files, packages: see
    :func:`tunnelgw.service.check_config`) can run on it in the same pass and
    a user sees every problem of the file at once, in line order.

    :returns: the configuration and the syntax problems (empty when valid).
    """
    p = _Parse(filename)
    last_line = 1
    for line_number, line in _lines(text):
        last_line = line_number
        where = Location(filename, line_number)

        def problem(message: str, where: Location = where) -> None:
            p.problems.append(Problem(where, message))

        if "\x00" in line:
            problem("NUL character in line")
            continue
        try:
            words = _tokens(line)
        except ValueError as e:
            problem(str(e))
            continue
        if not words:
            continue
        directive = _BY_NAME.get(words[0].lower())
        if directive is None:
            close = difflib.get_close_matches(words[0].lower(), _BY_NAME, n=1)
            hint = f"did you mean {_BY_NAME[close[0]].name}? " if close else ""
            problem(f"unknown directive {words[0]!r} ({hint}known: {', '.join(d.name for d in DIRECTIVES)})")
        elif p.topology.in_block and not directive.in_pool:
            problem(f"{directive.name} is not allowed inside <Proxy> (only BalancerMember and ProxySet); "
                    f"missing </Proxy>?")
        else:
            directive.read(p, words[1:], where, problem)
    return _finish(p, last_line, require_listeners)


def _finish(p: _Parse, last_line: int, require_listeners: bool) -> tuple[Config, tuple[Problem, ...]]:
    """Cross-checks over the whole file, then the value and the problems."""
    problems = p.problems
    for alias in p.aliases:
        if alias.path in p.seen_paths:
            problems.append(Problem(alias.where, f"Alias path {alias.path!r} is also a ProxyPass path "
                                                 f"(at {p.seen_paths[alias.path]}); give each its own path"))
    rules: list[Rule] = [*p.prefix_rules, *p.pattern_rules]
    topology_config = p.topology.finish([(r.backend.name, r.where) for r in rules if isinstance(r.backend, PoolTarget)],
                                        lambda w, m: problems.append(Problem(w, m)))
    end = Location(p.filename, last_line)
    portals = {a.name for a in p.auth_portals}
    for rule in rules:
        if rule.options.auth is not None and rule.options.auth not in portals:
            problems.append(Problem(rule.where, f"no AuthPortal named {rule.options.auth!r}"))
    if p.pool is None:
        for source in topology_config.token_sources:
            if source.single_use:
                problems.append(Problem(source.where, "once=on needs a Pool (Redis records the used tokens)"))
        for token_route in topology_config.token_routes:
            if token_route.max_per_desktop or token_route.max_per_user:
                problems.append(Problem(token_route.where, "maxperdesktop= and maxperuser= need a Pool "
                                                           "(Redis counts the pool's sessions)"))
    if p.recording is None:
        for rule in rules:
            if rule.options.record:
                problems.append(Problem(rule.where, "record=on needs a Recording directive (the folder to write to)"))
    if require_listeners and not p.listeners and not problems:
        problems.append(Problem(end, "no Listen directive: the gateway would accept nothing"))
    if p.keepalive.ping and p.keepalive.pong >= p.keepalive.ping and not problems:
        problems.append(Problem(end, "KeepAlive pong must be shorter than ping"))

    def inherit(rule: Any) -> Any:
        if rule.where in p.own_connect_timeout:
            return rule
        return replace(rule, options=replace(rule.options, connect_timeout=p.timeouts.connect))

    return Config(
        source=p.filename,
        listeners=tuple(p.listeners),
        prefix_rules=tuple(inherit(r) for r in p.prefix_rules),
        pattern_rules=tuple(inherit(r) for r in p.pattern_rules),
        demo_backends=tuple(p.demo_backends),
        demo_pages=tuple(p.demo_pages),
        aliases=tuple(p.aliases),
        topology=topology_config,
        timeouts=p.timeouts,
        keepalive=p.keepalive,
        limits=p.limits,
        shutdown_timeout=p.shutdown_timeout,
        admin_listeners=tuple(p.admin_listeners),
        log_format=p.log_format,
        audit_logs=tuple(p.audit_logs),
        recording=p.recording,
        pool=p.pool,
        auth_portals=tuple(p.auth_portals),
        access_logs=tuple(p.access_logs),
    ), tuple(problems)


#: Optional Python packages, by import name: the extra of setup.cfg that installs each.
OPTIONAL_PACKAGES = {"redis": "pool"}


def needed_packages(config: Config) -> list[tuple[Location, str, str]]:
    """
    The optional packages config's directives need: (where, directive, import
    name), in line order; the extra that installs each is in :data:`OPTIONAL_PACKAGES`.
    """
    found: list[tuple[Location, str, str]] = []
    if config.pool is not None:
        found.append((config.pool.where, "Pool", "redis"))
    if config.topology.owner_source is not None:
        found.append((config.topology.owner_source.where, "OwnerSource", "redis"))
    found += [(s.where, "TokenSource redis", "redis") for s in config.topology.token_sources if s.kind == "redis"]
    return sorted(found, key=lambda f: f[0].line)


def redis_servers(config: Config) -> list[tuple[Location, str, str, int]]:
    """Every Redis server config talks to: (where, directive, host, port), in line order."""
    found: list[tuple[Location, str, str, int]] = []
    if config.pool is not None:
        found.append((config.pool.where, "Pool", config.pool.host, config.pool.port))
    owners = config.topology.owner_source
    addresses = [(owners.where, "OwnerSource", owners.url)] if owners is not None else []
    addresses += [(s.where, "TokenSource", s.path) for s in config.topology.token_sources if s.kind == "redis"]
    for where, directive, url in addresses:
        address = redis_address(url)
        if address is not None:
            found.append((where, directive, address.host, address.port))
    return sorted(found, key=lambda f: f[0].line)


def directive_reference(width: int = 79) -> str:
    """
    The reference of every directive and each of its ``key=`` options, from
    :data:`DIRECTIVES`, wrapped to width columns (``--directives`` and
    docs/directives.rst print it).
    """
    import textwrap

    lines: list[str] = []
    for d in DIRECTIVES:
        lines += textwrap.wrap(f"{d.name} {d.syntax}".rstrip(), width, initial_indent="  ",
                               subsequent_indent="      ", break_on_hyphens=False)
        lines += textwrap.wrap(d.help, width, initial_indent="      ", subsequent_indent="      ",
                               break_on_hyphens=False)
        for key in d.options:
            lines += textwrap.wrap(f"{key}={d.option_help.get(key, '')}", width, initial_indent="      ",
                                   subsequent_indent="          ", break_on_hyphens=False, break_long_words=True)
    return "\n".join(lines)
