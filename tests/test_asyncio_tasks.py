"""
fws.pipeline's coroutine running, in memory: on a running asyncio loop (what
``--reactor asyncio`` gives) coroutine filters run as asyncio tasks that may await
both asyncio awaitables and Deferreds; with no loop, an asyncio await is one clear
error per filter.  A real asyncio loop and real Deferreds; time is a Twisted Clock
where a timeout is tested.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from fws import STOP, Refuse
from fws.pipeline import FAILED, FilterEntry, asyncio_failures, current_message_binary, run_chain


def entry(func: Any, name: str = "t.F", timeout: float = 0.0, clock: Any = None) -> FilterEntry:
    return FilterEntry(name, func, timeout, clock)


async def outcome_of(d: Any) -> Any:
    """Wait, inside the loop, for a chain's Deferred outcome."""
    assert isinstance(d, Deferred)
    return await d.asFuture(asyncio.get_running_loop())


def test_tasks_await_asyncio_and_deferreds_and_keep_chain_order() -> None:
    seen: list[Any] = []

    async def first(conn: Any, data: Any) -> None:
        seen.append(("task", asyncio.current_task() is not None))
        await asyncio.sleep(0.001)
        gate: Deferred[str] = Deferred()
        asyncio.get_running_loop().call_soon(gate.callback, "fired")
        seen.append(await gate)  # a Deferred, awaited inside the task
        failing: Deferred[None] = Deferred()
        asyncio.get_running_loop().call_soon(failing.errback, ValueError("from a Deferred"))
        try:
            await failing
        except ValueError as e:
            seen.append(str(e))
        seen.append(("binary", current_message_binary.get()))

    def second(conn: Any, data: Any) -> None:
        seen.append("second")

    async def main() -> Any:
        d = run_chain([entry(first), entry(second)], None, None, event="message", conn_id="x",
                      binary=True)
        assert current_message_binary.get() is None  # not leaked out of the chain
        assert seen == []  # a task takes its first step on the loop's next turn
        return await outcome_of(d)

    assert asyncio.run(main()) is None
    assert seen == [("task", True), "fired", "from a Deferred", ("binary", True), "second"]


def test_stop_failure_and_refuse_from_tasks(logged_errors: list[dict[str, Any]]) -> None:
    async def stops(conn: Any, data: Any) -> Any:
        await asyncio.sleep(0)
        return STOP

    async def fails(conn: Any, data: Any) -> None:
        await asyncio.sleep(0)
        raise KeyError("late")

    async def refuses(conn: Any, data: Any) -> None:
        await asyncio.sleep(0)
        raise Refuse(429)

    async def main() -> list[Any]:
        out = [await outcome_of(run_chain([entry(stops)], None, None, event="message",
                                          conn_id="x")),
               await outcome_of(run_chain([entry(fails, "t.Fails")], None, None, event="message",
                                          conn_id="x"))]
        with pytest.raises(Refuse):
            await outcome_of(run_chain([entry(refuses)], None, None, event="connect",
                                       conn_id="x", propagate=(Refuse,)))
        return out

    assert asyncio.run(main()) == [STOP, FAILED]
    [event] = logged_errors
    assert event["filter"] == "t.Fails" and event["log_failure"].check(KeyError)
    assert "Traceback" in event["log_failure"].getTraceback()
    logged_errors.clear()


@pytest.mark.parametrize("awaits", ["asyncio", "deferred"])
def test_a_timeout_fails_at_once_and_cancels_the_task(logged_errors: list[dict[str, Any]],
                                                      awaits: str) -> None:
    clock = Clock()
    seen: list[str] = []

    async def hangs(conn: Any, data: Any) -> None:
        try:
            if awaits == "asyncio":
                await asyncio.sleep(3600)
            else:
                await Deferred()
        except asyncio.CancelledError:
            seen.append("asyncio.CancelledError")
            raise
        except CancelledError:
            seen.append("twisted CancelledError")
            raise

    async def main() -> Any:
        d = run_chain([entry(hangs, "t.Hangs", timeout=5, clock=clock)], None, None,
                      event="message", conn_id="x")
        await asyncio.sleep(0.01)
        clock.advance(6)
        result = await outcome_of(d)  # fired by the timeout, before the task has ended
        assert seen == []
        await asyncio.sleep(0.01)
        return result

    assert asyncio.run(main()) is FAILED
    assert seen == (["asyncio.CancelledError"] if awaits == "asyncio"
                    else ["twisted CancelledError"])
    [event] = logged_errors
    assert "timed out" in event["log_format"] and event["filter"] == "t.Hangs"
    logged_errors.clear()


def test_without_a_loop_an_asyncio_await_is_one_error_per_filter(
        logged_errors: list[dict[str, Any]]) -> None:
    async def sleeps(conn: Any, data: Any) -> None:
        await asyncio.sleep(0.5)

    def calls_asyncio(conn: Any, data: Any) -> None:
        asyncio.get_running_loop()  # a plain function that needs a loop says the same

    asyncio_failures.clear()
    outcomes = []
    for _ in range(12):
        for func, name in ((sleeps, "t.Sleeps"), (calls_asyncio, "t.Sync")):
            d = run_chain([entry(func, name)], None, None, event="message", conn_id="x")
            if isinstance(d, Deferred):
                d.addCallback(outcomes.append)
            else:
                outcomes.append(d)
    assert outcomes == [FAILED] * 24
    assert asyncio_failures == {"t.Sleeps": 12, "t.Sync": 12}
    # Once per filter, then again at the 10th: no traceback.
    assert [(e["filter"], e["count"]) for e in logged_errors] == [
        ("t.Sleeps", 1), ("t.Sync", 1), ("t.Sleeps", 10), ("t.Sync", 10)]
    assert all("log_failure" not in e for e in logged_errors)
    text = logged_errors[0]["log_format"].format(**logged_errors[0])
    assert text.startswith("filter t.Sleeps awaits asyncio, which needs fws_server --reactor "
                           "asyncio")
    logged_errors.clear()
    asyncio_failures.clear()


def test_other_runtime_errors_keep_their_traceback(logged_errors: list[dict[str, Any]]) -> None:
    async def other(conn: Any, data: Any) -> None:
        raise RuntimeError("something else")

    results: list[Any] = []
    run_chain([entry(other, "t.Other")], None, None, event="message",
              conn_id="x").addCallback(results.append)
    assert results == [FAILED]
    [event] = logged_errors
    assert event["log_failure"].check(RuntimeError)
    logged_errors.clear()
