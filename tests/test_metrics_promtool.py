"""
What Prometheus users get from fws, checked with Prometheus' own tool.

``/metrics`` of a real ``fws_server`` passes ``promtool check metrics`` and has
the process and runtime metrics of any Python exporter next to fws's own; the
alert rules (``docs/deploy/fws-alerts.yml``) pass ``promtool check rules`` and
fire when they should (``promtool test rules``); every expression of the rules
and of the Grafana dashboard (``docs/deploy/fws-dashboard.json``) parses and
names only metrics that a real scrape of a server with Redis storage has; and
the reactor lag histogram those alerts read counts a reactor that was blocked.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from websockets.sync.client import connect

from fws.metrics import LAG_BUCKETS
from fws.web import Heartbeat
from tests.processes import FwsProcess, serve
from tests.rawws import handshake_request
from tests.redis_support import RedisProcess, free_port
from tests.system_tools import program

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy"
RULES = DEPLOY / "fws-alerts.yml"
DASHBOARD = DEPLOY / "fws-dashboard.json"
TIMEOUT = 10.0


def promtool() -> str:
    """promtool, or a skip naming its Debian package (a failure under CI)."""
    return program("promtool", "prometheus")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as response:
        assert response.status == 200
        return str(response.read().decode())


def samples(text: str) -> dict[str, float]:
    """Sample name with its labels (as written) -> value."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def exported(text: str) -> set[str]:
    """
    Every series name an exposition declares: its samples' names, and for a
    family with no sample yet (no refusal so far, say) the names its samples
    will have.
    """
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                                 "_created")}
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def admin_server(*args: str, cwd: Path | None = None) -> tuple[FwsProcess, int]:
    admin = free_port()
    proc = serve(*args, "--admin", f"tcp:{admin}:interface=127.0.0.1", cwd=cwd)
    proc.wait_for_port(admin)
    return proc, admin


# --- the reactor lag histogram ------------------------------------------------------------


def lag_buckets(beat: Heartbeat) -> dict[str, float]:
    return {s.labels["le"]: s.value for s in beat.lags.family().samples
            if s.name.endswith("_bucket")}


def test_heartbeat_counts_how_late_each_tick_ran() -> None:
    clock = Clock()
    beat = Heartbeat(clock, interval=1.0)
    beat.start()
    lags = []
    # On time; 0.3 s late; the next one (due at 3.0, the loop's grid) 0.2 s late; then
    # the reactor is blocked for 5 s: the tick due at 4.0 runs at 8.25.
    for step in (1.0, 1.3, 0.9, 5.05):
        clock.advance(step)
        lags.append(round(beat.lag, 6))
    assert lags == [0.0, 0.3, 0.2, 4.25]
    buckets = lag_buckets(beat)
    assert list(buckets) == [*(str(b) for b in LAG_BUCKETS), "+Inf"]
    assert buckets["0.1"] == 1 and buckets["0.25"] == 2 and buckets["0.5"] == 3
    assert buckets["2.5"] == 3 and buckets["5.0"] == 4 and buckets["+Inf"] == 4
    family = {s.name: s.value for s in beat.lags.family().samples}
    assert family["fws_reactor_lag_seconds_count"] == 4
    assert family["fws_reactor_lag_seconds_sum"] == pytest.approx(4.75)
    beat.stop()


BLOCKING_FILTER = """\
import time
from fws.filters.base import WebSocketMessageFilter

class Block(WebSocketMessageFilter):
    @staticmethod
    def filter(web_socket_instance, data):
        time.sleep(1.6)  # what a filter doing blocking I/O does to every client
"""


def late_ticks(text: str) -> float:
    """Heartbeat ticks that ran more than half a second late (what FwsReactorStalled reads)."""
    found = samples(text)
    return (found["fws_reactor_lag_seconds_count"]
            - found['fws_reactor_lag_seconds_bucket{le="0.5"}'])


