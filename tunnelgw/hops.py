"""
Glue for pool hops (:mod:`tunnelgw.core.hop`): signing the hops this gateway
relays, checking the ones it receives, and remembering their nonces for
their validity window, in the pool's Redis when there is a ``Pool`` (so that a
hop replayed to any gateway of the pool is refused), in memory otherwise.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, cast

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from tunnelgw.backends import BackendLink, BackendRefused, WrappedLink
from tunnelgw.core.hop import Hop, HopNonces, check_hop, hop_value
from tunnelgw.core.routing import Reject
from tunnelgw.core.tlsconfig import ClientCertificate

__all__ = ["HOP_REFUSED", "HopNonceLink", "RelayHops", "certificate_of"]

_log = Logger(namespace="tunnelgw")
#: The answer to a hop that is forged, stale, for another owner, or replayed.
HOP_REFUSED = Reject(403, "not a valid hop from a gateway of this pool")


class RelayHops:
    """
    One gateway's hops, both ways.

    :param pool: the pool registry (nonces in its Redis), or a callable giving None (nonces in memory).
    :param random: bytes for nonces (tests pass a fixed source).
    """

    def __init__(self, reactor: IReactorTime, pool: Callable[[], Any], random: Callable[[int], bytes] = os.urandom) -> None:
        self._reactor = reactor
        self._pool = pool
        self._random = random
        self._nonces = HopNonces()

    def sign(self, secret: bytes, relayer: str, client: str, certificate: Optional[ClientCertificate], owner: str,
             uri: str) -> str:
        """The hop header value for client's request of uri, relayed by relayer (our GatewayURL) to owner."""
        hop = Hop(int(self._reactor.seconds()), self._random(16).hex(), relayer, client,
                  certificate.common_name if certificate is not None else "",
                  certificate.names if certificate is not None else ())
        return hop_value(secret, hop, owner, uri)

    def check(self, secrets: tuple[bytes, ...], value: str, owner: str, uri: str) -> Optional[Hop]:
        """The hop a header names, or None; its nonce is checked when the session connects (:meth:`guard`)."""
        if not secrets or not owner:
            return None
        return check_hop(secrets, value, owner, uri, self._reactor.seconds())

    def first_use(self, hop: Hop) -> "defer.Deferred[bool]":
        """Whether hop's nonce is new in the pool (Redis) or on this gateway (memory)."""
        pool = self._pool()
        if pool is not None:
            first: defer.Deferred[bool] = pool.first_hop(hop.relayer, hop.nonce, hop.when)
            return first
        return defer.succeed(self._nonces.first_use(hop, self._reactor.seconds()))

    def guard(self, link: BackendLink, hop: Hop) -> BackendLink:
        """link, opened only when hop's nonce is new."""
        return HopNonceLink(link, self, hop)


def certificate_of(hop: Hop) -> Optional[ClientCertificate]:
    """The client certificate a hop names (verified by the relaying gateway), or None."""
    return ClientCertificate(hop.certificate_cn, hop.certificate_names) if hop.has_certificate else None


class HopNonceLink(WrappedLink):
    """A link that opens only for a hop seen the first time: 403 for a replay, 503 when Redis cannot say."""

    def __init__(self, inner: BackendLink, hops: RelayHops, hop: Hop) -> None:
        super().__init__(inner)
        self._hops = hops
        self._hop = hop

    def connect(self) -> "defer.Deferred[Optional[str]]":
        hop = self._hop

        def seen(first: bool) -> Any:
            if not first:
                _log.info("hop refused relayer={relayer} client={client} detail='replayed hop (nonce seen before)'",
                          relayer=hop.relayer, client=hop.client)
                raise BackendRefused(HOP_REFUSED, "hop")
            return self._inner.connect()

        def unavailable(failure: Any) -> None:
            raise BackendRefused(Reject(503, "hop check unavailable", str(failure.value)), "hop")

        return cast("defer.Deferred[Optional[str]]", self._hops.first_use(hop).addCallbacks(seen, unavailable))
