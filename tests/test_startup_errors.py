"""
Startup errors in words, from the real commands: one line on stderr, no
traceback, no OpenSSL error tuple, a non-zero exit status and nothing left
listening. TLS files that do not load, a unix socket's missing directory,
which endpoint (WebSocket or admin) could not listen, Redis options without
the Redis storage, and what ``--check`` refuses: an impossible interface and
origins that no browser sends.
"""

from __future__ import annotations

import datetime
import socket
import subprocess
from pathlib import Path

import pytest

from tests.processes import BIN
from tests.redis_support import free_port

REDIS_HINT = ("is an option of the Redis storage, which is not selected: select it first with "
              "--storage fws.storage_objects.redis (or "
              "STORAGE_OBJECT_MODULE=fws.storage_objects.redis)")


def run(args: list[str], cwd: Path, front_end: str = "fws_server") -> subprocess.CompletedProcess[str]:
    command = [str(BIN / "fws_server")] if front_end == "fws_server" else [
        str(BIN / "twistd"), "-n", "--pidfile=", "fws"]
    # No terminal on stdin: OpenSSL must never get to ask for a passphrase.
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def assert_one_line(result: subprocess.CompletedProcess[str], status: int, message: str,
                    prog: str = "fws_server") -> None:
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"{prog}: error: "), result.stderr
    assert message in result.stderr, result.stderr
    for noise in ("Traceback", "routines", "[Errno", "[('"):
        assert noise not in result.stderr, result.stderr


