"""Heatmap benchmark on real data (``python -m bench.heatmap``).

Medians over repeated runs, 30 days of real Binance 5m bars (the bundled sample): the snapshot map
(model only), the heatmap states, the heatmap PNG, and the map report's chart for comparison, with
a calibration line (one numpy pass and one pure-Python loop) so figures from different machines
can be compared. Writes its own section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np

from analysis import chart
from analysis.heatmap import build_states
from analysis.heatmap_chart import render_heatmap
from analysis.metrics import read
from analysis.model import build_map
from analysis.sources import SAMPLE_PATH, read_bars_csv

from .doc import write_section


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def calibration(repeat: int) -> tuple[float, float]:
    """(ms for one numpy pass over 10M floats, ms for a 1M-step pure-Python loop)."""
    a = np.random.default_rng(0).random(10_000_000)

    def loop() -> None:
        x = 0
        for i in range(1_000_000):
            x += i

    return median_ms(lambda: float(a.sum()), repeat), median_ms(loop, repeat)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    bars = read_bars_csv(SAMPLE_PATH, venue="binance", symbol="BTCUSDT").last(30 * 86_400_000)
    m = build_map(bars, window="30d")
    reading = read(m)
    states = build_states(bars, window="30d")
    rows = [
        ("snapshot map (model)", median_ms(lambda: build_map(bars, window="30d"), args.repeat)),
        ("heatmap states (model run + states)", median_ms(lambda: build_states(bars, window="30d"), args.repeat)),
        ("heatmap PNG (1280x720)", median_ms(lambda: render_heatmap(states), args.repeat)),
        ("map chart PNG (1280x720)", median_ms(lambda: chart.render(m, reading), args.repeat)),
    ]
    np_ms, py_ms = calibration(args.repeat)
    shape = f"{states.n_columns} columns x {states.n_bins} bins, step {states.step_ms // 60_000} min"
    body = [f"{len(bars):,} real 5m bars ({len(bars) / 288:.1f} days: all the sample holds of a 30d window); states {shape}.", "",
            "| step | median ms |", "| --- | ---: |"]
    body += [f"| {name} | {ms:.1f} |" for name, ms in rows]
    body += ["", f"Calibration: numpy sum of 10M floats {np_ms:.1f} ms; pure-Python loop of 1M steps {py_ms:.1f} ms."]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        write_section("heatmap", "Heatmap: states and chart (30 days)", "python -m bench.heatmap", text)


if __name__ == "__main__":
    main()
