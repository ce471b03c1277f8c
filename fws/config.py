"""
Options, configuration files and environment variables, resolved into one :class:`Config`.

Both front ends (``fws_server`` and ``twistd fws``) parse their arguments with
the one parser built here, so they accept exactly the same options.  The
precedence is: command line, then ``FWS_*`` environment variables, then the
JSON config file, then the defaults.  Every problem is a :class:`ConfigError`
whose message is one line, fit for ``prog: error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from fws.limits import LimitError, Limits, limits_from_options
from fws.pipeline import modern_name

DEFAULT_PORT = 9000
DEFAULT_FILTERS = ("fws.filters.broadcast_messages", "fws.filters.stdout_messages")
DEFAULT_STORAGE = "fws.storage_objects.memory"
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")

#: The environment variable the 2014 project used to pick its storage object.
STORAGE_ENV = "STORAGE_OBJECT_MODULE"
#: The storage module whose options (``--redis_*``) exist only once it is selected.
REDIS_STORAGE = "fws.storage_objects.redis"


class ConfigError(Exception):
    """A bad option, file or value; ``str(e)`` is one line for stderr."""


@dataclass(frozen=True)
class Option:
    """
    One option, described once for the parser, the config file and the environment.

    :param name: Canonical name: the config-file key and the ``Config`` field
        (``log_level``); ``--log-level`` and ``--log_level`` both work.
    :param flags: Extra spellings, e.g. the seed's ``-p`` or ``-key``.
    :param kind: ``str``, ``int``, ``float``, ``list`` (repeatable / comma
        separated), or ``flag`` (a switch, listed under ``flags`` in a config file).
    """

    name: str
    help: str
    kind: str = "str"
    default: Any = None
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    env: str | None = None
    #: List ``--name_with_underscores`` before the dashed form in ``-h`` (the 2014 spelling).
    underscore_first: bool = False

    @property
    def env_var(self) -> str:
        return self.env or "FWS_" + self.name.upper()

    @property
    def names(self) -> tuple[str, ...]:
        """
        Every name of the option, underscored: the canonical one, then each long
        spelling of :attr:`option_strings` (``-key``, ``--keyfile``,
        ``--storage-object-module``) in ``-h`` order; one-letter flags (``-p``)
        are not names.

        Each name is also an ``FWS_<NAME>`` variable and a config-file key (with
        dashes or underscores), so that every spelling ``-h`` shows works in the
        environment and in a file as well as on the command line.
        """
        out = [self.name]
        for string in self.option_strings:
            name = string.lstrip("-").replace("-", "_")
            if len(name) > 1 and name not in out:
                out.append(name)
        return tuple(out)

    @property
    def env_vars(self) -> tuple[str, ...]:
        """The variables that set the option; the first one set (not empty) wins."""
        out = [self.env_var]
        for name in self.names:
            var = "FWS_" + name.upper()
            if var not in out:
                out.append(var)
        return tuple(out)

    def from_env(self, environ: Mapping[str, str]) -> tuple[str, str] | None:
        """``(variable, value)`` of the first of :attr:`env_vars` set to a non-empty value."""
        for var in self.env_vars:
            value = environ.get(var)
            if value:
                return var, value
        return None

    @property
    def option_strings(self) -> list[str]:
        dashed = "--" + self.name.replace("_", "-")
        under = "--" + self.name
        strings = list(self.flags)
        for s in ((under, dashed) if self.underscore_first else (dashed, under)):
            if s not in strings:
                strings.append(s)
        return strings


CORE_OPTIONS: tuple[Option, ...] = (
    Option("port", "TCP port to listen on (a shorthand for --listen tcp:PORT); "
           f"default {DEFAULT_PORT} when no --listen is given", "int", None, ("-p",), "PORT"),
    Option("interface", "interface the --port listener binds (default: all)", "str", "",
           ("-i",), "ADDR"),
    Option("listen", "Twisted endpoint to listen on, repeatable: tcp:9000:interface=127.0.0.1, "
           "ssl:9443:privateKey=key.pem:certKey=cert.pem, unix:/run/fws.sock, "
           "systemd:domain=INET:index=0", "list", (), (), "ENDPOINT"),
    Option("filters", "filter modules, in pipeline order (names after -f, or comma separated); "
           f"default {' '.join(DEFAULT_FILTERS)}", "list", None, ("-f",), "MODULE"),
    Option("config", "JSON config file (long option names as keys)", "str", None, ("-c",),
           "FILE"),
    Option("key", "TLS private key (PEM) for the --port listener: serves wss://", "str", None,
           ("-key", "--keyfile"), "FILE"),
    Option("cert", "TLS certificate chain (PEM) for the --port listener", "str", None,
           ("-cert", "--certfile"), "FILE"),
    Option("storage", "storage object module (default "
           f"{DEFAULT_STORAGE}; also ${STORAGE_ENV})", "str", None, ("--storage-object-module",),
           "MODULE"),
    Option("log_level", "least severe log level shown", "str", "info", (), "LEVEL", LOG_LEVELS),
    Option("debug", "same as --log-level debug", "flag", False),
    Option("stop_timeout", "seconds, after the drain, that SIGTERM gives clients to receive "
           "what was queued for them and close before the stragglers are aborted", "float", 5.0,
           (), "SECONDS"),
    Option("drain_period", "seconds over which SIGTERM spreads the 1001 closes, so that clients "
           "do not all reconnect at once", "float", 2.0, (), "SECONDS"),
    # --- operations (fws.web, fws.metrics, fws.logs) ---
    Option("admin", "endpoint serving /healthz, /readyz and /metrics over plain HTTP, "
           "repeatable: tcp:9100:interface=127.0.0.1 (keep it private)", "list", (), (),
           "ENDPOINT"),
    Option("static", "directory of files the WebSocket port also serves over plain HTTP "
           "(index.html at /)", "str", None, (), "DIR"),
    Option("public_health", "also answer /healthz and /readyz on the WebSocket port (for load "
           "balancers that can only check the port they send traffic to)", "flag", False),
    Option("public_metrics", "also serve /metrics on the WebSocket port (it tells anyone how "
           "busy the server is)", "flag", False),
    Option("log_format", "format of fws_server's log on stderr: text, or json (one object per "
           "line; under twistd use --logger fws.logs.json_logger)", "str", "text", (), "FORMAT",
           ("text", "json")),
    Option("check", "check the configuration: load every filter and the storage module, print "
           "the pipeline per event and exit (0: usable, 2: not) without listening", "flag",
           False),
    # --- limits (fws.limits) ---
    Option("max_message_size", "largest message in bytes; a larger one closes the connection "
           "with 1009", "int", 1024 * 1024, (), "BYTES"),
    Option("max_frame_size", "largest frame in bytes (1009 over it)", "int", 1024 * 1024, (),
           "BYTES"),
    Option("max_connections", "most open connections; more are refused with HTTP 503 (0: no "
           "limit)", "int", 10000, (), "N"),
    Option("max_pending_handshakes", "TCP connections accepted beyond --max-connections: open "
           "and in-handshake connections together are capped at the sum, and a connection over "
           "it is closed as soon as it is accepted (the room a full server needs to answer 503; "
           "no cap with --max-connections 0)", "int", 1000, (), "N"),
    Option("max_connections_per_ip", "most open connections per client address; more are "
           "refused with HTTP 429 (0: no limit)", "int", 0, (), "N"),
    Option("max_pending_per_ip", "most TCP connections from one address in their opening "
           "handshake (or plain HTTP with --static) at once; one over it is closed as soon as "
           "it is accepted (trusted proxies exempt; 0: no limit)", "int", 100, (), "N"),
    Option("trusted_proxies", "addresses or networks of reverse proxies whose X-Forwarded-For "
           "names the client address", "list", (), (), "NET"),
    Option("max_message_rate", "messages per second a connection may send, on average (token "
           "bucket; 0: no limit)", "float", 1000.0, (), "RATE"),
    Option("message_burst", "messages a connection may send at once above the rate (default: "
           "twice the rate)", "int", 0, (), "N"),
    Option("rate_limit_action", "over the rate: close the connection with 1008, or drop the "
           "message", "str", "close", (), "ACTION", ("close", "drop")),
    Option("max_frame_rate", "frames per second a connection may send, on average: data, "
           "continuation, ping, pong and close alike; over it the connection is closed with "
           "1008 (token bucket; default: twice --max-message-rate; 0: no limit)", "float",
           None, (), "RATE"),
    Option("frame_burst", "frames a connection may send at once above the frame rate "
           "(default: twice the frame rate)", "int", 0, (), "N"),
    Option("open_handshake_timeout", "seconds a client has to complete the opening handshake",
           "float", 10.0, (), "SECONDS"),
    Option("max_handshake_size", "largest opening handshake request in bytes (request line and "
           "headers); a larger one is refused with HTTP 431", "int", 16384, (), "BYTES"),
    Option("max_handshake_headers", "most headers an opening handshake request may have; more "
           "are refused with HTTP 431", "int", 100, (), "N"),
    Option("compression", "accept permessage-deflate (decompressed size is limited by "
           "--max-message-size)", "flag", False),
    Option("max_send_buffer", "bytes that may wait for a client that does not read", "int",
           4 * 1024 * 1024, (), "BYTES"),
    Option("slow_consumer_action", "when a client's send buffer is full: close it with 4008, or "
           "drop messages to it until it catches up", "str", "close", (), "ACTION",
           ("close", "drop")),
    Option("ping_interval", "seconds between WebSocket pings (0: none)", "float", 30.0, (),
           "SECONDS"),
    Option("ping_timeout", "seconds to wait for a pong before dropping the connection", "float",
           10.0, (), "SECONDS"),
    Option("idle_timeout", "close a connection that sent no message for this many seconds, "
           "with 4000 (0: never)", "float", 0.0, (), "SECONDS"),
    Option("allowed_origins", "browser origins allowed to connect (scheme://host[:port], * "
           "wildcards, null for sandboxed and file:// pages); others get HTTP 403 (default: "
           "all); requests without an Origin header are allowed", "list", (), (), "ORIGIN"),
    Option("require_origin", "refuse with HTTP 403 requests without an Origin header (or with "
           "an empty one), for servers that only browsers connect to", "flag", False),
    Option("filter_timeout", "seconds an asynchronous filter may take before it is failed "
           "(0: no limit)", "float", 0.0, (), "SECONDS"),
    Option("reactor", "event loop fws_server runs on: default (fws's epoll reactor) or asyncio "
           "(Twisted's asyncio reactor, on uvloop when it is installed), which coroutine filters "
           "that await asyncio libraries need; under twistd, give twistd --reactor asyncio",
           "str", "default", (), "NAME", ("default", "asyncio")),
    # --- token groups and JWT (fws.filters.broadcast_messages_by_token, fws.filters.auth_jwt) ---
    Option("max_groups_per_connection", "distinct token groups one connection may join "
           "(0: no limit)", "int", 32, (), "N"),
    Option("group_claim", "joining token group NAME needs NAME in this claim of the verified "
           "JWT (with fws.filters.auth_jwt)", "str", None, (), "CLAIM"),
    Option("jwt_secret", "HS256 secret for fws.filters.auth_jwt (better: $FWS_JWT_SECRET)",
           "str", None, (), "SECRET"),
    Option("jwt_public_key", "PEM public key file for RS256/ES256 tokens (fws.filters.auth_jwt)",
           "str", None, (), "FILE"),
    Option("jwt_algorithms", "accepted JWT algorithms (default: HS256 with a secret, RS256 with "
           "a public key)", "list", (), (), "ALG"),
    Option("jwt_audience", "required aud claim", "str", None, (), "AUD"),
    Option("jwt_issuer", "required iss claim", "str", None, (), "ISS"),
    Option("jwt_query_param", "query parameter that may carry the token", "str", "token", (),
           "NAME"),
    Option("jwt_cookie", "cookie that may carry the token", "str", "token", (), "NAME"),
    # --- history and resume (fws.history) ---
    Option("history_size", "messages kept per group (token group, * and pub/sub channel) for "
           "clients of the fws.v1 subprotocol to resume after a reconnect (0: none, and no "
           "fws.v1; at most 100000)", "int", 0, ("--history",), "SIZE"),
    Option("history_ttl", "seconds a kept message can be resumed (at most 86400)", "float",
           300.0, (), "SECONDS"),
    Option("history_max_bytes", "payload bytes the memory history keeps on this node, all "
           "groups together (the oldest go first)", "int", 64 * 1024 * 1024, (), "BYTES"),
)


@dataclass(frozen=True)
class Config:
    """The fully resolved configuration handed to :func:`fws.service.make_service`."""

    filters: tuple[str, ...] = DEFAULT_FILTERS
    listen: tuple[str, ...] = (f"tcp:{DEFAULT_PORT}",)
    storage: str = DEFAULT_STORAGE
    log_level: str = "info"
    stop_timeout: float = 5.0
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    #: Every resolved option by name (core and storage ones), for filters to read.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Endpoints of the admin HTTP server (/healthz, /readyz, /metrics).
    admin: tuple[str, ...] = ()
    #: Directory served over HTTP on the WebSocket port.
    static: str | None = None
    public_health: bool = False
    public_metrics: bool = False
    log_format: str = "text"

    @property
    def metrics_enabled(self) -> bool:
        """Metrics are kept per filter only when something serves them."""
        return bool(self.admin) or self.public_metrics

    @property
    def public_http(self) -> bool:
        """Whether the WebSocket port also answers plain HTTP requests."""
        return bool(self.static) or self.public_health or self.public_metrics


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _prescan(argv: Sequence[str], name: str) -> str | None:
    """The last value given for option ``name`` in ``argv``, before full parsing."""
    strings = [s for o in CORE_OPTIONS if o.name == name for s in o.option_strings]
    found = None
    for i, arg in enumerate(argv):
        head, eq, value = arg.partition("=")
        if head in strings:
            found = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return found


def load_storage_module(name: str) -> Any:
    """Import a storage module by (possibly legacy) name, with one-line errors."""
    target = modern_name(name)
    try:
        module = importlib.import_module(target)
    except ImportError as e:
        raise ConfigError(f"storage module {name!r} is not available: {e}") from e
    if not callable(getattr(module, "make_storage_object", None)):
        raise ConfigError(f"storage module {name!r} has no make_storage_object()")
    return module


def build_parser(prog: str, extra: Sequence[Option] = (), add_help: bool = True) -> _Parser:
    """The argument parser shared by both front ends."""
    parser = _Parser(
        prog=prog,
        add_help=add_help,
        allow_abbrev=False,
        description="fws: a WebSocket server whose behaviour is a pipeline of filter modules.",
        epilog="Every long option may also be set as FWS_<NAME> in the environment or as a key "
        "in the -c JSON file; the command line wins over both.",
    )
    for opt in (*CORE_OPTIONS, *extra):
        shown = opt.default
        if isinstance(shown, tuple):
            shown = " ".join(shown)
        text = f"{opt.help} (default: {shown})" if shown not in (None, "", False) else opt.help
        kwargs: dict[str, Any] = {"dest": opt.name, "default": argparse.SUPPRESS,
                                  "help": text.replace("%", "%%")}
        if opt.kind == "flag":
            kwargs["action"] = "store_true"
        else:
            kwargs["metavar"] = opt.metavar or opt.name.upper()
            if opt.kind == "list":
                kwargs["action"] = "extend"
                kwargs["nargs"] = "+"
            if opt.choices:
                kwargs["choices"] = opt.choices
        parser.add_argument(*opt.option_strings, **kwargs)
    parser.add_argument("--version", action="store_true", dest="_version", default=False,
                        help="print the versions of fws, Python and the libraries it runs "
                        "on, and exit (read before any other option)")
    return parser


def read_config_file(path: str) -> dict[str, Any]:
    """
    Read a JSON config file in which lines starting with ``#`` are comments.

    Comment lines are blanked rather than removed, so JSON error positions
    still point at the right line.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text") from e
    lines = ["" if line.lstrip().startswith("#") else line for line in text.splitlines()]
    try:
        data = json.loads("\n".join(lines))
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path}: invalid JSON: {e.msg} at line {e.lineno}, "
                          f"column {e.colno}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a JSON object at the top level")
    return data


