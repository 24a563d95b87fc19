"""
Session recording (``Recording FOLDER ...`` and ``record=on`` on a route).

A recorded session's backend link is wrapped in a :class:`RecordingLink`:
what the client sends and what the backend sends pass through it to a
:class:`Recorder`, which timestamps the chunks and hands them in batches to
one writer thread (:class:`Writer`: a thread and the standard library's
C-implemented :class:`queue.SimpleQueue`; Twisted's ``ThreadPool`` of one
took the GIL for its Python queue, context and coordinator on every batch,
and answered each on the reactor's waker).  The relay never waits for the
disk: a batch is submitted every :data:`FLUSH_BYTES` or
:data:`FLUSH_SECONDS`; when more than
:data:`MAX_PENDING` bytes are waiting for the disk, or a write fails (disk
full, folder gone), the *recording* stops, the session goes on, and the log
and ``tunnelgw_recordings_total{outcome}`` say why.  Recordings stop cleanly
(a valid file) at ``maxbytes`` or ``maxseconds``.  Files are
``FOLDER/SESSIONID.js``, created mode 0600 (never over an existing file), in
websockify's record format (:mod:`tunnelgw.core.recording`).  Recordings
older than ``keepdays`` are deleted at start and every hour: only regular
files named as the gateway names them (:func:`~tunnelgw.core.recording.is_recording_name`),
never another file, link or folder; and the gateway refuses to start with
``keepdays`` on a folder that holds anything else, unless ``shared=on``
(see :func:`foreign_entries`).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections import deque
from queue import SimpleQueue
from typing import Any, Callable, Optional

from prometheus_client import CollectorRegistry, Counter
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from tunnelgw.backends import BackendLink, LinkOwner, WrappedLink
from tunnelgw.core.config import Recording
from tunnelgw.core.recording import FOOTER, HEADER, Frame, encode_frames, is_recording_name, recording_name
from tunnelgw.core.relay import Close
from tunnelgw.core.sessionrelay import Carries, Forward, Role, SessionRelay
from tunnelgw.upstream import unmask

__all__ = ["FLUSH_BYTES", "FLUSH_SECONDS", "LISTED", "MAX_PENDING", "STOP_SECONDS", "Recorder", "Recordings",
           "RecordingLink", "Writer", "folder_problem", "foreign_entries", "make_folder", "newest_recordings",
           "write_all"]

_log = Logger(namespace="tunnelgw")
#: A recorder submits its buffered chunks once this many bytes wait...
FLUSH_BYTES = 256 * 1024
#: ...or this many seconds after the first of them.
FLUSH_SECONDS = 0.5
#: Bytes of one recording submitted to the writer and not yet written; beyond it the recording stops.
MAX_PENDING = 16 * 1024 * 1024
#: How long stopping the gateway waits for the writer to write what is queued (a hung disk).
STOP_SECONDS = 10.0


#: How many recordings the operator's page lists (the newest).
LISTED = 50
#: Recordings that stopped early kept for the operator's page.
STOPPED_LISTED = 20


def newest_recordings(folder: str, count: int = LISTED) -> list[tuple[str, int, float]]:
    """(name, bytes, modified) of the newest recordings in folder; [] when it cannot be read."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if is_recording_name(entry.name) and entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    found.append((entry.name, info.st_size, info.st_mtime))
    except OSError:
        return []
    return sorted(found, key=lambda r: r[2], reverse=True)[:count]


def _parent(folder: str) -> str:
    return os.path.dirname(folder.rstrip("/")) or "/"


def folder_problem(folder: str) -> Optional[str]:
    """
    Why folder cannot hold the gateway's recordings (the end of a sentence
    about it), or None.  A folder that does not exist yet is fine when its
    parent is a folder the gateway may write to: :func:`make_folder` makes
    it at start.  In a parent every user may write to (``/var/tmp``) the
    folder must be a real folder of the gateway's own user that no one else
    can use: another user could have made it first, and read the desktops.
    """
    parent = _parent(folder)
    try:
        found = os.lstat(folder)
        open_parent = bool(os.stat(parent).st_mode & stat.S_IWOTH)
    except FileNotFoundError:
        if not os.path.isdir(parent):
            return f"does not exist, nor does its parent {parent!r}"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"does not exist, and its parent {parent!r} is not writable to make it"
        return None
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    if open_parent:
        if stat.S_ISLNK(found.st_mode):
            return f"is a symbolic link in {parent!r}, which every user may write to"
        if found.st_uid != os.geteuid():
            return f"belongs to another user (uid {found.st_uid}) in {parent!r}, which every user may write to"
        if found.st_mode & 0o077:
            return (f"is in {parent!r}, which every user may write to, and others can use it "
                    f"(mode {stat.S_IMODE(found.st_mode):04o}): chmod 700 it")
    return None if os.path.isdir(folder) else "is not an existing folder"


