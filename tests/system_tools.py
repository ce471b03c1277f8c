"""
What a test does when something it needs is not installed.

The full suite runs real programs (redis-server, nginx, HAProxy, Chromium,
systemd's tools, promtool) and a few Python packages of the ``test`` extra.
Where one is missing, the test skips with a reason that names what to install
(the Debian package), so a user's run says what it did not test instead of
passing silently. Under CI (``CI`` set, as ``.ci/run`` does) it fails instead:
``.ci/run`` installs everything, so a missing program there is a broken CI
machine, and a skip would hide the tests it stops.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

# Debian keeps daemons in /usr/sbin, which is not on a normal user's PATH.
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])

README = "README.md, \"Run the tests\", lists every package"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str, install: str) -> NoReturn:
    """Skip (or, under CI, fail) because ``what`` is not installed; ``install`` says how to get it."""
    if in_ci():
        pytest.fail(f"{what} is missing under CI={os.environ['CI']}: {install} "
                    "(.ci/run installs it)", pytrace=False)
    # allow_module_level: a module that needs it at import (test_redis_processes) skips whole.
    pytest.skip(f"{what} is not installed: {install} ({README})", allow_module_level=True)


def program(name: str, package: str) -> str:
    """The path of the program ``name``, which the Debian package ``package`` provides."""
    path = shutil.which(name, path=_SEARCH)
    if path is None:
        missing(name, f"apt-get install {package}")
    return path


def module(name: str) -> ModuleType:
    """A Python module of the ``test`` extra, which the README's install command installs."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python module {name}", "pip install -e '.[test]'")


def speedups() -> ModuleType:
    """fws._speedups, which ``pip install`` builds where a C compiler and the Python headers are."""
    try:
        return importlib.import_module("fws._speedups")
    except ImportError:
        compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
        headers = Path(sysconfig.get_paths()["include"], "Python.h")
        if shutil.which(compiler) and headers.exists():  # the build itself is broken: never a skip
            pytest.fail(f"fws._speedups is not built although {compiler} and {headers} are here: "
                        "pip install -v -e '.[test]' shows why", pytrace=False)
        missing("fws._speedups (fws's compiled framing; fws works without it, slower)",
                "apt-get install gcc python3-dev, then pip install -e '.[test]' again")