def _split_list(values: Any, what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{what} must be a list of strings")
    out: list[str] = []
    for value in values:
        out.extend(part for part in (p.strip() for p in value.split(",")) if part)
    return tuple(out)


def _coerce(opt: Option, value: Any, source: str) -> Any:
    what = f"{opt.name} ({source})"
    if opt.kind == "list":
        if opt.name in ("listen", "admin"):
            # endpoint strings may hold commas (in paths); only the environment splits, on spaces
            if isinstance(value, str):
                value = value.split() if source.startswith("$") else [value]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{what} must be a list of endpoint strings")
            return tuple(v.strip() for v in value if v.strip())
        return _split_list(value, what)
    if opt.kind == "flag":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no",
                                                        "off", ""):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{what} must be true or false, not {value!r}")
    if opt.kind == "int":
        if isinstance(value, bool):
            raise ConfigError(f"{what} must be an integer, not {value!r}")
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{what} must be an integer, not {value!r}") from None
    if opt.kind == "float":
        try:
            return float(str(value).strip())
        except ValueError:
            raise ConfigError(f"{what} must be a number, not {value!r}") from None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{what} must be a string, not {value!r}")
    value = str(value)
    if opt.choices and value not in opt.choices:
        raise ConfigError(f"{what} must be one of {', '.join(opt.choices)}, not {value!r}")
    return value


