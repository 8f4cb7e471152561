"""The backtest: how well the model's swept notional per bar matches realized liquidations.

It is a *nowcast* given the bar's range: how much the map says sits in the path price took in
that bar, not a forecast of where price goes. The headline score is *map-only*: it counts only
levels opened in an earlier bar, i.e. the map a user would have seen as the bar opened. Levels
opened and swept inside the same bar (which no map drawn before the bar could show) are added
back in the *all-levels* score, reported beside it.

The model runs once over the whole history with :func:`analysis.model.build_map`, the code path
of the live map. That is the same as running it bar by bar: the model is causal (what it sweeps in
bar t depends on bars up to t only), which ``tests/test_backtest.py`` checks. The first
``warmup`` of the history only builds up positions and is not scored.

Scores, for longs, shorts and the total (see docs/methodology.md, "Backtest"):

- ``spearman_*``: rank correlation with realized liquidations (does the model know *when*);
- ``pearson_*``: linear correlation on USD (does it know *how much*, i.e. the big cascades);
- ``direction``: over bars whose realized total is above its 90th percentile, the share where the
  predicted dominant side matches the realized one (a tie counts one half).

The same scores are computed for naive baselines from the same bars, and a 95% interval for
model (map-only, and all-levels) minus the best baseline comes from a moving-block bootstrap over
24-hour blocks. The swept/realized dollar ratio is also reported per calendar month (UTC).
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .bars import Bars, iso
from .errors import DataError, InputError
from .model import ModelParams, build_map
from .sources.csvfile import read_bars_csv

__all__ = [
    "History",
    "Scores",
    "Interval",
    "BacktestResult",
    "METRICS",
    "BASELINES",
    "load_history",
    "parse_duration",
    "rank",
    "spearman",
    "pearson",
    "direction_share",
    "score",
    "baselines",
    "bootstrap_diff",
    "monthly_ratio",
    "run_backtest",
    "params_with",
    "render_png",
]

METRICS = (
    "spearman_long", "spearman_short", "spearman_total",
    "pearson_long", "pearson_short", "pearson_total", "direction",
)
BASELINES = ("abs_return", "directional_range", "directional_range_oi", "range_sq_oi")
REALIZED_COLUMNS = ("liquidation_long_usd", "liquidation_short_usd")
DIRECTION_QUANTILE = 0.9

_UNITS_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def parse_duration(text: str) -> int:
    """``"7d"``, ``"36h"``, ``"90m"``, ``"2w"`` or ``"0"`` -> milliseconds; else :class:`InputError`."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhdw]?)\s*", str(text).lower())
    if not m or (m.group(2) == "" and float(m.group(1)) != 0):
        raise InputError(f"cannot read duration {str(text)[:20]!r}; write e.g. 7d, 36h or 90m")
    return int(float(m.group(1)) * _UNITS_MS.get(m.group(2) or "m", 0))


# -- data ----------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class History:
    """Bars plus the realized long/short liquidations (USD) of each bar."""

    bars: Bars
    realized_long: np.ndarray
    realized_short: np.ndarray
    source: str = ""