def make_folder(folder: str) -> None:
    """
    Make folder (mode 0700, one level: its parent exists) when it does not
    exist; a failure is logged (each recording then stops with ``error``).
    """
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        return
    except OSError as e:
        _log.error("Recording folder {folder!r} cannot be made: {why}", folder=folder, why=e.strerror)
        return
    _log.info("Recording folder {folder!r} made (mode 0700)", folder=folder)


def foreign_entries(folder: str) -> list[str]:
    """
    The names in folder that are not recordings of the gateway (other names,
    links, folders, devices), sorted; what makes retention refuse the folder.

    :raises OSError: when the folder cannot be read.
    """
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not (is_recording_name(e.name) and e.is_file(follow_symlinks=False)))


class Writer:
    """
    One thread that runs work in submission order: the recordings' writer.
    Handing work over is a C-level queue put; the thread takes the GIL only
    to run the work (whose writes release it).  Work that raises is logged;
    the thread goes on.
    """

    def __init__(self, name: str) -> None:
        self._queue: SimpleQueue[Optional[tuple[Callable[..., None], tuple[Any, ...]]]] = SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, work: Callable[..., None], *args: Any) -> None:
        self._queue.put((work, args))

    def stop(self, timeout: float = STOP_SECONDS) -> bool:
        """Run what is queued, then end the thread; False if that took longer than timeout (the thread is left)."""
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            work, args = item
            try:
                work(*args)
            except Exception:
                _log.failure("recording writer: {work!r} failed", work=work)


class Recordings:
    """
    The recordings of one gateway: the writer thread, retention and metrics.

    :param run_in_thread: how work reaches the writer (tests pass a direct call).
    """

    def __init__(self, reactor: Any, spec: Optional[Recording], registry: CollectorRegistry,
                 run_in_thread: Optional[Callable[..., None]] = None,
                 call_from_thread: Optional[Callable[..., None]] = None) -> None:
        self.reactor = reactor
        self.spec = spec
        self.outcomes = Counter("tunnelgw_recordings", "Recordings ended, by how", ["outcome"], registry=registry)
        #: The latest recordings that stopped before their session ended:
        #: (time, session, file, outcome, why), for the operator's page.
        self.stopped: deque[tuple[float, str, str, str, str]] = deque(maxlen=STOPPED_LISTED)
        self._writer: Optional[Writer] = None
        self._run = run_in_thread
        self._call_from_thread = call_from_thread
        self._retention: Optional[LoopingCall] = None

    def start(self) -> None:
        """Make the folder if it is missing, start the writer thread and the retention sweep."""
        if self.spec is not None:
            make_folder(self.spec.folder)
        if self._run is None:
            self._writer = Writer("tunnelgw-recordings")
            self._writer.start()
        self._retention = LoopingCall(lambda: self.run(self._sweep, self.spec))
        self._retention.clock = self.reactor
        self._retention.start(3600, now=True)

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """
        Write what is queued, then stop the thread (called after the sessions
        ended); a disk that takes longer than timeout seconds is left behind, said in the log.
        """
        if self._retention is not None and self._retention.running:
            self._retention.stop()
        writer, self._writer = self._writer, None
        if writer is not None and not writer.stop(timeout):
            _log.error("Recordings: the disk took more than {seconds:g} s to write what was queued; "
                       "recordings under way may be cut short (they still replay)", seconds=timeout)

    def reconfigure(self, spec: Optional[Recording]) -> None:
        """New recordings follow spec (reload; a new folder is made); recordings under way keep their limits."""
        if spec is not None and self._retention is not None and (self.spec is None or spec.folder != self.spec.folder):
            make_folder(spec.folder)
        self.spec = spec

    def call_from_thread(self, work: Callable[..., None], *args: Any) -> None:
        """From the writer thread: run work on the reactor thread."""
        (self._call_from_thread or self.reactor.callFromThread)(work, *args)

    def run(self, work: Callable[..., None], *args: Any) -> None:
        """Run work on the writer thread, in submission order."""
        if self._run is not None:
            self._run(work, *args)
        elif self._writer is not None:
            self._writer.submit(work, *args)

    def _sweep(self, spec: Optional[Recording]) -> None:
        """In the writer thread: delete the gateway's recordings older than ``keepdays`` (no other file)."""
        if spec is None or not spec.keep_days:
            return
        cutoff = time.time() - spec.keep_days * 86400
        try:
            entries = list(os.scandir(spec.folder))
        except OSError:
            return
        for entry in entries:
            try:
                if is_recording_name(entry.name) and entry.is_file(follow_symlinks=False) \
                        and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
            except OSError:
                continue

    def link(self, inner: BackendLink, session_id: str) -> "RecordingLink":
        """inner, recorded as session session_id."""
        assert self.spec is not None, "the parser refuses record=on without Recording"
        return RecordingLink(inner, Recorder(self, self.spec, session_id))


