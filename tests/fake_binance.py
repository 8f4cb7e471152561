"""An offline stand-in for Binance's USDⓈ-M REST API, for tests and benchmarks.

It serves ``/fapi/v1/klines``, ``/futures/data/openInterestHist``, ``/fapi/v1/exchangeInfo`` and
``/fapi/v1/premiumIndex`` through ``httpx.MockTransport`` in the documented response shapes and
with the documented paging rules (``startTime``/``endTime`` inclusive by open time, ascending,
at most ``limit`` rows, ``limit`` capped at 1500 / 500, open interest only for the latest 30
days), generated from real bars (the bundled Binance BTCUSDT 5m sample). Prices and open
interest are the real ones; kline volume and taker-buy volume are derived from the sample's
taker net volume (the sample has no total volume), so they are plausible, not recorded.

Faults are injected per path with :meth:`FakeBinance.inject`; every request is logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

__all__ = ["FakeBinance", "EXCHANGE_INFO_FIXTURE"]

EXCHANGE_INFO_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "binance" / "exchangeInfo-2021-07-22-trimmed.json"
_STEP = {"5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "1d": 86_400_000}
_DAY = 86_400_000


def _frame_from_5m(frame: pd.DataFrame) -> pd.DataFrame:
    f = frame.copy()
    if "volume" not in f:
        net = f["taker_net"].to_numpy() if "taker_net" in f else np.zeros(len(f))
        f["volume"] = np.abs(net) * 2.0 + 50.0
        f["taker_buy"] = (f["volume"] + net) / 2.0
    if "quote_volume" not in f:
        f["quote_volume"] = f["volume"] * (f["high"] + f["low"] + f["close"]) / 3.0
    return f[["time", "open", "high", "low", "close", "oi_usd", "volume", "quote_volume", "taker_buy"]].reset_index(drop=True)


def _resample(f5: pd.DataFrame, step: int) -> pd.DataFrame:
    if step == 300_000:
        return f5
    key = (f5["time"] // step) * step
    g = f5.groupby(key, sort=True)
    out = pd.DataFrame({
        "time": g["time"].first().index.to_numpy(np.int64),
        "open": g["open"].first().to_numpy(), "high": g["high"].max().to_numpy(), "low": g["low"].min().to_numpy(),
        "close": g["close"].last().to_numpy(),
        "oi_usd": g["oi_usd"].first().to_numpy(),  # OI stamped at the bar's open, like the 5m series
        "volume": g["volume"].sum().to_numpy(), "quote_volume": g["quote_volume"].sum().to_numpy(),
        "taker_buy": g["taker_buy"].sum().to_numpy(),
    })
    return out


class FakeBinance:
    """A deterministic Binance USDⓈ-M server over real bars, with fault injection and a request log.

    ``bars_5m`` is a frame with ``time, open, high, low, close, oi_usd`` (+ ``taker_net`` or
    volumes) at 5 minutes; ``now_ms`` is a callable so tests can move time forward.
    """

    def __init__(self, bars_5m: pd.DataFrame, now_ms: Callable[[], int], *, symbol: str = "BTCUSDT",
                 exchange_info: dict[str, Any] | None = None) -> None:
        self.symbol = symbol
        self.now_ms = now_ms
        self._f5 = _frame_from_5m(bars_5m)
        self._by_interval: dict[str, pd.DataFrame] = {}
        self.exchange_info = exchange_info if exchange_info is not None else json.loads(EXCHANGE_INFO_FIXTURE.read_text())
        self.requests: list[httpx.Request] = []
        self.faults: dict[str, list[Any]] = {}
        self.used_weight = 0
        self.page_hook: Callable[[str, list[Any]], list[Any]] | None = None  # reshape served rows (dupes, order)
        self.drop_times: set[int] = set()  # bars the venue "lost" (served by neither endpoint)
        self.drop_oi_times: set[int] = set()

    # -- controls ----------------------------------------------------------------------------------
    def inject(self, path: str, *items: Any) -> None:
        """Queue faults for ``path``: an ``httpx.Response``, an exception to raise, or ``"truncate"``."""
        self.faults.setdefault(path, []).extend(items)

    def count(self, path: str | None = None) -> int:
        return sum(1 for r in self.requests if path is None or r.url.path == path)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def frame(self, interval: str) -> pd.DataFrame:
        if interval not in self._by_interval:
            self._by_interval[interval] = _resample(self._f5, _STEP[interval])
        return self._by_interval[interval]

    # -- serving -----------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        queue = self.faults.get(path)
        if queue:
            item = queue.pop(0)
            if isinstance(item, Exception):
                raise item
            if isinstance(item, httpx.Response):
                return item
            if item == "truncate":
                body = self._serve(path, request).content
                return httpx.Response(200, content=body[: max(1, len(body) // 2)])
            if item == "empty":
                return httpx.Response(200, json=[])
        resp = self._serve(path, request)
        return resp

    def _weight_header(self, weight: int) -> dict[str, str]:
        self.used_weight += weight
        return {"X-MBX-USED-WEIGHT-1M": str(self.used_weight)}

    def _error(self, status: int, code: int, msg: str) -> httpx.Response:
        return httpx.Response(status, json={"code": code, "msg": msg})

    def _serve(self, path: str, request: httpx.Request) -> httpx.Response:
        q = request.url.params
        if path == "/fapi/v1/exchangeInfo":
            return httpx.Response(200, json=self.exchange_info, headers=self._weight_header(1))
        if q.get("symbol") != self.symbol:
            return self._error(400, -1121, "Invalid symbol.")
        if path == "/fapi/v1/premiumIndex":
            f = self.frame("5m")
            last = f[f["time"] <= self.now_ms()].iloc[-1]
            return httpx.Response(200, json={
                "symbol": self.symbol, "markPrice": f"{last['close']:.8f}", "indexPrice": f"{last['close']:.8f}",
                "estimatedSettlePrice": f"{last['close']:.8f}", "lastFundingRate": "0.00010000",
                "interestRate": "0.00010000", "nextFundingTime": int(self.now_ms() // 28_800_000 + 1) * 28_800_000,
                "time": int(self.now_ms()),
            }, headers=self._weight_header(1))
        if path == "/fapi/v1/klines":
            return self._klines(q)
        if path == "/futures/data/openInterestHist":
            return self._oi(q)
        return self._error(404, -5000, "Path not found")

    def _window(self, f: pd.DataFrame, q: httpx.QueryParams, default_limit: int, max_limit: int) -> pd.DataFrame | httpx.Response:
        try:
            limit = int(q.get("limit", default_limit))
            start = int(q["startTime"]) if "startTime" in q else None
            end = int(q["endTime"]) if "endTime" in q else None
        except ValueError:
            return self._error(400, -1100, "Illegal characters found in a parameter.")
        if not 1 <= limit <= max_limit:
            return self._error(400, -1130, "Data sent for parameter 'limit' is not valid.")
        now = self.now_ms()
        f = f[(f["time"] <= now) & ~f["time"].isin(self.drop_times)]
        if start is not None:
            f = f[f["time"] >= start]
        if end is not None:
            f = f[f["time"] <= end]
        return f.head(limit) if start is not None else f.tail(limit)

    def _klines(self, q: httpx.QueryParams) -> httpx.Response:
        interval = q.get("interval", "")
        if interval not in _STEP:
            return self._error(400, -1120, "Invalid interval.")
        step = _STEP[interval]
        f = self._window(self.frame(interval), q, 500, 1500)
        if isinstance(f, httpx.Response):
            return f
        limit = int(q.get("limit", 500))
        weight = 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
        now = self.now_ms()
        rows = []
        for r in f.itertuples(index=False):
            t = int(r.time)
            close = float(r.close)
            if t + step > now:  # the forming bar: its close so far is its open (a crude but valid partial bar)
                close = float(r.open)
            rows.append([
                t, f"{r.open:.2f}", f"{max(r.high, close):.2f}", f"{min(r.low, close):.2f}", f"{close:.2f}",
                f"{r.volume:.3f}", t + step - 1, f"{r.quote_volume:.5f}", 1000, f"{r.taker_buy:.3f}",
                f"{r.taker_buy * close:.5f}", "0",
            ])
        if self.page_hook is not None:
            rows = self.page_hook("/fapi/v1/klines", rows)
        return httpx.Response(200, json=rows, headers=self._weight_header(weight))

    def _oi(self, q: httpx.QueryParams) -> httpx.Response:
        period = q.get("period", "")
        if period not in _STEP:
            return self._error(400, -1120, "Invalid period.")
        now = self.now_ms()
        if "startTime" in q and int(q["startTime"]) < now - 30 * _DAY:
            return self._error(400, -1130, "Data sent for parameter 'startTime' is not valid.")
        f = self._window(self.frame(period), q, 30, 500)
        if isinstance(f, httpx.Response):
            return f
        rows = [
            {"symbol": self.symbol, "sumOpenInterest": f"{r.oi_usd / r.close:.8f}", "sumOpenInterestValue": f"{r.oi_usd:.8f}",
             "CMCCirculatingSupply": "19700000.0", "timestamp": str(int(r.time))}
            for r in f.itertuples(index=False) if int(r.time) not in self.drop_oi_times
        ]
        if self.page_hook is not None:
            rows = self.page_hook("/futures/data/openInterestHist", rows)
        return httpx.Response(200, json=rows, headers=self._weight_header(0))
