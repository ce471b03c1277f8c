"""
``--static DIR``: DIR's regular files over plain HTTP, and nothing else.

twisted.web's ``File`` on its own follows symlinks wherever they lead, lists
directories, serves dotfiles (``.env``, ``.git/``), answers a NUL byte in the
path with a 500 and a traceback in the log, and calls anything it does not
recognise ``text/html``.  :class:`StaticFiles` therefore makes every decision
about a path itself, from the raw request path, and only hands the one file it
has checked and opened to a ``File`` for the sending: conditional GET, ``Range``
requests, HEAD, and a pull producer that streams the file in chunks as the
client reads, so that a big file never blocks the reactor.

What is served (see ``docs/security.rst``):

* regular files whose real path (symlinks resolved) is inside the real path of
  DIR, taken once at startup; a symlink that leaves DIR is a 404;
* ``index.html`` for ``/`` and for any directory that has one; the directory's
  URL without its trailing slash redirects (301) to the slash form, as nginx
  and twisted.web do; a directory without ``index.html`` is a 404, never a
  listing;
* nothing with a name that starts with a dot, anywhere in the requested path or
  in the real path it resolves to (404); that includes ``.`` and ``..``
  segments, literal or encoded, so a path never climbs out of DIR;
* only GET and HEAD (405 otherwise).

Paths that cannot name a file at all (NUL or other control characters,
encoded slashes or backslashes, empty segments, invalid UTF-8) are a 400,
longer than :data:`MAX_PATH` bytes a 414, and none of them logs anything:
scanners send them by the thousand.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import IO, Any
from urllib.parse import quote, unquote_to_bytes

from twisted.web.resource import Resource
from twisted.web.static import File

#: The longest request path (raw, still percent-encoded, bytes) looked at; longer is a 414.
MAX_PATH = 1024

#: The index file of a directory; the only one (no ``index.htm``, ``index.rpy`` ...).
INDEX = "index.html"

#: What static responses tell caches: keep it, but ask (cheaply, with a conditional GET)
#: before using it again, so that a new deployment of DIR is seen at once.
CACHE_CONTROL = b"no-cache"

_TEXT = "; charset=utf-8"

#: Content types of the files a web page is made of.  Others come from Python's
#: ``mimetypes`` table; a file nothing knows is ``application/octet-stream``, never
#: ``text/html`` (which would let an uploaded file run scripts on this origin).
CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html" + _TEXT,
    ".htm": "text/html" + _TEXT,
    ".js": "application/javascript" + _TEXT,
    ".mjs": "application/javascript" + _TEXT,
    ".css": "text/css" + _TEXT,
    ".txt": "text/plain" + _TEXT,
    ".md": "text/markdown" + _TEXT,
    ".csv": "text/csv" + _TEXT,
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/vnd.microsoft.icon",
    ".wasm": "application/wasm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".pdf": "application/pdf",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".gz": "application/gzip",
    ".zip": "application/zip",
}


def content_type(name: str) -> str:
    """The ``Content-Type`` of a file called ``name`` (text types say UTF-8)."""
    ext = os.path.splitext(name)[1].lower()
    known = CONTENT_TYPES.get(ext)
    if known is not None:
        return known
    guessed: str | None = File.contentTypes.get(ext)  # Python's mimetypes, as twisted loads them
    if guessed is None:
        return "application/octet-stream"
    return guessed + _TEXT if guessed.startswith("text/") else guessed


class BadPath(Exception):
    """A request path that cannot name a file: answered with ``code``, logged nowhere."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def path_segments(raw: bytes) -> list[str]:
    """
    The decoded segments of a raw request path; the last is ``""`` when the
    path ends with a slash (``/`` is ``[""]``).

    Decided on the raw path rather than twisted's ``postpath`` because only
    here can an encoded slash (``%2f``, which would become a separator once
    decoded) be told from a real one.  Raises :class:`BadPath` for a segment
    that cannot be a file name.  ``.`` and ``..`` pass here: they are
    dot names, which :class:`StaticFiles` answers with 404 like ``.env``.
    """
    if len(raw) > MAX_PATH:
        raise BadPath(414, "path too long")
    if not raw.startswith(b"/"):
        raise BadPath(400, "path must start with /")
    parts = raw[1:].split(b"/")
    segments: list[str] = []
    for i, part in enumerate(parts):
        decoded = unquote_to_bytes(part)
        if not decoded:
            if i != len(parts) - 1:
                raise BadPath(400, "empty path segment")
            segments.append("")
            continue
        try:
            name = decoded.decode("utf-8")
        except UnicodeDecodeError:
            raise BadPath(400, "path is not UTF-8") from None
        if "/" in name or "\\" in name:
            raise BadPath(400, "encoded slash in path")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
            raise BadPath(400, "control character in path")
        segments.append(name)
    return segments


def _etag(st: os.stat_result) -> bytes:
    """An entity tag from modification time and size (nginx uses the same two)."""
    return b'"%x-%x"' % (st.st_mtime_ns, st.st_size)


def _etag_matches(header: bytes, etag: bytes) -> bool:
    """Whether an ``If-None-Match`` header lists ``etag`` (weak comparison, RFC 9110 13.1.2)."""
    for tag in header.split(b","):
        tag = tag.strip()
        if tag == b"*" or tag.removeprefix(b"W/") == etag:
            return True
    return False


