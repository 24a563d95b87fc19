"""
Build the gateway for ``twistd`` or for embedding in another Twisted program.

- :func:`load_config` / :func:`parse_config` read a configuration.
- :func:`build_resource` gives a twisted.web resource to mount in a Site.
- :func:`make_service` gives an :class:`~twisted.application.service.IService`
  that listens on every ``Listen`` endpoint and runs the demo backends.

Endpoint strings are checked here against Twisted's parsers, so that a bad
one is reported as ``FILE:LINE`` before anything listens.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from typing import Any, Optional, Union

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from tunnelgw.backends.tcp import TcpBackends
from tunnelgw.certificates import ServerCertificates, TLSServerEndpoint, load_contexts
from tunnelgw.core.config import (OPTIONAL_PACKAGES, Config, ConfigError, Location, Problem, Recording,
                                  needed_packages, parse_config, read_config)
from tunnelgw.demo import demo_factory, demo_page
from tunnelgw.front import FrontFactory, GatewaySite
from tunnelgw.http2 import Http2Server
from tunnelgw.metrics import GatewayMetrics
from tunnelgw.recording import folder_problem, foreign_entries
from tunnelgw.gateway import GatewayFactory
from tunnelgw.core.relay import CLOSE_GOING_AWAY, Close
from tunnelgw.core.routing import RuleSet
from tunnelgw.topology import Topology, check_topology
from tunnelgw.sockettransport import SocketServerEndpoint
from tunnelgw.web import GatewayResource
from tunnelgw.backends.tls import client_endpoint, load_trust_root
from tunnelgw.accesslog import AccessLogs
from tunnelgw.overview import OverviewSource
from tunnelgw.audit import AuditTrail
from tunnelgw.core.targets import SUBSTITUTION, EndpointTarget, ReplayTarget, WebSocketURL

__all__ = [
    "GatewayService",
    "ListenError",
    "build_resource",
    "check_config",
    "inherit_listeners",
    "load_config",
    "make_service",
    "parse_config",
]

_log = Logger(namespace="tunnelgw")


class ListenError(Exception):
    """A listener could not start (port in use, permission...); str() names FILE:LINE."""


def load_config(path: str, reactor: Any = None, without_sockets: bool = False) -> Config:
    """Read and parse a configuration file.

    :param reactor: when given, what a start checks (endpoints, files,
        certificates, optional packages: :func:`check_config`) is checked in
        the same pass, so that every problem of the file is reported at once.
    :param without_sockets: as for :func:`check_config`.
    :raises ConfigError: when it cannot be read or has mistakes, in line order.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([Problem(Location(path, 0), f"cannot read the configuration: {e}")]) from None
    if reactor is None:
        return inherit_listeners(parse_config(text, path), os.environ.get(INHERITED_ENV))
    config, problems = read_config(text, path)
    config = inherit_listeners(config, os.environ.get(INHERITED_ENV))
    try:
        check_config(config, reactor, without_sockets)
    except ConfigError as e:
        problems += e.problems
    if problems:
        raise ConfigError(problems)
    return config


#: Set by :mod:`tunnelgw.workers` for its children: a JSON object mapping the
#: line number of each ``Listen``/``DemoBackend`` directive to the ``systemd:``
#: endpoint of the socket the worker inherited for it.
INHERITED_ENV = "TUNNELGW_INHERITED_SOCKETS"


def inherit_listeners(config: Config, mapping: Optional[str]) -> Config:
    """config with its listeners on inherited sockets (see :data:`INHERITED_ENV`); as is without a mapping."""
    if not mapping:
        return config
    inherited: dict[str, str] = json.loads(mapping)
    def adopt(l: Any) -> Any:
        socket = inherited.get(str(l.where.line))
        if socket is None:
            return l
        # An ssl: listener keeps its TLS settings over the inherited plain socket.
        return replace(l, tls=replace(l.tls, stream=socket)) if l.tls is not None else replace(l, endpoint=socket)

    return replace(config,
                   listeners=tuple(adopt(l) for l in config.listeners),
                   demo_backends=tuple(replace(d, endpoint=inherited.get(str(d.where.line), d.endpoint))
                                       for d in config.demo_backends))


