"""
FilterPipeline: the ordered chains of filters that one server runs per event.

Everything here is per server: :func:`load_pipeline` builds a fresh
:class:`FilterPipeline` from a list of module names, so two servers in one
process (or two tests) never share filters.  Nothing in this module touches
the reactor.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Coroutine, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure

from fws._wire import payload as _payload
from fws.filters.base import CHAIN_BASES, EVENTS, STOP, Refuse, StopChain, WebSocketFilter
from fws.storage_objects import subscript_problem

log = Logger()

FAILED: Any = object()
"""Outcome of a chain in which a filter raised: the rest of the chain was skipped."""

#: While a message chain runs, the binary flag of the message being handled:
#: ``sendMessage`` reads it (fws._wire.payload) so that
#: ``other.sendMessage(bytes(data))`` forwards text as text and binary as binary.
current_message_binary = _payload.current_message_binary

FilterFunc = Callable[[Any, Any], Any]


class FilterLoadError(Exception):
    """A filter module could not be used; the message is one line, fit for stderr."""


@dataclass(frozen=True)
class FilterEntry:
    """
    One filter in a chain: its display name and the callable to run.

    :ivar timeout: Seconds an asynchronous result may take (0: no limit),
        measured on ``clock``.
    """

    name: str
    func: FilterFunc
    timeout: float = 0.0
    clock: Any = None


# --- legacy names --------------------------------------------------------------------------

LEGACY_PREFIX = "filtered_websocket"


def modern_name(name: str) -> str:
    """
    Map a 2014 ``filtered_websocket.*`` module name to its ``fws.*`` equivalent.

    >>> modern_name("filtered_websocket.filters.echo")
    'fws.filters.echo'
    """
    if name == LEGACY_PREFIX or name.startswith(LEGACY_PREFIX + "."):
        return "fws" + name[len(LEGACY_PREFIX) :]
    return name


class _LegacyAliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """The aliased module is already executed."""


class LegacyAliasFinder(importlib.abc.MetaPathFinder):
    """
    Make ``import filtered_websocket.filters.base`` give ``fws.filters.base``.

    Old user modules start with ``from filtered_websocket.filters.base import
    WebSocketMessageFilter``; with this finder they load unchanged, and the
    classes they get are the very fws classes (not copies).
    """

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if modern_name(fullname) == fullname:
            return None
        target_name = modern_name(fullname)
        if importlib.util.find_spec(target_name) is None:
            return None
        return importlib.util.spec_from_loader(
            fullname, _LegacyAliasLoader(target_name), is_package=True
        )


def install_legacy_aliases() -> None:
    """Install :class:`LegacyAliasFinder` once per process (idempotent)."""
    if not any(isinstance(f, LegacyAliasFinder) for f in sys.meta_path):
        # First in line: otherwise PathFinder would find fws files through the aliased
        # package's __path__ and load second copies under the legacy names.
        sys.meta_path.insert(0, LegacyAliasFinder())


# --- loading -------------------------------------------------------------------------------


def _import_filter_module(name: str) -> ModuleType:
    """
    Import a module named on the command line, with one-line errors.

    Order: the name as given (the current directory comes first on
    ``sys.path``, as for ``python script.py``), the legacy mapping, then, for a
    bare name such as ``echo``, the bundled ``fws.filters.echo``.
    """
    if not name or any(not part.isidentifier() for part in name.split(".")):
        raise FilterLoadError(f"filter module {name!r} is not a valid dotted module name")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    install_legacy_aliases()
    candidates = [modern_name(name)]
    if "." not in name:
        candidates.append(f"fws.filters.{name}")
    for candidate in candidates:
        try:
            return importlib.import_module(candidate)
        except ModuleNotFoundError as e:
            # Only "this very module does not exist" moves on to the next candidate;
            # a module that exists but imports something missing is that module's bug.
            missing = e.name or ""
            if missing and (candidate == missing or candidate.startswith(missing + ".")):
                continue
            raise FilterLoadError(
                f"filter module {name!r} failed to import: {type(e).__name__}: {e}"
            ) from e
        except SyntaxError as e:
            where = f"{os.path.basename(e.filename or '?')}, line {e.lineno}"
            raise FilterLoadError(
                f"filter module {name!r} failed to import: SyntaxError: {e.msg} ({where})"
            ) from e
        except Exception as e:
            raise FilterLoadError(
                f"filter module {name!r} failed to import: {type(e).__name__}: {e}"
            ) from e
    raise FilterLoadError(
        f"filter module {name!r} not found (looked for {' and '.join(map(repr, candidates))}"
        f" from {cwd})"
    )


def _chain_of(cls: type) -> str | None:
    bases = [base for base in CHAIN_BASES if issubclass(cls, base)]
    if not bases:
        return None
    if len(bases) > 1:
        raise FilterLoadError(
            f"filter {cls.__module__}.{cls.__qualname__} subclasses more than one chain base "
            f"({', '.join(b.__name__ for b in bases)}); write one class per event"
        )
    return bases[0].event


def _callable_of(cls: type[WebSocketFilter]) -> FilterFunc:
    raw = inspect.getattr_static(cls, "filter")
    if isinstance(raw, (classmethod, staticmethod)):
        func: FilterFunc = cls.filter
        return func
    try:
        instance = cls()
    except Exception as e:
        raise FilterLoadError(
            f"filter {cls.__module__}.{cls.__qualname__} could not be instantiated: "
            f"{type(e).__name__}: {e}"
        ) from e
    bound: FilterFunc = instance.filter
    return bound


def filters_in_module(module: ModuleType) -> list[tuple[str, FilterEntry]]:
    """
    The filters a module defines, as ``(event, entry)`` in definition order.

    Classes merely imported into the module (their ``__module__`` differs) are
    not its filters, and neither are intermediate classes that do not define
    ``filter`` themselves or through a non-base parent.
    """
    found = []
    for obj in vars(module).values():
        if not (isinstance(obj, type) and obj.__module__ == module.__name__):
            continue
        if obj in CHAIN_BASES or not issubclass(obj, WebSocketFilter):
            continue
        event = _chain_of(obj)
        if event is None or inspect.getattr_static(obj, "filter") is inspect.getattr_static(
            WebSocketFilter, "filter"
        ):
            continue
        found.append((event, FilterEntry(f"{module.__name__}.{obj.__qualname__}", _callable_of(obj))))
    return found


def load_pipeline(names: Iterable[str], config: Any = None) -> FilterPipeline:
    """
    Build a new pipeline from module names, in command-line order.

    A module may define ``configure(config)``: it is called once per pipeline
    with the server's :class:`fws.config.Config` (or ``None``) to check its
    options, and what it returns is kept in ``pipeline.state[module_name]``
    for the module's filters to use (``web_socket_instance.factory.configured(__name__)``),
    so that two servers in one process never share it.

    :raises FilterLoadError: a name cannot be imported, a module defines no
        filter, its ``configure`` rejects the configuration, or it reads
        ``storage_object[key]`` where the configured storage cannot answer that
        (:func:`fws.storage_objects.subscript_problem`); the message is one line.
    """
    chains: dict[str, list[FilterEntry]] = {event: [] for event in EVENTS}
    modules = []
    state: dict[str, Any] = {}
    for name in names:
        module = _import_filter_module(name)
        configure = getattr(module, "configure", None)
        if callable(configure) and module.__name__ not in state:
            try:
                state[module.__name__] = configure(config)
            except Exception as e:
                raise FilterLoadError(f"filter module {name!r}: {_one_line(e)}") from e
        found = filters_in_module(module)
        if not found:
            raise FilterLoadError(
                f"module {name!r} defines no filter (no class subclassing one of "
                f"{', '.join(b.__name__ for b in CHAIN_BASES)})"
            )
        # A 2014 read the configured storage cannot answer would fail on every event.
        problem = subscript_problem(module, getattr(config, "storage", None))
        if problem:
            raise FilterLoadError(f"filter module {name!r}: {problem}")
        modules.append(module.__name__)
        for event, entry in found:
            chains[event].append(entry)
    return FilterPipeline(
        modules=tuple(modules), state=state,
        **{event: tuple(entries) for event, entries in chains.items()},
    )


def _one_line(e: BaseException) -> str:
    return " ".join((str(e) or type(e).__name__).split())


# --- running -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterPipeline:
    """
    The five chains of one server, each a tuple of :class:`FilterEntry`.

    An empty tuple is falsy, which is how callers skip an event at no cost.
    """

    connect: tuple[FilterEntry, ...] = ()
    data: tuple[FilterEntry, ...] = ()
    message: tuple[FilterEntry, ...] = ()
    disconnect: tuple[FilterEntry, ...] = ()
    consumer: tuple[FilterEntry, ...] = ()
    modules: tuple[str, ...] = field(default=())
    state: Mapping[str, Any] = field(default_factory=dict)

    def chain(self, event: str) -> tuple[FilterEntry, ...]:
        """The chain for ``event`` (one of :data:`fws.filters.base.EVENTS`)."""
        chain: tuple[FilterEntry, ...] = getattr(self, event)
        return chain

    def with_timeout(self, timeout: float, clock: Any) -> FilterPipeline:
        """The same pipeline with every filter's asynchronous work limited to ``timeout`` s."""
        if timeout <= 0:
            return self
        chains: dict[str, Any] = {
            event: tuple(replace(e, timeout=timeout, clock=clock) for e in self.chain(event))
            for event in EVENTS
        }
        return replace(self, **chains)

    def with_metrics(self, metrics: Any) -> FilterPipeline:
        """
        The same pipeline with every filter call timed and its errors counted
        in ``metrics`` (:class:`fws.metrics.FwsMetrics`).

        Only servers that serve metrics pay for this: two clock reads and a
        histogram update per filter call.
        """
        chains: dict[str, Any] = {
            event: tuple(replace(e, func=_timed(e, event, metrics)) for e in self.chain(event))
            for event in EVENTS
        }
        return replace(self, **chains)

    def describe(self) -> dict[str, list[str]]:
        """Filter names per event, for logs and ``--check`` style output."""
        return {event: [entry.name for entry in self.chain(event)] for event in EVENTS}


