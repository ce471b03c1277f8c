"""
Every ``fws_server`` and ``twistd ... fws`` command in the README and the
Sphinx docs, run as written with ``--check`` added: its options, config files,
endpoints and filter modules must all resolve (exit 0), and a command shown
with its error output must fail with exactly that output (exit 2). Nothing
listens: ``--check`` stops before that.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import BIN

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.rst"))]
#: Paths in the docs that stand for files of the reader's machine.
PATHS = {"/etc/fws/fws.json": "config.json", "/home/me": "{cwd}"}


def doc_commands() -> list[tuple[str, str, str | None]]:
    """(where, command, expected error line or None) for every fws command in the docs."""
    found = []
    for source in SOURCES:
        lines = source.read_text().splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            where = f"{source.relative_to(ROOT)}:{i + 1}"
            i += 1
            shown = line.startswith("$ ")
            text = line[2:] if shown else line
            if re.match(r"cd \S+ && ", text):
                text = text.split(" && ", 1)[1] + " # in " + text[3:].split(" && ", 1)[0]
            if not (text == "fws_server" or text.startswith("fws_server ")
                    or (text.startswith("twistd ") and " fws" in text)):
                continue
            while text.endswith("\\") and i < len(lines):
                text = text[:-1].rstrip() + " " + lines[i].strip()
                i += 1
            if "..." in text:
                continue  # a pattern ("fws_server --storage ... "), not a command
            expected = None
            if shown and i < len(lines) and lines[i].strip().startswith("fws_server: error:"):
                expected = lines[i].strip()
            found.append((where, text, expected))
    return found


COMMANDS = doc_commands()
SYSTEMD_EXEC = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); "
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='fws.socket'); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def test_the_docs_have_commands() -> None:
    assert len(COMMANDS) >= 30
    assert any(c.startswith("twistd") for _, c, _ in COMMANDS)
    assert any(e for _, _, e in COMMANDS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with what the commands expect in the current directory."""
    cwd = tmp_path_factory.mktemp("docs-cwd")
    for example in (ROOT / "examples").glob("*.py"):
        shutil.copy(example, cwd)
    shutil.copytree(ROOT / "examples" / "chat", cwd / "chat")
    (cwd / "examples").symlink_to(ROOT / "examples")  # commands run from a checkout
    (cwd / "config.json").write_text(
        '# config.json\n{\n    "port": "9999",\n    "filters": ["broadcast_messages_by_token"],\n'
        '    "flags": ["debug"]\n}\n')
    (cwd / "broken.json").write_text(
        '{\n    "port": 9999,\n    "filters": ["echo"]\n    "debug": true\n}\n')
    key, cert = self_signed()
    (cwd / "key.pem").write_bytes(key)
    (cwd / "cert.pem").write_bytes(cert)
    return cwd


def self_signed() -> tuple[bytes, bytes]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize("where, command, expected", COMMANDS,
                         ids=[f"{w}:{c[:60]}" for w, c, _ in COMMANDS])
def test_doc_command(where: str, command: str, expected: str | None, workdir: Path) -> None:
    text, _, comment = command.partition(" #")
    text = text.strip().removesuffix("&").strip()
    cwd = workdir / comment.strip()[3:] if comment.strip().startswith("in ") else workdir
    for path, replacement in PATHS.items():
        text = text.replace(path, replacement.format(cwd=workdir))
    argv = shlex.split(text)
    if argv[0] == "fws_server":
        argv = [str(BIN / "fws_server"), "--check", *argv[1:]]
    else:
        at = argv.index("fws")
        argv = [str(BIN / "twistd"), *argv[1:at + 1], "--check", *argv[at + 1:]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FWS_", "STORAGE_OBJECT"))}
    pass_fds: tuple[int, ...] = ()
    listener = None
    if "systemd:" in text:
        # As systemd passes it: one listening socket at fd 3, LISTEN_* for this very process
        # (a small exec wrapper puts it there; the test's own fd 3 is left alone).
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        pass_fds = (listener.fileno(),)
        argv = [sys.executable, "-c", SYSTEMD_EXEC, str(listener.fileno()), *argv]
    try:
        result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=60, pass_fds=pass_fds)
    finally:
        if listener is not None:
            listener.close()
    if expected is None:
        assert result.returncode == 0, f"{where}: {command}\n{result.stderr}"
        assert "-h" in argv or result.stdout.startswith("configuration OK\n")
    else:
        assert result.returncode == 2, f"{where}: {command}\n{result.stderr}"
        want = expected
        for path, replacement in PATHS.items():
            want = want.replace(path, replacement.format(cwd=workdir))
        assert result.stderr.strip() == want
    assert "Traceback" not in result.stderr


def test_plugin_cache_command() -> None:
    """docs/deployment.rst: regenerating twistd's plugin cache works as shown."""
    line = next(text.strip() for text in (ROOT / "docs" / "deployment.rst").read_text().splitlines()
                if text.strip().startswith('python -c "from twisted.plugin import'))
    code = shlex.split(line)[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
