"""
``replay:FOLDER`` routes: a recording played back as if it were the desktop.

``ProxyPass /replay replay:/var/lib/tunnelgw/recordings`` makes
``ws://gateway/replay/ID`` send what the backend of session ID sent, with its
original timing (``speed=`` scales it); what the client sends is read and
dropped, so noVNC shows the session exactly as its user saw it, view only.
At the end of the recording the connection stays open, showing the last
screen, until the viewer leaves (or the route's idle timeout ends it).
The recording is read and parsed off the reactor thread, a batch ahead of
playback; playback waits while the client does not read (the link's
transport is a push producer the session pauses), so memory stays at about
two batches.

A recording is opened as Alias opens files, stricter: only a regular file
directly in the folder, never through a symbolic link
(:func:`tunnelgw.files.open_inside`); anything else there is "no such
recording" (404).  A file that cannot be read or parsed is answered with a
generic 502 (or close reason) and the details go to the log only: a reason
never quotes the file's bytes.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Iterator, Optional

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from tunnelgw.backends import BackendRefused, Carries, LinkOwner
from tunnelgw.core.handshake import Handshake
from tunnelgw.core.recording import Frame, parse_recording, recording_name
from tunnelgw.core.relay import CLOSE_BACKEND_FAILED, Close, choose_subprotocol
from tunnelgw.core.routing import Reject
from tunnelgw.files import open_inside

__all__ = ["BATCH_BYTES", "ReplayLink", "UNREADABLE"]

_log = Logger(namespace="tunnelgw")

#: Payload bytes read from a recording per batch (one batch is played while the next is read).
BATCH_BYTES = 1 << 20
#: What a client is told when a recording cannot be read (the details are logged).
UNREADABLE = "the recording cannot be read"


def _why(error: BaseException) -> str:
    """A log line's account of a read error that quotes none of the file's bytes."""
    if isinstance(error, UnicodeDecodeError):
        return f"not ASCII text (byte {error.start} of a read)"
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return str(error) if isinstance(error, ValueError) and str(error).startswith("line ") else type(error).__name__


@implementer(IPushProducer)
class _Playback:
    """The link's transport: a producer the session pauses while its client does not read."""

    bufferSize = 0
    producerPaused = False

    def __init__(self, link: "ReplayLink") -> None:
        self._link = link

    def pauseProducing(self) -> None:
        self.producerPaused = True
        self._link.paused()

    def resumeProducing(self) -> None:
        self.producerPaused = False
        self._link.resumed()

    def stopProducing(self) -> None:
        self._link.close()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """The client would be paused when the backend is full: a replay never is."""

    def unregisterProducer(self) -> None:
        """Nothing was registered for real."""


