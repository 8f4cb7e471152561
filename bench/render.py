"""Chart render cost (``python -m bench.render``): per PNG, by phase, by PNG level, by matplotlib version.

The map of the bundled real Binance BTCUSDT sample (7d window) is built once and pickled; the
chart of it (1280x720, dark, stacked by tier) is rendered in this interpreter and, with
``--compare PYTHON`` (e.g. a throwaway venv holding matplotlib 3.9), in that interpreter too, on
the same pickled map and reading. Per interpreter, interleaved round by round (so a busy spell
hits every case alike), medians of:

* the whole render (``chart.render``) with PNGs at zlib level 6 (PIL's default) and at level 1;
* its phases: building the figure (``build_figure``: artists, ticks, text layout for the fitting),
  drawing it (``canvas.draw``: text glyphs, bars, lines) and encoding the PNG (levels 6 and 1);
* the PNG's bytes at each level, and whether both decode to the same pixels.

A child run (``--child PICKLE``) prints its figures as JSON for the parent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent


def build_inputs(path: Path) -> None:
    """Pickle (map, reading) of the sample's 7d map, with this interpreter's model."""
    from analysis.metrics import read
    from analysis.report import ReportService
    from analysis.sources import SampleSource
    from analysis.windows import parse_window

    async def one() -> Any:
        svc = ReportService({"binance": SampleSource()})
        m, _ = await svc.maps("BTCUSDT", parse_window("7d"), ("binance",))
        return m, read(m, svc.metrics)

    path.write_bytes(pickle.dumps(asyncio.run(one())))


def measure(path: Path, repeat: int) -> dict[str, Any]:
    """The figures of the module docstring, in this interpreter."""
    import matplotlib
    import numpy as np
    from PIL import Image

    from analysis import chart

    m, r = pickle.loads(path.read_bytes())
    state: dict[str, Any] = {}

    def encode(fig: Any, level: int) -> bytes:
        buf = BytesIO()
        fig.canvas.print_png(buf, pil_kwargs={"compress_level": level})
        return buf.getvalue()

    def build() -> None:
        state["fig"] = chart.build_figure(m, r)

    def draw() -> None:
        fig = chart.build_figure(m, r)  # untimed below: only the draw is
        t = time.perf_counter()
        fig.canvas.draw()
        state["draw"] = time.perf_counter() - t
        state["drawn"] = fig

    def render(level: int) -> Callable[[], None]:
        def run() -> None:
            state[f"png{level}"] = encode(chart.build_figure(m, r), level)
        return run

    def enc(level: int) -> Callable[[], None]:
        def run() -> None:
            t = time.perf_counter()
            fig = state["drawn"]
            buf = BytesIO()
            img = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
            img.save(buf, format="png", compress_level=level)
            state[f"enc{level}"] = time.perf_counter() - t
        return run

    samples: dict[str, list[float]] = {k: [] for k in ("render6", "render1", "build", "draw", "enc6", "enc1")}
    for i in range(3 + repeat):
        for name, fn in (("render6", render(6)), ("render1", render(1)), ("build", build)):
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            if i >= 3:
                samples[name].append(dt * 1000)
        draw()
        enc(6)()
        enc(1)()
        if i >= 3:
            samples["draw"].append(state["draw"] * 1000)
            samples["enc6"].append(state["enc6"] * 1000)
            samples["enc1"].append(state["enc1"] * 1000)
    a = np.asarray(Image.open(BytesIO(state["png6"])).convert("RGBA"))
    b = np.asarray(Image.open(BytesIO(state["png1"])).convert("RGBA"))
    return {
        "matplotlib": matplotlib.__version__,
        "python": sys.version.split()[0],
        "repeat": repeat,
        **{k: statistics.median(v) for k, v in samples.items()},
        "bytes6": len(state["png6"]), "bytes1": len(state["png1"]),
        "same_pixels": bool(a.shape == b.shape and np.array_equal(a, b)),
    }


def _child(python: str, path: Path, repeat: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    out = subprocess.run([python, "-m", "bench.render", "--child", str(path), "--repeat", str(repeat)],
                         cwd=ROOT, capture_output=True, text=True, timeout=3600, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{python} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(r: dict[str, Any]) -> str:
    return (f"| {r['matplotlib']} | {r['render6']:.0f} ms | {r['render1']:.0f} ms | {r['build']:.0f} ms | "
            f"{r['draw']:.0f} ms | {r['enc6']:.1f} ms | {r['enc1']:.1f} ms | {r['bytes6']:,} | {r['bytes1']:,} "
            f"(+{100 * (r['bytes1'] / r['bytes6'] - 1):.1f}%) | {'yes' if r['same_pixels'] else 'NO'} |")


def decision(results: list[dict[str, Any]]) -> str:
    """The choices these figures support, worded with them."""
    base = results[0]
    text = f"""
