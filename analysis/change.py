"""What changed between two readings of one symbol: totals within ±5%, the skew class, clusters
that appeared, and earlier clusters that price has traded through since.

:func:`compare` is pure: the previous :class:`~analysis.metrics.Reading` (typically read back from
its record, :mod:`analysis.readings`), the current one, and the current map's
:class:`~analysis.liqmap.PricePath` (the real high and low of every bar behind it). The daily report
(:func:`analysis.commentary.daily`) words the result; ``liqmap report --since`` also writes it as
JSON (:meth:`Change.to_json`). Definitions and parameters: docs/methodology.md ("What changed").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .bars import iso
from .errors import InputError
from .liqmap import PricePath
from .metrics import Cluster, Reading, SkewClass

__all__ = ["ChangeParams", "SideTotal", "SweptCluster", "Change", "compare", "total_at"]


@dataclass(frozen=True)
class ChangeParams:
    """How two readings are compared. See docs/methodology.md ("What changed").

    distance
        The totals compared are the cumulative notional within ``±distance`` of price (a point of
        the readings' ``distances``; default 5%).
    match_pct
        A current cluster is the same as a previous one on its side when their prices are within
        ``match_pct`` of the current price (default 0.5%: half the minimum cluster separation).
    """

    distance: float = 0.05
    match_pct: float = 0.005

    def __post_init__(self) -> None:
        if not (0 < self.distance <= 0.5):
            raise InputError("the compared distance must be between 0 and 50% of price")
        if not (0 <= self.match_pct <= 0.1):
            raise InputError("the cluster match tolerance must be between 0 and 10% of price")


@dataclass(frozen=True)
class SideTotal:
    """One side's cumulative notional within ``±distance``: before and now."""

    side: str
    before: float
    after: float


@dataclass(frozen=True)
class SweptCluster:
    """A previous cluster that price traded through: ``extreme`` is the low (long side) or high
    (short side) of the bars since the previous reading."""

    cluster: Cluster
    extreme: float


@dataclass(frozen=True)
class Change:
    """The comparison of ``previous`` with ``current``.

    ``not_compared`` is ``(what, before, after)`` when the maps were built differently (band,
    window, kind or venues): then ``totals`` and ``appeared`` are empty, because a difference in
    them would say more about the build than about positioning. ``totals`` is also empty when a
    reading has no point at ``distance`` (``totals_missing`` says so). ``swept`` depends only on
    the price path; ``path_from_ms`` is the open of the first bar it covers (None: not checked,
    ``sweep_note`` says why), later than ``since_ms`` when the map's bars start after it.
    """

    since_ms: int
    until_ms: int
    price_before: float
    price_after: float
    skew_before: SkewClass
    skew_after: SkewClass
    distance: float
    not_compared: tuple[str, str, str] | None
    totals: tuple[SideTotal, ...]
    totals_missing: bool
    appeared: tuple[Cluster, ...]
    swept: tuple[SweptCluster, ...]
    path_from_ms: int | None
    sweep_note: str | None

    def to_json(self) -> dict:
        def cl(c: Cluster) -> dict:
            return {"side": c.side, "price": round(c.price, 8), "lo": round(c.lo, 8), "hi": round(c.hi, 8),
                    "distance_pct": round(c.distance_pct, 3), "notional_usd": round(c.notional, 2)}

        return {
            "since": iso(self.since_ms) if self.since_ms > 0 else None,
            "until": iso(self.until_ms) if self.until_ms > 0 else None,
            "price": {"before": self.price_before, "after": self.price_after},
            "skew": {"before": self.skew_before.key, "after": self.skew_after.key,
                     "changed": self.skew_before.key != self.skew_after.key},
            "not_compared": (None if self.not_compared is None else
                             {"what": self.not_compared[0], "before": self.not_compared[1],
                              "after": self.not_compared[2]}),
            "within": self.distance,
            "totals": {t.side: {"before_usd": round(t.before, 2), "after_usd": round(t.after, 2)}
                       for t in self.totals},
            "appeared": [cl(c) for c in self.appeared],
            "swept": [{**cl(s.cluster), "extreme": s.extreme} for s in self.swept],
            "sweeps_checked_from": iso(self.path_from_ms) if self.path_from_ms is not None else None,
            "sweep_note": self.sweep_note,
        }


def total_at(r: Reading, distance: float) -> tuple[float, float] | None:
    """``(long, short)`` cumulative notional of ``r`` within ``±distance``, or None when ``r`` was
    not read at that distance."""
    for d, lv, sv in zip(r.distances, r.cum_long, r.cum_short):
        if math.isclose(d, distance, rel_tol=1e-9, abs_tol=1e-12):
            return float(lv), float(sv)
    return None


def _build(r: Reading) -> dict[str, str]:
    return {"band": f"{r.band:g}", "map window": r.window, "map kind": r.kind, "venues": "+".join(r.venues)}


def _finite(x: float) -> float:
    return x if math.isfinite(x) and x > 0 else 0.0


def compare(previous: Reading, current: Reading, path: PricePath | None, params: ChangeParams | None = None) -> Change:
    """What changed from ``previous`` to ``current`` (same symbol; another is an :class:`InputError`)."""
    p = params or ChangeParams()
    if previous.symbol != current.symbol:
        raise InputError(f"the previous reading is for {previous.symbol[:32]!r}, not {current.symbol[:32]!r}")
    before, after = _build(previous), _build(current)
    differs = next(((k, before[k], after[k]) for k in before if before[k] != after[k]), None)

    totals: tuple[SideTotal, ...] = ()
    appeared: tuple[Cluster, ...] = ()
    missing = False
    if differs is None:
        a, b = total_at(previous, p.distance), total_at(current, p.distance)
        if a is None or b is None:
            missing = True
        else:
            totals = (SideTotal("short", _finite(a[1]), _finite(b[1])), SideTotal("long", _finite(a[0]), _finite(b[0])))
        tol = p.match_pct * current.price
        appeared = tuple(
            c for c in current.clusters
            if c.significant and not any(o.side == c.side and abs(o.price - c.price) <= tol for o in previous.clusters)
        )

    swept: list[SweptCluster] = []
    path_from: int | None = None
    note: str | None = None
    if path is None or not path.time.size:
        note = "this map has no price path (a finished snapshot)"
    elif previous.end_ms <= 0:
        note = "the previous reading has no time"
    elif previous.end_ms > current.end_ms > 0:
        note = "the previous reading is newer than this one"
    else:
        span = path.since(previous.end_ms)
        if span is None:
            path_from = previous.end_ms  # no bar since: nothing can have been traded through
        else:
            low, high, _ = span
            path_from = max(previous.end_ms, path.start_ms)
            for c in previous.clusters:
                if not c.significant:
                    continue
                if c.side == "long" and low <= c.price:
                    swept.append(SweptCluster(c, low))
                elif c.side == "short" and high >= c.price:
                    swept.append(SweptCluster(c, high))
    return Change(
        since_ms=previous.end_ms, until_ms=current.end_ms, price_before=previous.price, price_after=current.price,
        skew_before=previous.skew, skew_after=current.skew, distance=p.distance, not_compared=differs,
        totals=totals, totals_missing=missing, appeared=appeared, swept=tuple(swept), path_from_ms=path_from,
        sweep_note=note,
    )
