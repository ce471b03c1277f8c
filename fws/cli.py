"""
``fws_server``: the 2014 command line (``-p``, ``-f a b c``, ``-c``, ``-key``,
``-cert``) in front of the same service tree ``twistd fws`` runs.

It runs in the foreground, logs to stderr (so that what the ``stdout_*``
filters print is all that reaches stdout), and stops gracefully on SIGTERM or
SIGINT with exit status 0.  For daemonising, pidfiles and privilege dropping,
use ``twistd fws``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from fws.config import Config, ConfigError, resolve
from fws.pipeline import FilterLoadError, load_pipeline
from fws.service import (
    ListenError,
    check_report,
    fail_startup,
    install_stop_signals,
    make_service,
)
from fws.versions import version_requested, version_text

PROG = "fws_server"


def start_logging(config: Config) -> None:
    """Send log events at ``config.log_level`` or above to stderr."""
    import txaio
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    txaio.use_twisted()
    txaio.set_global_log_level(config.log_level)  # type: ignore[attr-defined]
    level = LogLevel.levelWithName(config.log_level)
    if config.log_format == "json":
        from fws.logs import json_observer

        sink = json_observer(sys.stderr)
    else:
        sink = textFileLogObserver(sys.stderr)
    observer = FilteringLogObserver(sink, [LogLevelFilterPredicate(defaultLogLevel=level)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


# --- the reactor (--reactor) ----------------------------------------------------------------

#: The asyncio loop :func:`install_reactor` put under the asyncio reactor, for the log line.
_installed_loop: object = None


def reactor_choice(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> str:
    """
    The ``--reactor`` value, read the way :func:`fws.config.resolve` will read it
    (command line, then ``FWS_REACTOR``, then the ``-c`` file), but before it.

    The reactor must be installed before anything imports
    ``twisted.internet.reactor``, and resolving the configuration imports the
    storage module, which may.  A value this cannot read (a bad file, an
    unknown name) gives ``default`` here, and :func:`resolve` then reports it.
    """
    from fws.config import CORE_OPTIONS, _file_key, _prescan, read_config_file

    environ = os.environ if environ is None else environ
    [opt] = [o for o in CORE_OPTIONS if o.name == "reactor"]
    value: object = _prescan(argv, "reactor")
    if value is None:
        found = opt.from_env(environ)
        value = found[1] if found else None
    if value is None:
        path = _prescan(argv, "config") or environ.get("FWS_CONFIG")
        try:
            data = read_config_file(path) if path else {}
        except ConfigError:
            data = {}
        for key, item in data.items():
            if _file_key(key) in opt.names:
                value = item
    return value if isinstance(value, str) and value in (opt.choices or ()) else "default"


def install_reactor(choice: str) -> None:
    """
    Install the reactor ``--reactor`` names, unless a reactor is installed already
    (an embedding program's: :func:`check_reactor` then says whether it will do).

    ``default`` is fws's epoll reactor (:mod:`fws._wire.reactor`) where the
    platform has epoll, else Twisted's default.  ``asyncio`` is Twisted's
    ``AsyncioSelectorReactor`` on a uvloop loop when uvloop can be imported
    (it is a faster loop, and asyncio libraries cannot tell the difference),
    else on asyncio's own loop: the reactor coroutine filters need to await
    asyncio awaitables (aiohttp, redis.asyncio, asyncpg).
    """
    if "twisted.internet.reactor" in sys.modules:
        return
    if choice != "asyncio":
        from fws._wire.reactor import install_if_possible

        install_if_possible()
        return
    import asyncio

    try:
        import uvloop
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    from twisted.internet import asyncioreactor

    asyncioreactor.install(loop)
    global _installed_loop
    _installed_loop = loop


def check_reactor(choice: str) -> None:
    """:raises ConfigError: ``--reactor asyncio`` was asked for, and another reactor is installed."""
    if choice != "asyncio":
        return
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise ConfigError(f"--reactor asyncio: another reactor ({type(reactor).__name__}) was "
                          "installed before fws_server could install the asyncio one")


def describe_reactor(reactor: object) -> str:
    """The reactor's class, and for the asyncio reactor the loop's (uvloop or asyncio's)."""
    name = type(reactor).__name__
    if _installed_loop is not None:
        loop = type(_installed_loop)
        name += f" on {loop.__module__}.{loop.__name__}"
    return name


def _warn_of_the_2014_package() -> None:
    """
    One line on stderr when the 2014 ``filtered_websocket`` is installed too.

    Both packages install ``bin/fws_server`` and pip does not notice: the
    one installed last owns the command, and uninstalling the old package
    deletes the file whichever wrote it (docs/upgrading.rst). While fws's
    runs, say so once, with the repair, before that uninstall surprises anyone.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        old = version("filtered_websocket")
    except PackageNotFoundError:
        return
    sys.stderr.write(f"{PROG}: warning: the 2014 package filtered_websocket {old} is installed "
                     "too and shares this command's file (pip uninstall filtered_websocket "
                     "deletes it): run pip uninstall -y filtered_websocket && pip install "
                     "--force-reinstall --no-deps . in the fws checkout (docs/upgrading.rst)\n")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``fws_server`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    _warn_of_the_2014_package()
    if version_requested(args):
        sys.stdout.write(version_text())
        return
    wanted = reactor_choice(args)
    install_reactor(wanted)  # before any filter module can import the default reactor
    try:
        config = resolve(args, prog=PROG, print_help=sys.stdout.write)
        if config is None:
            return
        check_reactor(config.options.get("reactor") or "default")
        pipeline = load_pipeline(config.filters, config)
    except (ConfigError, FilterLoadError) as e:
        fail_startup(PROG, str(e), 2)

    from twisted.internet import reactor

    try:
        service = make_service(config, reactor, pipeline)
    except (ConfigError, FilterLoadError) as e:
        fail_startup(PROG, str(e), 2)
    if config.options.get("check"):
        sys.stdout.write(check_report(service))
        return
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # filters print lines; pipes see them at once
    start_logging(config)
    try:
        service.privilegedStartService()
    except ListenError as e:
        fail_startup(PROG, str(e), 1)
    from twisted.logger import Logger

    from fws._wire.framing import DESCRIPTION

    Logger(namespace="fws.cli").info("reactor: {reactor}; framing: {framing}",
                                     reactor=describe_reactor(reactor), framing=DESCRIPTION)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.callWhenRunning(install_stop_signals, reactor)
    reactor.run()


if __name__ == "__main__":  # pragma: no cover
    main()
