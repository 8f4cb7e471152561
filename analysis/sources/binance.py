"""Binance USDⓈ-M perpetuals: klines + open-interest history -> :class:`Bars` (no key needed).

Endpoints and the documented limits this module follows (developers.binance.com, USDⓈ-M Futures,
Market Data REST API):

``GET /fapi/v1/klines``
    ``symbol, interval, startTime, endTime, limit`` (default 500, max 1500). Weight by ``limit``:
    [1,100) -> 1, [100,500) -> 2, [500,1000] -> 5, > 1000 -> 10. Rows are arrays: ``[0]`` open time,
    ``[1..4]`` OHLC, ``[5]`` volume (base), ``[6]`` close time, ``[7]`` quote volume, ``[9]`` taker
    buy base volume. The newest row may be the bar still forming: it is dropped.
``GET /futures/data/openInterestHist``
    ``symbol, period`` (5m,15m,30m,1h,2h,4h,6h,12h,1d), ``limit`` (default 30, max 500),
    ``startTime, endTime``. Weight 0, but its own IP limit of 1000 requests per 5 minutes, and
    **only the latest 30 days are served**: windows are clamped to that, with a note, and a
    rejected request says so. ``sumOpenInterestValue`` (USD) becomes ``oi_usd``.
``GET /fapi/v1/exchangeInfo`` (weight 1)
    the symbol list: ``contractType == "PERPETUAL"`` and ``status == "TRADING"``; cached for
    ``symbols_ttl_s`` (and in the bar cache's meta table, so a restart reuses it).
``GET /fapi/v1/premiumIndex`` (weight 1 with a symbol)
    the mark price (:meth:`BinanceSource.mark_price`).

Rate limits: request weight is capped at 2400 per minute per IP. The source spends it through a
token bucket (40 weight/s, burst 1200) and reads ``X-MBX-USED-WEIGHT-1M`` from every response:
the bucket never believes more than 90% of the limit minus the reported usage is left, so it slows
down before the limit, including when other processes share the IP. 429/418/451/5xx handling is
the :class:`~analysis.sources.http.VenueClient` contract.

The open-interest budget: openInterestHist has its own limit of 1,000 requests per 5 minutes per
IP. Every attempt (retries included) is charged to :attr:`BinanceSource.oi_budget`, a named
:class:`~analysis.sources.budget.RequestBudget` (:data:`OI_BUDGET`: 900 per 5 minutes steady plus
a burst of 100 at the default margin 0.9, so no 5-minute window exceeds 1,000), and a 429 or 418
answer pauses it for the server's ``Retry-After``. Requests take it in priority order
(:class:`~analysis.sources.budget.Demand`: subscribed symbols, then the most asked, then the rest).
Refreshes are coalesced per (symbol, interval): concurrent ones share one fetch, and a refresh
already made for the newest closed bar is not repeated within ``refresh_min_s`` (60 s) when the
venue had not published that bar yet. When the budget cannot serve a refresh within
``hold_after_s`` (default 10 s), the symbol is **held back**: its refresh stays queued, the
request gets the cached bars with a stale note, or, with nothing cached, a
:class:`~analysis.sources.budget.HeldBack` error saying when it should be ready.

A ``X-MBX-USED-WEIGHT-1M`` that is not a plain number is ignored and one above the limit counts as the limit, so the header can never
make the source wait more than ``(0.1 x 2400 + cost) / 40`` s (about 6 s) for weight.

Deadlines and sizes (the HTTP core's contract): every request has a total deadline of
``deadline_s`` (connect, headers, body) and the whole call ``budget_s``; a page that hangs frees
its page slot (``max_concurrency``) when its deadline passes, and a fetch nobody waits for any
more is cancelled. Decoded bodies are capped per endpoint, far above the largest legitimate page:

=========================  ========================================================  =======
endpoint                   largest legitimate response                               limit
=========================  ========================================================  =======
``klines``                 1,500 rows x ~130 bytes = ~200 KB                         4 MB
``openInterestHist``       500 points x ~170 bytes = ~85 KB                          2 MB
``exchangeInfo``           ~1.1 KB per contract: 140 KB for 122 (2021), several MB   32 MB
                           live with every filter and asset
``premiumIndex``           one symbol, ~300 bytes                                    256 KB
=========================  ========================================================  =======

Alignment: an open-interest point stamped ``T`` (floored to the interval grid) is joined to the
kline that opens at ``T`` -- the convention of the bundled sample, so live and sample bars mean
the same thing. Bars lacking either a kline or an OI point are left out (a gap the model
reports), never interpolated.

Cache: closed bars are stored per (binance, symbol, interval) in a :class:`BarCache`. A refresh
fetches only bars after the newest cached one (from that bar itself, so a revised last bar is
replaced) plus, when a longer window is asked for, the missing head. Every page of a refresh is
fetched concurrently; every bar is checked (:func:`~analysis.sources.series.check_fetched`, the
same rule for all venues) before one transaction writes them; a failed page or a bad bar writes
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pandas as pd

from ..bars import INTERVAL_MS, Bars, iso
from ..errors import InputError, SourceError
from ..symbols import parse_symbol, suggest
from ..windows import DAY_MS, Window
from ..margin import MarginTable, shipped_table
from .budget import BudgetParams, Demand, HeldBack, RequestBudget, wait_words
from .cache import BarCache
from .http import DEFAULT_DEADLINE_S, RateLimiter, SingleFlight, VenueClient, gather_or_cancel
from .series import chunk_ranges, store_fetched
from .series import tidy as _tidy
from .validate import dict_columns, expect_dict, expect_list, field, numeric_columns, to_float

__all__ = [
    "BinanceSource", "SymbolInfo", "BASE_URL", "KLINES", "OI_HIST", "EXCHANGE_INFO", "PREMIUM_INDEX",
    "KLINE_LIMIT", "OI_LIMIT", "OI_HISTORY_MS", "WEIGHT_LIMIT_1M", "MAX_BYTES", "kline_weight", "parse_klines",
    "parse_open_interest", "parse_exchange_info", "parse_premium_index", "join", "page_ranges",
]

log = logging.getLogger(__name__)

VENUE = "binance"
BASE_URL = "https://fapi.binance.com"
KLINES = "/fapi/v1/klines"
OI_HIST = "/futures/data/openInterestHist"
EXCHANGE_INFO = "/fapi/v1/exchangeInfo"
PREMIUM_INDEX = "/fapi/v1/premiumIndex"
KLINE_LIMIT = 1500
OI_LIMIT = 500
OI_HISTORY_MS = 30 * DAY_MS
WEIGHT_LIMIT_1M = 2400
OI_REQUESTS_PER_5M = 1000
#: openInterestHist's own IP limit as a named budget (the margin is ``LIQMAP_BINANCE_OI_MARGIN`` in the bot)
OI_BUDGET = BudgetParams("binance openInterestHist", OI_REQUESTS_PER_5M, 300.0, margin=0.9)
#: how long a request waits for the OI budget before its symbol is held back (seconds)
HOLD_AFTER_S = 10.0
#: a refresh that reached a bar is not repeated for the same bar within this many seconds
REFRESH_MIN_S = 60.0
SYMBOLS_TTL_S = 3600.0
OI_PERIODS = ("5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")
KLINE_COLUMNS = ("time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "taker_buy")
_OI_NOTE = "Binance serves only the latest 30 days of open-interest history"
_MB = 1024 * 1024
KLINES_MAX_BYTES = 4 * _MB  # 1,500 rows are ~200 KB
OI_HIST_MAX_BYTES = 2 * _MB  # 500 points are ~85 KB
EXCHANGE_INFO_MAX_BYTES = 32 * _MB  # several MB live
PREMIUM_INDEX_MAX_BYTES = 256 * 1024  # one symbol, ~300 bytes
#: decoded-body limit per endpoint (see the module docstring)
MAX_BYTES: dict[str, int] = {
    KLINES: KLINES_MAX_BYTES, OI_HIST: OI_HIST_MAX_BYTES, EXCHANGE_INFO: EXCHANGE_INFO_MAX_BYTES,
    PREMIUM_INDEX: PREMIUM_INDEX_MAX_BYTES,
}


def kline_weight(limit: int) -> int:
    """Request weight of ``/fapi/v1/klines`` for ``limit`` rows (documented table)."""
    if limit < 100:
        return 1
    if limit < 500:
        return 2
    if limit <= 1000:
        return 5
    return 10


# -- parsers ---------------------------------------------------------------------------------------

def parse_klines(payload: Any, endpoint: str = KLINES) -> pd.DataFrame:
    """Kline rows -> frame with :data:`KLINE_COLUMNS` (times int64), validated."""
    rows = expect_list(payload, VENUE, endpoint)
    arr = numeric_columns(rows, [0, 1, 2, 3, 4, 5, 6, 7, 9], VENUE, endpoint,
                          names=["open time", "open", "high", "low", "close", "volume", "close time",
                                 "quote volume", "taker buy volume"])
    frame = pd.DataFrame(arr, columns=list(KLINE_COLUMNS))
    return frame.astype({"time": np.int64, "close_time": np.int64})


def parse_open_interest(payload: Any, endpoint: str = OI_HIST) -> pd.DataFrame:
    """openInterestHist points -> frame ``time, oi_usd, oi_coin`` (time as stamped), validated."""
    rows = expect_list(payload, VENUE, endpoint)
    arr = dict_columns(rows, ["timestamp", "sumOpenInterestValue", "sumOpenInterest"], VENUE, endpoint)
    frame = pd.DataFrame(arr, columns=["time", "oi_usd", "oi_coin"])
    return frame.astype({"time": np.int64})


@dataclass(frozen=True)
class SymbolInfo:
    """One USDⓈ-M contract from exchangeInfo."""

    symbol: str
    base: str
    quote: str
    contract_type: str
    status: str

    @property
    def tradable_perp(self) -> bool:
        return self.contract_type == "PERPETUAL" and self.status == "TRADING"


def parse_exchange_info(payload: Any, endpoint: str = EXCHANGE_INFO) -> dict[str, SymbolInfo]:
    """Every contract in exchangeInfo by symbol (filter with :attr:`SymbolInfo.tradable_perp`)."""
    body = expect_dict(payload, VENUE, endpoint)
    symbols = expect_list(field(body, "symbols", VENUE, endpoint), VENUE, endpoint, what="symbols")
    out: dict[str, SymbolInfo] = {}
    for i, s in enumerate(symbols):
        where = f"symbols[{i}]"
        vals = [field(s, k, VENUE, endpoint, where=where) for k in ("symbol", "baseAsset", "quoteAsset", "contractType", "status")]
        if not all(isinstance(v, str) for v in vals):
            raise SourceError(VENUE, endpoint, f"{where}: symbol, baseAsset, quoteAsset, contractType and status must be strings")
        out[vals[0]] = SymbolInfo(*vals)
    if not out:
        raise SourceError(VENUE, endpoint, "the symbol list is empty")
    return out


def parse_premium_index(payload: Any, endpoint: str = PREMIUM_INDEX) -> float:
    """The ``markPrice`` of a single-symbol premiumIndex response."""
    body = expect_dict(payload, VENUE, endpoint)
    price = to_float(field(body, "markPrice", VENUE, endpoint), VENUE, endpoint, what="markPrice")
    if price <= 0:
        raise SourceError(VENUE, endpoint, f"markPrice must be positive, got {price:g}")
    return price


# -- assembly --------------------------------------------------------------------------------------

page_ranges = chunk_ranges  # Binance pages: bar opens split into ranges of at most ``per_page`` bars


def join(klines: pd.DataFrame, oi: pd.DataFrame, *, step_ms: int, now_ms: int, start_ms: int, end_ms: int) -> pd.DataFrame:
    """Closed klines in ``start..end`` joined with OI on bar open time; columns of :class:`Bars`.

    Duplicates keep the last copy, rows are sorted, the still-open kline (close time >= now) is
    dropped, OI stamps are floored to the grid, bars missing either side (or with zero OI) are
    left out. Bar values are checked later, with every venue's, by :func:`~.series.check_fetched`.
    """
    k = _tidy(klines)
    if (k["time"] % step_ms != 0).any():
        bad = int(k.loc[k["time"] % step_ms != 0, "time"].iloc[0])
        raise SourceError(VENUE, KLINES, f"kline open time {bad} is not on the {step_ms // 60_000}-minute grid")
    k = k[(k["close_time"] < now_ms) & (k["time"] >= start_ms) & (k["time"] <= end_ms)]
    o = oi.assign(time=(oi["time"] // step_ms) * step_ms)
    o = _tidy(o)[["time", "oi_usd"]]
    merged = k.merge(o, on="time", how="inner", sort=True)
    cols = ["time", "open", "high", "low", "close", "oi_usd", "volume", "quote_volume", "taker_buy"]
    merged = merged[cols]
    # a zero OI point is no open interest to map: left out like a missing one; every other bad
    # value is refused by series.check_fetched before anything is cached
    return merged[merged["oi_usd"] != 0].reset_index(drop=True)


# -- the source ------------------------------------------------------------------------------------

#: why Binance maps use the shipped margin tables
BINANCE_TIERS_WHY = "Binance publishes its leverage brackets only to signed (key) requests"


class BinanceSource:
    """Binance USDⓈ-M perpetuals as a :class:`~analysis.sources.base.Source` (name ``binance``).

    ``cache`` defaults to an in-memory :class:`BarCache`; pass a file-backed one to survive
    restarts. ``transport``/``sleep``/``clock``/``now_ms`` are injectable for offline tests and
    replays; ``recorder`` receives every raw response (``liqmap record``).
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
        max_concurrency: int = 4,
        oi_budget: RequestBudget | None = None,
        demand: Demand | None = None,
        hold_after_s: float = HOLD_AFTER_S,
        refresh_min_s: float = REFRESH_MIN_S,
    ) -> None:
        self._clock = clock
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.weight = RateLimiter(WEIGHT_LIMIT_1M / 60.0, WEIGHT_LIMIT_1M // 2, clock=clock, sleep=sleep)
        self._sleep = sleep
        self.oi_budget = oi_budget or RequestBudget(OI_BUDGET, clock=clock, sleep=sleep)
        self.demand = demand or Demand(clock=clock)
        self.hold_after_s = float(hold_after_s)
        self._refreshing: dict[tuple[str, str], asyncio.Task[pd.DataFrame]] = {}
        self._waiters: dict[asyncio.Task[pd.DataFrame], int] = {}
        self._fresh: dict[tuple[str, str], tuple[int, float]] = {}  # (newest closed bar, clock) of the last refresh
        self.refresh_min_s = float(refresh_min_s)
        self.client = client or VenueClient(
            VENUE, base_url, transport=transport, limiter=self.weight, sleep=sleep, clock=clock,
            on_response=self._on_response, recorder=recorder, budget_s=budget_s, deadline_s=deadline_s,
        )
        self.cache = cache if cache is not None else BarCache(None)
        self.symbols_ttl_s = symbols_ttl_s
        self._symbols: dict[str, SymbolInfo] | None = None
        self._symbols_at = -math.inf
        self._flight = SingleFlight()
        self._pages = asyncio.Semaphore(max(1, max_concurrency))
        self.used_weight: int | None = None  # last X-MBX-USED-WEIGHT-1M seen

    def set_oi_budget(self, params: BudgetParams) -> None:
        """Replace the open-interest budget with one of ``params`` (settings; before any request)."""
        if params != self.oi_budget.params:
            self.oi_budget = RequestBudget(params, clock=self._clock, sleep=self._sleep)

    @property
    def oi_limiter(self) -> RateLimiter:
        """The open-interest budget's bucket."""
        return self.oi_budget.limiter

    async def aclose(self) -> None:
        """Close the HTTP client and drop queued refreshes (the cache stays open for other users)."""
        tasks = list(self._refreshing.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()

    @property
    def request_count(self) -> int:
        return self.client.request_count

    def _on_response(self, resp: httpx.Response) -> None:
        raw = (resp.headers.get("X-MBX-USED-WEIGHT-1M") or "").strip()
        if raw.isascii() and raw.isdigit():  # ASCII: str.isdigit alone accepts "²", which int() refuses
            self.used_weight = min(int(raw), WEIGHT_LIMIT_1M)  # beyond the limit the venue answers 429 anyway
            self.weight.observe(self.used_weight, WEIGHT_LIMIT_1M)

    async def _get(self, path: str, params: dict[str, Any], *, weight: float) -> Any:
        extra: dict[str, Any] = {}
        if path == OI_HIST:  # its own budget: the first request's turn was taken in priority order
            # (see _page); the client charges every retry
            extra = {"budget": self.oi_budget.limiter, "budget_paid": True}
        try:
            return await self.client.get_json(path, params, cost=weight, max_bytes=MAX_BYTES[path], **extra)
        except SourceError as exc:
            body = getattr(exc, "body", None) or ""
            if exc.status == 400 and "-1121" in body:
                raise InputError(f"binance has no contract {params.get('symbol')!r} (Invalid symbol)") from None
            if exc.status == 400 and path == OI_HIST:
                raise SourceError(VENUE, path, f"{exc.reason} ({_OI_NOTE}; requested from "
                                  f"{iso(params.get('startTime') or 0)})", status=400) from None
            raise

    # -- symbols ---------------------------------------------------------------------------------
    async def _load_symbols(self) -> dict[str, SymbolInfo]:
        now = self._clock()
        if self._symbols is not None and now - self._symbols_at < self.symbols_ttl_s:
            return self._symbols
        stored = self.cache.get_meta("symbols:binance")
        if self._symbols is None and stored is not None and time.time() - stored[1] < self.symbols_ttl_s:
            try:
                self._symbols = {s[0]: SymbolInfo(*s) for s in stored[0]}
                self._symbols_at = now - (time.time() - stored[1])
                return self._symbols
            except (TypeError, ValueError, IndexError):
                pass  # an unreadable stored list is simply refetched
        try:
            info = await self._flight.do("exchangeInfo", self._fetch_symbols)
        except SourceError as exc:
            if self._symbols is not None:  # stale beats nothing: keep serving the last good list
                log.warning("binance: symbol list refresh failed (%s); using the list from %.0fs ago", exc, now - self._symbols_at)
                return self._symbols
            raise
        self._symbols, self._symbols_at = info, self._clock()
        self.cache.put_meta("symbols:binance", [[i.symbol, i.base, i.quote, i.contract_type, i.status] for i in info.values()])
        return info

    async def _fetch_symbols(self) -> dict[str, SymbolInfo]:
        return parse_exchange_info(await self._get(EXCHANGE_INFO, {}, weight=1))

    async def symbols(self) -> list[str]:
        """Binance's trading USDⓈ-M perpetuals (``BTCUSDT`` ...), sorted; cached with a TTL."""
        info = await self._load_symbols()
        return sorted(s for s, i in info.items() if i.tradable_perp)

    async def resolve(self, symbol: str) -> str:
        """Binance's symbol for a user spelling (``btc``, ``BTC/USDT`` ...); InputError if none trades."""
        wanted = parse_symbol(symbol).symbol
        info = await self._load_symbols()
        hit = info.get(wanted)
        if hit is not None and hit.tradable_perp:
            return wanted
        if hit is not None:
            what = (f"not trading (status {hit.status}: delisted, suspended or not yet listed)" if hit.status != "TRADING"
                    else f"not a perpetual ({hit.contract_type or 'no contract type'})")
            raise InputError(f"{wanted} on binance is {what}")
        tradable = [s for s, i in info.items() if i.tradable_perp]
        close = suggest(wanted, tradable)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise InputError(f"binance has no {wanted} perpetual{hint}")

    async def mark_price(self, symbol: str) -> float:
        """Binance's current mark price of ``symbol`` (premiumIndex)."""
        sym = await self.resolve(symbol)
        return parse_premium_index(await self._get(PREMIUM_INDEX, {"symbol": sym}, weight=1))

    async def margin_tiers(self, symbol: str) -> MarginTable:
        """The shipped table: Binance serves its brackets only to signed requests (``/fapi/v1/leverageBracket``,
        USER_DATA) and documents no public source of them."""
        return shipped_table(parse_symbol(symbol).symbol, BINANCE_TIERS_WHY)

    # -- bars ------------------------------------------------------------------------------------
    def interval_for(self, window: Window) -> str:
        if window.interval not in OI_PERIODS:
            raise InputError(f"binance has no {window.interval} open-interest history; periods: {', '.join(OI_PERIODS)}")
        return window.interval

    async def bars(self, symbol: str, window: Window) -> Bars:
        """The window's closed bars (cache + only the missing ones fetched), with provenance notes."""
        sym = await self.resolve(symbol)
        interval = self.interval_for(window)
        step = INTERVAL_MS[interval]
        now = self._now_ms()
        end = (now // step) * step - step  # open of the newest closed bar
        start = end - (window.duration_ms // step - 1) * step
        notes = []
        oldest = -(-(now - OI_HISTORY_MS) // step) * step + step  # first stamp safely inside 30 days
        if start < oldest:
            start = oldest
            notes.append(f"{_OI_NOTE}; the {window.label} window starts at {iso(start)}")
        frame, held = await self._refreshed(sym, interval, start, end, now)
        if held:
            notes.append(held)
        if len(frame) == 0:
            raise SourceError(VENUE, KLINES, f"no bars with open interest for {sym} {interval} between {iso(start)} and {iso(end)}")
        bars = Bars.from_frame(frame, venue=VENUE, symbol=sym, interval=interval)
        covered = bars.end_ms - bars.start_ms
        notes.insert(0, f"data: Binance USDⓈ-M {sym} klines x openInterestHist, {interval} bars ending {iso(bars.end_ms)}")
        if covered < 0.97 * window.duration_ms and not notes[1:]:
            notes.append(f"the data covers {covered / DAY_MS:.1f} of the {window.label} window's days; the map uses all of it")
        return bars.with_notes(*notes)

    def _oi_need(self, ranges: list[tuple[int, int]], step: int) -> int:
        """openInterestHist requests a fetch of ``ranges`` makes."""
        return sum(len(page_ranges(a, b, step, OI_LIMIT)) for a, b in ranges)

    async def _refreshed(self, sym: str, interval: str, start: int, end: int, now: int) -> tuple[pd.DataFrame, str]:
        """The series ``start..end`` after a refresh, or the cached part of it and a note when held back.

        One refresh per (symbol, interval) at a time: concurrent requests join it (a wider one waits
        for it, then fetches only what is still missing). The refresh runs on its own, so a request
        that stops waiting (held back) leaves it queued for the next one.
        """
        key = (sym, interval)
        step = INTERVAL_MS[interval]
        started = False
        for _ in range(3):  # a joined refresh may leave a wider request's head to fetch; ours is the last
            task = self._refreshing.get(key)
            if task is None:
                if started:
                    break
                ranges = self._missing(sym, interval, start, end, step)
                if not ranges:
                    break
                need = self._oi_need(ranges, step)
                eta = self.oi_budget.eta_s(self.demand.priority(sym), need)
                task = asyncio.ensure_future(self._series(sym, interval, start, end, now))
                started = True
                self._refreshing[key] = task
                task.add_done_callback(lambda t, k=key, e=end: self._refresh_done(k, e, t))
            else:
                eta = self.oi_budget.eta_s(self.demand.priority(sym), 0)  # its requests are queued already
            if eta <= self.hold_after_s:
                try:  # within the client's budget: a budget drained meanwhile holds it back after all
                    await self._wait(key, task, max(self.hold_after_s, self.client.budget_s))
                    continue
                except asyncio.TimeoutError:
                    eta = max(eta, self.oi_budget.eta_s(self.demand.priority(sym), 0))
            return self._held_back(sym, interval, start, end, step, eta)
        return self.cache.load(VENUE, sym, interval, start, end + step), ""

    async def _wait(self, key: tuple[str, str], task: asyncio.Task[pd.DataFrame], timeout: float) -> None:
        """Wait for a refresh. When its last waiter is cancelled it is cancelled too (its page slots and
        budget go to work someone wants), unless it is held back: then it stays queued on purpose."""
        self._waiters[task] = self._waiters.get(task, 0) + 1
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except asyncio.CancelledError:
            if self._waiters.get(task, 1) <= 1 and not self.oi_budget.is_held(f"{key[0]} {key[1]}"):
                task.cancel()
            raise
        finally:
            left = self._waiters.get(task, 1) - 1
            if left > 0:
                self._waiters[task] = left
            else:
                self._waiters.pop(task, None)

    def _refresh_done(self, key: tuple[str, str], end: int, task: asyncio.Task[pd.DataFrame]) -> None:
        if self._refreshing.get(key) is task:
            del self._refreshing[key]
        self.oi_budget.release(f"{key[0]} {key[1]}")
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here; a waiter re-raises it itself
        if exc is None:
            self._fresh[key] = (end, self._clock())
        elif not isinstance(exc, SourceError):
            log.error("binance refresh of %s %s failed", *key, exc_info=exc)

    def _held_back(self, sym: str, interval: str, start: int, end: int, step: int, eta: float) -> tuple[pd.DataFrame, str]:
        cached = self.cache.load(VENUE, sym, interval, start, end + step)
        self.oi_budget.hold(f"{sym} {interval}", eta, stale=len(cached) > 0)
        wait = f"about {wait_words(eta)}"
        if len(cached) == 0:
            raise HeldBack(
                VENUE, OI_HIST,
                f"{sym} is queued behind Binance's open-interest request budget ({self._budget_words()}, "
                f"shared by every map this bot makes); its data should be ready in {wait}",
                retry_after=eta,
            )
        last = int(cached["time"].iloc[-1])
        return cached, (f"stale: held back by Binance's open-interest request budget; data to {iso(last)}, "
                        f"a refresh is queued (ready in {wait})")

    def _budget_words(self) -> str:
        p = self.oi_budget.params
        minutes = p.window_s / 60
        return f"{p.limit:,} requests per {minutes:g} minutes per IP"

    async def _series(self, sym: str, interval: str, start: int, end: int, now: int) -> pd.DataFrame:
        step = INTERVAL_MS[interval]
        ranges = self._missing(sym, interval, start, end, step)
        if ranges:
            fetched = await gather_or_cancel(*(self._fetch(sym, interval, a, b, now) for a, b in ranges))
            new = pd.concat(fetched, ignore_index=True)
            cover = self.cache.get_meta(_cover_key(sym, interval))
            store_fetched(self.cache, VENUE, sym, interval, new, start, None if cover is None else cover[0],
                          price_endpoint=KLINES, oi_endpoint=OI_HIST)  # checked, then one transaction
            self.cache.prune(VENUE, sym, interval, now - OI_HISTORY_MS - 7 * DAY_MS)
        return self.cache.load(VENUE, sym, interval, start, end + step)

    def _missing(self, sym: str, interval: str, start: int, end: int, step: int) -> list[tuple[int, int]]:
        """Bar-open ranges to fetch: the head the cache never covered, and the tail from its newest bar."""
        last = self.cache.last_time(VENUE, sym, interval)
        if last is None or last < start:
            return [(start, end)]
        out = []
        cover = self.cache.get_meta(_cover_key(sym, interval))
        covered_from = cover[0] if cover is not None else self.cache.first_time(VENUE, sym, interval)
        if covered_from is not None and start < covered_from:
            out.append((start, covered_from - step))
        fresh_end, fresh_at = self._fresh.get((sym, interval), (-1, -math.inf))
        if last < end and not (fresh_end >= end and self._clock() - fresh_at < self.refresh_min_s):
            # from the newest cached bar itself (a revised bar is replaced); a refresh that reached
            # this end already (the venue had not published the newest point yet) is not repeated
            # within refresh_min_s
            out.append((last, end))
        return out

    async def _fetch(self, sym: str, interval: str, a: int, b: int, now: int) -> pd.DataFrame:
        """Klines and OI for bar opens ``a..b``, every page requested concurrently, joined."""
        step = INTERVAL_MS[interval]
        k_pages = page_ranges(a, b, step, KLINE_LIMIT)
        o_pages = page_ranges(a, b, step, OI_LIMIT)
        results = await gather_or_cancel(
            *(self._page(KLINES, sym, interval, s, e, step) for s, e in k_pages),
            *(self._page(OI_HIST, sym, interval, s, e, step) for s, e in o_pages),
        )
        klines = pd.concat(results[: len(k_pages)], ignore_index=True)
        oi = pd.concat(results[len(k_pages):], ignore_index=True)
        return join(klines, oi, step_ms=step, now_ms=now, start_ms=a, end_ms=b)

    async def _page(self, path: str, sym: str, interval: str, s: int, e: int, step: int) -> pd.DataFrame:
        n = (e - s) // step + 1
        if path == OI_HIST:
            # the budget's turn comes first, in priority order, and only then a page slot: otherwise the
            # slots (first come, first served) would decide which symbol's pages wait for the budget
            await self.oi_budget.take(self.demand.priority(sym))
        async with self._pages:
            if path == KLINES:
                params = {"symbol": sym, "interval": interval, "startTime": s, "endTime": e + step - 1, "limit": n}
                return parse_klines(await self._get(KLINES, params, weight=kline_weight(n)))
            params = {"symbol": sym, "period": interval, "startTime": s, "endTime": e + step - 1, "limit": n}
            return parse_open_interest(await self._get(OI_HIST, params, weight=0))


def _cover_key(sym: str, interval: str) -> str:
    return f"cover:{VENUE}:{sym}:{interval}"

