"""
Packaging: the wheel carries the twistd plugin and the installed copy works
from outside the checkout (where the repository root on sys.path cannot hide
a packaging bug).
"""

from __future__ import annotations

import os
import re
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
    """The wheel, built offline with this environment's setuptools (the ``test`` extra's)."""
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        env=clean_env(), cwd=out, capture_output=True, text=True,
    )
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}{result.stderr}"
    [built] = out.glob("fws-*.whl")
    return built


# --- the README's commands are what .ci/run runs ------------------------------------------------

README = (ROOT / "README.md").read_text()
CI_RUN = (ROOT / ".ci" / "run").read_text()


def readme_block(heading: str) -> list[str]:
    """The indented command lines of the README section ``heading``."""
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [line[4:] for line in section.splitlines() if line.startswith("    ")]


def ci_commands() -> list[str]:
    """The commands of .ci/run after its system packages: from the line after ``export CI=true``."""
    lines = [line.strip() for line in CI_RUN.splitlines()]
    start = lines.index("export CI=true") + 1
    return [line for line in lines[start:] if line and not line.startswith("#")]


def test_ci_runs_exactly_the_readme_commands() -> None:
    [install] = readme_block("Install and run")
    test = readme_block("Run the tests")[0]
    assert install.endswith(" && fws_server") and test == ".venv/bin/python -m pytest"
    assert ci_commands() == [install.removesuffix(" && fws_server"), f"exec {test}"]
    # nothing before it installs Python packages a user's run would lack
    assert CI_RUN.count("pip ") == 1 and ".venv" not in CI_RUN.split("export CI=true")[0]


def test_ci_installs_the_packages_the_readme_lists() -> None:
    [apt] = [line for line in readme_block("Run the tests") if line.startswith("apt-get install")]
    listed = [word for word in apt.split()[2:] if not word.startswith("-")]
    installed = re.findall(r"^need ([\w.-]+)|packages\+=\(([\w.-]+)\)", CI_RUN, re.M)
    assert sorted(a or b for a, b in installed) == sorted(listed)
    for package in ("redis-server", "nginx-light", "haproxy", "chromium", "chromium-driver",
                    "systemd", "prometheus"):
        assert package in listed and f"`{package}`" in README


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


@pytest.mark.parametrize("ci", ["", "true"])
def test_a_missing_program_skips_naming_its_package_but_fails_under_ci(tmp_path: Path, ci: str) -> None:
    (tmp_path / "test_needs.py").write_text(
        "from tests.system_tools import program\n\n"
        "def test_needs_it():\n"
        "    program('fws-no-such-program', 'fws-no-such-package')\n")
    env = {k: v for k, v in clean_env(PYTHONPATH=str(ROOT)).items() if k != "CI"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rsf",
                             "test_needs.py"], cwd=tmp_path, env={**env, "CI": ci} if ci else env,
                            capture_output=True, text=True)
    if ci:
        assert result.returncode == 1, result.stdout
        assert "fws-no-such-program is missing under CI=true: apt-get install fws-no-such-package" \
            in result.stdout
    else:
        assert result.returncode == 0 and "1 skipped" in result.stdout, result.stdout
        assert "fws-no-such-program is not installed: apt-get install fws-no-such-package" \
            in result.stdout
