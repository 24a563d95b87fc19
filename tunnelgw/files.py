"""
Static files on the gateway's own listener: the ``Alias URL-PATH FOLDER``
directive, as websockify's ``--web`` or Apache's ``Alias``.

A web client (noVNC, a Broadway page...) is served from the same origin as
the WebSocket it opens.  :func:`choose_alias` is the pure decision (which
alias serves a normalised path, and the path segments left below it);
:class:`StaticFolder` is a :class:`twisted.web.static.File` that never lists a
folder, serves only ``index.html`` as a folder's page, runs no ``.rpy``
scripts, names modern web types (``.js``, ``.mjs``, ``.wasm``, ``.svg``...) and
sends validators (``Last-Modified``, ``ETag``) with ``Cache-Control: no-cache``,
so browsers revalidate and get ``304 Not Modified`` until the files change.

Traversal is impossible by construction: the request path is normalised first
(:func:`tunnelgw.core.routing.normalise_path` decodes ``%2e``, removes dot segments,
refuses encoded slashes and climbing above the root), and every remaining
segment goes through :meth:`twisted.python.filepath.FilePath.child`, which
refuses ``..`` and separators.  Symbolic links are followed only while they
stay inside the folder (the resolved path is checked), and dot-files and
dot-folders (``.env``, ``.git/``) are never served.

:func:`open_inside` is the same rule for one file name in a folder, stricter:
no symbolic link is followed at all (``O_NOFOLLOW``), and only a regular file
is opened; ``replay:`` routes open recordings with it.
"""

from __future__ import annotations

import os
import stat
from typing import Optional, Sequence

from twisted.web import http, pages
from twisted.web.resource import IResource
from twisted.web.server import Request
from twisted.web.static import File

from tunnelgw.core.config import Alias

__all__ = ["CONTENT_TYPES", "StaticFolder", "choose_alias", "hidden", "inside", "open_inside", "serve"]

#: Content types by extension, on top of the system's ``mime.types``; text
#: types name UTF-8 so that browsers never guess.
CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/vnd.microsoft.icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
    ".oga": "audio/ogg",
    ".mp3": "audio/mpeg",
}


def choose_alias(aliases: Sequence[Alias], path: str) -> Optional[tuple[Alias, list[str]]]:
    """
    The alias with the longest URL path that is ``path`` or a parent of it
    (segment-aware: ``/novnc`` serves ``/novnc/x`` but not ``/novncx``), and
    the path segments below it (``[]`` for the alias itself, a final ``""``
    for a trailing slash); None when no alias applies.

    :param path: a normalised request path (see :func:`tunnelgw.core.routing.normalise_path`).
    """
    best: Optional[Alias] = None
    for alias in aliases:
        base = alias.path.rstrip("/")
        if (path == alias.path or path == base or path.startswith(base + "/")) and (
                best is None or len(alias.path) > len(best.path)):
            best = alias
    if best is None:
        return None
    rest = path[len(best.path.rstrip("/")):]
    return best, ([] if rest == "" else rest[1:].split("/"))


class StaticFolder(File):
    """
    A folder (or file) served read-only: no listings (403), ``index.html`` as
    a folder's page, no script processors, validators and ``no-cache``.
    """

    contentTypes = {**File.contentTypes, **CONTENT_TYPES}
    indexNames = ["index.html"]
    childNotFound = pages.notFound("Not Found", "No such file.")  # type: ignore[assignment]
    forbidden = pages.forbidden("Forbidden", "Folders are not listed.")  # type: ignore[assignment]
    processors: dict = {}

    def __init__(self, path: str, defaultType: str = "application/octet-stream",
                 ignoredExts: Sequence[str] = (), registry: object = None) -> None:
        super().__init__(path, defaultType, ignoredExts, registry)  # type: ignore[arg-type]

    def directoryListing(self) -> IResource:
        """Folders without an ``index.html`` are refused (403), never listed."""
        return self.forbidden

    def render_GET(self, request: Request) -> object:
        """Send the file with an ETag, Last-Modified and ``Cache-Control: no-cache``."""
        self.restat(False)
        request.setHeader(b"x-content-type-options", b"nosniff")
        if self.exists() and not self.isdir():
            request.setHeader(b"cache-control", b"no-cache")
            stat = os.stat(self.path)
            etag = b'"%x-%x"' % (stat.st_size, stat.st_mtime_ns)
            if request.setETag(etag) is http.CACHED:
                return b""
        return super().render_GET(request)

    render_HEAD = render_GET


def hidden(segments: Sequence[str]) -> bool:
    """True when a path names a dot-file or dot-folder (``.env``, ``.git/config``): never served."""
    return any(segment.startswith(".") for segment in segments)


def inside(path: str, folder: str) -> bool:
    """True when path, symbolic links resolved, is folder or below it (folder's own links resolved too)."""
    root = os.path.realpath(folder)
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def open_inside(folder: str, name: str) -> int:
    """
    A read-only descriptor of the regular file ``name`` directly in folder,
    opened without following a symbolic link (``O_NOFOLLOW``; ``O_NONBLOCK``
    so that a FIFO cannot hang the caller), checked to be inside folder.

    :param name: one path segment (no separator, not ``.`` nor ``..``).
    :raises FileNotFoundError: when there is no such file.
    :raises PermissionError: for anything else there: a link, a folder, a
        device, a FIFO, or a name that leaves folder.
    """
    if not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name):
        raise PermissionError(f"not a file name: {name!r}")
    path = os.path.join(folder, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        # ELOOP: the name is a symbolic link.
        raise PermissionError(f"{name!r} is not a regular file of the folder") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not inside(path, folder):
            raise PermissionError(f"{name!r} is not a regular file of the folder")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def serve(alias: Alias, segments: list[str], request: Request) -> object:
    """
    Render the file below ``alias`` named by ``segments`` for request: the
    file, a redirect adding a slash to a folder, its ``index.html``, 403 or 404.
    Dot-files and dot-folders, and anything a symbolic link leads to outside
    the alias's folder, are 404.
    """
    if hidden(segments):
        return StaticFolder.childNotFound.render(request)
    resource: IResource = StaticFolder(alias.folder)
    for segment in segments:
        if not isinstance(resource, StaticFolder):
            break
        resource = resource.getChild(segment.encode("utf-8"), request)
        if isinstance(resource, File) and not inside(resource.path, alias.folder):
            return StaticFolder.childNotFound.render(request)
    return resource.render(request)
