"""
The admin listener (``AdminListen ENDPOINT``, off by default): health,
Prometheus metrics and the live sessions, for operators only.

- ``GET /``: the operator's page: traffic per route and per gateway of the
  pool, refusals of the last hour, Redis and portal health, recordings that
  stopped (:mod:`tunnelgw.overview`), then the live sessions, the slowest
  round trip first, with a close button each (see
  :mod:`tunnelgw.core.adminpage` for its guard against other sites).
- ``GET /healthz``: 200 ``ok``, or 503 ``draining`` once shutdown began.
- ``GET /metrics``: Prometheus text, through prometheus_client's Twisted
  resource over the gateway's own registry.
- ``GET /sessions``: the live sessions as JSON.
- ``POST /sessions/ID/close``: close one (the client gets 1008, the backend EOF);
  from the page's form the answer is a 303 back to the page.
- ``GET /redis``: each Redis the gateway asks (the pool, token sources, the
  owner source) as JSON: up or failing fast, since when, why (see
  :func:`redis_health`); the page names the ones that are down.

Nothing else is served: every other path is 404; no file is ever read.
A request whose ``Host`` is not the listener's own address (the address the
connection reached, or ``localhost`` on loopback) is refused 403 before
anything else, so that a web page using DNS rebinding cannot read
``/sessions`` or close a session from an operator's browser.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict
from typing import Any, Callable, Optional

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tunnelgw.core.breaker import BreakerState
from tunnelgw.core.hostpattern import listener_is_local
from tunnelgw.core.relay import CLOSE_POLICY, Close
from tunnelgw.logs import format_fields
from tunnelgw.overview import OverviewSource
from tunnelgw.recording import newest_recordings
from tunnelgw.core.adminpage import PAGE_HEADERS, csrf_refusal, render_page
from tunnelgw.core.clientaddr import format_address
from tunnelgw.core.redact import printable
from tunnelgw.core.routing import Reject
from tunnelgw.session import log_refusal

__all__ = ["ADMIN_CLOSE", "AdminResource", "AdminSite", "admin_site", "is_own_host", "redis_health", "redis_notice"]


# The Redis state the operator's page and ``GET /redis`` read (kept apart from the page's own rendering).

def redis_health(factory: Any) -> list[BreakerState]:
    """The state of every Redis store the gateway uses: the pool's, then the topology's."""
    states = [factory.pool.store.state()] if factory.pool is not None else []
    if factory.topology is not None:
        states.extend(factory.topology.redis_states())
    return states


def redis_notice(states: list[BreakerState], now: float) -> str:
    """One line for the page naming each Redis store that is down ("" when all are up)."""
    down = [f"{s.name} ({s.where}) unreachable for {max(0.0, now - s.since):.0f} s, {s.failed_fast} call(s) "
            f"failed fast: {s.error}" for s in states if not s.up]
    return ("Redis: " + "; ".join(down)) if down else ""

_log = Logger(namespace="tunnelgw")
#: Bytes of a close request's form body read (the page's form sends about 40).
_MAX_FORM = 4096

#: The close a session gets when an operator closes it.
ADMIN_CLOSE = Close(CLOSE_POLICY, "closed by the gateway administrator")


def is_own_host(host: Optional[bytes], local: Any) -> bool:
    """
    Whether a request's Host names the admin listener itself: the local
    address the connection reached (``ip:port``, ``[v6]:port``; the port may
    be left out only when it is 80), or ``localhost`` when that address is
    loopback.  Any Host passes on a UNIX socket (no browser reaches one).
    """
    ip, port = getattr(local, "host", None), getattr(local, "port", None)
    if ip is None:
        return True
    if host is None:
        return False
    try:
        loopback = ipaddress.ip_address(ip).is_loopback
    except ValueError:
        loopback = False
    names = {f"[{ip}]" if ":" in ip else ip} | ({"localhost"} if loopback else set())
    allowed = {f"{name}:{port}" for name in names} | (names if port == 80 else set())
    return host.decode("latin-1").strip().lower() in allowed


def _plain(request: Request, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return (text + "\n").encode("utf-8")


def _back_to_page(request: Request, session_id: str) -> bytes:
    """The answer to the page's close form: 303 back to the page, which says what it did."""
    request.setResponseCode(303)
    request.setHeader(b"location", b"/?closed=" + session_id.encode("latin-1"))
    return b""


