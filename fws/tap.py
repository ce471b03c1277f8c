"""
The twistd adapter: ``twistd fws`` parses its options here and gets its service from here.

The options are the very ones ``fws_server`` takes (one parser,
:func:`fws.config.resolve`), and the service is the one
:func:`fws.service.make_service` builds.

A start that fails says why in one line, on stderr and in twistd's log,
daemonised or not: before twistd forks (options, configuration, filters,
endpoints) with exit status 2, after it (listening) through twistd's own
status pipe with exit status 1 (see :class:`StartupError`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.logger import Logger, textFileLogObserver
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
from fws.versions import version_requested, version_text

PROG = "twistd fws"

log = Logger(namespace="fws.tap")


class Options(usage.Options):
    """
    ``twistd fws`` options: ``--listen`` (repeatable), ``--port``, ``--filters``
    (names after it, or comma separated), ``--config`` and everything else
    ``fws_server -h`` lists.
    """

    synopsis = "[--listen ENDPOINT]... [--port PORT] [--filters MODULE...] [--config FILE]"

    def parseOptions(self, options: list[str] | None = None) -> None:
        args = sys.argv[1:] if options is None else list(options)
        if version_requested(args):  # fws's, not usage.Options.opt_version (Twisted's alone)
            _print_help(version_text())
            raise SystemExit(0)
        try:
            config = resolve(args, prog=PROG, print_help=_print_help)
            if config is None:
                raise SystemExit(0)
            if config.log_format != "text":
                raise ConfigError("--log-format is fws_server's; twistd owns logging here: "
                                  "twistd --logger fws.logs.json_logger fws ...")
            if config.options.get("reactor") == "asyncio":
                # twistd installed its reactor before reading fws's options: say so, rather
                # than run on another reactor than the one asked for.
                from twisted.internet import reactor as installed
                from twisted.internet.asyncioreactor import AsyncioSelectorReactor

                if not isinstance(installed, AsyncioSelectorReactor):
                    raise ConfigError("--reactor asyncio is fws_server's; under twistd give "
                                      "twistd's own option, before fws: "
                                      "twistd --reactor asyncio fws ...")
            self["config"] = config
            self["pipeline"] = load_pipeline(config.filters, config)
            if config.options.get("check"):
                from twisted.internet import reactor

                service = make_service(config, reactor, self["pipeline"])
                sys.stdout.write(check_report(service))
                raise SystemExit(0)
        except (ConfigError, FilterLoadError) as e:
            _fail_before_logging(self.parent, str(e))

    def getUsage(self, width: int | None = None) -> str:
        return build_parser(PROG).format_help()


def _print_help(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class StartupError(SystemExit, Exception):
    """
    A startup failure after twistd may have daemonised, already reported in one line.

    It must be an :class:`Exception`: ``UnixApplicationRunner.postApplication``
    catches only those from ``startApplication``, and that is how twistd's
    daemon child tells its waiting parent (through the status pipe) that startup
    failed, and removes the pidfile.  Anything else, such as the ``SystemExit``
    fws raised before, leaves the pipe unwritten, and the parent, which still
    holds the pipe's write end itself, waits for ever.  It is a
    :class:`SystemExit` as well so that, when postApplication re-raises it, the
    child ends with status 1 without printing a traceback (into the log file,
    where twistd sends stderr): the error is the user's, and it is already there
    in one line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = 1  # SystemExit.code: the exit status, not the message


class _StartupReport:
    """
    Where a startup failure is reported: the log and the terminal's stderr.

    twistd daemonises between ``makeService`` and ``privilegedStartService``
    and points the daemon's descriptors 0-2 at ``/dev/null``; of the terminal
    only the parent's status-pipe message remains, which twistd cuts at 100
    bytes and wraps in its own words.  So a copy of stderr is taken here,
    before the fork, for the daemon to write the whole line to, and closed as
    soon as startup is over either way (a daemon that kept it would hold the
    caller's pipe open, e.g. ``$(twistd ...)`` or a supervisor's).
    """

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.dup(2)  # not inherited by exec'd programs
        except OSError:
            self._fd = None

    def failed(self, message: str) -> StartupError:
        """Log ``message``, write it to the terminal, and return what to raise."""
        log.critical("{prog}: error: {message}", prog=PROG, message=message)
        line = f"{PROG}: error: {message}\n".encode("utf-8", "backslashreplace")
        if self._fd is not None:
            try:
                os.write(self._fd, line)
            except OSError:
                pass
        self.close()
        return StartupError(message)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _TwistdRoot(MultiService):
    """
    Wraps :class:`FwsService` with what only twistd needs: a listen failure
    becomes one line on stderr and in the log, and exit status 1 through
    twistd's own startup-failure path (:class:`StartupError`), with or without
    ``-n``; and SIGTERM/SIGINT exit 0.

    Listening stays in ``privilegedStartService``, where twistd expects it:
    after the fork (so the daemon, not the exiting parent, owns the sockets and
    the reactor state) and before ``--uid``/``--gid`` drop privileges.
    """

    def __init__(self, fws: FwsService, report: _StartupReport) -> None:
        super().__init__()
        self.fws = fws
        self.report = report
        fws.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenError as e:
            raise self.report.failed(str(e)) from None

    def startService(self) -> None:
        super().startService()
        self.report.close()  # started: the daemon lets go of the terminal
        reactor = self.fws.factory.reactor
        reactor.callWhenRunning(install_stop_signals, reactor)


def _twistd_log_file(twistd_options: Any) -> str | None:
    """
    The file twistd will log to, by its own rules (``UnixAppLogger``), or
    ``None`` when it logs elsewhere: stdout (``-n`` without ``--logfile``, or
    ``--logfile -``), syslog, or a ``--logger`` of the user's choice.
    """
    if twistd_options is None:
        return None
    get = twistd_options.get
    if get("syslog") or get("logger"):
        return None
    name = get("logfile") or ""
    if name == "-":
        return None
    if not name:
        return None if (get("nodaemon") or get("debug")) else "twistd.log"
    return str(name)


def _fail_before_logging(twistd_options: Any, message: str) -> None:
    """
    Fail a start that had not got as far as twistd's logging (bad options,
    configuration, filters, endpoints): one line on stderr, exit status 2, as
    before; and the line in the log file twistd would have opened, so that a
    daemon's log says why it never started.  twistd has not forked yet, so the
    terminal sees the line and the exit status directly.
    """
    path = _twistd_log_file(twistd_options)
    if path is not None:
        try:
            with open(path, "a", encoding="utf-8") as f:
                Logger(namespace="fws.tap", observer=textFileLogObserver(f)).critical(
                    "{prog}: error: {message}", prog=PROG, message=message)
        except OSError:
            pass  # a log file fws cannot write to: stderr has the line anyway
    fail_startup(PROG, message, 2)


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the service for ``twistd fws``; the only place that may pick the global reactor."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config: Config = options["config"]
    pipeline: FilterPipeline | None = options.get("pipeline")
    parent = getattr(options, "parent", None)
    try:
        fws = make_service(config, reactor, pipeline)
    except (ConfigError, FilterLoadError) as e:
        _fail_before_logging(parent, str(e))
    return _TwistdRoot(fws, _StartupReport())
