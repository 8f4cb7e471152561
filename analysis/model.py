"""The liquidation model: rebuild leveraged positions from open-interest flow, then remove the
ones price has reached.

For each bar, in time order (see docs/methodology.md for the why of every step):

1. **Consume.** Long levels at or above the bar's low and short levels at or below its high are
   liquidated: removed, and their notional booked as *swept* in that bar.
2. **Open.** If OI rose by dOI > 0, new positions of notional ``dOI * oi_scale`` open at the bar's
   entry price(s), split between longs and shorts by the side model and spread over leverage
   tiers. Each lands at its isolated-margin liquidation price
   ``long: E(1-1/L)/(1-mmr)``, ``short: E(1+1/L)/(1+mmr)``. A level already beyond the bar's
   close is swept in the same bar (every entry of a bar happens before its close).
3. **Close.** If OI fell, every active position shrinks by ``OI_t / OI_{t-1}``.

The implementation is vectorized: a level opened at bar t0 is swept at the first later bar whose
low (high) crosses it, found for all levels at once by binary lifting over a sparse table of
range minima; its notional then is its weight times the product of shrink factors since t0.
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from .bars import Bars
from .errors import DataError, InputError
from .liqmap import LiquidationMap, SweptSeries, nice_width
from .margin import MarginTable, table_for

__all__ = ["ModelParams", "SideModel", "build_map", "Levels", "build_levels", "side_shares", "entry_prices"]

SideModel = Literal["auto", "taker", "neutral", "price_direction"]


@dataclass(frozen=True)
class ModelParams:
    """Every assumption of the model, with its default. See docs/methodology.md.

    leverage / leverage_weights
        Leverage tiers and the share of new notional at each (normalised to sum to 1).
    leverage_spread, leverage_nodes
        0 keeps discrete tiers. Above 0 each tier L becomes a band of ``leverage_nodes`` leverages
        spaced evenly in log-space over ``L*exp(+-leverage_spread)``: a continuous distribution
        that fills the gaps between tiers. Levels keep their tier's label.
    side_model
        How dOI splits into longs and shorts: ``taker`` (aggressive flow decides), ``neutral``
        (50/50), ``price_direction`` (the bar's body over its range), ``auto`` (taker when the bars
        carry taker flow, else neutral).
    taker_net_scale
        Sensitivity of the taker model: long share = 0.5 + 0.5*tanh(scale * net_taker_usd / dOI).
    entry_points
        1: every position of a bar opens at its VWAP (typical price without volume). N > 1: entries
        spread evenly over the bar's low..high range.
    oi_scale
        Multiplies dOI, e.g. to scale one venue's OI to the whole market.
    typical_position_usd, margin_table
        Which maintenance-margin bracket prices the levels; ``margin_table=None`` uses the shipped
        table for the symbol.
    bin_pct, bin_width
        Price-grid bin width: ``bin_width`` if given, else a round number near ``price * bin_pct``.
    min_bars, max_gap_bars
        Validation: shortest usable series, longest tolerated run of missing bars.
    """

    leverage: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0, 100.0)
    leverage_weights: tuple[float, ...] = (0.30, 0.30, 0.20, 0.12, 0.08)
    leverage_spread: float = 0.0
    leverage_nodes: int = 5
    side_model: SideModel = "auto"
    taker_net_scale: float = 1.0
    entry_points: int = 1
    oi_scale: float = 1.0
    typical_position_usd: float = 100_000.0
    margin_table: MarginTable | None = None
    bin_pct: float = 0.001
    bin_width: float | None = None
    min_bars: int = 12
    max_gap_bars: int = 6

    def __post_init__(self) -> None:
        if len(self.leverage) == 0 or len(self.leverage) != len(self.leverage_weights):
            raise InputError("leverage tiers and leverage_weights must be non-empty and of equal length")
        if any(not (1.0 <= lv <= 200.0) for lv in self.leverage):
            raise InputError("leverage tiers must lie between 1x and 200x")
        if any(w < 0 for w in self.leverage_weights) or sum(self.leverage_weights) <= 0:
            raise InputError("leverage_weights must be non-negative and not all zero")
        if self.side_model not in ("auto", "taker", "neutral", "price_direction"):
            raise InputError(f"unknown side model {self.side_model!r}; use auto, taker, neutral or price_direction")
        if self.entry_points < 1 or self.leverage_nodes < 1:
            raise InputError("entry_points and leverage_nodes must be at least 1")
        if not (0 <= self.leverage_spread <= 2):
            raise InputError("leverage_spread must be between 0 and 2 (log units)")
        if self.oi_scale <= 0 or self.bin_pct <= 0 or (self.bin_width is not None and self.bin_width <= 0):
            raise InputError("oi_scale, bin_pct and bin_width must be positive")

    @property
    def tier_labels(self) -> tuple[str, ...]:
        return tuple(f"{lv:g}x" for lv in self.leverage)

    def leverage_grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(leverage, weight, tier index) of every leverage node; weights sum to 1."""
        tiers = np.asarray(self.leverage, dtype=float)
        w = np.asarray(self.leverage_weights, dtype=float)
        w = w / w.sum()
        if self.leverage_spread == 0 or self.leverage_nodes == 1:
            return tiers, w, np.arange(tiers.size)
        u = np.linspace(-1.0, 1.0, self.leverage_nodes)
        lev = np.clip(tiers[:, None] * np.exp(self.leverage_spread * u)[None, :], 1.0, 200.0)
        weights = np.repeat(w / self.leverage_nodes, self.leverage_nodes).reshape(lev.shape)
        tier = np.repeat(np.arange(tiers.size), self.leverage_nodes)
        return lev.ravel(), weights.ravel(), tier

    def describe(self) -> dict:
        """The parameters as plain JSON-able values (for reports and the JSON output)."""
        d = asdict(self)
        d["margin_table"] = self.margin_table.name if self.margin_table else "default for symbol"
        d["leverage"] = list(self.leverage)
        d["leverage_weights"] = list(self.leverage_weights)
        return d


