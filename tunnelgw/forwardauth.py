"""
Forward authentication, the glue: one :class:`Portal` per ``AuthPortal``
asks with twisted.web's Agent (bounded by the portal's ``timeout=``, the
body read and dropped), and :class:`ForwardAuthLink` puts that question in
front of a route's backend link.  Semantics in :mod:`tunnelgw.core.forwardauth`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

from prometheus_client import CollectorRegistry, Counter, Histogram
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory, readBody
from twisted.web.http_headers import Headers

from tunnelgw.backends import BackendLink, BackendRefused, WrappedLink
from tunnelgw.core.config import AuthPortal
from tunnelgw.core.forwardauth import Admit, AnswerCache, portal_headers, read_answer
from tunnelgw.core.routing import Reject

__all__ = ["ForwardAuthLink", "Portal", "Portals"]

_log = Logger(namespace="tunnelgw")
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False


class Portals:
    """The portals of a configuration, with their metrics (kept across reloads)."""

    def __init__(self, reactor: Any, registry: CollectorRegistry) -> None:
        self._reactor = reactor
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool._factory = _QuietClientFactory  # no "Starting factory" line per portal connection
        self._agent = Agent(reactor, connectTimeout=5, pool=pool)
        self.seconds = Histogram("tunnelgw_auth_seconds", "Time the forward-auth portal took to answer", ["portal"],
                                 buckets=_BUCKETS, registry=registry)
        self.answers = Counter("tunnelgw_auth_answers", "Forward-auth answers by kind", ["portal", "answer"],
                               registry=registry)
        self.portals: dict[str, Portal] = {}

    def reconfigure(self, specs: tuple[AuthPortal, ...]) -> None:
        """New portals for new sessions; an unchanged one keeps its cache."""
        old = self.portals
        self.portals = {s.name: old[s.name] if s.name in old and old[s.name].spec == s else Portal(self, s)
                        for s in specs}


class Portal:
    """One portal: asks, times, counts and caches admissions."""

    def __init__(self, portals: Portals, spec: AuthPortal) -> None:
        self._portals = portals
        self.spec = spec
        self._cache = AnswerCache(spec.cache)

    def ask(self, client: str, uri: str, headers: dict[str, str]) -> "defer.Deferred[Union[Admit, Reject]]":
        """The portal's decision for a handshake (client headers by lower-cased name)."""
        reactor = self._portals._reactor
        sent = portal_headers(client, uri, headers)
        key = tuple(f"{k}={v}" for k, v in sorted(sent.items()))
        cached = self._cache.get(key, reactor.seconds())
        if cached is not None:
            self._portals.answers.labels(self.spec.name, "cached").inc()
            return defer.succeed(cached)
        started = reactor.seconds()
        request: Any = self._portals._agent.request(
            b"GET", self.spec.url.encode("ascii"),
            Headers({k.encode("latin-1"): [v.encode("latin-1")] for k, v in sent.items()}))

        def answered(response: Any) -> Any:
            found = {k.decode("latin-1").lower(): v[-1].decode("latin-1")
                     for k, v in response.headers.getAllRawHeaders()}
            body = readBody(response)  # read and dropped, so the connection is released
            body.addErrback(lambda _: None)
            return body.addCallback(lambda _: read_answer(response.code, found, self.spec.allow))

        def unreachable(failure: Any) -> Reject:
            return Reject(503, "the portal cannot decide now", f"portal {self.spec.url}: {failure.value}"[:200])

        def timed_out(result: Any, seconds: float) -> Reject:
            return Reject(503, "the portal cannot decide now", f"portal {self.spec.url}: timed out after {seconds:g} s")

        def decided(answer: Union[Admit, Reject]) -> Union[Admit, Reject]:
            self._portals.seconds.labels(self.spec.name).observe(reactor.seconds() - started)
            kind = "admit" if isinstance(answer, Admit) else str(answer.status)
            self._portals.answers.labels(self.spec.name, kind).inc()
            if isinstance(answer, Admit):
                self._cache.put(key, answer, reactor.seconds())
            elif answer.detail:
                _log.info("forward auth refused client={client} portal={portal} status={status} detail={detail!r}",
                          client=client, portal=self.spec.name, status=answer.status, detail=answer.detail)
            return answer

        request.addCallback(answered)
        request.addTimeout(self.spec.timeout, reactor, onTimeoutCancel=timed_out)
        return request.addErrback(unreachable).addCallback(decided)


class ForwardAuthLink(WrappedLink):
    """
    A link that opens once the route's portal admits the handshake.

    :param retarget: makes the link to a desktop the portal named (an endpoint string).
    :param named_user: called with the user the portal named.
    """

    def __init__(self, inner: BackendLink, portal: Portal, client: str, uri: str, headers: dict[str, str],
                 retarget: Callable[[str], BackendLink]) -> None:
        super().__init__(inner)
        self._portal = portal
        self._client = client
        self._uri = uri
        self._headers = headers
        self._retarget = retarget
        self.named_user: Optional[Callable[[str], None]] = None
        self._handshake: Any = None

    def check(self, handshake: Any) -> Optional[Reject]:
        self._handshake = handshake
        return self._inner.check(handshake)

    def connect(self) -> "defer.Deferred[Optional[str]]":
        def decided(answer: Union[Admit, Reject]) -> Any:
            if isinstance(answer, Reject):
                raise BackendRefused(Reject(answer.status, answer.reason), "auth")
            if answer.user and self.named_user is not None:
                self.named_user(answer.user)
            if answer.target is not None:
                self._inner.close()
                self._inner = self._retarget(answer.target.endpoint)
                refused = self._inner.check(self._handshake)
                if refused is not None:
                    raise BackendRefused(refused, "subprotocol")
            return self._inner.connect()

        return self._portal.ask(self._client, self._uri, self._headers).addCallback(decided)
