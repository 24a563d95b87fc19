"""
The admin listener (``AdminListen ENDPOINT``, off by default): health,
Prometheus metrics and the live sessions, for operators only.

- ``GET /healthz``: 200 ``ok``, or 503 ``draining`` once shutdown began.
- ``GET /metrics``: Prometheus text, through prometheus_client's Twisted
  resource over the gateway's own registry.
- ``GET /sessions``: the live sessions as JSON.
- ``POST /sessions/ID/close``: close one (the client gets 1008, the backend EOF).

Nothing else is served: every other path is 404; no file is ever read.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tunnelgw.core.relay import CLOSE_POLICY, Close

__all__ = ["ADMIN_CLOSE", "AdminResource", "admin_site"]

#: The close a session gets when an operator closes it.
ADMIN_CLOSE = Close(CLOSE_POLICY, "closed by the gateway administrator")


def _plain(request: Request, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return (text + "\n").encode("utf-8")


class AdminResource(Resource):
    """
    The admin URL space.

    :param factory: the gateway factory (its ``sessions`` and ``metrics``).
    :param draining: says whether shutdown has begun.
    """

    isLeaf = True

    def __init__(self, factory: Any, draining: Callable[[], bool]) -> None:
        super().__init__()
        self._factory = factory
        self._draining = draining
        from prometheus_client.twisted import MetricsResource

        self._metrics = MetricsResource(registry=factory.metrics.registry)

    def render(self, request: Request) -> Any:
        """Dispatch on the exact path; everything unknown is 404."""
        parts = request.path.split(b"/")[1:]
        method = request.method
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
        if len(parts) == 3 and parts[0] == b"sessions" and parts[2] == b"close":
            if method != b"POST":
                request.setHeader(b"allow", b"POST")
                return _plain(request, 405, "use POST to close a session")
            session = self._factory.sessions.get(parts[1].decode("latin-1"))
            if session is None:
                return _plain(request, 404, "no such live session")
            session.close_session(ADMIN_CLOSE)
            return _plain(request, 200, f"closing session {session.session_id}")
        return _plain(request, 404, "not found (see /healthz, /metrics, /sessions)")


def admin_site(factory: Any, draining: Callable[[], bool]) -> Site:
    """A Site serving :class:`AdminResource`."""
    site = Site(AdminResource(factory, draining), timeout=60)
    site.displayTracebacks = False
    site.noisy = False
    return site
