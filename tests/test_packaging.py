"""
Packaging: the wheel carries the twistd plugin and the installed copy works
from outside the checkout (where the repository root on sys.path cannot hide
a packaging bug).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, env=clean_env(), cwd=out,
    )
    [built] = out.glob("fws-*.whl")
    return built


def test_wheel_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/fws_plugin.py" in names
    # an __init__.py here would replace Twisted's own and hide every plugin
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert "fws/py.typed" in names
    assert {"fws/filters/echo.py", "fws/storage_objects/memory.py", "fws/tap.py"} <= names
    assert not any(name.startswith("tests/") for name in names)


def test_wheel_carries_the_license(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        licenses = [name for name in whl.namelist()
                    if name.startswith("fws-") and ".dist-info/" in name
                    and name.rsplit("/", 1)[-1] == "LICENSE"]
        assert licenses, whl.namelist()
        assert all(whl.read(name) == (ROOT / "LICENSE").read_bytes() for name in licenses)
        metadata = next(name for name in whl.namelist() if name.endswith(".dist-info/METADATA"))
        assert "License-File: LICENSE" in whl.read(metadata).decode()


def test_installed_wheel_is_found_from_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, env=clean_env())
    env = clean_env(PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import fws; print(fws.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))
    twistd = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout
    assert any(line.split()[:1] == ["fws"] for line in twistd.splitlines()), twistd
    help_text = subprocess.run(
        [sys.executable, "-c", "from fws.cli import main; main()", "-h"], cwd=tmp_path, env=env,
        capture_output=True, text=True, check=True,
    ).stdout
    assert "--filters" in help_text and "-key" in help_text


def test_console_scripts_of_this_install(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    twistd = subprocess.run([str(bindir / "twistd"), "--help"], cwd=tmp_path, env=clean_env(),
                            capture_output=True, text=True, check=True).stdout
    assert any(line.split()[:1] == ["fws"] for line in twistd.splitlines()), twistd
    out = subprocess.run([str(bindir / "fws_server"), "-h"], cwd=tmp_path, env=clean_env(),
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage: fws_server")


def test_importing_fws_installs_no_reactor(tmp_path: Path) -> None:
    """twistd imports the plugin (and fws.tap) before choosing a reactor: they must not pick one."""
    code = ("import sys, fws, fws.plugin_maker, fws.tap, fws.filters.echo; "
            "print('twisted.internet.reactor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(),
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
