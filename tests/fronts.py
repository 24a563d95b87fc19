"""
Real front proxies for topology tests: nginx, Apache httpd and HAProxy from
Debian, each run in the foreground as a child process with a configuration
generated in a temporary folder, started within a bound and killed at exit.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Optional

from support import require_tool, wait_until

__all__ = ["FrontProcess", "apache_config", "free_port", "haproxy_config", "nginx_config"]


def free_port(host: str) -> int:
    """A port free on host right now (distinct loopback addresses make reuse races unlikely)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None:
            self._log.close()

    def __enter__(self) -> "FrontProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def nginx_config(tmp: Path, listen: str, upstream: str) -> FrontProcess:
    """nginx proxying WebSocket upgrades to upstream (host:port), setting X-Forwarded-For."""
    binary = require_tool("nginx")
    host, port = listen.rsplit(":", 1)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
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
}}
""")
    return FrontProcess([binary, "-p", str(tmp), "-c", str(conf)], host, int(port), tmp / "nginx.out")


def apache_config(tmp: Path, listen: str, upstream: str, path: str) -> FrontProcess:
    """Apache httpd with mod_proxy_wstunnel relaying path to ws://upstream/path (adds X-Forwarded-For)."""
    binary = require_tool("apache2")
    host, port = listen.rsplit(":", 1)
    modules = "/usr/lib/apache2/modules"
    conf = tmp / "httpd.conf"
    conf.write_text(f"""
ServerRoot {tmp}
ServerName {host}
Listen {listen}
PidFile {tmp}/httpd.pid
ErrorLog {tmp}/httpd-error.log
LogLevel warn proxy:info
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule proxy_module {modules}/mod_proxy.so
LoadModule proxy_http_module {modules}/mod_proxy_http.so
LoadModule proxy_wstunnel_module {modules}/mod_proxy_wstunnel.so
User www-data
Group www-data
ProxyRequests Off
ProxyPass {path} ws://{upstream}{path}
""")
    return FrontProcess([binary, "-X", "-f", str(conf)], host, int(port), tmp / "httpd.out")


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
