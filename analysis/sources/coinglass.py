"""CoinGlass API v4 liquidation maps (optional: only with ``COINGLASS_API_KEY``) -> :class:`LiquidationMap`.

This source does not produce bars: CoinGlass computes the map itself, and :meth:`CoinGlassSource.map`
returns it in the project's own :class:`~analysis.liqmap.LiquidationMap` (``kind="coinglass"``) so
the same metrics, chart and text apply. The report service uses ``map`` instead of
bars -> model when a source has it.

Endpoints (docs.coinglass.com, API v4; base ``https://open-api-v4.coinglass.com``; header
``CG-API-KEY``; Professional plan and above):

``GET /api/futures/liquidation/map``
    pair map: ``exchange`` (e.g. ``Binance``), ``symbol`` (``BTCUSDT``), ``range`` (1d, 7d, 30d).
    ``symbol`` is a pair as ``/api/futures/supported-exchange-pairs`` lists it, i.e. the
    exchange's own instrument id (its examples: ``BTCUSD_PERP``, ``BTCUSDT_UMCBL``, ``BTC_USDT``):
    ``BTCUSDT`` on Binance and Bybit, ``BTC-USDT-SWAP`` on OKX (:func:`pair_id`).
``GET /api/futures/liquidation/aggregated-map``
    coin map over exchanges: ``symbol`` (``BTC``), ``range``.

Both answer ``{"code": "0", "msg": "success", "data": {"data": {"<price>": [[price, level_usd,
leverage, null], ...], ...}}}``: no side and no current price; the aggregated map's leverage is
``null``. Normalisation:

* **side** by the current price (``price`` callable, e.g. Binance's mark price): levels below it
  are long liquidations, levels at or above it short liquidations;
* **tiers**: each row's leverage goes to the nearest of the model's tiers in log distance
  (5x, 10x, 25x, 50x, 100x by default, so 10/25/50/100 stay themselves, 20 -> 25x, 75 -> 100x,
  3 -> 5x); rows without a leverage go to a tier labelled ``all`` (the aggregated map has only
  that tier). The raw per-leverage totals and the mapping are kept in ``params``;
* **grid**: bins of ``ModelParams.bin_width`` or a round width near ``price x bin_pct``, aligned to
  multiples of the width like the model's; totals are preserved exactly.

Errors (docs: HTTP 200 with ``code "0"`` is success; 400 bad parameters or key, 401 key,
endpoint permission *or plan* -- "check msg" --, 429 rate limit, each also possible as a
``code`` in a 200 body): a rejected key -> SourceError saying so (the key itself never appears in
messages, logs or recordings: it travels only in the header, and any echo of it in a venue
message is masked); 403 or a plan/upgrade/permission message, including under 401 -> the plan
does not include the endpoint; 429 -> the HTTP core's Retry-After handling, then a rate-limit
SourceError. Decoded map bodies are capped at :data:`MAP_MAX_BYTES` (16 MB; a map is a few
thousand price levels, well under 1 MB), with the HTTP core's deadlines.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np

from ..bars import Bars
from ..errors import InputError, LiqmapError, SourceError
from ..liqmap import LiquidationMap, bin_levels, left_off_note, nice_width, price_grid
from ..model import ModelParams
from ..symbols import parse_symbol
from ..windows import Window
from .http import RateLimiter, VenueClient
from .validate import expect_dict, expect_list, field, to_float

__all__ = [
    "CoinGlassSource", "BASE_URL", "PAIR_MAP", "COIN_MAP", "RANGES", "EXCHANGES", "KEY_HEADER",
    "parse_map", "tier_index", "normalize", "pair_id",
]

VENUE = "coinglass"
BASE_URL = "https://open-api-v4.coinglass.com"
PAIR_MAP = "/api/futures/liquidation/map"
COIN_MAP = "/api/futures/liquidation/aggregated-map"
#: decoded-body limit of both map endpoints: a map is a few thousand price levels (well under 1 MB)
MAP_MAX_BYTES = 16 * 1024 * 1024
KEY_HEADER = "CG-API-KEY"
RANGES = {"1d": "1d", "7d": "7d", "30d": "30d"}
#: our venue names -> CoinGlass exchange names
EXCHANGES = {"binance": "Binance", "bybit": "Bybit", "okx": "OKX"}
NO_LEVERAGE_TIER = "all"
REQUESTS_PER_S = 0.5  # plan limits vary (per minute); one map per report is all we need


def pair_id(exchange: str, base: str, quote: str) -> str:
    """The ``symbol`` of a pair map: the exchange's own id of the ``base``/``quote`` perpetual."""
    if exchange == "okx":
        return f"{base}-{quote}-SWAP"
    return f"{base}{quote}"


