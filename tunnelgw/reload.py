"""
Live reload: apply a new configuration to a running gateway, and re-read the
configuration file on SIGHUP.

Rules, token sources, pools, redirects and trusted proxies change at once for
new requests; live sessions keep their backend connections.  A configuration
with mistakes is refused with its ``FILE:LINE`` problems and the running one
stays in force.  Listeners are not changed by a reload (a restart is needed).
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Optional

from twisted.logger import Logger

from tunnelgw.core.config import Config, ConfigError
from tunnelgw.core.routing import RuleSet
from tunnelgw.service import GatewayService, check_config, load_config
from tunnelgw.topology import Topology

__all__ = ["apply_config", "install_reload_signal", "reload_from_file"]

_log = Logger(namespace="tunnelgw")


def apply_config(service: GatewayService, config: Config, reactor: Any) -> None:
    """
    Switch a running service to config.

    :raises ConfigError: when an endpoint string or secret is bad; nothing changes then.
    """
    check_config(config, reactor)
    factory = service.resource.factory
    topology = Topology(config.topology, reactor, factory.backends, previous=factory.topology,
                        rate=config.limits.rate)
    factory.rules = RuleSet(config)
    factory.topology = topology
    if [l.endpoint for l in config.listeners] != [l.endpoint for l in service.config.listeners]:
        _log.warn("reload: Listen directives changed; listeners change only on restart")
    service.config = config


def reload_from_file(service: GatewayService, path: str, reactor: Any) -> bool:
    """Re-read path and apply it; log the outcome; True when the new configuration is in force."""
    try:
        apply_config(service, load_config(path), reactor)
    except ConfigError as e:
        _log.error("reload refused, the previous configuration stays in force:\n{problems}", problems=str(e))
        return False
    _log.info("reload: configuration {path} in force", path=path)
    return True


def install_reload_signal(service: GatewayService, path: str, reactor: Any,
                          install: Callable[[int, Any], Any] = signal.signal) -> Optional[Any]:
    """Make SIGHUP re-read path (the handler defers the work to the reactor thread)."""
    def on_hup(signum: int, frame: Any) -> None:
        reactor.callFromThread(reload_from_file, service, path, reactor)

    previous = install(signal.SIGHUP, on_hup)
    _log.info("reload: SIGHUP re-reads {path}", path=path)
    return previous
