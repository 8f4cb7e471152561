"""The realized side of a report: the tape's liquidations of one symbol over the last 24 hours.

:func:`fetch_realized` reads a :class:`~analysis.tape.events.TapeReader` hour by hour and keeps at
most ``max_events`` events in memory: beyond that, events are merged into buckets of one minute
and ``merge_pct`` of price per venue and side (totals are kept exactly; the chart's bins are far
coarser than the buckets). :class:`RealizedTape` is what the chart overlays, the heatmap scatter
and the commentary read. Pure: only the reader protocol, never the bot's database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .events import FEED_SAMPLED, Gap, LiquidationEvent, TapeReader, feed_coverage

__all__ = ["RealizedTape", "RealizedParams", "fetch_realized", "compact", "DAY_MS", "HOUR_MS"]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True)
class RealizedParams:
    """How much of the tape a report reads.

    span_ms
        The realized window before the map's data time (24 h).
    chunk_ms
        One reader call covers at most this span, so a busy day is read in pieces.
    max_events
        Events kept in memory; beyond it they are merged into buckets (see :func:`compact`).
    merge_pct
        Price bucket of a merged event, as a fraction of its price (0.0005 = 0.05%).
    timeout_s
        A report waits at most this long for the tape, then goes on without it (with a note).
    """

    span_ms: int = DAY_MS
    chunk_ms: int = HOUR_MS
    max_events: int = 20_000
    merge_pct: float = 0.0005
    timeout_s: float = 5.0


@dataclass(frozen=True, eq=False)
class RealizedTape:
    """The tape of ``symbol`` over ``[start_ms, end_ms)`` for ``venues`` (the feeds asked for).

    ``events`` are oldest first; ``merged`` says they were bucketed (:func:`compact`).
    """

    symbol: str
    start_ms: int
    end_ms: int
    venues: tuple[str, ...]
    events: tuple[LiquidationEvent, ...]
    gaps: tuple[Gap, ...] = ()
    merged: bool = False
    notes: tuple[str, ...] = field(default=())

    def usd(self, side: str, venue: str | None = None) -> float:
        """Realized USD of one side (``long`` or ``short``), of one venue or all."""
        return float(sum(e.usd for e in self.events if e.side == side and (venue is None or e.venue == venue)))

    @property
    def long_usd(self) -> float:
        return self.usd("long")

    @property
    def short_usd(self) -> float:
        return self.usd("short")

    @property
    def empty(self) -> bool:
        return not self.events

    def coverage(self) -> dict[str, str]:
        """``{venue: "complete" | "sampled" | "unknown"}`` for the venues asked for."""
        return {v: feed_coverage(v) for v in self.venues}

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(time_ms, price, usd, is_long)`` as numpy arrays (for the charts)."""
        n = len(self.events)
        t = np.fromiter((e.time_ms for e in self.events), dtype=np.int64, count=n)
        p = np.fromiter((e.price for e in self.events), dtype=np.float64, count=n)
        u = np.fromiter((e.usd for e in self.events), dtype=np.float64, count=n)
        lg = np.fromiter((e.side == "long" for e in self.events), dtype=bool, count=n)
        return t, p, u, lg

    def gap_ms(self, venue: str) -> int:
        """How long ``venue``'s feed was down inside the window (overlapping gaps counted once)."""
        spans = sorted((max(g.start_ms, self.start_ms), min(g.end_ms if g.end_ms is not None else self.end_ms,
                                                            self.end_ms))
                       for g in self.gaps if g.venue == venue and g.symbol in (None, self.symbol))
        total, cur_lo, cur_hi = 0, None, None
        for lo, hi in spans:
            if hi <= lo:
                continue
            if cur_hi is None or lo > cur_hi:
                if cur_hi is not None and cur_lo is not None:
                    total += cur_hi - cur_lo
                cur_lo, cur_hi = lo, hi
            else:
                cur_hi = max(cur_hi, hi)
        if cur_hi is not None and cur_lo is not None:
            total += cur_hi - cur_lo
        return total

    def nbytes(self) -> int:
        return 120 * len(self.events) + 100 * len(self.gaps)

    def to_json(self) -> dict:
        return {
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "venues": {v: {"coverage": feed_coverage(v), "long_usd": round(self.usd("long", v), 2),
                           "short_usd": round(self.usd("short", v), 2), "events": sum(e.venue == v for e in self.events),
                           "gap_minutes": round(self.gap_ms(v) / 60_000, 1)} for v in self.venues},
            "long_usd": round(self.long_usd, 2),
            "short_usd": round(self.short_usd, 2),
            "merged": self.merged,
            "notes": list(self.notes),
        }


