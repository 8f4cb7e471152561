"""Bybit v5 USDT/USDC perpetuals (``category=linear``): klines + open interest -> :class:`Bars`.

Endpoints and the documented limits this module follows (bybit-exchange.github.io/docs/v5):

``/v5/market/kline``
    ``interval`` 1,3,5,15,30,60,120,240,360,720,D,W,M; ``start``/``end`` in ms; ``limit`` 1..1000.
    ``list`` rows are strings ``[startTime, open, high, low, close, volume, turnover]``, newest
    first; for linear contracts ``volume`` is in the base coin and ``turnover`` in the quote coin.
    Bybit publishes no taker split, so the model's side model falls back (``auto`` -> neutral).
    The newest row is the candle still forming; it is dropped.
``/v5/market/open-interest``
    ``intervalTime`` 5min,15min,30min,1h,4h,1d; ``startTime``/``endTime``; ``limit`` 1..200;
    ``cursor`` from ``nextPageCursor`` (also sent with a full last page, so a page reaching the
    chunk's start ends it). Rows are newest first and in the base coin for linear contracts.
    The current docs define ``openInterest`` as *the sum of both sides* and ``singleOpenInterest``
    as the single side (their example: exactly half). Open interest here is single-sided like
    Binance's ``sumOpenInterest`` and OKX's ``oiCcy``, so ``singleOpenInterest`` is used, or
    ``openInterest / 2`` when a response lacks it. It becomes USD as ``coin x close`` of the bar
    with the same open time. History reaches back to the symbol's launch (no 30-day limit).
``/v5/market/instruments-info``
    ``status=Trading`` by default, ``limit`` 1..1000, ``cursor`` pagination (there are more than
    500 linear symbols). Only ``LinearPerpetual`` contracts are kept.
``/v5/market/tickers``
    the mark price of one symbol.
``/v5/market/risk-limit``
    public; ``category=linear&symbol=``; rows ``{id, symbol, riskLimitValue, maintenanceMargin,
    initialMargin, isLowestRisk, maxLeverage, mmDeduction}`` and a ``nextPageCursor`` (without a
    symbol the docs page 15..30 symbols per request; with one the cursor is followed all the same).
    ``riskLimitValue`` is the tier's notional cap in the quote coin; ``maintenanceMargin`` and
    ``initialMargin`` are percentages (the documented example: ``"0.5"``, ``"1"`` at ``100x``), which
    the parser checks against ``maxLeverage`` (``initialMargin x maxLeverage`` near 100) before
    dividing by 100. Read once a day per symbol into the source's :class:`~.tiers.TierBook`.

Rate limits: public market data is limited per IP to 600 requests per 5 s; Bybit asks not to run
near the edge, so this source sends at most 20 requests/s. ``HTTP 403 "access too frequent"``
means the IP is blocked for at least 10 minutes: the source stops sending for 10 minutes and says
so (a 403 from a region block gets a message naming that instead, with the same pause).
``retCode 10006`` ("Too many visits!") pauses the source until ``X-Bapi-Limit-Reset-Timestamp``
(clamped to :data:`MAX_RESET_WAIT_S`; absent, past or unreadable: 1 s) and retries twice before
giving up. Any other ``retCode != 0`` is a SourceError quoting ``retMsg``.

Deadlines and sizes (the HTTP core's contract): every request has a total deadline of
``deadline_s`` (connect, headers, body) and the whole call ``budget_s``; when one page of a
window fails the others are cancelled, and a fetch nobody waits for any more is cancelled.
Decoded bodies are capped per endpoint, far above the largest legitimate page:

==========================  ======================================================  =======
endpoint                    largest legitimate response                             limit
==========================  ======================================================  =======
``kline``                   1,000 rows x ~100 bytes = ~100 KB                       4 MB
``open-interest``           200 points x ~90 bytes = ~18 KB                         2 MB
``instruments-info``        1,000 instruments x ~1.8 KB = ~1.8 MB per page          32 MB
``tickers``                 one symbol, ~1.2 KB                                     256 KB
``risk-limit``              one symbol's tiers, a few KB                            2 MB
==========================  ======================================================  =======

Pages of a window are fetched concurrently (chunks sized to one page each), merged, de-duplicated
and sorted; bars are cached per (venue, symbol, interval) in the shared :class:`BarCache` and
refreshed incrementally (only bars after the newest cached one are fetched).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
import pandas as pd

from ..bars import INTERVAL_MS, Bars, iso
from ..errors import InputError, SourceError
from ..windows import Window
from .cache import BarCache
from ..margin import Bracket, MarginTable
from .http import DEFAULT_DEADLINE_S, RateLimiter, SingleFlight, VenueClient, gather_or_cancel, server_wait
from .series import (
    Instrument, SymbolBook, chunk_ranges, coverage_notes, join_bars, last_closed_open, load_cached, missing_ranges,
    store_fetched,
)
from .series import tidy as _tidy
from .tiers import TierBook, table_from_rows
from .validate import expect_dict, expect_list, field, numeric_columns, to_float, to_int

__all__ = [
    "BybitSource", "BASE_URL", "INTERVALS", "KLINE_LIMIT", "OI_LIMIT", "INSTRUMENTS_LIMIT", "MAX_BYTES", "MAX_RESET_WAIT_S",
    "result_of", "parse_klines", "parse_open_interest", "parse_instruments", "parse_ticker", "parse_risk_limits",
    "Instrument", "SymbolBook", "chunk_ranges", "join_bars", "missing_ranges", "coverage_notes", "load_cached",
    "store_fetched",
]

VENUE = "bybit"
BASE_URL = "https://api.bybit.com"
KLINE_LIMIT = 1000
OI_LIMIT = 200
INSTRUMENTS_LIMIT = 1000
REQUESTS_PER_S = 20.0  # documented IP limit: 600 per 5 s; we keep well below it
BLOCK_403_S = 600.0  # "403, access too frequent": wait at least 10 minutes
SYMBOLS_TTL_S = 3600.0
#: our interval -> (kline ``interval``, open-interest ``intervalTime``)
INTERVALS: dict[str, tuple[str, str]] = {
    "5m": ("5", "5min"), "15m": ("15", "15min"), "30m": ("30", "30min"),
    "1h": ("60", "1h"), "4h": ("240", "4h"), "1d": ("D", "1d"),
}
_KLINE = "/v5/market/kline"
_OI = "/v5/market/open-interest"
_INSTRUMENTS = "/v5/market/instruments-info"
_TICKERS = "/v5/market/tickers"
_RISK = "/v5/market/risk-limit"
MAX_RESET_WAIT_S = 10.0  # longest pause taken from X-Bapi-Limit-Reset-Timestamp (Bybit's windows are seconds)
_MB = 1024 * 1024
KLINE_MAX_BYTES = 4 * _MB  # 1,000 rows are ~100 KB
OI_MAX_BYTES = 2 * _MB  # 200 points are ~18 KB
INSTRUMENTS_MAX_BYTES = 32 * _MB  # 1,000 instruments are ~1.8 MB
TICKERS_MAX_BYTES = 256 * 1024  # one symbol, ~1.2 KB
RISK_MAX_BYTES = 2 * _MB  # one symbol's tiers (tens of rows x ~200 bytes), or 30 symbols' without a symbol
#: decoded-body limit per endpoint (see the module docstring)
MAX_BYTES: dict[str, int] = {
    _KLINE: KLINE_MAX_BYTES, _OI: OI_MAX_BYTES, _INSTRUMENTS: INSTRUMENTS_MAX_BYTES, _TICKERS: TICKERS_MAX_BYTES,
    _RISK: RISK_MAX_BYTES,
}

log = logging.getLogger(__name__)


class _RateLimited(Exception):
    def __init__(self, wait_s: float, message: str) -> None:
        super().__init__(message)
        self.wait_s = wait_s
        self.message = message


# -- parsers (pure: payload -> validated rows) ------------------------------------------------------

def result_of(payload: Any, endpoint: str) -> dict[str, Any]:
    """The ``result`` object of a v5 response; SourceError when ``retCode != 0`` or the shape is wrong.

    ``retCode`` 10006 raises an internal rate-limit signal that :class:`BybitSource` retries.
    """
    body = expect_dict(payload, VENUE, endpoint)
    code = to_int(field(body, "retCode", VENUE, endpoint), VENUE, endpoint, what="retCode")
    if code != 0:
        msg = " ".join(str(body.get("retMsg") or "no message").split())[:160]
        if code == 10006:
            raise _RateLimited(1.0, f"rate limited (retCode 10006: {msg})")
        raise SourceError(VENUE, endpoint, f"retCode {code}: {msg}")
    return expect_dict(field(body, "result", VENUE, endpoint), VENUE, endpoint, what="result")


def parse_klines(payload: Any, endpoint: str = _KLINE) -> pd.DataFrame:
    """Kline rows as a frame ``time, open, high, low, close, volume, quote_volume``, oldest first.

    Duplicate open times keep their last occurrence; unsorted pages are sorted.
    """
    rows = expect_list(field(result_of(payload, endpoint), "list", VENUE, endpoint), VENUE, endpoint, what="list")
    arr = numeric_columns(rows, range(7), VENUE, endpoint,
                          names=("startTime", "open", "high", "low", "close", "volume", "turnover"))
    frame = pd.DataFrame(arr, columns=["time", "open", "high", "low", "close", "volume", "quote_volume"])
    return _tidy(frame)


def parse_open_interest(payload: Any, endpoint: str = _OI) -> tuple[pd.DataFrame, str | None]:
    """``(frame[time, oi_coin], next_cursor)``; the cursor is None when Bybit sent none.

    ``oi_coin`` is single-sided: ``singleOpenInterest``, else half of ``openInterest`` (documented
    as the sum of both sides).
    """
    result = result_of(payload, endpoint)
    rows = expect_list(field(result, "list", VENUE, endpoint), VENUE, endpoint, what="list")
    t = np.empty(len(rows))
    oi = np.empty(len(rows))
    for i, row in enumerate(rows):
        t[i] = to_int(field(row, "timestamp", VENUE, endpoint, where=f"row {i}"), VENUE, endpoint, what=f"timestamp in row {i}")
        if isinstance(row, dict) and row.get("singleOpenInterest") not in (None, ""):
            oi[i] = to_float(row["singleOpenInterest"], VENUE, endpoint, what=f"singleOpenInterest in row {i}")
        else:
            oi[i] = to_float(field(row, "openInterest", VENUE, endpoint, where=f"row {i}"), VENUE, endpoint,
                             what=f"openInterest in row {i}") / 2
    cursor = result.get("nextPageCursor")
    cursor = cursor if isinstance(cursor, str) and cursor else None
    return _tidy(pd.DataFrame({"time": t, "oi_coin": oi})), cursor


def parse_instruments(payload: Any, endpoint: str = _INSTRUMENTS) -> tuple[list[Instrument], str | None]:
    """USDT/USDC ``LinearPerpetual`` instruments of one page, and the next page's cursor."""
    result = result_of(payload, endpoint)
    rows = expect_list(field(result, "list", VENUE, endpoint), VENUE, endpoint, what="list")
    out = []
    for i, row in enumerate(rows):
        where = f"instrument {i}"
        ctype = field(row, "contractType", VENUE, endpoint, where=where)
        base = field(row, "baseCoin", VENUE, endpoint, where=where)
        quote = field(row, "quoteCoin", VENUE, endpoint, where=where)
        sym = field(row, "symbol", VENUE, endpoint, where=where)
        status = field(row, "status", VENUE, endpoint, where=where)
        if not all(isinstance(v, str) for v in (ctype, base, quote, sym, status)):
            raise SourceError(VENUE, endpoint, f"{where}: symbol, baseCoin, quoteCoin, contractType and status must be strings")
        if ctype != "LinearPerpetual" or quote not in ("USDT", "USDC"):
            continue
        out.append(Instrument(f"{base}{quote}".upper(), sym, base.upper(), quote.upper(), status))
    cursor = result.get("nextPageCursor")
    return out, cursor if isinstance(cursor, str) and cursor else None


