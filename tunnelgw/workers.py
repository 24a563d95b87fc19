"""
Run N tunnelgw worker processes on the same listening sockets, one per core:
``python -m tunnelgw.workers -n N --config FILE``.

The parent binds every ``Listen`` and ``DemoBackend`` endpoint of the
configuration (parsed by Twisted, so ``tcp:`` and ``unix:`` strings work as
in a single process), never accepts on them, and starts N ``twistd -n
tunnelgw`` children.  Each child inherits all the sockets the way systemd
hands them over (``LISTEN_FDS``, ``LISTEN_FDNAMES``, ``LISTEN_PID``) and reads
a copy of the configuration in which each of those lines says
``systemd:domain=...:name=lineN`` instead, so that line numbers in messages
stay true.  The kernel gives each new connection to one of the children.

The parent forwards SIGTERM/SIGINT to the children and waits for them; if a
child exits on its own, the others are stopped and the parent exits with
status 1, so that the service manager restarts the whole group.

An ``ssl:`` listener's plain ``tcp:`` socket is what the parent binds; each
worker puts TLS on it from the configuration file (and loads the
certificates again on SIGHUP, which the parent forwards to every worker).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from tunnelgw.core.config import Config, ConfigError, Location, Problem
from tunnelgw.service import INHERITED_ENV

__all__ = ["InheritedSocket", "main", "plan_sockets", "run_workers"]

_FIRST_FD = 3  # systemd's SD_LISTEN_FDS_START
_CHILD = ("import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); "
          "from twisted.scripts.twistd import run; sys.exit(run())")


@dataclass(frozen=True)
class InheritedSocket:
    """A configuration line whose server endpoint the parent binds and the children adopt."""

    where: Location
    endpoint: str

    @property
    def name(self) -> str:
        """The descriptor's name in ``LISTEN_FDNAMES``."""
        return f"line{self.where.line}"


def plan_sockets(config: Config) -> list[InheritedSocket]:
    """
    The server endpoints the parent must bind, in configuration order.

    :raises ConfigError: for endpoints that cannot be handed to workers (``haproxy:``, ``systemd:``).
    """
    plan = [InheritedSocket(l.where, l.tls.stream if l.tls is not None else l.endpoint) for l in config.listeners]
    plan += [InheritedSocket(d.where, d.endpoint) for d in config.demo_backends]
    plan.sort(key=lambda s: s.where.line)
    problems = [Problem(s.where, f"{s.endpoint.split(':')[0]}: listeners cannot be shared by workers; "
                                 "use tcp: (TLS in front) or a single process")
                for s in plan if s.endpoint.split(":")[0].lower() in ("tls", "haproxy", "systemd")]
    if problems:
        raise ConfigError(problems)
    return plan


def _bind(sockets: Sequence[InheritedSocket], reactor: Any) -> list[socket.socket]:
    """Bind every planned endpoint through Twisted's parsers; return duplicates of the sockets."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory

    bound = []
    for s in sockets:
        results: list[Any] = []
        serverFromString(reactor, s.endpoint).listen(Factory()).addBoth(results.append)
        port = results[0]
        if not hasattr(port, "fileno"):
            raise SystemExit(f"tunnelgw.workers: {s.where}: cannot listen on {s.endpoint!r}: {port.getErrorMessage()}")
        # The parent never accepts: it only keeps the socket for the children.
        port.stopReading()
        bound.append(socket.socket(fileno=os.dup(port.fileno())))
        host = port.getHost()
        print(f"{s.where}: listening on {s.endpoint} ({host}) for the workers", flush=True)
    return bound


def _domain(sock: socket.socket) -> str:
    return {socket.AF_INET: "INET", socket.AF_INET6: "INET6", socket.AF_UNIX: "UNIX"}[sock.family]


def run_workers(config_path: str, count: int, twistd_args: Sequence[str] = ()) -> int:
    """Bind, start count workers, supervise them until a signal or a worker's exit; return the exit status."""
    from twisted.internet import reactor

    from tunnelgw.service import load_config

    try:
        config = load_config(config_path, reactor)  # every problem at once, as a single gateway's start
        plan = plan_sockets(config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    bound = _bind(plan, reactor)
    # Each worker reads the real file (also on SIGHUP) and is told which
    # inherited socket stands for which endpoint.
    inherited = {str(s.where.line): f"systemd:domain={_domain(sock)}:name={s.name}" for s, sock in zip(plan, bound)}
    fds = [s.fileno() for s in bound]
    env = dict(os.environ, LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=":".join(s.name for s in plan),
               **{INHERITED_ENV: json.dumps(inherited)})

    def place_fds() -> None:
        # In the child, before exec: move the sockets to 3, 4, ... as systemd does.
        high = [os.dup(fd) for fd in fds]
        for i, fd in enumerate(high):
            os.dup2(fd, _FIRST_FD + i)

    command = [sys.executable, "-c", _CHILD, "-n", "--pidfile=", *twistd_args, "tunnelgw", "--config",
               str(Path(config_path).resolve())]
    children = [subprocess.Popen(command, env=env, preexec_fn=place_fds,
                                 pass_fds=range(_FIRST_FD, _FIRST_FD + len(fds))) for _ in range(count)]
    stopping: list[int] = []

    def stop(signum: int, _: Any) -> None:
        stopping.append(signum)

    def reload(signum: int, _: Any) -> None:
        # Every worker re-reads the configuration file; the parent lives on.
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGHUP)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    signal.signal(signal.SIGHUP, reload)
    status = 0
    try:
        while not stopping:
            if any(c.poll() is not None for c in children):
                print("tunnelgw.workers: a worker exited; stopping the others", file=sys.stderr, flush=True)
                status = 1
                break
            time.sleep(0.2)
    finally:
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for c in children:
            try:
                c.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait(5)
        for s in bound:
            s.close()
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``-n N --config FILE [-- twistd options]``."""
    parser = argparse.ArgumentParser(prog="python -m tunnelgw.workers", description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("-n", "--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    parser.add_argument("-c", "--config", required=True, help="tunnelgw configuration file")
    parser.add_argument("twistd_args", nargs="*", help="extra twistd options for each worker (after --)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return run_workers(args.config, args.workers, args.twistd_args)


if __name__ == "__main__":
    sys.exit(main())