def run_chain(
    chain: Sequence[FilterEntry],
    target: Any,
    data: Any,
    *,
    event: str,
    conn_id: str,
    binary: bool | None = None,
    propagate: tuple[type[BaseException], ...] = (),
    start: int = 0,
) -> Any:
    """
    Run ``chain[start:]`` on one event.

    :returns: ``None`` if every filter ran, :data:`STOP` if one stopped the
        chain, :data:`FAILED` if one raised (it was logged with the filter name
        and ``conn_id``), or a ``Deferred`` firing with one of those when a
        filter went asynchronous.
    :raises: exceptions listed in ``propagate`` (``Refuse`` for the connect
        chain), synchronously or through the returned ``Deferred``.
    """
    n = len(chain)
    i = start
    while i < n:
        entry = chain[i]
        i += 1
        token = current_message_binary.set(binary) if binary is not None else None
        try:
            result = entry.func(target, data)
            if result is not None and inspect.iscoroutine(result):
                # Both ways of running it copy the context now, so a coroutine filter
                # keeps seeing current_message_binary for its whole life.
                result = run_coroutine(result)
        except StopChain:
            return STOP
        except propagate:
            raise
        except RuntimeError as e:
            if not _needs_asyncio(e, entry.name):
                log.failure("filter {filter} failed on {event} for connection {conn_id}",
                            filter=entry.name, event=event, conn_id=conn_id)
            return FAILED
        except Exception:
            log.failure(
                "filter {filter} failed on {event} for connection {conn_id}",
                filter=entry.name,
                event=event,
                conn_id=conn_id,
            )
            return FAILED
        finally:
            if token is not None:
                current_message_binary.reset(token)
        if result is None:
            continue
        if result is STOP:
            return STOP
        if result is not None and isinstance(result, Deferred):
            if entry.timeout:
                result.addTimeout(entry.timeout, entry.clock)
            return result.addCallbacks(
                _continue,
                _failed,
                callbackArgs=(chain, target, data, event, conn_id, binary, propagate, i),
                errbackArgs=(entry.name, event, conn_id, propagate),
            )
    return None


