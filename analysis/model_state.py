"""The incremental model: extend a cached run by newly closed bars instead of rebuilding it.

A level's liquidation price depends only on its own bar (entry prices, leverage lattice, margin
table), and its sweep bar is the first later bar whose low (high) reaches it, so a new bar can only
sweep levels that are still unswept: one compare pass over those (:meth:`ModelState.update`; their
prices are kept compact, in append buffers). Everything else of a run (the OI flow with its
turnover, the shrink prefix product, the side shares, the levels' weights) depends on where the
window starts, which moves with every bar, so it is recomputed over the window with the model's
own functions: cheap per-bar vectors and one multiply per level. What each bar gives the flow on its
own (:class:`~analysis.model.FlowInputs`) is kept per row and computed for new bars only. The result is the run a full rebuild (:func:`analysis.model.run_model`) gives
over the same bars, exactly (bit for bit; tests/test_model_state.py checks it).

Anything the state cannot extend falls back to a full rebuild, and says why: other parameters,
margin tiers that price levels differently, bars that are not the cached ones plus new ones (a
revised bar, a window that moved back), a gap where the new bars join, more than ``max_append``
new bars, or new bars that fail validation (the rebuild then raises the usual :class:`DataError`).

:class:`ModelCache` keeps one state per (venue, symbol, window) key, bounded by count and bytes
(least recently used evicted first).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Hashable

import numpy as np

from .bars import MAX_TIME_MS, Bars, bar_fault
from .liqmap import LiquidationMap
from .margin import MarginTable
from .model import (
    FlowInputs, LevelIndex, ModelParams, ModelRun, Slots, clip_wicks, fit_leverage, flow_from_inputs, flow_inputs,
    levels_from_slots, map_from_run, margin_table_of, mmr_steps, run_with_slots, select_rows, side_shares, slot_prices, sweep_rule,
)

__all__ = ["ModelState", "ModelCache", "Update", "MAX_APPEND", "DEFAULT_MAX_STATES", "DEFAULT_MAX_STATE_BYTES"]

log = logging.getLogger(__name__)

#: More new bars than this at once are cheaper as a full rebuild (each new bar is one pass over the unswept levels).
MAX_APPEND = 64
#: Default bounds of a :class:`ModelCache`: states kept, and their bytes together (:meth:`ModelState.nbytes`:
#: a state of 8,640 5m bars is about 5.2 MB, the live 30-day window of 2,880 15m bars about 1.7 MB).
DEFAULT_MAX_STATES = 64
DEFAULT_MAX_STATE_BYTES = 96 * 1024 * 1024

_NEVER = np.iinfo(np.int64).max  # sweep bar of a slot not swept yet
_FLOW = ("q", "up", "down", "step", "x")  # FlowInputs kept per row (usd is the window's close)
_COLUMNS = ("time", "open", "high", "low", "close", "oi_usd", "volume", "quote_volume", "taker_buy", "taker_net")


@dataclass(frozen=True)
class Update:
    """How a run was produced: ``appended`` new bars and ``dropped`` old ones incrementally, or
    ``rebuilt`` in full for ``reason``."""

    rebuilt: bool
    reason: str = ""
    appended: int = 0
    dropped: int = 0


def _same_columns(a: Bars, a0: int, b: Bars, b0: int, m: int) -> bool:
    """Whether rows ``a[a0:a0+m]`` and ``b[b0:b0+m]`` agree in every column (None matching None)."""
    for name in _COLUMNS:
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            if (x is None) != (y is None):
                return False
            continue
        if not (x[a0 : a0 + m] == y[b0 : b0 + m]).all():  # np.array_equal's test, without its checks (same shape)
            return False
    return True


def _plainly_valid(cols: dict[str, np.ndarray | None]) -> bool:
    """A few rows checked in plain Python: True only if :func:`~analysis.bars.bar_fault` finds no fault
    in them (a stricter rule: exact OHLC order, no tolerance); False means ask ``bar_fault``. Saves its
    ~40 numpy calls on the one or two rows an update brings."""
    before = -math.inf
    prices = [c.tolist() for c in (cols["open"], cols["high"], cols["low"], cols["close"], cols["oi_usd"])]
    extra = [(name, c.tolist()) for name in ("volume", "quote_volume", "taker_buy", "taker_net")
             if (c := cols.get(name)) is not None]
    for i, t_raw in enumerate(cols["time"].tolist()):
        t = float(t_raw)
        if not (0.0 <= t < MAX_TIME_MS and t == math.floor(t) and t > before):
            return False
        before = t
        o, h, lo, c, oi = (col[i] for col in prices)
        if not all(math.isfinite(x) and x > 0.0 for x in (o, h, lo, c, oi)):
            return False
        if not (h >= lo and h >= max(o, c) and lo <= min(o, c)):
            return False
        for name, col in extra:
            x = col[i]
            if not math.isfinite(x) or (name != "taker_net" and x < 0.0):
                return False
    return True


def _bad_wicks(bars: Bars, max_wick: float) -> np.ndarray:
    """Per bar: a wick that :func:`~analysis.model.clip_wicks` clips (the same formula)."""
    top, bottom = np.maximum(bars.open, bars.close), np.minimum(bars.open, bars.close)
    return (bars.high > max_wick * top) | (bars.low < bottom / max_wick)


def _fitted_key(p: ModelParams) -> ModelParams:
    return replace(p, margin_table=None)


class _Unswept:
    """The unswept slots of one side: flat slot indices (ascending) and their compare keys (prices;
    shorts negated, so a bar with touch ``low`` / ``-high`` reaches a slot when ``touch <= key``), in
    buffers with room to append. A swept slot's key becomes -inf (reached by no bar again); such
    slots are compacted away when they outnumber the live ones or the buffer is full."""

    def __init__(self, idx: np.ndarray, key: np.ndarray) -> None:
        self.idx, self.key = idx, key
        self.lo, self.hi, self.dead = 0, idx.size, 0
        self._compact(0)

    @property
    def size(self) -> int:
        """Unswept slots."""
        return self.hi - self.lo - self.dead

    @property
    def nbytes(self) -> int:
        return int(self.idx.nbytes + self.key.nbytes)

    def _compact(self, extra: int) -> None:
        key = self.key[self.lo : self.hi]
        live = key != -np.inf
        n = int(np.count_nonzero(live))
        cap = n + extra + n // 2 + 1024
        idx, keys = np.empty(cap, dtype=np.int64), np.empty(cap)
        idx[:n], keys[:n] = self.idx[self.lo : self.hi][live], key[live]
        self.idx, self.key, self.lo, self.hi, self.dead = idx, keys, 0, n, 0

    def drop_before(self, cut: int) -> None:
        """Forget the slots below flat index ``cut`` (their bars left the window)."""
        d = int(np.searchsorted(self.idx[self.lo : self.hi], cut))
        self.dead -= int(np.count_nonzero(self.key[self.lo : self.lo + d] == -np.inf))
        self.lo += d

    def shift(self, by: int) -> None:
        """Slot indices moved down by ``by`` (the buffers they index were moved)."""
        self.idx[self.lo : self.hi] -= by

    def consume(self, touch: float, flat_sweeps: np.ndarray, r: int) -> None:
        """Sweep at bar ``r`` every unswept slot with ``touch <= key``."""
        key = self.key[self.lo : self.hi]
        hit = np.flatnonzero(touch <= key)
        if hit.size:
            flat_sweeps[self.idx[self.lo : self.hi].take(hit)] = r
            key[hit] = -np.inf
            self.dead += hit.size

    def add(self, idx: np.ndarray, key: np.ndarray) -> None:
        """Append slots (indices above every kept one)."""
        m = idx.size
        if self.hi + m > self.idx.size or self.dead > self.hi - self.lo - self.dead:
            self._compact(m)
        self.idx[self.hi : self.hi + m], self.key[self.hi : self.hi + m] = idx, key
        self.hi += m


class ModelState:
    """A model run that can be extended by new bars (see the module docstring). Not thread-safe:
    :class:`ModelCache` holds a lock per state. The bars of the last update are kept, not copied, to
    compare the next ones with: like every :class:`Bars`, they must not be changed in place."""

    def __init__(self, bars: Bars, params: ModelParams) -> None:
        self.run = self._rebuild(bars, params)

    # -- the full rebuild ----------------------------------------------------------------------
    def _rebuild(self, bars: Bars, params: ModelParams) -> ModelRun:
        self.valid = False
        run, sweeps = run_with_slots(bars, params)
        slots = sweeps.slots
        n, k = slots.price_long.shape
        cap = n + n // 4 + 64
        self.params, self.fitted, self.steps, self.bars = params, run.params or params, sweeps.table_steps, bars
        self.k, self.cap, self.a, self.e = k, cap, 0, n
        self.tier, self.slot_w = slots.tier, slots.slot_w
        self.price_long, self.price_short = np.empty((cap, k)), np.empty((cap, k))
        self.sweep_long, self.sweep_short = np.empty((cap, k), np.int64), np.empty((cap, k), np.int64)
        self.price_long[:n], self.price_short[:n] = slots.price_long, slots.price_short
        for buf, t in ((self.sweep_long, sweeps.t_long), (self.sweep_short, sweeps.t_short)):
            buf[:n] = np.where(t >= n, _NEVER, t)
        self.entry_mean = None if slots.entry_mean is None else np.empty(cap)
        if self.entry_mean is not None and slots.entry_mean is not None:
            self.entry_mean[:n] = slots.entry_mean
        self.bad = np.zeros(cap, dtype=bool)
        self.bad[:n] = _bad_wicks(bars, params.max_wick)
        # the OI flow's per-bar inputs (each bar's own, or with the bar before): only new bars' are computed
        flow = flow_inputs(run.bars, self.fitted)
        self.flow: dict[str, np.ndarray] = {}  # the FlowInputs columns there are (step, x may be None)
        for name in _FLOW:
            col = getattr(flow, name)
            if col is not None:
                self.flow[name] = np.empty(cap)
                self.flow[name][:n] = col
        flat_l, flat_s = self.price_long[:n].reshape(-1), self.price_short[:n].reshape(-1)
        open_l = np.flatnonzero(self.sweep_long[:n].reshape(-1) == _NEVER)  # flat slot indices, ascending
        open_s = np.flatnonzero(self.sweep_short[:n].reshape(-1) == _NEVER)
        self.open_long = _Unswept(open_l, flat_l.take(open_l))
        self.open_short = _Unswept(open_s, np.negative(flat_s.take(open_s)))
        self.run = run
        self._index: LevelIndex | None = None
        self.valid = True
        return run

    # -- extending -----------------------------------------------------------------------------
    def _refusal(self, bars: Bars, params: ModelParams, max_append: int) -> tuple[str, int, int]:
        """Why ``bars`` cannot extend this state ("" if they can), the cached rows they drop and the new rows."""
        old = self.bars
        if not self.valid:
            return "the cached state is incomplete (an earlier update failed)", 0, 0
        if params != self.params:
            if _fitted_key(params) != _fitted_key(self.params):
                return "the model parameters changed", 0, 0
        if (bars.venue, bars.symbol, bars.interval) != (old.venue, old.symbol, old.interval):
            return "other venue, symbol or interval", 0, 0
        n_new = len(bars)
        if n_new == 0:
            return "no bars", 0, 0
        d = int(np.searchsorted(old.time, bars.time[0]))
        if d >= len(old) or old.time[d] != bars.time[0]:
            return "the bars do not start inside the cached ones", 0, 0
        m = len(old) - d  # cached rows the new bars must repeat
        if n_new < m:
            return "fewer bars than the cached ones (a window that shrank)", 0, 0
        if not _same_columns(old, d, bars, 0, m):
            return "a revised bar (the new bars differ from the cached ones where they overlap)", 0, 0
        fresh = n_new - m
        if fresh > max_append:
            return f"{fresh} new bars (more than {max_append}: a full rebuild is cheaper)", 0, 0
        if fresh:
            step = np.diff(bars.time[m - 1 :])
            if np.any(step != bars.interval_ms):
                return "a gap where the new bars join or among them", 0, 0
            cols = {name: (None if getattr(bars, name) is None else getattr(bars, name)[m - 1 :]) for name in _COLUMNS}
            if not _plainly_valid(cols) and bar_fault(cols) is not None:
                return "a new bar fails validation", 0, 0
        return "", d, fresh

    def update(self, bars: Bars, params: ModelParams | None = None, *, max_append: int = MAX_APPEND) -> tuple[ModelRun, Update]:
        """The run :func:`~analysis.model.run_model` gives for ``bars`` (the whole new window), extending
        this state when ``bars`` are the cached bars, minus some at the start, plus up to ``max_append``
        new closed bars; else a full rebuild (whose :class:`DataError` propagates), and the update says why."""
        params = params or self.params
        reason, d, fresh = self._refusal(bars, params, max_append)
        fitted = None
        if not reason:
            if len(bars) < params.min_bars or float(np.max(bars.high)) <= float(np.min(bars.low)):
                reason = "the bars fail validation"
            elif params == self.params and margin_table_of(params, bars.symbol, bars.price) == self.fitted.margin_table:
                fitted = self.fitted  # the same parameters and an equal table: the same fit
            else:
                fitted = fit_leverage(params, margin_table_of(params, bars.symbol, bars.price))
                table = fitted.margin_table or MarginTable("unknown", ())
                before = self.fitted  # params agree but for the table: the fit can differ only in these
                if ((fitted.leverage, fitted.leverage_weights, fitted.max_leverage)
                        != (before.leverage, before.leverage_weights, before.max_leverage)
                        or (table is not before.margin_table
                            and mmr_steps(table, fitted.typical_position_usd) != self.steps)):
                    reason = "the margin tiers price the levels differently now"
        if reason or fitted is None:
            return self._rebuild(bars, params), Update(True, reason)
        if d == 0 and fresh == 0 and params == self.params:  # the very bars and parameters of the cached run
            return self.run, Update(False)
        gaps = bars.gaps()
        if any(g.missing > params.max_gap_bars for g in gaps):  # cannot happen after the checks; kept exact
            return self._rebuild(bars, params), Update(True, "a gap longer than max_gap_bars")
        self.valid = False
        self._drop(d)
        if fresh:
            self._append(bars.slice(len(bars) - fresh), fitted)
        self.bars, self.params, self.fitted = bars, params, fitted
        self.run = self._assemble(bars, params, fitted, gaps)
        self.valid = True
        return self.run, Update(False, "", fresh, d)

    def _drop(self, d: int) -> None:
        """Drop the first ``d`` bars of the window (and their unswept slots)."""
        if d == 0:
            return
        self.a += d
        cut = self.a * self.k
        self.open_long.drop_before(cut)
        self.open_short.drop_before(cut)

    def _room(self, rows: int) -> None:
        """Make room for ``rows`` more rows: move the window to fresh buffers' start (never in place,
        so views held by earlier runs stay valid)."""
        if self.e + rows <= self.cap:
            return
        n = self.e - self.a
        cap = max(self.cap, n + rows + (n + rows) // 4 + 64)
        shift = self.a
        for name in ("price_long", "price_short", "sweep_long", "sweep_short"):
            old = getattr(self, name)
            new = np.empty((cap, self.k), dtype=old.dtype)
            new[:n] = old[self.a : self.e]
            if name.startswith("sweep"):
                live = new[:n] != _NEVER
                new[:n][live] -= shift
            setattr(self, name, new)

        def moved(old_1d: np.ndarray) -> np.ndarray:
            new_1d = np.zeros(cap, dtype=old_1d.dtype)
            new_1d[:n] = old_1d[self.a : self.e]
            return new_1d

        for name in ("entry_mean", "bad"):
            old_1d = getattr(self, name)
            if old_1d is not None:
                setattr(self, name, moved(old_1d))
        self.flow = {name: moved(col) for name, col in self.flow.items()}
        self.open_long.shift(shift * self.k)
        self.open_short.shift(shift * self.k)
        self.a, self.e, self.cap = 0, n, cap

    def _append(self, tail: Bars, fitted: ModelParams) -> None:
        """Open the slots of the new bars ``tail`` and sweep with each new bar, in time order."""
        params = self.params
        f = len(tail)
        self._room(f)
        bad = _bad_wicks(tail, params.max_wick)
        clipped, _ = clip_wicks(tail, params.max_wick)
        table = fitted.margin_table or MarginTable("unknown", ())
        slots = slot_prices(clipped, fitted, table, self.steps)  # the steps update() checked this table prices by
        r0, k = self.e, self.k
        self.price_long[r0 : r0 + f], self.price_short[r0 : r0 + f] = slots.price_long, slots.price_short
        if self.entry_mean is not None and slots.entry_mean is not None:
            self.entry_mean[r0 : r0 + f] = slots.entry_mean
        self.bad[r0 : r0 + f] = bad
        flow = flow_inputs(clipped, fitted, (float(self.flow["q"][r0 - 1]), int(self.bars.time[-1])))
        for name, buf in self.flow.items():
            buf[r0 : r0 + f] = getattr(flow, name)
        ref_long, ref_short, applies = sweep_rule(clipped, fitted)
        flat_sl, flat_ss = self.sweep_long.reshape(-1), self.sweep_short.reshape(-1)
        no_sweep = np.zeros(k, dtype=bool)
        for i in range(f):
            r = r0 + i
            # consume: the unswept levels of earlier bars this bar reaches (low <= long price, -high <= -short price)
            self.open_long.consume(clipped.low[i], flat_sl, r)
            self.open_short.consume(-clipped.high[i], flat_ss, r)
            # open: the bar's own slots, swept at once when beyond its close (open_bar_sweep)
            idx = np.arange(r * k, (r + 1) * k, dtype=np.int64)
            now_l = np.greater_equal(self.price_long[r], ref_long[i]) if applies else no_sweep
            now_s = np.less_equal(self.price_short[r], ref_short[i]) if applies else no_sweep
            self.sweep_long[r] = np.where(now_l, r, _NEVER)
            self.sweep_short[r] = np.where(now_s, r, _NEVER)
            keep_l, keep_s = ~now_l, ~now_s
            self.open_long.add(idx[keep_l], self.price_long[r][keep_l])
            self.open_short.add(idx[keep_s], np.negative(self.price_short[r][keep_s]))
        self.e = r0 + f

    def _assemble(self, bars: Bars, params: ModelParams, fitted: ModelParams, gaps: list) -> ModelRun:
        """The run over the window ``[a, e)``: the cached slots and sweeps, the window's own flow and weights."""
        a, e = self.a, self.e
        n = e - a
        if self.bad[a:e].any():
            clipped, clip_notes = clip_wicks(bars, params.max_wick)
        else:
            clipped, clip_notes = bars, []
        w = {name: col[a:e] for name, col in self.flow.items()}
        usd = clipped.close if fitted.oi_units == "coin" else None
        flow = FlowInputs(w["q"], w["up"], w["down"], w.get("step"), w.get("x"), usd)
        d_oi, shrink = flow_from_inputs(flow, bars.interval_ms, fitted)
        log_c = np.cumsum(np.log(shrink))
        em = None if self.entry_mean is None else self.entry_mean[a:e]
        slots = Slots(self.price_long[a:e], self.price_short[a:e], self.tier, self.slot_w, em)
        long_share, side_used = side_shares(clipped, d_oi, em if em is not None else clipped.close, fitted)
        longs, shorts, self._index, rows = levels_from_slots(slots, d_oi, long_share, self._index)  # reused while
        opening = self._index[0]  # the opening bars stay the same

        def rel(sweeps: np.ndarray) -> np.ndarray:  # window-relative sweep bars, never swept: n
            if rows is None:
                return np.minimum(sweeps[a:e].take(opening, axis=0) - a, n).reshape(-1)
            out = np.subtract(sweeps[a + rows.start : e], a)
            return np.minimum(out, n, out=out).reshape(-1)

        table = fitted.margin_table
        info = {"side_model": side_used, "margin_table": table.name if table else "unknown",
                "levels_per_bar": int(self.k)}
        return ModelRun(clipped, longs, shorts, rel(self.sweep_long), rel(self.sweep_short), log_c, info, gaps,
                        clip_notes, fitted)

    def nbytes(self) -> int:
        """Bytes this state holds: its buffers, unswept indices and the bars (the last run's arrays are
        mostly views of these or of the same size; counted once more as an upper bound)."""
        total = sum(getattr(self, name).nbytes for name in ("price_long", "price_short", "sweep_long", "sweep_short",
                                                             "bad"))
        total += self.open_long.nbytes + self.open_short.nbytes
        total += 0 if self.entry_mean is None else self.entry_mean.nbytes
        total += sum(col.nbytes for col in self.flow.values())
        total += sum(c.nbytes for c in (getattr(self.bars, name) for name in _COLUMNS) if c is not None)
        r = self.run
        total += sum(x.nbytes for x in (r.longs.weight, r.shorts.weight, r.longs.tier, r.shorts.tier, r.longs.t0,
                                          r.t_long, r.t_short, r.log_c))
        return int(total)


