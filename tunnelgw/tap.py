"""
``twistd tunnelgw`` command line: options and the service they make.
"""

from __future__ import annotations

import gc
from typing import Any, Optional

from twisted.application.service import IService, MultiService
from twisted.python import usage

from tunnelgw.core.config import DEFAULT_CONFIG, DIRECTIVES, Config, ConfigError, directive_reference, parse_config
from tunnelgw.service import ListenError, load_config, make_service

__all__ = ["Options", "check_only", "makeService", "redis_warnings"]




class Options(usage.Options):
    """Options of ``twistd tunnelgw``."""

    synopsis = "[--config FILE]"
    longdesc = ("WebSocket tunnel gateway for remote desktops. Without --config it runs the "
                "embedded default: ws://127.0.0.1:8080/echo relayed to a built-in echo "
                "service, and a demo page at http://127.0.0.1:8080/. "
                "Directives: " + ", ".join(d.name for d in DIRECTIVES) +
                " (--directives describes each).")
    optParameters = [
        ["config", "c", None, "configuration file (default: the embedded default, see README.rst)"],
    ]
    optFlags = [
        ["check", None, "check the configuration as a start would, short of listening (endpoints, files, "
                        "certificates, secrets, optional packages; an unreachable Redis is a warning), print "
                        "the verdict and exit (status 0 when it is valid, 1 with every FILE:LINE problem in "
                        "line order otherwise)"],
    ]

    def opt_directives(self) -> None:
        """Print the configuration directives (a reference; see examples/tunnelgw.conf) and exit."""
        try:
            print("Configuration directives (one per line, # starts a comment; KEY=VALUE options\n"
                  "in any order after the arguments; S: seconds, B: bytes, N: a number):")
            print(directive_reference(), flush=True)
        except BrokenPipeError:
            pass  # piped into head or a pager that quit: nothing more to say
        raise SystemExit(0)

    def opt_version(self) -> None:
        """Print tunnelgw's version and exit."""
        from tunnelgw import __version__

        print(f"tunnelgw {__version__}")
        raise SystemExit(0)


