"""OKX v5 source: parsers on the documented payloads, and the source against a fake OKX.

The fake server follows OKX's documented contract: rows newest first, ``after``/``before`` and
``end``/``begin`` exclusive, ``candles`` and open-interest history serve only the latest 1,440
entries, the newest candle is still forming (``confirm: "0"``). Its numbers are real: the bundled
Binance BTCUSDT 5m sample, aggregated to coarser bars where needed, OI in contracts of 0.01 BTC.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

import analysis.sources.okx as okx_mod
from analysis.bars import INTERVAL_MS, Bars, iso
from analysis.errors import InputError, SourceError
from analysis.sources.cache import BarCache
from analysis.sources.okx import OkxSource, data_of, interval_for, parse_candles, parse_instruments, parse_open_interest
from analysis.windows import WINDOWS, Window

from fake_clock import FakeTime

FIX = Path(__file__).resolve().parent / "fixtures" / "okx"
CT_VAL = 0.01


def load(name: str):
    return json.loads((FIX / name).read_text())


def aggregate(bars: Bars, interval: str) -> dict[str, np.ndarray]:
    """Coarser bars from 5m bars (OHLC; OI is the value at the coarse bar's open)."""
    step = INTERVAL_MS[interval]
    key = bars.time // step
    out: dict[str, list] = {k: [] for k in ("time", "open", "high", "low", "close", "oi_usd")}
    for k in np.unique(key):
        idx = np.nonzero(key == k)[0]
        if len(idx) != step // 300_000:
            continue  # incomplete coarse bar at the edges of the sample
        out["time"].append(int(k * step))
        out["open"].append(float(bars.open[idx[0]]))
        out["high"].append(float(bars.high[idx].max()))
        out["low"].append(float(bars.low[idx].min()))
        out["close"].append(float(bars.close[idx[-1]]))
        out["oi_usd"].append(float(bars.oi_usd[idx[0]]))
    return {k: np.asarray(v) for k, v in out.items()}


class FakeOkx:
    def __init__(self, bars: Bars, now_ms: int, *, max_entries: int = 1440, drop_oi=(), dup_rows=False,
                 shuffle=False, ignore_before=False, faults=None) -> None:
        self.src = bars
        self.now_ms = now_ms
        self.max_entries = max_entries
        self.drop_oi = set(drop_oi)
        self.dup_rows = dup_rows
        self.shuffle = shuffle
        self.ignore_before = ignore_before
        self.faults = list(faults or [])
        self.calls: list[tuple[str, dict]] = []
        self.rng = np.random.default_rng(3)
        self._cache: dict[str, dict[str, np.ndarray]] = {}

    def series(self, bar: str) -> dict[str, np.ndarray]:
        interval = {"5m": "5m", "15m": "15m", "30m": "30m", "1H": "1h"}[bar]
        if interval not in self._cache:
            if interval == "5m":
                b = self.src
                self._cache[interval] = {k: getattr(b, k) for k in ("time", "open", "high", "low", "close", "oi_usd")}
            else:
                self._cache[interval] = aggregate(self.src, interval)
        return self._cache[interval]

    def ok(self, data) -> httpx.Response:
        return httpx.Response(200, json={"code": "0", "msg": "", "data": data})

    def handler(self, request: httpx.Request) -> httpx.Response:
        q = dict(request.url.params)
        self.calls.append((request.url.path, q))
        if self.faults:
            resp = self.faults.pop(0)(request)
            if resp is not None:
                return resp
        path = request.url.path
        if path == "/api/v5/public/instruments":
            return httpx.Response(200, json=load("instruments_swap.json"))
        if q.get("instId") != "BTC-USDT-SWAP":
            return httpx.Response(200, json=load("error_51001.json"))
        if path == "/api/v5/public/mark-price":
            return self.ok([{"instType": "SWAP", "instId": q["instId"], "markPx": "64012.3", "ts": str(self.now_ms)}])
        if path in ("/api/v5/market/candles", "/api/v5/market/history-candles"):
            bar = q["bar"]
            s = self.series(bar)
            step = INTERVAL_MS[{"5m": "5m", "15m": "15m", "30m": "30m", "1H": "1h"}[bar]]
            forming = (self.now_ms // step) * step
            t = s["time"]
            mask = t < forming
            if path.endswith("/candles"):
                mask &= t > forming - self.max_entries * step  # latest 1,440 rows incl. the forming one
            if "after" in q:
                mask &= t < int(q["after"])
            if "before" in q and not self.ignore_before:
                mask &= t > int(q["before"])
            idx = np.nonzero(mask)[0][::-1][: int(q.get("limit", 100))]
            rows = [[str(t[i]), repr(float(s["open"][i])), repr(float(s["high"][i])), repr(float(s["low"][i])),
                     repr(float(s["close"][i])), "1250", "12.5", repr(float(12.5 * s["close"][i])), "1"] for i in idx]
            if path.endswith("/candles") and rows and int(q.get("after", forming + 1)) > forming:
                rows.insert(0, [str(forming)] + rows[0][1:8] + ["0"])  # the forming candle is the newest row
            return self.ok(self._mess(rows))
        if path == "/api/v5/rubik/stat/contracts/open-interest-history":
            s = self.series(q["period"])
            step = INTERVAL_MS[{"5m": "5m", "15m": "15m", "30m": "30m", "1H": "1h"}[q["period"]]]
            forming = (self.now_ms // step) * step
            t = s["time"]
            mask = (t <= forming) & (t > forming - self.max_entries * step)
            if "end" in q:
                mask &= t < int(q["end"])
            if "begin" in q:
                mask &= t > int(q["begin"])
            idx = [i for i in np.nonzero(mask)[0][::-1] if int(t[i]) not in self.drop_oi][: int(q.get("limit", 100))]
            rows = []
            for i in idx:
                coin = float(s["oi_usd"][i] / s["close"][i])
                rows.append([str(t[i]), repr(coin / CT_VAL), repr(coin), repr(float(s["oi_usd"][i]))])
            return self.ok(self._mess(rows))
        return httpx.Response(404, json={"code": "404", "msg": "not found", "data": []})

    def _mess(self, rows: list) -> list:
        if self.dup_rows and rows:
            rows = rows + rows[:2]
        if self.shuffle:
            rows = [rows[i] for i in self.rng.permutation(len(rows))]
        return rows

    def count(self, suffix: str) -> int:
        return sum(1 for p, _ in self.calls if p.endswith(suffix))


def make_source(server: FakeOkx, *, cache=None, ft: FakeTime | None = None) -> OkxSource:
    ft = ft or FakeTime()
    return OkxSource(transport=httpx.MockTransport(server.handler), cache=cache, sleep=ft.sleep, clock=ft.clock,
                     now_ms=lambda: server.now_ms)


def now_after(bars: Bars, k: int = 0) -> int:
    return bars.end_ms - k * 300_000 + 1_000


# -- parsers ------------------------------------------------------------------------------------------

def test_parse_candles_keeps_only_closed_candles():
    frame = parse_candles(load("candles.json"))
    assert len(frame) == 1  # the first documented row has confirm "0": still forming
    row = frame.iloc[0]
    assert (row.time, row.open, row.high, row.low, row.close) == (1597026383085, 3.731, 3.799, 3.494, 3.72)
    assert row.volume == pytest.approx(67632347.24399722) and row.quote_volume == pytest.approx(37632347.24399722)


def test_parse_history_candles_documented_example_dedupes_equal_times():
    frame = parse_candles(load("history_candles.json"), "/api/v5/market/history-candles")
    assert len(frame) == 1 and frame.iloc[0].close == 3.72  # same ts twice: the last row wins


def test_parse_open_interest_documented_example():
    frame = parse_open_interest(load("open_interest_history.json"))
    assert frame["time"].tolist() == [1701417500000, 1701417600000]
    assert frame["oi_coin"].tolist() == [111.0, 111.0]  # oiCcy, the coin column


def test_open_interest_without_oiccy_uses_ctval():
    payload = {"code": "0", "msg": "", "data": [["1701417600000", "731377.5", "", "8888888"]]}
    assert parse_open_interest(payload, 0.01)["oi_coin"].tolist() == [pytest.approx(7313.775)]
    with pytest.raises(SourceError, match="contract value is unknown"):
        parse_open_interest(payload)


def test_parse_instruments_linear_usdt_swaps_with_ctval():
    insts = {i.canonical: i for i in parse_instruments(load("instruments_swap.json"))}
    assert set(insts) == {"BTCUSDT", "ETHUSDT", "LUNAUSDT"}  # the inverse BTC-USD-SWAP is left out
    assert insts["BTCUSDT"].venue_id == "BTC-USDT-SWAP" and insts["BTCUSDT"].contract_value == 0.01
    assert insts["ETHUSDT"].contract_value == 0.1
    assert insts["LUNAUSDT"].status == "suspend"


@pytest.mark.parametrize(
    "payload, match",
    [
        (load("error_51001.json"), "code 51001: Instrument ID does not exist"),
        ({"code": "0", "msg": ""}, "missing field 'data'"),
        ({"code": "0", "msg": "", "data": {}}, "data should be a list"),
        ({"msg": "", "data": []}, "missing field 'code'"),
    ],
)
def test_envelope_errors(payload, match):
    with pytest.raises(SourceError, match=match) as info:
        data_of(payload, "/api/v5/market/candles")
    assert info.value.venue == "okx"


def test_candle_row_errors():
    with pytest.raises(SourceError, match="row 0 has 5 fields"):
        parse_candles({"code": "0", "data": [["1", "2", "3", "4", "5"]]})
    with pytest.raises(SourceError, match="o in row 0 should be a number"):
        parse_candles({"code": "0", "data": [["1", None, "3", "4", "5", "6", "7", "8", "1"]]})


def test_interval_choice_follows_the_1440_entry_limit():
    assert interval_for(WINDOWS["1d"]) == ("5m", None)
    seven, note = interval_for(WINDOWS["7d"])
    assert seven == "15m" and "1,440" in note and "7d window uses 15m" in note
    assert interval_for(WINDOWS["30d"])[0] == "30m"
    with pytest.raises(InputError, match="stops at 1,440 entries"):
        interval_for(Window("1y", 365 * 86_400_000, "4h"))


# -- the source against a fake OKX -------------------------------------------------------------------

async def test_bars_1d_match_source_data_and_count_requests(sample_bars):
    server = FakeOkx(sample_bars, now_after(sample_bars))
    src = make_source(server)
    bars = await src.bars("BTC-USDT-SWAP", WINDOWS["1d"])
    assert (bars.venue, bars.symbol, bars.interval, len(bars)) == ("okx", "BTCUSDT", "5m", 288)
    ref = sample_bars.slice(len(sample_bars) - 288)
    np.testing.assert_array_equal(bars.time, ref.time)
    np.testing.assert_allclose(bars.close, ref.close)
    np.testing.assert_allclose(bars.oi_usd, ref.oi_usd, rtol=1e-12)
    assert np.all(bars.volume == 12.5) and np.allclose(bars.quote_volume / bars.volume, bars.close)
    bars.validate()
    # 288 bars: 1 candles page (<= 298 a page), 3 open-interest pages (<= 98 a page), 1 instruments
    assert server.count("/market/candles") == 1 and server.count("open-interest-history") == 3
    assert len(server.calls) == 5
    assert all(int(q["limit"]) <= 300 for p, q in server.calls if p.endswith("/candles"))
    assert all(int(q["limit"]) <= 100 for p, q in server.calls if "history" in p)


async def test_7d_window_uses_15m_bars_and_says_why(sample_bars):
    server = FakeOkx(sample_bars, now_after(sample_bars))
    bars = await make_source(server).bars("BTC", WINDOWS["7d"])
    assert bars.interval == "15m" and len(bars) == 672
    ref = aggregate(sample_bars, "15m")
    np.testing.assert_array_equal(bars.time, ref["time"][-672:])
    np.testing.assert_allclose(bars.high, ref["high"][-672:])
    assert any("latest 1,440 open-interest entries" in n for n in bars.notes)


async def test_older_candles_come_from_history_candles(sample_bars, monkeypatch):
    # With 48 entries served, 1d fits only at 30m (48 bars); 'candles' reaches the newest 46
    # closed bars, the two oldest come from 'history-candles'. Open interest, limited to its
    # latest 48 entries including the forming one, lacks the oldest bar: 47 bars remain.
    monkeypatch.setattr(okx_mod, "MAX_ENTRIES", 48)
    server = FakeOkx(sample_bars, now_after(sample_bars), max_entries=48)
    bars = await make_source(server).bars("BTCUSDT", WINDOWS["1d"])
    assert bars.interval == "30m" and len(bars) == 47
    assert server.count("/market/candles") == 1 and server.count("/history-candles") == 1
    np.testing.assert_array_equal(bars.time, aggregate(sample_bars, "30m")["time"][-47:])


async def test_pages_with_duplicates_out_of_order_rows_and_missing_oi(sample_bars):
    ref = sample_bars.slice(len(sample_bars) - 288)
    dropped = [int(ref.time[10]), int(ref.time[97]), int(ref.time[98]), int(ref.time[99])]
    server = FakeOkx(sample_bars, now_after(sample_bars), drop_oi=dropped, dup_rows=True, shuffle=True)
    bars = await make_source(server).bars("BTCUSDT", WINDOWS["1d"])
    assert len(bars) == 288 - 4 and not set(dropped) & set(bars.time.tolist())
    assert [g.missing for g in bars.validate()] == [1, 3]


async def test_a_venue_ignoring_before_still_yields_exactly_the_range(sample_bars):
    server = FakeOkx(sample_bars, now_after(sample_bars), ignore_before=True)
    bars = await make_source(server).bars("BTCUSDT", WINDOWS["1d"])
    assert len(bars) == 288 and bars.time[0] == sample_bars.time[-288]


async def test_incremental_refresh_fetches_only_new_bars(sample_bars):
    cache = BarCache(None)
    server = FakeOkx(sample_bars, now_after(sample_bars, 3))
    b1 = await make_source(server, cache=cache).bars("BTCUSDT", WINDOWS["1d"])
    server.calls.clear()
    server.now_ms += 300_000
    b2 = await make_source(server, cache=cache).bars("BTCUSDT", WINDOWS["1d"])
    assert server.count("/market/candles") == 1 and server.count("open-interest-history") == 1
    assert b2.time[-1] == b1.time[-1] + 300_000
    q = next(q for p, q in server.calls if p.endswith("/candles"))
    assert int(q["before"]) == b1.time[-1] + 300_000 - 1  # exclusive bound: only the bar after the newest cached one


async def test_concurrent_requests_share_one_fetch(sample_bars):
    server = FakeOkx(sample_bars, now_after(sample_bars))
    src = make_source(server)
    out = await asyncio.gather(*(src.bars("BTCUSDT", WINDOWS["1d"]) for _ in range(25)))
    assert {len(b) for b in out} == {288}
    assert server.count("/market/candles") == 1 and server.count("open-interest-history") == 3


async def test_unknown_and_suspended_symbols(sample_bars):
    src = make_source(FakeOkx(sample_bars, now_after(sample_bars)))
    with pytest.raises(InputError, match="okx has no trading ETHUSDC perpetual; did you mean ETHUSDT"):
        await src.bars("ETH/USDC", WINDOWS["1d"])
    with pytest.raises(InputError, match="LUNA-USDT-SWAP is not trading"):
        await src.bars("LUNA", WINDOWS["1d"])
    assert await src.symbols() == ["BTCUSDT", "ETHUSDT"]


async def test_http_429_with_code_50011_is_retried_after_retry_after(sample_bars):
    limited = httpx.Response(429, json=load("error_50011.json"), headers={"Retry-After": "2"})
    server = FakeOkx(sample_bars, now_after(sample_bars), faults=[lambda r: limited])
    ft = FakeTime()
    bars = await make_source(server, ft=ft).bars("BTCUSDT", WINDOWS["1d"])
    assert len(bars) == 288 and server.count("instruments") == 2
    assert 2.0 in ft.slept


async def test_code_50011_in_a_200_body_pauses_and_retries(sample_bars):
    limited = httpx.Response(200, json=load("error_50011.json"))
    server = FakeOkx(sample_bars, now_after(sample_bars), faults=[lambda r: limited] * 2)
    ft = FakeTime()
    assert await make_source(server, ft=ft).symbols()
    assert server.count("instruments") == 3 and sum(ft.slept) >= 4.0


async def test_server_errors_exhausting_the_budget_leave_the_cache_clean(sample_bars):
    cache = BarCache(None)
    down = [lambda r: None] + [lambda r: httpx.Response(503, text="maintenance")] * 100
    server = FakeOkx(sample_bars, now_after(sample_bars), faults=down)
    with pytest.raises(SourceError, match="server error HTTP 503") as info:
        await make_source(server, cache=cache).bars("BTCUSDT", WINDOWS["1d"])
    assert info.value.venue == "okx"
    assert cache.count("okx", "BTC-USDT-SWAP", "5m") == 0


async def test_empty_data_is_a_clear_error(sample_bars):
    server = FakeOkx(sample_bars.slice(0, 0), now_after(sample_bars))
    with pytest.raises(SourceError, match="no bars with open interest for BTC-USDT-SWAP"):
        await make_source(server).bars("BTCUSDT", WINDOWS["1d"])


# -- aggregation with the other live venue -----------------------------------------------------------

async def test_all_sums_bybit_and_okx_on_one_grid_and_survives_one_venue_down(sample_bars):
    from test_bybit import FakeBybit, make_source as make_bybit

    from analysis.model import ModelParams, build_map
    from analysis.report import ReportService

    now = now_after(sample_bars)
    bybit = make_bybit(FakeBybit(sample_bars), now)
    okx = make_source(FakeOkx(sample_bars, now))
    svc = ReportService({"bybit": bybit, "okx": okx}, now_ms=lambda: now)
    m, missing = await svc.maps("BTCUSDT", WINDOWS["1d"], svc.resolve_venues("all"))
    assert m.venues == ("bybit", "okx") and not missing
    one = build_map(await bybit.bars("BTCUSDT", WINDOWS["1d"]), ModelParams(), window="1d", now_ms=now)
    # same real data on both venues: each venue's slice of the merged map holds that venue's total
    assert m.long[0].sum() == pytest.approx(one.total_long) and m.long[1].sum() == pytest.approx(one.total_long)
    assert m.total_short == pytest.approx(2 * one.total_short)

    down = make_source(FakeOkx(sample_bars, now, faults=[lambda r: httpx.Response(503, text="down")] * 50))
    svc = ReportService({"bybit": bybit, "okx": down}, now_ms=lambda: now)
    m, missing = await svc.maps("BTCUSDT", WINDOWS["1d"], ("bybit", "okx"))
    assert m.venues == ("bybit",) and "503" in missing["okx"]
    assert any(n.startswith("okx missing:") for n in m.notes)


async def test_mark_price(sample_bars):
    server = FakeOkx(sample_bars, now_after(sample_bars))
    assert await make_source(server).mark_price("BTC") == 64012.3
    q = next(q for p, q in server.calls if p.endswith("/mark-price"))
    assert q == {"instType": "SWAP", "instId": "BTC-USDT-SWAP"}


async def test_request_pacing_stays_within_each_documented_window(sample_bars):
    """Replays the fake clock: no 2-second window holds more requests than OKX documents."""
    server = FakeOkx(sample_bars, now_after(sample_bars))
    ft = FakeTime()
    stamps: list[tuple[float, str]] = []
    plain = server.handler

    def stamped(request):
        stamps.append((ft.t, request.url.path))
        return plain(request)

    src = OkxSource(transport=httpx.MockTransport(stamped), sleep=ft.sleep, clock=ft.clock, now_ms=lambda: server.now_ms)
    await src.bars("BTCUSDT", WINDOWS["30d"])
    for path, limit in okx_mod._LIMITS_PER_2S.items():
        times = sorted(t for t, p in stamps if p == path)
        worst = max((sum(1 for u in times if t <= u < t + 2.0) for t in times), default=0)
        assert worst <= limit, (path, worst, limit)
    assert sum(1 for _, p in stamps if "open-interest" in p) >= 14  # enough requests to test the OI limit


async def test_truncated_body_is_a_source_error_and_nothing_is_cached(sample_bars):
    cache = BarCache(None)

    def truncated(request):
        if "open-interest" in request.url.path:
            return httpx.Response(200, content=b'{"code":"0","msg":"","data":[["1701417600000","7313')
        return None

    server = FakeOkx(sample_bars, now_after(sample_bars), faults=[truncated] * 10)
    with pytest.raises(SourceError, match="okx .*not valid JSON"):
        await make_source(server, cache=cache).bars("BTCUSDT", WINDOWS["1d"])
    assert cache.count("okx", "BTC-USDT-SWAP", "5m") == 0


# -- bad bars: refused before the cache, naming venue, endpoint and time -------------------------------

def spoil(bars: Bars, rows, **values: float) -> Bars:
    """A copy of ``bars`` with the given columns set at ``rows`` (bad prints from the venue)."""
    frame = bars.to_frame()
    for k, v in values.items():
        frame.loc[frame.index[rows], k] = v
    return Bars.from_frame(frame, venue=bars.venue, symbol=bars.symbol, interval=bars.interval)


async def test_fifty_bars_with_high_below_low_are_refused_and_nothing_is_cached(sample_bars):
    cache = BarCache(None)
    server = FakeOkx(sample_bars, now_after(sample_bars, 60))
    await make_source(server, cache=cache).bars("BTCUSDT", WINDOWS["1d"])
    before = cache.load("okx", "BTC-USDT-SWAP", "5m")
    assert len(before) > 200
    bad = slice(-55, -5)
    server.src, server._cache = spoil(sample_bars, bad, high=sample_bars.low[bad] * 0.99), {}
    server.now_ms = now_after(sample_bars)
    with pytest.raises(SourceError, match="high < low") as ei:
        await make_source(server, cache=cache).bars("BTCUSDT", WINDOWS["1d"])
    assert (ei.value.venue, ei.value.endpoint) == ("okx", "/api/v5/market/candles")
    assert iso(int(sample_bars.time[-55])) in str(ei.value) and "nothing cached" in str(ei.value)
    pd.testing.assert_frame_equal(cache.load("okx", "BTC-USDT-SWAP", "5m"), before)
    server.src, server._cache = sample_bars, {}
    bars = await make_source(server, cache=cache).bars("BTCUSDT", WINDOWS["1d"])
    assert bars.time[-1] == sample_bars.time[-1] and len(bars) == 288


async def test_negative_open_interest_is_refused_naming_the_oi_endpoint(sample_bars):
    server = FakeOkx(spoil(sample_bars, [-3], oi_usd=-1e6), now_after(sample_bars))
    with pytest.raises(SourceError, match="open interest must be positive") as ei:
        await make_source(server, cache=BarCache(None)).bars("BTCUSDT", WINDOWS["1d"])
    assert (ei.value.venue, ei.value.endpoint) == ("okx", "/api/v5/rubik/stat/contracts/open-interest-history")
    assert iso(int(sample_bars.time[-3])) in str(ei.value)