class AdminResource(Resource):
    """
    The admin URL space.

    :param factory: the gateway factory (its ``sessions`` and ``metrics``).
    :param draining: says whether shutdown has begun.
    """

    isLeaf = True

    def __init__(self, factory: Any, draining: Callable[[], bool], overview: Optional[OverviewSource] = None) -> None:
        super().__init__()
        self._factory = factory
        self._draining = draining
        self._overview = overview
        self._secret = os.urandom(32)
        from prometheus_client.twisted import MetricsResource

        self._metrics = MetricsResource(registry=factory.metrics.registry)

    def _refuse(self, request: Request, reason: str) -> bytes:
        """A 403 with its one refusal line and audit event (the path redacted, no query): another site's doing."""
        path = printable(self._factory.redact(request.path.decode("latin-1")))
        log_refusal(format_address(request.getClientAddress()), path, Reject(403, reason), "admin")
        return _plain(request, 403, reason)

    def render(self, request: Request) -> Any:
        """Dispatch on the exact path; everything unknown is 404, a foreign Host 403."""
        if not is_own_host(request.getHeader(b"host"), request.getHost()):
            return self._refuse(request, "Host is not this admin listener's address")
        parts = request.path.split(b"/")[1:]
        method = request.method
        if parts == [b""] and method in (b"GET", b"HEAD"):
            return self._page(request)
        if parts == [b"healthz"] and method in (b"GET", b"HEAD"):
            return _plain(request, 503, "draining") if self._draining() else _plain(request, 200, "ok")
        if parts == [b"metrics"] and method in (b"GET", b"HEAD"):
            request.postpath = []
            return self._metrics.render(request)
        if parts == [b"sessions"] and method in (b"GET", b"HEAD"):
            sessions = [s.describe() for s in list(self._factory.sessions.values())]
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            return json.dumps({"sessions": sessions}).encode("utf-8") + b"\n"
        if parts[:2] == [b"pool", b"sessions"]:
            return self._pool(request, parts[2:])
        if parts == [b"redis"] and method in (b"GET", b"HEAD"):
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            return json.dumps({"redis": [asdict(s) for s in redis_health(self._factory)]}).encode("utf-8") + b"\n"
        if len(parts) == 3 and parts[0] == b"sessions" and parts[2] == b"close":
            if method != b"POST":
                request.setHeader(b"allow", b"POST")
                return _plain(request, 405, "use POST to close a session")
            session_id = parts[1].decode("latin-1")
            body, refused = self._guard(request, session_id)
            if refused is not None:
                return self._refuse(request, refused)
            # A session of a desktop closes with every channel of that desktop (the id may be the desktop's).
            live = [(s, s.describe()) for s in list(self._factory.sessions.values())]
            chosen = next((d for _, d in live if d["session"] == session_id), None)
            desktop = chosen.get("desktop") if chosen is not None else session_id
            closing = [(s, d) for s, d in live if d["session"] == session_id or (desktop and d.get("desktop") == desktop)]
            if not closing:
                return _plain(request, 404, "no such live session")
            for session, described in closing:
                fields = {"session": described["session"], "client": described["client"], "route": described["route"],
                          "path": described["path"], "desktop": described.get("desktop"),
                          "admin": format_address(request.getClientAddress())}
                _log.info("admin close {details}", details=format_fields({k: v for k, v in fields.items() if v}),
                          fields=fields, audit="admin.close")
                session.close_session(ADMIN_CLOSE)
            if "csrf=" in body.decode("latin-1"):  # the page's form: back to the page
                return _back_to_page(request, session_id)
            return _plain(request, 200, "closing session " + ", ".join(d["session"] for _, d in closing))
        return _plain(request, 404, "not found (see /, /healthz, /metrics, /sessions)")

    def _pool(self, request: Request, rest: list[bytes]) -> Any:
        """``GET /pool/sessions`` and ``POST /pool/sessions/ID/close``, answered when Redis has."""
        pool = self._factory.pool
        if pool is None:
            return _plain(request, 404, "no Pool is configured")
        if rest == [] and request.method in (b"GET", b"HEAD"):
            d = pool.list_sessions()

            def listed(sessions: list[dict[str, Any]]) -> None:
                request.setHeader(b"content-type", b"application/json")
                request.setHeader(b"cache-control", b"no-store")
                request.write(json.dumps({"sessions": sessions}).encode("utf-8") + b"\n")
        elif len(rest) == 2 and rest[1] == b"close" and request.method == b"POST":
            session_id = rest[0].decode("latin-1")
            body, refused = self._guard(request, session_id)
            if refused is not None:
                return self._refuse(request, refused)
            d = pool.request_close(session_id)
            _log.info("admin close session={session} (through the pool) admin={admin}", session=session_id,
                      admin=format_address(request.getClientAddress()),
                      fields={"session": session_id, "admin": format_address(request.getClientAddress())},
                      audit="admin.close")

            def listed(found: bool) -> None:  # type: ignore[misc]
                if found and "csrf=" in body.decode("latin-1"):
                    request.write(_back_to_page(request, session_id))
                else:
                    request.write(_plain(request, 202, f"closing session {session_id}") if found
                                  else _plain(request, 404, "no such session in the pool"))
        else:
            return _plain(request, 405 if rest else 404, "GET /pool/sessions or POST /pool/sessions/ID/close")

        def failed(failure: Any) -> None:
            request.write(_plain(request, 503, f"the pool registry is unavailable: {failure.value}"))

        d.addCallbacks(listed, failed)
        d.addBoth(lambda _: request.finish() if not request.finished and not request._disconnected else None)
        return NOT_DONE_YET

    def _guard(self, request: Request, session_id: str) -> tuple[bytes, Optional[str]]:
        """A close request's form body, and why it must be refused when it is a forgery."""
        headers = {k.decode("latin-1").lower(): v[-1].decode("latin-1")
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        scheme = "https" if request.isSecure() else "http"
        body = request.content.read(_MAX_FORM) if request.content is not None else b""
        return body, csrf_refusal(self._secret, session_id, headers, body, [f"{scheme}://{headers.get('host', '')}"])

    def _page(self, request: Request) -> Any:
        """The operator's page: this gateway's sessions, or the pool's when a Pool is configured."""
        args: dict[bytes, list[bytes]] = request.args or {}
        closed = args.get(b"closed", [b""])[0].decode("latin-1")
        local = [s.describe() for s in list(self._factory.sessions.values())]
        for name, value in PAGE_HEADERS:
            request.setHeader(name.encode(), value.encode())
        notice = "; ".join(n for n in (f"closing session {closed}" if closed else "",
                                       redis_notice(redis_health(self._factory), self._factory.reactor.seconds())) if n)
        spec = self._factory.config.recording
        recordings = newest_recordings(spec.folder) if spec is not None else []
        viewer = spec.viewer if spec is not None else ""
        pool = self._factory.pool

        def render(sessions: list[dict[str, Any]], pooled: Optional[list[dict[str, Any]]], note: str,
                   pool_name: str = "") -> str:
            overview, rates = (self._overview.overview(local, pooled) if self._overview is not None else (None, {}))
            return render_page(sessions, self._secret, self._draining(), note, recordings, viewer, pool_name,
                               overview, rates)

        if pool is None:
            return render(local, None, notice).encode("utf-8")

        def listed(sessions: list[dict[str, Any]]) -> str:
            # This gateway's own sessions as they are now (bytes, measured round trip), not as last written.
            here = {str(s["session"]): s | {"gateway": pool.spec.name} for s in local}
            sessions = [here.get(str(s.get("session")), s) if s.get("gateway") == pool.spec.name else s
                        for s in sessions]
            return render(sessions, sessions, notice, pool.spec.name)

        def unavailable(failure: Any) -> str:
            return render([s | {"gateway": pool.spec.name} for s in local], None,
                          (notice + "; " if notice else "") + "the pool list is unavailable (Redis): "
                          "this gateway's sessions only", pool.spec.name)

        d = pool.list_sessions()
        d.addCallbacks(listed, unavailable)
        d.addCallback(lambda page: request.write(page.encode("utf-8")))
        d.addBoth(lambda _: request.finish() if not request.finished and not request._disconnected else None)
        return NOT_DONE_YET


class AdminSite(Site):
    """
    The admin listener's Site: no access line per request (a Prometheus
    scrape every few seconds would fill the log, and twisted.web's line
    names the raw URI); refusals are logged by :class:`AdminResource`.
    """

    def log(self, request: Any) -> None:
        """twisted.web's access-log call: nothing to write."""


def admin_site(factory: Any, draining: Callable[[], bool], endpoint: str = "",
               overview: Optional[OverviewSource] = None) -> Site:
    """A Site serving :class:`AdminResource` on endpoint; a warning when other hosts can reach it."""
    if endpoint and not listener_is_local(endpoint):
        _log.warn("AdminListen {endpoint} serves the session list and close to the network (written 'public')",
                  endpoint=endpoint)
    site = AdminSite(AdminResource(factory, draining, overview), timeout=60)
    site.displayTracebacks = False
    site.noisy = False
    return site