# --- coroutine filters: Twisted's trampoline, or asyncio tasks under the asyncio reactor ---


def run_coroutine(coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    """
    Run a coroutine filter's coroutine; a ``Deferred`` of its result.

    On fws's default reactor, Twisted runs it (``Deferred.fromCoroutine``): it
    may await Deferreds, and its first step runs at once, so a coroutine that
    never waits finishes before this returns.  When an asyncio loop runs
    (``fws_server --reactor asyncio``, ``twistd --reactor asyncio``), it runs as
    an asyncio task instead, because asyncio libraries need one: ``asyncio.sleep``,
    aiohttp, redis.asyncio and asyncpg hand the coroutine asyncio futures that
    only a task can wait for, and check ``asyncio.current_task()``.  The task's
    coroutine may still await Deferreds (see :class:`_AwaitsDeferreds`).

    Either way the ``Deferred`` is what the chain waits for, so per-connection
    order and ``--filter-timeout`` work the same: cancelling it (the timeout)
    cancels the task, and fails the message at once.
    """
    loop = asyncio._get_running_loop()
    if loop is None:
        return Deferred.fromCoroutine(coro)
    task = loop.create_task(_in_task(coro))  # copies the context, as fromCoroutine does
    return _deferred_of(task)


async def _in_task(coro: Coroutine[Any, Any, Any]) -> Any:
    return await _AwaitsDeferreds(coro)


class _AwaitsDeferreds:
    """
    An awaitable that runs ``coro`` inside an asyncio task and lets it await Deferreds.

    Awaiting a Deferred yields the Deferred itself up to whatever drives the
    coroutine, which for an asyncio task is an error ("Task got bad yield").
    This stands between the two: a Deferred that comes up is waited for with an
    asyncio future that completes when it fires (leaving its result to the
    coroutine, which reads it when resumed); asyncio futures pass through to
    the task untouched, and the task's cancellation is passed down (a Deferred
    being waited for is cancelled, as Twisted would).
    """

    __slots__ = ("coro",)

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                out = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                return stop.value
            value = error = None
            if isinstance(out, Deferred):
                fired = asyncio.get_running_loop().create_future()
                out.addBoth(_fire_future, fired)
                try:
                    yield from fired
                except asyncio.CancelledError:
                    out.cancel()  # the coroutine sees Twisted's CancelledError where it awaits
                    if not out.called:
                        error = asyncio.CancelledError()
                except BaseException as e:
                    error = e
                continue
            try:
                value = yield out
            except BaseException as e:
                error = e


def _fire_future(result: Any, future: asyncio.Future[None]) -> Any:
    if not future.done():
        future.set_result(None)
    return result


def _deferred_of(task: asyncio.Task[Any]) -> Deferred[Any]:
    """
    A Deferred of ``task``'s outcome; cancelling it cancels the task and fails at once
    (with Twisted's ``CancelledError``, which ``addTimeout`` turns into its timeout).
    """
    def cancel(_: Deferred[Any]) -> None:
        task.cancel()

    d: Deferred[Any] = Deferred(cancel)

    def done(task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            error: BaseException | None = CancelledError()
        else:
            error = task.exception()  # also marks the task's error as seen
        if d.called:  # cancelled already
            return
        if error is None:
            d.callback(task.result())
        else:
            d.errback(Failure(error, type(error), error.__traceback__))

    task.add_done_callback(done)
    return d


#: The error asyncio gives code that needs a running loop when none runs.
_NO_LOOP = ("no running event loop", "await wasn't used with future")

#: Per filter, how many of its calls failed for want of the asyncio reactor.
asyncio_failures: dict[str, int] = {}


def _needs_asyncio(error: BaseException, name: str) -> bool:
    """
    Whether ``error`` is asyncio saying no loop runs (the filter awaited an asyncio
    awaitable on fws's default reactor); if so, say once per filter what to do,
    count the rest (logging again at 10, 100, 1000, ... of them), and return True.
    """
    if not isinstance(error, RuntimeError) or str(error) not in _NO_LOOP:
        return False
    if asyncio._get_running_loop() is not None:
        return False  # some other cause; let the traceback tell it
    count = asyncio_failures[name] = asyncio_failures.get(name, 0) + 1
    if count == 1 or str(count).strip("0") == "1":
        log.error("filter {filter} awaits asyncio, which needs fws_server --reactor asyncio "
                  "(twistd --reactor asyncio fws under twistd); its calls fail until then "
                  "({count} so far)", filter=name, count=count)
    return True


def _timed(entry: FilterEntry, event: str, metrics: Any) -> FilterFunc:
    """``entry.func``, observed: latency until it (or its Deferred) finishes, and errors."""
    from time import perf_counter

    func = entry.func
    observe = metrics.filter_seconds.labels(entry.name, event).observe
    error = metrics.filter_errors.labels(entry.name, event).inc
    expected = (StopChain, Refuse)

    def timed(target: Any, data: Any) -> Any:
        start = perf_counter()
        try:
            result = func(target, data)
        except expected:
            observe(perf_counter() - start)
            raise
        except Exception:
            observe(perf_counter() - start)
            error()
            raise
        if result is not None and inspect.iscoroutine(result):
            result = run_coroutine(result)
        if result is not None and isinstance(result, Deferred):
            def done(value: Any) -> Any:
                observe(perf_counter() - start)
                return value

            def failed(failure: Any) -> Any:
                observe(perf_counter() - start)
                if not failure.check(*expected):
                    error()
                return failure

            return result.addCallbacks(done, failed)
        observe(perf_counter() - start)
        return result

    return timed


def _continue(
    result: Any,
    chain: Sequence[FilterEntry],
    target: Any,
    data: Any,
    event: str,
    conn_id: str,
    binary: bool | None,
    propagate: tuple[type[BaseException], ...],
    start: int,
) -> Any:
    if result is STOP:
        return STOP
    return run_chain(
        chain, target, data, event=event, conn_id=conn_id, binary=binary,
        propagate=propagate, start=start,
    )


def _failed(
    failure: Any, name: str, event: str, conn_id: str, propagate: tuple[type[BaseException], ...]
) -> Any:
    if failure.check(StopChain):
        return STOP
    if propagate and failure.check(*propagate):
        return failure
    if failure.check(TimeoutError):
        log.error("filter {filter} timed out on {event} for connection {conn_id}; the rest of "
                  "the chain was skipped", filter=name, event=event, conn_id=conn_id)
        return FAILED
    if failure.check(RuntimeError) and _needs_asyncio(failure.value, name):
        return FAILED
    log.failure(
        "filter {filter} failed on {event} for connection {conn_id}",
        failure,
        filter=name,
        event=event,
        conn_id=conn_id,
    )
    return FAILED


__all__ = [
    "FAILED",
    "FilterEntry",
    "FilterLoadError",
    "FilterPipeline",
    "Refuse",
    "current_message_binary",
    "load_pipeline",
    "modern_name",
    "run_chain",
]
