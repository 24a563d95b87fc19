"""
Audit trail: the log events that carry an ``audit`` kind (session start and
end, refusals, admin actions) go to every ``AuditLog`` sink as RFC 5424
syslog messages (UDP datagrams, TCP with RFC 6587 octet counting, or a unix
datagram socket such as ``/dev/log``) or as JSON lines in a file.

The sinks never hold a session up: a message is written or, when its sink
cannot take it (syslog over TCP not connected, its queue full, a socket or
disk error), dropped and counted in ``tunnelgw_audit_dropped_total{sink}``,
with one warning per outage.  TCP reconnects by itself (Twisted's
:class:`~twisted.application.internet.ClientService`, with backoff); while
disconnected, up to :data:`TCP_QUEUE` messages wait.  Formatting is in
:mod:`tunnelgw.core.audit`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections import deque
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Counter
from twisted.application.internet import ClientService
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol, connectionDone
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from tunnelgw.core.audit import AUDIT_EVENTS, AuditEvent, json_record, octet_counted, rfc5424
from tunnelgw.core.config import AuditLog
from tunnelgw.logs import LogSinks

__all__ = ["AuditTrail", "TCP_QUEUE", "UDP_MAX"]

_log = Logger(namespace="tunnelgw.audit")
#: Messages kept for a syslog TCP sink while it is disconnected or its peer does not read.
TCP_QUEUE = 10000
#: Longest UDP datagram sent; longer messages are cut (RFC 5426 receivers take at least 2048).
UDP_MAX = 8192


def _sink_name(spec: AuditLog) -> str:
    if spec.kind == "json":
        return f"json:{spec.path}"
    if spec.transport == "unix":
        return f"unix://{spec.path}"
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    return f"{spec.transport}://{host}:{spec.port}"


class _Sink:
    """One destination; :meth:`send` never raises and never waits."""

    def __init__(self, spec: AuditLog, trail: "AuditTrail") -> None:
        self.spec = spec
        self.name = _sink_name(spec)
        self._trail = trail
        self._failing = False

    def format(self, event: AuditEvent) -> bytes:
        if self.spec.kind == "json":
            return json_record(event).encode("utf-8")
        return rfc5424(event, self.spec.facility, self._trail.hostname, self.spec.app, self._trail.pid,
                       self.spec.sdid)

    def send(self, event: AuditEvent) -> None:
        try:
            self.write(self.format(event))
        except Exception as e:  # a socket or disk error drops the event, never the session
            self.dropped(str(e))
        else:
            if self._failing:
                self._failing = False
                _log.info("audit sink {sink} works again", sink=self.name)

    def dropped(self, why: str) -> None:
        self._trail.dropped.labels(self.name).inc()
        if not self._failing:
            self._failing = True
            _log.warn("audit sink {sink} drops events: {why}", sink=self.name, why=why)

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the sink's socket or file."""


class _QuietDatagram(DatagramProtocol):
    """The UDP sink's socket, without Twisted's "Starting protocol" line."""

    noisy = False

    def logPrefix(self) -> str:
        """How Twisted names the socket in its "starting on PORT" line."""
        return "tunnelgw audit sink (UDP)"


class _UdpSink(_Sink):
    def __init__(self, spec: AuditLog, trail: "AuditTrail") -> None:
        super().__init__(spec, trail)
        # Bound to loopback when sending to loopback, else to any address of the family.
        address = ipaddress.ip_address(spec.host)
        interface = str(address) if address.is_loopback else ("::" if address.version == 6 else "")
        self._port = trail.reactor.listenUDP(0, _QuietDatagram(), interface=interface)

    def write(self, data: bytes) -> None:
        self._port.write(data[:UDP_MAX], (self.spec.host, self.spec.port))

    def close(self) -> None:
        self._port.stopListening()


class _UnixSink(_Sink):
    def __init__(self, spec: AuditLog, trail: "AuditTrail") -> None:
        super().__init__(spec, trail)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def write(self, data: bytes) -> None:
        self._socket.sendto(data, self.spec.path)

    def close(self) -> None:
        self._socket.close()