def parse_ticker(payload: Any, symbol: str, endpoint: str = _TICKERS) -> float:
    """The mark price (else last price) of ``symbol`` from a tickers response."""
    rows = expect_list(field(result_of(payload, endpoint), "list", VENUE, endpoint), VENUE, endpoint, what="list")
    for i, row in enumerate(rows):
        if isinstance(row, dict) and row.get("symbol") == symbol:
            raw = row.get("markPrice") or row.get("lastPrice")
            price = to_float(raw, VENUE, endpoint, what=f"markPrice of {symbol}")
            if price <= 0:
                raise SourceError(VENUE, endpoint, f"markPrice of {symbol} is not positive ({raw!r})")
            return price
    raise SourceError(VENUE, endpoint, f"no ticker for {symbol} in the response")


def parse_risk_limits(payload: Any, endpoint: str = _RISK) -> tuple[dict[str, list[Bracket]], str | None]:
    """One page of risk-limit tiers: ``({symbol: [Bracket]}, next cursor)``.

    ``maintenanceMargin`` / ``initialMargin`` are percentages: a row whose ``initialMargin x
    maxLeverage`` is not within 80..125 (of 100) is refused, so a change of unit can never price levels
    a hundred times off.
    """
    result = result_of(payload, endpoint)
    rows = expect_list(field(result, "list", VENUE, endpoint), VENUE, endpoint, what="list")
    out: dict[str, list[Bracket]] = {}
    for i, row in enumerate(rows):
        where = f"tier row {i}"
        sym = field(row, "symbol", VENUE, endpoint, where=where)
        if not isinstance(sym, str) or not sym:
            raise SourceError(VENUE, endpoint, f"{where}: symbol should be a non-empty string")
        cap = to_float(field(row, "riskLimitValue", VENUE, endpoint, where=where), VENUE, endpoint,
                       what=f"riskLimitValue of {sym} ({where})")
        mm = to_float(field(row, "maintenanceMargin", VENUE, endpoint, where=where), VENUE, endpoint,
                      what=f"maintenanceMargin of {sym} ({where})")
        im = to_float(field(row, "initialMargin", VENUE, endpoint, where=where), VENUE, endpoint,
                      what=f"initialMargin of {sym} ({where})")
        lev = to_float(field(row, "maxLeverage", VENUE, endpoint, where=where), VENUE, endpoint,
                       what=f"maxLeverage of {sym} ({where})")
        if not (lev >= 1 and 80 <= im * lev <= 125):
            raise SourceError(VENUE, endpoint, f"{where} ({sym}): initialMargin {im:g}% does not match maxLeverage "
                                               f"{lev:g}x (expected percentages, initialMargin x maxLeverage near 100)")
        out.setdefault(sym, []).append(Bracket(cap, lev, mm / 100.0))
    cursor = result.get("nextPageCursor")
    return out, cursor if isinstance(cursor, str) and cursor else None