def test_a_blocked_reactor_shows_in_the_lag_histogram(processes: list[FwsProcess],
                                                      tmp_path: Path) -> None:
    (tmp_path / "block.py").write_text(BLOCKING_FILTER)
    proc, admin = admin_server("-f", "block", "fws.filters.echo", cwd=tmp_path)
    processes.append(proc)
    before = late_ticks(scrape(admin))
    with connect(proc.url, open_timeout=TIMEOUT) as ws:
        ws.send("block")
        assert ws.recv(timeout=TIMEOUT) == "block"
    # A 1.6 s block covers a tick's due time (one a second) and holds that tick at least
    # 0.6 s; the tick runs as soon as the reactor is free, before the scrape is read, but
    # poll anyway.
    deadline = time.monotonic() + TIMEOUT
    while (after := late_ticks(scrape(admin))) < before + 1:
        assert time.monotonic() < deadline, f"no late tick counted ({before} -> {after})"
        time.sleep(0.1)


# --- promtool check metrics ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["admin", "public"])
def test_metrics_pass_promtool_with_process_and_gc_metrics(where: str,
                                                           processes: list[FwsProcess]) -> None:
    tool = promtool()
    if where == "admin":
        proc, port = admin_server("-f", "fws.filters.echo", "--allowed-origins",
                                  "https://example.com")
    else:
        proc = serve("-f", "fws.filters.echo", "--public-metrics", "--allowed-origins",
                     "https://example.com")
        port = proc.port
    processes.append(proc)
    # A connection opened and closed, and a handshake refused: every family has samples.
    with connect(proc.url, open_timeout=TIMEOUT) as ws:
        ws.send("hello")
        assert ws.recv(timeout=TIMEOUT) == "hello"
    with socket.create_connection(("127.0.0.1", proc.port), timeout=TIMEOUT) as sock:
        sock.sendall(handshake_request(proc.port, extra="Origin: https://evil.example\r\n"))
        assert sock.recv(4096).startswith(b"HTTP/1.1 403")
    text = scrape(port)
    check = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, f"promtool check metrics:\n{check.stdout}{check.stderr}"
    found = samples(text)
    names = {key.partition("{")[0] for key in found}
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                 "process_start_time_seconds", "python_gc_collections_total",
                 "python_gc_objects_collected_total", "python_gc_objects_uncollectable_total",
                 "python_info", "fws_connections_opened_total"):
        assert name in names, f"{name} missing from /metrics:\n{text}"
    # They describe this very process: its descriptors include the listening socket.
    assert found["process_open_fds"] >= 1 and found["process_resident_memory_bytes"] > 0
    assert found['fws_handshakes_refused_total{status="403"}'] == 1
    if where == "admin":
        assert "fws_reactor_lag_seconds_count" in names


# --- the alert rules and the dashboard ----------------------------------------------------


def rule_exprs() -> dict[str, str]:
    """
    alert name -> expression, from the rules file (the subset of YAML it uses:
    ``expr:`` inline or as a block scalar). The test that uses it checks the
    count against promtool's, so a rule this misses fails it.
    """
    lines = RULES.read_text().splitlines()
    found: dict[str, str] = {}
    name = None
    for i, line in enumerate(lines):
        if m := re.match(r"\s*- alert: (\S+)$", line):
            name = m.group(1)
        elif m := re.match(r"(\s*)expr: ?(.*)$", line):
            assert name is not None and name not in found, line
            indent, text = len(m.group(1)), m.group(2)
            if text in (">-", ">", "|", "|-"):
                block = []
                for following in lines[i + 1:]:
                    if following.strip() and len(following) - len(following.lstrip()) <= indent:
                        break
                    block.append(following.strip())
                text = "\n".join(block).strip()
            found[name] = text
    return found


