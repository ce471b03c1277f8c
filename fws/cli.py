"""
``fws_server``: the 2014 command line (``-p``, ``-f a b c``, ``-c``, ``-key``,
``-cert``) in front of the same service tree ``twistd fws`` runs.

It runs in the foreground, logs to stderr (so that what the ``stdout_*``
filters print is all that reaches stdout), and stops gracefully on SIGTERM or
SIGINT with exit status 0.  For daemonising, pidfiles and privilege dropping,
use ``twistd fws``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

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


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``fws_server`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if version_requested(args):
        sys.stdout.write(version_text())
        return
    from fws._wire.reactor import install_if_possible

    install_if_possible()  # before any filter module can import the default reactor
    try:
        config = resolve(args, prog=PROG, print_help=sys.stdout.write)
        if config is None:
            return
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
                                     reactor=type(reactor).__name__, framing=DESCRIPTION)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.callWhenRunning(install_stop_signals, reactor)
    reactor.run()


if __name__ == "__main__":  # pragma: no cover
    main()
