"""OKX v5 USDT/USDC linear swaps: candles + contract open interest -> :class:`Bars`.

Endpoints and the documented limits this module follows (https://www.okx.com/docs-v5/en/):

``/api/v5/market/candles``
    the latest 1,440 candles of a bar size; ``limit`` <= 300; 40 requests / 2 s per IP.
``/api/v5/market/history-candles``
    older candles; ``limit`` <= 100 is used (older docs cap it at 100, newer at 300); 20
    requests / 2 s per IP.
    Both return rows ``[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]`` newest first, where
    ``ts`` is the bar open, ``vol`` is in contracts, ``volCcy`` in the base coin, ``volCcyQuote``
    in the quote coin and ``confirm`` is ``"0"`` for the candle still forming (dropped here).
    Pagination: ``after=ts`` returns records *earlier* than ``ts``, ``before=ts`` records *newer*
    than ``ts`` (both exclusive). A window is split into ranges of at most ``limit - 2`` bars
    requested concurrently with both bounds set; a full page that does not reach its range's
    start is continued with ``after`` = its oldest ``ts``.
``/api/v5/rubik/stat/contracts/open-interest-history``
    ``instId``, ``period`` (5m/15m/30m/1H/2H/4H, ...), ``begin``/``end`` (newer / earlier than),
    ``limit`` <= 100; rows ``[ts, oi, oiCcy, oiUsd]`` (contracts, coin, USD); **only the latest
    1,440 entries** of a period are served; 10 requests / 2 s per IP and instrument.
``/api/v5/public/instruments``
    ``instType=SWAP``; ``ctVal`` coin per contract, ``ctValCcy``, ``ctType``, ``settleCcy``,
    ``state`` (``live`` is tradable); 20 requests / 2 s.
``/api/v5/public/mark-price``
    ``instType=SWAP&instId=``; ``markPx`` (:meth:`OkxSource.mark_price`); 10 requests / 2 s.
``/api/v5/public/position-tiers``
    ``instType=SWAP&tdMode=isolated&instFamily=BTC-USDT`` (``instFamily`` is required for swaps; the
    model's formula is the isolated one); rows ``{uly, instFamily, instId, tier, minSz, maxSz, mmr,
    imr, maxLever, ...}`` with ``minSz``/``maxSz`` in contracts (``x ctVal`` = coin, so the caps
    follow the price) and ``mmr``/``imr`` as fractions; 10 requests / 2 s. Read once a day per
    symbol into the source's :class:`~.tiers.TierBook`.

Open interest in USD is ``oiCcy x close`` of the bar with the same open time (the same rule as
Bybit); when ``oiCcy`` is absent it is ``oi x ctVal`` coins. Because open-interest history stops
at 1,440 entries, a window whose bars at its own interval would need more (7d at 5m needs 2,016)
uses the nearest coarser interval that fits (7d -> 15m, 30d -> 30m) and says so in the notes.

``code != "0"`` is a SourceError quoting ``msg``. Code 50011 ("Rate limit reached", HTTP 429)
is honoured by the HTTP core (Retry-After / backoff, clamped); if it ever comes in a 200 body the
source pauses 2 s (the limit window; OKX sends no reset time) and retries twice.

Deadlines and sizes (the HTTP core's contract): every request has a total deadline of
``deadline_s`` (connect, headers, body) and the whole call ``budget_s``; when one page of a
window fails the others are cancelled, and a fetch nobody waits for any more is cancelled.
Decoded bodies are capped per endpoint, far above the largest legitimate page:

=================================  ===============================================  =======
endpoint                           largest legitimate response                      limit
=================================  ===============================================  =======
``candles``                        300 rows x ~100 bytes = ~30 KB                   2 MB
``history-candles``                100 rows x ~100 bytes = ~10 KB                   2 MB
``open-interest-history``          100 rows x ~60 bytes = ~6 KB                     1 MB
``instruments`` (``SWAP``)         a few hundred swaps x ~1 KB = well under 1 MB    32 MB
``mark-price``                     one swap, ~150 bytes                             256 KB
``position-tiers``                 one family's tiers, a few KB                     1 MB
=================================  ===============================================  =======
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
import pandas as pd

from ..bars import INTERVAL_MS, Bars, iso
from ..errors import InputError, SourceError
from ..symbols import QUOTES
from ..windows import Window
from .cache import BarCache
from ..margin import OPEN_CAP, Bracket, MarginTable
from .http import DEFAULT_DEADLINE_S, RateLimiter, SingleFlight, VenueClient, gather_or_cancel
from .series import (
    Instrument, SymbolBook, chunk_ranges, coverage_notes, join_bars, last_closed_open, load_cached, missing_ranges,
    store_fetched,
)
from .series import tidy as _tidy
from .tiers import TierBook, table_from_rows
from .validate import expect_dict, expect_list, field, numeric_columns, to_float, to_int

__all__ = [
    "OkxSource", "BASE_URL", "BARS", "CANDLES_LIMIT", "HISTORY_LIMIT", "OI_LIMIT", "MAX_ENTRIES", "MAX_BYTES",
    "data_of", "parse_candles", "parse_open_interest", "parse_instruments", "parse_mark_price", "interval_for",
    "parse_position_tiers",
]

VENUE = "okx"
BASE_URL = "https://www.okx.com"
CANDLES_LIMIT = 300
HISTORY_LIMIT = 100
OI_LIMIT = 100
MAX_ENTRIES = 1440  # candles: latest 1,440 rows; open-interest history: latest 1,440 entries
SYMBOLS_TTL_S = 3600.0
#: our interval -> OKX ``bar`` / ``period`` spelling (hour bars are upper case on OKX)
BARS: dict[str, str] = {"5m": "5m", "15m": "15m", "30m": "30m", "1h": "1H", "2h": "2H", "4h": "4H"}
_CANDLES = "/api/v5/market/candles"
_HISTORY = "/api/v5/market/history-candles"
_OI = "/api/v5/rubik/stat/contracts/open-interest-history"
_INSTRUMENTS = "/api/v5/public/instruments"
_MARK = "/api/v5/public/mark-price"
_TIERS = "/api/v5/public/position-tiers"
_MB = 1024 * 1024
CANDLES_MAX_BYTES = 2 * _MB  # 300 rows are ~30 KB
HISTORY_MAX_BYTES = 2 * _MB  # 100 rows are ~10 KB
OI_MAX_BYTES = 1 * _MB  # 100 rows are ~6 KB
INSTRUMENTS_MAX_BYTES = 32 * _MB  # every SWAP instrument, well under 1 MB
MARK_MAX_BYTES = 256 * 1024  # one swap, ~150 bytes
TIERS_MAX_BYTES = 1 * _MB  # one instrument family's tiers, a few KB
#: decoded-body limit per endpoint (see the module docstring)
MAX_BYTES: dict[str, int] = {
    _CANDLES: CANDLES_MAX_BYTES, _HISTORY: HISTORY_MAX_BYTES, _OI: OI_MAX_BYTES, _INSTRUMENTS: INSTRUMENTS_MAX_BYTES,
    _MARK: MARK_MAX_BYTES, _TIERS: TIERS_MAX_BYTES,
}
#: documented limits: requests per 2-second window, per endpoint
_LIMITS_PER_2S = {_CANDLES: 40, _HISTORY: 20, _OI: 10, _INSTRUMENTS: 20, _MARK: 10, _TIERS: 10}


def _limiter(per_2s: int, clock: Callable[[], float], sleep: Callable[[float], Awaitable[Any]]) -> RateLimiter:
    """A bucket refilling at 3/4 of the limit with a burst of the remaining 1/4: any 2 s window then
    holds at most ``burst + 2 x rate = per_2s`` requests."""
    return RateLimiter(0.375 * per_2s, max(1, per_2s // 4), clock=clock, sleep=sleep)


class _RateLimited(Exception):
    pass


# -- parsers -----------------------------------------------------------------------------------------

def data_of(payload: Any, endpoint: str) -> list[Any]:
    """The ``data`` array of an OKX response; SourceError when ``code != "0"`` or the shape is wrong."""
    body = expect_dict(payload, VENUE, endpoint)
    code = str(field(body, "code", VENUE, endpoint))
    if code != "0":
        msg = " ".join(str(body.get("msg") or "no message").split())[:160]
        if code == "50011":
            raise _RateLimited(f"rate limited (code 50011: {msg})")
        raise SourceError(VENUE, endpoint, f"code {code}: {msg}")
    return expect_list(field(body, "data", VENUE, endpoint), VENUE, endpoint, what="data")


def parse_candles(payload: Any, endpoint: str = _CANDLES) -> pd.DataFrame:
    """Closed candles (``confirm == "1"``) as ``time, open, high, low, close, volume, quote_volume``, oldest first.

    ``volume`` is ``volCcy`` (base coin) and ``quote_volume`` is ``volCcyQuote``.
    """
    rows = data_of(payload, endpoint)
    arr = numeric_columns(rows, [0, 1, 2, 3, 4, 6, 7, 8], VENUE, endpoint,
                          names=("ts", "o", "h", "l", "c", "volCcy", "volCcyQuote", "confirm"))
    closed = arr[:, 7] == 1
    frame = pd.DataFrame(arr[closed, :7], columns=["time", "open", "high", "low", "close", "volume", "quote_volume"])
    return _tidy(frame)


def parse_open_interest(payload: Any, ct_val: float | None = None, endpoint: str = _OI) -> pd.DataFrame:
    """Open interest in coin per ``ts``: ``oiCcy``, or ``oi x ct_val`` when ``oiCcy`` is empty."""
    rows = data_of(payload, endpoint)
    t = np.empty(len(rows))
    coin = np.empty(len(rows))
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) < 2:
            raise SourceError(VENUE, endpoint, f"row {i} should be [ts, oi, oiCcy, oiUsd], got {str(row)[:60]}")
        t[i] = to_int(row[0], VENUE, endpoint, what=f"ts in row {i}")
        if len(row) > 2 and row[2] not in ("", None):
            coin[i] = to_float(row[2], VENUE, endpoint, what=f"oiCcy in row {i}")
        elif ct_val is not None:
            coin[i] = to_float(row[1], VENUE, endpoint, what=f"oi in row {i}") * ct_val
        else:
            raise SourceError(VENUE, endpoint, f"row {i} has no oiCcy and the contract value is unknown")
    return _tidy(pd.DataFrame({"time": t, "oi_coin": coin}))


def parse_instruments(payload: Any, endpoint: str = _INSTRUMENTS) -> list[Instrument]:
    """Linear USDT/USDC swaps (any state) with their contract value in coin."""
    out = []
    for i, row in enumerate(data_of(payload, endpoint)):
        where = f"instrument {i}"
        inst_id = field(row, "instId", VENUE, endpoint, where=where)
        if not isinstance(inst_id, str):
            raise SourceError(VENUE, endpoint, f"{where}: instId should be a string")
        if row.get("instType", "SWAP") != "SWAP" or field(row, "ctType", VENUE, endpoint, where=where) != "linear":
            continue
        parts = inst_id.split("-")
        if len(parts) != 3 or parts[2] != "SWAP" or parts[1] not in QUOTES:
            continue
        base, quote = parts[0].upper(), parts[1].upper()
        ct_ccy = field(row, "ctValCcy", VENUE, endpoint, where=where)
        if ct_ccy != base:
            continue  # contract sized in something other than the base coin: not convertible here
        ct_val = to_float(field(row, "ctVal", VENUE, endpoint, where=where), VENUE, endpoint, what=f"ctVal of {inst_id}")
        if ct_val <= 0:
            raise SourceError(VENUE, endpoint, f"ctVal of {inst_id} must be positive, got {ct_val:g}")
        state = str(field(row, "state", VENUE, endpoint, where=where))
        out.append(Instrument(f"{base}{quote}", inst_id, base, quote, state, ct_val))
    return out


def parse_mark_price(payload: Any, inst_id: str, endpoint: str = _MARK) -> float:
    """``markPx`` of ``inst_id`` from a mark-price response."""
    for row in data_of(payload, endpoint):
        if isinstance(row, dict) and row.get("instId") == inst_id:
            px = to_float(field(row, "markPx", VENUE, endpoint), VENUE, endpoint, what=f"markPx of {inst_id}")
            if px <= 0:
                raise SourceError(VENUE, endpoint, f"markPx of {inst_id} is not positive")
            return px
    raise SourceError(VENUE, endpoint, f"no mark price for {inst_id} in the response")


def parse_position_tiers(payload: Any, family: str, ct_val: float, endpoint: str = _TIERS) -> list[Bracket]:
    """``family``'s tiers as brackets with caps in coin (``maxSz`` contracts x ``ct_val``).

    Rows of other families are ignored; the highest tier's cap is open-ended. ``mmr`` must be a
    fraction below ``imr`` (checked by :func:`~.tiers.table_from_rows`).
    """
    out = []
    for i, row in enumerate(data_of(payload, endpoint)):
        where = f"tier row {i}"
        fam = (row.get("instFamily") or row.get("uly")) if isinstance(row, dict) else None
        if fam not in (None, "") and fam != family:
            continue
        max_sz = to_float(field(row, "maxSz", VENUE, endpoint, where=where), VENUE, endpoint, what=f"maxSz ({where})")
        mmr = to_float(field(row, "mmr", VENUE, endpoint, where=where), VENUE, endpoint, what=f"mmr ({where})")
        lev = to_float(field(row, "maxLever", VENUE, endpoint, where=where), VENUE, endpoint, what=f"maxLever ({where})")
        out.append(Bracket(max_sz * ct_val, lev, mmr))
    if out:
        top = max(range(len(out)), key=lambda k: out[k].cap_usd)
        out[top] = Bracket(OPEN_CAP, out[top].max_leverage, out[top].mmr)
    return out


def interval_for(window: Window) -> tuple[str, str | None]:
    """``(interval, note)``: the window's interval, or the nearest coarser one that fits in 1,440 entries."""
    order = list(BARS)
    if window.interval not in BARS:
        raise InputError(f"okx has no {window.interval} open-interest history; intervals: {', '.join(BARS)}")
    for interval in order[order.index(window.interval):]:
        if window.duration_ms // INTERVAL_MS[interval] <= MAX_ENTRIES:
            if interval == window.interval:
                return interval, None
            return interval, (
                f"okx serves only the latest {MAX_ENTRIES:,} open-interest entries per series, so the "
                f"{window.label} window uses {interval} bars instead of {window.interval}"
            )
    raise InputError(f"okx cannot serve a {window.label} window: its open-interest history stops at {MAX_ENTRIES:,} entries")


