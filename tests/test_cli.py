"""
End to end: ``fws_server`` and ``twistd fws`` as real processes on free
loopback ports, driven by the ``websockets`` client (not Autobahn).
"""

from __future__ import annotations

import datetime
import json
import signal
import socket
import ssl
import subprocess
import textwrap
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.processes import BIN, FwsProcess
from tests.redis_support import free_port


def server(processes: list[FwsProcess], *args: str, cwd: Path | None = None,
           env: dict[str, str] | None = None, wait: bool = True) -> FwsProcess:
    proc = FwsProcess([], cwd=cwd, env=env)
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", *args]
    processes.append(proc)
    return proc.start(wait=wait)


def twistd(processes: list[FwsProcess], *args: str, cwd: Path, port: int | None = None,
           pidfile: bool = False) -> FwsProcess:
    proc = FwsProcess(list(args), cwd=cwd, port=port,
                      command=[str(BIN / "twistd"), "-n", *([] if pidfile else ["--pidfile="]),
                               "fws"])
    processes.append(proc)
    return proc


def silent(ws: ClientConnection, wait: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        ws.recv(timeout=wait)


def module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


# --- the seed's commands --------------------------------------------------------------------


def test_help_lists_the_seed_options() -> None:
    result = subprocess.run([str(BIN / "fws_server"), "-h"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0 and result.stderr == ""
    for option in ("-p PORT, --port PORT", "-f MODULE", "--filters MODULE", "-c FILE, --config FILE",
                   "-key FILE", "-cert FILE", "--listen ENDPOINT"):
        assert option in result.stdout


# --- versions --------------------------------------------------------------------------------


def expected_version_lines() -> list[str]:
    import platform
    from importlib.metadata import version

    import fws

    return [f"fws {fws.__version__}",
            f"Python {platform.python_version()}, Twisted {version('twisted')}, "
            f"Autobahn {version('autobahn')}, txredisapi {version('txredisapi')}"]


def test_version_is_the_installed_distribution_s() -> None:
    from importlib.metadata import version

    import fws

    assert fws.__version__ == version("fws")


def test_fws_server_version(tmp_path: Path) -> None:
    import os

    # read before the rest: a broken configuration does not hide the version
    env = {**os.environ, "FWS_CONFIG": str(tmp_path / "missing.json")}
    result = subprocess.run([str(BIN / "fws_server"), "-p", "1", "--version"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == expected_version_lines()


def test_twistd_fws_version_is_fws_s(tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "twistd"), "fws", "--version"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == expected_version_lines()
    assert list(tmp_path.iterdir()) == []  # no twistd.log, no pidfile: nothing was started
    # twistd's own --version, before the subcommand, is still Twisted's
    result = subprocess.run([str(BIN / "twistd"), "--version"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("twistd (the Twisted daemon)")


def test_help_lists_version() -> None:
    for command in ([str(BIN / "fws_server"), "-h"], [str(BIN / "twistd"), "fws", "--help"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "--version" in result.stdout, command


def test_default_filters_broadcast_and_print(processes: list[FwsProcess]) -> None:
    proc = server(processes)
    with connect(proc.url) as a, connect(proc.url) as b:
        a.send("hello")
        assert b.recv(timeout=5) == "hello"
        silent(a)
    proc.wait_for_line("--MESSAGE--")
    header = proc.stdout.index("--MESSAGE--")
    conn_id, _, text = proc.stdout[header + 1].partition(": ")
    assert text == "hello" and "-" in conn_id
    assert not any("--MESSAGE--" in line for line in proc.stderr)  # logs go to stderr only


def test_default_port_is_9000(processes: list[FwsProcess]) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted does
        try:
            probe.bind(("0.0.0.0", 9000))
        except OSError:
            pytest.skip("port 9000 is taken on this machine")
    proc = FwsProcess([], port=9000)
    processes.append(proc)
    proc.start()
    with connect("ws://127.0.0.1:9000/") as a, connect("ws://127.0.0.1:9000/") as b:
        a.send("on the default port")
        assert b.recv(timeout=5) == "on the default port"


def test_seed_rawdata_and_token_command(processes: list[FwsProcess]) -> None:
    proc = server(processes, "-f", "filtered_websocket.filters.stdout_rawdata",
                  "filtered_websocket.filters.broadcast_messages_by_token")
    with connect(proc.url) as a, connect(proc.url) as b, connect(proc.url) as c:
        a.send("hello")
        assert a.recv(timeout=5) == "Error: No token has been set"
        for ws, group in ((a, "room1"), (b, "room1"), (c, "room2")):
            ws.send(f"token:{group}")
            assert ws.recv(timeout=5) == f"Successfully registered with broadcast group: {group}"
        a.send("to room1")
        assert b.recv(timeout=5) == "to room1"
        silent(c)
        silent(a, 0)
        b.send("token:room2")
        assert b.recv(timeout=5) == "Successfully registered with broadcast group: room2"
        a.send("anyone in room1?")
        silent(b)
        c.send(b"\x00binary to room2")
        assert b.recv(timeout=5) == b"\x00binary to room2"
    with connect(proc.url) as d:
        d.send("token:room2")
        d.recv(timeout=5)
        d.send("after the others left")  # departed members are gone, nothing breaks
        silent(d)
    proc.wait_for_line("--RAWDATA--")
    assert any("GET / HTTP/1.1" in line for line in proc.stdout)


SEED_BROADCAST = """
    from {package}.filters.base import WebSocketMessageFilter


    class Broadcast(WebSocketMessageFilter):
        @classmethod
        def filter(cls, web_socket_instance, data):
            for user_id, user_instance in web_socket_instance.users.items():
                user_instance.sendMessage(bytes(data))
"""


@pytest.mark.parametrize("package", ["fws", "filtered_websocket"])
def test_seed_custom_module_from_current_directory(processes: list[FwsProcess], tmp_path: Path,
                                                   package: str) -> None:
    module(tmp_path, "broadcast", SEED_BROADCAST.format(package=package))
    proc = server(processes, "-f", "broadcast", cwd=tmp_path)
    with connect(proc.url) as a, connect(proc.url) as b:
        a.send("chat")
        assert a.recv(timeout=5) == "chat"  # the seed's loop includes the sender
        assert b.recv(timeout=5) == "chat"
        a.send(b"\xffbinary")
        assert a.recv(timeout=5) == b"\xffbinary"
        assert b.recv(timeout=5) == b"\xffbinary"
        a.send(b"utf8 but binary")
        assert b.recv(timeout=5) == b"utf8 but binary"


def test_seed_config_file(processes: list[FwsProcess], tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "config.json").write_text(textwrap.dedent(f"""\
        # config.json
        {{
            "port": "{port}",
            "interface": "127.0.0.1",
            "filters": ["filtered_websocket.filters.broadcast_messages_by_token",
                        "filtered_websocket.filters.stdout_messages"]
        }}
    """))
    proc = FwsProcess(["-c", "config.json"], cwd=tmp_path, port=port)
    processes.append(proc)
    proc.start()
    with connect(proc.url) as a:
        a.send("token:x")
        assert a.recv(timeout=5) == "Successfully registered with broadcast group: x"
    proc.wait_for_line("--MESSAGE--")


def test_command_line_wins_over_config_file(processes: list[FwsProcess], tmp_path: Path) -> None:
    (tmp_path / "fws.json").write_text(json.dumps({"port": 1, "filters": ["echo"]}))
    proc = server(processes, "-c", "fws.json", cwd=tmp_path)  # -p FREE given too
    with connect(proc.url) as a:
        a.send("echoed")
        assert a.recv(timeout=5) == "echoed"


# --- pipeline behaviour in a real process ----------------------------------------------------


POP = """
    from fws import WebSocketMessageFilter

    class Pop(WebSocketMessageFilter):
        @classmethod
        def filter(cls, web_socket_instance, data):
            data.pop()
"""


@pytest.mark.parametrize(("order", "printed"), [("before", "hell"), ("after", "hello")])
def test_mutating_filter_order(processes: list[FwsProcess], tmp_path: Path, order: str,
                               printed: str) -> None:
    module(tmp_path, "pop", POP)
    filters = ["pop", "fws.filters.stdout_messages"]
    if order == "after":
        filters.reverse()
    proc = server(processes, "-f", *filters, "fws.filters.echo", cwd=tmp_path)
    with connect(proc.url) as a:
        a.send("hello")
        assert a.recv(timeout=5) == "hell"
    proc.wait_for_line("--MESSAGE--")
    assert proc.stdout[proc.stdout.index("--MESSAGE--") + 1].endswith(f": {printed}")


def test_async_filter_keeps_order_and_errors_are_contained(processes: list[FwsProcess],
                                                          tmp_path: Path) -> None:
    module(tmp_path, "jitter", """
        import random
        from twisted.internet import reactor
        from twisted.internet.task import deferLater
        from fws import WebSocketMessageFilter

        class Jitter(WebSocketMessageFilter):
            @classmethod
            async def filter(cls, web_socket_instance, data):
                if data == b"boom":
                    raise RuntimeError("filter bug")
                await deferLater(reactor, random.random() / 100, lambda: None)
    """)
    proc = server(processes, "-f", "jitter", "broadcast_messages", cwd=tmp_path)
    with connect(proc.url) as a, connect(proc.url) as b:
        for i in range(50):
            a.send(f"m{i}")
            if i == 25:
                a.send("boom")
        assert [b.recv(timeout=5) for _ in range(50)] == [f"m{i}" for i in range(50)]
        silent(b)
    proc.wait_for_line("failed on message for connection")
    failure = next(line for line in proc.stderr if "failed on message" in line)
    assert "jitter.Jitter" in failure


def test_connect_filter_refuses_with_http_status(processes: list[FwsProcess], tmp_path: Path) -> None:
    module(tmp_path, "gate", """
        from fws import Refuse, WebSocketConnectFilter

        class Gate(WebSocketConnectFilter):
            @classmethod
            def filter(cls, web_socket_instance, request):
                if request.params.get("key") != ["open-sesame"]:
                    raise Refuse(401, "key required")
    """)
    proc = server(processes, "-f", "gate", "echo", cwd=tmp_path)
    with pytest.raises(InvalidStatus) as info:
        connect(proc.url + "?key=wrong", open_timeout=5)
    assert info.value.response.status_code == 401
    with connect(proc.url + "?key=open-sesame") as ws:
        ws.send("in")
        assert ws.recv(timeout=5) == "in"


@pytest.mark.parametrize("name", ["broadcast_messages", "broadcast_messages_by_token", "echo",
                                  "broadcast_pubsub", "stdout_rawdata", "stdout_messages",
                                  "stdout_pubsub"])
def test_legacy_and_bare_names_load(name: str) -> None:
    for spelling in (f"filtered_websocket.filters.{name}", name, f"fws.filters.{name}"):
        result = subprocess.run([str(BIN / "python"), "-c",
                                 "import sys; from fws.pipeline import load_pipeline; "
                                 "print(load_pipeline(sys.argv[1:]).describe())", spelling],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and f"fws.filters.{name}." in result.stdout, result.stderr


def test_echo_keeps_text_and_binary(processes: list[FwsProcess]) -> None:
    proc = server(processes, "-f", "filtered_websocket.filters.echo")
    with connect(proc.url) as ws:
        for message in ("text", "ünïcödé", b"\x00\xff", b"valid utf-8 in a binary frame", ""):
            ws.send(message)
            assert ws.recv(timeout=5) == message


# --- TLS ------------------------------------------------------------------------------------


def make_cert(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def client_tls(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    return context


def test_tls_with_key_and_cert(processes: list[FwsProcess], tmp_path: Path) -> None:
    key, cert = make_cert(tmp_path)
    proc = server(processes, "-key", str(key), "-cert", str(cert), "-f", "echo")
    with connect(f"wss://localhost:{proc.port}/", ssl=client_tls(cert)) as ws:
        ws.send("secret")
        assert ws.recv(timeout=5) == "secret"


def test_tls_with_twistd_ssl_endpoint(processes: list[FwsProcess], tmp_path: Path) -> None:
    key, cert = make_cert(tmp_path)
    port = free_port()
    twistd(processes, "--listen", f"ssl:{port}:privateKey={key}:certKey={cert}:interface=127.0.0.1",
                  "--filters", "echo", cwd=tmp_path, port=port).start()
    with connect(f"wss://localhost:{port}/", ssl=client_tls(cert)) as ws:
        ws.send(b"\x01")
        assert ws.recv(timeout=5) == b"\x01"


# --- twistd ---------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["spaces", "commas", "port", "config"])
def test_twistd_front_end(processes: list[FwsProcess], tmp_path: Path, form: str) -> None:
    port = free_port()
    listen = ["--listen", f"tcp:{port}:interface=127.0.0.1"]
    args = {
        "spaces": [*listen, "--filters", "fws.filters.echo", "fws.filters.stdout_messages"],
        "commas": ["--filters", "fws.filters.echo,fws.filters.stdout_messages", *listen],
        "port": ["--port", str(port), "--interface", "127.0.0.1", "-f", "echo", "stdout_messages"],
        "config": ["--config", "fws.json"],
    }[form]
    (tmp_path / "fws.json").write_text(json.dumps(
        {"listen": [f"tcp:{port}:interface=127.0.0.1"], "filters": ["echo", "stdout_messages"]}))
    proc = twistd(processes, *args, cwd=tmp_path, port=port).start()
    with connect(proc.url) as ws:
        ws.send("via twistd")
        assert ws.recv(timeout=5) == "via twistd"
    proc.wait_for_line("--MESSAGE--")


def test_twistd_lists_fws_outside_the_checkout(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(BIN / "twistd"), "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert any(line.split()[:1] == ["fws"] for line in result.stdout.splitlines())


# --- graceful stop ---------------------------------------------------------------------------


@pytest.mark.parametrize("front_end", ["fws_server", "twistd"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_stop(processes: list[FwsProcess], tmp_path: Path, front_end: str, sig: int) -> None:
    if front_end == "fws_server":
        proc = server(processes, "-f", "echo")
    else:
        port = free_port()
        proc = twistd(processes, "--port", str(port), "-i", "127.0.0.1", "-f", "echo", cwd=tmp_path,
                      port=port).start()
    with connect(proc.url) as a, connect(proc.url) as b:
        a.send("ping")
        assert a.recv(timeout=5) == "ping"
        proc.signal(sig)
        for ws in (a, b):
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert proc.wait(10) == 0
    with socket.socket() as again:  # nothing left listening (TIME_WAIT sockets may remain)
        assert again.connect_ex(("127.0.0.1", proc.port)) != 0
    assert not any("Traceback" in line for line in proc.lines())


# --- bad input: one line on stderr, no traceback, nothing listening ---------------------------


def run_bad(args: list[str], cwd: Path, front_end: str = "fws_server") -> subprocess.CompletedProcess[str]:
    command = [str(BIN / "fws_server")] if front_end == "fws_server" else [
        str(BIN / "twistd"), "-n", "fws"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


BAD_CASES = {
    "unknown option": (["--frobnicate"], "unrecognized arguments: --frobnicate", 2),
    "port not a number": (["-p", "http"], "must be an integer", 2),
    "port out of range": (["-p", "70000"], "between 0 and 65535", 2),
    "missing config file": (["-c", "nope.json"], "cannot read config file nope.json", 2),
    "invalid json": (["-c", "broken.json"], "invalid JSON", 2),
    "unknown config key": (["-c", "unknown.json"], "unknown option 'colour'", 2),
    "missing key file": (["-key", "missing.pem", "-cert", "missing.pem"], "does not exist", 2),
    "bad key content": (["-key", "notpem.txt", "-cert", "notpem.txt"],
                        "notpem.txt holds no private key", 2),
    "filter not found": (["-f", "no_such_filter_mod"], "not found", 2),
    "module without filters": (["-f", "nofilters"], "defines no filter", 2),
    "syntax error in module": (["-f", "syntaxerr"], "SyntaxError", 2),
    "module raises at import": (["-f", "raises"], "RuntimeError: kaput", 2),
    "bad endpoint": (["--listen", "bogus:1"], "bad endpoint 'bogus:1'", 2),
    "bad storage module": (["--storage", "nowhere.storage"], "storage module 'nowhere.storage'", 2),
}


@pytest.fixture
def bad_inputs(tmp_path: Path) -> Path:
    (tmp_path / "broken.json").write_text('{"port": 1,,}')
    (tmp_path / "unknown.json").write_text('{"colour": "blue"}')
    (tmp_path / "notpem.txt").write_text("this is not a PEM file\n")
    module(tmp_path, "nofilters", "x = 1\n")
    module(tmp_path, "syntaxerr", "def broken(:\n")
    module(tmp_path, "raises", "raise RuntimeError('kaput')\n")
    return tmp_path


@pytest.mark.parametrize("case", sorted(BAD_CASES))
@pytest.mark.parametrize("front_end", ["fws_server", "twistd"])
def test_bad_input(bad_inputs: Path, case: str, front_end: str) -> None:
    args, message, status = BAD_CASES[case]
    port = free_port()
    port_args = ["-p", str(port), "-i", "127.0.0.1"] if "-p" not in args else []
    result = run_bad([*port_args, *args], bad_inputs, front_end)
    prog = "fws_server" if front_end == "fws_server" else "twistd fws"
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"{prog}: error: ") and message in result.stderr
    assert "Traceback" not in result.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


@pytest.mark.parametrize("front_end", ["fws_server", "twistd"])
def test_port_in_use(tmp_path: Path, front_end: str) -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        args = ["-p", str(port), "-i", "127.0.0.1", "-f", "echo"]
        if front_end == "fws_server":
            result = run_bad(args, tmp_path)
        else:  # with twistd's default pidfile, which must not be left behind
            result = subprocess.run([str(BIN / "twistd"), "-n", "fws", *args], cwd=tmp_path,
                                    capture_output=True, text=True, timeout=60)
            assert not (tmp_path / "twistd.pid").exists()
    assert result.returncode == 1
    prog = "fws_server" if front_end == "fws_server" else "twistd fws"
    assert result.stderr == f"{prog}: error: cannot listen on the WebSocket endpoint " \
        f"tcp:{port}:interface=127.0.0.1: address already in use\n"
    assert "Traceback" not in result.stdout
