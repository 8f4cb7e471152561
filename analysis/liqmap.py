"""``LiquidationMap``: estimated liquidation notional on a price grid, by venue, side and tier.

The map is the hand-off point of the pipeline: the model (or the CoinGlass source) builds one,
metrics read it, the chart draws it and ``to_json`` publishes it. Bins are aligned to multiples of
``bin_width`` so maps from several venues can be summed bin by bin (:func:`merge`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from .bars import iso
from .errors import DataError

__all__ = [
    "LiquidationMap", "SweptSeries", "PricePath", "merge", "merge_paths", "nice_width", "MapKind", "GRID_PCT", "MAX_BINS", "price_grid",
    "bin_levels", "left_off_note",
]

#: ``estimated`` (the model), ``coinglass`` (CoinGlass's map), ``measured`` (real positions' liquidation prices)
MapKind = Literal["estimated", "coinglass", "measured"]

#: default grid range: levels further than this fraction of the price from it are left off (1.0: 0 .. 2x price)
GRID_PCT = 1.0
#: default cap on a map's bins; a grid that would need more is refused (memory stays bounded)
MAX_BINS = 50_000


def price_grid(price: float, width: float, lo: float, hi: float, *, max_bins: int = MAX_BINS) -> tuple[float, int]:
    """``(grid_lo, n_bins)`` of the grid aligned to ``width`` covering ``lo..hi`` and ``price``.

    Raises :class:`DataError` when that takes more than ``max_bins`` bins (or is not finite), so
    no grid's memory depends on the data beyond that cap.
    """
    lo, hi = min(lo, price), max(hi, price)
    grid_lo = math.floor(lo / width) * width
    bins = math.floor((hi - grid_lo) / width) + 1 if math.isfinite(hi - grid_lo) else math.inf
    if not (math.isfinite(grid_lo) and bins <= max_bins):
        raise DataError(
            f"the price grid from {lo:.6g} to {hi:.6g} would need more than {max_bins:,} bins of {width:g} "
            f"(max_bins); choose a wider bin_width or bin_pct"
        )
    return grid_lo, int(bins)


def bin_levels(
    price: np.ndarray, weight: np.ndarray, tier: np.ndarray, n_tiers: int, grid_lo: float, width: float, n_bins: int,
) -> np.ndarray:
    """Sum level notional into bins ``(1, n_bins, n_tiers)``; the grid must cover the levels
    (an index off by float rounding at an edge goes to the edge bin)."""
    b = np.clip(np.floor((price - grid_lo) / width), 0, n_bins - 1).astype(np.int64)
    flat = np.bincount(b * n_tiers + tier, weights=weight, minlength=n_bins * n_tiers)
    return flat.reshape(1, n_bins, n_tiers)


def left_off_note(long_usd: float, short_usd: float, price: float, grid_pct: float) -> str | None:
    """The map note for notional left off beyond ``grid_pct`` of ``price`` (None when nothing was)."""
    if long_usd <= 0 and short_usd <= 0:
        return None
    return (
        f"levels more than {grid_pct:.0%} from the price ({price:.6g}) are left off the map (grid_pct): "
        f"${long_usd:,.0f} long and ${short_usd:,.0f} short notional"
    )


def nice_width(target: float) -> float:
    """The largest 1/2/2.5/5 x 10^k not above ``target`` (a readable bin width)."""
    if not math.isfinite(target) or target <= 0:
        raise DataError(f"cannot choose a bin width from {target!r}")
    exp = math.floor(math.log10(target))
    for m in (5.0, 2.5, 2.0, 1.0):
        w = m * 10.0**exp
        if w <= target * (1 + 1e-12):
            return w
    return 10.0**exp


@dataclass(frozen=True, eq=False)
class SweptSeries:
    """Notional (USD) the model removed per bar, per side: its swept notional.

    ``long``/``short`` count every level swept in the bar. ``prior_long``/``prior_short`` count
    only levels opened in an earlier bar, i.e. on the map as the bar opened (the rest were opened
    and swept inside the bar); ``None`` when the producer does not split them.
    """

    time: np.ndarray
    long: np.ndarray
    short: np.ndarray
    prior_long: np.ndarray | None = None
    prior_short: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class PricePath:
    """The range price traded in each bar behind a map: bar open time (epoch ms), high and low.

    What the model swept levels with (bad-print wicks clipped), so a later reading can tell which
    earlier levels price has traded through since (:mod:`analysis.change`). ``interval_ms`` is
    the bar length; a merged map's path is the envelope of its venues' paths.
    """

    time: np.ndarray
    high: np.ndarray
    low: np.ndarray
    interval_ms: int

    @property
    def start_ms(self) -> int:
        return int(self.time[0]) if self.time.size else 0

    def since(self, t_ms: int) -> tuple[float, float, int] | None:
        """``(low, high, bars)`` over the bars that opened at or after ``t_ms``; None when there are none."""
        i = int(np.searchsorted(self.time, int(t_ms), side="left"))
        if i >= self.time.size:
            return None
        return float(self.low[i:].min()), float(self.high[i:].max()), int(self.time.size - i)

    @property
    def nbytes(self) -> int:
        return int(self.time.nbytes + self.high.nbytes + self.low.nbytes)


def merge_paths(paths: "list[PricePath | None]") -> PricePath | None:
    """The envelope of several venues' paths: per bar open time the highest high and lowest low
    (a level of the merged map is swept where any venue's price reached it). None if none has one."""
    have = [p for p in paths if p is not None and p.time.size]
    if len(have) <= 1:
        return have[0] if have else None
    times, inv = np.unique(np.concatenate([p.time for p in have]), return_inverse=True)
    high = np.full(times.size, -np.inf)
    low = np.full(times.size, np.inf)
    np.maximum.at(high, inv, np.concatenate([p.high for p in have]))
    np.minimum.at(low, inv, np.concatenate([p.low for p in have]))
    return PricePath(times, high, low, max(p.interval_ms for p in have))


@dataclass(frozen=True, eq=False)
class LiquidationMap:
    """Liquidation notional in USD per (venue, price bin, leverage tier), for each side.

    ``long``/``short`` have shape ``(len(venues), n_bins, len(tiers))``. Bin ``i`` covers
    ``[grid_lo + i*bin_width, grid_lo + (i+1)*bin_width)``. Long levels sit below ``price`` and
    short levels above it by construction. ``path`` is the price path of the bars behind an
    estimated map (None for a finished snapshot such as CoinGlass's).
    """

    symbol: str
    venues: tuple[str, ...]
    kind: MapKind
    price: float
    bin_width: float
    grid_lo: float
    tiers: tuple[str, ...]
    long: np.ndarray
    short: np.ndarray
    window: str
    start_ms: int
    end_ms: int
    generated_ms: int
    swept: SweptSeries | None = None
    notes: tuple[str, ...] = field(default=())
    params: dict[str, Any] = field(default_factory=dict)
    path: PricePath | None = None

    # -- grid -----------------------------------------------------------------------------------
    @property
    def n_bins(self) -> int:
        return int(self.long.shape[1])

    @property
    def edges(self) -> np.ndarray:
        return self.grid_lo + self.bin_width * np.arange(self.n_bins + 1)

    @property
    def centers(self) -> np.ndarray:
        return self.grid_lo + self.bin_width * (np.arange(self.n_bins) + 0.5)

    # -- totals ---------------------------------------------------------------------------------
    def long_by_bin(self) -> np.ndarray:
        """Long notional per bin, all venues and tiers."""
        return self.long.sum(axis=(0, 2))

    def short_by_bin(self) -> np.ndarray:
        """Short notional per bin, all venues and tiers."""
        return self.short.sum(axis=(0, 2))

    @property
    def total_long(self) -> float:
        return float(self.long.sum())

    @property
    def total_short(self) -> float:
        return float(self.short.sum())

    @property
    def is_estimate(self) -> bool:
        return self.kind == "estimated"

    def with_notes(self, *notes: str) -> "LiquidationMap":
        return replace(self, notes=self.notes + tuple(n for n in notes if n not in self.notes))

    def to_json(self) -> dict[str, Any]:
        """A machine-readable view: metadata plus every non-empty bin with per-tier notional."""
        lb, sb = self.long.sum(axis=0), self.short.sum(axis=0)
        levels = []
        for i in np.nonzero((lb.sum(axis=1) > 0) | (sb.sum(axis=1) > 0))[0]:
            lo = self.grid_lo + i * self.bin_width
            levels.append(
                {
                    "price_lo": round(lo, 10),
                    "price_hi": round(lo + self.bin_width, 10),
                    "long_usd": round(float(lb[i].sum()), 2),
                    "short_usd": round(float(sb[i].sum()), 2),
                    "long_by_tier": {t: round(float(v), 2) for t, v in zip(self.tiers, lb[i]) if v > 0},
                    "short_by_tier": {t: round(float(v), 2) for t, v in zip(self.tiers, sb[i]) if v > 0},
                }
            )
        out: dict[str, Any] = {
            "symbol": self.symbol,
            "venues": list(self.venues),
            "kind": self.kind,
            "price": self.price,
            "window": self.window,
            "start": iso(self.start_ms),
            "end": iso(self.end_ms),
            "generated": iso(self.generated_ms),
            "bin_width": self.bin_width,
            "tiers": list(self.tiers),
            "total_long_usd": round(self.total_long, 2),
            "total_short_usd": round(self.total_short, 2),
            "notes": list(self.notes),
            "params": self.params,
            "levels": levels,
        }
        if len(self.venues) > 1:
            out["by_venue"] = {
                v: {"long_usd": round(float(self.long[k].sum()), 2), "short_usd": round(float(self.short[k].sum()), 2)}
                for k, v in enumerate(self.venues)
            }
        return out


def _regrid(m: LiquidationMap, width: float, lo: float, n_bins: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Move ``m``'s bins onto another aligned grid, assigning each bin by its center.

    Returns the new long and short arrays and the long and short notional whose bins fall off it.
    """
    idx = np.floor((m.centers - lo) / width).astype(np.int64)
    on = (idx >= 0) & (idx < n_bins)
    out_l = np.zeros((m.long.shape[0], n_bins, m.long.shape[2]))
    out_s = np.zeros_like(out_l)
    np.add.at(out_l, (slice(None), idx[on]), m.long[:, on])
    np.add.at(out_s, (slice(None), idx[on]), m.short[:, on])
    return out_l, out_s, float(m.long[:, ~on].sum()), float(m.short[:, ~on].sum())


def merge(maps: list[LiquidationMap], *, grid_pct: float | None = None, max_bins: int | None = None) -> LiquidationMap:
    """Sum several venues' maps of one symbol onto one grid (the coarsest bin width).

    The first map's price is the merged map's current price. Tier labels are united (a venue whose
    symbol allows less leverage has fewer tiers; its missing tiers hold nothing), ordered by the
    leverage they name; each venue's ``params["margin"]`` block is kept. The grid
    covers at most ``grid_pct`` of that price either side and ``max_bins`` bins (defaults: the
    first map's model parameters, else :data:`GRID_PCT` / :data:`MAX_BINS`): bins of other maps
    beyond it are left off, and a note says how much notional that was.
    """
    if not maps:
        raise DataError("nothing to merge: no venue produced a map")
    if len(maps) == 1:
        return maps[0]
    tiers = maps[0].tiers
    if any(m.tiers != tiers for m in maps):
        maps, tiers = _unite_tiers(maps)
    first = maps[0].params
    pct = float(grid_pct if grid_pct is not None else first.get("grid_pct", GRID_PCT))
    cap = int(max_bins if max_bins is not None else first.get("max_bins", MAX_BINS))
    price = maps[0].price
    width = max(m.bin_width for m in maps)
    spans = [(max(m.grid_lo, price * (1 - pct)), min(m.grid_lo + m.n_bins * m.bin_width, price * (1 + pct))) for m in maps]
    spans = [(a, b) for a, b in spans if a < b] or [(price, price)]  # each map's grid within the bound
    lo = min(a for a, _ in spans)
    hi = max(b for _, b in spans)
    lo, n_bins = price_grid(price, width, lo, hi - 1e-9 * width, max_bins=cap)
    longs, shorts, off_l, off_s = zip(*(_regrid(m, width, lo, n_bins) for m in maps))
    venues = tuple(v for m in maps for v in m.venues)
    notes = list(dict.fromkeys(n for m in maps for n in m.notes))
    note = left_off_note(sum(off_l), sum(off_s), price, pct)
    if note:
        notes.append(f"merged: {note}")
    return LiquidationMap(
        symbol=maps[0].symbol,
        venues=venues,
        kind=maps[0].kind,
        price=price,
        bin_width=width,
        grid_lo=lo,
        tiers=tiers,
        long=np.concatenate(longs, axis=0),
        short=np.concatenate(shorts, axis=0),
        window=maps[0].window,
        start_ms=min(m.start_ms for m in maps),
        end_ms=max(m.end_ms for m in maps),
        generated_ms=max(m.generated_ms for m in maps),
        swept=None,
        notes=tuple(notes),
        params=_merged_params(maps),
        path=merge_paths([m.path for m in maps]),
    )


def _merged_params(maps: list[LiquidationMap]) -> dict[str, Any]:
    """The first map's params, with every venue's margin block (``params["margin"]``)."""
    margin = {k: v for m in maps for k, v in (m.params.get("margin") or {}).items()}
    return {**maps[0].params, "margin": margin} if margin else maps[0].params


def _tier_order(label: str) -> tuple[float, str]:
    try:
        return float(label.rstrip("x")), label
    except ValueError:
        return math.inf, label


def _unite_tiers(maps: list[LiquidationMap]) -> tuple[list[LiquidationMap], tuple[str, ...]]:
    """The maps with one tier axis: every label of any map, by leverage; a map's absent tiers hold zeros."""
    labels = tuple(sorted({t for m in maps for t in m.tiers}, key=_tier_order))
    index = {t: i for i, t in enumerate(labels)}
    out = []
    for m in maps:
        cols = [index[t] for t in m.tiers]
        long = np.zeros(m.long.shape[:2] + (len(labels),))
        short = np.zeros_like(long)
        long[:, :, cols] = m.long
        short[:, :, cols] = m.short
        out.append(replace(m, long=long, short=short, tiers=labels))
    return out, labels
