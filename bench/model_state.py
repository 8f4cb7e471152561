"""The incremental model against a full rebuild, and the full rebuild before and after its numpy fixes
(``python -m bench.model_state``).

30 days of 5m bars (the real Binance sample tiled to 8,640 bars, as in bench/model.py), the window
sliding by one closed bar per update, as the bot's refreshes see it. Every figure is also a ratio to
one ``np.cumsum`` pass over as many float64 as the run has levels (both sides), timed in the same
rounds, so it holds across machines. The "before" figures run the model as it was at ``--baseline``
(a git ref), loaded from git into this process. Every incremental run is checked equal to the full
rebuild (not timed). Writes the section ``model-incremental`` of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np

from analysis.model import ModelParams, build_map, map_from_run, run_model
from analysis.model_state import ModelState
from analysis.sources import SAMPLE_PATH, read_bars_csv

from .calibrate import Calibration
from .doc import write_section
from .model import DAY_BARS, tiled

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "256c8ee"  # main before the full rebuild's numpy fixes


def baseline_model(ref: str) -> ModuleType | None:
    """analysis/model.py as of git ``ref``, imported as ``analysis._model_baseline`` (None without git or ref)."""
    try:
        out = subprocess.run(["git", "show", f"{ref}:analysis/model.py"], cwd=ROOT, capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    name = "analysis._model_baseline"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "analysis"
    sys.modules[name] = mod
    exec(compile(out.stdout, f"{ref}:analysis/model.py", "exec"), mod.__dict__)
    return mod


def _time(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.model_state")
    ap.add_argument("--updates", type=int, default=300, help="one-bar updates timed (median reported)")
    ap.add_argument("--rounds", type=int, default=60, help="timed rounds of the full rebuilds (median reported)")
    ap.add_argument("--baseline", default=BASELINE, help="git ref of the model before the fixes ('' to skip)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    cal = Calibration()

    real = read_bars_csv(SAMPLE_PATH, venue="binance", symbol="BTCUSDT")
    n = 30 * DAY_BARS
    series = tiled(real, n + args.updates + 64 * 4 + 10)
    params = ModelParams()
    first = series.slice(0, n)
    run0 = run_model(first, params)
    levels = run0.longs.t0.size + run0.shorts.t0.size
    data = np.random.default_rng(0).random(levels)
    buf = np.empty_like(data)
    old = baseline_model(args.baseline) if args.baseline else None

    # full rebuilds, before and after, and the cumsum pass: round-robin so a busy spell hits all alike
    full: dict[str, list[float]] = {"cumsum": [], "run_model": [], "build_map": [], "run_model before": [],
                                    "build_map before": []}
    for r in range(5 + args.rounds):
        round_ms = {"cumsum": _time(lambda: np.cumsum(data, out=buf)),
             "run_model": _time(lambda: run_model(first, params)),
             "build_map": _time(lambda: build_map(first, params, now_ms=0))}
        if old is not None:
            round_ms["run_model before"] = _time(lambda: old.run_model(first, old.ModelParams()))
            round_ms["build_map before"] = _time(lambda: old.build_map(first, old.ModelParams(), now_ms=0))
        if r >= 5:
            for name, v in round_ms.items():
                full[name].append(v)
    med = {k: statistics.median(v) for k, v in full.items() if v}
    cs = med["cumsum"]

    # incremental: slide by one bar per update; each update's run is checked against the full rebuild.
    # The sweep pass alone (ModelState._append: the new bar's slots, one compare pass over the unswept
    # levels) is timed by wrapping it for this loop only.
    state = ModelState(first, params)
    sweep_ms: list[float] = []
    plain_append = ModelState._append

    def timed_append(self: ModelState, *a: Any) -> None:
        t = time.perf_counter()
        plain_append(self, *a)
        sweep_ms.append((time.perf_counter() - t) * 1000)

    setattr(ModelState, "_append", timed_append)  # bench-only instrumentation, restored below
    upd, mapt, cs_inc, rebuild = [], [], [], []
    exact = True
    for i in range(1, args.updates + 1):
        bars = series.slice(i, n + i)
        t = time.perf_counter()
        run, update = state.update(bars)
        t1 = time.perf_counter()
        map_from_run(run, params, now_ms=0)
        t2 = time.perf_counter()
        assert not update.rebuilt, update.reason
        upd.append((t1 - t) * 1000)
        mapt.append((t2 - t1) * 1000)
        cs_inc.append(_time(lambda: np.cumsum(data, out=buf)))
        if i % 10 == 0:
            rebuild.append(_time(lambda: build_map(bars, params, now_ms=0)))
            full_run = run_model(bars, params)
            exact &= all(np.array_equal(getattr(run, k), getattr(full_run, k)) for k in ("t_long", "t_short", "log_c"))
            exact &= all(np.array_equal(getattr(run.longs, k), getattr(full_run.longs, k)) and
                         np.array_equal(getattr(run.shorts, k), getattr(full_run.shorts, k))
                         for k in ("t0", "price", "weight", "tier"))
    setattr(ModelState, "_append", plain_append)
    unswept = int(state.open_long.size + state.open_short.size)
    # k new bars at once (a refresh after a quiet spell): per bar
    per_bar = {}
    for k in (4, 12, 64):
        lo = args.updates + 1
        st = ModelState(series.slice(lo, n + lo), params)
        samples = []
        for j in range(1, 4):
            samples.append(_time(lambda: st.update(series.slice(lo + j * k, n + lo + j * k))) / k)
        per_bar[k] = statistics.median(samples)
    u, mp, csi, rb = (statistics.median(x) for x in (upd, mapt, cs_inc, rebuild))

    lines = [
        f"30 days of 5m bars ({n:,} bars, {levels:,} levels on both sides). *cumsum* is one `np.cumsum` of "
        f"{levels:,} float64 into a preallocated buffer, timed in the same rounds: {cs:.3f} ms "
        f"(during the incremental rounds {csi:.3f} ms).",
        "",
        "| full rebuild | median ms | ratio to one cumsum |",
        "|---|---:|---:|",
    ]
    for name in ("run_model before", "run_model", "build_map before", "build_map"):
        if name in med:
            label = name.replace(" before", f" before the fixes ({args.baseline})") if "before" in name else name + " (now)"
            lines.append(f"| {label} | {med[name]:.2f} | {med[name] / cs:.0f} |")
    if "build_map before" in med:
        lines += ["", f"The fixes make the run {med['run_model before'] / med['run_model']:.2f}x and the map "
                      f"(run + map) {med['build_map before'] / med['build_map']:.2f}x faster; outputs are bit-identical "
                      f"(tests/test_model_state.py, and golden outputs checked while making them)."]
    lines += [
        "",
        f"| incremental, window sliding by one bar ({len(upd)} updates) | median ms | ratio to one cumsum |",
        "|---|---:|---:|",
        f"| state update: the new run (sweeps of the new bar, the window's flow and weights) | {u:.3f} | {u / csi:.1f} |",
        f"| of which the new bar's part (its levels and flow inputs, one compare over the {unswept:,} unswept) | "
        f"{statistics.median(sweep_ms):.3f} | {statistics.median(sweep_ms) / csi:.1f} |",
        f"| map from the run (map_from_run) | {mp:.3f} | {mp / csi:.1f} |",
        f"| update + map | {u + mp:.3f} | {(u + mp) / csi:.1f} |",
        f"| full rebuild of the same map (build_map) | {rb:.2f} | {rb / csi:.0f} |",
        "",
        f"The update costs {u / rb:.2f} of a full rebuild's time ({rb / u:.1f}x less); with the map, "
        f"{(u + mp) / rb:.2f} ({rb / (u + mp):.1f}x less). Exact: every 10th update's run compared with a full "
        f"rebuild: {'identical' if exact else 'DIFFERENT'}.",
        "",
        "k new bars in one update, per bar (median ms): " + ", ".join(f"k={k}: {v:.3f}" for k, v in per_bar.items()),
        "",
        "Target (issue 14): under 1 ms per new 5m bar for 30 days of state. The new bar costs its own levels, "
        "its flow inputs and one contiguous compare over the unswept levels' cached prices; the rest is the "
        "window's part, which no caching can skip exactly: the turnover's activity reference and the OI flow "
        "start where the window starts, so every bar's turnover (expm1), shrink (log, cumsum) and side share "
        "(tanh) and every level's weight and window-relative sweep bar change when the window slides. The "
        "per-bar inputs that do not (OI quantity and its change, time step, range) are kept per row.",
    ]
    body = "\n".join(lines)
    cal.finish()
    print(cal.line(), body, sep="\n\n")
    if not args.no_write:
        write_section("model-incremental", "Model: incremental update against a full rebuild",
                      "python -m bench.model_state", body, cal)
        print("\nwrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
