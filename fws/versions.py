"""
What ``fws_server --version`` and ``twistd fws --version`` print.

fws's own version is :data:`fws.__version__` (``setup.cfg`` reads it too);
the rest are the installed distributions' versions, read from their metadata
so that nothing here imports Twisted, Autobahn or txredisapi (``--version``
runs before a reactor is chosen).
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import fws

#: What every response of fws says it comes from (``Server:``): WebSocket handshakes and
#: their refusals, static files, health, metrics and the admin endpoint alike, rather than
#: Autobahn's or TwistedWeb's name and version (fws's version is the one a bug report needs).
SERVER = f"fws/{fws.__version__}"

#: (shown name, distribution name) of what goes into a bug report.
DEPENDENCIES = (("Twisted", "twisted"), ("Autobahn", "autobahn"), ("txredisapi", "txredisapi"))


def _installed(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def version_text() -> str:
    """``fws VERSION`` on the first line; Python's and the main dependencies' on the second."""
    deps = ", ".join(f"{name} {_installed(dist)}" for name, dist in DEPENDENCIES)
    return f"fws {fws.__version__}\nPython {platform.python_version()}, {deps}\n"


def version_requested(argv: Sequence[str]) -> bool:
    """
    Whether ``argv`` asks for :func:`version_text`.

    Both front ends ask before they resolve the configuration: a version for a
    bug report must not depend on the configuration file, environment or
    storage module that the bug may be in.
    """
    return "--version" in argv