class _OpenFile(File):
    """
    twisted's ``File`` for one file StaticFiles has already checked and
    opened: it sends exactly that open file (so the path cannot be swapped
    between the checks and the read), with the size and time of its ``fstat``.
    """

    def __init__(self, path: str, handle: IO[bytes], st: os.stat_result, media_type: str) -> None:
        super().__init__(path)
        self.handle: IO[bytes] | None = handle
        self.st = st
        # Set here, so File neither guesses them nor sends a Content-Encoding (a .gz file
        # is a gzip file, not a page for the browser to unpack).
        self.type = media_type  # type: ignore[assignment]  # File's class default is None
        self.encoding = None

    def openForReading(self) -> IO[bytes]:
        handle, self.handle = self.handle, None
        if handle is None:
            raise OSError(errno.EBADF, "already opened", self.path)
        return handle

    def getFileSize(self) -> int:
        return self.st.st_size

    def getModificationTime(self) -> float:
        return self.st.st_mtime


class StaticFiles(Resource):
    """
    The ``--static DIR`` resource: a leaf that looks at the whole request path
    itself and serves a regular file inside DIR, or answers 301, 400, 404, 405
    or 414.  See the module's docstring for the rules and why.
    """

    isLeaf = True

    def __init__(self, directory: str) -> None:
        super().__init__()
        #: DIR's real path, once: what every request's real path must be inside.
        self.root = os.path.realpath(directory)
        self._prefix = self.root.rstrip(os.sep) + os.sep

    def render(self, request: Any) -> bytes | int:
        request.setHeader(b"x-content-type-options", b"nosniff")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _plain(request, 405, "method not allowed")
        try:
            segments = path_segments(request.path)
        except BadPath as bad:
            return _plain(request, bad.code, bad.reason)
        names, slash = (segments[:-1], True) if segments[-1] == "" else (segments, False)
        if any(name.startswith(".") for name in names):
            return _not_found(request)
        target = self._inside(os.path.join(self.root, *names))
        st = _stat(target)
        if target is None or st is None:
            return _not_found(request)
        if stat.S_ISDIR(st.st_mode):
            index = self._inside(os.path.join(target, INDEX))
            index_st = _stat(index)
            if index is None or index_st is None or not stat.S_ISREG(index_st.st_mode):
                return _not_found(request)
            if not slash:
                return _redirect(request, names)
            return self._send(request, index, INDEX)
        if slash or not stat.S_ISREG(st.st_mode):
            return _not_found(request)
        return self._send(request, target, names[-1])

    def _inside(self, path: str) -> str | None:
        """
        ``path``'s real path if it is inside DIR and has no dot component below
        DIR (a symlink inside DIR to ``.env`` is not a way to reach it); else None.
        """
        real = os.path.realpath(path)
        if real == self.root:
            return real
        if not real.startswith(self._prefix):
            return None
        if any(part.startswith(".") for part in real[len(self._prefix):].split(os.sep)):
            return None
        return real

    def _send(self, request: Any, path: str, name: str) -> bytes | int:
        """
        Open ``path`` without following a symlink and without blocking (a FIFO
        swapped in since the checks would otherwise hang the reactor), make
        sure it is still a regular file, then let twisted's ``File`` send it.
        """
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError:
            return _not_found(request)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return _not_found(request)
        handle = os.fdopen(fd, "rb")
        request.setHeader(b"cache-control", CACHE_CONTROL)
        etag = _etag(st)
        request.setHeader(b"etag", etag)
        wanted = request.getHeader(b"if-none-match")
        if wanted is not None:
            if _etag_matches(wanted, etag):
                handle.close()
                request.setResponseCode(304)
                return b""
            # If-None-Match given and not matched: If-Modified-Since must be ignored
            # (RFC 9110 13.1.3), and File would otherwise answer 304 from it.
            request.requestHeaders.removeHeader(b"if-modified-since")
        file = _OpenFile(path, handle, st, content_type(name))
        try:
            body: bytes | int = file.render(request)
        finally:
            if file.handle is not None:  # File gave up before opening (file gone since)
                file.handle.close()
        return body


def _stat(path: str | None) -> os.stat_result | None:
    """``os.stat``, or None for no path or one that cannot be looked at (too long, a loop ...)."""
    if path is None:
        return None
    try:
        return os.stat(path)
    except OSError:
        return None


def _plain(request: Any, code: int, text: str) -> bytes:
    """A short ``text/plain`` answer (headers only for HEAD, which twisted would warn about)."""
    body = (text + "\n").encode()
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"%d" % len(body))
    return b"" if request.method == b"HEAD" else body


def _not_found(request: Any) -> bytes:
    return _plain(request, 404, "not found")


def _redirect(request: Any, names: list[str]) -> bytes:
    """301 to the directory's slash form, built from the checked names (so never ``//host``)."""
    location = "/" + "/".join(quote(name, safe="") for name in names) + "/"
    query = request.uri.partition(b"?")[2]
    request.setHeader(b"location", location.encode() + (b"?" + query if query else b""))
    return _plain(request, 301, "moved to " + location)


__all__ = ["CONTENT_TYPES", "MAX_PATH", "BadPath", "StaticFiles", "content_type", "path_segments"]
