"""
Plot fan-out throughput and latency against the number of receivers, one line
per server, from the rows of one benchmark run.

    python benchmarks/plot.py benchmarks/results/TAG.jsonl [--out docs/_static]

Needs matplotlib (``pip install '.[bench]'``). Medians over repetitions; the
machine and date are written on every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def medians(rows: list[dict], key: str) -> dict[tuple[str, int, int], float]:
    groups: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    for row in rows:
        if row.get("mode") == "fanout" and row.get("ok") and row.get("window", 16) == 16:
            groups[(row["server"], row["size"], row["receivers"])].append(row[key])
    return {k: statistics.median(v) for k, v in groups.items()}


SUMMARY = (
    # (scenario, field, column title, higher is better)
    ("fanout-1000-64", "deliveries_per_s", "fan-out 1000 x 64 B, deliveries/s", True),
    ("fanout-5000-1024", "deliveries_per_s", "fan-out 5000 x 1 KiB, deliveries/s", True),
    ("fanlat-5000-64", "p99_us", "1 message to 5000, p99 ms", False),
    ("echo", "rt_per_s", "echo round trips/s (100 clients)", True),
    ("connect", "handshakes_per_s", "handshakes/s", True),
    ("idle", "kib_per_conn_10000", "idle KiB/connection", False),
)


def summary(rows: list[dict], baseline: str = "node-ws") -> str:
    """A reST table of medians, each with its ratio to ``baseline`` (x node-ws)."""
    cells: dict[tuple[str, str], float] = {}
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        for scenario, key, _, _ in SUMMARY:
            if row.get("scenario") == scenario and row.get("ok") and key in row:
                groups[(row["server"], scenario)].append(float(row[key]))
    for k, v in groups.items():
        cells[k] = statistics.median(v)
    servers = sorted({s for s, _ in cells}, key=lambda s: (not s.startswith("fws"), s))
    header = ["server"] + [title for _, _, title, _ in SUMMARY]
    lines = []
    for server in servers:
        line = [server]
        for scenario, key, _, _ in SUMMARY:
            value = cells.get((server, scenario))
            base = cells.get((baseline, scenario))
            if value is None:
                line.append("")
                continue
            shown = (f"{value / 1000:.1f} ms" if key == "p99_us" else f"{value:.1f}" if key.startswith("kib")
                     else f"{value / 1000:.0f}k" if value >= 10000 else f"{value / 1000:.2f}k")
            if base and server != baseline:
                shown += f" ({value / base:.2f}x)"
            line.append(shown)
        lines.append(line)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)
    out = [rule, "  ".join(h.ljust(w) for h, w in zip(header, widths)), rule]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    out.append(rule)
    return "\n".join(out) + "\n"


def redis_share(rows: list[dict], local: str = "fws", redis: str = "fws-redis") -> str:
    """A reST table: the Redis path's fan-out as a share of local fan-out, per cell."""
    values = medians(rows, "deliveries_per_s")
    cells = sorted({(size, n) for s, size, n in values if s == redis and (local, size, n) in values})
    if not cells:
        return ""
    header = [f"{n} x {size} B" for size, n in cells]
    shares = [f"{100 * values[(redis, size, n)] / values[(local, size, n)]:.0f} %" for size, n in cells]
    widths = [max(len(h), len(v)) for h, v in zip(header, shares)]
    rule = "  ".join("=" * w for w in widths)
    return "\n".join([rule, "  ".join(h.ljust(w) for h, w in zip(header, widths)), rule,
                      "  ".join(v.ljust(w) for v, w in zip(shares, widths)), rule]) + "\n"


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/_static"))
    parser.add_argument("--machine", default="2 vCPU, server pinned to one core")
    parser.add_argument("--summary", type=Path, help="also write a reST table of medians here")
    args = parser.parse_args()
    rows = load(args.jsonl)
    if args.summary:
        date = __import__("datetime").datetime.fromtimestamp(rows[0]["ts"]).strftime("%Y-%m-%d")
        args.summary.write_text(
            f"Medians of the run ``{args.jsonl.name}`` ({date}, {args.machine}); in brackets "
            "the ratio to node ``ws`` (for latency and memory, lower is better).\n\n"
            + summary(rows)
            + ("\nThe Redis path (client -> Redis -> consumer chain -> clients, ``fws-redis``, "
               "Redis's CPU included) as a share of local fan-out (``fws``), receivers x "
               "message size:\n\n" + share if (share := redis_share(rows)) else ""))
        print(f"wrote {args.summary}")
    args.out.mkdir(parents=True, exist_ok=True)
    date = rows[0].get("date") or __import__("datetime").datetime.fromtimestamp(
        rows[0]["ts"]).strftime("%Y-%m-%d")
    for key, label, name, scale in (
        ("deliveries_per_s", "deliveries per second", "fanout-throughput.png", 1e-3),
        ("p99_us", "p99 send-to-receive latency (ms)", "fanout-latency.png", 1e-3),
    ):
        values = medians(rows, key)
        sizes = sorted({size for _, size, _ in values})
        fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
        for ax, size in zip(axes[0], sizes):
            for server in sorted({s for s, _, _ in values}):
                points = sorted((n, v * scale) for (s, sz, n), v in values.items()
                                if s == server and sz == size)
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                            label=server, linewidth=2.5 if server.startswith("fws") else 1.2)
            ax.set_xscale("log")
            ax.set_xlabel("receivers")
            ax.set_ylabel(label if key == "p99_us" else f"thousand {label}")
            ax.set_title(f"{size}-byte messages, 16 in flight")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"fws fan-out vs peers — {args.machine}, {date} ({args.jsonl.name})",
                     fontsize=10)
        fig.tight_layout()
        fig.savefig(args.out / name, dpi=100)
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