class ModelCache:
    """One :class:`ModelState` per key (e.g. venue, symbol, window), least recently used evicted first
    beyond ``max_states`` states or ``max_bytes`` bytes together (:meth:`ModelState.nbytes`).
    Thread-safe: calls for one key are serialised, different keys run in parallel."""

    def __init__(self, max_states: int = DEFAULT_MAX_STATES, max_bytes: int = DEFAULT_MAX_STATE_BYTES,
                 max_append: int = MAX_APPEND) -> None:
        if max_states < 0 or max_bytes < 0 or max_append < 0:
            raise ValueError("max_states, max_bytes and max_append must be >= 0 (0 keeps nothing)")
        self.max_states, self.max_bytes, self.max_append = int(max_states), int(max_bytes), int(max_append)
        self._states: OrderedDict[Hashable, tuple[ModelState, int]] = OrderedDict()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()
        self.nbytes = 0
        self.incremental = 0  # runs extended incrementally (for tests, benchmarks and logs)
        self.rebuilds = 0  # full rebuilds of a key already cached (a first build is not counted)
        self.last_update: Update | None = None

    def __len__(self) -> int:
        return len(self._states)

    def run(self, key: Hashable, bars: Bars, params: ModelParams) -> ModelRun:
        """The run of ``params`` over ``bars``, extended from the key's cached state when it can be."""
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                held = self._states.pop(key, None)
                if held is not None:
                    self.nbytes -= held[1]
            try:
                if held is None:
                    state = ModelState(bars, params)
                    update = Update(True, "no cached state")
                else:
                    state = held[0]
                    _, update = state.update(bars, params, max_append=self.max_append)
                    if update.rebuilt:
                        self.rebuilds += 1
                        log.info("model %s: full rebuild (%s)", key, update.reason)
                    else:
                        self.incremental += 1
            except BaseException:
                with self._lock:
                    self._key_locks.pop(key, None)
                raise
            self.last_update = update
            self._keep(key, state)
            return state.run

    def build_map(self, key: Hashable, bars: Bars, params: ModelParams | None = None, *, window: str = "",
                  now_ms: int | None = None) -> LiquidationMap:
        """:func:`analysis.model.build_map` through the key's cached state (the same map, exactly)."""
        params = params or ModelParams()
        return map_from_run(self.run(key, bars, params), params, window=window, now_ms=now_ms)

    def _keep(self, key: Hashable, state: ModelState) -> None:
        size = state.nbytes()
        with self._lock:
            if size > self.max_bytes or self.max_states == 0:
                self._key_locks.pop(key, None)
                return
            self._states[key] = (state, size)
            self.nbytes += size
            while len(self._states) > self.max_states or self.nbytes > self.max_bytes:
                old_key, (_, old_size) = self._states.popitem(last=False)
                self.nbytes -= old_size
                self._key_locks.pop(old_key, None)
