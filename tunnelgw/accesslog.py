"""
The access log: ``AccessLog FILE|- format=combined|json``.

Entries come from two places: the gateway's Site calls :meth:`AccessLogs.request`
for each plain HTTP request it answered, and the log events of refused
WebSocket handshakes and ended sessions (those with an ``audit`` kind, see
:mod:`tunnelgw.audit`) are observed.  :func:`request_entry` is the one place
that redacts for the access log: the target and Referer go through the
gateway's redaction (``GatewayFactory.redact``, tokens in paths, query
parameters and JWTs fingerprinted), then every query value left is
fingerprinted too (:func:`tunnelgw.core.accesslog.hide_query_values`: a
query may hold a secret no token rule names, such as noVNC's
``password=``); session and refusal events carry paths the same token
redaction already made.  A file is opened in append mode at its first line,
and opened again after a reload (SIGHUP after logrotate moved it) or a
failed write (said once in the log until it works again).
"""

from __future__ import annotations

import os
from typing import IO, Any, Callable, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, globalLogPublisher

from tunnelgw.core.accesslog import AccessEntry, format_entry, hide_query_values
from tunnelgw.core.config import AccessLog
from tunnelgw.logs import LogSinks

__all__ = ["AccessLogs", "request_entry"]

_log = Logger(namespace="tunnelgw.access")

#: Refusal kinds of upgrade requests (plain requests reach the log through the Site).
_UPGRADE_REFUSALS = ("target", "handshake", "route", "rate", "hop")


def _header(request: Any, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else ""


def _hidden(text: str, redact: Callable[[str], str]) -> str:
    """The one redaction of the access log: the gateway's (tokens by place and name), then every query value."""
    return hide_query_values(redact(text))


def request_entry(request: Any, redact: Callable[[str], str], now: float) -> AccessEntry:
    """The entry of a twisted.web request once answered; its target and Referer redacted (the one place)."""
    client = getattr(request, "tunnelgw_client", None) or getattr(request.getClientAddress(), "host", "-")
    view = getattr(request, "tunnelgw_view", None)  # the request's canonical view, when the gateway read it
    if view is not None:
        target = hide_query_values(view.shown_target)
        referer = hide_query_values(view.shown_referer) if view.shown_referer else ""
    else:
        target = _hidden(request.uri.decode("latin-1"), redact)
        raw_referer = _header(request, b"referer")
        referer = _hidden(raw_referer, redact) if raw_referer else ""
    return AccessEntry(
        time=now, client=str(client), method=request.method.decode("latin-1"),
        target=target, protocol=request.clientproto.decode("latin-1"),
        status=int(request.code), size=int(getattr(request, "sentLength", 0) or 0),
        referer=referer, user_agent=_header(request, b"user-agent"))


def event_entry(event: dict[str, Any], now: float) -> Optional[AccessEntry]:
    """The entry of a session-end or refused-upgrade log event (its path already redacted), else None."""
    fields = event.get("fields")
    kind = event.get("audit")
    if not isinstance(fields, dict):
        return None
    when = float(event.get("log_time") or now)
    if kind == "session.end":
        code = fields.get("close_code")
        return AccessEntry(time=when, client=str(fields.get("client", "-")), method="GET",
                           target=hide_query_values(str(fields.get("path", ""))), protocol="HTTP/1.1", status=101,
                           size=int(fields.get("bytes_down", 0)), kind="session", session=str(fields.get("session", "")),
                           route=str(fields.get("route", "")), bytes_up=int(fields.get("bytes_up", 0)),
                           bytes_down=int(fields.get("bytes_down", 0)), duration=float(fields.get("duration", 0.0)),
                           close_code=int(code) if isinstance(code, int) else None)
    refusal = fields.get("kind")
    # A request refused before twisted.web read it (too large, malformed) names no path: twisted.web never logs it.
    unparsed = refusal in ("request", "headers") and fields.get("path") == "-"
    if kind in ("request.refused", "session.refused") and (refusal in _UPGRADE_REFUSALS or unparsed):
        return AccessEntry(time=when, client=str(fields.get("client", "-")), method="-" if unparsed else "GET",
                           target=hide_query_values(str(fields.get("path", ""))), protocol="-" if unparsed else "HTTP/1.1",
                           status=int(fields.get("status", 0)),
                           size=0, kind="refused", session=str(fields.get("session", "-")),
                           reason=str(fields.get("reason", "")))
    return None


class _Sink:
    """One ``AccessLog`` line: a file opened for appending, or the gateway's log (``-``)."""

    def __init__(self, spec: AccessLog) -> None:
        self.spec = spec
        self._file: Optional[IO[str]] = None
        self._failing = False

    def write(self, entry: AccessEntry) -> None:
        line = format_entry(entry, self.spec.format)
        if self.spec.path == "-":
            _log.info("access {line}", line=line, fields={"access": entry.kind, "status": entry.status})
            return
        try:
            if self._file is None:
                fd = os.open(self.spec.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
                self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
            self._file.write(line + "\n")
            if self._failing:
                self._failing = False
                _log.info("access log {path} is written again", path=self.spec.path)
        except OSError as e:
            # Opened again at the next line (the disk may recover); said once per failing spell.
            self.close()
            if not self._failing:
                self._failing = True
                _log.warn("access log {path} cannot be written, lines are lost: {why}", path=self.spec.path,
                          why=str(e))

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError:
                pass


class AccessLogs(LogSinks[AccessLog, _Sink]):
    """
    The gateway's access logs: :meth:`start`, :meth:`reconfigure` (reload;
    every file is opened again, so SIGHUP follows a log rotation) and
    :meth:`stop` come from :class:`~tunnelgw.logs.LogSinks`.

    :param redact: the gateway's redaction of request paths, URIs and URLs.
    """

    def __init__(self, reactor: IReactorTime, specs: tuple[AccessLog, ...], redact: Callable[[str], str],
                 publisher: Any = globalLogPublisher) -> None:
        super().__init__(publisher, self, specs, _Sink)
        self._reactor = reactor
        self._redact = redact

    def request(self, request: Any) -> None:
        """A plain HTTP request was answered (twisted.web's ``Site.log``)."""
        if self.sinks:
            self._write(request_entry(request, self._redact, self._reactor.seconds()))

    def __call__(self, event: dict[str, Any]) -> None:
        """Observe the log: session ends and refused upgrades become entries."""
        if event.get("audit") is None:
            return
        entry = event_entry(event, self._reactor.seconds())
        if entry is not None:
            self._write(entry)

    def _write(self, entry: AccessEntry) -> None:
        for sink in self.sinks:
            sink.write(entry)