# -- the source ----------------------------------------------------------------------------------------

class OkxSource:
    """OKX linear swaps as :class:`Bars` (candles + contract open interest), cached and rate-limited.

    Same construction as :class:`~analysis.sources.bybit.BybitSource`: ``transport``, ``sleep``,
    ``clock`` and ``now_ms`` are injectable; ``cache`` is the shared :class:`BarCache`.
    """

    name = VENUE

    def __init__(
        self,
        *,
        client: VenueClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        cache: BarCache | None = None,
        recorder: Any = None,
        base_url: str = BASE_URL,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        now_ms: Callable[[], int] | None = None,
        symbols_ttl_s: float = SYMBOLS_TTL_S,
        budget_s: float = 30.0,
        deadline_s: float = DEFAULT_DEADLINE_S,
    ) -> None:
        self._sleep = sleep
        self._clock = clock
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.limiters = {path: _limiter(n, clock, sleep) for path, n in _LIMITS_PER_2S.items()}
        self.client = client or VenueClient(
            VENUE, base_url, transport=transport, sleep=sleep, clock=clock, recorder=recorder, budget_s=budget_s,
            deadline_s=deadline_s,
        )
        self.cache = cache
        self.book = SymbolBook(VENUE, symbols_ttl_s, clock, cache)
        self._flight = SingleFlight()
        self.tiers = TierBook(VENUE, self._load_tiers, cache=cache, now=lambda: self._now_ms() / 1000)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def margin_tiers(self, symbol: str) -> MarginTable:
        """The swap's position tiers (refreshed daily; last good copy, else the shipped table)."""
        inst = await self.resolve(symbol)
        return await self.tiers.table(inst.canonical)

    async def _load_tiers(self, canonical: str) -> dict[str, MarginTable]:
        inst = await self.resolve(canonical)
        family = inst.venue_id.removesuffix("-SWAP")
        params = {"instType": "SWAP", "tdMode": "isolated", "instFamily": family}
        rows = parse_position_tiers(await self._get(_TIERS, params), family, inst.contract_value)
        if not rows:
            return {}
        return {inst.canonical: table_from_rows(VENUE, _TIERS, f"OKX {inst.venue_id} isolated tiers", rows,
                                                cap_unit="coin")}

    async def _get(self, path: str, params: dict[str, Any]) -> Any:
        """GET through the endpoint's own limiter; code 50011 in a 200 body pauses and retries twice."""
        limiter = self.limiters[path]
        for attempt in range(3):
            await limiter.acquire()
            payload = await self.client.get_json(path, params, max_bytes=MAX_BYTES[path])
            try:
                data_of(payload, path)
                return payload
            except _RateLimited as exc:
                if attempt == 2:
                    raise SourceError(VENUE, path, f"{exc}; gave up after 3 attempts", retry_after=2.0) from None
                limiter.pause(2.0)  # OKX limits are per 2-second window
        raise AssertionError("unreachable")  # pragma: no cover

    # -- symbols ---------------------------------------------------------------------------------
    async def _load_instruments(self) -> list[Instrument]:
        insts = parse_instruments(await self._get(_INSTRUMENTS, {"instType": "SWAP"}))
        if not insts:
            raise SourceError(VENUE, _INSTRUMENTS, "the instrument list has no linear USDT/USDC swaps")
        return insts

    async def symbols(self) -> list[str]:
        """Canonical names (``BTCUSDT``) of OKX's live linear USDT/USDC swaps, cached for an hour."""
        return sorted(k for k, v in (await self.book.get(self._load_instruments)).items() if v.status == "live")

    async def resolve(self, symbol: str) -> Instrument:
        """The live swap for a user spelling; InputError when it is unknown or not live."""
        await self.book.get(self._load_instruments)
        inst = self.book.resolve(symbol)
        if inst.status != "live":
            raise InputError(f"okx {inst.venue_id} is not trading (state {inst.status!r}); try another venue")
        return inst

    async def mark_price(self, symbol: str) -> float:
        """OKX's current mark price of the swap."""
        inst = await self.resolve(symbol)
        return parse_mark_price(await self._get(_MARK, {"instType": "SWAP", "instId": inst.venue_id}), inst.venue_id)

    # -- bars ------------------------------------------------------------------------------------
    async def bars(self, symbol: str, window: Window) -> Bars:
        """The window's bars: cached ones plus only the missing ones fetched (concurrent pages)."""
        inst = await self.resolve(symbol)
        interval, note = interval_for(window)
        step = INTERVAL_MS[interval]
        now = self._now_ms()
        end = last_closed_open(now, step)
        start = end - (window.duration_ms // step - 1) * step
        frame = await self._flight.do((inst.venue_id, interval, start, end),
                                      lambda: self._series(inst, interval, start, end, now))
        if len(frame) == 0:
            raise SourceError(VENUE, _OI, f"no bars with open interest for {inst.venue_id} between {iso(start)} and {iso(end)}")
        bars = Bars.from_frame(frame, venue=VENUE, symbol=inst.canonical, interval=interval)
        notes = coverage_notes(bars, window, f"OKX {inst.venue_id} candles x contract open interest (oiCcy x close)")
        return bars.with_notes(*notes, *([note] if note else []))

    async def _series(self, inst: Instrument, interval: str, start: int, end: int, now: int) -> pd.DataFrame:
        step = INTERVAL_MS[interval]
        cached, covered = load_cached(self.cache, VENUE, inst.venue_id, interval, start, end)
        fetched = [await self._fetch(inst, interval, s, e, now) for s, e in missing_ranges(cached, start, end, step, covered)]
        new = pd.concat(fetched, ignore_index=True) if fetched else pd.DataFrame()
        recent_from = last_closed_open(now, step) - (MAX_ENTRIES - 2) * step  # as in _fetch

        def price_endpoint(t: int) -> str:
            return _CANDLES if t >= recent_from else _HISTORY

        store_fetched(self.cache, VENUE, inst.venue_id, interval, new, start, covered,
                      price_endpoint=price_endpoint, oi_endpoint=_OI)
        parts = [f for f in (cached, new) if len(f)]
        if not parts:
            return pd.DataFrame(columns=["time", "open", "high", "low", "close", "oi_usd"])
        out = _tidy(pd.concat(parts, ignore_index=True))
        return out[(out["time"] >= start) & (out["time"] <= end)].reset_index(drop=True)

    async def _fetch(self, inst: Instrument, interval: str, start: int, end: int, now: int) -> pd.DataFrame:
        """Candles and OI for bar opens ``start..end``; recent candles from ``candles``, older from ``history-candles``."""
        step = INTERVAL_MS[interval]
        bar = BARS[interval]
        recent_from = last_closed_open(now, step) - (MAX_ENTRIES - 2) * step  # inside the latest 1,440 rows
        jobs = []
        if end >= recent_from:
            s = max(start, recent_from)
            jobs += [self._candle_range(_CANDLES, inst.venue_id, bar, a, b, CANDLES_LIMIT)
                     for a, b in chunk_ranges(s, end, step, CANDLES_LIMIT - 2)]
        if start < recent_from:
            e = min(end, recent_from - step)
            jobs += [self._candle_range(_HISTORY, inst.venue_id, bar, a, b, HISTORY_LIMIT)
                     for a, b in chunk_ranges(start, e, step, HISTORY_LIMIT - 2)]
        n_candle_jobs = len(jobs)
        jobs += [self._oi_range(inst, bar, a, b) for a, b in chunk_ranges(start, end, step, OI_LIMIT - 2)]
        results = await gather_or_cancel(*jobs)
        candles = _tidy(pd.concat(results[:n_candle_jobs], ignore_index=True))
        oi = _tidy(pd.concat(results[n_candle_jobs:], ignore_index=True))
        candles = candles[(candles["time"] >= start) & (candles["time"] <= end)]
        return join_bars(candles, oi, step)

    async def _candle_range(self, path: str, inst_id: str, bar: str, a: int, b: int, limit: int) -> pd.DataFrame:
        """Candles with open in ``a..b`` (``before``/``after`` are exclusive); continues a full page."""
        frames = []
        after = b + 1
        for _ in range(50):
            params = {"instId": inst_id, "bar": bar, "after": after, "before": a - 1, "limit": limit}
            payload = await self._get(path, params)
            frame = parse_candles(payload, path)
            frames.append(frame)
            raw = len(data_of(payload, path))
            oldest = int(frame["time"].iloc[0]) if len(frame) else None
            if raw < limit or oldest is None or oldest <= a:
                break
            after = oldest
        return pd.concat(frames, ignore_index=True)

    async def _oi_range(self, inst: Instrument, period: str, a: int, b: int) -> pd.DataFrame:
        """Open interest with ``ts`` in ``a..b`` (``begin``/``end`` exclusive); continues a full page."""
        frames = []
        end = b + 1
        for _ in range(50):
            params = {"instId": inst.venue_id, "period": period, "begin": a - 1, "end": end, "limit": OI_LIMIT}
            frame = parse_open_interest(await self._get(_OI, params), inst.contract_value)
            frames.append(frame)
            if len(frame) < OI_LIMIT or int(frame["time"].iloc[0]) <= a:
                break
            end = int(frame["time"].iloc[0])
        return pd.concat(frames, ignore_index=True)