def write_tls(directory: Path) -> None:
    """key.pem and cert.pem that belong together; other-key.pem, encrypted.pem and junk."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def pem(key: ec.EllipticCurvePrivateKey,
            encryption: serialization.KeySerializationEncryption) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 encryption)

    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (directory / "key.pem").write_bytes(pem(key, serialization.NoEncryption()))
    (directory / "other-key.pem").write_bytes(pem(other, serialization.NoEncryption()))
    (directory / "encrypted.pem").write_bytes(
        pem(key, serialization.BestAvailableEncryption(b"secret")))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "both.pem").write_bytes((directory / "cert.pem").read_bytes()
                                         + (directory / "key.pem").read_bytes())
    (directory / "damaged.pem").write_text(
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n")
    (directory / "junk.txt").write_text("this is not a PEM file\n")
    (directory / "damaged-cert.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    write_tls(tmp_path)
    return tmp_path


#: -key/-cert (the --port listener) or an ssl: endpoint -> what the error line says.
TLS_CASES = {
    "key file holds a certificate": (["-key", "cert.pem", "-cert", "cert.pem"],
                                     "cert.pem holds no private key (it holds a certificate)"),
    "key file is not PEM": (["-key", "junk.txt", "-cert", "cert.pem"],
                            "junk.txt holds no private key"),
    "certificate is not PEM": (["-key", "key.pem", "-cert", "junk.txt"],
                               "junk.txt is not a PEM certificate"),
    "certificate file holds a key": (["-key", "key.pem", "-cert", "key.pem"],
                                     "key.pem is not a PEM certificate (it holds a private key)"),
    "missing key file": (["--listen", "ssl:{port}:privateKey=missing.pem:certKey=cert.pem"],
                         "TLS key file missing.pem does not exist"),
    "missing certificate file": (["--listen", "ssl:{port}:privateKey=key.pem:certKey=nope.pem"],
                                 "TLS certificate file nope.pem does not exist"),
    "key file is a directory": (["--listen", "ssl:{port}:privateKey=.:certKey=cert.pem"],
                                "TLS key file . is a directory"),
    "encrypted key": (["-key", "encrypted.pem", "-cert", "cert.pem"],
                      "encrypted.pem holds an encrypted private key, and fws cannot ask for its "
                      "passphrase"),
    "key of another certificate": (["-key", "other-key.pem", "-cert", "cert.pem"],
                                   "the private key in other-key.pem does not belong to the "
                                   "certificate in cert.pem"),
    "damaged key": (["-key", "damaged.pem", "-cert", "cert.pem"],
                    "damaged.pem holds a private key that cannot be read"),
    "damaged certificate": (["-key", "key.pem", "-cert", "damaged-cert.pem"],
                            "damaged-cert.pem holds a certificate that cannot be read"),
    "impossible interface": (["--listen", "ssl:{port}:privateKey=key.pem:interface=300.1.1.1"],
                             "interface 300.1.1.1 is not an IP address"),
    "missing chain file": (["--listen",
                            "ssl:{port}:privateKey=key.pem:certKey=cert.pem:extraCertChain=ca.pem"],
                           "TLS certificate chain file ca.pem does not exist"),
}


def with_port(args: list[str], port: int) -> list[str]:
    args = [a.replace("{port}", str(port)) for a in args]
    if "--listen" in args:
        return args
    return ["-p", str(port), "-i", "127.0.0.1", *args]


@pytest.mark.parametrize("case", sorted(TLS_CASES))
def test_tls_files_that_do_not_load(tls_dir: Path, case: str) -> None:
    args, message = TLS_CASES[case]
    port = free_port()
    result = run([*with_port(args, port), "-f", "echo"], tls_dir)
    assert_one_line(result, 2, message)
    with socket.socket() as probe:  # nothing was left listening
        probe.bind(("127.0.0.1", port))


@pytest.mark.parametrize("case", ["key file holds a certificate", "encrypted key",
                                  "key of another certificate"])
def test_tls_files_under_twistd(tls_dir: Path, case: str) -> None:
    args, message = TLS_CASES[case]
    result = run([*with_port(args, free_port()), "-f", "echo"], tls_dir, "twistd")
    assert_one_line(result, 2, message, "twistd fws")


def test_tls_files_that_load_still_serve(tls_dir: Path) -> None:
    """The checks refuse nothing Twisted loads: one file with both, and a matching pair."""
    for args in (["--listen", "ssl:0:privateKey=both.pem"],
                 ["-p", "0", "-key", "key.pem", "-cert", "cert.pem"]):
        result = run(["--check", *args], tls_dir)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("configuration OK")


@pytest.mark.parametrize("front_end", ["fws_server", "twistd"])
def test_unix_socket_in_a_missing_directory(tmp_path: Path, front_end: str) -> None:
    """
    Said when listening (exit status 1), with which endpoint; ``--check``
    passes, as it may run before systemd's ``RuntimeDirectory=`` exists.
    """
    path = tmp_path / "missing" / "fws.sock"
    result = run(["--listen", f"unix:{path}", "-f", "echo"], tmp_path, front_end)
    prog = "fws_server" if front_end == "fws_server" else "twistd fws"
    assert result.returncode == 1, result.stderr
    assert f"{prog}: error: cannot listen on the WebSocket endpoint unix:{path}: the socket's " \
        f"directory {path.parent} does not exist (create it first)" in result.stderr.splitlines()
    assert "Traceback" not in result.stderr and "[Errno" not in result.stderr
    assert run(["--check", "--listen", f"unix:{path}"], tmp_path).returncode == 0
    admin = run(["-p", str(free_port()), "-i", "127.0.0.1", "--admin", f"unix:{path}"], tmp_path)
    assert admin.returncode == 1
    assert admin.stderr.splitlines()[-1] == (
        f"fws_server: error: cannot listen on the admin endpoint unix:{path}: the socket's "
        f"directory {path.parent} does not exist (create it first)")


def test_unix_socket_in_an_existing_directory_listens(tmp_path: Path) -> None:
    result = run(["--check", "--listen", f"unix:{tmp_path / 'fws.sock'}"], tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("which", ["WebSocket", "admin"])
def test_port_in_use_names_the_endpoint(tmp_path: Path, which: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = f"tcp:{holder.getsockname()[1]}:interface=127.0.0.1"
        free = f"tcp:{free_port()}:interface=127.0.0.1"
        public, admin = (busy, free) if which == "WebSocket" else (free, busy)
        result = run(["--listen", public, "--admin", admin, "-f", "echo"], tmp_path)
    # Logging has started by then (the admin endpoint listens first): the error is the last line.
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (f"fws_server: error: cannot listen on the {which} "
                                              f"endpoint {busy}: address already in use")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, option", [
    (["--redis_port", "7000"], "--redis_port"),
    (["--redis-host=redis.internal"], "--redis-host"),
    (["--redis_url", "redis://localhost/0"], "--redis_url"),
], ids=["redis_port", "redis-host=", "redis_url"])
def test_redis_options_need_redis_storage(tmp_path: Path, args: list[str], option: str) -> None:
    result = run(["--check", *args], tmp_path)
    assert_one_line(result, 2, f"{option} {REDIS_HINT}")


def test_redis_option_in_a_config_file_needs_redis_storage(tmp_path: Path) -> None:
    (tmp_path / "fws.json").write_text('{"redis_port": 7000}')
    result = run(["--check", "-c", "fws.json"], tmp_path)
    assert_one_line(result, 2, f"config file fws.json: 'redis_port' {REDIS_HINT}")


@pytest.mark.parametrize("var", ["FWS_REDIS_URL", "FWS_REDIS_PORT"])
def test_redis_variables_need_redis_storage(tmp_path: Path, var: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis variable without the Redis storage is refused as the option is, not ignored."""
    monkeypatch.setenv(var, "redis://localhost:7000/0" if var == "FWS_REDIS_URL" else "7000")
    assert_one_line(run(["--check"], tmp_path), 2, f"${var} {REDIS_HINT}")
    monkeypatch.setenv("FWS_STORAGE", "fws.storage_objects.redis")
    result = run(["--check"], tmp_path)
    assert result.returncode == 0, result.stderr