def without_annotations(text: str) -> str:
    """The rules file without its annotations (promtool test rules compares them verbatim)."""
    out: list[str] = []
    skip_deeper_than = None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not line.strip() or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if line.strip() == "annotations:":
            skip_deeper_than = indent
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard: its panels' targets and its variables."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []

    def panels(items: list[dict[str, object]]) -> None:
        for panel in items:
            for target in panel.get("targets", []):  # type: ignore[attr-defined]
                exprs.append(target["expr"])
            panels(panel.get("panels", []))  # type: ignore[arg-type]

    panels(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            # label_values(METRIC, LABEL) is Grafana's, around a metric selector.
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            exprs.append(m.group(1) if m else query)
    return exprs


#: Grafana's variables, as a value PromQL accepts where each is used.
GRAFANA = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", expr)  # strings
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", s):
        if m.group(2) is None and m.group(1).lower() not in KEYWORDS:
            names.add(m.group(1))
    return names


def test_metric_names_finds_metrics_only() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, filter) (rate(fws_filter_seconds_bucket'
            '{instance=~"$instance", le!="0.5"}[$__rate_interval])))\n'
            '  / ignoring (le) group_left(x) fws_x offset 5m > bool 1e3 and on(job) up_down'
            ' or vector(0) unless sum(a:recorded:rate5m) without (b)')
    assert metric_names(expr) == {"fws_filter_seconds_bucket", "fws_x", "up_down",
                                  "a:recorded:rate5m"}


def test_alert_rules_pass_promtool_and_cover_what_operators_watch() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, f"promtool check rules:\n{check.stdout}{check.stderr}"
    rules = rule_exprs()
    assert f"SUCCESS: {len(rules)} rules found" in check.stdout, check.stdout
    assert {"FwsNotReady", "FwsRedisDown", "FwsSlowConsumers", "FwsHandshakesRefused",
            "FwsReactorStalled", "FwsReactorLagging"} <= set(rules)


ALERT_TESTS = """\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'fws_ready{job="fws", instance="a"}'
        values: '1 0 0 0'
      - series: 'fws_ready{job="fws", instance="b"}'
        values: '1 1 1 1'
      - series: 'fws_redis_connected{job="fws", instance="a", connection="subscriber"}'
        values: '1 0 0 0'
      - series: 'fws_redis_connected{job="fws", instance="a", connection="command"}'
        values: '1 1 1 1'
    alert_rule_test:
      - eval_time: 1m
        alertname: FwsNotReady
      - eval_time: 3m
        alertname: FwsNotReady
        exp_alerts:
          - exp_labels: {severity: critical, job: fws, instance: a}
      - eval_time: 2m
        alertname: FwsRedisDown
        exp_alerts:
          - exp_labels: {severity: critical, job: fws, instance: a, connection: subscriber}
  - interval: 1m
    input_series:
      # 60 heartbeat ticks a minute; at minute 5 one is more than 0.5 s late.
      - series: 'fws_reactor_lag_seconds_count{job="fws", instance="a"}'
        values: '0+60x20'
      - series: 'fws_reactor_lag_seconds_bucket{job="fws", instance="a", le="0.5"}'
        values: '0+60x4 299+60x15'
      - series: 'fws_reactor_lag_seconds_sum{job="fws", instance="a"}'
        values: '0+1x20'
      # Another node, on time but busy: 0.1 s late on average.
      - series: 'fws_reactor_lag_seconds_count{job="fws", instance="b"}'
        values: '0+60x20'
      - series: 'fws_reactor_lag_seconds_bucket{job="fws", instance="b", le="0.5"}'
        values: '0+60x20'
      - series: 'fws_reactor_lag_seconds_sum{job="fws", instance="b"}'
        values: '0+6x20'
    alert_rule_test:
      - eval_time: 4m
        alertname: FwsReactorStalled
      - eval_time: 6m
        alertname: FwsReactorStalled
        exp_alerts:
          - exp_labels: {severity: warning, job: fws, instance: a}
      - eval_time: 16m
        alertname: FwsReactorStalled
      - eval_time: 16m
        alertname: FwsReactorLagging
        exp_alerts:
          - exp_labels: {severity: warning, job: fws, instance: b}
  - interval: 1m
    input_series:
      # Node a refuses one handshake a second and opens one: half refused.
      - series: 'fws_handshakes_refused_total{job="fws", instance="a", status="403"}'
        values: '0+60x20'
      - series: 'fws_connections_opened_total{job="fws", instance="a"}'
        values: '0+60x20'
      # Node b refuses one in a hundred.
      - series: 'fws_handshakes_refused_total{job="fws", instance="b", status="429"}'
        values: '0+6x20'
      - series: 'fws_connections_opened_total{job="fws", instance="b"}'
        values: '0+600x20'
      # Two slow consumers a minute on a, none on b.
      - series: 'fws_slow_consumer_disconnects_total{job="fws", instance="a"}'
        values: '0+2x20'
      - series: 'fws_slow_consumer_drops_total{job="fws", instance="a"}'
        values: '0x20'
      - series: 'fws_slow_consumer_disconnects_total{job="fws", instance="b"}'
        values: '0x20'
      - series: 'fws_slow_consumer_drops_total{job="fws", instance="b"}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 16m
        alertname: FwsHandshakesRefused
        exp_alerts:
          - exp_labels: {severity: warning, job: fws, instance: a}
      - eval_time: 16m
        alertname: FwsSlowConsumers
        exp_alerts:
          - exp_labels: {severity: warning, job: fws, instance: a}
"""


def test_alert_rules_fire_when_they_should(tmp_path: Path) -> None:
    tool = promtool()
    (tmp_path / "rules.yml").write_text(without_annotations(RULES.read_text()))
    (tmp_path / "tests.yml").write_text(ALERT_TESTS)
    result = subprocess.run([tool, "test", "rules", "tests.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"promtool test rules:\n{result.stdout}{result.stderr}"


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    """promtool parses each one, as a recording rule (with Grafana's variables filled in)."""
    tool = promtool()
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(exprs):
        for variable, value in GRAFANA.items():
            expr = expr.replace(variable, value)
        lines += [f"      - record: dashboard:expr{i}", f"        expr: {json.dumps(expr)}"]
    (tmp_path / "dashboard.yml").write_text("\n".join(lines) + "\n")
    check = subprocess.run([tool, "check", "rules", "dashboard.yml"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, f"promtool check rules:\n{check.stdout}{check.stderr}"
    assert f"SUCCESS: {len(exprs)} rules found" in check.stdout


def test_dashboard_imports_as_laid_out() -> None:
    """What Grafana's import relies on: unique panel ids, panels on the 24-column grid, not
    overlapping, every query on the dashboard's data source variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "instance"]
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[x, y]}"
                cells[x, y] = panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert target["refId"] and target["expr"]


def test_rules_and_dashboard_name_only_metrics_fws_exports(
        redis: RedisProcess, processes: list[FwsProcess]) -> None:
    proc, admin = admin_server("-f", "fws.filters.echo", "--storage", "fws.storage_objects.redis",
                               "--redis-port", str(redis.port))
    processes.append(proc)
    text = scrape(admin)
    names = exported(text)
    assert "fws_redis_connected" in names and "fws_reactor_lag_seconds_bucket" in names
    everything = [(f"rule {name}", expr) for name, expr in rule_exprs().items()]
    everything += [("dashboard", expr) for expr in dashboard_exprs()]
    used: set[str] = set()
    for where, expr in everything:
        selected = metric_names(expr)
        assert selected, f"{where}: no metric in {expr!r}"
        assert selected <= names, f"{where}: {sorted(selected - names)} not exported: {expr!r}"
        used |= selected
    # The dashboard shows the process next to fws, and Redis.
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
            "python_gc_collections_total", "fws_redis_connected"} <= used
