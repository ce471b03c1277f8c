"""Unit tests of the pipeline rules: loading, order, stopping, async, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed

from fws import STOP, Refuse, StopChain
from fws.pipeline import FAILED, FilterLoadError, load_pipeline, modern_name, run_chain
from tests.helpers import write_module

RECORDER = """
from fws.filters.base import WebSocketMessageFilter, WebSocketDisconnectFilter

class First(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        web_socket_instance.append(("{tag}", "first", bytes(data)))

class Second(WebSocketMessageFilter):
    @staticmethod
    def filter(web_socket_instance, data):
        web_socket_instance.append(("{tag}", "second", bytes(data)))

class Bye(WebSocketDisconnectFilter):
    def filter(self, web_socket_instance, data):
        web_socket_instance.append(("{tag}", "bye", data))
"""


def run(pipeline: Any, event: str, target: Any, data: Any) -> Any:
    return run_chain(pipeline.chain(event), target, data, event=event, conn_id="c1")


def test_order_is_command_line_then_definition(tmp_path: Path) -> None:
    a = write_module(tmp_path, RECORDER.format(tag="a"))
    b = write_module(tmp_path, RECORDER.format(tag="b"))
    seen: list[Any] = []
    pipeline = load_pipeline([b, a])
    assert run(pipeline, "message", seen, bytearray(b"x")) is None
    assert [(t, n) for t, n, _ in seen] == [("b", "first"), ("b", "second"), ("a", "first"), ("a", "second")]
    assert pipeline.describe()["disconnect"] == [f"{b}.Bye", f"{a}.Bye"]
    assert pipeline.connect == () and not pipeline.data


def test_later_filter_sees_mutation(tmp_path: Path) -> None:
    popper = write_module(tmp_path, """
        from fws import WebSocketMessageFilter
        class Pop(WebSocketMessageFilter):
            @classmethod
            def filter(cls, web_socket_instance, data):
                data.pop()
    """)
    rec = write_module(tmp_path, RECORDER.format(tag="r"))
    seen: list[Any] = []
    run(load_pipeline([popper, rec]), "message", seen, bytearray(b"hello"))
    assert seen[0] == ("r", "first", b"hell")


def test_pipelines_are_per_server(tmp_path: Path) -> None:
    a = write_module(tmp_path, RECORDER.format(tag="a"))
    b = write_module(tmp_path, RECORDER.format(tag="b"))
    one, two = load_pipeline([a]), load_pipeline([b])
    assert [e.name for e in one.message] == [f"{a}.First", f"{a}.Second"]
    assert [e.name for e in two.message] == [f"{b}.First", f"{b}.Second"]
    assert load_pipeline([a]).describe() == one.describe()  # loading twice does not accumulate


def entry(func: Any, name: str = "f") -> Any:
    from fws.pipeline import FilterEntry

    return FilterEntry(name, func)


def test_stop_by_return_and_by_raise() -> None:
    seen: list[str] = []

    def stop_return(conn: Any, data: Any) -> Any:
        seen.append("ret")
        return STOP

    def stop_raise(conn: Any, data: Any) -> None:
        seen.append("raise")
        raise StopChain()

    def never(conn: Any, data: Any) -> None:
        seen.append("never")

    assert run_chain([entry(stop_return), entry(never)], None, None, event="message", conn_id="x") is STOP
    assert run_chain([entry(stop_raise), entry(never)], None, None, event="message", conn_id="x") is STOP
    assert seen == ["ret", "raise"]


def test_exception_is_logged_with_filter_and_connection_and_stops_chain(
    logged_errors: list[dict[str, Any]],
) -> None:
    seen: list[str] = []

    def boom(conn: Any, data: Any) -> None:
        raise RuntimeError("kaput")

    outcome = run_chain([entry(boom, "mod.Boom"), entry(lambda c, d: seen.append("next"))], None,
                        b"", event="message", conn_id="node-7")
    assert outcome is FAILED and seen == []
    [event] = logged_errors
    assert event["filter"] == "mod.Boom" and event["conn_id"] == "node-7"
    assert event["log_failure"].check(RuntimeError)
    logged_errors.clear()


def test_deferred_filter_makes_next_wait() -> None:
    seen: list[str] = []
    gate: Deferred[None] = Deferred()

    def slow(conn: Any, data: Any) -> Deferred[None]:
        seen.append("slow")
        return gate

    outcome = run_chain([entry(slow), entry(lambda c, d: seen.append("after"))], None, None,
                        event="message", conn_id="x")
    assert isinstance(outcome, Deferred) and seen == ["slow"]
    results: list[Any] = []
    outcome.addCallback(results.append)
    gate.callback(None)
    assert seen == ["slow", "after"] and results == [None]


def test_coroutine_filter_and_async_stop() -> None:
    gate: Deferred[None] = Deferred()
    seen: list[str] = []

    async def waits(conn: Any, data: Any) -> Any:
        await gate
        seen.append("coroutine")
        return STOP

    outcome = run_chain([entry(waits), entry(lambda c, d: seen.append("never"))], None, None,
                        event="message", conn_id="x")
    results: list[Any] = []
    outcome.addCallback(results.append)
    gate.callback(None)
    assert seen == ["coroutine"] and results == [STOP]


def test_async_failure_is_logged(logged_errors: list[dict[str, Any]]) -> None:
    async def fails(conn: Any, data: Any) -> None:
        await succeed(None)
        raise ValueError("late")

    results: list[Any] = []
    run_chain([entry(fails, "m.Late")], None, None, event="consumer", conn_id="server").addCallback(
        results.append)
    assert results == [FAILED]
    assert logged_errors[0]["filter"] == "m.Late"
    logged_errors.clear()


def test_refuse_propagates_sync_and_async() -> None:
    def refuse(conn: Any, data: Any) -> None:
        raise Refuse(401, "who are you")

    with pytest.raises(Refuse):
        run_chain([entry(refuse)], None, None, event="connect", conn_id="x", propagate=(Refuse,))

    async def later(conn: Any, data: Any) -> None:
        raise Refuse(429)

    failures: list[Any] = []
    run_chain([entry(later)], None, None, event="connect", conn_id="x",
              propagate=(Refuse,)).addErrback(failures.append)
    assert failures[0].value.status == 429


def test_refuse_needs_error_status() -> None:
    with pytest.raises(ValueError):
        Refuse(200)


def test_message_binary_flag_visible_to_sync_and_coroutine_filters() -> None:
    from fws.pipeline import current_message_binary

    gate: Deferred[None] = Deferred()
    seen: list[Any] = []

    async def later(conn: Any, data: Any) -> None:
        seen.append(current_message_binary.get())
        await gate
        seen.append(current_message_binary.get())

    def after(conn: Any, data: Any) -> None:
        seen.append(current_message_binary.get())

    run_chain([entry(later), entry(after)], None, None, event="message", conn_id="x", binary=True)
    assert current_message_binary.get() is None  # not leaked outside the chain
    gate.callback(None)
    assert seen == [True, True, True]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x = 1\n", "defines no filter"),
        ("def broken(:\n", "SyntaxError"),
        ("raise RuntimeError('boom at import')\n", "RuntimeError: boom at import"),
        ("import no_such_dependency_xyz\n", "no_such_dependency_xyz"),
        ("from fws.filters.base import WebSocketMessageFilter, WebSocketDisconnectFilter\n"
         "class Both(WebSocketMessageFilter, WebSocketDisconnectFilter):\n"
         "    @classmethod\n    def filter(cls, w, d): pass\n", "more than one chain"),
    ],
)
def test_bad_modules_are_one_line_errors(tmp_path: Path, source: str, expected: str) -> None:
    name = write_module(tmp_path, source)
    with pytest.raises(FilterLoadError) as info:
        load_pipeline([name])
    message = str(info.value)
    assert expected in message and name in message and "\n" not in message


def test_missing_and_invalid_names(tmp_path: Path) -> None:
    with pytest.raises(FilterLoadError, match="not found"):
        load_pipeline(["no_such_filter_module_abc"])
    with pytest.raises(FilterLoadError, match="not a valid"):
        load_pipeline(["bad-name"])


def test_intermediate_base_without_filter_is_skipped_and_imports_do_not_count(tmp_path: Path) -> None:
    name = write_module(tmp_path, """
        from fws.filters.base import WebSocketMessageFilter
        from fws.filters.echo import Echo  # imported, not defined here: not this module's filter

        class Base(WebSocketMessageFilter):
            prefix = b">"

        class Child(Base):
            @classmethod
            def filter(cls, w, data):
                data[:0] = cls.prefix
    """)
    pipeline = load_pipeline([name])
    assert [e.name for e in pipeline.message] == [f"{name}.Child"]


def test_legacy_names_and_bare_bundled_names() -> None:
    assert modern_name("filtered_websocket.filters.echo") == "fws.filters.echo"
    assert modern_name("filtered_websocketx.y") == "filtered_websocketx.y"
    legacy = load_pipeline(["filtered_websocket.filters.broadcast_messages"])
    assert [e.name for e in legacy.message] == ["fws.filters.broadcast_messages.BroadcastMessages"]
    assert [e.name for e in load_pipeline(["echo"]).message] == ["fws.filters.echo.Echo"]


def test_legacy_import_in_user_module_gives_fws_classes(tmp_path: Path) -> None:
    name = write_module(tmp_path, """
        from filtered_websocket.filters.base import WebSocketMessageFilter
        class Old(WebSocketMessageFilter):
            @classmethod
            def filter(cls, w, data):
                pass
    """)
    assert [e.name for e in load_pipeline([name]).message] == [f"{name}.Old"]
    import filtered_websocket.filters.base as legacy

    import fws.filters.base

    assert legacy is fws.filters.base


def test_every_bundled_filter_module_loads() -> None:
    bundled = ["broadcast_messages", "broadcast_messages_by_token", "broadcast_pubsub", "echo",
               "stdout_rawdata", "stdout_messages", "stdout_pubsub"]
    pipeline = load_pipeline([f"fws.filters.{n}" for n in bundled])
    described = pipeline.describe()
    assert len(described["message"]) == 4
    assert described["data"] == ["fws.filters.stdout_rawdata.StdoutRawData"]
    assert len(described["consumer"]) == 2
