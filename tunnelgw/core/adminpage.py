"""
The operator's page of the admin listener: an overview (traffic per route
and per gateway of the pool, refusals of the last hour, Redis and portal
health, recordings that stopped) and the live sessions, slowest round trip
first, as server-rendered HTML (no script) with a close button each, and the
guard that keeps other sites from pressing those buttons (pure: values in,
text out).

Cross-site request forgery: a close is a POST.  A request that comes from a
browser (it has ``Origin`` or ``Sec-Fetch-Site``, or a form's content type)
must carry the ``csrf`` field the page put in that session's form (an HMAC
of the session id under a secret of this process) and, when it has
``Origin``, come from the admin listener's own origin.  Scripts (``curl -X
POST`` with no body) send none of these and are let through as before.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timezone
from html import escape
from typing import Mapping, Optional, Sequence
from urllib.parse import parse_qs, quote

from tunnelgw.core.overview import Overview, Traffic

__all__ = ["PAGE_HEADERS", "csrf_refusal", "csrf_token", "render_page", "slowest_first"]

#: Headers of the page: nothing from elsewhere, no framing (clickjacking), no caching.
PAGE_HEADERS = (
    ("content-type", "text/html; charset=utf-8"),
    ("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
    ("referrer-policy", "same-origin"),  # "no-referrer" makes Chromium send "Origin: null" on the forms
)
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
_COLUMNS = (("session", "session"), ("client", "client"), ("route", "route"), ("path", "path"),
            ("backend", "backend"), ("duration", "seconds"), ("bytes_up", "bytes up"),
            ("bytes_down", "bytes down"), ("recording", "recording"))


def csrf_token(secret: bytes, session_id: str) -> str:
    """The form token for closing one session."""
    return hmac.new(secret, b"close:" + session_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def csrf_refusal(secret: bytes, session_id: str, headers: Mapping[str, str], body: bytes,
                 own_origins: Sequence[str]) -> Optional[str]:
    """
    Why a close request must be refused (403), or None.

    :param headers: request headers, names lower-cased.
    :param own_origins: the admin listener's origins as the browser sees
        them (``http://HOST`` for the request's Host).
    """
    origin = headers.get("origin")
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    from_browser = origin is not None or "sec-fetch-site" in headers or content_type in _FORM_TYPES
    if not from_browser:
        return None
    if origin is not None and origin.lower() not in (o.lower() for o in own_origins):
        return "cross-site request refused"
    sent = parse_qs(body.decode("latin-1"), max_num_fields=4).get("csrf", [""])[0] \
        if content_type == "application/x-www-form-urlencoded" else ""
    if not hmac.compare_digest(sent, csrf_token(secret, session_id)):
        return "missing or wrong csrf token (use the page's form, or POST without a body from a script)"
    return None


def _replay_link(viewer: str, name: str) -> str:
    """The recording's name, linked to the viewer (``{session}`` filled in) when there is one."""
    if not viewer or not name.endswith(".js"):
        return escape(name)
    url = viewer.replace("{session}", quote(name[:-3], safe=""))
    return f'<a class="replay" href="{escape(url)}" target="_blank" rel="noopener noreferrer">{escape(name)}</a>'


def _cell(session: Mapping[str, object], key: str, viewer: str) -> str:
    if key == "recording":
        return _replay_link(viewer, str(session.get(key) or ""))
    return escape(str(session.get(key, "")))


def _size(n: float) -> str:
    """Bytes for people: 1023 B, 1.5 kB, 12.0 MB (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _rate(value: Optional[float]) -> str:
    return "measuring" if value is None else _size(value) + "/s"


def _traffic_table(table_id: str, title: str, rows: Sequence[Traffic], first: str, seconds: float) -> str:
    over = f" (rates over the last {seconds:.2g} s)" if seconds else " (rates from the next refresh)"
    body = "".join(
        f"<tr><td>{escape(t.name)}</td><td>{t.live}</td><td>{'' if t.opened is None else t.opened}</td>"
        f"<td>{_size(t.bytes_up)}</td><td>{_size(t.bytes_down)}</td><td>{_rate(t.up_rate)}</td>"
        f"<td>{_rate(t.down_rate)}</td></tr>" for t in rows) or '<tr><td colspan="7">none</td></tr>'
    return (f'<section><h2>{escape(title)}{over}</h2><table id="{table_id}"><thead><tr><th>{first}</th>'
            f"<th>live</th><th>opened</th><th>bytes up</th><th>bytes down</th><th>up now</th><th>down now</th>"
            f"</tr></thead><tbody>{body}</tbody></table></section>")


def _overview(overview: Overview) -> str:
    """The sections above the session list."""
    parts = [_traffic_table("routes", "Traffic per route", overview.routes, "route", overview.rate_seconds)]
    if overview.gateways:
        parts.append(_traffic_table("gateways", "Gateways of the pool", overview.gateways, "gateway",
                                    overview.rate_seconds))
    refused = "".join(f"<tr><td>{escape(reason)}</td><td>{count}</td></tr>" for reason, count in overview.refusals)
    parts.append('<section><h2>Refusals in the last hour</h2><table id="refusals"><thead><tr><th>reason</th>'
                 f"<th>count</th></tr></thead><tbody>{refused or '<tr><td colspan=2>none</td></tr>'}</tbody>"
                 "</table></section>")
    health = "".join(f'<tr class="{escape(h.state)}"><td>{escape(h.name)}</td><td>{escape(h.state)}</td>'
                     f"<td>{escape(h.detail)}</td></tr>" for h in overview.health)
    parts.append('<section><h2>Redis and portals</h2><table id="health"><thead><tr><th>dependency</th>'
                 "<th>state</th><th>seen</th></tr></thead><tbody>"
                 f"{health or '<tr><td colspan=3>no Redis or portal is configured</td></tr>'}</tbody></table></section>")
    if overview.stopped_recordings:
        stopped = "".join(
            f"<tr><td>{datetime.fromtimestamp(r.when, timezone.utc).isoformat(timespec='seconds')}</td>"
            f"<td>{escape(r.session)}</td><td>{escape(r.outcome)}</td><td>{escape(r.why)}</td>"
            f"<td>{escape(r.file)}</td></tr>" for r in overview.stopped_recordings)
        parts.append('<section><h2>Recordings that stopped</h2><table id="stopped"><thead><tr><th>when (UTC)</th>'
                     "<th>session</th><th>outcome</th><th>why</th><th>file</th></tr></thead>"
                     f"<tbody>{stopped}</tbody></table></section>")
    return '<div class="overview">' + "".join(parts) + "</div>"


def slowest_first(sessions: Sequence[Mapping[str, object]]) -> list[Mapping[str, object]]:
    """Sessions by measured round trip, the slowest first; those not measured yet last."""
    def key(session: Mapping[str, object]) -> tuple[int, float]:
        rtt = session.get("round_trip_ms")
        return (0, -float(rtt)) if isinstance(rtt, (int, float)) else (1, 0.0)
    return sorted(sessions, key=key)


def render_page(sessions: Sequence[Mapping[str, object]], secret: bytes, draining: bool, notice: str = "",
                recordings: Sequence[tuple[str, int, float]] = (), viewer: str = "", pool_name: str = "",
                overview: Optional[Overview] = None, rates: Mapping[str, tuple[float, float]] = {}) -> str:
    """
    The whole page: the overview (traffic per route and gateway, refusals,
    Redis and portal health, stopped recordings), then the live sessions,
    the slowest round trip first, each with its close form, then the newest
    recordings (name, bytes, modified), linked to ``viewer``.

    :param pool_name: this gateway's name in a pool: the sessions are the
        pool's (each with its ``gateway``); others' close through the pool.
    :param rates: session id -> (up, down) bytes per second now.
    """
    columns = ((("gateway", "gateway"),) if pool_name else ()) + _COLUMNS
    rows = []
    for session in slowest_first(sessions):
        sid = str(session.get("session", ""))
        cells = "".join(f"<td>{_cell(session, key, viewer)}</td>" for key, _ in columns)
        rate = rates.get(sid)
        cells += (f'<td class="rtt">{escape(str(session.get("round_trip_ms", "")))}</td>'
                  f"<td>{_rate(rate[0]) if rate else ''}</td><td>{_rate(rate[1]) if rate else ''}</td>")
        through = "/pool" if pool_name and session.get("gateway", pool_name) != pool_name else ""
        form = (f'<form method="post" action="{through}/sessions/{escape(sid)}/close">'
                f'<input type="hidden" name="csrf" value="{csrf_token(secret, sid)}">'
                f'<button type="submit" name="close" value="{escape(sid)}">Close</button></form>')
        rows.append(f'<tr id="session-{escape(sid)}">{cells}<td>{form}</td></tr>')
    head = "".join(f"<th>{escape(title)}</th>" for _, title in columns) + \
        "<th>round trip (ms)</th><th>up now</th><th>down now</th>"
    body = "".join(rows) or f'<tr><td colspan="{len(columns) + 4}">no live session</td></tr>'
    state = "draining: no new sessions" if draining else "serving"
    shown = f'<p class="notice">{escape(notice)}</p>' if notice else ""
    kept = "".join(f"<tr><td>{_replay_link(viewer, name)}</td><td>{size}</td>"
                   f"<td>{datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec='seconds')}</td></tr>"
                   for name, size, mtime in recordings)
    recorded = (f'<h2>Recordings</h2><table id="recordings"><thead><tr><th>recording</th><th>bytes</th>'
                f'<th>modified (UTC)</th></tr></thead><tbody>{kept}</tbody></table>') if recordings else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tunnelgw: live sessions</title>
<meta http-equiv="refresh" content="10">
<style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:.2em .5em;text-align:left}}.notice{{background:#ffd}}
h2{{font-size:1.05em;margin:.8em 0 .3em}}.overview{{display:flex;flex-wrap:wrap;gap:0 2em}}
tr.trouble td{{background:#fdd}}tr.ok td:nth-child(2){{color:#060}}td.rtt{{text-align:right}}</style></head>
<body><h1>Live sessions: <span id="count">{len(sessions)}</span></h1><p>Gateway {state}; this page refreshes
every 10 s.</p>{shown}{_overview(overview) if overview is not None else ""}
<h2>Sessions, the slowest round trip first</h2>
<table id="sessions"><thead><tr>{head}<th></th></tr></thead><tbody>{body}</tbody></table>{recorded}</body></html>
"""