#: The parameters of the endpoint kinds people mistype most, for hints.
_ENDPOINT_HINTS = {
    ("tcp", True): "tcp:host=HOST:port=PORT[:timeout=S]", ("tcp", False): "tcp:port=PORT[:interface=IP]",
    ("unix", True): "unix:path=PATH[:timeout=S]", ("unix", False): "unix:address=PATH[:mode=0660]",
    ("tls", True): "tls:HOST:PORT or tls:host=HOST:port=PORT",
    ("ssl", False): "ssl:port=PORT:privateKey=KEY.pem:certKey=CERT.pem",
}


def _explain(e: BaseException, description: str = "", client: bool = False) -> str:
    """What is wrong with an endpoint string, from the exception Twisted's parser raised, with a hint."""
    kind = (description.split(":", 1)[0].lower(), client)
    hint = f" (expected {_ENDPOINT_HINTS[kind]})" if kind in _ENDPOINT_HINTS else ""
    if isinstance(e, KeyError):
        return f"missing parameter {e.args[0]!r}{hint}"
    text = str(e)
    missing = re.search(r"missing \d+ required (?:positional|keyword-only) arguments?: (.*)", text)
    if isinstance(e, TypeError) and missing:
        return f"missing parameter {missing.group(1)}{hint}"
    unknown = re.search(r"unexpected keyword argument '([^']*)'", text) or \
        re.search(r"unrecognized keyword arguments present', \[([^]]*)\]", text)
    if isinstance(e, TypeError) and unknown:
        return f"unknown parameter {unknown.group(1).strip(chr(39))!r}{hint}"
    if isinstance(e, ValueError) and "invalid literal for int()" in text:
        return f"a number is expected: {text}{hint}"
    return (text or type(e).__name__) + hint


def _missing_packages(config: Config) -> list[Problem]:
    """A problem for each directive whose optional package cannot be imported, naming the extra to install."""
    import importlib

    problems: list[Problem] = []
    for where, directive, module in needed_packages(config):
        try:
            importlib.import_module(module)
        except ImportError:
            problems.append(Problem(where, f"{directive} needs the Python package {module!r}, which is not "
                                           f"installed: pip install 'tunnelgw[{OPTIONAL_PACKAGES[module]}]'"))
    return problems


def _writable_file(path: str) -> Optional[str]:
    """Why a log file cannot be appended to (None: it can, or its folder lets it be made)."""
    if os.path.exists(path):
        return None if os.path.isfile(path) and os.access(path, os.W_OK) else f"{path!r} is not a writable file"
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        return f"the folder {folder!r} of {path!r} does not exist"
    return None if os.access(folder, os.W_OK | os.X_OK) else f"the folder {folder!r} of {path!r} is not writable"


def _have_listen_fds() -> bool:
    return bool(os.environ.get("LISTEN_FDS")) and os.environ.get("LISTEN_PID") == str(os.getpid())


def _check_systemd(description: str) -> None:
    """Raise ValueError unless description is a well-formed ``systemd:`` server string."""
    from twisted.internet.endpoints import _parseServer

    _, args, kwargs = _parseServer(description, None)
    unknown = set(kwargs) - {"domain", "index", "name"}
    if args[1:] or unknown:
        raise ValueError(f"unknown systemd endpoint arguments {sorted(unknown) or args[1:]}")
    if kwargs.get("domain", "INET") not in ("INET", "INET6", "UNIX"):
        raise ValueError(f"domain must be INET, INET6 or UNIX, not {kwargs['domain']!r}")
    if "index" in kwargs and "name" in kwargs:
        raise ValueError("give index= or name=, not both")
    if "index" in kwargs:
        int(kwargs["index"])
    elif "name" not in kwargs:
        raise ValueError("give index= or name=")


