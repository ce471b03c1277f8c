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


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/_static"))
    parser.add_argument("--machine", default="2 vCPU, server pinned to one core")
    args = parser.parse_args()
    rows = load(args.jsonl)
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
