"""
Live reload: apply a new configuration to a running gateway, and re-read the
configuration file on SIGHUP.

Every directive but the listeners (``Listen``, ``AdminListen``,
``DemoBackend``: sockets are bound once) applies at once to new requests and
sessions: rules, token sources, pools, redirects, trusted proxies, limits,
timeouts, keepalive, request bounds, Alias folders, demo pages, audit sinks and access logs.
The certificates, keys, chains, SNI folders and client CA files of ``ssl:``
listeners are read again and serve new handshakes at once.  Live
sessions keep their backend connections, slots and timers.  A configuration
with mistakes is refused with its ``FILE:LINE`` problems and the running one
stays in force; a changed listener is named in the reload's log line.
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Optional

from twisted.logger import Logger

from tunnelgw.core.config import Config, ConfigError
from tunnelgw.core.routing import RuleSet
from tunnelgw.demo import demo_page
from tunnelgw.service import GatewayService, check_config, load_config
from tunnelgw.topology import Topology

__all__ = ["apply_config", "install_reload_signal", "reload_from_file"]

_log = Logger(namespace="tunnelgw")


def apply_config(service: GatewayService, config: Config, reactor: Any) -> list[str]:
    """
    Switch a running service to config, whole: rules, topology (tokens,
    pools, redirects, trusted proxies), limits, timeouts, keepalive, request
    bounds, Alias folders, demo pages and the certificates of ``ssl:``
    listeners apply to new requests, handshakes and sessions; live sessions
    keep their backends, slots, timers and TLS connections.

    :returns: the directives that changed but need a restart to take effect.
    :raises ConfigError: when an endpoint string or secret is bad; nothing changes then.
    """
    servers = check_config(config, reactor)
    factory = service.resource.factory
    # Build everything first, then swap in one go (nothing can fail after this).
    topology = Topology(config.topology, reactor, factory.backends, previous=factory.topology, metrics=factory.metrics)
    rules = RuleSet(config)
    pages = {p.path: demo_page(p.websocket_path) for p in config.demo_pages}
    old = service.config
    factory.rules = rules
    factory.topology = topology
    factory.reconfigure(config)
    service.resource.reconfigure(pages, config.aliases)
    service.front.timeout = service.front_h2.timeout = service.site.timeOut = config.timeouts.handshake
    service.front.max_head = service.front_h2.max_head = service.site.max_head = config.limits.headers
    service.http2.idle_timeout, service.http2.max_head = config.timeouts.handshake, config.limits.headers
    service.http2.max_streams = config.limits.streams  # new connections' SETTINGS; open ones keep theirs
    service.audit.reconfigure(config.audit_logs)
    service.access.reconfigure(config.access_logs)
    taken = service.take_certificates(servers, config)
    service.config = config
    if taken:
        _log.info("reload: {count} ssl: listener(s) serve the certificates just read to new handshakes", count=taken)
    needs_restart = [name for name, before, after in (
        ("Listen", old.listeners, config.listeners),
        ("AdminListen", old.admin_listeners, config.admin_listeners),
        ("DemoBackend", old.demo_backends, config.demo_backends))
        if [_socket_of(x) for x in before] != [_socket_of(x) for x in after]]
    if old.pool != config.pool:
        needs_restart.append("Pool")
    if old.log_format != config.log_format:
        # The log observer is chosen once, when twistd starts logging.
        needs_restart.append("LogFormat")
    return needs_restart


def _socket_of(listener: Any) -> str:
    """What a listener binds: an ssl: listener's files and TLS options are reloaded, its socket is not."""
    tls = getattr(listener, "tls", None)
    return tls.stream if tls is not None else str(listener.endpoint)


def reload_from_file(service: GatewayService, path: str, reactor: Any) -> bool:
    """Re-read path and apply it; log the outcome; True when the new configuration is in force."""
    try:
        # Every problem of the file at once (syntax and what a start checks), then the switch.
        needs_restart = apply_config(service, load_config(path, reactor), reactor)
    except ConfigError as e:
        _log.error("reload refused, the previous configuration stays in force:\n{problems}", problems=str(e))
        return False
    if needs_restart:
        _log.warn("reload: configuration {path} in force; changed {directives} take effect only on restart",
                  path=path, directives=", ".join(needs_restart))
    else:
        _log.info("reload: configuration {path} in force (every directive applied)", path=path)
    return True


def install_reload_signal(service: GatewayService, path: str, reactor: Any,
                          install: Callable[[int, Any], Any] = signal.signal) -> Optional[Any]:
    """Make SIGHUP re-read path (the handler defers the work to the reactor thread)."""
    def on_hup(signum: int, frame: Any) -> None:
        reactor.callFromThread(reload_from_file, service, path, reactor)

    previous = install(signal.SIGHUP, on_hup)
    _log.info("reload: SIGHUP re-reads {path}", path=path)
    return previous
