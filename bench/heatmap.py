"""Heatmap benchmark on real data (``python -m bench.heatmap``).

Three venues x 30 days of 5m bars, offline. Each venue's stand-in is the real Binance BTCUSDT 5m
sample (8,014 bars) tiled to 30 days (8,640 bars) as in bench/model.py, relabelled binance / bybit
/ okx: the same bars, so the three model runs cost the same as three real venues of that length.

Two targets of issue 10, both timed in one run, all cases interleaved round by round (so a busy
spell of the shared machine hits every case alike; medians over the rounds):

* the heatmap -- states of all three venues, merged, and the heatmap PNG -- at most 1.5x the map
  report of the same three venues (maps, merge, metrics, chart PNG, text);
* the states alone (:func:`analysis.heatmap.states_from_run` on a finished model run) at most the
  model's own time (:func:`analysis.model.build_map`) on the same bars.

Writes its own section of docs/benchmarks.md, starting with the calibration line.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

from analysis import chart
from analysis.heatmap import build_states, merge_states, states_from_run
from analysis.heatmap_chart import render_heatmap
from analysis.liqmap import merge
from analysis.metrics import read
from analysis.model import ModelParams, build_map, map_from_run, run_model
from analysis.sources import SAMPLE_PATH, read_bars_csv

from .calibrate import Calibration
from .doc import write_section
from .model import DAY_BARS, full_report, tiled

VENUES = ("binance", "bybit", "okx")
WINDOW = "30d"
HEATMAP_TARGET = 1.5
STATES_TARGET = 1.0


def interleaved_ms(cases: dict[str, Callable[[], object]], repeat: int, warmup: int = 3) -> dict[str, float]:
    """Median ms of every case, running them round-robin: ``warmup`` untimed rounds, then ``repeat``."""
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for i in range(warmup + repeat):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            if i >= warmup:
                samples[name].append(dt * 1000)
    return {k: statistics.median(v) for k, v in samples.items()}


def heatmap(bars_by_venue: list, params: ModelParams) -> bytes:
    """What ``ReportService.heatmap`` computes: every venue's states, merged, and the PNG."""
    return render_heatmap(merge_states([build_states(b, params, window=WINDOW) for b in bars_by_venue]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.heatmap", description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15, help="timed rounds (median reported)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    cal = Calibration()

    params = ModelParams()
    real = read_bars_csv(SAMPLE_PATH, venue="binance", symbol="BTCUSDT")
    venues = [tiled(real, 30 * DAY_BARS, venue=v) for v in VENUES]
    one = venues[0]
    run = run_model(one, params)
    snapshot = map_from_run(run, params, window=WINDOW, now_ms=0)
    per_venue = [build_states(b, params, window=WINDOW) for b in venues]
    merged = merge_states(per_venue)
    m = merge([build_map(b, params, window=WINDOW) for b in venues])
    reading = read(m)
    cases: dict[str, Callable[[], object]] = {
        "model": lambda: build_map(one, params, window=WINDOW),
        "states": lambda: states_from_run(run, params, snapshot),
        "build_states": lambda: build_states(one, params, window=WINDOW),
        "merge_states": lambda: merge_states(per_venue),
        "heatmap_png": lambda: render_heatmap(merged),
        "map_png": lambda: chart.render(m, reading),
        "map_report": lambda: full_report(venues, WINDOW),
        "heatmap": lambda: heatmap(venues, params),
    }
    ms = interleaved_ms(cases, args.repeat)
    cal.finish()

    hm_ratio = ms["heatmap"] / ms["map_report"]
    st_ratio = ms["states"] / ms["model"]
    verdict = {True: "pass", False: "FAIL"}
    shape = f"{merged.n_columns} columns x {merged.n_bins} bins, one column per {merged.step_ms // 60_000} min"
    rows = [
        ("model, 1 venue (`build_map`)", "model"),
        ("states alone, 1 venue (`states_from_run` of a finished run)", "states"),
        ("model run + snapshot + states, 1 venue (`build_states`)", "build_states"),
        ("merge the 3 venues' states (`merge_states`)", "merge_states"),
        ("heatmap PNG of the merged states (1280x720)", "heatmap_png"),
        ("map chart PNG of the merged map (1280x720)", "map_png"),
        ("**map report**, 3 venues: maps, merge, metrics, chart PNG, text", "map_report"),
        ("**heatmap**, 3 venues: states, merge, heatmap PNG", "heatmap"),
    ]
    lines = [
        f"Offline, {len(VENUES)} venues x 30 days: each venue's stand-in ({', '.join(VENUES)}) is the real Binance "
        f"BTCUSDT 5m sample ({len(real):,} bars) tiled to {len(one):,} bars as in bench/model.py. Heatmap states "
        f"{shape}. All cases run round-robin in one process ({args.repeat} timed rounds after 3 untimed); "
        "medians. The machine is shared with other jobs, so single figures move from run to run; the ratios, "
        "taken within the same rounds, move less.",
        "",
        "| step | median ms |",
        "| --- | ---: |",
        *(f"| {label} | {ms[key]:.1f} |" for label, key in rows),
        "",
        f"Targets: the heatmap took {hm_ratio:.2f}x the map report ({ms['heatmap']:.0f} / {ms['map_report']:.0f} ms; "
        f"target <= {HEATMAP_TARGET}x): **{verdict[hm_ratio <= HEATMAP_TARGET]}**. The states alone took "
        f"{st_ratio:.2f}x the model's own time on the same bars ({ms['states']:.1f} / {ms['model']:.1f} ms; "
        f"target <= {STATES_TARGET}x): **{verdict[st_ratio <= STATES_TARGET]}**.",
    ]
    body = "\n".join(lines)
    print(cal.line(), body, sep="\n\n")
    if not args.no_write:
        write_section("heatmap", "Heatmap: 3 venues x 30 days, states and chart", "python -m bench.heatmap", body, cal)
        print("\nwrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
