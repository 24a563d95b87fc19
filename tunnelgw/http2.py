"""
HTTP/2 on an ``ssl:`` listener with ``http2=on``: one connection carries
the page's requests and its WebSocket sessions (RFC 8441), each on a stream.

The protocol is the sans-IO ``h2`` library (the one Twisted's own HTTP/2
uses); this module is the glue: :class:`Http2Connection` feeds it the
connection's bytes and carries its events out to streams.

- An **extended CONNECT** (``:protocol websocket``) is checked and turned
  into the HTTP/1.1 upgrade request it stands for
  (:func:`tunnelgw.core.h2stream.stream_request`) and given to
  :meth:`tunnelgw.gateway.GatewayFactory.upgrade` with a
  :class:`StreamTransport`: the same view, handshake check, decision,
  guards, limits and :class:`~tunnelgw.session.GatewaySession` as an
  HTTP/1.1 upgrade.  The session's ``101`` (or its refusal, status and
  reason) becomes the stream's response headers
  (:func:`~tunnelgw.core.h2stream.response_head`), its writes DATA frames;
  ``loseConnection`` ends the stream (``END_STREAM``), ``abortConnection``
  resets it (``RST_STREAM``): the connection and its other sessions go on.
- A **plain request** (a page, an Alias file, ``/lookup``, a redirect, the
  HTTP proxy of a ws:// route) is a twisted.web ``Request`` on the gateway's
  site, over a :class:`_RequestChannel` (twisted.web's channel interface:
  ``writeHeaders``, ``write``, ``requestDone``), so the same resource and
  decision answer it.

**Flow control** (every buffer bounded):

- Towards the client, a stream's writes wait in its own queue until the
  client's stream and connection windows admit them; above
  :data:`STREAM_BUFFER` bytes queued the stream's producer (the session's,
  hence its backend) is paused until the queue drains.  When the TLS
  connection's own buffer is full no stream's data is handed to h2.
- From the client, a stream whose reader is paused (its backend does not
  take data) keeps what arrives and does not acknowledge it: the client
  can send at most the stream window (:data:`STREAM_WINDOW`) more.  The
  connection window is sized for every stream's window at once, so a
  stalled desktop never stalls the others.
- What h2 gives to send is written to the TLS connection once per turn of
  the reactor (every stream's answers in it: one TLS record and one system
  call for many small frames), at once from :data:`WRITE_BATCH` bytes, and
  after each step of held input (so a pause it causes stops the reading).
  A stream's queued writes fill DATA frames (a WebSocket header shares its
  payload's frame).  h2 keeps every stream's state and window, but a DATA
  frame's header and payload are written beside it, after what h2 has
  buffered (:func:`tunnelgw.upstream.data_frame_head`: no frame objects,
  and the payload is not copied until the TLS transport fills its records).
- At most :attr:`Http2Server.max_streams` concurrent streams per connection
  (``Limit streams=``).
- "Rapid reset" (CVE-2023-44487): a client that resets more than
  ``max_streams`` streams within :data:`RESET_WINDOW` seconds, each younger
  than :data:`RESET_AGE`, gets GOAWAY ``ENHANCE_YOUR_CALM`` and is closed.
- A closing connection whose client does not read is aborted after
  :data:`~tunnelgw.core.relay.CLOSE_TIMEOUT`; a plain request's answer that
  the client takes nothing of for ``idle_timeout`` is reset (``CANCEL``).

**Errors.**  The request headers are checked by tunnelgw, not by h2
(``validate_inbound_headers`` is off), so a malformed request is reset with
``PROTOCOL_ERROR`` on its stream alone.  What h2 still raises from
``receive_data`` (framing, HPACK, flow-control violations, a stream id out
of order: errors RFC 9113 makes connection errors; and, because h2 raises
them before the header block is decoded, which leaves the HPACK state
unusable, a header block over HPACK's 64 KiB bound and a stream beyond
``MAX_CONCURRENT_STREAMS``) ends the connection with a GOAWAY carrying
h2's error code.  A header list over the gateway's head limit (which h2
does not enforce) is answered 431 on its stream.  A client's GOAWAY ends the connection and its sessions:
h2 sends nothing after it.  A drain sends GOAWAY without closing:
h2 refuses to send anything after its own GOAWAY, so that frame is written
with hyperframe between h2's outputs, and new streams are then refused
(``REFUSED_STREAM``).
"""

