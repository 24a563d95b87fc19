"""
Parse tunnelgw's Apache-flavoured configuration text into frozen values.

This module is pure: it reads text and returns a :class:`Config`, or raises
:class:`ConfigError` naming every problem as ``FILE:LINE: what is wrong``.  It
checks syntax, numbers, regular expressions and duplicates; endpoint strings
are checked against Twisted by :mod:`tunnelgw.endpoints`, which adds its
problems to the same error type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Optional, Union

from tunnelgw.core.errors import ConfigError, Location, Problem
from tunnelgw.core.hostpattern import listener_is_local
from tunnelgw.core.wsurl import is_websocket_target, parse_websocket_url
from tunnelgw.core.topoconfig import TOPOLOGY_DIRECTIVES, TopologyConfig, TopologyParser

__all__ = [
    "DEFAULT_CONFIG",
    "Alias",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_FORWARD",
    "FORWARD_CHOICES",
    "Config",
    "ConfigError",
    "DemoBackend",
    "KeepAlive",
    "Limits",
    "Listener",
    "Location",
    "PatternRule",
    "PrefixRule",
    "Problem",
    "RouteOptions",
    "Rule",
    "SUBSTITUTION",
    "Timeouts",
    "parse_config",
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
#: X-Forwarded-For, X-Forwarded-Proto, Forwarded (RFC 7239), Origin, Cookie.
FORWARD_CHOICES = ("xff", "proto", "forwarded", "origin", "cookie")
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
    :ivar idle_timeout: seconds without payload either way before the session
        is closed (0: never); None takes ``Timeout idle=``.
    :ivar max_sessions: concurrent sessions on this route; None: no own limit.
    """

    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    forward: frozenset[str] = DEFAULT_FORWARD
    cafile: Optional[str] = None
    verify: bool = True
    idle_timeout: Optional[float] = None
    max_sessions: Optional[int] = None


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
    """``Limit sessions=N perclient=N rate=N/s headers=B frame=B message=B`` (0: no limit).

    :ivar rate: handshakes per second allowed to one client address (a token
        bucket holding ``max(rate, 1)`` tokens).
    :ivar headers: bytes of request line plus headers.
    """

    sessions: int = 10000
    per_client: int = 100
    rate: float = 20.0
    headers: int = 16384
    frame: int = 1048576
    message: int = 0


@dataclass(frozen=True)
class PrefixRule:
    """``ProxyPass PATH TARGET``: requests at PATH or below it go to TARGET."""

    path: str
    target: str
    options: RouteOptions
    where: Location


@dataclass(frozen=True)
class PatternRule:
    """``ProxyPassMatch REGEX TARGET``: ``$N`` in TARGET takes group N of the match."""

    pattern: "re.Pattern[str]"
    target: str
    options: RouteOptions
    where: Location


Rule = Union[PrefixRule, PatternRule]


