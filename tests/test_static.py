"""
``--static DIR`` serves DIR's regular files and nothing else: no symlink out of
DIR, no directory listing, no dotfile, a 4xx without a traceback for paths that
cannot name a file, sensible headers, GET and HEAD only; WebSocket upgrades,
/healthz and /metrics beside it keep working. One real ``fws_server`` process
for the module, spoken to over raw loopback sockets: HTTP clients would
normalise the paths these tests need to send as they are.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import FwsProcess
from tests.rawws import RawClient, frame

INDEX = b"<!doctype html><title>fws</title>"


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names, last value
    body: bytes


def http(port: int, path: str | bytes, method: str = "GET",
         headers: dict[str, str] | None = None) -> Response:
    """One request with ``path`` sent byte for byte as given; the whole response (to EOF)."""
    target = path.encode() if isinstance(path, str) else path
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = f"Host: 127.0.0.1:{port}\r\nConnection: close\r\n{extra}\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(method.encode() + b" " + target + b" HTTP/1.1\r\n" + head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    found = {}
    for line in lines:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    return Response(int(status_line.split()[1]), found, body)


@dataclass
class Site:
    proc: FwsProcess
    root: Path  # DIR
    outside: Path  # a file next to DIR, never served

    @property
    def port(self) -> int:
        return self.proc.port

    def get(self, path: str | bytes, method: str = "GET",
            headers: dict[str, str] | None = None) -> Response:
        return http(self.port, path, method, headers)

    def log_after(self, since: int) -> list[str]:
        """
        The server's log lines since line ``since``, once everything logged so
        far has surely arrived: a WebSocket connection to a fresh path is opened
        and its "open" line waited for (the log is written in order).
        """
        marker = f"/log-marker-{uuid.uuid4().hex}"
        client = RawClient(self.port, marker)
        assert client.status == 101
        self.proc.wait_for_line(f"to {marker}")
        client.send(frame(b"\x03\xe8", opcode=8))
        client.close()
        return self.proc.lines()[since:]


def build_site(base: Path) -> tuple[Path, Path]:
    site = base / "site"
    (site / "js").mkdir(parents=True)
    (site / "index.html").write_bytes(INDEX)
    (site / "js" / "app.js").write_text("console.log('hi')")
    (site / "style.css").write_text("body { margin: 0 }")
    (site / "notes").write_text("no extension")
    (site / "docs").mkdir()
    (site / "docs" / "index.html").write_text("<p>docs</p>")
    (site / "docs" / "page.txt").write_text("a page")
    (site / "empty").mkdir()
    (site / "empty" / "a.txt").write_text("listed nowhere")
    (site / ".env").write_text("SECRET=env")
    (site / ".git").mkdir()
    (site / ".git" / "config").write_text("[core] secret")
    outside = base / "outside.txt"
    outside.write_text("outside secret")
    (base / "outside-dir").mkdir()
    (base / "outside-dir" / "index.html").write_text("outside index")
    (site / "out.txt").symlink_to(outside)  # absolute link out of DIR
    (site / "rel-out.txt").symlink_to(Path("..") / "outside.txt")  # relative link out of DIR
    (site / "out-dir").symlink_to(base / "outside-dir")  # a directory out of DIR
    (site / "link.txt").symlink_to(Path("docs") / "page.txt")  # stays inside DIR
    (site / "linked-docs").symlink_to("docs")  # a directory inside DIR
    (site / "env.txt").symlink_to(".env")  # inside DIR, but to a dotfile
    return site, outside


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root, outside = build_site(tmp_path_factory.mktemp("static"))
    proc = FwsProcess([])
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", "-f", "echo", "--static", str(root),
                 "--public-health", "--public-metrics"]
    proc.start()
    try:
        yield Site(proc, root, outside)
    finally:
        proc.stop()


def assert_clean_log(lines: list[str]) -> None:
    bad = [line for line in lines
           if "Traceback" in line or "Unhandled Error" in line
           or "#error]" in line or "#critical]" in line]
    assert not bad, "\n".join(lines)


# --- what is served ------------------------------------------------------------------------


def test_index_html_for_root_with_headers(site: Site) -> None:
    r = site.get("/")
    assert r.status == 200 and r.body == INDEX
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["last-modified"] and r.headers["etag"]


def test_content_types_and_nosniff(site: Site) -> None:
    for path, expected in (("/js/app.js", "application/javascript; charset=utf-8"),
                           ("/style.css", "text/css; charset=utf-8"),
                           ("/docs/page.txt", "text/plain; charset=utf-8"),
                           ("/index.html", "text/html; charset=utf-8"),
                           # unknown: never guessed as HTML (twisted.web's default)
                           ("/notes", "application/octet-stream")):
        r = site.get(path)
        assert r.status == 200, path
        assert r.headers["content-type"] == expected, path
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["cache-control"] == "no-cache", path


def test_conditional_get_and_head(site: Site) -> None:
    first = site.get("/js/app.js")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert site.get("/js/app.js", headers={"If-None-Match": etag}).status == 304
    assert site.get("/js/app.js", headers={"If-Modified-Since": modified}).status == 304
    # a tag that does not match wins over a date that would (RFC 9110 13.1.3)
    r = site.get("/js/app.js", headers={"If-None-Match": '"other"', "If-Modified-Since": modified})
    assert r.status == 200 and r.body == b"console.log('hi')"
    r = site.get("/js/app.js", method="HEAD")
    assert r.status == 200 and r.body == b"" and r.headers["content-length"] == "17"
    assert r.headers["x-content-type-options"] == "nosniff"
    r = site.get("/js/app.js", headers={"Range": "bytes=0-6"})
    assert r.status == 206 and r.body == b"console"


def test_symlinks_are_followed_only_inside_dir(site: Site) -> None:
    r = site.get("/link.txt")
    assert r.status == 200 and r.body == b"a page"
    r = site.get("/linked-docs/page.txt")
    assert r.status == 200 and r.body == b"a page"
    for path in ("/out.txt", "/rel-out.txt", "/out-dir/", "/out-dir/index.html", "/out-dir"):
        r = site.get(path)
        assert r.status == 404, path
        assert b"outside" not in r.body, path
        assert r.headers["x-content-type-options"] == "nosniff", path


def test_directory_without_index_is_404_not_a_listing(site: Site) -> None:
    for path in ("/empty/", "/empty", "/js/", "/js"):
        r = site.get(path)
        assert r.status == 404, path
        assert b"a.txt" not in r.body and b"app.js" not in r.body, path
    assert site.get("/empty/a.txt").status == 200  # the files in it are still served


def test_directory_with_index_html(site: Site) -> None:
    r = site.get("/docs/")
    assert r.status == 200 and r.body == b"<p>docs</p>"
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    # without the slash: a redirect to the slash form, the query kept
    r = site.get("/docs?x=1")
    assert r.status == 301 and r.headers["location"] == "/docs/?x=1"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert site.get("/docs/page.txt/").status == 404  # a file is not a directory


def test_dotfiles_and_dot_directories_are_404(site: Site) -> None:
    for path in ("/.env", "/.git/config", "/.git/", "/.git", "/%2eenv", "/env.txt",
                 "/docs/.env", "/.well-known/x"):
        r = site.get(path)
        assert r.status == 404, path
        assert b"secret" not in r.body.lower(), path
        assert r.headers["x-content-type-options"] == "nosniff", path


# --- bad paths ------------------------------------------------------------------------------


def test_bad_paths_are_4xx_without_traceback(site: Site) -> None:
    since = len(site.proc.lines())
    for path, status in ((b"/%00", 400),
                         (b"/index.html%00.txt", 400),
                         (b"/..%2f..%2fetc%2fpasswd", 400),
                         (b"/%2e%2e/", 404),
                         (b"/%2e%2e/outside.txt", 404),
                         (b"/../outside.txt", 404),
                         (b"/docs/../../outside.txt", 404),
                         (b"/./index.html", 404),
                         (b"/js%2fapp.js", 400),
                         (b"/js%5capp.js", 400),
                         (b"/%ff", 400),
                         (b"/%c0%ae%c0%ae/", 400),  # overlong UTF-8 for ".."
                         (b"/%0d%0aSet-Cookie:%20x=1", 400),
                         (b"//outside.txt", 400),
                         (b"/" + b"a" * 300, 404),  # longer than a file name can be
                         (b"/" + b"a/" * 1500, 414)):
        r = site.get(path)
        assert r.status == status, path
        assert b"Traceback" not in r.body and b"outside secret" not in r.body, path
        assert "set-cookie" not in r.headers, path
    assert_clean_log(site.log_after(since))


# --- methods --------------------------------------------------------------------------------


def test_only_get_and_head(site: Site) -> None:
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        for path in ("/", "/index.html", "/nothing-here"):
            r = site.get(path, method=method)
            assert r.status == 405, (method, path)
            allowed = {m.strip() for m in r.headers["allow"].split(",")}
            assert allowed == {"GET", "HEAD"}, (method, path)


def test_request_bodies_are_refused_before_they_are_read(site: Site) -> None:
    """twisted.web would store a body of any size (in a temporary file) on this port."""
    for headers in ({"Content-Length": "1000000000"}, {"Transfer-Encoding": "chunked"}):
        for method in ("POST", "GET"):
            r = site.get("/index.html", method=method, headers=headers)
            assert r.status == 413, (method, headers)
            assert r.headers.get("connection") == "close"
    assert site.get("/index.html", headers={"Content-Length": "0"}).status == 200


# --- what else the port does ----------------------------------------------------------------


def test_websocket_health_and_metrics_beside_static(site: Site) -> None:
    """Upgrades go first, on any path, even those StaticFiles refuses to serve."""
    for path in ("/", "/index.html", "/.env", "/empty/"):
        client = RawClient(site.port, path)
        try:
            assert client.status == 101, path
            client.send(frame(b"hello"))
            assert client.read_frame() == (1, b"hello"), path
        finally:
            client.close()
    assert site.get("/.env").status == 404
    r = site.get("/healthz")
    assert r.status == 200 and b'"status": "ok"' in r.body
    assert site.get("/readyz").status == 200
    r = site.get("/metrics")
    assert r.status == 200 and b"fws_messages_received_total" in r.body


def test_new_files_are_seen_without_restart(site: Site) -> None:
    """DIR is looked at per request: a file added (or a symlink turned outwards) counts at once."""
    fresh = site.root / "fresh.txt"
    fresh.write_text("new")
    try:
        assert site.get("/fresh.txt").body == b"new"
        fresh.unlink()
        fresh.symlink_to(site.outside)
        assert site.get("/fresh.txt").status == 404
    finally:
        fresh.unlink()
    assert site.get("/fresh.txt").status == 404



def test_only_regular_files_and_gzip_as_is(site: Site) -> None:
    """A FIFO in DIR is a 404 (opening one would hang the reactor); ``.gz`` is not unpacked."""
    fifo = site.root / "pipe.txt"
    os.mkfifo(fifo)
    try:
        assert site.get("/pipe.txt").status == 404
    finally:
        fifo.unlink()
    archive = site.root / "data.tar.gz"
    archive.write_bytes(b"\x1f\x8b not really")
    try:
        r = site.get("/data.tar.gz")
        assert r.status == 200 and r.body == b"\x1f\x8b not really"
        assert r.headers["content-type"] == "application/gzip"
        assert "content-encoding" not in r.headers
    finally:
        archive.unlink()
    assert site.get("/healthz").status == 200  # and the reactor was never blocked