from __future__ import annotations

from collections import deque
from io import BytesIO
from typing import Any, Optional, Union

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet import error
from twisted.internet.interfaces import (IConsumer, INegotiated, IPushProducer, IReactorTime, ISSLTransport, ITCPTransport,
                                         ITransport)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from zope.interface import implementer

from tunnelgw.core.clientaddr import format_address
from tunnelgw.core.h2stream import Malformed, StreamRequest, response_head, stream_request
from tunnelgw.core.http import find_head_end
from tunnelgw.core.relay import CLOSE_TIMEOUT
from tunnelgw.core.routing import Reject
from tunnelgw.session import http_error, log_refusal
from tunnelgw.upstream import data_frame_head

__all__ = ["HELD_INPUT", "Http2Connection", "Http2Server", "negotiated_h2", "RESET_AGE", "RESET_WINDOW", "STREAM_BUFFER",
           "STREAM_WINDOW", "StreamTransport", "WRITE_BATCH"]

_log = Logger(namespace="tunnelgw")

#: The flow-control window each stream gives the client (bytes the gateway may hold for a stalled stream).
STREAM_WINDOW = 65535
#: Bytes queued towards the client on one stream before its producer is paused.
STREAM_BUFFER = 262144
#: A stream the client resets younger than this (seconds) counts as a rapid reset.
RESET_AGE = 5.0
#: Seconds over which rapid resets are counted; more than ``max_streams`` of them end the connection.
RESET_WINDOW = 30.0
#: Bytes the transport may still hand over after the connection paused reading (the rest of one read);
#: beyond them the connection is aborted.
HELD_INPUT = 262144
#: Held bytes given to h2 at a time once reading resumes, so that a pause their answers cause takes effect.
_INPUT_STEP = 4096
#: Bytes of output kept to go to the TLS connection in one write at the end of the reactor's turn (the answers
#: of every stream that had news in it); at this many they are written at once.  Four full DATA frames (16 KiB
#: and a 9-byte header each): written one frame at a time, each would be a full TLS record and a 9-byte one.
WRITE_BATCH = 4 * (16384 + 9)
#: Largest request body of a plain request over a stream (as on HTTP/1.1).
_MAX_BODY = 65536


class Http2Server:
    """
    What an ``http2=on`` listener's connections share: the gateway, the
    site, the bounds, and the live connections (for a drain).

    :param gateway: the :class:`~tunnelgw.gateway.GatewayFactory`.
    :param site: the :class:`~tunnelgw.front.GatewaySite` plain requests go to.
    :param idle_timeout: seconds a connection without streams, or a plain
        request not complete, is kept; and seconds a plain request's answer
        may wait without the client taking a byte of it.
    :param max_streams: concurrent streams per connection.
    """

    def __init__(self, gateway: Any, site: Any, reactor: IReactorTime, idle_timeout: float, max_streams: int = 100,
                 max_head: int = 16384) -> None:
        self.gateway = gateway
        self.site = site
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.max_streams = max_streams
        self.max_head = max_head
        self.connections: set[Http2Connection] = set()
        self.draining = False

    def drain(self) -> None:
        """GOAWAY to every connection: no new streams; live sessions go on; idle connections close."""
        self.draining = True
        for connection in list(self.connections):
            connection.go_away()