#: Pieces one vectored write takes (Linux's IOV_MAX).
_IOV_MAX = 1024


def write_all(fd: int, parts: list[bytes]) -> None:
    """
    Write parts one after another with ``writev``, all of them: a regular
    file takes less than asked only when the disk is full, and then the
    next write raises (ENOSPC) rather than loop; a write that takes nothing
    raises too.
    """
    views = [memoryview(p) for p in parts if p]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first:first + _IOV_MAX])
        if written <= 0:
            raise OSError(errno.ENOSPC, "the recording's file took no bytes")
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]


class Recorder:
    """
    One session's recording.

    :ivar outcome: None while recording; then ``complete``, ``size_limit``,
        ``age_limit``, ``too_slow`` or ``error``.
    """

    def __init__(self, recordings: Recordings, spec: Recording, session_id: str) -> None:
        self._recordings = recordings
        self._reactor = recordings.reactor
        self._spec = spec
        self.session_id = session_id
        self.name = recording_name(session_id)
        self.path = os.path.join(spec.folder, self.name)
        self.outcome: Optional[str] = None
        self._start = self._reactor.seconds()
        self._frames: list[Frame] = []
        self._buffered = 0
        # Bytes the writer is done with, written by the writer thread only: what waits for the disk is
        # _total less the buffered bytes less _done, read here without a call back to the reactor per batch.
        self._done = 0
        self._total = 0
        self._timer: Any = None
        # Used on the writer thread only.
        self._fd: Optional[int] = None
        self._broken = False

    def add(self, to_client: bool, data: bytes) -> None:
        """A chunk relayed now, to the client (from the backend) or from it."""
        if self.outcome is not None or not data:
            return
        elapsed = self._reactor.seconds() - self._start
        if elapsed > self._spec.max_seconds:
            self.stop("age_limit")
            return
        if self._total + len(data) > self._spec.max_bytes:
            self.stop("size_limit")
            return
        self._frames.append(Frame(to_client, int(elapsed * 1000), bytes(data)))
        self._total += len(data)
        self._buffered += len(data)
        if self._buffered >= FLUSH_BYTES:
            self._flush()
        elif self._timer is None:
            self._timer = self._reactor.callLater(FLUSH_SECONDS, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        frames, size = self._frames, self._buffered
        self._frames, self._buffered = [], 0
        if not frames:
            return
        if self._total - self._done > MAX_PENDING:  # every byte recorded so far is this batch or handed over
            self.stop("too_slow", f"more than {MAX_PENDING} bytes wait for the disk")
            return
        self._recordings.run(self._write, frames, size)

    def _write(self, frames: list[Frame], size: int) -> None:
        """On the writer thread: append frames (creating the file first)."""
        try:
            if not self._broken:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    write_all(self._fd, [HEADER])
                write_all(self._fd, encode_frames(frames))
        except OSError as e:
            self._broken = True
            self._close_file()
            self._recordings.call_from_thread(self.stop, "error", str(e))
        finally:
            self._done += size  # this thread's only write to the recorder (an int: the reactor reads it whole)

    def _finish(self) -> None:
        """On the writer thread: end the JavaScript array and close the file."""
        if self._fd is not None and not self._broken:
            try:
                write_all(self._fd, [FOOTER])
            except OSError:
                pass
        self._close_file()

    def _close_file(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def stop(self, outcome: str, why: str = "") -> None:
        """End the recording (the session goes on); the first outcome counts."""
        if self.outcome is not None:
            return
        if outcome == "complete" and self._total == 0:
            self.outcome = outcome  # nothing was relayed (a refused handshake): no file, nothing to count
            return
        if outcome in ("complete", "size_limit", "age_limit"):
            self._flush()
        self.outcome = outcome
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._frames, self._buffered = [], 0
        self._recordings.run(self._finish)
        self._recordings.outcomes.labels(outcome).inc()
        if outcome != "complete":
            self._recordings.stopped.append((self._recordings.reactor.seconds(), self.session_id, self.path, outcome,
                                             why or "(the session goes on)"))
            level = _log.info if outcome in ("size_limit", "age_limit") else _log.warn
            level("recording stopped session={session} file={file} outcome={outcome} {why}", session=self.session_id,
                  file=self.path, outcome=outcome, why=why or "(the session goes on)")


class _PayloadTap:
    """
    The payloads of a stream of whole frames relayed as they are (a
    WebSocket hop's), read by a second :class:`~tunnelgw.core.sessionrelay.SessionRelay`
    that only forwards payloads: what a recording keeps of frames.
    """

    def __init__(self, masked: bool) -> None:
        self._relay = SessionRelay(Role.SERVER if masked else Role.CLIENT, Carries.PAYLOAD, unmask)

    def payloads(self, frames: bytes) -> list[bytes]:
        """The payload bytes in frames (a frame cut anywhere goes on in the next call)."""
        got: list[bytes] = []
        for action in self._relay.receive(frames, 0.0):
            if isinstance(action, Forward):
                got += action.chunks
        return got


class _RecordingOwner:
    """Between a link and its session: records what the backend sends, passes everything on."""

    def __init__(self, owner: LinkOwner, recorder: Recorder) -> None:
        self._owner = owner
        self._recorder = recorder
        self._tap: Optional[_PayloadTap] = None

    def backend_data(self, data: bytes) -> None:
        self._recorder.add(True, data)
        self._owner.backend_data(data)

    def backend_frames(self, frames: bytes, payload: int, left: int) -> None:
        if self._tap is None:
            self._tap = _PayloadTap(masked=False)
        for piece in self._tap.payloads(frames):
            self._recorder.add(True, piece)
        self._owner.backend_frames(frames, payload, left)

    def backend_close(self, code: Optional[int], reason: Optional[str]) -> None:
        self._owner.backend_close(code, reason)

    def backend_lost(self, close: Close) -> None:
        self._owner.backend_lost(close)


class RecordingLink(WrappedLink):
    """
    A backend link whose traffic both ways is recorded; the link itself is
    unchanged and carries what it carried (whole frames of a WebSocket hop
    are read for their payloads on the side, never re-framed).
    """

    def __init__(self, inner: BackendLink, recorder: Recorder) -> None:
        super().__init__(inner)
        self.recorder = recorder
        self._tap: Optional[_PayloadTap] = None

    @property
    def recording(self) -> str:
        """The recording's file name, for the session's log lines and the admin list."""
        return self.recorder.name

    def start(self, owner: LinkOwner) -> None:
        """Start the inner link, recording what it sends the session."""
        self._inner.start(_RecordingOwner(owner, self.recorder))

    def client_payloads(self, payloads: list[bytes]) -> None:
        """Record, then pass on."""
        for payload in payloads:
            self.recorder.add(False, payload)
        self._inner.client_payloads(payloads)

    def client_frames(self, frames: bytes, left: int) -> None:
        """Record the payloads, then pass the frames on as they are."""
        if self._tap is None:
            self._tap = _PayloadTap(masked=True)
        for piece in self._tap.payloads(frames):
            self.recorder.add(False, piece)
        self._inner.client_frames(frames, left)

    def close(self, close: Optional[Close] = None) -> None:
        """Stop the recording, close the inner link."""
        self.recorder.stop("complete")
        self._inner.close(close)
