"""Plumbing shared by the venue sources that page bars and open interest separately (Bybit, OKX).

Instrument lists with a TTL (``SymbolBook``), page ranges, joining candles with OI points, which
ranges the bar cache lacks, and coverage notes. Pure helpers over pandas frames and the cache.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import astuple, dataclass

import numpy as np
import pandas as pd

from ..bars import INTERVAL_MS, Bars, bar_fault, iso, show_value
from ..errors import InputError, SourceError
from ..symbols import parse_symbol, suggest
from ..windows import Window
from .cache import BarCache, columns_of
from .http import SingleFlight

__all__ = [
    "Instrument", "SymbolBook", "chunk_ranges", "join_bars", "missing_ranges", "coverage_notes", "load_cached",
    "store_fetched", "check_fetched", "last_closed_open", "tidy",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Instrument:
    """One tradable perpetual: canonical ``BASEQUOTE`` name and the venue's own id."""

    canonical: str
    venue_id: str
    base: str
    quote: str
    status: str
    contract_value: float = 1.0  # coin per contract (OKX ctVal); 1 where sizes are in coin


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort by time, drop duplicate times (keep the last one seen), integer times."""
    frame = frame.astype({"time": np.int64})
    return frame.drop_duplicates("time", keep="last").sort_values("time", kind="stable").reset_index(drop=True)


def chunk_ranges(start_ms: int, end_ms: int, step_ms: int, per_page: int) -> list[tuple[int, int]]:
    """Split bar opens ``start_ms..end_ms`` (inclusive) into ranges of at most ``per_page`` bars."""
    if end_ms < start_ms:
        return []
    out = []
    s = start_ms
    while s <= end_ms:
        e = min(end_ms, s + (per_page - 1) * step_ms)
        out.append((s, e))
        s = e + step_ms
    return out


def join_bars(klines: pd.DataFrame, oi_coin: pd.DataFrame, step_ms: int | None = None) -> pd.DataFrame:
    """Bars where both a candle and an OI point exist at the same open time; ``oi_usd = oi x close``.

    With ``step_ms``, OI stamps are first floored to the bar grid (the last point in a bar wins).
    Bars without an OI point, or with a zero one, are left out (a gap the model reports), never
    interpolated.
    """
    if step_ms:
        oi_coin = oi_coin.assign(time=(oi_coin["time"] // step_ms) * step_ms).drop_duplicates("time", keep="last")
    merged = klines.merge(oi_coin, on="time", how="inner", sort=True)
    merged["oi_usd"] = merged.pop("oi_coin") * merged["close"]
    cols = ["time", "open", "high", "low", "close", "oi_usd"] + [c for c in ("volume", "quote_volume") if c in merged]
    merged = merged[cols]
    # a zero OI point is no open interest to map: left out like a missing point. Anything else
    # (negative, non-finite) is kept so that check_fetched refuses it.
    return merged[merged["oi_usd"].to_numpy() != 0].reset_index(drop=True)


def missing_ranges(
    cached: pd.DataFrame, start_ms: int, end_ms: int, step_ms: int, covered_from: int | None = None,
) -> list[tuple[int, int]]:
    """Bar-open ranges of ``start_ms..end_ms`` the cache does not cover (before its first, after its last bar).

    ``covered_from`` is the earliest start already requested: a head before the first cached bar
    is not asked again when the venue simply had no data there (a young listing).
    """
    if len(cached) == 0:
        return [(start_ms, end_ms)]
    first, last = int(cached["time"].iloc[0]), int(cached["time"].iloc[-1])
    out = []
    if first - start_ms >= 2 * step_ms and (covered_from is None or start_ms < covered_from):
        out.append((start_ms, first - step_ms))
    if last + step_ms <= end_ms:
        out.append((last + step_ms, end_ms))
    return out


def _cover_key(venue: str, venue_id: str, interval: str) -> str:
    return f"cover:{venue}:{venue_id}:{interval}"


def load_cached(cache: BarCache | None, venue: str, venue_id: str, interval: str, start: int, end: int
                ) -> tuple[pd.DataFrame, int | None]:
    """Cached bars of ``start..end`` and the earliest start ever fetched for this series."""
    if cache is None:
        return pd.DataFrame(), None
    frame = cache.load(venue, venue_id, interval, start, end + INTERVAL_MS[interval])
    cover = cache.get_meta(_cover_key(venue, venue_id, interval))
    covered = int(cover[0]) if cover is not None and isinstance(cover[0], (int, float)) else None
    return frame, covered


def check_fetched(frame: pd.DataFrame, venue: str, venue_id: str, interval: str, *,
                  price_endpoint: str | Callable[[int], str], oi_endpoint: str) -> None:
    """Refuse a fetched batch holding any bar that breaks :func:`~analysis.bars.bar_fault`.

    The :class:`SourceError` names the venue, the endpoint the bad value came from (OI faults:
    ``oi_endpoint``; all others: ``price_endpoint``, or its value for the bar's open time) and
    the bar's time. Every venue passes here (through :func:`store_fetched`) before its bars
    reach the cache or a map.
    """
    if len(frame) == 0:
        return
    cols = columns_of(frame)
    fault = bar_fault(cols)
    if fault is None:
        return
    t = int(cols["time"][fault.row]) if math.isfinite(cols["time"][fault.row]) else 0
    if fault.column == "oi_usd":
        endpoint = oi_endpoint
    else:
        endpoint = price_endpoint(t) if callable(price_endpoint) else price_endpoint
    value = frame[fault.column].iloc[fault.row]
    raise SourceError(venue, endpoint, f"{venue_id} {interval} bar at {iso(t)}: {fault.reason} "
                      f"({fault.column} = {show_value(value)}); all {len(frame)} fetched bars refused, nothing cached")


def store_fetched(cache: BarCache | None, venue: str, venue_id: str, interval: str, new: pd.DataFrame,
                  start: int, covered: int | None, *, price_endpoint: str | Callable[[int], str],
                  oi_endpoint: str) -> None:
    """Check fetched bars (:func:`check_fetched`), write them in one transaction, and remember how
    far back the series was asked. A refused batch writes nothing: earlier cache content stays."""
    check_fetched(new, venue, venue_id, interval, price_endpoint=price_endpoint, oi_endpoint=oi_endpoint)
    if cache is None:
        return
    if len(new):
        cache.store(venue, venue_id, interval, new)
    if covered is None or start < covered:
        cache.put_meta(_cover_key(venue, venue_id, interval), start)


def coverage_notes(bars: Bars, window: Window, what: str) -> list[str]:
    """Provenance and, when the data is short of the window, how much of it is covered."""
    notes = [f"data: {what}, {bars.interval} bars ending {iso(bars.end_ms)}"]
    covered = bars.end_ms - bars.start_ms if len(bars) else 0
    if covered < 0.97 * window.duration_ms:
        notes.append(f"the data covers {covered / 86_400_000:.1f} of the {window.label} window's days; the map uses all of it")
    return notes


def last_closed_open(now_ms: int, step_ms: int) -> int:
    """Open time of the newest bar that has closed by ``now_ms``."""
    return (now_ms // step_ms) * step_ms - step_ms


class SymbolBook:
    """A venue's instrument list with a TTL; resolves user spellings with 'did you mean' suggestions.

    The list is kept in memory and, when a :class:`BarCache` is given, in its meta table (so a
    restart within the TTL sends no request). If a refresh fails while an older list is known,
    the older list keeps serving (logged); only with no list at all is the failure raised.
    """

    def __init__(self, venue: str, ttl_s: float, clock: Callable[[], float], cache: BarCache | None = None) -> None:
        self.venue = venue
        self.ttl_s = ttl_s
        self.cache = cache
        self._clock = clock
        self._by_name: dict[str, Instrument] = {}
        self._stamp = -math.inf
        self._flight = SingleFlight()

    @property
    def _key(self) -> str:
        return f"symbols:{self.venue}"

    def fresh(self) -> bool:
        return bool(self._by_name) and self._clock() - self._stamp < self.ttl_s

    def set(self, instruments: Sequence[Instrument], age_s: float = 0.0) -> None:
        self._by_name = {i.canonical: i for i in instruments}
        self._stamp = self._clock() - age_s

    async def get(self, load: Callable[[], Awaitable[list[Instrument]]]) -> dict[str, Instrument]:
        if self.fresh():
            return self._by_name
        if not self._by_name and self.cache is not None:
            stored = self.cache.get_meta(self._key)
            if stored is not None and time.time() - stored[1] < self.ttl_s:
                try:
                    self.set([Instrument(*row) for row in stored[0]], age_s=time.time() - stored[1])
                    return self._by_name
                except (TypeError, ValueError):
                    pass  # an unreadable stored list is simply refetched
        try:
            insts = await self._flight.do("symbols", load)
        except SourceError as exc:
            if self._by_name:
                log.warning("%s: symbol list refresh failed (%s); still using the previous list", self.venue, exc)
                return self._by_name
            raise
        self.set(insts)
        if self.cache is not None:
            self.cache.put_meta(self._key, [list(astuple(i)) for i in insts])
        return self._by_name

    def resolve(self, symbol: str) -> Instrument:
        pair = parse_symbol(symbol)
        inst = self._by_name.get(pair.symbol)
        if inst is None:
            hints = suggest(pair.symbol, self._by_name)
            hint = f"; did you mean {', '.join(hints)}?" if hints else ""
            raise InputError(f"{self.venue} has no trading {pair.symbol} perpetual{hint}")
        return inst
