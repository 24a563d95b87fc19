"""
Choose a route for a request path, or refuse it with an HTTP status.

Pure functions over values.  Order of choice: the ``ProxyPass`` rule with the
longest matching path prefix (segment-aware: ``/vnc`` matches ``/vnc`` and
``/vnc/x`` but not ``/vncx``), else the first ``ProxyPassMatch`` rule in file
order whose expression is found in the path.  Paths are normalised first
(percent-decoding, merged slashes, dot segments removed), so ``/a/../vnc`` and
``/vnc`` reach the same rule and nothing escapes the root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from tunnelgw.core.config import Config, PatternRule, PrefixRule, RouteOptions
from tunnelgw.core.hostpattern import substituted_host_problem, target_host
from tunnelgw.core.targets import SUBSTITUTION, BackendTarget, substitute

__all__ = ["NO_ROUTE", "Reject", "Route", "RuleSet", "choose_route", "normalise_path"]


@dataclass(frozen=True, slots=True)
class Route:
    """
    The outcome of routing: where to connect and with which options.

    :ivar rule: the rule that matched (a ``TokenRoute`` for token routes).
    :ivar backend: the typed backend, ``$N`` already substituted.
    :ivar remainder: what follows the matched prefix (``""`` for pattern rules).
    """

    rule: Any
    backend: BackendTarget
    options: RouteOptions
    remainder: str = ""
    #: The desktop the session belongs to (a token's fingerprint on token routes): sessions
    #: with one desktop are one logical session, counted once by the limits.
    desktop: str = ""
    #: The user the token names (``user`` or ``sub`` claim), for logs and audit events.
    user: str = ""
    #: A single-use token's ``jti`` and expiry: the session may open only if the pool has not seen it.
    once: Optional[tuple[str, float]] = None
    #: The desktop's host on token routes (an ``OwnerSource`` says which gateway owns it).
    desktop_host: str = ""

    @property
    def target(self) -> str:
        """The backend as text, for logs."""
        return self.backend.text

    @property
    def label(self) -> str:
        """The route's name in metrics, logs and the admin list."""
        return str(self.rule.label)


@dataclass(frozen=True)
class Reject:
    """A refusal: the HTTP status to answer and a short reason for people."""

    status: int
    reason: str
    #: for the operator's log only, never sent: why exactly (the reason may be deliberately vague).
    detail: str = field(default="", compare=False)


#: The refusal of a path no rule takes (and no other): what plain requests may answer
#: without a log line (see :mod:`tunnelgw.web`); every other 404 is a refusal that is logged.
NO_ROUTE = Reject(404, "no route for this path")

# Values captured by ProxyPassMatch may only hold these characters, so that a
# request path can never add parameters to an endpoint string (":" and "=" are
# its separators, "\" its escape) nor reach a different host than configured.
_SAFE_CAPTURE = re.compile(r"[A-Za-z0-9._~-]*")
_HEX = frozenset("0123456789abcdefABCDEF")


class RuleSet:
    """The rules of a :class:`Config`, indexed for routing."""

    def __init__(self, config: Config) -> None:
        self._prefixes: dict[str, PrefixRule] = {r.path: r for r in config.prefix_rules}
        self._patterns: tuple[PatternRule, ...] = config.pattern_rules
        # The host part of each pattern rule's target and the groups it takes.
        self._hosts: dict[int, tuple[Optional[str], tuple[str, ...]]] = {}
        for rule in self._patterns:
            host = target_host(rule.target)
            self._hosts[id(rule)] = (host, tuple(SUBSTITUTION.findall(host or "")))

    def choose(self, path: str) -> Union[Route, Reject]:
        """Route a normalised path; see :func:`choose_route`."""
        probe = path
        while True:
            rule = self._prefixes.get(probe or "/")
            if rule is not None:
                return Route(rule, rule.backend, rule.options, path[len(probe):])
            if not probe or probe == "/":
                break
            probe = probe[: probe.rfind("/")]
        for pattern_rule in self._patterns:
            found = pattern_rule.pattern.search(path)
            if found is None:
                continue
            captured = {str(i): found.group(i) or "" for i in range(1, pattern_rule.pattern.groups + 1)}
            for value in captured.values():
                if not _SAFE_CAPTURE.fullmatch(value) or value in (".", ".."):
                    return Reject(400, f"the path holds a value that may not be put in a backend address: {value!r}")
            template, groups = self._hosts[id(pattern_rule)]
            if template is not None and groups:
                filled = SUBSTITUTION.sub(lambda m: captured[m.group(1)], pattern_rule.target)
                problem = substituted_host_problem(template, target_host(filled), [captured[g] for g in groups])
                if problem is not None:
                    # A capture must never let the request choose the host (its DNS could name any address).
                    return Reject(404, "no route for this path: its value may not choose the backend host", problem)
            backend = substitute(pattern_rule.backend, captured)
            if isinstance(backend, str):
                return Reject(400, backend)
            return Route(pattern_rule, backend, pattern_rule.options)
        return NO_ROUTE


def normalise_path(raw: bytes) -> Union[str, Reject]:
    """
    Turn a raw request path (no query) into the canonical form routing sees.

    Percent escapes are decoded, except that an encoded ``/``, ``\\`` or NUL is
    refused (404, as Apache's ``AllowEncodedSlashes Off``); runs of slashes are
    merged; ``.`` and ``..`` segments are removed, and a path that climbs above
    the root is refused (400).  The result is UTF-8 text starting with ``/``.
    """
    if not raw.startswith(b"/"):
        return Reject(400, "request path must start with '/'")
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        if b == 0x25:  # '%'
            hexpair = raw[i + 1 : i + 3].decode("latin-1")
            if len(hexpair) != 2 or not set(hexpair) <= _HEX:
                return Reject(400, "bad percent escape in path")
            value = int(hexpair, 16)
            if value in (0x2F, 0x5C, 0x00):
                return Reject(404, "encoded '/', '\\' or NUL in path")
            out.append(value)
            i += 3
        else:
            out.append(b)
            i += 1
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError:
        return Reject(400, "path is not UTF-8")
    if any(not c.isprintable() for c in text):
        return Reject(400, "control character in path")
    segments: list[str] = []
    for segment in text.split("/")[1:]:
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                return Reject(400, "path climbs above the root")
            segments.pop()
        else:
            segments.append(segment)
    trailing = "/" if text.endswith(("/", "/.", "/..")) and segments else ""
    return "/" + "/".join(segments) + trailing


def choose_route(rules: RuleSet, raw_path: bytes) -> Union[Route, Reject]:
    """Normalise a raw request path and choose its route, or say why not."""
    path = normalise_path(raw_path)
    if isinstance(path, Reject):
        return path
    return rules.choose(path)
