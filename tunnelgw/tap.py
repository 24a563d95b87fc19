"""
``twistd tunnelgw`` command line: options and the service they make.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application.service import IService, MultiService
from twisted.python import usage

from tunnelgw.config import DEFAULT_CONFIG, Config, ConfigError, parse_config
from tunnelgw.service import ListenError, load_config, make_service

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    """Options of ``twistd tunnelgw``."""

    synopsis = "[--config FILE]"
    longdesc = ("WebSocket tunnel gateway for remote desktops. Without --config it runs the "
                "embedded default: ws://127.0.0.1:8080/echo relayed to a built-in echo "
                "service, and a demo page at http://127.0.0.1:8080/.")
    optParameters = [
        ["config", "c", None, "configuration file (default: the embedded default, see README.rst)"],
    ]

    def opt_version(self) -> None:
        """Print tunnelgw's version and exit."""
        from tunnelgw import __version__

        print(f"tunnelgw {__version__}")
        raise SystemExit(0)


class _CommandLineService(MultiService):
    """Reports a listener that cannot start as one line on stderr and exit status 1."""

    log_format = "text"

    def setServiceParent(self, parent: Any) -> Any:
        """Under twistd, ``LogFormat json`` makes the application log JSON lines to stdout."""
        if self.log_format == "json" and hasattr(parent, "setComponent"):
            import sys

            from twisted.logger import ILogObserver

            from tunnelgw.logs import json_lines_observer

            parent.setComponent(ILogObserver, json_lines_observer(sys.stdout))
        return super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        """Start listening, turning :class:`ListenError` into a clean exit."""
        try:
            super().privilegedStartService()
        except ListenError as e:
            raise SystemExit(f"tunnelgw: {e}") from None


def read_options_config(path: Optional[str]) -> Config:
    """The configuration named on the command line, or the embedded default."""
    if path is None:
        return parse_config(DEFAULT_CONFIG, "<default>")
    return load_config(path)


def makeService(options: Any) -> IService:
    """
    Make the gateway service; a bad configuration exits with status 1 and one
    ``FILE:LINE: what is wrong`` line per problem on stderr.
    """
    from twisted.internet import reactor

    try:
        gateway = make_service(read_options_config(options["config"]), reactor)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    top = _CommandLineService()
    top.log_format = gateway.config.log_format
    gateway.setServiceParent(top)
    return top
