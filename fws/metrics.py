"""
Counters the server keeps always, and the Prometheus view of them.

The hot paths only add to plain integers on a :class:`Stats` object (an
attribute increment per message, one addition per broadcast, never per
recipient); :class:`FwsCollector` turns them into metric families when
Prometheus scrapes, so a server nobody scrapes pays nothing for metrics.
Per-filter call counts, errors and latency histograms are different: they
wrap every filter call, so :meth:`fws.pipeline.FilterPipeline.with_metrics`
installs them only when metrics are served (``--admin`` or
``--public-metrics``).

Each server has its own :class:`~prometheus_client.CollectorRegistry`, not
the process-global one, so several servers in one process (tests, embedding
applications) do not collide; an application that wants its own metrics next
to fws's registers them on ``factory.metrics.registry``.

Next to fws's own metrics the registry has what Prometheus users expect of
any Python exporter: ``process_*`` (CPU, resident memory, open and maximum
file descriptors, start time; read from ``/proc`` at scrape time, so Linux
only), ``python_info`` and ``python_gc_*`` (collections per generation),
from prometheus_client's own collectors, so that the usual dashboards and
alerts for Python processes work on fws unchanged.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

#: Filter latency buckets in seconds: filters are usually microseconds, an
#: asynchronous one that waits on Redis or HTTP milliseconds to seconds.
FILTER_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                  5.0, 10.0)

#: Reactor lag buckets in seconds. A healthy reactor runs its timers within a
#: millisecond or two; tens of milliseconds mean it is busy, and a tick that is
#: seconds late means something blocked it (every client waited that long).
#: The alert rules (docs/deploy/fws-alerts.yml) match only bounds below 1,
#: which every Prometheus version writes alike (3.x writes "1.0" as "1").
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LagHistogram:
    """
    How late each heartbeat tick ran (:class:`fws.web.Heartbeat`), as plain
    counts: one bisect and three additions per tick (once a second), turned
    into the ``fws_reactor_lag_seconds`` histogram only when Prometheus
    scrapes. A histogram, not the last value, because a blocked reactor shows
    in one tick: a gauge read every 15 s would miss it 14 times in 15.
    """

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(LAG_BUCKETS) + 1)  # the last one: over every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, lag: float) -> None:
        """Count one tick that ran ``lag`` seconds late."""
        self.counts[bisect_left(LAG_BUCKETS, lag)] += 1
        self.sum += lag
        self.count += 1

    def family(self) -> HistogramMetricFamily:
        """The ``fws_reactor_lag_seconds`` histogram (cumulative buckets)."""
        buckets = []
        total = 0
        for bound, n in zip((*LAG_BUCKETS, float("inf")), self.counts):
            total += n
            buckets.append((floatToGoString(bound), total))
        return HistogramMetricFamily(
            "fws_reactor_lag_seconds",
            "How late the reactor ran its once-a-second heartbeat timer; "
            "a tick seconds late means something blocked the reactor that long.",
            buckets=buckets, sum_value=self.sum)


class Stats:
    """
    Plain counters, updated in place by the protocol and the factory.

    :ivar closed: (close code, "server" or "client") -> connections closed so
        (1006: the connection ended without a close frame).
    :ivar refused: HTTP status -> handshakes refused with it.
    :ivar limit_hits: limit name -> times it acted (refused, closed or dropped).
    """

    __slots__ = ("opened", "closed", "refused", "messages_in", "bytes_in", "messages_out",
                 "bytes_out", "broadcasts", "deliveries", "slow_consumer_closes",
                 "slow_consumer_drops", "limit_hits", "pubsub_received", "relayed_received",
                 "started", "replays", "replayed", "recovered", "not_recovered")

    def __init__(self) -> None:
        self.opened = 0
        self.closed: dict[tuple[int, str], int] = {}
        self.refused: dict[int, int] = {}
        self.messages_in = 0
        self.bytes_in = 0
        self.messages_out = 0
        self.bytes_out = 0
        self.broadcasts = 0
        self.deliveries = 0
        self.slow_consumer_closes = 0
        self.slow_consumer_drops = 0
        self.limit_hits: dict[str, int] = {}
        self.pubsub_received = 0
        self.relayed_received = 0
        self.started = time.time()
        #: With --history (fws.history): resumes of a group, messages they replayed,
        #: and how they ended.
        self.replays = 0
        self.replayed = 0
        self.recovered = 0
        self.not_recovered = 0

    def hit(self, limit: str) -> None:
        """Count one action of limit ``limit``."""
        self.limit_hits[limit] = self.limit_hits.get(limit, 0) + 1


class FwsCollector(Collector):
    """Reads a server's :class:`Stats` (and its storage's Redis state) at scrape time."""

    def __init__(self, factory: Any, service: Any = None) -> None:
        self.factory = factory
        self.service = service

    def collect(self) -> Iterator[Metric]:
        factory = self.factory
        stats: Stats = factory.stats

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield GaugeMetricFamily("fws_connections_open", "Open WebSocket connections.",
                                value=len(factory.users))
        yield GaugeMetricFamily("fws_connections_handshaking",
                                "TCP connections still in their opening handshake.",
                                value=len(factory.connections) - len(factory.users))
        yield GaugeMetricFamily("fws_groups", "Token groups with local members.",
                                value=len(factory.groups))
        yield counter("fws_connections_opened", "WebSocket connections opened.", stats.opened)
        closed = CounterMetricFamily("fws_connections_closed",
                                     "WebSocket connections closed, by close code and by who "
                                     "closed (server or client); 1006: no close frame.",
                                     labels=["code", "by"])
        for (code, by), n in sorted(stats.closed.items()):
            closed.add_metric([str(code), by], n)
        yield closed
        refused = CounterMetricFamily("fws_handshakes_refused",
                                      "Opening handshakes refused, by HTTP status.",
                                      labels=["status"])
        for status, n in sorted(stats.refused.items()):
            refused.add_metric([str(status)], n)
        yield refused
        yield counter("fws_messages_received", "Messages received from clients.",
                      stats.messages_in)
        yield counter("fws_received_bytes", "Payload bytes received from clients.",
                      stats.bytes_in)
        yield counter("fws_messages_sent", "Messages sent to clients (every delivery counts).",
                      stats.messages_out)
        yield counter("fws_sent_bytes", "Frame bytes sent to clients.", stats.bytes_out)
        yield counter("fws_broadcasts", "Broadcasts (one message to many connections).",
                      stats.broadcasts)
        yield counter("fws_broadcast_deliveries", "Connections broadcasts were delivered to.",
                      stats.deliveries)
        yield counter("fws_slow_consumer_disconnects",
                      "Connections closed (4008) for not reading their messages.",
                      stats.slow_consumer_closes)
        yield counter("fws_slow_consumer_drops",
                      "Times a client fell --max-send-buffer behind and messages to it "
                      "started to be dropped (--slow-consumer-action drop).",
                      stats.slow_consumer_drops)
        hits = CounterMetricFamily("fws_limit_hits", "Times a limit acted, by limit.",
                                   labels=["limit"])
        for limit, n in sorted(stats.limit_hits.items()):
            hits.add_metric([limit], n)
        yield hits
        yield counter("fws_pubsub_messages_received",
                      "Pub/sub messages fed to the consumer chain.", stats.pubsub_received)
        yield counter("fws_relayed_broadcasts_received",
                      "Broadcasts relayed by other nodes through Redis.", stats.relayed_received)
        history = getattr(factory, "history", None)
        if history is not None:
            kept = history.collect()
            yield counter("fws_history_messages_kept",
                          "Group messages kept for resume (--history) by this node.",
                          kept.get("kept", 0))
            yield counter("fws_history_channel_messages_received",
                          "Kept pub/sub channel messages (Redis FCALL fws_publish) this node "
                          "received with their place, for channels it serves.",
                          kept.get("channel_received", 0))
            yield counter("fws_history_messages_filled",
                          "Kept group messages this node missed live (its Redis subscriber "
                          "connection was down) and read from the history to deliver.",
                          kept.get("filled", 0))
            yield counter("fws_history_messages_lost_in_gaps",
                          "Group messages this node missed live that the history no longer "
                          "had (retention exceeded, history lost).", kept.get("gap_lost", 0))
            yield counter("fws_history_duplicates_dropped",
                          "Kept group messages this node heard again after delivering them "
                          "(dropped).", kept.get("duplicates", 0))
            for name in ("groups", "messages", "bytes"):
                if name in kept:
                    yield GaugeMetricFamily(f"fws_history_{name}",
                                            f"History {name} this node keeps now (memory).",
                                            value=kept[name])
            yield counter("fws_history_replays", "Groups resumed by reconnecting clients.",
                          stats.replays)
            yield counter("fws_history_messages_replayed",
                          "Messages replayed to resuming clients.", stats.replayed)
            outcomes = CounterMetricFamily("fws_history_resumes",
                                           "Resumes that ended, by whether every missed "
                                           "message was replayed.", labels=["recovered"])
            outcomes.add_metric(["true"], stats.recovered)
            outcomes.add_metric(["false"], stats.not_recovered)
            yield outcomes
        yield GaugeMetricFamily("fws_start_time_seconds", "When this server started (Unix time).",
                                value=stats.started)
        if self.service is not None:
            yield GaugeMetricFamily("fws_ready", "1 when /readyz says ready.",
                                    value=1 if self.service.readiness()[0] else 0)
            heartbeat = getattr(self.service, "heartbeat", None)
            if heartbeat is not None:
                yield heartbeat.lags.family()
        yield from factory.storage_object.collect_metrics()


class FwsMetrics:
    """
    One server's Prometheus registry: the :class:`FwsCollector`, the
    per-filter metrics, and the process, platform and garbage collector
    metrics of prometheus_client (``process_*``, ``python_info``,
    ``python_gc_*``), which it otherwise puts only on its global registry.
    """

    def __init__(self) -> None:
        from prometheus_client import Counter

        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.filter_seconds = Histogram(
            "fws_filter_seconds",
            "Time a filter took per call, until its Deferred or coroutine finished "
            "(the _count is the number of calls).",
            ["filter", "event"], buckets=FILTER_BUCKETS, registry=self.registry,
        )
        self.filter_errors = Counter(
            "fws_filter_errors", "Filter calls that raised, failed or timed out.",
            ["filter", "event"], registry=self.registry,
        )

    def watch(self, factory: Any, service: Any = None) -> None:
        """Export ``factory``'s counters (and ``service``'s readiness)."""
        self.registry.register(FwsCollector(factory, service))

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = ["FILTER_BUCKETS", "LAG_BUCKETS", "FwsCollector", "FwsMetrics", "LagHistogram", "Stats"]