def check_config(config: Config, reactor: Any, without_sockets: bool = False) -> list[tuple[Location, str, IStreamServerEndpoint]]:
    """
    Check every endpoint string against Twisted's parsers (``tls:`` backend
    strings against :func:`tunnelgw.backends.tls.client_endpoint`'s, which
    reads their trust roots and client certificates).

    ``ProxyPassMatch`` targets are checked with each ``$N`` replaced by ``1``.
    Certificate and key files of ``ssl:`` listeners (with their SNI folders
    and client CA files; see :mod:`tunnelgw.certificates`), and ``cafile=`` trust
    roots of ``wss://`` routes, are loaded here; ``Alias`` folders must exist.

    With without_sockets (``--check``), ``systemd:`` listeners are validated
    without the inherited sockets when there are none, and left out of the result.

    :returns: (where, description, endpoint) for each listener, then each demo
        backend, then each admin listener.
    :raises ConfigError: naming each bad endpoint string at its line.
    """
    problems: list[Problem] = []
    servers: list[tuple[Location, str, IStreamServerEndpoint]] = []
    tls = {l.where: l.tls for l in config.listeners if l.tls is not None}
    for where, kind, description in [(l.where, "Listen", l.endpoint) for l in config.listeners] + [
        (d.where, "DemoBackend", d.endpoint) for d in config.demo_backends
    ] + [(a.where, "AdminListen", a.endpoint) for a in config.admin_listeners]:
        listener_tls = tls.get(where) if kind == "Listen" else None
        try:
            if without_sockets and description.startswith("systemd:") and not _have_listen_fds():
                # Socket-activated: the sockets exist only under systemd, so --check
                # validates the string's arguments without adopting a socket.
                _check_systemd(description)
                continue
            if kind == "Listen" and listener_tls is None:
                # Clients' plain TCP connections run on the gateway's own transport (immediate writes).
                servers.append((where, description, SocketServerEndpoint(serverFromString(reactor, description),
                                                                         reactor)))
            elif listener_tls is None:
                servers.append((where, description, serverFromString(reactor, description)))
            else:
                stream = serverFromString(reactor, listener_tls.stream)
                try:
                    certificates = ServerCertificates(load_contexts(listener_tls))
                except ValueError as e:
                    problems.append(Problem(where, f"Listen {description.split(':')[0]}: {e}"))
                    continue
                servers.append((where, description, TLSServerEndpoint(stream, certificates, reactor)))
        except Exception as e:
            problems.append(Problem(where, f"bad {kind} endpoint {description!r}: {_explain(e, description)}"))
    problems += check_topology(config.topology, reactor)
    for rule in config.rules:
        backend = rule.backend
        if isinstance(backend, WebSocketURL):
            # The URL was checked by the parser; what is left is the trust root.
            if rule.options.cafile is not None:
                try:
                    load_trust_root(rule.options.cafile)
                except ValueError as e:
                    problems.append(Problem(rule.where, str(e)))
        elif isinstance(backend, ReplayTarget):
            made = config.recording is not None and _same_folder(backend.folder, config.recording.folder)
            if not os.path.isdir(backend.folder) and not made:  # the Recording folder is made at start
                problems.append(Problem(rule.where, f"replay folder {backend.folder!r} is not an existing folder"))
        elif isinstance(backend, EndpointTarget):
            try:
                client_endpoint(reactor, SUBSTITUTION.sub("1", backend.endpoint))
            except Exception as e:
                problems.append(Problem(rule.where, f"bad backend endpoint {rule.target!r}: "
                                                    f"{_explain(e, backend.endpoint, client=True)}"))
    if config.recording is not None:
        problems += _check_recording_folder(config.recording)
    for alias in config.aliases:
        if not os.path.isdir(alias.folder):
            problems.append(Problem(alias.where, f"Alias folder {alias.folder!r} is not an existing folder"))
    log_files = [(a.where, "AccessLog", a.path) for a in config.access_logs if a.path != "-"]
    log_files += [(a.where, "AuditLog", a.path) for a in config.audit_logs if a.kind == "json"]
    for where, directive, path in log_files:
        why = _writable_file(path)
        if why is not None:
            problems.append(Problem(where, f"{directive}: {why}"))
    if config.pool is not None and config.pool.password_file and not os.access(config.pool.password_file, os.R_OK):
        problems.append(Problem(config.pool.where, f"cannot read the Redis password file {config.pool.password_file!r}"))
    problems += _missing_packages(config)
    if problems:
        raise ConfigError(problems)
    return servers


def _same_folder(a: str, b: str) -> bool:
    return os.path.normpath(a) == os.path.normpath(b)


