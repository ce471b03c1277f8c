"""
fws and the 2014 package ``filtered_websocket`` both install ``bin/fws_server``:
what docs/upgrading.rst says happens, in a fresh virtual environment, offline.

The 2014 package is stood in for by a package of the same name and version
that installs its ``fws_server`` the way 0.4.1 did (``setup(scripts=["fws_server"])``,
a file, where fws's is a console-script entry point), and answers
``--version`` as 0.4.1's argparse did. fws's own dependencies come from this
environment (a ``.pth`` file), so nothing is downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "upgrading.rst").read_text()

OLD_SCRIPT = '''\
#!/usr/bin/env python
import argparse

parser = argparse.ArgumentParser()
parser.add_argument("-p", "--port", type=int, default=9000)
parser.add_argument("-c", "--config")
parser.add_argument("-f", "--filters", nargs="*")
parser.add_argument("-key")
parser.add_argument("-cert")
parser.parse_args()
'''

OLD_SETUP = '''\
from setuptools import setup

setup(name="filtered_websocket", version="0.4.1", packages=["filtered_websocket"],
      scripts=["fws_server"])
'''

OLD_VERSION_ANSWER = ("usage: fws_server [-h] [-p PORT] [-c CONFIG] [-f [FILTERS ...]] [-key KEY]\n"
                      "                  [-cert CERT]\n"
                      "fws_server: error: unrecognized arguments: --version\n")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV", "COLUMNS")}


def pip(venv: Path, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                             "-q", "--disable-pip-version-check", *args],
                            capture_output=True, text=True, env=clean_env(), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(fws's wheel, the stand-in 2014 package's wheel), built offline."""
    out = tmp_path_factory.mktemp("clash-wheels")
    old = tmp_path_factory.mktemp("filtered_websocket-0.4.1")
    (old / "filtered_websocket").mkdir()
    (old / "filtered_websocket" / "__init__.py").write_text("")
    (old / "fws_server").write_text(OLD_SCRIPT)
    (old / "setup.py").write_text(OLD_SETUP)
    for source in (ROOT, old):
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", str(out), str(source)], capture_output=True, text=True, env=clean_env(),
            cwd=out, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
    [fws] = out.glob("fws-*.whl")
    [old_wheel] = out.glob("filtered_websocket-*.whl")
    return fws, old_wheel


def venv(path: Path) -> Path:
    # fws's dependencies: this environment's packages, linked one by one from a directory
    # of their own that a .pth file puts on sys.path, so that nothing is downloaded and
    # every file pip writes (twisted/plugins/fws_plugin.py too) lands in the new
    # environment; never fws itself, which pip must never see here, let alone uninstall.
    deps = path / "deps"
    deps.mkdir(parents=True)
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower()
        if not name.startswith(("fws", "__editable__", "filtered_websocket", "__pycache__")) \
                and not name.endswith(".pth"):
            (deps / entry.name).symlink_to(entry)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                   env=clean_env(), timeout=120)
    [site] = (path / "lib").glob("python3*/site-packages")
    (site / "deps.pth").write_text(f"{deps}\n")
    return path


def fws_server(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "fws_server"), *args], capture_output=True,
                          text=True, env=clean_env(), cwd=venv, timeout=60)


def is_fws(venv: Path) -> bool:
    result = fws_server(venv, "--version")
    return result.returncode == 0 and result.stdout.startswith("fws ")


def test_fws_installed_over_the_2014_package_owns_fws_server(
    packages: tuple[Path, Path], tmp_path: Path
) -> None:
    fws, old = packages
    env = venv(tmp_path / "venv")
    pip(env, "install", "--no-deps", str(old))
    assert fws_server(env, "--version").stderr == OLD_VERSION_ANSWER
    pip(env, "install", "--no-deps", str(fws))
    assert is_fws(env)
    # fws's fws_server says, in one line, that the two share the file
    warning = fws_server(env, "--version").stderr
    assert warning.count("\n") == 1 and "filtered_websocket 0.4.1 is installed too" in warning, warning
    # uninstalling the 2014 package deletes the file fws wrote
    pip(env, "uninstall", "-y", "filtered_websocket")
    assert not (env / "bin" / "fws_server").exists()
    # the guide's repair (with the wheel for "."), and python -m fws.cli meanwhile
    module = subprocess.run([str(env / "bin" / "python"), "-m", "fws.cli", "--version"],
                            capture_output=True, text=True, env=clean_env(), timeout=60)
    assert module.stdout.startswith("fws ")
    pip(env, "install", "--force-reinstall", "--no-deps", str(fws))
    assert is_fws(env)
    assert fws_server(env, "--version").stderr == ""  # the old package is gone: no warning


def test_the_2014_package_installed_after_fws_takes_fws_server_silently(
    packages: tuple[Path, Path], tmp_path: Path
) -> None:
    fws, old = packages
    env = venv(tmp_path / "venv")
    pip(env, "install", "--no-deps", str(fws))
    assert is_fws(env)
    pip(env, "install", "--no-deps", str(old))
    assert fws_server(env, "--version").stderr == OLD_VERSION_ANSWER
    # the guide's line for both installed leaves fws alone, with its command
    pip(env, "uninstall", "-y", "filtered_websocket")
    pip(env, "install", "--force-reinstall", "--no-deps", str(fws))
    assert is_fws(env)


def test_the_guide_says_what_these_tests_show() -> None:
    text = " ".join(GUIDE.split())
    for words in (
        "pip uninstall -y filtered_websocket && pip install --force-reinstall --no-deps .",
        "``fws_server: error: unrecognized arguments: --version``",
        "uninstalling ``filtered_websocket`` deletes ``bin/fws_server`` whichever package wrote "
        "it last",
        "``python -m fws.cli`` runs fws's ``fws_server`` whatever ``bin/`` holds",
    ):
        assert words in text, words
