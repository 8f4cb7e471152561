"""Reading a map: cumulative liquidations at distances, long/short imbalance and its skew class,
clusters, and threshold levels. Pure functions over a :class:`~analysis.liqmap.LiquidationMap`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .errors import InputError
from .liqmap import LiquidationMap

__all__ = ["MetricsParams", "SkewClass", "SKEW_CLASSES", "Cluster", "Threshold", "Reading", "read", "classify"]

Side = Literal["long", "short"]


@dataclass(frozen=True)
class MetricsParams:
    """How a map is read. See docs/methodology.md ("Reading the map").

    distances
        Fractions of price at which cumulative liquidations are reported.
    band
        Imbalance = short notional within +band over long notional within -band.
    heavy, mild
        Skew thresholds on that ratio: >= heavy is heavily short-skewed, >= mild short-skewed,
        <= 1/mild long-skewed, <= 1/heavy heavily long-skewed, anything between is balanced.
    clusters, cluster_pct, cluster_range, min_separation_pct, significant_share
        Up to ``clusters`` peaks per side, found on notional summed over +-cluster_pct/2 windows,
        within ``cluster_range`` of price, at least ``min_separation_pct`` apart. A cluster is
        *significant* when it holds at least ``significant_share`` of the side's largest one.
    """

    distances: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10)
    band: float = 0.05
    heavy: float = 3.0
    mild: float = 1.5
    clusters: int = 3
    cluster_pct: float = 0.005
    cluster_range: float = 0.15
    min_separation_pct: float = 0.01
    significant_share: float = 0.4

    def __post_init__(self) -> None:
        if not (0 < self.band <= 0.5):
            raise InputError("band must be between 0 and 50% of price")
        if not (1.0 < self.mild < self.heavy):
            raise InputError("skew thresholds need 1 < mild < heavy")
        if any(not (0 < d <= 0.5) for d in self.distances):
            raise InputError("distances must be between 0 and 50% of price")


@dataclass(frozen=True)
class SkewClass:
    """One named skew class. ``side`` is the side whose liquidations dominate (or None)."""

    key: str
    label: str
    side: Side | None


SKEW_CLASSES: dict[str, SkewClass] = {
    "heavily_short": SkewClass("heavily_short", "heavily short-skewed", "short"),
    "short": SkewClass("short", "short-skewed", "short"),
    "balanced": SkewClass("balanced", "balanced", None),
    "long": SkewClass("long", "long-skewed", "long"),
    "heavily_long": SkewClass("heavily_long", "heavily long-skewed", "long"),
}
SKEW_ORDER = ("heavily_long", "long", "balanced", "short", "heavily_short")


def classify(ratio: float, heavy: float = 3.0, mild: float = 1.5) -> SkewClass:
    """Skew class of a short/long ratio (inf = only shorts, 0 = only longs, nan = nothing)."""
    if math.isnan(ratio):
        return SKEW_CLASSES["balanced"]
    if ratio >= heavy:
        return SKEW_CLASSES["heavily_short"]
    if ratio >= mild:
        return SKEW_CLASSES["short"]
    if ratio <= 1.0 / heavy:
        return SKEW_CLASSES["heavily_long"]
    if ratio <= 1.0 / mild:
        return SKEW_CLASSES["long"]
    return SKEW_CLASSES["balanced"]


@dataclass(frozen=True)
class Cluster:
    """A peak of liquidation notional on one side."""

    side: Side
    price: float
    lo: float
    hi: float
    distance_pct: float
    notional: float
    dominant_tier: str
    significant: bool


@dataclass(frozen=True)
class Threshold:
    """'If price breaks ``price``, about ``notional`` of ``side`` liquidations sit between here and there.'"""

    side: Side
    price: float
    distance_pct: float
    notional: float


@dataclass(frozen=True)
class Reading:
    """Everything the chart and the commentary say about a map. ``end_ms`` is the map's data time
    (close of its last bar; 0 when unknown): when the reading was true."""

    symbol: str
    price: float
    venues: tuple[str, ...]
    kind: str
    window: str
    band: float
    distances: tuple[float, ...]
    cum_long: tuple[float, ...]
    cum_short: tuple[float, ...]
    long_in_band: float
    short_in_band: float
    imbalance: float
    skew: SkewClass
    clusters: tuple[Cluster, ...]
    nearest_long: Cluster | None
    nearest_short: Cluster | None
    thresholds: tuple[Threshold, ...]
    total_long: float
    total_short: float
    notes: tuple[str, ...] = field(default=())
    end_ms: int = 0

    @property
    def empty(self) -> bool:
        return self.long_in_band <= 0 and self.short_in_band <= 0

    def clusters_of(self, side: Side) -> list[Cluster]:
        return [c for c in self.clusters if c.side == side]

    def to_json(self) -> dict:
        def num(x: float) -> float | None:
            return None if not math.isfinite(x) else round(float(x), 4)

        return {
            "price": self.price,
            "band": self.band,
            "cumulative": {
                f"{d:g}": {"long_usd": round(lv, 2), "short_usd": round(sv, 2)}
                for d, lv, sv in zip(self.distances, self.cum_long, self.cum_short)
            },
            "long_in_band_usd": round(self.long_in_band, 2),
            "short_in_band_usd": round(self.short_in_band, 2),
            "imbalance_short_over_long": num(self.imbalance),
            "skew": self.skew.key,
            "skew_label": self.skew.label,
            "clusters": [
                {
                    "side": c.side, "price": round(c.price, 8), "lo": round(c.lo, 8), "hi": round(c.hi, 8),
                    "distance_pct": round(c.distance_pct, 3), "notional_usd": round(c.notional, 2),
                    "dominant_tier": c.dominant_tier, "significant": c.significant,
                }
                for c in self.clusters
            ],
            "thresholds": [
                {"side": t.side, "price": round(t.price, 8), "distance_pct": round(t.distance_pct, 3),
                 "notional_usd": round(t.notional, 2)}
                for t in self.thresholds
            ],
        }


def _cum(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].sum())


def _clusters(m: LiquidationMap, side: Side, p: MetricsParams) -> list[Cluster]:
    arr = (m.long if side == "long" else m.short).sum(axis=0)  # (bins, tiers)
    per_bin = arr.sum(axis=1)
    centers = m.centers
    price = m.price
    in_range = (centers >= price * (1 - p.cluster_range)) & (centers <= price * (1 + p.cluster_range))
    in_range &= (centers < price) if side == "long" else (centers > price)
    if not np.any(per_bin[in_range] > 0):
        return []
    half = max(1, int(round(price * p.cluster_pct / 2 / m.bin_width)))
    kernel = np.ones(2 * half + 1)
    window_sum = np.convolve(np.where(in_range, per_bin, 0.0), kernel, mode="same")
    sep = max(1, int(round(price * p.min_separation_pct / m.bin_width)))
    order = np.argsort(-window_sum, kind="stable")
    picked: list[int] = []
    for i in order:
        if window_sum[i] <= 0 or len(picked) >= p.clusters:
            break
        if not in_range[i] or per_bin[i] <= 0:
            continue
        if any(abs(int(i) - j) < sep for j in picked):
            continue
        picked.append(int(i))
    out = []
    top = window_sum[picked[0]] if picked else 0.0
    for i in picked:
        lo_i, hi_i = max(0, i - half), min(m.n_bins, i + half + 1)
        tiers = arr[lo_i:hi_i].sum(axis=0)
        # the cluster's price is the notional-weighted center of its window
        w = per_bin[lo_i:hi_i]
        center = float(np.average(centers[lo_i:hi_i], weights=w)) if w.sum() > 0 else float(centers[i])
        out.append(
            Cluster(
                side=side,
                price=center,
                lo=float(m.grid_lo + lo_i * m.bin_width),
                hi=float(m.grid_lo + hi_i * m.bin_width),
                distance_pct=(center / price - 1.0) * 100.0,
                notional=float(window_sum[i]),
                dominant_tier=m.tiers[int(np.argmax(tiers))],
                significant=bool(window_sum[i] >= p.significant_share * top),
            )
        )
    return out


def read(m: LiquidationMap, params: MetricsParams | None = None) -> Reading:
    """Read a map: cumulative sums, imbalance, skew class, clusters and thresholds."""
    p = params or MetricsParams()
    price = m.price
    centers = m.centers
    long_bins, short_bins = m.long_by_bin(), m.short_by_bin()
    cum_long = tuple(_cum(long_bins, (centers >= price * (1 - d)) & (centers < price)) for d in p.distances)
    cum_short = tuple(_cum(short_bins, (centers <= price * (1 + d)) & (centers > price)) for d in p.distances)
    long_band = _cum(long_bins, (centers >= price * (1 - p.band)) & (centers < price))
    short_band = _cum(short_bins, (centers <= price * (1 + p.band)) & (centers > price))
    if long_band > 0:
        ratio = short_band / long_band
    else:
        ratio = math.inf if short_band > 0 else math.nan
    clusters = _clusters(m, "long", p) + _clusters(m, "short", p)

    def nearest(side: Side) -> Cluster | None:
        sig = [c for c in clusters if c.side == side and c.significant]
        return min(sig, key=lambda c: abs(c.distance_pct)) if sig else None

    thresholds = []
    for c in sorted(clusters, key=lambda c: abs(c.distance_pct)):
        if not c.significant:
            continue
        # breaking the far edge of the cluster liquidates everything between price and there
        edge = c.lo if c.side == "long" else c.hi
        if c.side == "long":
            total = _cum(long_bins, (centers >= edge) & (centers < price))
        else:
            total = _cum(short_bins, (centers < edge) & (centers > price))
        thresholds.append(Threshold(c.side, edge, (edge / price - 1.0) * 100.0, total))

    return Reading(
        symbol=m.symbol,
        price=price,
        venues=m.venues,
        kind=m.kind,
        window=m.window,
        band=p.band,
        distances=p.distances,
        cum_long=cum_long,
        cum_short=cum_short,
        long_in_band=long_band,
        short_in_band=short_band,
        imbalance=ratio,
        skew=classify(ratio, p.heavy, p.mild),
        clusters=tuple(clusters),
        nearest_long=nearest("long"),
        nearest_short=nearest("short"),
        thresholds=tuple(thresholds),
        total_long=m.total_long,
        total_short=m.total_short,
        notes=m.notes,
        end_ms=int(m.end_ms),
    )