@dataclass(frozen=True)
class Listener:
    """``Listen ENDPOINT``: a Twisted server endpoint string to accept clients on."""

    endpoint: str
    where: Location


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

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every routing rule, prefix rules first, in file order within each kind."""
        return (*self.prefix_rules, *self.pattern_rules)


#: ``$1``..``$9`` in a ProxyPassMatch target: group N of the match.
SUBSTITUTION = re.compile(r"\$(\d)")


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


def _route_options(words: list[str], problem: Callable[[str], None]) -> RouteOptions:
    """Read ``key=value`` words after a target; report unknown keys and bad values."""
    connect_timeout = DEFAULT_CONNECT_TIMEOUT
    forward, cafile, verify = DEFAULT_FORWARD, None, True
    idle_timeout: Optional[float] = None
    max_sessions: Optional[int] = None
    for word in words:
        key, eq, value = word.partition("=")
        key = key.lower()
        if not eq:
            problem(f"expected key=value after the target, got {word!r}")
        elif key == "connecttimeout":
            try:
                connect_timeout = float(value)
            except ValueError:
                problem(f"connecttimeout must be a number of seconds, got {value!r}")
                continue
            if not 0 < connect_timeout <= 3600:
                problem(f"connecttimeout must be more than 0 and at most 3600 seconds, got {value!r}")
        elif key == "forward":
            names = [n.strip().lower() for n in value.split(",")]
            if names == ["none"]:
                forward = frozenset()
            elif not all(n in FORWARD_CHOICES for n in names):
                problem(f"forward takes 'none' or a comma-separated list of {', '.join(FORWARD_CHOICES)}, "
                        f"got {value!r}")
            else:
                forward = frozenset(names)
        elif key == "cafile":
            if not value or any(not c.isprintable() for c in value):
                problem(f"cafile must name a PEM file of CA certificates, got {value!r}")
            cafile = value
        elif key == "verify":
            if value.lower() not in ("on", "off"):
                problem(f"verify must be 'on' or 'off', got {value!r}")
            verify = value.lower() != "off"
        elif key == "idletimeout":
            idle_timeout = _number(key, value, 0, 7 * 86400, problem)
        elif key == "maxsessions":
            found = _number(key, value, 1, 10**7, problem, integer=True)
            max_sessions = None if found is None else int(found)
        else:
            problem(f"unknown route option {key!r} (known: connecttimeout, idletimeout, maxsessions, "
                    "forward, cafile, verify)")
    return RouteOptions(connect_timeout=connect_timeout, forward=forward, cafile=cafile, verify=verify,
                        idle_timeout=idle_timeout, max_sessions=max_sessions)


def _check_target_options(target: str, words: list[str], options: RouteOptions,
                          problem: Callable[[str], None]) -> None:
    """
    Check a ws:// or wss:// target URL (with each ``$N`` standing for ``1``)
    and that options meant for WebSocket targets are not given to others.
    """
    keys = {w.partition("=")[0].lower() for w in words}
    if not is_websocket_target(target):
        for key in sorted(keys & {"forward", "cafile", "verify"}):
            problem(f"{key}= applies to ws:// and wss:// targets only")
        return
    try:
        url = parse_websocket_url(SUBSTITUTION.sub("1", target))
    except ValueError as e:
        problem(f"bad WebSocket backend URL {target!r}: {e}")
        return
    if not url.secure:
        for key in sorted(keys & {"cafile", "verify"}):
            problem(f"{key}= applies to wss:// targets only")
    elif options.cafile is not None and not options.verify:
        problem("cafile= and verify=off contradict each other: with verify=off nothing is checked")


def _number(key: str, value: str, low: float, high: float, problem: Callable[[str], None],
            integer: bool = False) -> Optional[float]:
    """Read value as a number within [low, high]; report and return None otherwise."""
    try:
        number = float(int(value)) if integer else float(value)
    except ValueError:
        problem(f"{key} must be {'a whole number' if integer else 'a number'}, got {value!r}")
        return None
    if not low <= number <= high:
        problem(f"{key} must be from {low:g} to {high:g}, got {value!r}")
        return None
    return number


def _settings(directive: str, args: list[str], ranges: dict[str, tuple[float, float, bool]],
              problem: Callable[[str], None]) -> dict[str, float]:
    """
    Read ``key=value`` words of a global directive against ranges
    (key -> (low, high, whole number)); report unknown keys and bad values.
    """
    found: dict[str, float] = {}
    if not args:
        problem(f"{directive} takes key=value settings (known: {', '.join(ranges)})")
    for word in args:
        key, eq, value = word.partition("=")
        key = key.lower()
        if not eq or key not in ranges:
            problem(f"{directive}: expected one of {', '.join(k + '=' for k in ranges)} got {word!r}")
            continue
        if key == "rate" and value.lower().endswith(("/s", "/m")):
            per_minute = value.lower().endswith("/m")
            number = _number(key, value[:-2], 0, 10**6, problem)
            if number is not None:
                found[key] = number / 60 if per_minute else number
            continue
        low, high, integer = ranges[key]
        number = _number(key, value, low, high, problem, integer)
        if number is not None:
            found[key] = number
    return found


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield (line number, line) pairs, joining lines that end in a backslash."""
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        yield start, " ".join(pending)
        pending = []
    if pending:
        yield start, " ".join(pending)


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
    problems: list[Problem] = []
    listeners: list[Listener] = []
    prefix_rules: list[PrefixRule] = []
    pattern_rules: list[PatternRule] = []
    demo_backends: list[DemoBackend] = []
    demo_pages: list[DemoPage] = []
    aliases: list[Alias] = []
    seen_paths: dict[str, Location] = {}
    topology = TopologyParser()
    last_line = 1
    timeouts, keepalive, limits = Timeouts(), KeepAlive(), Limits()
    shutdown_timeout = 30.0
    admin_listeners: list[Listener] = []
    log_format = "text"
    # Rules that set connecttimeout themselves; the others take Timeout connect=.
    own_connect_timeout: set[Location] = set()

    for number, line in _lines(text):
        last_line = number
        where = Location(filename, number)

        def problem(message: str, where: Location = where) -> None:
            problems.append(Problem(where, message))

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
        directive, args = words[0], words[1:]
        name = directive.lower()
        if topology.in_block or name in TOPOLOGY_DIRECTIVES:
            topology.directive(name, args, where, problem, _is_safe_path)
            continue

        if name == "listen":
            if len(args) != 1:
                problem("Listen takes one server endpoint string, e.g. Listen tcp:port=8080:interface=127.0.0.1")
            else:
                listeners.append(Listener(args[0], where))

        elif name in ("proxypass", "proxypassmatch"):
            if len(args) < 2:
                problem(f"{directive} takes a {'path' if name == 'proxypass' else 'regular expression'} "
                        "and a target, then optional key=value options")
                continue
            match_text, target, extra = args[0], args[1], args[2:]
            options = _route_options(extra, problem)
            _check_target_options(target, extra, options, problem)
            if any(w.lower().startswith("connecttimeout=") for w in extra):
                own_connect_timeout.add(where)
            if name == "proxypass":
                path = match_text if match_text == "/" else match_text.rstrip("/")
                if not _is_safe_path(match_text):
                    problem(f"ProxyPass path must be an absolute URL path without '.', '..', "
                            f"empty segments, spaces, '?' or '#', got {match_text!r}")
                elif SUBSTITUTION.search(target):
                    problem("$N substitutions need ProxyPassMatch; ProxyPass has no groups")
                elif path in seen_paths:
                    problem(f"duplicate ProxyPass path {path!r} (first at {seen_paths[path]})")
                else:
                    seen_paths[path] = where
                    prefix_rules.append(PrefixRule(path, target, options, where))
            else:
                try:
                    pattern = re.compile(match_text)
                except (re.error, RecursionError, OverflowError, ValueError) as e:
                    problem(f"bad regular expression {match_text!r}: {e}")
                    continue
                groups = {int(g) for g in SUBSTITUTION.findall(target)}
                missing = sorted(g for g in groups if g > pattern.groups or g == 0)
                if missing:
                    problem(f"target uses ${missing[0]} but the expression has "
                            f"{pattern.groups} group(s); use $1..${max(pattern.groups, 1)}")
                else:
                    pattern_rules.append(PatternRule(pattern, target, options, where))

        elif name == "demobackend":
            if len(args) != 2 or args[0] not in _DEMO_KINDS:
                problem(f"DemoBackend takes a kind ({', '.join(_DEMO_KINDS)}) and a server endpoint string")
            else:
                demo_backends.append(DemoBackend(args[0], args[1], where))

        elif name == "demopage":
            if len(args) != 2 or not all(_is_safe_path(a) for a in args):
                problem("DemoPage takes the page's path and the WebSocket path it opens, e.g. DemoPage / /echo")
            else:
                demo_pages.append(DemoPage(args[0], args[1], where))

        elif name == "alias":
            if len(args) != 2:
                problem("Alias takes a URL path and an absolute folder, e.g. Alias /novnc /usr/share/novnc")
            elif not _is_safe_path(args[0]):
                problem(f"Alias path must be an absolute URL path without '.', '..', "
                        f"empty segments, spaces, '?' or '#', got {args[0]!r}")
            elif not args[1].startswith("/"):
                problem(f"Alias folder must be an absolute path, got {args[1]!r}")
            else:
                alias_path = args[0] if args[0] == "/" else args[0].rstrip("/")
                earlier = [a for a in aliases if a.path == alias_path]
                if earlier:
                    problem(f"duplicate Alias path {alias_path!r} (first at {earlier[0].where})")
                else:
                    aliases.append(Alias(alias_path, args[1], where))

        elif name == "timeout":
            found = _settings(directive, args, {"handshake": (0.5, 3600, False), "connect": (0.1, 3600, False),
                                                "idle": (0, 7 * 86400, False)}, problem)
            timeouts = replace(timeouts, **found)

        elif name == "keepalive":
            found = _settings(directive, args, {"ping": (0, 86400, False), "pong": (0.1, 3600, False),
                                                "tcpidle": (0, 86400, True), "tcpinterval": (1, 3600, True),
                                                "tcpcount": (1, 100, True)}, problem)
            names = {"tcpidle": "tcp_idle", "tcpinterval": "tcp_interval", "tcpcount": "tcp_count"}
            keepalive = replace(keepalive, **{names.get(k, k): int(v) if k in names else v  # type: ignore[arg-type]
                                              for k, v in found.items()})

        elif name == "limit":
            found = _settings(directive, args, {"sessions": (0, 10**7, True), "perclient": (0, 10**7, True),
                                                "rate": (0, 10**6, False), "headers": (1024, 1 << 20, True),
                                                "frame": (0, 1 << 40, True), "message": (0, 1 << 50, True)}, problem)
            limits = replace(limits, **{("per_client" if k == "perclient" else k):  # type: ignore[arg-type]
                                        (v if k == "rate" else int(v)) for k, v in found.items()})

        elif name == "shutdowntimeout":
            value = _number("ShutdownTimeout", args[0], 0, 86400, problem) if len(args) == 1 else None
            if len(args) != 1:
                problem("ShutdownTimeout takes the seconds live sessions may run after SIGTERM, e.g. ShutdownTimeout 30")
            elif value is not None:
                shutdown_timeout = value

        elif name == "adminlisten":
            # Issue 11: the admin API (session list, close) leaves the host only when the operator says so.
            public = args[1:] == ["public"]
            if not 1 <= len(args) <= 2 or (len(args) == 2 and not public):
                problem("AdminListen takes one server endpoint string, e.g. AdminListen tcp:port=9090:interface=127.0.0.1")
            elif not public and not listener_is_local(args[0]):
                problem(f"AdminListen {args[0]} is reachable from other hosts (not loopback nor a UNIX socket); "
                        "write 'public' after it to serve the session list and close to the network")
            else:
                admin_listeners.append(Listener(args[0], where))

        elif name == "logformat":
            if len(args) != 1 or args[0].lower() not in ("text", "json"):
                problem("LogFormat takes text or json")
            else:
                log_format = args[0].lower()

        else:
            known = ["Listen", "ProxyPass", "ProxyPassMatch", "DemoBackend", "DemoPage", "Alias", "Timeout",
                     "KeepAlive", "Limit", "ShutdownTimeout", "AdminListen", "LogFormat", "TokenSource",
                     "TokenRoute", "TokenLookup", "<Proxy>", "BalancerMember", "ProxySet", "GatewayURL",
                     "GatewayOwner", "TrustedProxy", "OriginAllow"]
            problem(f"unknown directive {directive!r} (known: {', '.join(known)})")

    for alias in aliases:
        if alias.path in seen_paths:
            problems.append(Problem(alias.where, f"Alias path {alias.path!r} is also a ProxyPass path "
                                                 f"(at {seen_paths[alias.path]}); give each its own path"))
    rules: list[Rule] = [*prefix_rules, *pattern_rules]
    topology_config = topology.finish([(r.target, r.where) for r in rules],
                                      lambda w, m: problems.append(Problem(w, m)))
    if require_listeners and not listeners and not problems:
        problems.append(Problem(Location(filename, last_line), "no Listen directive: the gateway would accept nothing"))
    if keepalive.ping and keepalive.pong >= keepalive.ping and not problems:
        problems.append(Problem(Location(filename, last_line), "KeepAlive pong must be shorter than ping"))
    if problems:
        raise ConfigError(problems)

    def inherit(rule: Rule) -> Rule:
        if rule.where in own_connect_timeout:
            return rule
        return replace(rule, options=replace(rule.options, connect_timeout=timeouts.connect))

    prefix_rules = [inherit(r) for r in prefix_rules]  # type: ignore[misc]
    pattern_rules = [inherit(r) for r in pattern_rules]  # type: ignore[misc]
    return Config(
        source=filename,
        listeners=tuple(listeners),
        prefix_rules=tuple(prefix_rules),
        pattern_rules=tuple(pattern_rules),
        demo_backends=tuple(demo_backends),
        demo_pages=tuple(demo_pages),
        aliases=tuple(aliases),
        topology=topology_config,
        timeouts=timeouts,
        keepalive=keepalive,
        limits=limits,
        shutdown_timeout=shutdown_timeout,
        admin_listeners=tuple(admin_listeners),
        log_format=log_format,
    )