def test_redis_options_with_redis_storage_are_options(tmp_path: Path) -> None:
    """Selected, the Redis storage takes them (and a misspelt one is argparse's as before)."""
    storage = ["--storage", "fws.storage_objects.redis"]
    result = run(["--check", *storage, "--redis_port", "7000"], tmp_path)
    assert result.returncode == 0, result.stderr
    result = run(["--check", *storage, "--redis_prot", "7000"], tmp_path)
    assert_one_line(result, 2, "unrecognized arguments: --redis_prot")


@pytest.mark.parametrize("interface, message", [
    ("999.1.1.1", "interface 999.1.1.1 is not an IP address"),
    ("1.2.3", "interface 1.2.3 is not an IP address"),
    ("::zz", "interface ::zz is not an IP address"),
    ("not-an-address.invalid", "interface not-an-address.invalid is neither an IP address nor a "
                               "host name this machine resolves"),
])
def test_check_rejects_an_impossible_interface(tmp_path: Path, interface: str,
                                               message: str) -> None:
    result = run(["--check", "-p", "0", "-i", interface], tmp_path)
    assert_one_line(result, 2, message)
    result = run(["--check", "--admin", f"tcp:0:interface={interface.replace(':', chr(92) + ':')}"],
                 tmp_path)
    assert_one_line(result, 2, message)


@pytest.mark.parametrize("interface", ["127.0.0.1", "0.0.0.0", "::1", "localhost"])
def test_check_accepts_real_interfaces(tmp_path: Path, interface: str) -> None:
    result = run(["--check", "-p", "0", "-i", interface], tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("origin, message", [
    ("example.com", "'example.com' is not an origin: no scheme (e.g. https://example.com)"),
    ("https://app.example.com/chat", "'https://app.example.com/chat' is not an origin"),
    ("https://user@app.example.com", "'https://user@app.example.com' is not an origin"),
    ("https://app.example.com?x=1", "'https://app.example.com?x=1' is not an origin"),
    ("https://app.example.com:port", "'https://app.example.com:port' is not an origin"),
    ("//app.example.com", "'//app.example.com' is not an origin"),
])
def test_check_rejects_malformed_origins(tmp_path: Path, origin: str, message: str) -> None:
    result = run(["--check", "--allowed-origins", "https://good.example", origin], tmp_path)
    assert_one_line(result, 2, f"allowed_origins: {message}")


def test_check_accepts_every_form_of_origin(tmp_path: Path) -> None:
    origins = ["https://app.example.com", "https://*.example.org", "http://localhost:8080",
               "http://localhost:*", "http://[::1]:9000", "https://app.example.com/", "null",
               "*", "HTTPS://App.Example.com"]
    result = run(["--check", "--allowed-origins", *origins], tmp_path)
    assert result.returncode == 0, result.stderr
