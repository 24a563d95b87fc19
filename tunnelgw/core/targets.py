"""
Backend targets, typed once when the configuration is read.

A ``ProxyPass``/``ProxyPassMatch`` target is one of four kinds, told apart
here and nowhere else: a Twisted client endpoint string (``tcp:``, ``tls:``,
``unix:`` ...) for a byte-stream desktop service, a ``ws://``/``wss://`` URL
for a service that speaks WebSocket itself, ``balancer://NAME`` for a pool,
or ``replay:FOLDER`` for the recordings in a folder played back as desktops.
The glue picks a backend link by the target's type, never by looking at text.

``$1``..``$9`` in a ``ProxyPassMatch`` target take the groups of the match;
:func:`substitute` fills them in at routing time and checks the result again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

from tunnelgw.core.wsurl import WebSocketTarget, is_websocket_target, parse_websocket_url

__all__ = ["BALANCER", "REPLAY", "SUBSTITUTION", "BackendTarget", "EndpointTarget", "LookupTarget", "PoolTarget", "ReplayTarget",
           "WebSocketURL",
           "parse_target", "substitute"]

#: ``$1``..``$9`` in a ProxyPassMatch target: group N of the match.
SUBSTITUTION = re.compile(r"\$(\d)")
#: The scheme of pool targets, as in Apache's ``balancer://NAME``.
BALANCER = "balancer://"
#: The scheme of replay targets: ``replay:/var/lib/tunnelgw/recordings``.
REPLAY = "replay:"
_POOL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class EndpointTarget:
    """A Twisted client endpoint string: the backend is a byte stream."""

    endpoint: str

    @property
    def text(self) -> str:
        """The target as written (``$N`` filled in once routed)."""
        return self.endpoint


@dataclass(frozen=True)
class WebSocketURL:
    """
    A ``ws://`` or ``wss://`` backend.

    :ivar template: the URL as written, ``$N`` included.
    :ivar url: the checked address; None while the template holds ``$N``.
    """

    template: str
    url: Optional[WebSocketTarget]

    @property
    def text(self) -> str:
        return self.url.url if self.url is not None else self.template

    @property
    def secure(self) -> bool:
        return self.template[:4].lower() == "wss:"


@dataclass(frozen=True)
class PoolTarget:
    """``balancer://NAME``: a member of the named ``<Proxy>`` pool."""

    name: str

    @property
    def text(self) -> str:
        return BALANCER + self.name


@dataclass(frozen=True)
class ReplayTarget:
    """``replay:FOLDER``: ``PATH/ID`` plays the recording of session ID back, as if it were the desktop."""

    folder: str

    @property
    def text(self) -> str:
        return REPLAY + self.folder


@dataclass(frozen=True)
class LookupTarget:
    """A token whose desktop is looked up when the session connects (a Redis token source)."""

    source: str
    token: str = field(repr=False)

    @property
    def text(self) -> str:
        return f"token:{self.source}"


BackendTarget = Union[EndpointTarget, WebSocketURL, PoolTarget, ReplayTarget, LookupTarget]


def parse_target(text: str) -> BackendTarget:
    """
    Type a target as written in a rule.

    :raises ValueError: saying what is wrong with a WebSocket URL (each ``$N``
        standing for ``1`` while it is checked) or a pool name.
    """
    if text[: len(BALANCER)].lower() == BALANCER:
        name = text[len(BALANCER):]
        if not _POOL_NAME.fullmatch(name):
            raise ValueError(f"balancer://NAME takes a plain NAME (letters, digits, '_', '.', '-'), got {text!r}")
        return PoolTarget(name)
    if text.startswith(REPLAY):
        folder = text[len(REPLAY):]
        if not folder.startswith("/") or SUBSTITUTION.search(folder) or not folder.isprintable():
            raise ValueError(f"replay: takes an absolute folder of recordings (no $N), got {text!r}")
        return ReplayTarget(folder.rstrip("/") or "/")
    if is_websocket_target(text):
        try:
            url = parse_websocket_url(SUBSTITUTION.sub("1", text))
        except ValueError as e:
            raise ValueError(f"bad WebSocket backend URL {text!r}: {e}") from None
        return WebSocketURL(text, None if SUBSTITUTION.search(text) else url)
    return EndpointTarget(text)


def substitute(target: BackendTarget, groups: Mapping[str, str]) -> Union[BackendTarget, str]:
    """
    Fill ``$N`` with the groups of a match (N as text -> value).

    :returns: the routed target, or a reason when the result is no valid
        address (a WebSocket URL that a value broke).
    """
    if isinstance(target, EndpointTarget):
        return EndpointTarget(SUBSTITUTION.sub(lambda m: groups[m.group(1)], target.endpoint))
    if isinstance(target, WebSocketURL) and target.url is None:
        try:
            url = parse_websocket_url(SUBSTITUTION.sub(lambda m: groups[m.group(1)], target.template))
        except ValueError as e:
            return f"the path gives no valid backend address: {e}"
        return WebSocketURL(target.template, url)
    return target
