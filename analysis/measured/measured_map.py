"""The measured liquidation map: tracked Hyperliquid positions at their real liquidation prices.

Each open position of the coin, polled within ``max_age_s`` of the snapshot, is one level at its
``liquidationPx`` with its notional (``positionValue``, USD at the mark price), stacked by the
position's real leverage (``leverage_edges``). Longs liquidate below the price and shorts above;
a long whose liquidation price is at or above the current mark (or a short at or below it) was
polled before price moved through it and is left off and counted, as are positions without a
liquidation price (Hyperliquid returns null when the account's margin covers any price).

The map is its own kind, ``measured``, never ``estimated``: it is a *sample* of the market, and
its coverage is stated in its notes, its JSON (``params``) and on the chart: the tracked notional
as a share of open interest (``metaAndAssetCtxs``: ``openInterest`` in coins × mark price).
Hyperliquid's open interest counts one side of the book (``oi_one_sided``), so the coverage is
``(tracked longs + tracked shorts) / (2 × OI)``, and per side ``tracked longs / OI``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import DataError, InputError
from ..liqmap import MAX_BINS, LiquidationMap, bin_levels, left_off_note, nice_width, price_grid
from .shapes import canonical_symbol
from .snapshot import Snapshot

__all__ = ["MeasuredParams", "build_measured", "leverage_tiers", "VENUE"]

VENUE = "hyperliquid"


@dataclass(frozen=True)
class MeasuredParams:
    """Assumptions of the measured map (docs/methodology.md, "The measured map")."""

    #: bin width as a fraction of price (the model's default, so the two maps share a grid)
    bin_pct: float = 0.001
    #: levels further than this from the price are left off (and their notional noted)
    grid_pct: float = 0.5
    max_bins: int = MAX_BINS
    #: positions polled longer ago than this before the snapshot are left out
    max_age_s: float = 3600.0
    #: Hyperliquid's openInterest is one side's size (longs = shorts)
    oi_one_sided: bool = True
    #: leverage tier edges: <=5x, 5-10x, 10-25x, 25-50x, >50x
    leverage_edges: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0)

    def __post_init__(self) -> None:
        if not (1e-5 <= self.bin_pct <= 0.5 and 0 < self.grid_pct <= 1.0 and self.max_age_s > 0):
            raise InputError("MeasuredParams: bin_pct in [0.00001, 0.5], grid_pct in (0, 1], max_age_s > 0")
        e = self.leverage_edges
        if not e or list(e) != sorted(set(e)) or e[0] <= 0:
            raise InputError("MeasuredParams.leverage_edges must be increasing positive leverages")


def leverage_tiers(edges: tuple[float, ...]) -> tuple[str, ...]:
    """Tier labels of the edges: ``≤5x``, ``5–10x``, …, ``>50x``."""
    labels = [f"≤{edges[0]:g}x"]
    labels += [f"{a:g}–{b:g}x" for a, b in zip(edges, edges[1:])]
    labels.append(f">{edges[-1]:g}x")
    return tuple(labels)


def build_measured(snap: Snapshot, coin: str, *, symbol: str | None = None,
                   params: MeasuredParams | None = None) -> LiquidationMap:
    """The measured map of ``coin`` from a tracker snapshot; DataError when it cannot be built."""
    p = params or MeasuredParams()
    ctx = snap.asset_ctxs.get(coin)
    if ctx is None or not (math.isfinite(ctx.mark_px) and ctx.mark_px > 0):
        raise DataError(f"the positions file has no mark price for {coin} (metaAndAssetCtxs was not read)")
    price = float(ctx.mark_px)
    horizon = snap.time_ms - int(p.max_age_s * 1000)
    mine = [q for q in snap.positions if q.coin == coin]
    fresh = [q for q in mine if q.polled_ms >= horizon]
    stale = len(mine) - len(fresh)
    tracked_long = sum(q.position_value for q in fresh if q.szi > 0)
    tracked_short = sum(q.position_value for q in fresh if q.szi < 0)

    on_map = [q for q in fresh if q.liquidation_px is not None and q.liquidation_px > 0
              and ((q.szi > 0 and q.liquidation_px < price) or (q.szi < 0 and q.liquidation_px > price))]
    no_liq = [q for q in fresh if q.liquidation_px is None or q.liquidation_px <= 0]
    crossed = len(fresh) - len(on_map) - len(no_liq)

    edges = np.asarray(p.leverage_edges, dtype=float)
    tiers = leverage_tiers(p.leverage_edges)
    width = nice_width(price * p.bin_pct)
    lo_b, hi_b = price * (1 - p.grid_pct), price * (1 + p.grid_pct)
    grid_lo, n_bins = price_grid(price, width, lo_b, hi_b, max_bins=p.max_bins)
    longs = np.zeros((1, n_bins, len(tiers)))
    shorts = np.zeros((1, n_bins, len(tiers)))
    off = [0.0, 0.0]
    for side, arr, k in ((1, longs, 0), (-1, shorts, 1)):
        rows = [q for q in on_map if (q.szi > 0) == (side > 0)]
        if not rows:
            continue
        px = np.array([q.liquidation_px for q in rows], dtype=float)
        usd = np.array([q.position_value for q in rows], dtype=float)
        tier = np.searchsorted(edges, np.array([q.leverage for q in rows], dtype=float), side="left")
        inside = (px >= lo_b) & (px <= hi_b)
        off[k] = float(usd[~inside].sum())
        if np.any(inside):
            arr += bin_levels(px[inside], usd[inside], tier[inside], len(tiers), grid_lo, width, n_bins)

    oi_usd = ctx.oi_usd
    sides = 2.0 if p.oi_one_sided else 1.0
    coverage = (tracked_long + tracked_short) / (sides * oi_usd) if oi_usd > 0 else float("nan")
    cov_long = tracked_long / oi_usd if oi_usd > 0 and p.oi_one_sided else float("nan")
    cov_short = tracked_short / oi_usd if oi_usd > 0 and p.oi_one_sided else float("nan")
    accounts = len({q.user for q in fresh})
    notes = [
        f"measured: {len(on_map):,} positions of {accounts:,} tracked accounts at their real liquidation prices; "
        f"tracked ${tracked_long + tracked_short:,.0f} = {_share(coverage)} of open interest "
        f"(${oi_usd:,.0f} a side; longs {_share(cov_long)}, shorts {_share(cov_short)}): a sample, not the whole market",
    ]
    if no_liq:
        notes.append(f"measured: {len(no_liq):,} positions (${sum(q.position_value for q in no_liq):,.0f}) have no "
                     "liquidation price (margin covers any price): not on the map")
    if crossed:
        notes.append(f"measured: {crossed:,} positions were polled before price passed their liquidation price: left off")
    if stale:
        notes.append(f"measured: {stale:,} positions polled more than {p.max_age_s:g} s before the snapshot: left out")
    note = left_off_note(off[0], off[1], price, p.grid_pct)
    if note:
        notes.append(note)
    start = min((q.polled_ms for q in fresh), default=snap.time_ms)
    info = {
        "coin": coin, "coverage": _round(coverage), "coverage_long": _round(cov_long), "coverage_short": _round(cov_short),
        "tracked_usd": round(tracked_long + tracked_short, 2), "tracked_long_usd": round(tracked_long, 2),
        "tracked_short_usd": round(tracked_short, 2), "oi_usd": round(oi_usd, 2), "positions_on_map": len(on_map),
        "positions_tracked": len(fresh), "positions_no_liquidation_price": len(no_liq), "positions_crossed": crossed,
        "positions_stale": stale, "accounts": accounts, "snapshot_accounts": dict(snap.accounts),
        "measured_params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(p).items()},
    }
    return LiquidationMap(
        symbol=symbol or canonical_symbol(coin), venues=(VENUE,), kind="measured", price=price, bin_width=width,
        grid_lo=grid_lo, tiers=tiers, long=longs, short=shorts, window="snapshot", start_ms=int(start),
        end_ms=int(snap.time_ms), generated_ms=int(snap.time_ms), notes=tuple(notes), params=info,
    )


def _round(x: float) -> float | None:
    return round(float(x), 6) if math.isfinite(x) else None


def _share(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    v = 100.0 * x
    return f"{v:.1f}%" if v >= 1 else f"{v:.2g}%"