# -- the per-bar inputs ----------------------------------------------------------------------------

def entry_prices(bars: Bars, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Entry prices, shape (n_bars, points), and their weights (points,).

    One point: VWAP (quote volume / volume) where the bar has volume, else the typical price
    (H+L+C)/3. Several: evenly spaced over each bar's low..high range, equal weights.
    """
    if points == 1:
        typical = (bars.high + bars.low + bars.close) / 3.0
        entry = typical
        if bars.volume is not None and bars.quote_volume is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                vwap = bars.quote_volume / bars.volume
            ok = (bars.volume > 0) & np.isfinite(vwap) & (vwap >= bars.low) & (vwap <= bars.high)
            entry = np.where(ok, vwap, typical)
        return entry[:, None], np.ones(1)
    q = (np.arange(points) + 0.5) / points
    return bars.low[:, None] + q[None, :] * (bars.high - bars.low)[:, None], np.full(points, 1.0 / points)


def side_shares(bars: Bars, d_oi: np.ndarray, entry: np.ndarray, params: ModelParams) -> tuple[np.ndarray, str]:
    """Long share of each bar's new notional (shorts get the rest), and the side model used."""
    model = params.side_model
    has_taker = bars.taker_net is not None or (bars.taker_buy is not None and bars.volume is not None)
    if model == "auto":
        model = "taker" if has_taker else "neutral"
    if model == "neutral":
        return np.full(len(bars), 0.5), model
    if model == "price_direction":
        rng = bars.high - bars.low
        with np.errstate(divide="ignore", invalid="ignore"):
            body = np.where(rng > 0, (bars.close - bars.open) / rng, 0.0)
        return 0.5 + 0.5 * np.clip(body, -1.0, 1.0), model
    if not has_taker:
        raise DataError(f"{bars.venue} {bars.symbol}: the taker side model needs taker flow, which these bars lack")
    net = bars.taker_net if bars.taker_net is not None else 2.0 * bars.taker_buy - bars.volume
    net_usd = net * entry
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(d_oi > 0, params.taker_net_scale * net_usd / d_oi, 0.0)
    return 0.5 + 0.5 * np.tanh(x), model


# -- levels ---------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Levels:
    """Every level the model opened, flat arrays of equal length (one side)."""

    t0: np.ndarray
    price: np.ndarray
    weight: np.ndarray
    tier: np.ndarray


def build_levels(bars: Bars, params: ModelParams) -> tuple[Levels, Levels, np.ndarray, dict]:
    """Open the levels of every bar. Returns (longs, shorts, log shrink cumsum, info)."""
    oi = bars.oi_usd
    d_oi = np.zeros(len(bars))
    d_oi[1:] = np.diff(oi) * params.oi_scale
    shrink = np.ones(len(bars))
    shrink[1:] = np.where(oi[1:] < oi[:-1], oi[1:] / oi[:-1], 1.0)
    log_c = np.cumsum(np.log(shrink))

    entry, entry_w = entry_prices(bars, params.entry_points)
    long_share, side_used = side_shares(bars, d_oi, entry.mean(axis=1), params)
    lev, lev_w, lev_tier = params.leverage_grid()
    table = params.margin_table or table_for(bars.symbol)
    mmr = np.array([table.mmr_for(float(lv), params.typical_position_usd) for lv in lev])

    opening = np.nonzero(d_oi > 0)[0]
    e = entry[opening]  # (m, J)
    shape = (opening.size, entry_w.size, lev.size)
    t0 = np.broadcast_to(opening[:, None, None], shape).ravel()
    tier = np.broadcast_to(lev_tier[None, None, :], shape).ravel()
    base_w = (entry_w[None, :, None] * lev_w[None, None, :])  # (1, J, K)

    def side(share: np.ndarray, factor: np.ndarray) -> Levels:
        price = (e[:, :, None] * factor[None, None, :]).ravel()
        weight = ((d_oi[opening] * share[opening])[:, None, None] * base_w).ravel()
        return Levels(t0, price, weight, tier)

    longs = side(long_share, (1.0 - 1.0 / lev) / (1.0 - mmr))
    shorts = side(1.0 - long_share, (1.0 + 1.0 / lev) / (1.0 + mmr))
    info = {"side_model": side_used, "margin_table": table.name, "mmr_by_node": mmr.tolist()}
    return longs, shorts, log_c, info


def _first_at_or_below(series: np.ndarray, start: np.ndarray, thresh: np.ndarray) -> np.ndarray:
    """For each query, the first index t >= start with series[t] <= thresh; len(series) if none.

    Binary lifting over a sparse table of range minima: O((n + q) log n), no loop over q.
    """
    n = series.size
    out = np.full(start.size, n, dtype=np.int64)
    if n == 0 or start.size == 0:
        return out
    suffix_min = np.minimum.accumulate(series[::-1])[::-1]
    suffix_min = np.append(suffix_min, np.inf)
    live = np.nonzero(suffix_min[np.minimum(start, n)] <= thresh)[0]  # ever touched
    if live.size == 0:
        return out
    pos = start[live].astype(np.int64)
    th = thresh[live]
    tables = [series]
    while (1 << len(tables)) <= n:
        half = 1 << (len(tables) - 1)
        prev = tables[-1]
        tables.append(np.minimum(prev[:-half], prev[half:]))
    for k in range(len(tables) - 1, -1, -1):
        step = 1 << k
        tab = tables[k]
        can = pos + step <= n
        idx = np.minimum(pos, tab.size - 1)
        move = can & (tab[idx] > th)
        pos = np.where(move, pos + step, pos)
    out[live] = pos
    return out


def build_map(
    bars: Bars,
    params: ModelParams | None = None,
    *,
    window: str = "",
    now_ms: int | None = None,
) -> LiquidationMap:
    """Run the model over ``bars`` and return the estimated :class:`LiquidationMap`.

    ``window`` is a label for the output (e.g. ``"7d"``); ``now_ms`` stamps the generation time.
    Raises :class:`DataError` if the bars cannot carry a map.
    """
    params = params or ModelParams()
    gaps = bars.validate(min_bars=params.min_bars, max_gap_bars=params.max_gap_bars)
    n = len(bars)
    longs, shorts, log_c, info = build_levels(bars, params)

    # Sweep bar: the opening bar itself when the level is beyond that bar's close, else the first
    # later bar whose low (longs) / high (shorts) reaches it. Shorts use -high so both are "<=".
    def sweep_bar(lv: Levels, touch: np.ndarray, thresh: np.ndarray, beyond_close: np.ndarray) -> np.ndarray:
        later = _first_at_or_below(touch, np.minimum(lv.t0 + 1, n), thresh)
        return np.where(beyond_close, lv.t0, later)

    t_long = sweep_bar(longs, bars.low, longs.price, longs.price >= bars.close[longs.t0])
    t_short = sweep_bar(shorts, -bars.high, -shorts.price, shorts.price <= bars.close[shorts.t0])

    swept_series = []
    remaining = []
    for lv, t_sw in ((longs, t_long), (shorts, t_short)):
        swept = t_sw < n
        # notional at the sweep: shrunk through bars t0+1 .. T-1 (consumption precedes closing)
        upto = np.where(swept, np.maximum(t_sw - 1, lv.t0), n - 1)
        amount = lv.weight * np.exp(log_c[upto] - log_c[lv.t0])
        swept_series.append(np.bincount(t_sw[swept], weights=amount[swept], minlength=n)[:n])
        remaining.append((lv.price[~swept], amount[~swept], lv.tier[~swept]))

    price = bars.price
    width = params.bin_width or nice_width(price * params.bin_pct)
    prices = np.concatenate([remaining[0][0], remaining[1][0], [price]])
    grid_lo = math.floor(prices.min() / width) * width
    n_bins = int(math.floor((prices.max() - grid_lo) / width)) + 1
    n_tiers = len(params.leverage)

    def bin_side(p: np.ndarray, w: np.ndarray, tier: np.ndarray) -> np.ndarray:
        b = np.clip(np.floor((p - grid_lo) / width).astype(np.int64), 0, n_bins - 1)
        flat = np.bincount(b * n_tiers + tier, weights=w, minlength=n_bins * n_tiers)
        return flat.reshape(1, n_bins, n_tiers)

    notes = list(bars.notes)
    if gaps:
        missing = sum(g.missing for g in gaps)
        notes.append(
            f"{len(gaps)} gap(s) in the {bars.venue} data ({missing} bar(s) missing); "
            "OI change across a gap is booked after it and the unseen price path sweeps nothing"
        )
    p = params.describe()
    p.update(info)
    return LiquidationMap(
        symbol=bars.symbol,
        venues=(bars.venue,),
        kind="estimated",
        price=price,
        bin_width=width,
        grid_lo=grid_lo,
        tiers=params.tier_labels,
        long=bin_side(*remaining[0]),
        short=bin_side(*remaining[1]),
        window=window,
        start_ms=bars.start_ms,
        end_ms=bars.end_ms,
        generated_ms=int(now_ms if now_ms is not None else _time.time() * 1000),
        swept=SweptSeries(bars.time.copy(), swept_series[0], swept_series[1]),
        notes=tuple(notes),
        params=p,
    )
