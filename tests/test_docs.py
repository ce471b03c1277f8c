"""The documentation builds without warnings, and what it shows is real."""

from __future__ import annotations

import configparser
import importlib.util
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from docutils import nodes

from fws.pipeline import load_pipeline
from tests.helpers import Server
from tests.system_tools import module, program

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


#: A command-line option as plain text: ``--name`` not inside a word, path or URL.
BARE_OPTION = re.compile(r"(?<![\w/.:-])--[A-Za-z]")
#: An en or em dash where an option's hyphens were (smartquotes' "--port" -> "\u2013port").
DASHED_OPTION = re.compile(r"(?:^|[\s(\[,;:\"'\u201c])[\u2013\u2014][A-Za-z-]")


@pytest.fixture(scope="module", params=["installed-theme", "alabaster"])
def built_docs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML site, built with -W: once with the theme conf.py picks (furo when the test
    extra installed it), once as where furo is missing (conf.py falls back to alabaster)."""
    build = module("sphinx.cmd.build")
    out = tmp_path_factory.mktemp(f"html-{request.param}")
    missing = object()
    saved = sys.modules.get("furo", missing)
    if request.param == "alabaster":
        sys.modules["furo"] = None  # type: ignore[assignment]  # find_spec() says: not installed
    try:
        status = build.build_main(["-W", "--keep-going", "-q", "-b", "html", str(ROOT / "docs"),
                                   str(out)])
    finally:
        if saved is missing:
            sys.modules.pop("furo", None)
        else:
            sys.modules["furo"] = saved  # type: ignore[assignment]
    assert status == 0
    return out


def test_docs_build_without_warnings(built_docs: Path) -> None:
    html = (built_docs / "configuration.html").read_text()
    assert "--redis_channels" in html and "FWS_PORT" in html  # the option lists are generated
    assert 'id="option-port"' in html  # each option has an anchor: configuration.html#option-port
    index = (built_docs / "index.html").read_text()
    assert "_static/fws.css" in index
    if built_docs.name.startswith("html-alabaster") or importlib.util.find_spec("furo") is None:
        assert "alabaster.css" in index and "furo" not in index
    else:
        assert "styles/furo.css" in index


class _Text(HTMLParser):
    """The text of a page, split into what renders as literal (code, pre, kbd) and the rest."""

    LITERAL = {"code", "pre", "kbd", "samp", "tt"}
    HIDDEN = {"script", "style", "textarea", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = {"literal": 0, "hidden": 0}
        self.prose: list[str] = []
        self.literal: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for kind, tags in (("literal", self.LITERAL), ("hidden", self.HIDDEN)):
            if tag in tags:
                self.depth[kind] += 1

    def handle_endtag(self, tag: str) -> None:
        for kind, tags in (("literal", self.LITERAL), ("hidden", self.HIDDEN)):
            if tag in tags:
                self.depth[kind] -= 1

    def handle_data(self, data: str) -> None:
        if self.depth["hidden"]:
            return
        (self.literal if self.depth["literal"] else self.prose).append(data)


def page_text(path: Path) -> _Text:
    parser = _Text()
    parser.feed(path.read_text())
    return parser


def test_option_names_render_as_typed(built_docs: Path) -> None:
    """No page shows "\u2013port" for --port, and every option name is literal text."""
    pages = sorted(built_docs.rglob("*.html"))
    assert len(pages) >= 10
    problems = []
    for page in pages:
        text = page_text(page)
        prose = "\n".join(text.prose)
        for line in prose.splitlines():
            if BARE_OPTION.search(line) or DASHED_OPTION.search(line):
                problems.append(f"{page.relative_to(built_docs)}: {line.strip()[:120]}")
        for line in "\n".join(text.literal).splitlines():
            if DASHED_OPTION.search(line):
                problems.append(f"{page.relative_to(built_docs)} (literal): {line.strip()[:120]}")
    assert not problems, "\n".join(problems)
    # the option help texts, which name other options bare, come out as code
    configuration = (built_docs / "configuration.html").read_text()
    assert re.search(r'<code class="[^"]*fws-option[^"]*"><span class="pre">--port</span>',
                     configuration)
    security = (built_docs / "security.html").read_text()
    assert '<span class="pre">--max-connections</span>' in security
    assert "\u2013max-" not in security and "\u2013port" not in configuration


def test_literal_options_transform() -> None:
    """The transform itself: options become literals, hyphens inside words and paths do not."""
    from docutils.core import publish_doctree

    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    try:
        from fws_literal_options import literal_options
    finally:
        sys.path.remove(str(ROOT / "docs" / "_ext"))
    doctree = publish_doctree(
        "Use --port 9000 (or -f a b, --max-send-buffer=1M). Not re-use, a--b, /x/--y, "
        "http://h/--z or 10 - 2.\n\n``--listen`` stays one literal.\n")
    literal_options(doctree)
    literals = [node.astext() for node in doctree.findall(nodes.literal)]
    assert literals == ["--port", "-f", "--max-send-buffer=1M", "--listen"]
    literal_options(doctree)  # again: nothing left to change
    assert [node.astext() for node in doctree.findall(nodes.literal)] == literals
    assert "re-use, a--b, /x/--y, http://h/--z or 10 - 2." in doctree.astext()


def test_wide_tables_scroll_in_their_own_box(built_docs: Path) -> None:
    """Every content table sits in a div.table-wrapper, which fws.css lets scroll sideways,
    so a table wider than the text column scrolls instead of being cut off."""
    css = (built_docs / "_static" / "fws.css").read_text()
    rule = re.search(r"div\.table-wrapper\s*\{([^}]*)\}", css)
    assert rule and re.search(r"overflow-x:\s*auto", rule.group(1))
    tables = 0
    for page in sorted(built_docs.glob("*.html")):
        html = page.read_text()
        for match in re.finditer(r'<table class="docutils', html):
            tables += 1
            before = html[:match.start()].rstrip()
            opening = before[before.rfind("<"):]
            assert re.fullmatch(r'<div class="table-wrapper[^"]*">', opening), (page.name, opening)
    assert tables >= 8  # performance, redis, security, ...
    # the option reference is a list, not a table too wide for the page
    configuration = (built_docs / "configuration.html").read_text()
    assert '<dl class="fws-options' in configuration


def test_long_code_lines_wrap_with_a_hanging_indent(built_docs: Path) -> None:
    """A command longer than the code box wraps inside it, its continuation indented, so
    nothing runs off the right edge and a wrapped line does not read as the next one."""
    css = (built_docs / "_static" / "fws.css").read_text()
    rule = re.search(r"div\.highlight pre, pre\.literal-block\s*\{([^}]*)\}", css)
    assert rule and "white-space: pre-wrap" in rule.group(1)
    line_rule = re.search(r"span\.fws-line\s*\{([^}]*)\}", css)
    assert line_rule and "text-indent: -" in line_rule.group(1)
    blocks = 0
    for page in sorted(built_docs.glob("*.html")):
        for block in re.findall(r'<div class="highlight"><pre>(.*?)</pre>', page.read_text(),
                                re.S):
            blocks += 1
            lines = block.removeprefix("<span></span>").rstrip("\n").split("\n")
            bare = [line for line in lines if not line.startswith('<span class="fws-line">')]
            assert not bare, (page.name, bare[:3])
    assert blocks >= 30


def unit_file(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "docs" / "deploy" / name)
    return parser


def systemd_analyze_problems(*names: str) -> tuple[list[str], str]:
    """What ``systemd-analyze verify`` says about the units (but for the absent /opt/fws)."""
    analyze = program("systemd-analyze", "systemd")
    units = [str(ROOT / "docs" / "deploy" / name) for name in names]
    result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True)
    problems = [line for line in result.stderr.splitlines()
                if ("fws.service" in line or "fws.socket" in line)
                and "/opt/fws/bin/twistd" not in line]
    return problems, result.stderr


def test_systemd_unit() -> None:
    parser = unit_file("fws.service")
    assert set(parser.sections()) == {"Unit", "Service", "Install"}
    exec_start = parser["Service"]["ExecStart"]
    assert "twistd --nodaemon --pidfile= fws" in exec_start
    assert parser["Service"]["DynamicUser"] == "yes"
    assert parser["Service"]["ProtectSystem"] == "strict"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    # socket activation: the listening socket is fws.socket's
    assert "fws.socket" in parser["Unit"]["Requires"].split()
    assert "fws.socket" in parser["Unit"]["After"].split()
    # the Redis socket and the clients' address families stay allowed by the sandbox
    families = parser["Service"]["RestrictAddressFamilies"].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    # the options in ExecStart are real fws options
    from fws.config import resolve

    args = exec_start.replace("\\\n", " ").split(" fws ", 1)[1].split()
    config = resolve(args, environ={})
    assert config is not None and config.storage == "fws.storage_objects.redis"
    assert config.listen == ("systemd:domain=INET:index=0",)
    problems, stderr = systemd_analyze_problems("fws.service", "fws.socket")
    assert not problems, stderr


def test_systemd_socket_unit() -> None:
    import ipaddress

    text = (ROOT / "docs" / "deploy" / "fws.socket").read_text()
    parser = unit_file("fws.socket")
    assert set(parser.sections()) == {"Unit", "Socket", "Install"}
    socket_section = parser["Socket"]
    # exactly one listening socket: fws.service adopts index 0, an AF_INET one
    listens = [line for line in text.splitlines() if line.startswith("Listen")]
    assert len(listens) == 1 and listens[0].startswith("ListenStream="), listens
    host, _, port = socket_section["ListenStream"].rpartition(":")
    assert 0 < int(port) < 65536
    assert ipaddress.ip_address(host).version == 4  # domain=INET in fws.service
    assert int(socket_section["Backlog"]) >= 1024
    assert socket_section.get("Accept", "no") == "no"  # one fws for all connections
    assert socket_section.get("Service", "fws.service") == "fws.service"
    assert parser["Install"]["WantedBy"] == "sockets.target"
    problems, stderr = systemd_analyze_problems("fws.socket", "fws.service")
    assert not problems, stderr


@pytest.mark.parametrize("example", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_every_example_defines_filters(example: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLES)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    pipeline = load_pipeline([example])
    assert any(pipeline.describe().values())


@pytest_twisted.ensureDeferred
async def test_shout_example_changes_what_is_broadcast(reactor: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    server = Server(reactor, ["shout", "fws.filters.broadcast_messages"]).start()
    try:
        a, b = await server.connect(), await server.connect()
        a.send("   ")
        a.send("hello")
        a.send(b"bin")
        assert await b.recv() == (b"HELLO", False)
        assert await b.recv() == (b"bin", True)
    finally:
        await server.stop()