def _check_recording_folder(spec: Recording) -> list[Problem]:
    """
    The Recording folder can hold recordings (see :func:`~tunnelgw.recording.folder_problem`;
    a missing one is made at start); with ``keepdays`` and without ``shared=on``, it holds only recordings.
    """
    why = folder_problem(spec.folder)
    if why is not None:
        return [Problem(spec.where, f"Recording folder {spec.folder!r} {why}")]
    if not os.path.isdir(spec.folder) or not spec.keep_days or spec.shared:
        return []
    try:
        foreign = foreign_entries(spec.folder)
    except OSError as e:
        return [Problem(spec.where, f"Recording folder {spec.folder!r} cannot be read: {e.strerror}")]
    if not foreign:
        return []
    shown = ", ".join(repr(name) for name in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return [Problem(spec.where, f"Recording folder {spec.folder!r} holds files that are not recordings ({shown}); "
                                "give recordings a folder of their own, or write shared=on to keep them "
                                "(retention deletes only the gateway's recordings)")]


def build_resource(config: Config, reactor: Any) -> GatewayResource:
    """
    A twisted.web resource serving config's routes (and demo pages), for
    mounting in an existing Site.  Rules match the full request path.

    :raises ConfigError: when an endpoint string is bad.
    """
    check_config(config, reactor)
    return _resource(config, reactor)


def _resource(config: Config, reactor: Any) -> GatewayResource:
    factory = GatewayFactory(RuleSet(config), reactor, TcpBackends(reactor), config, GatewayMetrics())
    factory.topology = Topology(config.topology, reactor, factory.backends, metrics=factory.metrics)
    pages = {p.path: demo_page(p.websocket_path) for p in config.demo_pages}
    return GatewayResource(factory, pages, aliases=config.aliases)


def _certificates(servers: list[tuple[Location, str, IStreamServerEndpoint]]) -> dict[Location, ServerCertificates]:
    return {where: endpoint.certificates for where, _, endpoint in servers if isinstance(endpoint, TLSServerEndpoint)}


class GatewayService(Service):
    """
    Listens on every ``Listen`` endpoint with one Site serving the gateway
    resource, and runs the configured demo backends.

    Listening happens in :meth:`privilegedStartService` (before twistd drops
    privileges) and a failure raises :class:`ListenError` there.
    """

    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self._reactor = reactor
        self._servers = check_config(config, reactor)
        self.resource = _resource(config, reactor)
        self.factory: GatewayFactory = self.resource._factory
        metrics = self.factory.metrics
        self.access = AccessLogs(reactor, config.access_logs, self.factory.redact)
        #: What the operator's page shows above the sessions (refusals observed from start to stop).
        self.overview = OverviewSource(self.factory, reactor)
        self.site = GatewaySite(self.resource, max_head=config.limits.headers, timeout=config.timeouts.handshake,
                                on_too_large=lambda: metrics.handshake_failed("", "headers", 431), reactor=reactor,
                                access=self.access.request)
        # Every connection's first request head is read (once) by the front.
        self.front = FrontFactory(self.factory, self.site, reactor, config.timeouts.handshake, config.limits.headers,
                                  on_timeout=lambda: metrics.handshake_failed("", "handshake_timeout", None),
                                  on_too_large=lambda: metrics.handshake_failed("", "headers", 431),
                                  on_silent=metrics.silent_connections.inc)
        # The same front for http2=on listeners, with ALPN offering h2 first.
        self.http2 = Http2Server(self.factory, self.site, reactor, config.timeouts.handshake,
                                 max_streams=config.limits.streams, max_head=config.limits.headers)
        self.front_h2 = FrontFactory(self.factory, self.site, reactor, config.timeouts.handshake, config.limits.headers,
                                     on_timeout=lambda: metrics.handshake_failed("", "handshake_timeout", None),
                                     on_too_large=lambda: metrics.handshake_failed("", "headers", 431),
                                     on_silent=metrics.silent_connections.inc, http2=self.http2)
        self.audit = AuditTrail(reactor, config.audit_logs, metrics.registry)
        if config.pool is not None:
            from tunnelgw.pool import PoolRegistry

            self.factory.pool = PoolRegistry(reactor, config.pool, self.factory.sessions, metrics.registry)
        self.draining = False
        found = _certificates(self._servers)
        #: Each Listen line's certificates (None without TLS), in file order, kept over reloads.
        self.certificates: list[Optional[ServerCertificates]] = [found.get(l.where) for l in config.listeners]
        self.ports: list[IListeningPort] = []
        self.admin_ports: list[IListeningPort] = []

    _listening = False

    def privilegedStartService(self) -> None:
        """Start listening; raise :class:`ListenError` if any endpoint fails."""
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        """Start the service, listening first if twistd did not already."""
        if not self._listening:
            self._listen()
        self.audit.start()
        self.access.start()
        self.overview.start()
        self.factory.recordings.start()
        if self.factory.pool is not None:
            self.factory.pool.start()
        super().startService()

    def take_certificates(self, servers: list[tuple[Location, str, IStreamServerEndpoint]], config: Config) -> int:
        """
        Make the running ``ssl:`` listeners use the certificates just loaded for
        config (the n-th Listen line's for the n-th listener); returns how many.
        """
        found = _certificates(servers)
        taken = 0
        for running, listener in zip(self.certificates, config.listeners):
            loaded = found.get(listener.where)
            if running is not None and loaded is not None:
                running.take(loaded)
                taken += 1
        return taken

    def _listen(self) -> None:
        self._listening = True
        demo_kinds = {d.where: d.kind for d in self.config.demo_backends}
        admin_places = {a.where for a in self.config.admin_listeners}
        http2_places = {l.where for l in self.config.listeners if l.tls is not None and l.tls.http2}
        for where, description, endpoint in self._servers:
            if where in admin_places:
                from tunnelgw.admin import admin_site

                factory: Any = admin_site(self.factory, lambda: self.draining, description, self.overview)
            else:
                factory = demo_factory(demo_kinds[where]) if where in demo_kinds else (
                    self.front_h2 if where in http2_places else self.front)
            ports = self.admin_ports if where in admin_places else self.ports
            d: Deferred[IListeningPort] = endpoint.listen(factory)
            if not d.called:
                # An endpoint that listens later: keep the port when it comes.
                def failed(f: Failure, where: Location = where, description: str = description) -> None:
                    _log.failure("{where}: cannot listen on {endpoint}", f, where=where, endpoint=description)

                d.addCallbacks(ports.append, failed)
                continue
            result: list[Union[IListeningPort, Failure]] = []
            d.addBoth(result.append)
            if isinstance(result[0], Failure):
                for port in self.ports + self.admin_ports:
                    port.stopListening()
                self.ports, self.admin_ports = [], []
                raise ListenError(f"{where}: cannot listen on {description!r}: {_explain(result[0].value)}")
            ports.append(result[0])
            _log.info("{where}: listening on {endpoint} ({address})", where=where, endpoint=description,
                      address=result[0].getHost())

    def stopService(self) -> Optional[Deferred[None]]:
        """
        Drain: stop listening, let live sessions run up to ``ShutdownTimeout``
        seconds, then close those left with 1001.  The admin listener (with
        /healthz answering 503) stays up until the end.
        """
        super().stopService()
        self._listening = False
        return ensureDeferred(self._drain())

    _forced = False

    def force_close(self) -> None:
        """End a drain now: every session left is closed with 1001 (a second Ctrl-C)."""
        self._forced = True

    async def _drain(self) -> None:
        self.draining = True
        ports, self.ports = self.ports, []
        await gatherResults([d for d in (p.stopListening() for p in ports) if d is not None])
        self.front.abort_pending()
        self.front_h2.abort_pending()
        self.http2.drain()
        counts = self.factory.session_counts
        timeout = self.config.shutdown_timeout
        if counts.live:
            _log.info("shutting down: draining {count} session(s) for up to {timeout:g} s",
                      count=counts.live, timeout=timeout)
        deadline = self._reactor.seconds() + timeout
        while counts.live and self._reactor.seconds() < deadline and not self._forced:
            await deferLater(self._reactor, min(0.1, timeout), lambda: None)
        if counts.live:
            _log.info("shutting down: closing {count} session(s) with 1001", count=counts.live)
            self.factory.close_all(Close(CLOSE_GOING_AWAY, "the gateway is shutting down"))
            # Autobahn drops a client that does not answer the close within ~2 s.
            give_up = self._reactor.seconds() + 5
            while counts.live and self._reactor.seconds() < give_up:
                await deferLater(self._reactor, 0.05, lambda: None)
        admin, self.admin_ports = self.admin_ports, []
        await gatherResults([d for d in (p.stopListening() for p in admin) if d is not None])
        if self.factory.pool is not None:
            await self.factory.pool.stop()
        if self.factory.topology is not None:
            self.factory.topology.stop()
        self.factory.recordings.stop()
        self.audit.stop()
        self.access.stop()
        self.overview.stop()


def make_service(config: Union[Config, str], reactor: Any = None) -> GatewayService:
    """
    The gateway as a service, from a :class:`Config` or configuration text.

    :param reactor: the reactor to use; the global one when None.
    :raises ConfigError: for mistakes in the configuration.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    if isinstance(config, str):
        config = parse_config(config, "<text>")
    return GatewayService(config, reactor)