def load_history(path: str | Path, *, venue: str = "binance", symbol: str = "BTCUSDT") -> History:
    """Read a file in the format of ``btc-realized-liquidations-1h-dev.csv``.

    Bars come from :func:`~analysis.sources.read_bars_csv` (``price_*`` and ``oi_close``); the
    realized columns are ``liquidation_long_usd`` and ``liquidation_short_usd``. Raises
    :class:`InputError` for a missing file and :class:`DataError` for an unreadable one, a missing
    or non-numeric column, negative liquidations, or unsorted, duplicate or off-grid timestamps.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a CSV file")
    bars = read_bars_csv(path, venue=venue, symbol=symbol)
    frame = pd.read_csv(path)  # readable: read_bars_csv just parsed it
    missing = [c for c in REALIZED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path.name}: missing realized-liquidation column(s) {', '.join(missing)}; a backtest file needs "
            f"{', '.join(REALIZED_COLUMNS)} beside the bar columns"
        )
    realized = []
    for col in REALIZED_COLUMNS:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{path.name}: {col} is missing or not a number at row {i} ({iso(bars.time[i])})")
        if (values < 0).any():
            i = int(np.argmax(values < 0))
            raise DataError(f"{path.name}: {col} is negative ({values[i]:g}) at row {i} ({iso(bars.time[i])})")
        realized.append(values)
    _check_times(bars, path.name)
    return History(bars, realized[0], realized[1], source=path.name)


def _check_times(bars: Bars, name: str) -> None:
    step = np.diff(bars.time)
    if np.any(step == 0):
        i = int(np.argmax(step == 0)) + 1
        raise DataError(f"{name}: duplicate timestamp {iso(bars.time[i])} (rows {i - 1} and {i})")
    if np.any(step < 0):
        i = int(np.argmax(step < 0)) + 1
        raise DataError(
            f"{name}: timestamps are not sorted: row {i} ({iso(bars.time[i])}) comes before row {i - 1} "
            f"({iso(bars.time[i - 1])}); sort the file by timestamp"
        )


# -- scores --------------------------------------------------------------------------------------

def rank(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, 1-based, ties sharing their average rank (like scipy's rankdata)."""
    x = np.asarray(x, dtype=float)
    shape, n = x.shape, x.shape[-1]
    rows = x.reshape(-1, n)
    order = np.argsort(rows, axis=1)
    xs = np.take_along_axis(rows, order, axis=1)
    new = np.ones(xs.shape, dtype=bool)  # a run of equal values starts here (every row starts one)
    new[:, 1:] = xs[:, 1:] != xs[:, :-1]
    flat = new.ravel()
    starts = np.flatnonzero(flat)
    lengths = np.diff(np.append(starts, flat.size))
    avg_of_run = starts % n + (lengths - 1) / 2.0 + 1.0
    avg = avg_of_run[np.cumsum(flat) - 1].reshape(rows.shape)
    out = np.empty_like(avg)
    np.put_along_axis(out, order, avg, axis=1)
    return out.reshape(shape)


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray | float:
    """Pearson correlation along the last axis; NaN where either side is constant."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, (xc * yc).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)
    return float(r) if r.ndim == 0 else r


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray | float:
    """Spearman rank correlation along the last axis (Pearson on average ranks)."""
    return pearson(rank(x), rank(y))


def direction_share(
    model_long: np.ndarray,
    model_short: np.ndarray,
    real_long: np.ndarray,
    real_short: np.ndarray,
    quantile: float = DIRECTION_QUANTILE,
) -> np.ndarray | float:
    """Share of big bars (realized total above its ``quantile``) whose dominant side the model gets right.

    Works along the last axis. A model tie counts one half (it is a coin flip); bars whose realized
    sides tie are left out.
    """
    rl, rs = np.asarray(real_long, float), np.asarray(real_short, float)
    ml, ms = np.asarray(model_long, float), np.asarray(model_short, float)
    total = rl + rs
    cut = np.quantile(total, quantile, axis=-1, keepdims=True)
    big = (total > cut) & (rl != rs)
    real_side = np.sign(rl - rs)
    model_side = np.sign(ml - ms)
    credit = np.where(model_side == 0, 0.5, (model_side == real_side).astype(float))
    n = big.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(n > 0, (credit * big).sum(axis=-1) / np.maximum(n, 1), np.nan)
    return float(share) if share.ndim == 0 else share


def score(model_long: np.ndarray, model_short: np.ndarray, real_long: np.ndarray, real_short: np.ndarray) -> dict[str, Any]:
    """All seven scores (see :data:`METRICS`); arrays along the last axis give arrays of scores."""
    ml, ms, rl, rs = (np.asarray(a, float) for a in (model_long, model_short, real_long, real_short))
    return {
        "spearman_long": spearman(ml, rl),
        "spearman_short": spearman(ms, rs),
        "spearman_total": spearman(ml + ms, rl + rs),
        "pearson_long": pearson(ml, rl),
        "pearson_short": pearson(ms, rs),
        "pearson_total": pearson(ml + ms, rl + rs),
        "direction": direction_share(ml, ms, rl, rs),
    }


Scores = dict[str, float]


def baselines(bars: Bars) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The naive predictors as (long, short) series.

    ``abs_return`` is |close/open - 1| for both sides (it has no side, so its direction is one
    half by construction); ``directional_range`` is (open - low)/open for longs and
    (high - open)/open for shorts; ``directional_range_oi`` multiplies that by the bar's OI (USD);
    ``range_sq_oi`` is the convex one: the square of ``directional_range`` times OI, per side.
    """
    o = bars.open
    ret = np.abs(bars.close / o - 1.0)
    down = (o - bars.low) / o
    up = (bars.high - o) / o
    return {
        "abs_return": (ret, ret),
        "directional_range": (down, up),
        "directional_range_oi": (down * bars.oi_usd, up * bars.oi_usd),
        "range_sq_oi": (down * down * bars.oi_usd, up * up * bars.oi_usd),
    }