**Chosen.** PNGs are written at zlib level 1 (`analysis.chart.PNG_COMPRESS_LEVEL`, also the
heatmap's): the same pixels {base['enc6'] - base['enc1']:.0f} ms sooner for
{base['bytes1'] - base['bytes6']:,} more bytes per chart ({100 * (base['bytes1'] / base['bytes6'] - 1):.0f}%:
a slightly larger upload, and the byte-bounded cache holds that many fewer charts)."""
    other = [r for r in results[1:] if r["matplotlib"].split(".")[:2] != base["matplotlib"].split(".")[:2]]
    if other:
        o = other[0]
        text += f"""

**matplotlib is not capped.** Against {o['matplotlib']}, {base['matplotlib']}'s extra time is mostly in the
draw ({base['draw']:.0f} ms against {o['draw']:.0f} ms: {base['draw'] / o['draw']:.1f}x), less in building the figure
({base['build']:.0f} / {o['build']:.0f} ms: {base['build'] / o['build']:.1f}x) and encoding ({base['enc6']:.0f} /
{o['enc6']:.0f} ms: {base['enc6'] / o['enc6']:.1f}x, the same zlib): its Agg
`draw_text` lays each string out through `FT2Font._layout` (font features, language) and rasterizes
it glyph by glyph from Python, where {o['matplotlib']} drew the whole string's bitmap in one C call.
No choice of the chart's removes that without drawing other text: the chart already draws each bar
group as one `PolyCollection`, uses no pyplot, and its remaining texts (about 40: tick labels,
title rows, legend, cluster labels) are the picture. A cap at <3.10 would hold back a core
dependency (its fixes, and wheels for new Pythons) to save {base['render1'] - o['render1']:.0f} ms of CPU per
chart, CPU that the render pool now spreads over the cores and that the skew check and the cluster
alerts no longer spend at all (the reading-only path); a later matplotlib that regresses further is
the reason to revisit. The floor stays where the suite passes (constraints/floors.txt)."""
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed rounds per case (after 3 warm-up rounds)")
    parser.add_argument("--compare", metavar="PYTHON", action="append", default=[],
                        help="another interpreter (its own matplotlib) to run the same renders in; repeatable")
    parser.add_argument("--rounds", type=int, default=2, help="alternate this interpreter and the others this often")
    parser.add_argument("--child", metavar="PICKLE", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(Path(args.child), args.repeat)))
        return
    from .calibrate import Calibration
    from .doc import write_section

    cal = Calibration()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "map.pkl"
        build_inputs(path)
        runs: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.rounds):  # alternate the interpreters, so a busy spell hits each alike
            for python in [sys.executable, *args.compare]:
                runs.setdefault(python, []).append(_child(python, path, args.repeat))
    cal.finish()
    keys = ("render6", "render1", "build", "draw", "enc6", "enc1")
    results = [{**rs[0], **{k: statistics.median(x[k] for x in rs) for k in keys}} for rs in runs.values()]
    base = results[0]
    lines = [_row(r) for r in results]
    ratios = "; ".join(f"matplotlib {r['matplotlib']} renders in {r['render6'] / base['render6']:.2f}x the time of "
                       f"{base['matplotlib']}" for r in results[1:])
    body = f"""
The chart of the bundled sample's BTCUSDT 7d map (1280x720, dark, by tier), the same pickled map
and reading in every interpreter; medians of {args.repeat} interleaved rounds per run, {args.rounds}
runs per interpreter alternated (the median of their medians shown). "render" is `chart.render`
whole; "build" is `build_figure` (artists, ticks, the text measured for fitting); "draw" is the Agg
draw (text glyphs, bars, lines); "encode" is the PNG of the drawn canvas at zlib level 6 (PIL's
default) or 1.

| matplotlib | render, PNG level 6 | render, PNG level 1 | build | draw | encode 6 | encode 1 | bytes, level 6 | bytes, level 1 | same pixels |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---|
{chr(10).join(lines)}

{ratios + "." if ratios else ""} PNG level 1 saves {base['enc6'] - base['enc1']:.1f} ms per chart
({base['matplotlib']}) for {100 * (base['bytes1'] / base['bytes6'] - 1):.1f}% more bytes, pixel for pixel the same image.
{decision(results)}
"""
    print(cal.line(), body.strip(), sep="\n\n")
    if not args.no_write:
        cmd = "python -m bench.render" + "".join(f" --compare {p}" for p in args.compare)
        write_section("render", "Chart render cost: matplotlib version, phases, PNG level", cmd, body, cal)


if __name__ == "__main__":
    main()