class ReplayLink:
    """
    One playback.

    :param remainder: the request path after the route's prefix: ``/ID``.
    """

    carries = Carries.PAYLOAD

    def __init__(self, reactor: Any, folder: str, remainder: str, speed: float) -> None:
        self._reactor = reactor
        self._folder = folder
        self._remainder = remainder
        self._speed = speed
        self.description = f"replay:{folder}{remainder}"
        self.transport: Any = None
        self._owner: Optional[LinkOwner] = None
        self._subprotocol: Optional[str] = None
        self._path = ""
        self._frames: Optional[Iterator[Frame]] = None
        self._file: Any = None
        self._batch: list[Frame] = []
        self._next: Optional[defer.Deferred[tuple[list[Frame], bool]]] = None
        self._ended = False
        self._finished = False
        self._unreadable = False  # a later batch could not be read: end (1011) once the earlier frames are played
        self._closed = False
        self._timer: Any = None
        self._start = 0.0
        self._paused_at: Optional[float] = None

    def check(self, handshake: Handshake) -> Optional[Reject]:
        """The recording must exist; ``binary`` or ``base64`` as for any byte stream."""
        chosen = choose_subprotocol(handshake.protocols)
        if isinstance(chosen, Reject):
            return chosen
        self._subprotocol = chosen
        try:
            name = recording_name(self._remainder.lstrip("/"))
        except ValueError:
            return Reject(404, "no such recording")
        self._path = os.path.join(self._folder, name)
        try:
            if not stat.S_ISREG(os.lstat(self._path).st_mode):  # a link or anything else: not a recording
                return Reject(404, "no such recording")
        except OSError:
            return Reject(404, "no such recording")
        return None

    def connect(self) -> "defer.Deferred[Optional[str]]":
        """Open the recording and read its first batch (off the reactor thread)."""
        self.transport = _Playback(self)

        def opened(first: tuple[list[Frame], bool]) -> Optional[str]:
            self._batch, self._ended = first
            return self._subprotocol

        def failed(failure: Any) -> Any:
            failure.trap(OSError, ValueError)
            if isinstance(failure.value, (FileNotFoundError, PermissionError)):
                raise BackendRefused(Reject(404, "no such recording"), "backend")
            _log.warn("replay refused: {recording} cannot be read: {why}", recording=self.description,
                      why=_why(failure.value))
            raise BackendRefused(Reject(502, UNREADABLE), "backend_unreadable")

        d = self._in_thread(self._open_and_read)
        return d.addCallbacks(opened, failed)

    def _in_thread(self, work: Any) -> "defer.Deferred[tuple[list[Frame], bool]]":
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), work)

    def _open_and_read(self) -> tuple[list[Frame], bool]:
        fd = open_inside(self._folder, os.path.basename(self._path))
        self._file = os.fdopen(fd, encoding="ascii", errors="strict")
        self._frames = parse_recording(self._file)
        return self._read()

    def _read(self) -> tuple[list[Frame], bool]:
        """In a thread: up to BATCH_BYTES of frames sent to the client; True when the recording ended."""
        batch: list[Frame] = []
        size = 0
        assert self._frames is not None
        for frame in self._frames:
            if frame.to_client and frame.data:
                batch.append(frame)
                size += len(frame.data)
                if size >= BATCH_BYTES:
                    return batch, False
        return batch, True

    def start(self, owner: LinkOwner) -> None:
        """Play from the first frame, timed from now."""
        self._owner = owner
        self._start = self._reactor.seconds()
        self._play()

    def _play(self) -> None:
        self._timer = None
        if self._closed or self._owner is None or self._paused_at is not None:
            return
        now = self._reactor.seconds()
        while self._batch:
            due = self._start + self._batch[0].ms / 1000.0 / self._speed
            if due > now:
                self._timer = self._reactor.callLater(due - now, self._play)
                break
            self._owner.backend_data(self._batch.pop(0).data)
            if self._closed or self._paused_at is not None:
                return
        if self._batch and self._next is None and not self._ended and len(self._batch) < 64:
            self._fetch()
        if not self._batch:
            if self._unreadable:  # what was read before the unreadable part has been played
                self._owner.backend_lost(Close(CLOSE_BACKEND_FAILED, UNREADABLE))
            elif self._ended:
                if not self._finished:
                    self._finished = True
                    _log.info("replay finished: the last screen stays until the viewer leaves ({recording})",
                              recording=self.description)
            elif self._next is None:
                self._fetch()

    def _fetch(self) -> None:
        self._next = self._in_thread(self._read)

        def arrived(result: tuple[list[Frame], bool]) -> None:
            self._next = None
            if self._closed:
                return
            more, self._ended = result
            self._batch.extend(more)
            if self._timer is None:
                self._play()

        def failed(failure: Any) -> None:
            self._next = None
            if not self._closed and self._owner is not None:
                _log.warn("replay stopped: {recording} cannot be read: {why}", recording=self.description,
                          why=_why(failure.value))
                # The frames read before are played first, then the session ends (1011).
                self._unreadable = self._ended = True
                if self._timer is None:
                    self._play()

        self._next.addCallbacks(arrived, failed)

    def paused(self) -> None:
        if self._paused_at is None:
            self._paused_at = self._reactor.seconds()
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None

    def resumed(self) -> None:
        if self._paused_at is not None:
            self._start += self._reactor.seconds() - self._paused_at  # timing resumes where it stopped
            self._paused_at = None
            if self._timer is None:
                self._play()

    # What the client sends is not the desktop's business: read and dropped.

    def client_payloads(self, payloads: list[bytes]) -> None:
        """Ignored: a replay takes no input."""

    def client_frames(self, frames: bytes, left: int) -> None:
        """Not used: a replay takes payloads."""
        raise NotImplementedError("replay links take payloads")

    def client_close(self, code: Optional[int], reason: Optional[str]) -> None:
        """Nothing to pass on."""

    def close(self, close: Optional[Close] = None) -> None:
        """Stop playing and close the file (in the thread that reads it); once."""
        if self._closed:
            return
        self._closed = True
        self._owner = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        file, self._file = self._file, None
        if file is not None:
            pending = self._next if self._next is not None else defer.succeed(None)
            pending.addBoth(lambda _: self._in_thread(file.close))