# -- the source -------------------------------------------------------------------------------------

class BybitSource:
    """Bybit linear perpetuals as :class:`Bars` (klines + open interest), cached and rate-limited.

    ``client`` (a :class:`VenueClient`) is built on demand; tests pass ``transport``, ``sleep``
    and ``clock`` so nothing touches the network or waits. ``cache`` is the shared on-disk
    :class:`BarCache` (None: no caching). ``now_ms`` stamps "now" for the window's end.
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
        self.limiter = RateLimiter(REQUESTS_PER_S, int(REQUESTS_PER_S), clock=clock, sleep=sleep)
        self.client = client or VenueClient(
            VENUE, base_url, transport=transport, limiter=self.limiter, sleep=sleep, clock=clock,
            on_response=self._on_response, recorder=recorder, budget_s=budget_s, deadline_s=deadline_s,
        )
        self.cache = cache
        self.book = SymbolBook(VENUE, symbols_ttl_s, clock, cache)
        self._flight = SingleFlight()
        self._blocked_until = 0.0
        self._reset_ms: int | None = None
        self.tiers = TierBook(VENUE, self._load_tiers, cache=cache, now=lambda: self._now_ms() / 1000)

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- HTTP ------------------------------------------------------------------------------------
    def _on_response(self, resp: httpx.Response) -> None:
        reset = (resp.headers.get("X-Bapi-Limit-Reset-Timestamp") or "").strip()
        # epoch ms has 13 digits; a longer number is garbage (and too large for a float)
        self._reset_ms = int(reset) if reset.isascii() and reset.isdigit() and len(reset) <= 16 else None
        if resp.status_code == 403:
            # Bybit uses 403 both for its IP rate ban ("access too frequent") and for region blocks
            # (its CDN refusing a country). Either way: stop sending for 10 minutes, say which.
            self._blocked_until = self._clock() + BLOCK_403_S
            text = resp.text[:600].lower()
            if "too frequent" in text or "too many" in text:
                why = "access too frequent (HTTP 403): Bybit blocks this IP for at least 10 minutes"
            elif any(w in text for w in ("country", "region", "restricted", "cloudfront", "unavailable in")):
                why = "Bybit refuses service from this region (HTTP 403)"
            else:
                why = "HTTP 403: Bybit refuses this IP (a rate-limit ban or a region block)"
            raise SourceError(
                VENUE, resp.request.url.path,
                f"{why}; liqmap sends nothing to Bybit for 10 minutes (use --exchange binance or --exchange okx)",
                status=403, retry_after=BLOCK_403_S,
            )

    async def _get(self, path: str, params: dict[str, Any]) -> Any:
        """GET with the 403 block and the retCode 10006 retry; returns the checked raw payload."""
        for attempt in range(3):
            wait = self._blocked_until - self._clock()
            if wait > 0:
                raise SourceError(VENUE, path, f"not sending: Bybit blocked this IP (HTTP 403); {wait:.0f}s left of the 10-minute wait",
                                  status=403, retry_after=wait)
            payload = await self.client.get_json(path, params, max_bytes=MAX_BYTES[path])
            try:
                result_of(payload, path)
                return payload
            except _RateLimited as exc:
                delay = exc.wait_s
                if self._reset_ms is not None:
                    until_reset = self._reset_ms / 1000 - time.time()
                    delay = server_wait(until_reset, default=exc.wait_s, maximum=MAX_RESET_WAIT_S) if until_reset > 0 else exc.wait_s
                if attempt == 2:
                    raise SourceError(VENUE, path, f"{exc.message}; gave up after 3 attempts", retry_after=delay) from None
                self.limiter.pause(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- symbols ---------------------------------------------------------------------------------
    async def _load_instruments(self) -> list[Instrument]:
        out: list[Instrument] = []
        cursor: str | None = None
        for _ in range(50):  # > 50,000 symbols would be a broken cursor, not a real list
            params = {"category": "linear", "limit": INSTRUMENTS_LIMIT, "cursor": cursor}
            page, cursor = parse_instruments(await self._get(_INSTRUMENTS, params))
            out.extend(page)
            if not cursor or not page:
                break
        if not out:
            raise SourceError(VENUE, _INSTRUMENTS, "the instrument list is empty")
        return [i for i in out if i.status == "Trading"]

    async def symbols(self) -> list[str]:
        """Canonical names (``BTCUSDT``) of Bybit's trading USDT/USDC perpetuals, cached for an hour."""
        return sorted(await self.book.get(self._load_instruments))

    async def resolve(self, symbol: str) -> Instrument:
        """The instrument for a user spelling; InputError with suggestions when Bybit has none."""
        await self.book.get(self._load_instruments)
        return self.book.resolve(symbol)

    async def mark_price(self, symbol: str) -> float:
        """Bybit's current mark price of ``symbol``."""
        inst = await self.resolve(symbol)
        return parse_ticker(await self._get(_TICKERS, {"category": "linear", "symbol": inst.venue_id}), inst.venue_id)

    # -- margin tiers ----------------------------------------------------------------------------
    async def margin_tiers(self, symbol: str) -> MarginTable:
        """The symbol's risk-limit tiers (refreshed daily; last good copy, else the shipped table)."""
        inst = await self.resolve(symbol)
        return await self.tiers.table(inst.canonical)

    async def _load_tiers(self, canonical: str) -> dict[str, MarginTable]:
        """Every page of ``canonical``'s risk-limit tiers (``nextPageCursor`` until empty or repeated)."""
        inst = await self.resolve(canonical)
        found: list[Bracket] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(20):  # 20 pages of one symbol's tiers would be a broken cursor
            page, cursor = parse_risk_limits(
                await self._get(_RISK, {"category": "linear", "symbol": inst.venue_id, "cursor": cursor}))
            found += page.get(inst.venue_id, [])
            if not cursor or cursor in seen or not page:
                break
            seen.add(cursor)
        if not found:
            return {}
        return {inst.canonical: table_from_rows(VENUE, _RISK, f"Bybit {inst.venue_id} risk limits", found)}

    # -- bars ------------------------------------------------------------------------------------
    def interval_for(self, window: Window) -> str:
        """Bybit serves every window at its own interval (open interest reaches back to launch)."""
        if window.interval not in INTERVALS:
            raise InputError(f"bybit has no {window.interval} open-interest history; intervals: {', '.join(INTERVALS)}")
        return window.interval

    async def bars(self, symbol: str, window: Window) -> Bars:
        """The window's bars: cached ones plus only the missing ones fetched (concurrent pages)."""
        inst = await self.resolve(symbol)
        interval = self.interval_for(window)
        step = INTERVAL_MS[interval]
        end = last_closed_open(self._now_ms(), step)
        start = end - (window.duration_ms // step - 1) * step
        frame = await self._flight.do((inst.venue_id, interval, start, end),
                                      lambda: self._series(inst, interval, start, end))
        if len(frame) == 0:
            raise SourceError(VENUE, _KLINE, f"no bars with open interest for {inst.venue_id} between {iso(start)} and {iso(end)}")
        bars = Bars.from_frame(frame, venue=VENUE, symbol=inst.canonical, interval=interval)
        return bars.with_notes(*coverage_notes(bars, window, f"Bybit {inst.venue_id} klines x open interest (coin x close)"))

    async def _series(self, inst: Instrument, interval: str, start: int, end: int) -> pd.DataFrame:
        step = INTERVAL_MS[interval]
        cached, covered = load_cached(self.cache, VENUE, inst.venue_id, interval, start, end)
        fetched = [await self._fetch(inst, interval, s, e) for s, e in missing_ranges(cached, start, end, step, covered)]
        new = pd.concat(fetched, ignore_index=True) if fetched else pd.DataFrame()
        store_fetched(self.cache, VENUE, inst.venue_id, interval, new, start, covered, price_endpoint=_KLINE, oi_endpoint=_OI)
        parts = [f for f in (cached, new) if len(f)]
        if not parts:
            return pd.DataFrame(columns=["time", "open", "high", "low", "close", "oi_usd"])
        out = _tidy(pd.concat(parts, ignore_index=True))
        return out[(out["time"] >= start) & (out["time"] <= end)].reset_index(drop=True)

    async def _fetch(self, inst: Instrument, interval: str, start: int, end: int) -> pd.DataFrame:
        """Klines and OI for bar opens ``start..end``, every page requested concurrently."""
        step = INTERVAL_MS[interval]
        k_int, oi_int = INTERVALS[interval]
        k_pages = [self._kline_page(inst.venue_id, k_int, s, e) for s, e in chunk_ranges(start, end, step, KLINE_LIMIT)]
        oi_pages = [self._oi_pages(inst.venue_id, oi_int, s, e) for s, e in chunk_ranges(start, end, step, OI_LIMIT)]
        results = await gather_or_cancel(*k_pages, *oi_pages)
        klines = _tidy(pd.concat(results[: len(k_pages)], ignore_index=True))
        oi = _tidy(pd.concat(results[len(k_pages):], ignore_index=True))
        klines = klines[(klines["time"] >= start) & (klines["time"] <= end)]
        return join_bars(klines, oi, step)

    async def _kline_page(self, sym: str, k_int: str, s: int, e: int) -> pd.DataFrame:
        """Klines with open in ``s..e``. A page that stops short of ``s`` is continued below its
        oldest row (older docs cap ``limit`` at 200); an empty page ends the range (not listed yet)."""
        frames = []
        end = e
        for _ in range(20):
            params = {"category": "linear", "symbol": sym, "interval": k_int, "start": s, "end": end, "limit": KLINE_LIMIT}
            frame = parse_klines(await self._get(_KLINE, params))
            frames.append(frame)
            if len(frame) == 0 or int(frame["time"].iloc[0]) <= s or int(frame["time"].iloc[0]) >= end + 1:
                break
            end = int(frame["time"].iloc[0]) - 1
        return pd.concat(frames, ignore_index=True)

    async def _oi_pages(self, sym: str, oi_int: str, s: int, e: int) -> pd.DataFrame:
        """One chunk of OI; follows ``nextPageCursor`` while pages come back full and short of ``s``."""
        frames = []
        cursor: str | None = None
        for _ in range(20):
            params = {"category": "linear", "symbol": sym, "intervalTime": oi_int, "startTime": s, "endTime": e,
                      "limit": OI_LIMIT, "cursor": cursor}
            frame, cursor = parse_open_interest(await self._get(_OI, params))
            frames.append(frame)
            if not cursor or len(frame) < OI_LIMIT or int(frame["time"].iloc[0]) <= s:
                break
        return pd.concat(frames, ignore_index=True)
