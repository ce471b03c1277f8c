"""
Types and lint are checked: mypy (with the mypy-zope plugin, as Twisted
configures it) and ruff, both configured in pyproject.toml, run as part of the
README's test command, so that the CI run and a user's run check the same.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)


def test_ruff() -> None:
    result = run("ruff", "check", "--no-cache", "fws", "tests", "twisted", "benchmarks",
                 "examples", "docs")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    result = run("mypy", "--no-incremental", "--cache-dir", "/dev/null")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout
