"""Unit tests of option parsing, config files and precedence (pure functions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fws.config import CORE_OPTIONS, DEFAULT_FILTERS, Config, ConfigError, Option, resolve


def conf(argv: list[str], env: dict[str, str] | None = None) -> Config:
    config = resolve(argv, environ=env or {})
    assert config is not None
    return config


def test_defaults_are_the_seed_defaults() -> None:
    config = conf([])
    assert config.filters == DEFAULT_FILTERS
    assert config.listen == ("tcp:9000",)
    assert config.storage == "fws.storage_objects.memory"


@pytest.mark.parametrize(
    ("argv", "filters"),
    [
        (["-f", "a", "b", "c"], ("a", "b", "c")),
        (["--filters", "a,b", "c"], ("a", "b", "c")),
        (["-f", "a", "-p", "1", "-f", "b"], ("a", "b")),
        (["--filters=a, b"], ("a", "b")),
    ],
)
def test_filter_lists(argv: list[str], filters: tuple[str, ...]) -> None:
    assert conf(argv).filters == filters


@pytest.mark.parametrize(
    ("argv", "listen"),
    [
        (["-p", "9999"], ("tcp:9999",)),
        (["--port", "8000", "-i", "127.0.0.1"], ("tcp:8000:interface=127.0.0.1",)),
        (["--listen", "unix:/tmp/x.sock", "--listen", "tcp:1"], ("unix:/tmp/x.sock", "tcp:1")),
        (["--listen", "unix:/tmp/x.sock", "-p", "5"], ("unix:/tmp/x.sock", "tcp:5")),
    ],
)
def test_listen_endpoints(argv: list[str], listen: tuple[str, ...]) -> None:
    assert conf(argv).listen == listen


def test_key_and_cert_make_an_ssl_endpoint(tmp_path: Path) -> None:
    key, cert = tmp_path / "k:ey.pem", tmp_path / "cert.pem"
    key.write_text("x")
    cert.write_text("y")
    [endpoint] = conf(["-p", "9443", "-key", str(key), "-cert", str(cert)]).listen
    assert endpoint.startswith("ssl:9443:privateKey=")
    assert "k\\:ey.pem" in endpoint and f"certKey={cert}" in endpoint


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nope"], "unrecognized arguments: --nope"),
        (["-p", "http"], "port (command line) must be an integer"),
        (["-p", "70000"], "between 0 and 65535"),
        (["-key", "/nonexistent/key.pem"], "TLS key file /nonexistent/key.pem does not exist"),
        (["-c", "/nonexistent/fws.json"], "cannot read config file /nonexistent/fws.json"),
        (["--log-level", "loud"], "invalid choice: 'loud'"),
        (["--storage", "no.such.storage"], "storage module 'no.such.storage' is not available"),
        (["-f"], "expected at least one argument"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(argv, environ={})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_key_with_listen_but_no_port_is_ambiguous(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("x")
    with pytest.raises(ConfigError, match="apply to the --port listener"):
        resolve(["--listen", "tcp:1", "-key", str(key)], environ={})


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.json"
    path.write_text(text)
    return str(path)


def test_seed_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
        # config.json
        {
            "port": "9999",
            # comment lines may sit anywhere
            "filters": ["filtered_websocket.filters.broadcast_messages_by_token",
                        "filtered_websocket.filters.stdout_messages"]
        }
    """)
    config = conf(["-c", path])
    assert config.listen == ("tcp:9999",)
    assert config.filters == ("filtered_websocket.filters.broadcast_messages_by_token",
                              "filtered_websocket.filters.stdout_messages")


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps({"port": 1, "log-level": "warn", "stop_timeout": 7,
                                       "flags": ["debug"], "filters": "echo"}))
    config = conf(["-c", path, "-p", "3"], env={"FWS_PORT": "2", "FWS_STOP_TIMEOUT": "8"})
    assert config.listen == ("tcp:3",)
    assert config.stop_timeout == 8.0
    assert config.log_level == "debug"  # the debug flag from the file
    assert config.filters == ("echo",)
    assert conf(["-c", path], env={"FWS_PORT": "2"}).listen == ("tcp:2",)
    assert conf(["-c", path]).listen == ("tcp:1",)


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '{"port": 4321}')
    assert conf([], env={"FWS_CONFIG": path}).listen == ("tcp:4321",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"port": 1,}', "invalid JSON"),
        ('{"colour": "blue"}', "unknown option 'colour'"),
        ('{"flags": ["loud"]}', "unknown flag 'loud'"),
        ('{"flags": ["port"]}', "unknown flag 'port'"),
        ('["port"]', "expected a JSON object"),
        ('{"port": true}', "must be an integer"),
        ('{"filters": [1, 2]}', "must be a list of strings"),
        ('{"config": "other.json"}', "cannot be set inside a config file"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        resolve(["-c", path], environ={})
    assert message in str(info.value) and path in str(info.value)


def test_invalid_json_reports_the_real_line(tmp_path: Path) -> None:
    path = write(tmp_path, '# comment\n# another\n{\n  "port": 1\n  "filters": []\n}\n')
    with pytest.raises(ConfigError, match="line 5"):
        resolve(["-c", path], environ={})


def test_dashed_and_underscored_long_forms() -> None:
    assert conf(["--log_level", "warn"]).log_level == "warn"
    assert conf(["--log-level", "error"]).log_level == "error"
    assert conf(["--stop_timeout", "1.5"]).stop_timeout == 1.5


def test_storage_from_legacy_environment_variable() -> None:
    config = conf([], env={"STORAGE_OBJECT_MODULE": "filtered_websocket.storage_objects.memory"})
    assert config.storage == "fws.storage_objects.memory"


def test_help_is_printed_not_parsed() -> None:
    shown: list[str] = []
    assert resolve(["-h", "--port", "nonsense"], environ={}, print_help=shown.append) is None
    text = shown[0]
    for flag in ("-p PORT", "--port", "-f MODULE", "-c FILE", "-key FILE", "-cert FILE", "--listen"):
        assert flag in text


def test_twistd_options_share_the_parser(tmp_path: Path) -> None:
    from fws.tap import Options

    options = Options()
    options.parseOptions(["--filters", "echo", "stdout_messages", "--port", "9100"])
    config: Any = options["config"]
    assert config.filters == ("echo", "stdout_messages") and config.listen == ("tcp:9100",)
    assert [e.name for e in options["pipeline"].message] == [
        "fws.filters.echo.Echo", "fws.filters.stdout_messages.StdoutMessages"]


# --- every spelling -h shows works in the environment and in a config file -----------------

REDIS = "fws.storage_objects.redis"


def test_storage_object_module_from_the_environment() -> None:
    # --storage-object-module is the first spelling -h shows for --storage
    config = conf([], env={"FWS_STORAGE_OBJECT_MODULE": REDIS, "FWS_REDIS_PORT": "7000"})
    assert config.storage == REDIS and config.storage_options["redis_port"] == 7000


@pytest.mark.parametrize("key", ["storage_object_module", "storage-object-module"])
def test_storage_object_module_in_a_config_file(tmp_path: Path, key: str) -> None:
    # The storage module's own options in the same file are known, too.
    path = write(tmp_path, json.dumps({key: REDIS, "redis_port": 7000}))
    config = conf(["-c", path])
    assert config.storage == REDIS and config.storage_options["redis_port"] == 7000


def all_options() -> list[Option]:
    from fws.storage_objects.redis import OPTIONS as REDIS_OPTIONS

    return [*CORE_OPTIONS, *REDIS_OPTIONS]


def long_spellings(opt: Option) -> list[str]:
    """What ``-h`` lists for the option, without one-letter flags (``-p``): ``key``, ``keyfile``."""
    return [s.lstrip("-") for s in opt.option_strings if len(s.lstrip("-")) > 1]


def sample(opt: Option, tmp_path: Path) -> tuple[Any, Any]:
    """A value for the option that differs from its default, and what it resolves to."""
    if opt.kind == "flag":
        return True, True
    if opt.kind == "int":
        return 7, 7
    if opt.kind == "float":
        return 2.5, 2.5
    if opt.kind == "list":
        value = {"listen": "tcp:7", "admin": "tcp:8", "trusted_proxies": "10.0.0.0/8",
             "allowed_origins": "https://value-x.example"}.get(
            opt.name, "value-x")
        return [value], (value,)
    if opt.choices:
        return opt.choices[-1], opt.choices[-1]
    if opt.name in ("key", "cert"):
        (tmp_path / "tls.pem").write_text("x")
        return str(tmp_path / "tls.pem"), str(tmp_path / "tls.pem")
    if opt.name == "static":
        return str(tmp_path), str(tmp_path)
    if opt.name == "storage":
        return REDIS, REDIS
    return "value-x", "value-x"


SPELLINGS = [(opt.name, spelling) for opt in all_options() if opt.name != "config"
             for spelling in long_spellings(opt)]


def option(name: str) -> Option:
    [opt] = [o for o in all_options() if o.name == name]
    return opt


@pytest.mark.parametrize(("name", "spelling"), SPELLINGS)
def test_every_spelling_works_in_the_environment(tmp_path: Path, name: str,
                                                 spelling: str) -> None:
    opt = option(name)
    value, expected = sample(opt, tmp_path)
    raw = "1" if value is True else " ".join(value) if isinstance(value, list) else str(value)
    env = {"FWS_" + spelling.replace("-", "_").upper(): raw}
    if name != "storage":
        env["FWS_STORAGE"] = REDIS  # so that the Redis options exist
    assert conf([], env=env).options[name] == expected


@pytest.mark.parametrize("dashes", [False, True], ids=["underscores", "dashes"])
@pytest.mark.parametrize(("name", "spelling"), SPELLINGS)
def test_every_spelling_works_in_a_config_file(tmp_path: Path, name: str, spelling: str,
                                               dashes: bool) -> None:
    opt = option(name)
    value, expected = sample(opt, tmp_path)
    key = spelling.replace("_", "-") if dashes else spelling.replace("-", "_")
    data: dict[str, Any] = {key: value}
    if name != "storage":
        data["storage"] = REDIS
    assert conf(["-c", write(tmp_path, json.dumps(data))]).options[name] == expected
    if opt.kind == "flag":  # also listed under "flags"
        data = {"flags": [key], "storage": REDIS}
        assert conf(["-c", write(tmp_path, json.dumps(data))]).options[name] is True


def test_no_two_options_share_a_spelling() -> None:
    seen: dict[str, str] = {}
    for opt in all_options():
        for spelling in {s.replace("-", "_") for s in long_spellings(opt)}:
            assert seen.setdefault(spelling, opt.name) == opt.name, spelling


def test_two_keys_for_one_option_are_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps({"storage": REDIS,
                                       "storage_object_module": "fws.storage_objects.memory"}))
    with pytest.raises(ConfigError, match="'storage' and 'storage_object_module' both set "
                                          "storage"):
        resolve(["-c", path], environ={})


def test_unknown_config_key_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    import subprocess

    from tests.processes import BIN

    path = write(tmp_path, '{"port": 1, "colour": "blue"}')
    result = subprocess.run([str(BIN / "fws_server"), "-c", path], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"fws_server: error: config file {path}: unknown option 'colour'\n"
