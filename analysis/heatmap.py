"""The map over time: the model's estimated liquidation notional per price bin at every column of a
window, the data of a liquidation heatmap (time along x, price along y).

The states come from the very run that gives the snapshot map (:func:`analysis.model.run_model`):
a level opened at bar ``t0`` and swept at bar ``s`` (``len(bars)`` if never) holds
``weight * exp(log_c[t] - log_c[t0])`` at the end of every bar ``t0 <= t < s`` and nothing
otherwise. A column is a run of bars (one bar, an hour, 4 hours...) and shows the state at the end
of its last bar, so the last column is the snapshot map.

Cost: one pass over the levels and one over the cells. Each level adds its notional at its first
column and removes it at its sweep column in a difference array over (column, bin), each amount
valued at that column; the states follow from the recurrence ``S[j] = S[j-1] * g[j] + D[j]``, with
``g[j] <= 1`` the shrink between the ends of columns ``j-1`` and ``j``, so every number stays in
the range of the notional itself (no ``exp(-log_c)`` that could overflow). A parallel count of
active levels makes cells without levels exactly zero. Memory is columns x bins per side and venue,
bounded by ``max_columns`` and ``max_cells`` (bins are merged by a whole factor when needed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bars import Bars
from .errors import DataError, InputError
from .liqmap import LiquidationMap, price_grid
from .model import Levels, ModelParams, ModelRun, map_from_run, run_model

__all__ = ["HeatmapStates", "build_states", "states_from_run", "merge_states", "column_step", "MAX_COLUMNS",
           "TARGET_COLUMNS", "MAX_CELLS", "STEPS_MS"]

#: hard cap on columns (time steps) of one state matrix
MAX_COLUMNS = 400
#: the default step is the shortest of :data:`STEPS_MS` giving at most this many columns
TARGET_COLUMNS = 300
#: cap on columns x bins per side and venue; a finer grid is coarsened by a whole factor
MAX_CELLS = 1_000_000
_MIN = 60_000
#: candidate column steps: 5m, 15m, 30m, 1h, 2h, 4h, 6h, 12h, 1d
STEPS_MS: tuple[int, ...] = tuple(m * _MIN for m in (5, 15, 30, 60, 120, 240, 360, 720, 1440))


@dataclass(frozen=True, eq=False)
class HeatmapStates:
    """Estimated liquidation notional (USD) per (venue, column, price bin), for each side.

    ``long``/``short`` have shape ``(len(venues), n_columns, n_bins)``. Column ``j`` spans
    ``times[j] .. times[j+1]`` (epoch ms) and holds the state at its end; ``open/high/low/close``
    are the price path over the same columns. Bin ``i`` covers ``[grid_lo + i*bin_width, ... +
    bin_width)``. ``price`` is the current price (the snapshot map's).
    """

    symbol: str
    venues: tuple[str, ...]
    window: str
    times: np.ndarray
    step_ms: int
    grid_lo: float
    bin_width: float
    long: np.ndarray
    short: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    price: float
    notes: tuple[str, ...] = field(default=())
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_columns(self) -> int:
        return int(self.long.shape[1])

    @property
    def n_bins(self) -> int:
        return int(self.long.shape[2])

    @property
    def edges(self) -> np.ndarray:
        """Price edges of the bins, ``n_bins + 1``."""
        return self.grid_lo + self.bin_width * np.arange(self.n_bins + 1)

    @property
    def centers(self) -> np.ndarray:
        return self.grid_lo + self.bin_width * (np.arange(self.n_bins) + 0.5)

    @property
    def end_ms(self) -> int:
        return int(self.times[-1])

    def total(self) -> np.ndarray:
        """Long plus short notional per (column, bin), all venues."""
        return self.long.sum(axis=0) + self.short.sum(axis=0)


def column_step(interval_ms: int, span_ms: int, target: int = TARGET_COLUMNS) -> int:
    """The shortest step of :data:`STEPS_MS` (and not below the bar interval) giving at most
    ``target`` columns over ``span_ms`` (1d of 5m bars: 5m; 7d: 1h; 30d: 4h)."""
    for step in STEPS_MS:
        if step >= interval_ms and step % interval_ms == 0 and math.ceil(span_ms / step) <= target:
            return step
    return max(STEPS_MS[-1], interval_ms) * max(1, math.ceil(span_ms / (STEPS_MS[-1] * target)))


def build_states(
    bars: Bars,
    params: ModelParams | None = None,
    *,
    window: str = "",
    step_ms: int | None = None,
    max_columns: int = MAX_COLUMNS,
    max_cells: int = MAX_CELLS,
) -> HeatmapStates:
    """Run the model over ``bars`` and return its states at every column step (default:
    :func:`column_step`). A step giving more than ``max_columns`` columns is an InputError;
    invalid bars raise DataError as :func:`~analysis.model.build_map` does."""
    params = params or ModelParams()
    run = run_model(bars, params)
    return states_from_run(run, params, map_from_run(run, params, window=window, now_ms=0),
                           step_ms=step_ms, max_columns=max_columns, max_cells=max_cells)


def _columns(b: Bars, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column of every bar, first and last bar of every column (columns aligned to ``step``)."""
    _, col = np.unique(b.time // step, return_inverse=True)
    col = col.astype(np.int64).ravel()
    last = np.append(np.nonzero(np.diff(col))[0], len(b) - 1)
    first = np.append(0, last[:-1] + 1)
    return col, first, last


def states_from_run(
    run: ModelRun,
    params: ModelParams,
    snapshot: LiquidationMap,
    *,
    step_ms: int | None = None,
    max_columns: int = MAX_COLUMNS,
    max_cells: int = MAX_CELLS,
) -> HeatmapStates:
    """The states of a :func:`~analysis.model.run_model` run whose snapshot is ``snapshot``
    (:func:`~analysis.model.map_from_run` of the same run)."""
    b = run.bars
    n = len(b)
    if not (1 <= max_columns <= 10_000 and max_cells >= max_columns):
        raise InputError("max_columns must be 1..10000 and max_cells at least max_columns")
    step = column_step(b.interval_ms, b.end_ms - b.start_ms) if step_ms is None else int(step_ms)
    if step <= 0 or step % b.interval_ms:
        raise InputError(f"the column step must be a positive multiple of the bar interval ({b.interval_ms} ms)")
    col, first, last = _columns(b, step)
    t_cols = first.size
    if t_cols > max_columns:
        raise InputError(f"a step of {step // _MIN} min gives {t_cols} columns, more than {max_columns} (max_columns)")

    price = snapshot.price
    lo_bound, hi_bound = price * (1 - params.grid_pct), price * (1 + params.grid_pct)
    # per side: the levels active in at least one column, with their first and end column
    col_or_never = np.append(col, t_cols)  # a sweep bar of len(bars) means never swept
    sides = []
    for lv, t_sw in ((run.longs, run.t_long), (run.shorts, run.t_short)):
        js, je = col[lv.t0], col_or_never[t_sw]
        keep = (js < je) & (lv.price >= lo_bound) & (lv.price <= hi_bound)
        sides.append((lv, js, je, keep))
    kept = [(float(lv.price.min(where=k, initial=np.inf)), float(lv.price.max(where=k, initial=-np.inf)))
            for lv, _, _, k in sides if k.any()]
    lo = min(snapshot.grid_lo, float(b.low.min()), *(p_lo for p_lo, _ in kept))
    hi = max(snapshot.edges[-1] - 1e-9 * snapshot.bin_width, float(b.high.max()), *(p_hi for _, p_hi in kept))
    lo, hi = max(lo, lo_bound), min(hi, hi_bound)
    width = snapshot.bin_width
    grid_lo, n_bins = price_grid(price, width, lo, hi, max_bins=params.max_bins)
    if t_cols * n_bins > max_cells:  # merge bins by a whole factor, grid still aligned to multiples
        width *= math.ceil(t_cols * n_bins / max_cells)
        grid_lo, n_bins = price_grid(price, width, lo, hi, max_bins=params.max_bins)

    log_end = run.log_c[last]  # log shrink cumsum at the end of each column
    growth = np.exp(np.diff(log_end))
    scratch = _Scratch(t_cols * n_bins)
    arrays = [_accumulate(lv, js, je, keep, run.log_c, log_end, growth, grid_lo, width, n_bins, t_cols,
                          scratch)[None] for lv, js, je, keep in sides]

    step_note = f"heatmap: one column per {_fmt_step(step)} ({t_cols} columns); each shows the map at its end"
    return HeatmapStates(
        symbol=snapshot.symbol, venues=snapshot.venues, window=snapshot.window,
        times=np.append(b.time[first], b.end_ms).astype(np.int64), step_ms=step,
        grid_lo=grid_lo, bin_width=width, long=arrays[0], short=arrays[1],
        open=b.open[first].copy(), high=np.maximum.reduceat(b.high, first), low=np.minimum.reduceat(b.low, first),
        close=b.close[last].copy(), price=price,
        notes=snapshot.notes + (step_note,), params=dict(snapshot.params, heatmap_step_ms=step),
    )


#: levels per chunk in :func:`_accumulate`: its temporaries stay small (cached, not mmapped afresh)
_CHUNK = 8192


class _Scratch:
    """Work arrays of one columns x bins grid, shared by both sides."""

    def __init__(self, cells: int) -> None:
        self.removed = np.empty(cells)
        self.active = np.empty(cells, dtype=np.int32)
        self.empty = np.empty(cells, dtype=bool)
        self.ones = np.ones(_CHUNK, dtype=np.int32)  # same dtype as ``active``: ufunc.at's fast path


def _accumulate(lv: Levels, js: np.ndarray, je: np.ndarray, keep: np.ndarray, log_c: np.ndarray,
                log_end: np.ndarray, growth: np.ndarray, grid_lo: float, width: float, n_bins: int, t_cols: int,
                scratch: _Scratch) -> np.ndarray:
    """(columns, bins) notional of the ``keep`` levels, active from column ``js`` until (not
    including) ``je``.

    Each level adds its notional valued at ``js`` and ``removed`` takes it back valued at ``je``
    (both ufunc.at, adding in level order from zero, like a bincount); ``active`` counts levels.
    Work goes chunk by chunk through small temporaries and the shared scratch: a fresh large
    array costs its page faults, more than the arithmetic on it.
    """
    cells = t_cols * n_bins
    out = np.empty(cells)
    out.fill(0.0)  # touched in order now: faulting its pages in at random in np.add.at costs more
    removed, active, empty, ones = scratch.removed, scratch.active, scratch.empty, scratch.ones
    removed.fill(0.0)
    active.fill(0)
    for c in range(0, keep.size, _CHUNK):
        part = slice(c, c + _CHUNK)
        k = keep[part]
        t0, weight, js_c, je_c = lv.t0[part][k], lv.weight[part][k], js[part][k], je[part][k]
        b = np.clip(np.floor((lv.price[part][k] - grid_lo) / width), 0, n_bins - 1).astype(np.int64)
        ends = je_c < t_cols
        start_idx, end_idx = js_c * n_bins + b, je_c[ends] * n_bins + b[ends]
        np.add.at(out, start_idx, weight * np.exp(log_end[js_c] - log_c[t0]))
        np.add.at(removed, end_idx, weight[ends] * np.exp(log_end[je_c[ends]] - log_c[t0[ends]]))
        np.add.at(active, start_idx, ones[: start_idx.size])
        np.subtract.at(active, end_idx, ones[: end_idx.size])
    np.subtract(out, removed, out=out)
    out = out.reshape(t_cols, n_bins)
    carried = np.empty(n_bins)
    for j in range(1, t_cols):  # row j becomes the state: diff[j] + state[j-1] * growth (S[j] above)
        np.multiply(out[j - 1], growth[j - 1], out=carried)
        out[j] += carried
    grid = active.reshape(t_cols, n_bins)
    np.cumsum(grid, axis=0, out=grid)  # levels active per cell
    np.equal(grid, 0, out=empty.reshape(t_cols, n_bins))
    np.copyto(out, 0.0, where=empty.reshape(t_cols, n_bins))  # exactly empty where no level is
    np.maximum(out, 0.0, out=out)
    return out


def _fmt_step(ms: int) -> str:
    minutes = ms // _MIN
    if minutes % 1440 == 0:
        return f"{minutes // 1440} day{'s' if minutes > 1440 else ''}"
    if minutes % 60 == 0:
        return f"{minutes // 60} hour{'s' if minutes > 60 else ''}"
    return f"{minutes} minutes"


def merge_states(states: list[HeatmapStates], *, max_cells: int = MAX_CELLS) -> HeatmapStates:
    """Stack several venues' states of one symbol on one grid (the coarsest bin width) and the
    first one's columns; another venue's column is its latest one ending at or before that time
    (zero before it starts). Bins are assigned by their center, like :func:`analysis.liqmap.merge`."""
    if not states:
        raise DataError("nothing to merge: no venue produced heatmap states")
    if len(states) == 1:
        return states[0]
    base = states[0]
    width = max(s.bin_width for s in states)
    lo = min(s.grid_lo for s in states)
    hi = max(s.edges[-1] for s in states) - 1e-9 * width
    cap = int(base.params.get("max_bins", 50_000))
    grid_lo, n_bins = price_grid(base.price, width, lo, hi, max_bins=cap)
    t_cols = base.n_columns
    if t_cols * n_bins > max_cells:
        width *= math.ceil(t_cols * n_bins / max_cells)
        grid_lo, n_bins = price_grid(base.price, width, lo, hi, max_bins=cap)
    n_venues = sum(len(s.venues) for s in states)
    long, short = np.zeros((n_venues, t_cols, n_bins)), np.zeros((n_venues, t_cols, n_bins))
    v0 = 0
    for s in states:
        k = np.searchsorted(s.times[1:], base.times[1:], side="right") - 1  # latest column ended by then
        idx = np.clip(np.floor((s.centers - grid_lo) / width).astype(np.int64), 0, n_bins - 1)
        same_columns = k.size == s.n_columns and np.array_equal(k, np.arange(k.size))
        for src, dst in ((s.long, long), (s.short, short)):
            picked = src if same_columns else np.where((k >= 0)[None, :, None], src[:, np.maximum(k, 0)], 0.0)
            _sum_into_bins(picked, idx, dst[v0 : v0 + src.shape[0]])
        v0 += len(s.venues)
    return HeatmapStates(
        symbol=base.symbol, venues=tuple(v for s in states for v in s.venues), window=base.window,
        times=base.times, step_ms=base.step_ms, grid_lo=grid_lo, bin_width=width,
        long=long, short=short,
        open=base.open, high=base.high, low=base.low, close=base.close, price=base.price,
        notes=tuple(dict.fromkeys(n for s in states for n in s.notes)), params=base.params,
    )


def _sum_into_bins(src: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    """``out[..., idx[i]] += src[..., i]`` for every ``i`` in order, for a non-decreasing ``idx``
    (``out`` starts at zero).

    The same sums, in the same order, as ``np.add.at``, a rank at a time: the ``r``-th source of
    every run of equal ``idx`` goes in one vectorised step (no target twice in a step); a run is
    the few bins merged into one, so there are few steps.
    """
    if idx.size == 0:
        return
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    rank = np.arange(idx.size) - np.repeat(starts, np.diff(np.r_[starts, idx.size]))
    if rank.max() > 64:  # e.g. many bins clipped onto an edge: the plain loop is cheaper then
        np.add.at(out, (Ellipsis, idx), src)
        return
    for r in range(int(rank.max()) + 1):
        sel = np.flatnonzero(rank == r)
        out[..., idx[sel]] += src[..., sel]
