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
from typing import Iterable, Sequence

import numpy as np

from .events import FEED_SAMPLED, Coverage, Gap, LiquidationEvent, TapeReader, feed_coverage

__all__ = ["RealizedTape", "RealizedParams", "fetch_realized", "compact", "DAY_MS", "HOUR_MS", "RECORDED"]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
#: how much of the window a venue's recorder covered: ``full``, ``partial`` or ``none`` (never ran)
RECORDED = ("full", "partial", "none")


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
    full_slack_ms
        A venue counts as recorded over the whole window when its recorded time (coverage minus
        gaps) falls short of the window by at most this much: the recorder's coverage heartbeat
        lags by up to a minute, and a reconnect takes a second or two.
    """

    span_ms: int = DAY_MS
    chunk_ms: int = HOUR_MS
    max_events: int = 20_000
    merge_pct: float = 0.0005
    timeout_s: float = 5.0
    full_slack_ms: int = 120_000


@dataclass(frozen=True, eq=False)
class RealizedTape:
    """The tape of ``symbol`` over ``[start_ms, end_ms)`` for ``venues`` (the feeds asked for).

    ``events`` are oldest first; ``merged`` says they were bucketed (:func:`compact`). ``covered``
    holds the recorder's spans (:class:`~analysis.tape.events.Coverage`): "nothing on the tape"
    reads as "$0 realized" only where they cover the window; where they do not, the tape was not
    recorded (:meth:`recorded`).
    """

    symbol: str
    start_ms: int
    end_ms: int
    venues: tuple[str, ...]
    events: tuple[LiquidationEvent, ...]
    gaps: tuple[Gap, ...] = ()
    merged: bool = False
    notes: tuple[str, ...] = field(default=())
    covered: tuple[Coverage, ...] = ()
    full_slack_ms: int = RealizedParams.full_slack_ms

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

    def _clip(self, lo: int, hi: int | None) -> tuple[int, int]:
        return max(lo, self.start_ms), min(self.end_ms if hi is None else hi, self.end_ms)

    def _gap_spans(self, venue: str) -> list[tuple[int, int]]:
        return _union(self._clip(g.start_ms, g.end_ms) for g in self.gaps
                      if g.venue == venue and g.symbol in (None, self.symbol))

    def gap_ms(self, venue: str) -> int:
        """How long ``venue``'s feed was down inside the window (overlapping gaps counted once)."""
        return _length(self._gap_spans(venue))

    def _spans(self, venue: str) -> list[tuple[int, int]]:
        return _union(self._clip(c.start_ms, c.end_ms) for c in self.covered
                      if c.venue == venue and c.symbol == self.symbol)

    def covered_ms(self, venue: str) -> int:
        """How much of the window the recorder ran for ``venue`` and this symbol (gaps included)."""
        return _length(self._spans(venue))

    def recorded_ms(self, venue: str) -> int:
        """How much of the window the recorder covered for ``venue`` and this symbol, gaps taken out."""
        spans = self._spans(venue)
        return _length(spans) - _overlap(spans, self._gap_spans(venue))

    def recorded(self, venue: str | None = None) -> str:
        """``full`` (recorded over the whole window, within ``full_slack_ms``), ``partial`` (part of
        it, or events without a known span) or ``none`` (the recorder did not run for it) for one
        venue; for all of them together without ``venue``: ``none`` only if every venue is ``none``,
        ``full`` only if every venue is ``full``."""
        if venue is None:
            states = {self.recorded(v) for v in self.venues}
            if not states or states == {"none"}:
                return "none"
            return "full" if states == {"full"} else "partial"
        ms = self.recorded_ms(venue)
        if ms >= (self.end_ms - self.start_ms) - self.full_slack_ms:
            return "full"
        if ms > 0 or any(e.venue == venue for e in self.events):
            return "partial"
        return "none"

    def recorded_note(self) -> str:
        """A short phrase for the charts on what was not recorded, e.g. ``OKX not recorded · Bybit
        10.0h of 24h`` (recorded time, gaps taken out); ``""`` when every venue was recorded over
        the whole window."""
        from ..venues import display_name

        span = f"{(self.end_ms - self.start_ms) / HOUR_MS:g}h"
        absent = [display_name(v) for v in self.venues if self.recorded(v) == "none"]
        parts = [", ".join(absent) + " not recorded"] if absent else []
        for v in self.venues:
            if self.recorded(v) == "partial":
                ms = self.recorded_ms(v)
                parts.append(f"{display_name(v)} {ms / HOUR_MS:.1f}h of {span}" if ms > 0
                             else f"{display_name(v)} span not known")
        return " · ".join(parts)

    @property
    def not_recorded(self) -> bool:
        """Nothing was recorded: no span of the recorder in the window and no event (not "$0")."""
        return self.empty and self.recorded() == "none"

    def nbytes(self) -> int:
        return 120 * len(self.events) + 100 * len(self.gaps)

    def to_json(self) -> dict:
        return {
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "recorded": self.recorded(),
            "venues": {v: {"coverage": feed_coverage(v), "recorded": self.recorded(v),
                           "recorded_minutes": round(self.recorded_ms(v) / 60_000, 1),
                           "long_usd": round(self.usd("long", v), 2),
                           "short_usd": round(self.usd("short", v), 2), "events": sum(e.venue == v for e in self.events),
                           "gap_minutes": round(self.gap_ms(v) / 60_000, 1)} for v in self.venues},
            "long_usd": round(self.long_usd, 2),
            "short_usd": round(self.short_usd, 2),
            "merged": self.merged,
            "notes": list(self.notes),
        }


def _union(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Disjoint, sorted spans covering the same time as ``spans`` (empty ones dropped)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(s for s in spans if s[1] > s[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _length(spans: Sequence[tuple[int, int]]) -> int:
    return sum(hi - lo for lo, hi in spans)


def _overlap(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> int:
    """Time in both of two disjoint sorted span lists."""
    total, i, j = 0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


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
    The recorder's spans (``reader.coverage``) and the feed gaps say which of it was recorded.
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
    covered = tuple(c for c in await reader.coverage(symbol, start, int(end_ms), wanted)
                    if c.venue in wanted and c.symbol == symbol)
    notes = (f"tape: {dropped} unusable event(s) left out",) if dropped else ()
    kept.sort(key=lambda e: e.time_ms)
    return RealizedTape(symbol, start, int(end_ms), wanted, tuple(kept), gaps, merged, notes, covered,
                        int(params.full_slack_ms))
