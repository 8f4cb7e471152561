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

__all__ = ["LiquidationMap", "SweptSeries", "merge", "nice_width", "MapKind"]

MapKind = Literal["estimated", "coinglass"]


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
    """Notional (USD) the model removed per bar, per side: its 'predicted liquidations'."""

    time: np.ndarray
    long: np.ndarray
    short: np.ndarray


@dataclass(frozen=True, eq=False)
class LiquidationMap:
    """Liquidation notional in USD per (venue, price bin, leverage tier), for each side.

    ``long``/``short`` have shape ``(len(venues), n_bins, len(tiers))``. Bin ``i`` covers
    ``[grid_lo + i*bin_width, grid_lo + (i+1)*bin_width)``. Long levels sit below ``price`` and
    short levels above it by construction.
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


def _regrid(m: LiquidationMap, width: float, lo: float, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Move ``m``'s bins onto another aligned grid, assigning each bin by its center."""
    idx = np.floor((m.centers - lo) / width).astype(np.int64)
    idx = np.clip(idx, 0, n_bins - 1)
    out_l = np.zeros((m.long.shape[0], n_bins, m.long.shape[2]))
    out_s = np.zeros_like(out_l)
    np.add.at(out_l, (slice(None), idx), m.long)
    np.add.at(out_s, (slice(None), idx), m.short)
    return out_l, out_s


def merge(maps: list[LiquidationMap]) -> LiquidationMap:
    """Sum several venues' maps of one symbol onto one grid (the coarsest bin width).

    The first map's price is the merged map's current price. Tier labels must agree.
    """
    if not maps:
        raise DataError("nothing to merge: no venue produced a map")
    if len(maps) == 1:
        return maps[0]
    tiers = maps[0].tiers
    if any(m.tiers != tiers for m in maps):
        raise DataError("cannot merge maps with different leverage tiers")
    width = max(m.bin_width for m in maps)
    lo = math.floor(min(m.grid_lo for m in maps) / width) * width
    hi = max(m.grid_lo + m.n_bins * m.bin_width for m in maps)
    n_bins = max(1, int(math.ceil((hi - lo) / width - 1e-9)))
    longs, shorts = zip(*(_regrid(m, width, lo, n_bins) for m in maps))
    venues = tuple(v for m in maps for v in m.venues)
    notes = tuple(dict.fromkeys(n for m in maps for n in m.notes))
    return LiquidationMap(
        symbol=maps[0].symbol,
        venues=venues,
        kind=maps[0].kind,
        price=maps[0].price,
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
        notes=notes,
        params=maps[0].params,
    )
