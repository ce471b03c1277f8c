"""The documentation builds without warnings, and what it shows is real."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from fws.pipeline import load_pipeline
from tests.helpers import Server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    build = pytest.importorskip("sphinx.cmd.build")
    status = build.build_main(["-W", "--keep-going", "-q", "-b", "html", str(ROOT / "docs"),
                               str(tmp_path / "html")])
    assert status == 0
    html = (tmp_path / "html" / "configuration.html").read_text()
    assert "--redis_channels" in html and "FWS_PORT" in html  # the option tables are generated


def unit_file(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "docs" / "deploy" / name)
    return parser


def systemd_analyze_problems(*names: str) -> tuple[list[str], str]:
    """What ``systemd-analyze verify`` says about the units (but for the absent /opt/fws)."""
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        return [], ""
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


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in readme and ".venv/bin/python -m pytest" in ci
    assert "pip install -e '.[test]'" in readme and "pip install -q -e '.[test]'" in ci
    assert sys.version_info >= (3, 11)