def _file_key(key: str) -> str:
    """A config-file key as an option name: ``--log-level``, ``log-level`` -> ``log_level``."""
    return key.lstrip("-").replace("-", "_")


def _file_values(data: Mapping[str, Any], options: Sequence[Option], path: str) -> dict[str, Any]:
    by_key = {name: opt for opt in options for name in opt.names}
    out: dict[str, Any] = {}
    keys: dict[str, str] = {}  # option name -> the key that set it
    for key, value in data.items():
        if key == "flags":
            for flag in _split_list(value, f"flags in {path}"):
                opt = by_key.get(_file_key(flag))
                if opt is None or opt.kind != "flag":
                    raise ConfigError(f"config file {path}: unknown flag {flag!r}")
                out[opt.name] = True
            continue
        opt = by_key.get(_file_key(key))
        if opt is None and _file_key(key).startswith("redis") \
                and not any(o.name.startswith("redis_") for o in options):
            raise ConfigError(f"config file {path}: {_needs_redis(repr(key))}")
        if opt is None:
            raise ConfigError(f"config file {path}: unknown option {key!r}")
        if opt.name == "config":
            raise ConfigError(f"config file {path}: 'config' cannot be set inside a config file")
        if opt.name in keys:
            raise ConfigError(f"config file {path}: {keys[opt.name]!r} and {key!r} both set "
                              f"{opt.name}")
        keys[opt.name] = key
        out[opt.name] = _coerce(opt, value, f"in {path}")
    return out


