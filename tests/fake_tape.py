"""An in-memory TapeReader (the protocol of analysis/tape/events.py) and synthetic tapes for tests.

Everything here is synthetic: made-up events placed on a series' own prices, never real data.
"""

from __future__ import annotations

import asyncio
from typing import Sequence, cast

import numpy as np

from analysis.bars import Bars
from analysis.tape.events import FEED_SAMPLED, Coverage, Gap, LiquidationEvent, Side


class FakeTape:
    """Events, gaps and the recorder's spans held in lists; counts calls; can fail or be slow.

    ``covered`` None: the recorder ran all the time for every symbol and venue (a tape that was
    always on); a list: only those spans were recorded (``[]``: the recorder never ran).
    """

    def __init__(self, events: Sequence[LiquidationEvent] = (), gaps: Sequence[Gap] = (), *,
                 covered: Sequence[Coverage] | None = None,
                 fail: BaseException | None = None, delay: float = 0.0) -> None:
        self._events = sorted(events, key=lambda e: e.time_ms)
        self._gaps = list(gaps)
        self._covered = None if covered is None else list(covered)
        self.fail = fail
        self.delay = delay
        self.calls = 0

    async def events(self, symbol: str, start_ms: int, end_ms: int,
                     venues: Sequence[str] | None = None) -> list[LiquidationEvent]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return [e for e in self._events if e.symbol == symbol and start_ms <= e.time_ms < end_ms
                and (venues is None or e.venue in venues)]

    async def gaps(self, start_ms: int, end_ms: int, venues: Sequence[str] | None = None) -> list[Gap]:
        if self.fail is not None:
            raise self.fail
        return [g for g in self._gaps if g.start_ms < end_ms and (g.end_ms is None or g.end_ms > start_ms)
                and (venues is None or g.venue in venues)]

    async def coverage(self, symbol: str, start_ms: int, end_ms: int,
                       venues: Sequence[str] | None = None) -> list[Coverage]:
        if self.fail is not None:
            raise self.fail
        if self._covered is None:
            return [Coverage(v, symbol, 0, 2**62) for v in FEED_SAMPLED if venues is None or v in venues]
        return [c for c in self._covered if c.symbol == symbol and c.start_ms < end_ms and c.end_ms > start_ms
                and (venues is None or c.venue in venues)]


def event(venue: str, time_ms: int, side: str, price: float, usd: float, symbol: str = "BTCUSDT",
          key: str | None = None) -> LiquidationEvent:
    return LiquidationEvent(venue, symbol, int(time_ms), cast(Side, side), float(price), usd / price, float(usd),
                            FEED_SAMPLED.get(venue, False), key or f"{venue}-{time_ms}-{side}-{price}")


def synthetic_events(bars: Bars, span_ms: int, *, venues: Sequence[str] = ("bybit", "binance", "okx"),
                     per_bar: int = 2, seed: int = 0) -> list[LiquidationEvent]:
    """Synthetic liquidations over the last ``span_ms`` of ``bars``: longs at each bar's low, shorts at
    its high, sized by the bar's range (a rough, made-up shape; not data)."""
    rng = np.random.default_rng(seed)
    out = []
    start = int(bars.end_ms) - span_ms
    for i in np.nonzero(bars.time >= start)[0]:
        rng_pct = (bars.high[i] - bars.low[i]) / bars.open[i]
        for k in range(per_bar):
            v = venues[(i + k) % len(venues)]
            t = int(bars.time[i]) + int(rng.integers(0, bars.interval_ms))
            out.append(event(v, t, "long", float(bars.low[i]), 2e4 * (1 + 400 * rng_pct) * rng.random(), key=f"l{i}{k}"))
            out.append(event(v, t, "short", float(bars.high[i]), 2e4 * (1 + 400 * rng_pct) * rng.random(), key=f"s{i}{k}"))
    return out