def compact(events: Sequence[LiquidationEvent], merge_pct: float = RealizedParams.merge_pct) -> list[LiquidationEvent]:
    """Merge events into (venue, side, minute, price bucket) sums: USD and quantity add up, the
    price is the USD-weighted mean, the flag ``sampled`` is kept if any member had it."""
    buckets: dict[tuple, list] = {}
    step = math.log1p(merge_pct)
    for e in events:
        if not (e.price > 0 and math.isfinite(e.price)):
            continue
        k = (e.venue, e.symbol, e.side, e.time_ms // 60_000, int(math.floor(math.log(e.price) / step)))
        b = buckets.get(k)
        if b is None:
            buckets[k] = [e.time_ms, e.price * e.usd, e.qty, e.usd, e.sampled]
        else:
            b[1] += e.price * e.usd
            b[2] += e.qty
            b[3] += e.usd
            b[4] = b[4] or e.sampled
    out = [
        LiquidationEvent(venue=k[0], symbol=k[1], time_ms=b[0], side=k[2],
                         price=(b[1] / b[3]) if b[3] > 0 else math.exp((k[4] + 0.5) * step), qty=b[2], usd=b[3],
                         sampled=b[4], key=f"merged:{k[3]}:{k[4]}")
        for k, b in buckets.items()
    ]
    out.sort(key=lambda e: e.time_ms)
    return out


def _usable(e: LiquidationEvent) -> bool:
    return (e.side in ("long", "short") and math.isfinite(e.price) and e.price > 0
            and math.isfinite(e.usd) and e.usd >= 0)


async def fetch_realized(
    reader: TapeReader, symbol: str, venues: Sequence[str], end_ms: int, params: RealizedParams = RealizedParams(),
) -> RealizedTape:
    """The tape of ``symbol`` over the ``params.span_ms`` before ``end_ms`` for ``venues``.

    Read ``params.chunk_ms`` at a time; memory stays within about ``max_events`` events. Venues
    without a known feed (``FEED_SAMPLED``) are not asked for. Events that are not usable (a side
    other than long/short, a non-finite or non-positive price or USD) are dropped with a note.
    """
    wanted = tuple(v for v in dict.fromkeys(venues) if v in FEED_SAMPLED)
    start = int(end_ms) - int(params.span_ms)
    if not wanted:
        return RealizedTape(symbol, start, int(end_ms), (), ())
    kept: list[LiquidationEvent] = []
    merged, dropped = False, 0
    for lo in range(start, int(end_ms), int(params.chunk_ms)):
        hi = min(lo + int(params.chunk_ms), int(end_ms))
        chunk = await reader.events(symbol, lo, hi, wanted)
        for e in chunk:
            if e.venue in wanted and lo <= e.time_ms < hi and _usable(e):
                kept.append(e)
            else:
                dropped += e.venue in wanted and not _usable(e)
        if len(kept) > params.max_events:
            kept = compact(kept, params.merge_pct)
            merged = True
    gaps = tuple(g for g in await reader.gaps(start, int(end_ms), wanted)
                 if g.venue in wanted and g.symbol in (None, symbol))
    notes = (f"tape: {dropped} unusable event(s) left out",) if dropped else ()
    kept.sort(key=lambda e: e.time_ms)
    return RealizedTape(symbol, start, int(end_ms), wanted, tuple(kept), gaps, merged, notes)