def resolve(
    argv: Sequence[str],
    prog: str = "fws_server",
    environ: Mapping[str, str] | None = None,
    print_help: Callable[[str], object] | None = None,
) -> Config | None:
    """
    Parse ``argv`` (without the program name) into a :class:`Config`.

    :param print_help: called with the help text when ``-h``/``--help`` is
        given; then ``None`` is returned.
    :raises ConfigError: anything wrong, in one line.
    """
    environ = os.environ if environ is None else environ
    # The storage module adds options of its own (the Redis ones), so it must be
    # known before the parser is built: look for it on the command line, in the
    # environment, then in the config file.
    config_path = _prescan(argv, "config") or environ.get("FWS_CONFIG")
    file_data = read_config_file(config_path) if config_path else {}
    # Every spelling of --storage counts here as it does below, so that whichever
    # one is used also decides which module's options the parser knows.
    [storage_opt] = [opt for opt in CORE_OPTIONS if opt.name == "storage"]
    from_env = storage_opt.from_env(environ)
    in_file = [value for key, value in file_data.items()
               if _file_key(key) in storage_opt.names]
    storage_name = (
        _prescan(argv, "storage")
        or (from_env[1] if from_env else None)
        or environ.get(STORAGE_ENV)
        or (in_file[0] if in_file else None)
        or DEFAULT_STORAGE
    )
    if not isinstance(storage_name, str):
        raise ConfigError("storage must be a module name")
    storage_module = load_storage_module(storage_name)
    extra: tuple[Option, ...] = tuple(getattr(storage_module, "OPTIONS", ()))
    options = (*CORE_OPTIONS, *extra)
    parser = build_parser(prog, extra, add_help=False)
    parser.add_argument("-h", "--help", action="store_true", dest="_help", default=False,
                        help="show this help message and exit")
    if modern_name(storage_name) != REDIS_STORAGE:
        known = {string for opt in options for string in opt.option_strings}
        for arg in argv:
            head = arg.partition("=")[0]
            if head.startswith("--redis") and head not in known:
                raise ConfigError(_needs_redis(head))
        # The same in the environment: FWS_REDIS_URL set for a deployment that forgot
        # FWS_STORAGE would otherwise run a lone node, silently, where several were meant.
        known_vars = {var for opt in options for var in opt.env_vars}
        for var in sorted(environ):
            if var.startswith("FWS_REDIS") and environ[var] and var not in known_vars:
                raise ConfigError(_needs_redis(f"${var}"))
    ns = parser.parse_args(list(argv))
    if ns._help:
        if print_help is not None:
            print_help(parser.format_help())
        return None
    given = {k: v for k, v in vars(ns).items() if not k.startswith("_")}

    values: dict[str, Any] = {opt.name: opt.default for opt in options}
    if config_path:
        values.update(_file_values(file_data, options, config_path))
    for opt in options:
        found = opt.from_env(environ)
        if opt.name != "config" and found:
            values[opt.name] = _coerce(opt, found[1], f"${found[0]}")
    for opt in options:
        if opt.name in given:
            values[opt.name] = _coerce(opt, given[opt.name], "command line")
    values["storage"] = storage_name
    return _build(values, extra)


