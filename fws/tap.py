"""
The twistd adapter: ``twistd fws`` parses its options here and gets its service from here.

The options are the very ones ``fws_server`` takes (one parser,
:func:`fws.config.resolve`), and the service is the one
:func:`fws.service.make_service` builds.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from fws.config import Config, ConfigError, build_parser, resolve
from fws.pipeline import FilterLoadError, FilterPipeline, load_pipeline
from fws.service import (
    FwsService,
    ListenError,
    check_report,
    fail_startup,
    install_stop_signals,
    make_service,
)

PROG = "twistd fws"


class Options(usage.Options):
    """
    ``twistd fws`` options: ``--listen`` (repeatable), ``--port``, ``--filters``
    (names after it, or comma separated), ``--config`` and everything else
    ``fws_server -h`` lists.
    """

    synopsis = "[--listen ENDPOINT]... [--port PORT] [--filters MODULE...] [--config FILE]"

    def parseOptions(self, options: list[str] | None = None) -> None:
        args = sys.argv[1:] if options is None else list(options)
        try:
            config = resolve(args, prog=PROG, print_help=_print_help)
            if config is None:
                raise SystemExit(0)
            if config.log_format != "text":
                raise ConfigError("--log-format is fws_server's; twistd owns logging here: "
                                  "twistd --logger fws.logs.json_logger fws ...")
            self["config"] = config
            self["pipeline"] = load_pipeline(config.filters, config)
            if config.options.get("check"):
                from twisted.internet import reactor

                service = make_service(config, reactor, self["pipeline"])
                sys.stdout.write(check_report(service))
                raise SystemExit(0)
        except (ConfigError, FilterLoadError) as e:
            fail_startup(PROG, str(e), 2)

    def getUsage(self, width: int | None = None) -> str:
        return build_parser(PROG).format_help()


def _print_help(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class _TwistdRoot(MultiService):
    """
    Wraps :class:`FwsService` with what only twistd needs: a listen failure
    becomes one stderr line and exit status 1 (after removing twistd's
    pidfile), and SIGTERM/SIGINT exit 0.
    """

    def __init__(self, fws: FwsService, pidfile: str | None) -> None:
        super().__init__()
        self.fws = fws
        self.pidfile = pidfile
        fws.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenError as e:
            if self.pidfile and _pidfile_is_ours(self.pidfile):
                os.remove(self.pidfile)
            fail_startup(PROG, str(e), 1)

    def startService(self) -> None:
        super().startService()
        reactor = self.fws.factory.reactor
        reactor.callWhenRunning(install_stop_signals, reactor)


def _pidfile_is_ours(path: str) -> bool:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) == os.getpid()
    except (OSError, ValueError):
        return False


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the service for ``twistd fws``; the only place that may pick the global reactor."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config: Config = options["config"]
    pipeline: FilterPipeline | None = options.get("pipeline")
    try:
        fws = make_service(config, reactor, pipeline)
    except (ConfigError, FilterLoadError) as e:
        fail_startup(PROG, str(e), 2)
    parent = getattr(options, "parent", None)
    pidfile = parent.get("pidfile") if parent is not None else None
    return _TwistdRoot(fws, pidfile)
