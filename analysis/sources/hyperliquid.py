"""Hyperliquid perpetuals: candles from ``candleSnapshot``, open interest recorded by liqmap itself.

Every call is ``POST https://api.hyperliquid.xyz/info`` with a JSON body naming its ``type``
(hyperliquid.gitbook.io/hyperliquid-docs/for-developers/api/info-endpoint and .../perpetuals):

``{"type": "candleSnapshot", "req": {"coin", "interval", "startTime", "endTime"}}``
    rows ``{"t": open ms, "T": close ms, "s": coin, "i": interval, "o", "c", "h", "l": price
    strings, "v": volume in the coin (string), "n": number of trades}``, oldest first. Intervals
    1m 3m 5m 15m 30m 1h 2h 4h 8h 12h 1d 3d 1w 1M. **Only the most recent 5000 candles** of an
    interval are available, and one answer holds at most :data:`CANDLE_LIMIT` of them: a range
    longer than that is asked again from the candle after the last one received. The candle still
    forming is dropped. No taker split is published (the side model falls back to neutral).
``{"type": "metaAndAssetCtxs"}``
    ``[{"universe": [{"name", "szDecimals", "maxLeverage", "onlyIsolated"?, "isDelisted"?}, ...]},
    [{"openInterest", "markPx", "oraclePx", "funding", ...}, ...]]``: the two lists align by index.
    ``openInterest`` is in coins and counts **one side** (the longs, which equal the shorts), like
    Binance's ``sumOpenInterest``, so it is used as is. ``markPx`` is the mark price (USDC).

**Rate limits** (.../api/rate-limits): 1200 weight per minute per IP for all REST requests;
``metaAndAssetCtxs`` and ``candleSnapshot`` weigh 20 (only ``l2Book``, ``allMids``,
``clearinghouseState``, ``orderStatus``, ``spotClearinghouseState`` and ``exchangeStatus`` weigh
2), and ``candleSnapshot`` weighs 1 more per 60 candles returned (charged, rounded up, once the
answer is in: :meth:`~analysis.sources.http.RateLimiter.charge`). This source keeps to
:data:`SOURCE_WEIGHT_PER_MIN` (a third of the budget: the measured layer's position poller shares
the IP); pass ``limiter=`` to share one bucket with other Hyperliquid clients of the process.
429 is handled by the HTTP core (``Retry-After`` when sent, else backoff; clamped).

**Symbols.** Hyperliquid names coins (``BTC``, ``ETH``, ``kPEPE``); every perpetual is margined and
settled in USDC. liqmap serves coin ``X`` as the canonical pair ``XUSDT`` so that it sums with the
other venues' USDT perpetuals of the same coin in ``all`` (USDC prices taken as USD), and says so
in the map's notes; ``XUSDC`` and ``XUSD`` find it too. A ``k`` prefix means a thousand units
(``kPEPE`` is 1000 PEPE), so ``kPEPE`` is ``1000PEPEUSDT``, the same scale as Binance's and
Bybit's ``1000PEPEUSDT`` (``KPEPEUSDT`` finds it too). Delisted coins are left out.

**Open interest history.** Hyperliquid serves none: :mod:`analysis.sources.hyperliquid_oi` records
snapshots (``liqmap poll-oi`` or the bot's task) and :meth:`HyperliquidSource.bars` joins the
candles with them (the last snapshot inside a bar is its OI). A map is built from the newest
unbroken run of recorded OI once it spans :attr:`HistoryParams.min_history_h`; with less, a
:class:`~analysis.errors.DataError` says how much there is and what to run. The map's notes and
its JSON (``provenance.hyperliquid.oi_history``) say how much history it rests on.

Decoded bodies are capped per request type, far above the largest legitimate answer:

====================  ================================================  =======
request               largest legitimate response                       limit
====================  ================================================  =======
``candleSnapshot``    5,000 candles x ~150 bytes = ~750 KB              4 MB
``metaAndAssetCtxs``  ~250 coins x ~450 bytes = ~110 KB                 8 MB
====================  ================================================  =======
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pandas as pd

from ..bars import INTERVAL_MS, Bars, iso
from ..errors import DataError, InputError, SourceError
from ..margin import MarginTable
from ..symbols import parse_symbol, suggest
from ..windows import Window
from .cache import BarCache
from .http import DEFAULT_DEADLINE_S, RateLimiter, SingleFlight, VenueClient
from .hyperliquid_oi import History, HistoryParams, OiHistory, OiSnapshot, contiguous_tail, oi_frame
from .series import Instrument, SymbolBook, coverage_notes, join_bars, last_closed_open, store_fetched
from .series import tidy as _tidy
from .tiers import hyperliquid_tier_book
from .validate import dict_columns, expect_dict, expect_list, field, to_float

__all__ = [
    "HyperliquidSource", "BASE_URL", "INTERVALS", "CANDLE_LIMIT", "INFO_WEIGHT", "CANDLES_PER_WEIGHT",
    "DOCUMENTED_WEIGHT_PER_MIN", "SOURCE_WEIGHT_PER_MIN", "MAX_BYTES", "canonical_of", "aliases_of",
    "parse_candles", "parse_meta_and_ctxs", "candle_weight",
]

VENUE = "hyperliquid"
BASE_URL = "https://api.hyperliquid.xyz"
_INFO = "/info"
_CANDLES = "/info candleSnapshot"
_CTXS = "/info metaAndAssetCtxs"
_META = "/info meta"
#: most candles one answer holds, and the most recent candles available per interval
CANDLE_LIMIT = 5000
INFO_WEIGHT = 20
CANDLES_PER_WEIGHT = 60
DOCUMENTED_WEIGHT_PER_MIN = 1200
#: this source's share of the IP's budget (the measured layer's position poller needs the rest)
SOURCE_WEIGHT_PER_MIN = 400
SYMBOLS_TTL_S = 3600.0
MAX_PAGES = 20
#: our interval -> candleSnapshot ``interval``
INTERVALS: dict[str, str] = {"5m": "5m", "15m": "15m", "30m": "30m", "1h": "1h", "4h": "4h", "1d": "1d"}
_MB = 1024 * 1024
MAX_BYTES: dict[str, int] = {_CANDLES: 4 * _MB, _CTXS: 8 * _MB, _META: 8 * _MB}
_COIN = re.compile(r"[A-Za-z0-9]{1,20}", re.ASCII)
_THOUSANDS = re.compile(r"k[A-Z0-9]{1,19}", re.ASCII)


def canonical_of(coin: str) -> str | None:
    """``BTC`` -> ``BTCUSDT``, ``kPEPE`` -> ``1000PEPEUSDT``; None for a name liqmap cannot serve."""
    if not isinstance(coin, str) or not _COIN.fullmatch(coin):
        return None
    base = "1000" + coin[1:] if _THOUSANDS.fullmatch(coin) else coin.upper()
    return f"{base}USDT"


def aliases_of(coin: str) -> tuple[str, ...]:
    """Every canonical spelling that finds ``coin``: ``XUSDT`` first, then ``XUSDC``, ``XUSD``
    (and for ``kPEPE`` also ``KPEPEUSDT`` ...)."""
    canon = canonical_of(coin)
    if canon is None:
        return ()
    bases = [canon[: -len("USDT")]]
    if _THOUSANDS.fullmatch(coin):
        bases.append(coin.upper())
    return tuple(f"{b}{q}" for b in bases for q in ("USDT", "USDC", "USD"))


def candle_weight(n_candles: int) -> int:
    """The extra weight of a candleSnapshot answer: 1 per 60 candles, rounded up."""
    return math.ceil(max(0, n_candles) / CANDLES_PER_WEIGHT)


# -- parsers -----------------------------------------------------------------------------------------

def parse_candles(payload: Any, coin: str, interval: str, endpoint: str = _CANDLES) -> pd.DataFrame:
    """Candle rows as a frame ``time, open, high, low, close, volume``, oldest first.

    A row of another coin or interval than asked for is refused (a SourceError), never mixed in.
    """
    rows = expect_list(payload, VENUE, endpoint)
    for i, row in enumerate(rows):
        s, iv = field(row, "s", VENUE, endpoint, where=f"candle {i}"), field(row, "i", VENUE, endpoint, where=f"candle {i}")
        if s != coin or iv != interval:
            raise SourceError(VENUE, endpoint, f"candle {i} is for {ascii(str(s)[:20])} {ascii(str(iv)[:8])}, "
                              f"not {coin} {interval}")
    arr = dict_columns(rows, ("t", "o", "h", "l", "c", "v"), VENUE, endpoint)
    frame = pd.DataFrame(arr, columns=["time", "open", "high", "low", "close", "volume"])
    return _tidy(frame)


def parse_meta_and_ctxs(payload: Any, endpoint: str = _CTXS) -> list[tuple[Instrument, dict[str, Any]]]:
    """The perpetuals of a ``metaAndAssetCtxs`` answer with their asset contexts.

    Coins with a name liqmap cannot serve are left out; delisted ones come with status ``delisted``.
    The universe and the contexts must be lists of the same length (they align by index).
    """
    body = expect_list(payload, VENUE, endpoint)
    if len(body) != 2:
        raise SourceError(VENUE, endpoint, f"response should be [meta, asset contexts], got a list of {len(body)}")
    meta = expect_dict(body[0], VENUE, endpoint, what="meta")
    universe = expect_list(field(meta, "universe", VENUE, endpoint), VENUE, endpoint, what="universe")
    ctxs = expect_list(body[1], VENUE, endpoint, what="asset contexts")
    if len(universe) != len(ctxs):
        raise SourceError(VENUE, endpoint, f"universe lists {len(universe)} coins but {len(ctxs)} asset contexts came")
    out = []
    for i, (asset, ctx) in enumerate(zip(universe, ctxs)):
        name = field(asset, "name", VENUE, endpoint, where=f"universe entry {i}")
        canon = canonical_of(name)
        if canon is None:
            continue
        status = "delisted" if isinstance(asset, dict) and asset.get("isDelisted") is True else "Trading"
        out.append((Instrument(canon, name, canon[: -len("USDT")], "USDC", status),
                    expect_dict(ctx, VENUE, endpoint, what=f"asset context {i}")))
    return out


def _positive(ctx: dict[str, Any], key: str, coin: str, endpoint: str) -> float:
    value = to_float(field(ctx, key, VENUE, endpoint, where=f"the context of {coin}"), VENUE, endpoint,
                     what=f"{key} of {coin}")
    if value < 0 or (key == "markPx" and value == 0):
        raise SourceError(VENUE, endpoint, f"{key} of {coin} is not positive ({value:g})")
    return value


# -- the source --------------------------------------------------------------------------------------

class HyperliquidSource:
    """Hyperliquid perpetuals as :class:`Bars`: candles joined with liqmap's recorded open interest.

    ``oi_history`` is where recorded OI is read (``bot.hl_oi_store``; None: no history, every map
    is refused saying so). ``history`` holds the thresholds. ``transport``, ``sleep``, ``clock``
    and ``now_ms`` are injectable; ``cache`` keeps the coin list (candles are not cached: a window
    is one request). ``limiter`` shares a weight bucket with other Hyperliquid clients.
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
        limiter: RateLimiter | None = None,
        oi_history: OiHistory | None = None,
        history: HistoryParams | None = None,
    ) -> None:
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        per_s = SOURCE_WEIGHT_PER_MIN / 60.0
        self.limiter = limiter or RateLimiter(per_s, SOURCE_WEIGHT_PER_MIN // 4, clock=clock, sleep=sleep)
        self.client = client or VenueClient(
            VENUE, base_url, transport=transport, limiter=self.limiter, sleep=sleep, clock=clock,
            recorder=recorder, budget_s=budget_s, deadline_s=deadline_s,
        )
        self.cache = cache  # keeps the coin list only
        self.book = SymbolBook(VENUE, symbols_ttl_s, clock, cache)
        self.oi_history = oi_history
        self.history = history or HistoryParams()
        self._flight = SingleFlight()
        self._aliases: dict[str, Instrument] = {}
        self._aliases_of: dict[str, Instrument] | None = None
        #: margin tiers per coin from ``meta`` (one answer serves every coin; refreshed daily, see tiers.py)
        self.tiers = hyperliquid_tier_book(lambda: self._info({"type": "meta"}, _META),
                                           lambda coin: canonical_of(coin) or coin, cache=cache,
                                           now=lambda: self._now_ms() / 1000)

    async def aclose(self) -> None:
        await self.client.aclose()
        close = getattr(self.oi_history, "close", None)
        if close is not None:
            await close()

    async def _info(self, body: dict[str, Any], endpoint: str) -> Any:
        return await self.client.post_json(_INFO, body, cost=INFO_WEIGHT, max_bytes=MAX_BYTES[endpoint], endpoint=endpoint)

    # -- symbols ---------------------------------------------------------------------------------
    async def _contexts(self) -> list[tuple[Instrument, dict[str, Any]]]:
        """One ``metaAndAssetCtxs`` (shared by concurrent callers); refreshes the coin list too."""
        pairs = await self._flight.do("ctxs", lambda: self._fetch_contexts())
        return pairs

    async def _fetch_contexts(self) -> list[tuple[Instrument, dict[str, Any]]]:
        pairs = parse_meta_and_ctxs(await self._info({"type": "metaAndAssetCtxs"}, _CTXS))
        if not pairs:
            raise SourceError(VENUE, _CTXS, "the universe lists no perpetual")
        self.book.set([i for i, _ in pairs])
        return pairs

    async def _load_instruments(self) -> list[Instrument]:
        return [i for i, _ in await self._fetch_contexts()]

    async def _book(self) -> dict[str, Instrument]:
        insts = await self.book.get(self._load_instruments)
        if self._aliases_of is not insts:
            aliases: dict[str, Instrument] = {}
            for inst in insts.values():
                for a in aliases_of(inst.venue_id):
                    aliases.setdefault(a, inst)
            for inst in insts.values():  # a coin's own canonical name always wins over another's alias
                aliases[inst.canonical] = inst
            self._aliases, self._aliases_of = aliases, insts
        return self._aliases

    async def symbols(self) -> list[str]:
        """Canonical names (``BTCUSDT``, ``1000PEPEUSDT``) of Hyperliquid's trading perpetuals."""
        return sorted(i.canonical for i in (await self.book.get(self._load_instruments)).values() if i.status == "Trading")

    async def resolve(self, symbol: str) -> Instrument:
        """The coin for a user spelling (``BTC``, ``BTCUSDC``, ``kPEPE``); InputError when unknown."""
        pair = parse_symbol(symbol)
        aliases = await self._book()
        inst = aliases.get(pair.symbol)
        if inst is None:
            hints = suggest(pair.symbol, sorted({i.canonical for i in aliases.values()}))
            hint = f"; did you mean {', '.join(hints)}?" if hints else ""
            raise InputError(f"hyperliquid has no {pair.symbol} perpetual{hint}")
        if inst.status != "Trading":
            raise InputError(f"hyperliquid {inst.venue_id} is delisted; try another venue")
        return inst

    async def snapshot(self) -> list[OiSnapshot]:
        """Every trading coin's open interest (coins, one side) and mark price now (one request, weight 20).

        A coin whose context lacks a usable ``openInterest`` or ``markPx`` is left out of the
        snapshot (its history has a hole); only a broken response as a whole is a SourceError.
        """
        now = int(self._now_ms())
        out = []
        for inst, ctx in await self._contexts():
            if inst.status != "Trading":
                continue
            try:
                oi = _positive(ctx, "openInterest", inst.venue_id, _CTXS)
                px = _positive(ctx, "markPx", inst.venue_id, _CTXS)
            except SourceError:
                continue
            out.append(OiSnapshot(inst.venue_id, inst.canonical, now, oi, px))
        return out

    async def margin_tiers(self, symbol: str) -> MarginTable:
        """The coin's margin tiers from Hyperliquid's ``meta`` margin tables (:mod:`analysis.sources.tiers`)."""
        inst = await self.resolve(symbol)
        return await self.tiers.table(inst.canonical)

    async def mark_price(self, symbol: str) -> float:
        """Hyperliquid's current mark price of ``symbol`` (USDC)."""
        inst = await self.resolve(symbol)
        for i, ctx in await self._contexts():
            if i.venue_id == inst.venue_id:
                return _positive(ctx, "markPx", inst.venue_id, _CTXS)
        raise SourceError(VENUE, _CTXS, f"no asset context for {inst.venue_id}")

    # -- candles ---------------------------------------------------------------------------------
    async def candles(self, coin: str, interval: str, start: int, end: int) -> pd.DataFrame:
        """Candles of ``coin`` opening in ``start..end`` (ms), paged beyond :data:`CANDLE_LIMIT`."""
        step = INTERVAL_MS[interval]
        frames = []
        s = start
        for _ in range(MAX_PAGES):
            body = {"type": "candleSnapshot",
                    "req": {"coin": coin, "interval": INTERVALS[interval], "startTime": s, "endTime": end + step - 1}}
            payload = await self._info(body, _CANDLES)
            frame = parse_candles(payload, coin, INTERVALS[interval])
            self.limiter.charge(candle_weight(len(frame)))
            frames.append(frame)
            if len(frame) < CANDLE_LIMIT or int(frame["time"].iloc[-1]) >= end:
                break
            s = int(frame["time"].iloc[-1]) + step
        out = _tidy(pd.concat(frames, ignore_index=True))
        return out[(out["time"] >= start) & (out["time"] <= end)].reset_index(drop=True)

    # -- bars ------------------------------------------------------------------------------------
    def interval_for(self, window: Window) -> str:
        if window.interval not in INTERVALS:
            raise InputError(f"hyperliquid has no {window.interval} candles here; intervals: {', '.join(INTERVALS)}")
        return window.interval

    def _refuse(self, inst: Instrument, window: Window, have: str) -> DataError:
        need = self.history.min_history_h
        return DataError(
            f"hyperliquid {inst.canonical}: {have}; an estimated map needs at least {need:g} h of unbroken "
            f"open-interest history (min_history_h). Hyperliquid publishes no OI history, so liqmap records it: "
            f"keep `liqmap poll-oi` (or the bot with LIQMAP_HL_OI=1) running and ask again")

    async def bars(self, symbol: str, window: Window) -> Bars:
        """Candles joined with recorded OI over the window's newest unbroken run of history."""
        inst = await self.resolve(symbol)
        interval = self.interval_for(window)
        step = INTERVAL_MS[interval]
        end = last_closed_open(self._now_ms(), step)
        start = end - (window.duration_ms // step - 1) * step
        if self.oi_history is None:
            raise self._refuse(inst, window, "no open-interest recorder is configured")
        points = await self.oi_history.read_oi(inst.venue_id, start, end + step)
        oi = oi_frame(points)
        if len(oi) == 0:
            raise self._refuse(inst, window, f"liqmap has recorded no open interest of {inst.venue_id} in the last {window.label}")
        first, last = int(oi["time"].iloc[0]), int(oi["time"].iloc[-1])
        span_h = (last - first) / 3_600_000
        if span_h < self.history.min_history_h:  # refused before any candle is asked for
            raise self._refuse(inst, window, f"liqmap has recorded {span_h:.1f} h of open interest "
                                             f"({len(oi)} snapshots since {iso(first)})")
        fetch_from = max(start, (first // step) * step)
        candles = await self.candles(inst.venue_id, interval, fetch_from, end)
        joined = join_bars(candles, oi, step)
        store_fetched(None, VENUE, inst.venue_id, interval, joined, fetch_from, None,
                      price_endpoint=_CANDLES, oi_endpoint="recorded open interest")
        if len(joined) == 0:
            raise self._refuse(inst, window, "no candle matches a recorded open-interest snapshot")
        times = joined["time"].to_numpy()
        stale = (end - int(times[-1])) // step
        if stale > self.history.max_stale_bars:
            raise self._refuse(inst, window, f"the newest recorded open interest is from {iso(last)}, "
                                             f"{stale} {interval} bars before the last closed one (the recorder stopped?)")
        tail = contiguous_tail(times, step, self.history.max_gap_bars)
        used = joined.iloc[tail:].reset_index(drop=True)
        hist = History(first, last, len(oi), int(used["time"].iloc[0]), int(used["time"].iloc[-1]) + step, len(used))
        if hist.used_hours < self.history.min_history_h:
            raise self._refuse(inst, window, f"the newest unbroken run of recorded open interest is {hist.used_hours:.1f} h "
                                             f"(since {iso(hist.used_from_ms or 0)}; {len(oi)} snapshots in the window)")
        bars = Bars.from_frame(used, venue=VENUE, symbol=inst.canonical, interval=interval)
        what = (f"Hyperliquid {inst.venue_id} perpetual (USDC-margined; served as {inst.canonical}, USDC prices taken as USD) "
                f"candles x open interest recorded by liqmap (one side, coin x close)")
        notes = coverage_notes(bars, window, what)
        notes.append(f"open-interest history: {hist.used_hours:.1f} h unbroken since {iso(hist.used_from_ms or 0)} "
                     f"({len(oi)} snapshots recorded in the window)")
        if tail:
            notes.append(f"recorded open interest before {iso(hist.used_from_ms or 0)} is left out: a hole of more "
                         f"than {self.history.max_gap_bars} bars precedes it")
        provenance = {"coin": inst.venue_id, "margin": "USDC", "oi_history": hist.to_json()}
        return bars.with_notes(*notes).with_provenance(provenance)
