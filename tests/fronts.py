"""
Real front proxies for the tests: nginx, Apache httpd and HAProxy from
Debian, each run in the foreground as a child process with a configuration
generated in a temporary folder, started within a bound and killed at exit.

:func:`nginx_main` and :func:`apache_main` write the server-wide part of a
configuration (pid, logs, temporary folders, modules) around the part a test
cares about; :class:`FrontProcess` runs the server.  The topology tests use
the ready-made :func:`nginx_config`, :func:`apache_config`,
:func:`haproxy_config`; the browser tests (tests/desktops.py) wrap the
documented recipes of examples/front-proxies/ with the same two builders.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Optional

from support import free_port, require_tool, stop_process, wait_until

__all__ = ["APACHE_MODULES", "FrontProcess", "apache_config", "apache_main", "free_port", "haproxy_config",
           "nginx_config", "nginx_main"]

APACHE_MODULES = Path("/usr/lib/apache2/modules")


def _accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class FrontProcess:
    """One front proxy process listening on host:port."""

    def __init__(self, argv: list[str], host: str, port: int, log: Path) -> None:
        self.argv, self.host, self.port, self.log_path = argv, host, port, log
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self, timeout: float = 15.0) -> "FrontProcess":
        """Start and wait until the listening port accepts connections."""
        self._log = open(self.log_path, "wb")
        proc = self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT)
        if not wait_until(lambda: proc.poll() is not None or _accepting(self.host, self.port), timeout) \
                or proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"{self.argv[0]} did not start:\n{self.log()}")
        return self

    def log(self) -> str:
        """What the process wrote to its console."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Terminate (then kill) the process."""
        stop_process(self.proc)
        if self.proc is not None:
            self._log.close()

    def __enter__(self) -> "FrontProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def nginx_main(tmp: Path, http: str, master_process: bool = False) -> Path:
    """Write nginx.conf in tmp: pid, logs and temporary folders there, then the http-context text."""
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process {'on' if master_process else 'off'};
worker_processes 1;
{'user root root;' if master_process else ''}
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {tmp}/nginx-access.log;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
{http}
}}
""")
    return conf


def nginx_process(tmp: Path, conf: Path, host: str, port: int) -> FrontProcess:
    """nginx in the foreground with tmp as its prefix."""
    return FrontProcess([require_tool("nginx"), "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log")],
                        host, port, tmp / "nginx.out")


def nginx_config(tmp: Path, listen: str, upstream: str) -> FrontProcess:
    """nginx proxying WebSocket upgrades to upstream (host:port), setting X-Forwarded-For."""
    host, port = listen.rsplit(":", 1)
    conf = nginx_main(tmp, f"""
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen {listen};
    location / {{
      proxy_pass http://{upstream};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_read_timeout 1h;
    }}
  }}
""")
    return nginx_process(tmp, conf, host, int(port))


def apache_main(tmp: Path, site: str, modules: tuple[str, ...], server_name: str = "localhost") -> Path:
    """Write httpd.conf in tmp: pid, logs, runtime files there, the modules loaded, then the site text."""
    loads = "\n".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in modules)
    conf = tmp / "httpd.conf"
    conf.write_text(f"""
ServerRoot {tmp}
ServerName {server_name}
PidFile {tmp}/httpd.pid
DefaultRuntimeDir {tmp}
Mutex file:{tmp} default
ErrorLog {tmp}/httpd-error.log
LogLevel warn proxy:info
User www-data
Group www-data
{loads}
{site}
""")
    return conf


def apache_process(tmp: Path, conf: Path, host: str, port: int) -> FrontProcess:
    """Apache httpd (Debian's apache2 binary) in the foreground."""
    return FrontProcess([require_tool("/usr/sbin/apache2"), "-f", str(conf), "-DFOREGROUND"], host, port,
                        tmp / "httpd.out")


def apache_config(tmp: Path, listen: str, upstream: str, path: str) -> FrontProcess:
    """Apache httpd with mod_proxy_wstunnel relaying path to ws://upstream/path (adds X-Forwarded-For)."""
    host, port = listen.rsplit(":", 1)
    conf = apache_main(tmp, f"""
Listen {listen}
ProxyRequests Off
ProxyPass {path} ws://{upstream}{path}
""", ("mpm_event", "authz_core", "proxy", "proxy_http", "proxy_wstunnel"), server_name=host)
    return apache_process(tmp, conf, host, int(port))


def haproxy_config(tmp: Path, listen: str, servers: list[tuple[str, str, str]], balance: str) -> FrontProcess:
    """
    HAProxy in TCP mode spreading connections over servers [(name, host:port)]
    by ``balance`` (``source``, ``roundrobin``); the third item holds server
    options such as ``send-proxy`` or ``send-proxy-v2`` (PROXY protocol v1/v2).
    """
    binary = require_tool("haproxy")
    host, port = listen.rsplit(":", 1)
    lines = "\n".join(f"  server {name} {address} {options}" for name, address, options in servers)
    conf = tmp / "haproxy.cfg"
    conf.write_text(f"""
global
  maxconn 256
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend front
  bind {listen}
  default_backend gateways
backend gateways
  balance {balance}
{lines}
""")
    return FrontProcess([binary, "-db", "-f", str(conf)], host, int(port), tmp / "haproxy.out")