def _needs_redis(option: str) -> str:
    """
    What an option of the Redis storage says while another storage is selected:
    its options are only known once it is (they are the storage module's, and
    the default storage keeps everything in this process).
    """
    return (f"{option} is an option of the Redis storage, which is not selected: select it "
            f"first with --storage {REDIS_STORAGE} (or {STORAGE_ENV}={REDIS_STORAGE})")


#: An ``--allowed-origins`` entry: ``scheme://host[:port]`` (lower case, ``*`` wildcards, an
#: IPv6 host in brackets), as browsers send ``Origin``; ``null`` and a lone ``*`` are checked apart.
_ORIGIN = re.compile(r"[a-z*][a-z0-9+.*-]*://(?:\[[0-9a-f:.*]+\]|[a-z0-9*_.~-]+)(?::(?:[0-9]+|\*))?")


def origin_problem(origin: str) -> str | None:
    """
    Why an ``--allowed-origins`` entry can match no browser's ``Origin``, or
    ``None``: an origin is ``scheme://host[:port]``, without a path, query or
    user name (browsers send nothing else), or ``null``; ``*`` is a wildcard.
    A typo such as ``example.com`` or ``https://app.example.com/chat`` would
    otherwise refuse every browser with 403 and say nothing at startup.
    """
    text = origin.strip().lower().rstrip("/")
    if text in ("*", "null") or _ORIGIN.fullmatch(text):
        return None
    if "://" not in text:
        hint = f" (e.g. https://{text})" if text and "/" not in text else ""
        return f"allowed_origins: {origin!r} is not an origin: no scheme{hint}"
    return (f"allowed_origins: {origin!r} is not an origin: scheme://host[:port] without a path, "
            "with * wildcards, or null")