def _install_stop_signals(gateway: Any, reactor: Any) -> None:
    """
    Ctrl-C or SIGTERM starts the drain; a second one closes every session at once
    with 1001.  (Twisted's own handler would call ``reactor.stop()`` again and log
    ReactorNotRunning.)
    """
    import signal

    from twisted.logger import Logger

    log = Logger("tunnelgw.tap")
    stopping: list[str] = []

    def stop_or_force(name: str) -> None:
        if not stopping:
            stopping.append(name)
            log.info("{signal}: stopping; press Ctrl-C again (or send SIGTERM again) to close every "
                     "session now", signal=name)
            reactor.stop()
        else:
            log.info("{signal} again: closing every session now", signal=name)
            gateway.force_close()

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(stop_or_force, signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def _log_stream(server_options: Any) -> Any:
    """The file twistd's own logger would write to for these options."""
    import sys

    from twisted.python.logfile import LogFile

    if _logs_to_stdout(server_options):
        return sys.stdout
    return LogFile.fromFullPath(server_options.get("logfile") or "twistd.log")


def _logs_to_stdout(server_options: Any) -> bool:
    """Whether twistd logs to stdout: ``--logfile -``, or ``-n`` without ``--logfile``."""
    name = server_options.get("logfile") or ""
    return bool(name == "-" or (not name and server_options.get("nodaemon")))


class _CommandLineService(MultiService):
    """Reports a listener that cannot start as one line on stderr and exit status 1."""

    log_format = "text"
    #: twistd's own options (``--logfile``, ``--nodaemon``), when run by twistd.
    server_options: Any = None

    def setServiceParent(self, parent: Any) -> Any:
        """
        Under twistd, ``LogFormat json`` makes the application log JSON lines where
        twistd would log text: ``--logfile`` (``-`` is stdout), else stdout with
        ``-n``, else ``twistd.log`` (daemon mode).  Text lines to stdout get
        :func:`tunnelgw.logs.text_lines_observer` (twistd's lines, cheaper).
        ``--syslog`` and ``--logger`` name twistd's own observer: left alone.
        """
        import sys

        options = self.server_options or {}
        if hasattr(parent, "setComponent") and not options.get("logger") and not options.get("syslog"):
            from twisted.logger import ILogObserver

            from tunnelgw.logs import json_lines_observer, text_lines_observer

            if self.log_format == "json":
                parent.setComponent(ILogObserver, json_lines_observer(_log_stream(options)))
            elif _logs_to_stdout(options):
                # twistd's own text lines, cheaper; a log file keeps twistd's observer (and its SIGUSR1 reopen).
                parent.setComponent(ILogObserver, text_lines_observer(sys.stdout))
        return super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        """Start listening, turning :class:`ListenError` into a clean exit."""
        try:
            super().privilegedStartService()
        except ListenError as e:
            raise SystemExit(f"tunnelgw: {e}") from None


def freeze_startup_heap() -> None:
    """
    What start-up made (modules, the configuration, listeners: some 110,000
    objects) lives as long as the process: collected once and moved out of the
    cyclic collector's reach (:func:`gc.freeze`), so that a full collection
    looks at what sessions made since, not at the whole heap again.  Measured
    under new sessions at 32 at once: full collections took 0.06 s instead of
    0.23 s per 22 CPU-seconds (sessions themselves leave no cyclic garbage:
    docs/benchmarks.rst, "Sessions without reference cycles").  A reload's
    replaced objects that were frozen stay (400 reloads: 56 KB).  Run by
    ``twistd tunnelgw`` once the reactor runs; an application that embeds the
    gateway decides for its own process.
    """
    gc.collect()
    gc.freeze()


def read_options_config(path: Optional[str], reactor: Any = None, without_sockets: bool = False) -> Config:
    """
    The configuration named on the command line, or the embedded default;
    with a reactor, checked as a start would check it (all problems at once).
    """
    if path is None:
        config = parse_config(DEFAULT_CONFIG, "<default>")
        if reactor is not None:
            from tunnelgw.service import check_config

            check_config(config, reactor, without_sockets)
        return config
    return load_config(path, reactor, without_sockets)


#: Seconds ``--check`` waits for each Redis server to accept a connection.
REDIS_CHECK_TIMEOUT = 2.0


def redis_warnings(config: Config, timeout: float = REDIS_CHECK_TIMEOUT) -> list[str]:
    """
    A ``FILE:LINE: warning: ...`` line for each Redis server of config that
    does not accept a TCP connection within timeout seconds (the gateway
    starts without it, degraded, so this is a warning, not a problem).
    """
    import socket

    from tunnelgw.core.config import redis_servers

    warnings = []
    for where, directive, host, port in redis_servers(config):
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            warnings.append(f"{where}: warning: {directive}: Redis at {host}:{port} is not reachable now "
                            f"({e.strerror or e}); the gateway starts without it, degraded")
    return warnings


def check_only(path: Optional[str], reactor: Any) -> None:
    """
    Check a configuration as a start would, short of listening, and exit: 0
    when valid (with warnings, such as an unreachable Redis, on stderr), 1
    with every problem of the file on stderr, in line order.
    """
    import sys

    try:
        config = read_options_config(path, reactor, without_sockets=True)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    for warning in redis_warnings(config):
        print(warning, file=sys.stderr)
    print(f"{config.source}: configuration OK")
    raise SystemExit(0)


def makeService(options: Any) -> IService:
    """
    Make the gateway service; a bad configuration exits with status 1 and one
    ``FILE:LINE: what is wrong`` line per problem on stderr.
    """
    from twisted.internet import reactor

    if options["check"]:
        check_only(options["config"], reactor)
    try:
        gateway = make_service(read_options_config(options["config"], reactor), reactor)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    if options["config"] is not None:
        from tunnelgw.reload import install_reload_signal

        reactor.addSystemEventTrigger("after", "startup",
                                      install_reload_signal, gateway, options["config"], reactor)
    reactor.addSystemEventTrigger("after", "startup",
                                  _install_stop_signals, gateway, reactor)
    reactor.addSystemEventTrigger("after", "startup", freeze_startup_heap)
    top = _CommandLineService()
    top.log_format = gateway.config.log_format
    top.server_options = getattr(options, "parent", None)
    gateway.setServiceParent(top)
    return top
