"""Model against measurement: how well the estimated map's *shape* matches the measured one.

Both maps are put on one grid of distance from their own price (``step_pct`` bins out to
``range_pct`` either side; longs below, shorts above) and each side's notional is turned into
shares of that map's total within the range, longs and shorts together (so the long/short balance
counts too). Totals are not compared: the measured map is a sample of accounts (its coverage is
stated), the estimate models the whole open interest. For every band ``k`` (±1%, ±2%, ±5%):

* ``measured_share`` / ``estimated_share``: the share of each map's notional within ±k;
* ``captured``: the share of the measured notional within ±k that the estimate puts in the same
  bins, ``Σ_{bins within ±k} min(e_i, m_i) / Σ_{bins within ±k} m_i`` (1 = the estimate has at
  least as much, proportionally, in every bin where measured notional sits; 0 = none of it);

and over the whole range the ``spearman`` rank correlation of notional per bin (average ranks for
ties; longs and shorts separately and together) and the ``overlap`` ``Σ min(e_i, m_i)``.

The same numbers are computed for a **naive baseline** (:func:`naive_map`): the open interest
opened all at the current price, split evenly between longs and shorts, with the model's default
leverage distribution and maintenance margin, no history at all. A model whose shape is no
closer to the measurement than that has not learned anything from the open-interest history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError, InputError
from ..liqmap import LiquidationMap, bin_levels, nice_width, price_grid
from ..margin import table_for
from ..model import ModelParams, mmr_of

__all__ = ["CompareParams", "SideGrid", "ShapeScore", "Comparison", "on_grid", "score_shape", "naive_map",
           "spearman", "compare_maps"]


@dataclass(frozen=True)
class CompareParams:
    """The comparison grid and bands (docs/methodology.md, "Model against measurement")."""

    step_pct: float = 0.0025
    range_pct: float = 0.10
    bands_pct: tuple[float, ...] = (0.01, 0.02, 0.05)

    def __post_init__(self) -> None:
        if not (0 < self.step_pct < self.range_pct <= 0.5):
            raise InputError("CompareParams: 0 < step_pct < range_pct <= 0.5")
        n = self.range_pct / self.step_pct
        if abs(n - round(n)) > 1e-9 or any(abs(b / self.step_pct - round(b / self.step_pct)) > 1e-9 or
                                           not 0 < b <= self.range_pct for b in self.bands_pct):
            raise InputError("CompareParams: range_pct and every band must be whole multiples of step_pct, "
                             "bands within the range")

    @property
    def n(self) -> int:
        return int(round(self.range_pct / self.step_pct))


@dataclass(frozen=True, eq=False)
class SideGrid:
    """One map's notional by distance bin: ``long[i]`` covers ``[-(i+1), -i) × step`` below price,
    ``short[i]`` covers ``(i, i+1] × step`` above it; ``total`` is all its notional (any distance)."""

    long: np.ndarray
    short: np.ndarray
    total: float

    @property
    def in_range(self) -> float:
        return float(self.long.sum() + self.short.sum())


def on_grid(m: LiquidationMap, p: CompareParams) -> SideGrid:
    """``m`` by distance from its price; a bin's notional goes where its centre lies."""
    d = m.centers / m.price - 1.0
    lb, sb = m.long_by_bin(), m.short_by_bin()
    n = p.n
    out = []
    for amount, sign in ((lb, -1.0), (sb, 1.0)):
        k = np.floor(sign * d / p.step_pct + 1e-9).astype(np.int64)
        keep = (k >= 0) & (k < n) & (amount > 0)
        out.append(np.bincount(k[keep], weights=amount[keep], minlength=n)[:n].astype(float))
    return SideGrid(out[0], out[1], float(lb.sum() + sb.sum()))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    if a.size != b.size or a.size < 3:
        return float("nan")
    ra = pd.Series(a).rank(method="average").to_numpy()
    rb = pd.Series(b).rank(method="average").to_numpy()
    if np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass(frozen=True)
class ShapeScore:
    """One map's shape against the measured one (see the module docstring for each number)."""

    name: str
    bands: dict[str, dict[str, float | None]]  # "1%" -> measured_share, estimated_share, captured
    spearman: dict[str, float | None]  # long, short, both
    overlap: float | None

    def to_json(self) -> dict[str, Any]:
        return {"bands": self.bands, "spearman": self.spearman, "overlap": self.overlap}


def _f(x: float) -> float | None:
    return round(float(x), 4) if math.isfinite(x) else None