# -- parsing and normalisation (pure) ---------------------------------------------------------------

def parse_map(payload: Any, endpoint: str = PAIR_MAP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(price, level_usd, leverage)`` arrays of every row; leverage is NaN where CoinGlass sent null."""
    body = expect_dict(payload, VENUE, endpoint)
    code = str(field(body, "code", VENUE, endpoint))
    if code != "0":
        raise _api_error(endpoint, code, str(body.get("msg") or "no message"), None)
    data = expect_dict(field(body, "data", VENUE, endpoint), VENUE, endpoint, what="data")
    levels = expect_dict(data["data"], VENUE, endpoint, what="data.data") if "data" in data else data
    price, usd, lev = [], [], []
    for key, rows in levels.items():
        where = f"level {str(key)[:20]}"
        for j, row in enumerate(expect_list(rows, VENUE, endpoint, what=where)):
            if not isinstance(row, (list, tuple)) or len(row) < 2:
                raise SourceError(VENUE, endpoint, f"{where} row {j} should be [price, level_usd, leverage, ...], got {str(row)[:60]}")
            p = to_float(row[0], VENUE, endpoint, what=f"price in {where}")
            v = to_float(row[1], VENUE, endpoint, what=f"liquidation level in {where}")
            lv = math.nan if len(row) < 3 or row[2] is None else to_float(row[2], VENUE, endpoint, what=f"leverage in {where}")
            if p <= 0 or v < 0 or (not math.isnan(lv) and lv <= 0):
                raise SourceError(VENUE, endpoint, f"{where}: price and leverage must be positive and the level non-negative")
            price.append(p)
            usd.append(v)
            lev.append(lv)
    if not price:
        raise SourceError(VENUE, endpoint, "CoinGlass returned an empty liquidation map")
    return np.asarray(price), np.asarray(usd), np.asarray(lev)


def tier_index(leverage: np.ndarray, tiers: tuple[float, ...]) -> np.ndarray:
    """Index of the nearest tier in log distance for each leverage; -1 where leverage is NaN."""
    lev = np.asarray(leverage, dtype=float)
    out = np.full(lev.shape, -1, dtype=np.int64)
    ok = np.isfinite(lev)
    if ok.any():
        dist = np.abs(np.log(lev[ok])[:, None] - np.log(np.asarray(tiers, dtype=float))[None, :])
        out[ok] = np.argmin(dist, axis=1)
    return out


def normalize(
    price: np.ndarray,
    usd: np.ndarray,
    leverage: np.ndarray,
    *,
    symbol: str,
    current_price: float,
    window: Window,
    params: ModelParams | None = None,
    now_ms: int,
    source: str,
) -> LiquidationMap:
    """CoinGlass rows as a :class:`LiquidationMap`: sides by ``current_price``, tiers by leverage."""
    params = params or ModelParams()
    if not (math.isfinite(current_price) and current_price > 0):
        raise SourceError(VENUE, "normalize", f"no usable current price for {symbol} ({current_price!r})")
    tiers_x = tuple(float(x) for x in params.leverage)
    idx = tier_index(leverage, tiers_x)
    has_none = bool(np.any(idx < 0))
    if np.all(idx < 0):
        labels: tuple[str, ...] = (NO_LEVERAGE_TIER,)
        idx = np.zeros_like(idx)
    else:
        labels = params.tier_labels + ((NO_LEVERAGE_TIER,) if has_none else ())
        idx = np.where(idx < 0, len(tiers_x), idx)
    n_tiers = len(labels)
    width = params.bin_width or nice_width(current_price * params.bin_pct)
    # the grid is bounded like the model's (grid_pct, max_bins): rows far from price are left off
    inside = np.abs(price - current_price) <= params.grid_pct * current_price
    is_long = price < current_price
    lo, n_bins = price_grid(current_price, width, float(price[inside].min(initial=current_price)),
                            float(price[inside].max(initial=current_price)), max_bins=params.max_bins)

    def side(mask: np.ndarray) -> np.ndarray:
        return bin_levels(price[mask & inside], usd[mask & inside], idx[mask & inside], n_tiers, lo, width, n_bins)

    off = left_off_note(float(usd[is_long & ~inside].sum()), float(usd[~is_long & ~inside].sum()),
                        float(current_price), params.grid_pct)

    raw: dict[str, float] = {}
    mapping: dict[str, str] = {}
    for lv, v, i in zip(leverage, usd, idx):
        key = "none" if math.isnan(lv) else f"{lv:g}"
        raw[key] = raw.get(key, 0.0) + float(v)
        mapping[key] = labels[i]
    return LiquidationMap(
        symbol=symbol,
        venues=(VENUE,),
        kind="coinglass",
        price=float(current_price),
        bin_width=width,
        grid_lo=lo,
        tiers=labels,
        long=side(is_long),
        short=side(~is_long),
        window=window.label,
        start_ms=now_ms - window.duration_ms,
        end_ms=now_ms,
        generated_ms=now_ms,
        swept=None,
        notes=(f"data: CoinGlass liquidation map ({source}, range {RANGES.get(window.label, window.label)}), "
               "sides assigned by the current price",) + ((off,) if off else ()),
        params={
            "source": source,
            "range": RANGES.get(window.label, window.label),
            "coinglass_leverage_usd": {k: round(v, 2) for k, v in sorted(raw.items())},
            "tier_mapping": mapping,
            "bin_width": width,
        },
    )


def _api_error(
    endpoint: str, code: str, msg: str, status: int | None, key: str | None = None, retry_after: float | None = None,
) -> SourceError:
    """A clear SourceError for a CoinGlass refusal; the key is masked if the message echoes it."""
    if key:
        msg = msg.replace(key, "***")
    msg = " ".join(msg.split())[:160]
    low = msg.lower()
    # CoinGlass answers 401 for a bad key *and* for an endpoint the plan lacks ("check msg"), so the
    # message's wording decides before the status does.
    plan = "upgrade" in low or "plan" in low or "permission" in low
    if not plan and (status == 401 or code == "401" or "api key" in low or "apikey" in low or "api-key" in low):
        return SourceError(VENUE, endpoint, "CoinGlass rejected the API key (COINGLASS_API_KEY): it is missing, "
                           f"invalid or expired ({msg})", status=status or 401)
    if plan or status == 403 or code == "403":
        return SourceError(VENUE, endpoint, "your CoinGlass plan does not include liquidation maps "
                           f"(they need the Professional plan or above) ({msg})", status=status or 403)
    if status == 429 or code == "429" or "too many" in low or "rate limit" in low:
        return SourceError(VENUE, endpoint, f"CoinGlass rate limit reached; try again in a minute ({msg})",
                           status=status or 429, retry_after=retry_after or 60.0)
    return SourceError(VENUE, endpoint, f"code {code}: {msg}", status=status)


# -- the source --------------------------------------------------------------------------------------

class CoinGlassSource:
    """CoinGlass's own liquidation maps behind the project's map type.

    ``exchange=None`` uses the coin map aggregated over exchanges; ``"binance"``/``"bybit"``/
    ``"okx"`` the pair map of that exchange. ``price`` returns the current price of a symbol
    (e.g. ``BinanceSource.mark_price``); CoinGlass's maps carry none.
    """

    name = VENUE

    def __init__(
        self,
        api_key: str,
        *,
        price: Callable[[str], Awaitable[float]],
        exchange: str | None = None,
        params: ModelParams | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        recorder: Any = None,
        base_url: str = BASE_URL,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        now_ms: Callable[[], int] | None = None,
        budget_s: float = 30.0,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise InputError("COINGLASS_API_KEY is empty; set it to use the coinglass source")
        if exchange is not None and exchange.lower() not in EXCHANGES:
            raise InputError(f"coinglass pair maps exist for {', '.join(EXCHANGES)}, not {exchange[:20]!r}")
        self._key = api_key.strip()
        self.exchange = exchange.lower() if exchange else None
        self.params = params or ModelParams()
        self._price = price
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.limiter = RateLimiter(REQUESTS_PER_S, 2, clock=clock, sleep=sleep)
        self.client = VenueClient(
            VENUE, base_url, transport=transport, headers={KEY_HEADER: self._key}, limiter=self.limiter,
            sleep=sleep, clock=clock, recorder=recorder, budget_s=budget_s,
        )

    def __repr__(self) -> str:  # never the key
        return f"CoinGlassSource(exchange={self.exchange!r}, key=***)"

    async def aclose(self) -> None:
        await self.client.aclose()

    async def symbols(self) -> list[str]:
        """CoinGlass has no cheap symbol list for maps; the price source's names are not implied."""
        return []

    async def bars(self, symbol: str, window: Window) -> Bars:
        raise SourceError(VENUE, "bars", "CoinGlass serves finished liquidation maps, not bars; use map()")

    async def map(self, symbol: str, window: Window) -> LiquidationMap:
        """CoinGlass's liquidation map of ``symbol`` for ``window`` (1d, 7d or 30d)."""
        pair = parse_symbol(symbol)
        rng = RANGES.get(window.label)
        if rng is None:
            raise InputError(f"CoinGlass maps cover {', '.join(RANGES)}; not {window.label}")
        if self.exchange is None:
            endpoint, params, source = COIN_MAP, {"symbol": pair.base, "range": rng}, f"{pair.base}, all exchanges"
        else:
            ex, inst = EXCHANGES[self.exchange], pair_id(self.exchange, pair.base, pair.quote)
            endpoint, params, source = PAIR_MAP, {"exchange": ex, "symbol": inst, "range": rng}, f"{ex} {inst}"
        payload, current = await asyncio.gather(self._get(endpoint, params), self._price(pair.symbol), return_exceptions=True)
        if isinstance(payload, BaseException):
            raise payload
        if isinstance(current, LiqmapError):
            raise SourceError(VENUE, "price", f"no current price for {pair.symbol} to split the map into longs and "
                              f"shorts ({current})") from None
        if isinstance(current, BaseException):
            raise current
        price, usd, lev = parse_map(payload, endpoint)
        return normalize(price, usd, lev, symbol=pair.symbol, current_price=float(current), window=window,
                         params=self.params, now_ms=self._now_ms(), source=source)

    async def _get(self, endpoint: str, params: dict[str, Any]) -> Any:
        try:
            payload = await self.client.get_json(endpoint, params, max_bytes=MAP_MAX_BYTES)
        except SourceError as exc:
            if exc.status in (401, 403, 429):
                raise _api_error(endpoint, str(exc.status), getattr(exc, "body", None) or exc.reason, exc.status,
                                 self._key, exc.retry_after) from None
            if self._key in exc.reason:
                raise SourceError(VENUE, endpoint, exc.reason.replace(self._key, "***"), status=exc.status,
                                  retry_after=exc.retry_after) from None
            raise
        body = payload if isinstance(payload, dict) else {}
        code = str(body.get("code", "0"))
        if code != "0":
            raise _api_error(endpoint, code, str(body.get("msg") or "no message"), None, self._key)
        return payload
