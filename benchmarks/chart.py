"""The throughput table as a picture: lookups/s against concurrency, one line per client.

python benchmarks/chart.py benchmarks/results/results.json benchmarks/throughput.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")  # files only: no display here or in CI

import matplotlib.pyplot as plt  # after the backend is chosen

LABELS = {
    "httpx": "tuned httpx",
    "aiohttp": "aiohttp",
    "ccm_async": "ccm_async",
    "ccm_async+aiohttp": 'ccm_async, transport="aiohttp"',
}


def draw(results: dict[str, object], path: Path) -> None:
    """Draw ``results["throughput"]`` (the bench's JSON) into a PNG at ``path``."""
    throughput = results["throughput"]
    assert isinstance(throughput, dict)
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    levels: list[str] = []
    for client, by_level in throughput["table"].items():
        levels = sorted(by_level, key=int)
        axes.plot(
            [int(level) for level in levels],
            [by_level[level]["lookups_per_s"] for level in levels],
            marker="o",
            label=LABELS.get(client, client),
        )
    # Log scales: aiohttp's thousands and httpx's hundreds stay readable side by side.
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xticks([int(level) for level in levels], levels)
    axes.xaxis.set_minor_locator(mpl.ticker.NullLocator())
    axes.yaxis.set_major_locator(mpl.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_minor_locator(mpl.ticker.NullLocator())
    axes.yaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axes.set_xlabel("requests in flight (C)")
    axes.set_ylabel("lookups per second (log scale)")
    axes.set_title(
        f"Throughput, {throughput['count']:,} lookups, medians of {throughput['runs']} runs"
    )
    axes.grid(visible=True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