def _build(values: Mapping[str, Any], extra: Sequence[Option]) -> Config:
    port = values.get("port")
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"port must be between 0 and 65535, not {port}")
    key, cert = values.get("key"), values.get("cert")
    for label, path in (("key", key), ("cert", cert)):
        if path and not os.access(path, os.R_OK):
            reason = "does not exist" if not os.path.exists(path) else "is not readable"
            raise ConfigError(f"TLS {label} file {path} {reason}")
    listen = list(values.get("listen") or ())
    if (key or cert) and listen and port is None:
        raise ConfigError("-key/-cert apply to the --port listener; give --port, or use an "
                          "ssl: endpoint with --listen")
    if port is not None or not listen:
        listen.append(tcp_or_ssl_endpoint(DEFAULT_PORT if port is None else port,
                                          values.get("interface") or "", key, cert))
    filters = values.get("filters")
    if filters is None:
        filters = DEFAULT_FILTERS
    if not filters:
        raise ConfigError("no filters given")
    static = values.get("static") or None
    if static is not None and not os.path.isdir(static):
        reason = "does not exist" if not os.path.exists(static) else "is not a directory"
        raise ConfigError(f"static directory {static} {reason}")
    stop_timeout = float(values.get("stop_timeout", 5.0))
    if stop_timeout < 0:
        raise ConfigError("stop_timeout must not be negative")
    for origin in values.get("allowed_origins") or ():
        problem = origin_problem(origin) if origin.strip() else None
        if problem is not None:
            raise ConfigError(problem)
    try:
        limits = limits_from_options(values)
    except LimitError as e:
        raise ConfigError(str(e)) from None
    return Config(
        filters=tuple(filters),
        listen=tuple(listen),
        storage=modern_name(values.get("storage") or DEFAULT_STORAGE),
        log_level="debug" if values.get("debug") else values.get("log_level") or "info",
        stop_timeout=stop_timeout,
        storage_options={opt.name: values.get(opt.name) for opt in extra},
        limits=limits,
        options=dict(values),
        admin=tuple(values.get("admin") or ()),
        static=os.path.abspath(static) if static else None,
        public_health=bool(values.get("public_health")),
        public_metrics=bool(values.get("public_metrics")),
        log_format=values.get("log_format") or "text",
    )


def tcp_or_ssl_endpoint(port: int, interface: str, key: str | None, cert: str | None) -> str:
    """The endpoint string that the seed's ``-p``/``-key``/``-cert`` stand for."""
    from twisted.internet.endpoints import quoteStringArgument as q

    iface = f":interface={q(interface)}" if interface else ""
    if key or cert:
        return f"ssl:{port}:privateKey={q(key or cert or '')}:certKey={q(cert or key or '')}{iface}"
    return f"tcp:{port}{iface}"