class Http2Connection(Protocol):
    """One HTTP/2 connection (after ALPN chose ``h2``)."""

    transport: Any

    def __init__(self, server: Http2Server) -> None:
        #: What this listener's connections share.
        self.server = server
        self._h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None,
                                                validate_inbound_headers=False, normalize_inbound_headers=False))
        self._streams: dict[int, Union[StreamTransport, _RequestStream]] = {}
        self._paused = False
        self._going_away = False
        self._closed = False
        self._idle: Any = None
        self._abort: Any = None
        self._last_stream = 0
        self._opened: dict[int, float] = {}
        #: What arrived while reading was paused (read on resumeProducing), and its size.
        self._input: deque[bytes] = deque()
        self._input_size = 0
        self._resets: deque[float] = deque()
        #: Output not yet written (at most WRITE_BATCH bytes), and the call that writes it.
        self._out: list[Union[bytes, memoryview]] = []
        self._out_size = 0
        self._write_call: Any = None

    # The connection.

    def connectionMade(self) -> None:
        """Send our SETTINGS (extended CONNECT on, the stream limit) and open the connection window."""
        server = self.server
        self._h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            SettingCodes.MAX_CONCURRENT_STREAMS: server.max_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_HEADER_LIST_SIZE: server.max_head,
        })
        self._h2.initiate_connection()
        if ITCPTransport.providedBy(self.transport):
            # Small frames (a session's 200, a key press) go out at once, as on an HTTP/1.1 session.
            self.transport.setTcpNoDelay(True)
        # Room for every stream's window at once: a stream that is not read never starves the others.
        self._h2.increment_flow_control_window(STREAM_WINDOW * server.max_streams)
        self.transport.registerProducer(self, True)
        server.connections.add(self)
        self._flush()
        self._arm_idle()
        if server.draining:
            self.go_away()

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the client, to h2 (held while reading is paused); its events to the streams."""
        if self._closed or not data:
            return
        if self._paused or self._input:
            self._input.append(data)
            self._input_size += len(data)
            if self._input_size > HELD_INPUT:
                _log.info("http2 connection aborted client={client}: {size} bytes arrived while reading was paused",
                          client=format_address(self.transport.getPeer()), size=self._input_size)
                self._closed = True
                self.transport.abortConnection()
            return
        self._receive(data)

    def _take_input(self) -> None:
        """Read what was held, a step at a time, until it is all read or reading is paused again."""
        while self._input and not self._paused and not self._closed:
            data = self._input.popleft()
            if len(data) > _INPUT_STEP:
                self._input.appendleft(data[_INPUT_STEP:])
                data = data[:_INPUT_STEP]
            self._input_size -= len(data)
            self._receive(data)
            # The answers go out now, so that the transport's pause they may cause stops the next step.
            self._write_out()

    def _receive(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except ProtocolError as e:
            self._fail(e)
            return
        for event in events:
            if isinstance(event, DataReceived):
                self._data(event)
            elif isinstance(event, RequestReceived):
                self._request(event.stream_id, event.headers or [])
            elif isinstance(event, StreamEnded):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.remote_ended()
            elif isinstance(event, StreamReset):
                stream = self._streams.pop(event.stream_id, None)
                if stream is not None:
                    stream.lost(error.ConnectionLost("the client reset the stream"))
                    if self._rapid_reset(event.stream_id):
                        return
                    self._arm_idle()
            elif isinstance(event, WindowUpdated):
                if event.stream_id:
                    target = self._streams.get(event.stream_id)
                    if target is not None:
                        target.push()
                else:
                    self._push_all()
            elif isinstance(event, ConnectionTerminated):
                # h2 sends nothing after the client's GOAWAY: the connection and its sessions end.
                self._close()
        if not self._closed:
            self._flush()

    def _rapid_reset(self, stream_id: int) -> bool:
        """
        Count a client's reset of a young stream (each cost a decision, an
        admission, maybe a backend connect: CVE-2023-44487); over the bound
        the connection ends with GOAWAY ``ENHANCE_YOUR_CALM``.

        :returns: whether the connection ended.
        """
        now = self.server.reactor.seconds()
        if now - self._opened.pop(stream_id, now) >= RESET_AGE:
            return False
        resets = self._resets
        resets.append(now)
        while resets and resets[0] <= now - RESET_WINDOW:
            resets.popleft()
        if len(resets) <= self.server.max_streams:
            return False
        _log.info("http2 connection error client={client} error=ENHANCE_YOUR_CALM reason={reason!r}",
                  client=format_address(self.transport.getPeer()),
                  reason=f"more than {self.server.max_streams} streams reset within {RESET_WINDOW:g}s of opening")
        try:
            self._h2.close_connection(error_code=ErrorCodes.ENHANCE_YOUR_CALM, additional_data=b"rapid reset")
        except ProtocolError:
            pass
        self._flush()
        self._close()
        return True

    def _fail(self, e: ProtocolError) -> None:
        """A connection error from h2: GOAWAY with its code, then close."""
        code = e.error_code
        _log.info("http2 connection error client={client} error={error} reason={reason!r}",
                  client=format_address(self.transport.getPeer()), error=ErrorCodes(code).name, reason=str(e))
        try:
            self._h2.close_connection(error_code=code, additional_data=str(e).encode("utf-8", "replace")[:200])
        except ProtocolError:
            pass  # h2 has already closed its side
        self._flush()
        self._close()

    def _close(self) -> None:
        """
        Close once what is written is sent; a client that does not read it
        (its zero window keeps TCP alive) is aborted after CLOSE_TIMEOUT.
        """
        self._write_out()
        self._closed = True
        self.transport.loseConnection()
        if self._abort is None:
            self._abort = self.server.reactor.callLater(CLOSE_TIMEOUT, self._abort_now)

    def _abort_now(self) -> None:
        self._abort = None
        self.transport.abortConnection()

    def go_away(self) -> None:
        """
        GOAWAY (``NO_ERROR``) naming the last stream taken: the client opens no
        new stream here; live ones go on; without any the connection closes.
        """
        if self._going_away or self._closed:
            return
        self._going_away = True
        self._flush()
        self._write_out()
        frame = GoAwayFrame(0)
        frame.last_stream_id = self._last_stream
        frame.error_code = ErrorCodes.NO_ERROR
        self.transport.write(frame.serialize())
        self._arm_idle()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The connection is gone: so is every stream."""
        self._closed = True
        self.server.connections.discard(self)
        if self._write_call is not None and self._write_call.active():
            self._write_call.cancel()
        self._write_call, self._out, self._out_size = None, [], 0
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._abort = None
        self._opened.clear()
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.lost(reason.value if isinstance(reason.value, BaseException) else error.ConnectionLost())

    # IPushProducer: the TLS connection's write buffer.

    def pauseProducing(self) -> None:
        """
        The client does not read: hand no more stream data to h2, and read
        nothing more from it either (each frame read may make h2 answer:
        PINGs, SETTINGS; a client that does not read could grow the buffer).
        What the transport still hands over is held, up to :data:`HELD_INPUT`.
        """
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The client reads again: so do we."""
        self._paused = False
        self.transport.resumeProducing()
        self._take_input()
        if not self._paused:
            self._push_all()

    def stopProducing(self) -> None:
        """The connection is going; :meth:`connectionLost` ends the streams."""

    # Streams.

    def _request(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._last_stream = max(self._last_stream, stream_id)
        if self._going_away:
            self._reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        checked = stream_request(headers, True, self.server.max_head)
        if isinstance(checked, Malformed):
            reject = Reject(400, f"malformed, stream reset: {checked.reason}")
            log_refusal(format_address(self.transport.getPeer()), "-", reject, "http2")
            self._reset(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        self._opened[stream_id] = self.server.reactor.seconds()
        if checked.websocket and checked.refusal is None:
            stream = StreamTransport(self, stream_id)
            self._streams[stream_id] = stream
            stream.pauseProducing()  # as the front pauses an upgrade: not read until its 101
            self.server.gateway.upgrade(stream, checked.head, b"", via="http2")
            return
        request_stream = _RequestStream(self, stream_id, checked)
        self._streams[stream_id] = request_stream
        request_stream.start()

    def _data(self, event: DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        length = event.flow_controlled_length or 0
        if stream is None:
            self.acknowledge(event.stream_id, length)
            return
        stream.received(event.data or b"", length)

    def acknowledge(self, stream_id: int, length: int) -> None:
        """Give the client its window back for length bytes taken from stream_id."""
        if length and not self._closed:
            try:
                self._h2.acknowledge_received_data(length, stream_id)
            except (StreamClosedError, ProtocolError):
                pass  # the stream is gone; h2 gives the connection window back itself then
            self._flush()

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool = False) -> None:
        """Response headers on a stream."""
        if not self._closed:
            try:
                self._h2.send_headers(stream_id, headers, end_stream=end)
            except (StreamClosedError, ProtocolError):
                return
            self._flush()

    def send(self, stream_id: int, queue: deque[Union[bytes, memoryview]], end: bool) -> tuple[int, bool]:
        """
        Send what the windows admit of queue (taken from its left), then
        END_STREAM if end and all was sent.

        :returns: bytes sent and whether the stream was ended.
        """
        if self._closed or self._paused:
            return 0, False
        h2, sent = self._h2, 0
        try:
            # Only these sends lower the window while this runs.
            window, most = h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size
            if queue and window > 0:
                self._take_output()  # h2's frames so far go out before these
            out = self._out
            while queue and window > 0:
                # One DATA frame: its header and the pieces that fill it (views, not copies; the TLS transport
                # joins them into records).
                room, size, head_at = min(window, most), 0, len(out)
                out.append(b"")  # (the header, once the size is known)
                while queue and size < room:
                    piece = queue.popleft()
                    if len(piece) > room - size:
                        view = memoryview(piece)
                        queue.appendleft(view[room - size:])
                        piece = view[:room - size]
                    out.append(piece)
                    size += len(piece)
                try:
                    out[head_at] = data_frame_head(h2, stream_id, size)
                except BaseException:
                    del out[head_at:]  # no payload without its header on the wire
                    raise
                self._out_size += size + 9
                sent += size
                window -= size
            ended = end and not queue
            if ended:
                h2.end_stream(stream_id)
        except (StreamClosedError, ProtocolError):
            queue.clear()
            return sent, True
        self._flush()
        return sent, ended

    def reset(self, stream_id: int, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        """Reset a stream (and forget it)."""
        self._streams.pop(stream_id, None)
        self._opened.pop(stream_id, None)
        self._reset(stream_id, code)
        self._arm_idle()

    def _reset(self, stream_id: int, code: ErrorCodes) -> None:
        if not self._closed:
            try:
                self._h2.reset_stream(stream_id, code)
            except (StreamClosedError, ProtocolError):
                pass
            self._flush()

    def closed(self, stream_id: int) -> None:
        """A stream ended both ways: forget it."""
        self._streams.pop(stream_id, None)
        self._opened.pop(stream_id, None)
        self._arm_idle()

    def _push_all(self) -> None:
        for stream in list(self._streams.values()):
            stream.push()

    def _flush(self) -> None:
        """
        Take h2's output: written at the end of this turn of the reactor with
        whatever else the connection's streams answer in it (one TLS record
        and one system call for many small frames), at once from WRITE_BATCH bytes.
        """
        self._take_output()
        if not self._out or self._closed:
            return
        if self._out_size >= WRITE_BATCH:
            self._write_out()
        elif self._write_call is None:
            self._write_call = self.server.reactor.callLater(0, self._write_out)

    def _take_output(self) -> None:
        """h2's output so far, to what is written next (before any DATA frame sent beside h2)."""
        data = self._h2.data_to_send()
        if data and not self._closed:
            self._out.append(data)
            self._out_size += len(data)

    def _write_out(self) -> None:
        if self._write_call is not None:
            if self._write_call.active():
                self._write_call.cancel()
            self._write_call = None
        out, self._out, self._out_size = self._out, [], 0
        if len(out) == 1:
            self.transport.write(out[0])
        elif out:
            # One buffer, one copy: OpenSSL makes its records from it in one call (handed over as pieces, the TLS
            # transport would join each record's pieces and make a call per record).
            self.transport.write(b"".join(out))

    def _arm_idle(self) -> None:
        """Without streams the connection lives idle_timeout seconds (at once when going away)."""
        if self._streams or self._closed or (self._idle is not None and self._idle.active()):
            return
        if self._going_away:
            self._close()
            return
        self._idle = self.server.reactor.callLater(self.server.idle_timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle = None
        if not self._streams and not self._closed:
            self.go_away()

    # What streams read of the connection.

    def peer(self) -> Any:
        """The client's address."""
        return self.transport.getPeer()

    def host(self) -> Any:
        """The listener's address."""
        return self.transport.getHost()

    def peer_certificate(self) -> Any:
        """The client's verified certificate (pyOpenSSL), None without one."""
        return self.transport.getPeerCertificate() if ISSLTransport.providedBy(self.transport) else None


class _Outgoing:
    """A stream's side towards the client: the queue, its bound, the end."""

    def __init__(self, connection: Http2Connection, stream_id: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.queue: deque[Union[bytes, memoryview]] = deque()
        self.queued = 0
        self.ending = False
        self.ended = False  # END_STREAM sent
        self.remote_done = False  # the client's END_STREAM received
        self.gone = False
        self.producer: Any = None
        self.producer_paused = False
        #: The producer is a pull one (a file): asked for more while the queue is low.
        self.pull = False
        self._asking = False
        self.limit = STREAM_BUFFER

    def queue_data(self, *pieces: bytes) -> None:
        if self.ending or self.gone:
            return
        for data in pieces:
            if data:
                self.queue.append(data)
                self.queued += len(data)
        self.push()
        if self.queued > self.limit and self.producer is not None and not self.pull and not self.producer_paused:
            self.producer_paused = True
            self.producer.pauseProducing()

    def push(self) -> None:
        """Send what the windows admit; resume the producer once the queue is low again."""
        if self.gone or self.ended:
            return
        sent, ended = self.connection.send(self.stream_id, self.queue, self.ending)
        self.queued -= sent
        if sent:
            self.progressed()
        if ended:
            self.ended = True
            self.queue.clear()
            self.queued = 0
            self.ended_here()
            return
        if self.queued > self.limit // 2 or self.producer is None:
            return
        if self.pull:
            if not self._asking:
                # Not from inside a write: the producer's next write would come back here.
                self._asking = True
                self.connection.server.reactor.callLater(0, self._ask)
        elif self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()

    def _ask(self) -> None:
        self._asking = False
        if self.producer is not None and self.pull and not self.gone:
            self.producer.resumeProducing()

    def end(self) -> None:
        if not self.ending and not self.gone:
            self.ending = True
            self.push()

    def ended_here(self) -> None:
        """END_STREAM went out."""

    def progressed(self) -> None:
        """Some of the queue went out to the client."""

    # What a TCP transport has (the connection's; the stream has no socket of its own).

    def getPeer(self) -> Any:
        """The client's address (the connection's)."""
        return self.connection.peer()

    def getHost(self) -> Any:
        """The listener's address (the connection's)."""
        return self.connection.host()

    def getPeerCertificate(self) -> Any:
        """The client's verified TLS certificate (the connection's)."""
        return self.connection.peer_certificate()

    def setTcpNoDelay(self, enabled: bool) -> None:
        """The connection's socket is the TLS listener's (TCP_NODELAY set there)."""

    def getTcpNoDelay(self) -> bool:
        """The listener sets TCP_NODELAY on its connections."""
        return True

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """Keepalive is the connection's, not a stream's."""

    def getTcpKeepAlive(self) -> bool:
        """Keepalive is the connection's, not a stream's."""
        return False

    def loseWriteConnection(self) -> None:
        """End the stream our way (the client may still send until it ends its side)."""
        self.end()



@implementer(ITransport, IConsumer, IPushProducer, ISSLTransport)
class StreamTransport(_Outgoing):
    """
    A WebSocket session's transport on one stream: writes are DATA frames
    (the first head, the session's ``101`` or refusal, becomes the response
    headers), ``loseConnection`` ends the stream, ``abortConnection``
    resets it; addresses and the client certificate are the connection's.
    """

    def __init__(self, connection: Http2Connection, stream_id: int) -> None:
        super().__init__(connection, stream_id)
        self.protocol: Any = None
        self.bufferSize = STREAM_BUFFER
        self.disconnected = False
        self._head = b""
        self._answered = False
        self._reading_paused = False
        self._held: deque[tuple[bytes, int]] = deque()
        self._linger: Any = None

    # ITransport

    def write(self, data: bytes) -> None:
        """Bytes for the client (the first ones: the HTTP/1.1 response head, sent as headers)."""
        if not self._answered:
            self._head += data
            end = find_head_end(self._head)
            if end < 0:
                return
            head, data, self._head = self._head[:end], self._head[end:], b""
            self._answered = True
            try:
                status, fields = response_head(head)
            except ValueError:
                self.abortConnection()
                return
            self.connection.send_headers(self.stream_id, [(b":status", b"%d" % status)] + fields)
        self.limit = max(self.bufferSize, 1)
        self.queue_data(data)

    def writeSequence(self, data: Any) -> None:
        """Several writes as one (a WebSocket frame's header and payload: queued as they are, not joined)."""
        if not self._answered:
            self.write(b"".join(data))
            return
        self.limit = max(self.bufferSize, 1)
        self.queue_data(*data)

    def loseConnection(self) -> None:
        """End the stream once what is queued is sent."""
        self.end()

    def abortConnection(self) -> None:
        """Reset the stream now."""
        if not self.gone:
            self.connection.reset(self.stream_id)
            self.lost(error.ConnectionAborted())

    # IConsumer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """The session's gate: paused while this stream's queue is over its bound."""
        self.producer = producer
        self.producer_paused = False

    def unregisterProducer(self) -> None:
        """No producer any more."""
        self.producer = None

    # IPushProducer: the session pauses reading the client.

    def pauseProducing(self) -> None:
        """Hold what the client sends (unacknowledged: the client's window closes)."""
        self._reading_paused = True

    def resumeProducing(self) -> None:
        """Deliver what was held, and read on (then the client's end, if it came)."""
        self._reading_paused = False
        while self._held and not self._reading_paused and not self.gone:
            data, length = self._held.popleft()
            self.protocol.dataReceived(data)
            self.connection.acknowledge(self.stream_id, length)
        if self.remote_done and not self._held:
            self._remote_fin()

    def stopProducing(self) -> None:
        """Reset the stream."""
        self.abortConnection()

    # From the connection.

    def received(self, data: bytes, length: int) -> None:
        """DATA from the client: to the session, or held while it is paused."""
        if self.gone or not data:  # (an empty frame, END_STREAM's or padding only, holds nothing back)
            self.connection.acknowledge(self.stream_id, length)  # the connection's window, not lost with the stream
            return
        if self._reading_paused or self._held:
            self._held.append((data, length))
            return
        self.protocol.dataReceived(data)
        self.connection.acknowledge(self.stream_id, length)

    def remote_ended(self) -> None:
        """
        The client ended its side: after our END_STREAM the stream is done; on
        a live session it is the FIN of RFC 8441 and ends the session as a
        connection loss does (once what was held for a paused session is read).
        """
        self.remote_done = True
        if self.ended:
            self.connection.closed(self.stream_id)
            self.lost(error.ConnectionDone())
        elif not self._held:
            self._remote_fin()

    def _remote_fin(self) -> None:
        if self.ending or self.gone:
            return  # our END_STREAM follows what is queued (the session bounds that wait), or all is over
        # Our side ends too: END_STREAM if what is queued goes out now, else a reset (NO_ERROR; CANCEL
        # before the session answered, when there are no response headers to end).
        if not self._answered:
            self.connection.reset(self.stream_id, ErrorCodes.CANCEL)
            self.lost(error.ConnectionDone("the client ended the stream before its answer"))
            return
        _, ended = self.connection.send(self.stream_id, self.queue, True)
        self.ended = ended
        if ended:
            self.connection.closed(self.stream_id)
        else:
            self.connection.reset(self.stream_id, ErrorCodes.NO_ERROR)
        self.lost(error.ConnectionDone("the client ended the stream"))

    def ended_here(self) -> None:
        """Our END_STREAM went out: the session is done; the client's end is awaited (bounded)."""
        if self.remote_done:
            self.connection.closed(self.stream_id)
        self.lost(error.ConnectionDone())
        if not self.remote_done:
            self._linger = self.connection.server.reactor.callLater(CLOSE_TIMEOUT, self._linger_over)

    def _linger_over(self) -> None:
        self._linger = None
        self.connection.reset(self.stream_id, ErrorCodes.NO_ERROR)

    def lost(self, reason: BaseException) -> None:
        """The stream is over for the session: its connectionLost, once (and no wait for the client's end)."""
        if self._linger is not None:
            if self._linger.active():
                self._linger.cancel()
            self._linger = None
        if self.gone and self.protocol is None:
            return
        self.gone = True
        self.disconnected = True
        held, self._held = self._held, deque()
        self.connection.acknowledge(self.stream_id, sum(length for _, length in held))
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connectionLost(Failure(reason))


@implementer(ITransport, ISSLTransport)
class _RequestStream(_Outgoing):
    """
    A plain request on one stream, answered by the gateway's twisted.web
    site: the channel a ``Request`` writes to (``writeHeaders``, ``write``,
    ``requestDone``; twisted.web's channel interface).
    """

    def __init__(self, connection: Http2Connection, stream_id: int, checked: StreamRequest) -> None:
        super().__init__(connection, stream_id)
        self._checked = checked
        server = connection.server
        self.site = self.factory = server.site
        self.transport = self
        self.request: Optional[Request] = None
        self._body = BytesIO()
        self._deadline: Any = server.reactor.callLater(server.idle_timeout, self._expired)

    def start(self) -> None:
        """The request head is here; a refusal of the head itself is answered now."""
        if self._checked.refusal is not None:
            self._answer_reject(self._checked.refusal)

    def _answer_reject(self, reject: Reject) -> None:
        # The deadline goes on: it bounds the wait for the client to take the answer.
        log_refusal(format_address(self.connection.peer()), "-", reject, "request")
        answer = http_error(reject.status, reject.reason)
        head_end = find_head_end(answer)
        status, fields = response_head(answer[:head_end])
        self.connection.send_headers(self.stream_id, [(b":status", b"%d" % status)] + fields)
        self.queue_data(answer[head_end:])
        self.end()

    def _expired(self) -> None:
        self._deadline = None
        if self.gone or self.ended:
            return
        self.connection.reset(self.stream_id, ErrorCodes.CANCEL)
        if self.remote_done:
            self.lost(error.TimeoutError("the client took nothing of the answer in time"))
        else:
            self.lost(error.TimeoutError("the request was not complete in time"))

    def _restart_deadline(self) -> None:
        self._stop_deadline()
        self._deadline = self.connection.server.reactor.callLater(self.connection.server.idle_timeout, self._expired)

    def progressed(self) -> None:
        """Bytes of the answer went out: the client reads, the stall deadline starts again."""
        if self.remote_done and self._deadline is not None:
            self._restart_deadline()

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def received(self, data: bytes, length: int) -> None:
        """Body bytes (bounded)."""
        self.connection.acknowledge(self.stream_id, length)
        if self.gone or self._checked.refusal is not None:
            return
        if self._body.tell() + len(data) > _MAX_BODY:
            too_large = Reject(413, "request body too large for this gateway")
            self._checked = StreamRequest(self._checked.head, refusal=too_large)
            self._answer_reject(too_large)
            return
        self._body.write(data)

    def remote_ended(self) -> None:
        """The request is complete: answer it (twisted.web)."""
        self.remote_done = True
        if self.ended:
            self.connection.closed(self.stream_id)
            return
        if self._checked.refusal is not None:
            return
        # From here the answer's deadline: idle_timeout without a byte taken by the client.
        self._restart_deadline()
        head = self._checked.head
        request = self.request = self.site.requestFactory(self)
        for name, value in head.headers:
            request.requestHeaders.addRawHeader(name, value)
        request.gotLength(None)
        request.handleContentChunk(self._body.getvalue())
        request.requestReceived(head.method, head.target, b"HTTP/2")

    def ended_here(self) -> None:
        """The answer is sent: a client still sending its request is told to stop (RFC 9113 8.1)."""
        self._stop_deadline()
        if self.remote_done:
            self.connection.closed(self.stream_id)
        else:
            self.connection.reset(self.stream_id, ErrorCodes.NO_ERROR)
            self.lost(error.ConnectionDone())

    def lost(self, reason: BaseException) -> None:
        """The stream or connection is gone before the answer was done."""
        if self.gone:
            return
        self.gone = True
        self._stop_deadline()
        request, self.request = self.request, None
        if request is not None and not request.finished:
            request.connectionLost(Failure(reason))

    # twisted.web's channel interface, for Request.

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        """The response headers (connection-specific ones left out)."""
        fields = [(b":status", code)] + [(name.lower(), value) for name, values in headers.getAllRawHeaders()
                                          for value in values
                                          if name.lower() not in (b"connection", b"transfer-encoding", b"keep-alive")]
        self.connection.send_headers(self.stream_id, fields)

    def write(self, data: bytes) -> None:
        """Body bytes."""
        self.queue_data(data)

    def writeSequence(self, data: Any) -> None:
        """Body bytes."""
        self.queue_data(b"".join(data))

    def requestDone(self, request: Any) -> None:
        """The answer is complete: END_STREAM once it is sent."""
        self.request = None
        self.end()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """A producer of the answer (a file): paused while the stream's queue is over its bound."""
        self.producer = producer
        self.producer_paused = False
        self.pull = not streaming
        if self.pull:
            self.push()

    def unregisterProducer(self) -> None:
        """No producer any more."""
        self.producer = None

    def isSecure(self) -> bool:
        """Always TLS."""
        return True

    def loseConnection(self) -> None:
        """End the stream (after the answer)."""
        self.end()

    def abortConnection(self) -> None:
        """Reset the stream."""
        self.connection.reset(self.stream_id)
        self.lost(error.ConnectionAborted())

    def _respondToBadRequestAndDisconnect(self) -> None:
        """twisted.web found the request bad: 400."""
        self._answer_reject(Reject(400, "bad request"))


def negotiated_h2(transport: Any) -> bool:
    """Whether ALPN chose ``h2`` on transport."""
    return bool(INegotiated.providedBy(transport) and transport.negotiatedProtocol == b"h2")