class _FileSink(_Sink):
    def __init__(self, spec: AuditLog, trail: "AuditTrail") -> None:
        super().__init__(spec, trail)
        self._file: Optional[Any] = None

    def write(self, data: bytes) -> None:
        if self._file is None:
            fd = os.open(self.spec.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._file = os.fdopen(fd, "ab", buffering=0)
        try:
            self._file.write(data)
        except OSError:
            self.close()  # open again next time (the disk may recover, the file may be rotated)
            raise

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError:
                pass


@implementer(IPushProducer)
class _SyslogStream(Protocol):
    """One TCP connection to a syslog server; sends what its sink queued while the peer reads."""

    transport: Any

    def __init__(self, sink: "_TcpSink") -> None:
        self._sink = sink
        self.paused = False

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self._sink.connected(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._sink.disconnected(self)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._sink.flush()

    def stopProducing(self) -> None:
        self.paused = True


class _TcpSink(_Sink):
    def __init__(self, spec: AuditLog, trail: "AuditTrail") -> None:
        super().__init__(spec, trail)
        endpoint_type = TCP6ClientEndpoint if ":" in spec.host else TCP4ClientEndpoint
        endpoint = endpoint_type(trail.reactor, spec.host, spec.port, timeout=10)
        self._queue: deque[bytes] = deque()
        self._stream: Optional[_SyslogStream] = None
        factory = Factory.forProtocol(lambda: _SyslogStream(self))
        factory.noisy = False  # no "Starting factory" line per (re)connection
        self._service = ClientService(endpoint, factory, clock=trail.reactor)
        self._service.startService()

    def connected(self, stream: _SyslogStream) -> None:
        self._stream = stream
        self.flush()

    def disconnected(self, stream: _SyslogStream) -> None:
        if self._stream is stream:
            self._stream = None

    def write(self, data: bytes) -> None:
        if len(self._queue) >= TCP_QUEUE:
            self._queue.popleft()
            self.dropped(f"not connected or not reading; the newest {TCP_QUEUE} events are kept")
        self._queue.append(octet_counted(data))
        self.flush()

    def flush(self) -> None:
        stream = self._stream
        while self._queue and stream is not None and not stream.paused:
            stream.transport.write(self._queue.popleft())

    def close(self) -> None:
        self._service.stopService()


def _key(spec: AuditLog) -> tuple[str, int, str, str]:
    """What makes two AuditLog directives the same sink (not the line they are on)."""
    return _sink_name(spec), spec.facility, spec.app, spec.sdid


_SINKS = {"udp": _UdpSink, "tcp": _TcpSink, "unix": _UnixSink, "file": _FileSink}


class AuditTrail(LogSinks[AuditLog, _Sink]):
    """
    Observes the log for audit events and sends each to every sink; :meth:`start`,
    :meth:`reconfigure` (reload: unchanged sinks are kept, with their connections) and
    :meth:`stop` come from :class:`~tunnelgw.logs.LogSinks`.

    :param specs: the ``AuditLog`` directives.
    :param registry: where ``tunnelgw_audit_dropped_total`` is registered.
    """

    def __init__(self, reactor: Any, specs: tuple[AuditLog, ...], registry: CollectorRegistry,
                 publisher: Any = globalLogPublisher) -> None:
        self.reactor = reactor
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.dropped = Counter("tunnelgw_audit_dropped", "Audit events an audit sink could not take",
                               ["sink"], registry=registry)
        # An unchanged sink is kept across a reload, with its connection.
        super().__init__(publisher, self, specs, lambda spec: _SINKS[spec.transport](spec, self), _key)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("audit")
        if kind not in AUDIT_EVENTS:
            return
        fields = event.get("fields")
        record = AuditEvent(kind, event.get("log_time") or self.reactor.seconds(),
                            fields if isinstance(fields, dict) else {})
        for sink in self.sinks:
            sink.send(record)
