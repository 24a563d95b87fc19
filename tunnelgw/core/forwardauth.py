"""
Forward authentication (nginx ``auth_request`` semantics), the pure part:
what the portal is sent, how its answer is read, and the short positive cache.

``AuthPortal NAME URL [timeout=2] [cache=5] [allow=HOST:PORTS ...]`` and
``auth=NAME`` on a route: before the backend is connected, the gateway sends
the portal a ``GET URL`` carrying the client's ``Cookie``, ``Authorization``
and ``Origin``, its address (``X-Forwarded-For``) and the requested URI
(``X-Original-URI``).  Then:

- 2xx admits; the portal may name the desktop (``X-Tunnelgw-Target:
  HOST:PORT``, which must match one of the portal's ``allow=``) and the user
  for logs (``X-Tunnelgw-User``);
- 401 and 403 are passed to the client as they are;
- anything else, a timeout or a portal that cannot be reached is 503.

Admissions are cached for ``cache`` seconds, keyed on everything the portal
saw; refusals are never cached.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

from tunnelgw.core.routing import Reject
from tunnelgw.core.tokens import TargetAddress, check_target, parse_target
from tunnelgw.core.topoconfig import AllowedTarget

__all__ = ["FORWARDED_HEADERS", "Admit", "AnswerCache", "portal_headers", "read_answer"]

#: The client's headers the portal is sent (lower case).
FORWARDED_HEADERS = ("cookie", "authorization", "origin")
_USER = re.compile(r"[\w.@+-]{1,64}")


@dataclass(frozen=True)
class Admit:
    """The portal said yes: maybe with the desktop to use and the user's name."""

    target: Optional[TargetAddress] = None
    user: str = ""


def portal_headers(client: str, uri: str, headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of the portal's request (client headers by lower-cased name)."""
    sent = {name: headers[name] for name in FORWARDED_HEADERS if name in headers}
    sent["x-forwarded-for"] = client
    sent["x-original-uri"] = uri
    return sent


def read_answer(status: int, headers: Mapping[str, str], allow: Sequence[AllowedTarget]) -> Union[Admit, Reject]:
    """The portal's answer (response headers by lower-cased name) as an admission or the client's refusal."""
    if status in (401, 403):
        return Reject(status, "refused by the portal" if status == 403 else "the portal wants you to sign in")
    if not 200 <= status < 300:
        return Reject(503, "the portal cannot decide now", f"portal answered {status}")
    user = headers.get("x-tunnelgw-user", "")
    user = user if _USER.fullmatch(user) else ""
    named = headers.get("x-tunnelgw-target")
    if named is None:
        return Admit(None, user)
    target = parse_target(named)
    if target is None:
        return Reject(503, "the portal cannot decide now", f"portal named a malformed target {named[:80]!r}")
    refused = check_target(target, allow)
    if refused is not None:
        return Reject(503, "the portal cannot decide now", f"portal named {named[:80]!r}, outside its allow= list")
    return Admit(target, user)


class AnswerCache:
    """Admissions for ``ttl`` seconds, at most ``size`` of them (the oldest go first)."""

    def __init__(self, ttl: float, size: int = 4096) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[tuple[str, ...], tuple[float, Admit]] = OrderedDict()

    def get(self, key: tuple[str, ...], now: float) -> Optional[Admit]:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= now:
            del self._entries[key]
            return None
        return found[1]

    def put(self, key: tuple[str, ...], admit: Admit, now: float) -> None:
        if self.ttl <= 0:
            return
        self._entries[key] = (now + self.ttl, admit)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