def monthly_ratio(
    time: np.ndarray,
    swept: np.ndarray,
    map_only: np.ndarray,
    realized: np.ndarray,
) -> list[dict[str, Any]]:
    """Per calendar month (UTC): bars, realized USD, swept USD (all levels and map-only) and ratios.

    ``swept``, ``map_only`` and ``realized`` are per-bar totals (long + short). A month with no
    realized liquidations has ratio ``None``.
    """
    month = pd.to_datetime(np.asarray(time), unit="ms", utc=True).strftime("%Y-%m")
    frame = pd.DataFrame({"month": month, "swept": swept, "map_only": map_only, "realized": realized})
    out = []
    for key, g in frame.groupby("month", sort=True):
        real = float(g["realized"].sum())
        out.append({
            "month": str(key),
            "bars": int(len(g)),
            "realized_usd": round(real, 0),
            "swept_usd": round(float(g["swept"].sum()), 0),
            "map_only_usd": round(float(g["map_only"].sum()), 0),
            "swept_over_realized": float(g["swept"].sum()) / real if real > 0 else None,
            "map_only_over_realized": float(g["map_only"].sum()) / real if real > 0 else None,
        })
    return out


# -- bootstrap -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """Model minus the best baseline for one metric: point estimate and 95% bootstrap interval."""

    metric: str
    baseline: str
    diff: float
    lo: float
    hi: float