def score_shape(est: SideGrid, meas: SideGrid, p: CompareParams, name: str = "estimated") -> ShapeScore:
    """Score ``est`` against ``meas`` on the comparison grid."""
    if meas.in_range <= 0:
        raise DataError(f"the measured map has no notional within ±{p.range_pct:.0%} of price: nothing to compare")
    e_tot = est.in_range
    e = np.concatenate([est.long[::-1], est.short]) / e_tot if e_tot > 0 else np.zeros(2 * p.n)
    m = np.concatenate([meas.long[::-1], meas.short]) / meas.in_range
    dist = np.concatenate([np.arange(p.n, 0, -1), np.arange(1, p.n + 1)]) * p.step_pct  # outer edge of each bin
    bands = {}
    for b in p.bands_pct:
        inside = dist <= b + 1e-12
        mk = float(m[inside].sum())
        bands[f"{b * 100:g}%"] = {
            "measured_share": _f(mk), "estimated_share": _f(float(e[inside].sum())),
            "captured": _f(float(np.minimum(e, m)[inside].sum()) / mk) if mk > 0 else None,
        }
    rho = {"long": _f(spearman(est.long, meas.long)), "short": _f(spearman(est.short, meas.short)),
           "both": _f(spearman(e, m))}
    return ShapeScore(name, bands, rho, _f(float(np.minimum(e, m).sum())))


def naive_map(price: float, oi_usd: float, symbol: str, *, params: ModelParams | None = None,
              venue: str = "naive") -> LiquidationMap:
    """The no-history baseline: ``oi_usd`` opened at ``price``, half long and half short, at the model's
    default leverage distribution (``leverage_grid``) and maintenance margin; one tier per model tier."""
    if not (math.isfinite(price) and price > 0 and math.isfinite(oi_usd) and oi_usd > 0):
        raise DataError("the naive baseline needs a positive price and open interest")
    mp = params or ModelParams()
    lv, w, tier = mp.leverage_grid()
    mmr = mmr_of(mp.margin_table or table_for(symbol), lv, mp.typical_position_usd)
    long_px = price * (1.0 - 1.0 / lv) / (1.0 - mmr)
    short_px = price * (1.0 + 1.0 / lv) / (1.0 + mmr)
    width = nice_width(price * mp.bin_pct)
    lo, n_bins = price_grid(price, width, float(long_px.min()), float(short_px.max()), max_bins=mp.max_bins)
    tiers = mp.tier_labels
    half = 0.5 * oi_usd * w
    longs = bin_levels(long_px, half, tier, len(tiers), lo, width, n_bins)
    shorts = bin_levels(short_px, half, tier, len(tiers), lo, width, n_bins)
    return LiquidationMap(symbol=symbol, venues=(venue,), kind="estimated", price=price, bin_width=width, grid_lo=lo,
                          tiers=tuple(tiers), long=longs, short=shorts, window="none", start_ms=0, end_ms=0,
                          generated_ms=0, notes=("naive baseline: open interest opened at the current price, no history",),
                          params={})


@dataclass(frozen=True)
class Comparison:
    """The estimated and the naive map each scored against the measured one."""

    estimated: ShapeScore
    naive: ShapeScore
    params: CompareParams
    measured_coverage: float | None
    estimated_venues: tuple[str, ...]
    estimated_window: str
    grids: dict[str, SideGrid]

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "docs/methodology.md, Model against measurement",
            "grid": {"step_pct": self.params.step_pct, "range_pct": self.params.range_pct},
            "measured_coverage": self.measured_coverage,
            "estimated_from": {"venues": list(self.estimated_venues), "window": self.estimated_window},
            "estimated": self.estimated.to_json(), "naive_baseline": self.naive.to_json(),
        }

    def lines(self) -> list[str]:
        """The scores as plain text lines (the CLI prints them)."""
        out = [f"shape of the estimated map ({'+'.join(self.estimated_venues)} {self.estimated_window}) against the "
               f"measured one (coverage {_pct(self.measured_coverage)} of OI); naive baseline in brackets"]
        for band in self.estimated.bands:
            e, n = self.estimated.bands[band], self.naive.bands[band]
            out.append(f"  ±{band}: measured share {_pct(e['measured_share'])}, estimate {_pct(e['estimated_share'])} "
                       f"[{_pct(n['estimated_share'])}]; captured {_pct(e['captured'])} [{_pct(n['captured'])}]")
        for side in ("long", "short", "both"):
            out.append(f"  Spearman per bin, {side}: {_num(self.estimated.spearman[side])} "
                       f"[{_num(self.naive.spearman[side])}]")
        out.append(f"  overlap: {_pct(self.estimated.overlap)} [{_pct(self.naive.overlap)}]")
        return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def compare_maps(estimated: LiquidationMap, measured: LiquidationMap, *, oi_usd: float | None = None,
                 params: CompareParams | None = None, model: ModelParams | None = None) -> Comparison:
    """Score ``estimated`` and the naive baseline against ``measured`` (the baseline uses ``oi_usd``,
    default the measured map's open interest, at the measured price)."""
    if measured.kind != "measured":
        raise InputError(f"the reference map must be a measured map, got a {measured.kind} one")
    p = params or CompareParams()
    oi = oi_usd if oi_usd is not None else float(measured.params.get("oi_usd") or 0.0)
    naive = naive_map(measured.price, oi, estimated.symbol, params=model)
    meas, est, nv = on_grid(measured, p), on_grid(estimated, p), on_grid(naive, p)
    cov = measured.params.get("coverage")
    return Comparison(score_shape(est, meas, p), score_shape(nv, meas, p, "naive"), p,
                      float(cov) if isinstance(cov, (int, float)) else None, estimated.venues, estimated.window,
                      {"measured": meas, "estimated": est, "naive": nv})