def _block_indices(n: int, block: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Moving-block bootstrap resamples of ``range(n)``, shape (n_boot, n)."""
    block = max(1, min(block, n))
    k = math.ceil(n / block)
    starts = rng.integers(0, n - block + 1, size=(n_boot, k))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(n_boot, k * block)
    return idx[:, :n]


def _big_bars(real_long: np.ndarray, real_short: np.ndarray, quantile: float) -> tuple[np.ndarray, np.ndarray]:
    """Mask of big bars (realized total above its quantile, sides not tied) and the realized side."""
    total = real_long + real_short
    cut = np.quantile(total, quantile, axis=-1, keepdims=True)
    return (total > cut) & (real_long != real_short), np.sign(real_long - real_short)


class _Realized:
    """Realized series of one (batch of) resample(s), with what every score reuses computed once."""

    def __init__(self, rl: np.ndarray, rs: np.ndarray) -> None:
        self.rl, self.rs, self.rt = rl, rs, rl + rs
        self.rank = {"long": rank(rl), "short": rank(rs), "total": rank(self.rt)}
        self.big, self.side = _big_bars(rl, rs, DIRECTION_QUANTILE)

    def score(self, ml: np.ndarray, ms: np.ndarray) -> dict[str, np.ndarray]:
        mt = ml + ms
        out = {}
        for name, pred, real in (("long", ml, self.rl), ("short", ms, self.rs), ("total", mt, self.rt)):
            out[f"spearman_{name}"] = pearson(rank(pred), self.rank[name])
            out[f"pearson_{name}"] = pearson(pred, real)
        model_side = np.sign(ml - ms)
        credit = np.where(model_side == 0, 0.5, (model_side == self.side).astype(float))
        n = self.big.sum(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["direction"] = np.where(n > 0, (credit * self.big).sum(axis=-1) / np.maximum(n, 1), np.nan)
        return out


def bootstrap_diff(
    model: tuple[np.ndarray, np.ndarray],
    rivals: dict[str, tuple[np.ndarray, np.ndarray]],
    realized: tuple[np.ndarray, np.ndarray],
    *,
    block: int = 24,
    n_boot: int = 1000,
    seed: int = 0,
    best: dict[str, str] | None = None,
) -> dict[str, Interval]:
    """95% moving-block-bootstrap intervals of model minus the best rival, per metric.

    The best rival of a metric is the one with the highest full-sample score (or ``best[metric]``).
    All series are resampled with the same blocks, so the difference keeps their dependence.
    """
    rl, rs = (np.asarray(a, float) for a in realized)
    n = rl.size
    full_model = score(*model, rl, rs)
    full_rivals = {k: score(*v, rl, rs) for k, v in rivals.items()}
    if best is None:
        best = {
            m: max(rivals, key=lambda k: -np.inf if np.isnan(full_rivals[k][m]) else full_rivals[k][m])
            for m in METRICS
        }
    rng = np.random.default_rng(seed)
    chunk = 200  # bound memory: a few (chunk, n) matrices at a time
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    needed = sorted(set(best.values()))
    for start in range(0, n_boot, chunk):
        idx = _block_indices(n, block, min(chunk, n_boot - start), rng)
        real = _Realized(rl[idx], rs[idx])
        sm = real.score(model[0][idx], model[1][idx])
        sr = {k: real.score(rivals[k][0][idx], rivals[k][1][idx]) for k in needed}
        for m in METRICS:
            diffs[m].append(sm[m] - sr[best[m]][m])
    out: dict[str, Interval] = {}
    for m in METRICS:
        d = np.concatenate(diffs[m]) if diffs[m] else np.array([])
        d = d[np.isfinite(d)]
        lo, hi = (float(np.quantile(d, q)) for q in (0.025, 0.975)) if d.size else (math.nan, math.nan)
        out[m] = Interval(m, best[m], float(full_model[m] - full_rivals[best[m]][m]), lo, hi)
    return out


def params_with(overrides: list[str] | tuple[str, ...] = ()) -> ModelParams:
    """Default :class:`ModelParams` with ``key=value`` overrides (what ``liqmap backtest --set`` takes).

    The parser is :func:`analysis.model.parse_overrides`, the same one ``liqmap report --set`` and
    ``LIQMAP_MODEL`` use, so a backtested parameter set can be published unchanged.
    """
    return ModelParams().with_overrides(overrides)


# -- the run -------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class BacktestResult:
    """Everything one backtest measured. ``to_json()`` is the documented JSON shape."""

    source: str
    time: np.ndarray
    realized_long: np.ndarray
    realized_short: np.ndarray
    model_long: np.ndarray
    model_short: np.ndarray
    model: Scores
    baselines: dict[str, Scores]
    intervals: dict[str, Interval]
    map_long: np.ndarray
    map_short: np.ndarray
    map_only: Scores
    map_intervals: dict[str, Interval]
    warmup_bars: int
    gaps: list[str]
    params: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def bars(self) -> int:
        return int(self.time.size)

    def monthly(self) -> list[dict[str, Any]]:
        """The swept/realized dollar ratio per calendar month (see :func:`monthly_ratio`)."""
        return monthly_ratio(
            self.time, self.model_long + self.model_short, self.map_long + self.map_short,
            self.realized_long + self.realized_short,
        )

    def to_json(self) -> dict[str, Any]:
        def clean(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else round(float(v), 4)

        def diffs(intervals: dict[str, Interval]) -> dict[str, Any]:
            return {
                m: {"baseline": iv.baseline, "diff": clean(iv.diff), "ci95": [clean(iv.lo), clean(iv.hi)]}
                for m, iv in intervals.items()
            }

        rl, rs = self.realized_long.sum(), self.realized_short.sum()
        swept, mapped = self.model_long.sum() + self.model_short.sum(), self.map_long.sum() + self.map_short.sum()
        return {
            "bars": self.bars,
            "first": iso(self.time[0]),
            "last": iso(self.time[-1]),
            "map_only": {m: clean(self.map_only[m]) for m in METRICS},
            "model": {m: clean(self.model[m]) for m in METRICS},
            "baselines": {k: {m: clean(v[m]) for m in METRICS} for k, v in self.baselines.items()},
            "map_only_minus_best_baseline": diffs(self.map_intervals),
            "model_minus_best_baseline": diffs(self.intervals),
            "calibration": {
                "realized_long_usd": round(float(rl), 0),
                "realized_short_usd": round(float(rs), 0),
                "model_long_usd": round(float(self.model_long.sum()), 0),
                "model_short_usd": round(float(self.model_short.sum()), 0),
                "model_over_realized": clean(swept / max(rl + rs, 1e-9)),
                "map_only_long_usd": round(float(self.map_long.sum()), 0),
                "map_only_short_usd": round(float(self.map_short.sum()), 0),
                "map_only_over_realized": clean(mapped / max(rl + rs, 1e-9)),
                "same_bar_share_of_swept": clean(1.0 - mapped / swept) if swept > 0 else None,
                "bars_model_sweeps_nothing": int(np.sum((self.model_long + self.model_short) == 0)),
                "bars_map_only_sweeps_nothing": int(np.sum((self.map_long + self.map_short) == 0)),
            },
            "monthly": [
                {k: clean(v) if k.endswith("_over_realized") else v for k, v in row.items()} for row in self.monthly()
            ],
            "warmup_bars": self.warmup_bars,
            "gaps": self.gaps,
            "source": self.source,
            "params": self.params,
        }

    def table(self) -> str:
        """A readable text table: map-only, all-levels and baselines per metric, the bootstrap
        intervals against the best baseline, and the swept/realized dollar ratio per month."""
        rows = [("model, map-only", self.map_only), ("model, all levels", self.model)] + list(self.baselines.items())
        head = f"{'':22}" + "".join(f"{m.replace('_', ' '):>16}" for m in METRICS)
        lines = [
            f"backtest on {self.source}: {self.bars} scored bars, {iso(self.time[0])} .. {iso(self.time[-1])} "
            f"(after {self.warmup_bars} warm-up bars)",
            "a nowcast given each bar's range: how much the map says sits in the path price took",
            "(map-only: levels on the map when the bar opened; all levels: also those opened and swept in the bar)",
            "",
            head,
        ]
        for name, sc in rows:
            lines.append(f"{name:22}" + "".join(f"{_fmt(sc[m]):>16}" for m in METRICS))
        for title, intervals in (("map-only", self.map_intervals), ("all-levels", self.intervals)):
            lines.append("")
            lines.append(f"{title} model minus best baseline, 95% block-bootstrap interval (24h blocks):")
            for m, iv in intervals.items():
                verdict = "model better" if iv.lo > 0 else ("baseline better" if iv.hi < 0 else "not significant")
                lines.append(
                    f"  {m:16} vs {iv.baseline:21} {iv.diff:+.3f}  [{iv.lo:+.3f}, {iv.hi:+.3f}]  {verdict}"
                )
        out = self.to_json()
        cal = out["calibration"]
        lines.append("")
        lines.append(
            f"dollars: model swept {cal['model_long_usd'] / 1e9:.2f}B long / {cal['model_short_usd'] / 1e9:.2f}B short "
            f"(map-only {cal['map_only_long_usd'] / 1e9:.2f}B / {cal['map_only_short_usd'] / 1e9:.2f}B), "
            f"realized {cal['realized_long_usd'] / 1e9:.2f}B / {cal['realized_short_usd'] / 1e9:.2f}B "
            f"(model/realized {_fmt(cal['model_over_realized'], 2)}, map-only {_fmt(cal['map_only_over_realized'], 2)}); "
            f"same-bar sweeps are {_fmt(100 * (cal['same_bar_share_of_swept'] or 0.0), 1)}% of swept dollars; "
            f"the model sweeps nothing in {cal['bars_model_sweeps_nothing']} of {self.bars} bars "
            f"(map-only: {cal['bars_map_only_sweeps_nothing']})"
        )
        lines.append("")
        lines.append("swept/realized dollars per month (UTC):")
        lines.append(f"  {'month':8} {'bars':>5} {'realized $B':>12} {'swept $B':>9} {'ratio':>6} {'map-only $B':>12} {'ratio':>6}")
        for row in out["monthly"]:
            lines.append(
                f"  {row['month']:8} {row['bars']:>5} {row['realized_usd'] / 1e9:>12.2f} {row['swept_usd'] / 1e9:>9.2f} "
                f"{_fmt(row['swept_over_realized'], 2):>6} {row['map_only_usd'] / 1e9:>12.2f} "
                f"{_fmt(row['map_only_over_realized'], 2):>6}"
            )
        if self.gaps:
            lines.append(f"gaps (kept, see docs/methodology.md): {'; '.join(self.gaps)}")
        return "\n".join(lines)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def run_backtest(
    data: str | Path | History,
    params: ModelParams | None = None,
    *,
    warmup: str | int = "7d",
    n_boot: int = 1000,
    block_hours: float = 24.0,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> BacktestResult:
    """Run the model through ``data`` and score it against realized liquidations.

    ``warmup`` (a duration like ``"7d"`` or milliseconds) is the leading part of the history that
    only builds up positions. Gaps in the bars (up to ``params.max_gap_bars``) are kept: the
    model books the OI change across a gap at the bar after it, and every present bar is scored
    (the missing bars have no realized value to compare with). Raises :class:`DataError` when the
    history is too short for the warm-up or cannot carry a map. ``progress``, if given, hears one
    short line per slow step (modelling, bootstrap).
    """
    import time as _time

    say = progress or (lambda line: None)

    t_start = _time.perf_counter()
    hist = data if isinstance(data, History) else load_history(data)
    bars = hist.bars
    params = params or ModelParams()
    warm_ms = parse_duration(warmup) if isinstance(warmup, str) else int(warmup)
    if warm_ms < 0:
        raise InputError("the warm-up cannot be negative")
    first_scored = int(np.searchsorted(bars.time, bars.time[0] + warm_ms, side="left"))
    n_scored = len(bars) - first_scored
    min_scored = max(48, 2 * int(round(block_hours * 3_600_000 / bars.interval_ms)))
    if n_scored < min_scored:
        raise DataError(
            f"{hist.source or 'the history'}: {len(bars)} bars ({iso(bars.time[0])} .. {iso(bars.time[-1])}) leave "
            f"{max(n_scored, 0)} bar(s) after a {warmup} warm-up; at least {min_scored} are needed to score"
        )
    t_load = _time.perf_counter()
    say(f"modelling {len(bars):,} bars")
    lmap = build_map(bars, params, window="backtest", now_ms=int(bars.end_ms))
    t_model = _time.perf_counter()
    assert lmap.swept is not None
    s = slice(first_scored, None)
    ml, ms = lmap.swept.long[s], lmap.swept.short[s]
    assert lmap.swept.prior_long is not None and lmap.swept.prior_short is not None
    pl, ps = lmap.swept.prior_long[s], lmap.swept.prior_short[s]
    rl, rs = hist.realized_long[s], hist.realized_short[s]
    if not np.any(rl + rs > 0):
        raise DataError(
            f"{hist.source or 'the history'}: realized liquidations are zero in every scored bar "
            f"({iso(bars.time[first_scored])} .. {iso(bars.time[-1])}); there is nothing to score against"
        )
    base = {k: (v[0][s], v[1][s]) for k, v in baselines(bars).items()}
    model_scores = score(ml, ms, rl, rs)
    base_scores = {k: score(*v, rl, rs) for k, v in base.items()}
    block = max(1, int(round(block_hours * 3_600_000 / bars.interval_ms)))
    say(f"bootstrap ({n_boot:,} resamples)")
    intervals = bootstrap_diff((ml, ms), base, (rl, rs), block=block, n_boot=n_boot, seed=seed)
    map_intervals = bootstrap_diff((pl, ps), base, (rl, rs), block=block, n_boot=n_boot, seed=seed)
    t_boot = _time.perf_counter()
    gaps = [f"{g.missing} bar(s) missing after {iso(g.after_ms)}" for g in bars.gaps()]
    return BacktestResult(
        source=hist.source,
        time=bars.time[s],
        realized_long=rl,
        realized_short=rs,
        model_long=ml,
        model_short=ms,
        model=model_scores,
        baselines=base_scores,
        intervals=intervals,
        map_long=pl,
        map_short=ps,
        map_only=score(pl, ps, rl, rs),
        map_intervals=map_intervals,
        warmup_bars=first_scored,
        gaps=gaps,
        params=lmap.params,
        seconds={
            "load": round(t_load - t_start, 3),
            "model": round(t_model - t_load, 3),
            "bootstrap": round(t_boot - t_model, 3),
        },
    )


# -- picture -------------------------------------------------------------------------------------

def render_png(result: BacktestResult) -> bytes:
    """Realized against model through time (per side, daily sums) and a log-log scatter, as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8), dpi=100)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, 2, height_ratios=[1, 1], width_ratios=[2.2, 1])
    t = pd.to_datetime(result.time, unit="ms", utc=True)
    day = t.floor("D")
    ratio = (result.realized_long.sum() + result.realized_short.sum()) / max(
        result.model_long.sum() + result.model_short.sum(), 1e-9
    )
    colors = {"long": "#d9534f", "short": "#2a9d8f"}
    for row, (side, real, mod) in enumerate(
        (("long", result.realized_long, result.model_long), ("short", result.realized_short, result.model_short))
    ):
        ax = fig.add_subplot(gs[row, 0])
        daily = pd.DataFrame({"real": real, "model": mod * ratio}, index=day).groupby(level=0).sum()
        ax.bar(daily.index, daily["real"] / 1e6, width=0.8, color=colors[side], alpha=0.55, label="realized")
        ax.plot(daily.index, daily["model"] / 1e6, color="black", lw=1.3, label=f"model × {ratio:.2f}")
        ax.set_ylabel(f"{side} liquidations per day, $M")
        ax.set_title(
            f"{side}s: Spearman {_fmt(result.model[f'spearman_{side}'])}, "
            f"Pearson {_fmt(result.model[f'pearson_{side}'])} (hourly)",
            fontsize=10,
        )
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
        sc = fig.add_subplot(gs[row, 1])
        ok = (real > 0) & (mod > 0)
        sc.scatter(mod[ok] * ratio / 1e6, real[ok] / 1e6, s=4, alpha=0.4, color=colors[side])
        sc.set_xscale("log")
        sc.set_yscale("log")
        lims = [
            max(1e-3, min(np.min(mod[ok] * ratio), np.min(real[ok])) / 1e6) if ok.any() else 1e-3,
            max(np.max(mod * ratio), np.max(real), 1.0) / 1e6,
        ]
        sc.plot(lims, lims, color="grey", lw=0.8, ls="--")
        sc.set_xlabel("model (rescaled), $M per hour")
        sc.set_ylabel("realized, $M per hour")
        sc.set_title(f"{side}s per hour ({int(ok.sum())} bars with both > 0)", fontsize=10)
        sc.grid(alpha=0.3, which="both")
    fig.suptitle(
        f"liqmap backtest: {result.source}, {iso(result.time[0])} .. {iso(result.time[-1])}, {result.bars} bars",
        fontsize=11,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
