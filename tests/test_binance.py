"""Binance USDⓈ-M source, offline: documented payload shapes, paging, cache refresh and faults."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.bars import iso
from analysis.errors import InputError, SourceError
from analysis.sources.base import Source
from analysis.sources.binance import (
    EXCHANGE_INFO, KLINES, OI_HIST, BinanceSource, join, kline_weight, page_ranges, parse_exchange_info,
    parse_klines, parse_open_interest, parse_premium_index,
)
from analysis.sources.cache import BarCache
from analysis.windows import WINDOWS
from fake_binance import FakeBinance

from conftest import FIXTURES, shared_file

FX = FIXTURES / "binance"
STEP = 300_000


def load(name):
    return json.loads((FX / name).read_text())


# -- parsers against documented shapes --------------------------------------------------------------

def test_parse_documented_klines():
    f = parse_klines(load("klines.json"))
    assert f.iloc[0].to_dict() == {
        "time": 1499040000000, "open": 0.0163479, "high": 0.8, "low": 0.015758, "close": 0.015771,
        "volume": 148976.11427815, "close_time": 1499644799999, "quote_volume": 2434.19055334,
        "taker_buy": 1756.87402397,
    }
    f5 = parse_klines(load("klines-5m.json"))
    assert f5["time"].tolist() == [1616338800000, 1616339100000]
    assert f5["taker_buy"].tolist() == [273.108, 60.409] and f5["time"].dtype == np.int64


def test_parse_documented_open_interest_both_timestamp_shapes():
    f = parse_open_interest(load("openInterestHist.json"))
    assert f["time"].tolist() == [1583127900000, 1583128200000]
    assert f["oi_usd"].tolist() == [176196512.12345678, 149940752.14464448]
    g = parse_open_interest(load("openInterestHist-numeric-timestamp.json"))
    assert g["time"].tolist() == [1616438700000] and g["oi_coin"].tolist() == [34085.0]


def test_parse_documented_premium_index():
    assert parse_premium_index(load("premiumIndex.json")) == 11793.63104562


def test_parse_real_exchange_info_from_shared():
    info = parse_exchange_info(json.loads(shared_file("binance-fapi-exchangeInfo-2021-07-22.json").read_text()))
    assert len(info) == 122
    perps = sorted(s for s, i in info.items() if i.tradable_perp)
    assert len(perps) == 119 and "BTCUSDT" in perps and "BTCUSDT_210924" not in perps and "BTCSTUSDT" not in perps
    assert info["BTCUSDT"].base == "BTC" and info["BTCUSDT"].quote == "USDT"


def test_trimmed_exchange_info_matches_shared_rows():
    trimmed = load("exchangeInfo-2021-07-22-trimmed.json")
    full = json.loads(shared_file("binance-fapi-exchangeInfo-2021-07-22.json").read_text())
    by = {s["symbol"]: s for s in full["symbols"]}
    assert all(s == by[s["symbol"]] for s in trimmed["symbols"])
    assert trimmed["rateLimits"] == full["rateLimits"]


@pytest.mark.parametrize("payload, match", [
    ({"code": -1121}, "should be a list, got dict"),
    ([[1, "2", "3"]], "row 0 has 3 fields"),
    ([[1, "2", "3", "4", "5", "6", 7, "8", 9, None, "x", "0"]], "taker buy volume in row 0 should be a number, got null"),
    ([[1, "abc", "3", "4", "5", "6", 7, "8", 9, "1", "x", "0"]], "open in row 0 should be a number"),
    (None, "should be a list, got null"),
])
def test_parse_klines_rejects_malformed(payload, match):
    with pytest.raises(SourceError, match=match) as ei:
        parse_klines(payload)
    assert ei.value.venue == "binance" and ei.value.endpoint == KLINES


@pytest.mark.parametrize("payload, match", [
    ([{"timestamp": "1", "sumOpenInterest": "2"}], "missing field 'sumOpenInterestValue' in row 0"),
    ([{"timestamp": "x", "sumOpenInterest": "2", "sumOpenInterestValue": "3"}], "timestamp in row 0"),
    ([["1", "2"]], "expected an object"),
])
def test_parse_open_interest_rejects_malformed(payload, match):
    with pytest.raises(SourceError, match=match) as ei:
        parse_open_interest(payload)
    assert ei.value.endpoint == OI_HIST


@pytest.mark.parametrize("payload, match", [
    ([], "should be an object"),
    ({"rateLimits": []}, "missing field 'symbols'"),
    ({"symbols": [{"symbol": "BTCUSDT"}]}, "missing field 'baseAsset'"),
    ({"symbols": [{"symbol": 1, "baseAsset": "B", "quoteAsset": "U", "contractType": "PERPETUAL", "status": "TRADING"}]}, "must be strings"),
    ({"symbols": []}, "empty"),
])
def test_parse_exchange_info_rejects_malformed(payload, match):
    with pytest.raises(SourceError, match=match):
        parse_exchange_info(payload)


def test_premium_index_rejects_bad_price():
    with pytest.raises(SourceError, match="markPrice"):
        parse_premium_index({"symbol": "BTCUSDT"})
    with pytest.raises(SourceError, match="positive"):
        parse_premium_index({"markPrice": "0"})


def test_kline_weight_table_and_page_ranges():
    assert [kline_weight(n) for n in (1, 99, 100, 499, 500, 1000, 1001, 1500)] == [1, 1, 2, 2, 5, 5, 10, 10]
    r = page_ranges(0, 2999 * STEP, STEP, 1500)
    assert r == [(0, 1499 * STEP), (1500 * STEP, 2999 * STEP)]
    assert page_ranges(0, 0, STEP, 500) == [(0, 0)] and page_ranges(STEP, 0, STEP, 500) == []


def test_join_aligns_dedupes_sorts_and_drops_open_bar():
    k = parse_klines(load("klines-5m.json"))
    k = pd.concat([k.iloc[[1]], k, k.iloc[[0]]], ignore_index=True)  # out of order, duplicated
    oi = pd.DataFrame({"time": [1616338800000 + 7, 1616339100000], "oi_usd": [1e9, 1.1e9], "oi_coin": [1.0, 1.0]})
    j = join(k, oi, step_ms=STEP, now_ms=1616339400000, start_ms=0, end_ms=2**62)
    assert j["time"].tolist() == [1616338800000, 1616339100000]  # OI stamp +7 ms floored onto the grid
    assert j["oi_usd"].tolist() == [1e9, 1.1e9]
    j2 = join(k, oi, step_ms=STEP, now_ms=1616339399999, start_ms=0, end_ms=2**62)  # second bar still open
    assert j2["time"].tolist() == [1616338800000]
    with pytest.raises(SourceError, match="not on the 5-minute grid"):
        join(k.assign(time=k["time"] + 1), oi, step_ms=STEP, now_ms=2**62, start_ms=0, end_ms=2**62)


# -- the source over a fake Binance built from the real sample ----------------------------------------

class Clock:
    def __init__(self, now_ms: int) -> None:
        self.ms = now_ms
        self.mono = 0.0
        self.sleeps: list[float] = []

    def now_ms(self) -> int:
        return self.ms

    def clock(self) -> float:
        return self.mono

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.mono += s
        await asyncio.sleep(0)


@pytest.fixture
def world(sample_bars):
    """A fake Binance over the real sample; 'now' is 30 s after the sample's last bar closed."""
    frame = sample_bars.to_frame()
    clock = Clock(int(frame["time"].iloc[-1]) + STEP + 30_000)
    fake = FakeBinance(frame, clock.now_ms)
    return fake, clock


def source(fake, clock, cache=None, **kw) -> BinanceSource:
    return BinanceSource(transport=fake.transport, cache=cache if cache is not None else BarCache(None),
                         sleep=clock.sleep, clock=clock.clock, now_ms=clock.now_ms, **kw)


async def test_is_a_source_and_lists_symbols(world):
    fake, clock = world
    src = source(fake, clock)
    assert isinstance(src, Source) and src.name == "binance"
    syms = await src.symbols()
    assert syms == ["1000SHIBUSDT", "BTCDOMUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT"]
    await src.symbols()
    assert fake.count(EXCHANGE_INFO) == 1  # cached (TTL)
    clock.mono += 3601
    await src.symbols()
    assert fake.count(EXCHANGE_INFO) == 2  # TTL expired
    await src.aclose()


@pytest.mark.parametrize("text", ["btc", "BTC", "BTCUSDT", "BTC/USDT", "BTC-USDT-SWAP", "btcusdt.p"])
async def test_resolve_spellings(world, text):
    fake, clock = world
    assert await source(fake, clock).resolve(text) == "BTCUSDT"


async def test_resolve_unknown_and_delisted(world):
    fake, clock = world
    src = source(fake, clock)
    with pytest.raises(InputError, match="binance has no ETHHUSDT perpetual; did you mean ETHUSDT"):
        await src.resolve("ETHH")
    with pytest.raises(InputError, match="BTCSTUSDT on binance is not trading .*PENDING_TRADING"):
        await src.resolve("BTCST")
    with pytest.raises(InputError, match="not a symbol"):
        await src.resolve("DROP TABLE")
    assert fake.count(KLINES) == 0


async def test_symbol_list_survives_a_failed_refresh(world):
    fake, clock = world
    src = source(fake, clock)
    await src.symbols()
    clock.mono += 4000
    fake.inject(EXCHANGE_INFO, httpx.Response(503), httpx.Response(503), httpx.Response(503), httpx.Response(503))
    assert "BTCUSDT" in await src.symbols()  # stale list kept rather than failing every request


async def test_cold_7d_fetch_matches_the_real_data(world, sample_bars):
    fake, clock = world
    src = source(fake, clock)
    bars = await src.bars("BTCUSDT", WINDOWS["7d"])
    assert len(bars) == 2016 and bars.interval == "5m"
    tail = sample_bars.slice(len(sample_bars) - 2016)
    np.testing.assert_array_equal(bars.time, tail.time)
    np.testing.assert_allclose(bars.close, tail.close, rtol=1e-9)
    np.testing.assert_allclose(bars.oi_usd, tail.oi_usd, rtol=1e-9)
    assert bars.volume is not None and bars.taker_buy is not None and bars.quote_volume is not None
    assert bars.validate() == []
    # 2 kline pages (1500 + 516) and 5 OI pages (500 x 4 + 16) and the symbol list
    assert fake.count(KLINES) == 2 and fake.count(OI_HIST) == 5 and fake.count(EXCHANGE_INFO) == 1
    limits = sorted(int(r.url.params["limit"]) for r in fake.requests if r.url.path == KLINES)
    assert limits == [516, 1500]
    assert any("Binance USDⓈ-M BTCUSDT" in n for n in bars.notes)


async def test_pagination_with_duplicate_out_of_order_and_missing_bars(world, sample_bars):
    fake, clock = world
    t = sample_bars.time
    lost = {int(t[-100]), int(t[-99]), int(t[-1600])}
    fake.drop_times = lost
    fake.drop_oi_times = {int(t[-50])}
    rng = random.Random(1)

    def messy(path, rows):
        rows = rows + rows[:3]  # duplicates
        rng.shuffle(rows)      # out of order
        return rows

    fake.page_hook = messy
    bars = await source(fake, clock).bars("BTCUSDT", WINDOWS["7d"])
    assert np.all(np.diff(bars.time) > 0)
    assert len(bars) == 2016 - 4
    assert not (set(bars.time.tolist()) & (lost | {int(t[-50])}))
    gaps = bars.validate()
    assert sorted(g.missing for g in gaps) == [1, 1, 2]


async def test_still_open_kline_is_dropped(world, sample_bars):
    fake, clock = world
    clock.ms = int(sample_bars.time[-1]) + 120_000  # the last sample bar is still forming
    bars = await source(fake, clock).bars("BTCUSDT", WINDOWS["1d"])
    assert int(bars.time[-1]) == int(sample_bars.time[-2])


async def test_incremental_refresh_fetches_only_new_bars(world, sample_bars):
    fake, clock = world
    full = sample_bars
    clock.ms = int(full.time[-13]) + STEP + 30_000  # an hour before the data ends
    src = source(fake, clock)
    first = await src.bars("BTCUSDT", WINDOWS["7d"])
    cold = fake.count()
    clock.ms += 5 * 60_000  # five minutes later: one new bar
    second = await src.bars("BTCUSDT", WINDOWS["7d"])
    assert fake.count() - cold == 2  # one klines + one openInterestHist request
    assert int(second.time[-1]) == int(first.time[-1]) + STEP and len(second) == len(first)
    new_reqs = fake.requests[cold:]
    assert all(int(r.url.params["startTime"]) == int(first.time[-1]) for r in new_reqs)  # overlap of one bar
    before = fake.count()
    clock.ms += 55 * 60_000  # 11 more bars: still one page each
    third = await src.bars("BTCUSDT", WINDOWS["7d"])
    assert fake.count() - before == 2 and int(third.time[-1]) == int(full.time[-1])
    before = fake.count()
    await src.bars("BTCUSDT", WINDOWS["7d"])  # nothing new has closed: no request at all
    assert fake.count() == before


async def test_longer_window_fetches_only_the_missing_head(world):
    fake, clock = world
    src = source(fake, clock)
    await src.bars("BTCUSDT", WINDOWS["1d"])
    before_k, before_o = fake.count(KLINES), fake.count(OI_HIST)
    bars = await src.bars("BTCUSDT", WINDOWS["7d"])
    assert len(bars) == 2016
    head = [r for r in fake.requests[before_k + before_o + 1:]]
    assert fake.count(KLINES) - before_k == 2 and fake.count(OI_HIST) - before_o == 4  # 1728 head bars
    assert all(int(r.url.params["endTime"]) < int(bars.time[-288]) for r in head)


async def test_restart_reuses_the_disk_cache(world, tmp_path):
    fake, clock = world
    path = tmp_path / "bars.sqlite3"
    a = source(fake, clock, cache=BarCache(path))
    await a.bars("BTCUSDT", WINDOWS["7d"])
    await a.aclose()
    before = fake.count()
    b = source(fake, clock, cache=BarCache(path))
    bars = await b.bars("BTCUSDT", WINDOWS["7d"])
    assert fake.count() == before and len(bars) == 2016  # symbols and bars both from disk
    await b.aclose()


async def test_single_flight_100_concurrent_requests_share_one_fetch(world):
    fake, clock = world
    src = source(fake, clock)
    results = await asyncio.gather(*(src.bars("btc", WINDOWS["7d"]) for _ in range(100)))
    assert fake.count(KLINES) == 2 and fake.count(OI_HIST) == 5 and fake.count(EXCHANGE_INFO) == 1
    assert all(len(r) == 2016 for r in results)


async def test_30d_window_is_clamped_to_the_oi_history_with_a_note(world):
    fake, clock = world
    bars = await source(fake, clock).bars("BTCUSDT", WINDOWS["30d"])
    assert bars.interval == "15m"
    assert all(int(r.url.params["startTime"]) >= clock.ms - 30 * 86_400_000 for r in fake.requests if r.url.path == OI_HIST)
    assert any("only the latest 30 days of open-interest history" in n for n in bars.notes)


async def test_oi_history_rejection_names_the_30_day_limit(world):
    fake, clock = world
    fake.inject(OI_HIST, httpx.Response(400, json={"code": -1130, "msg": "Data sent for parameter 'startTime' is not valid."}))
    with pytest.raises(SourceError, match="only the latest 30 days") as ei:
        await source(fake, clock).bars("BTCUSDT", WINDOWS["1d"])
    assert ei.value.endpoint == OI_HIST


async def test_invalid_symbol_from_the_venue_is_an_input_error(world):
    fake, clock = world
    fake.symbol = "ETHUSDT"  # the venue lists BTCUSDT but refuses it (-1121), e.g. delisted since the list was cached
    with pytest.raises(InputError, match="Invalid symbol"):
        await source(fake, clock).bars("BTCUSDT", WINDOWS["1d"])


async def test_used_weight_header_slows_requests_down(world):
    fake, clock = world
    fake.used_weight = 2300  # another process on this IP has used most of the minute
    src = source(fake, clock)
    await src.bars("BTCUSDT", WINDOWS["7d"])
    assert src.used_weight is not None and src.used_weight > 2300
    assert src.weight.waited_s > 0 and sum(clock.sleeps) > 0  # waited instead of crossing the limit


# -- faults: documented outcome, cache untouched --------------------------------------------------------

def snapshot(cache: BarCache) -> pd.DataFrame:
    return cache.load("binance", "BTCUSDT", "5m", 0)


FAULTS = {
    "418": ([httpx.Response(418, headers={"Retry-After": "600"}, json={"code": -1003, "msg": "Way too many requests; IP banned"})], "banned"),
    "451": ([httpx.Response(451, json={"code": 0, "msg": "Service unavailable from a restricted location"})], "region"),
    "500": ([httpx.Response(500, text="Internal error")] * 4, "HTTP 500"),
    "timeout": ([httpx.ReadTimeout("read timed out")] * 4, "timed out"),
    "truncated": (["truncate"], "not valid JSON"),
    "429-long": ([httpx.Response(429, headers={"Retry-After": "3600"}, json={"code": -1003, "msg": "Too many requests"})], "429"),
    "garbled-row": ([httpx.Response(200, json=[[1, "x"]])], "row 0"),
}


@pytest.mark.parametrize("path", [KLINES, OI_HIST])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_leaves_cache_intact(world, fault, path):
    fake, clock = world
    cache = BarCache(None)
    src = source(fake, clock, cache=cache)
    clock.ms -= 12 * STEP
    await src.bars("BTCUSDT", WINDOWS["7d"])
    before = snapshot(cache)
    clock.ms += 12 * STEP
    items, match = FAULTS[fault]
    fake.inject(path, *items)
    with pytest.raises(SourceError, match=match) as ei:
        await src.bars("BTCUSDT", WINDOWS["7d"])
    assert ei.value.venue == "binance"
    pd.testing.assert_frame_equal(snapshot(cache), before)
    if fault in ("418", "429-long"):
        assert ei.value.retry_after and ei.value.retry_after >= 600
    if fault == "451":
        assert "--exchange bybit" in str(ei.value)


async def test_429_with_short_retry_after_recovers(world):
    fake, clock = world
    src = source(fake, clock)
    fake.inject(KLINES, httpx.Response(429, headers={"Retry-After": "2"}, json={"code": -1003, "msg": "Too many requests"}))
    bars = await src.bars("BTCUSDT", WINDOWS["1d"])
    assert len(bars) == 288 and clock.mono >= 2  # waited as told, then succeeded


async def test_transient_500_and_timeout_recover(world):
    fake, clock = world
    fake.inject(KLINES, httpx.Response(502))
    fake.inject(OI_HIST, httpx.ReadTimeout("slow"))
    bars = await source(fake, clock).bars("BTCUSDT", WINDOWS["1d"])
    assert len(bars) == 288


async def test_empty_array_on_refresh_keeps_cached_bars(world):
    fake, clock = world
    cache = BarCache(None)
    src = source(fake, clock, cache=cache)
    clock.ms -= 3 * STEP
    first = await src.bars("BTCUSDT", WINDOWS["1d"])
    before = snapshot(cache)
    clock.ms += 3 * STEP
    fake.inject(KLINES, "empty")
    second = await src.bars("BTCUSDT", WINDOWS["1d"])  # the venue returned nothing new: serve what we have
    assert int(second.time[-1]) == int(first.time[-1])
    pd.testing.assert_frame_equal(snapshot(cache), before)
    n = fake.count()
    await src.bars("BTCUSDT", WINDOWS["1d"])  # within the freshness interval: not asked again
    assert fake.count() == n
    clock.mono += src.refresh_min_s
    third = await src.bars("BTCUSDT", WINDOWS["1d"])  # and the next refresh after it catches up
    assert int(third.time[-1]) == int(first.time[-1]) + 3 * STEP


async def test_empty_array_on_cold_fetch_is_a_sourceerror(world):
    fake, clock = world
    fake.inject(OI_HIST, "empty")
    with pytest.raises(SourceError, match="no bars with open interest"):
        await source(fake, clock).bars("BTCUSDT", WINDOWS["1d"])


# -- through the report service ------------------------------------------------------------------------

async def test_report_service_with_binance_down_uses_the_other_venue(world, sample_bars):
    from analysis.report import ReportService
    from analysis.sources import SAMPLE_PATH, CsvSource

    fake, clock = world
    fake.inject(EXCHANGE_INFO, httpx.Response(451, json={"code": 0, "msg": "Service unavailable from a restricted location"}))
    other = CsvSource(SAMPLE_PATH, venue="okx", symbol="BTCUSDT")
    service = ReportService({"binance": source(fake, clock), "okx": other}, now_ms=clock.now_ms)
    rep = await service.report("BTCUSDT", "1d")
    assert rep.venues == ("okx",)
    assert "region" in rep.missing["binance"] and "--exchange bybit" in rep.missing["binance"]
    assert any("binance missing" in n for n in rep.map.notes)


async def test_100_concurrent_reports_make_one_fetch(world):
    from analysis.report import ReportService

    fake, clock = world
    service = ReportService({"binance": source(fake, clock)}, now_ms=clock.now_ms)
    reps = await asyncio.gather(*(service.report("BTCUSDT", "1d") for _ in range(100)))
    assert len({id(r) for r in reps}) == 1 and service.computations == 1
    assert fake.count() == 3  # exchangeInfo + one klines page + one openInterestHist page


# -- property: any mix of lost bars, duplicates and shuffled pages gives exactly the surviving bars -------

@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lost=st.sets(st.integers(1, 2015), max_size=12),
    lost_oi=st.sets(st.integers(1, 2015), max_size=6),
    dupes=st.integers(0, 5),
    seed=st.integers(0, 10**6),
)
def test_paging_property(sample_bars, lost, lost_oi, dupes, seed):
    frame = sample_bars.to_frame()
    clock = Clock(int(frame["time"].iloc[-1]) + STEP + 30_000)
    fake = FakeBinance(frame, clock.now_ms)
    t = sample_bars.time
    fake.drop_times = {int(t[-i]) for i in lost}
    fake.drop_oi_times = {int(t[-i]) for i in lost_oi}
    rng = random.Random(seed)

    def messy(path, rows):
        rows = rows + rows[: min(dupes, len(rows))]
        rng.shuffle(rows)
        return rows

    fake.page_hook = messy

    async def go():
        src = source(fake, clock)
        try:
            return await src.bars("BTCUSDT", WINDOWS["7d"])
        finally:
            await src.aclose()

    bars = asyncio.run(go())
    window = set(int(x) for x in t[-2016:])
    expected = sorted(window - fake.drop_times - fake.drop_oi_times)
    assert bars.time.tolist() == expected
    idx = np.searchsorted(sample_bars.time, bars.time)
    np.testing.assert_allclose(bars.close, sample_bars.close[idx], rtol=1e-9)
    np.testing.assert_allclose(bars.oi_usd, sample_bars.oi_usd[idx], rtol=1e-9)


# -- bad bars: refused before the cache, naming venue, endpoint and time -------------------------------

def _spoil_klines(t_bad: int, field_index: int, value: str):
    def hook(path: str, rows: list) -> list:
        if path == KLINES:
            rows = [r[:field_index] + [value] + r[field_index + 1:] if int(r[0]) == t_bad else r for r in rows]
        return rows
    return hook


@pytest.mark.parametrize("field_index, value, match", [
    (2, "1.0", "high < low"),            # high far below the bar's low
    (1, "1.0", "low above the open or close"),  # open far below the bar's low
])
async def test_a_bad_kline_is_refused_naming_binance_and_the_cache_keeps_its_good_bars(world, field_index, value, match):
    fake, clock = world
    cache = BarCache(None)
    src = source(fake, clock, cache=cache)
    clock.ms -= 12 * STEP
    await src.bars("BTCUSDT", WINDOWS["1d"])
    before = snapshot(cache)
    clock.ms += 12 * STEP
    t_bad = int(before["time"].iloc[-1]) + 5 * STEP
    fake.page_hook = _spoil_klines(t_bad, field_index, value)
    with pytest.raises(SourceError, match=match) as ei:
        await src.bars("BTCUSDT", WINDOWS["1d"])
    assert (ei.value.venue, ei.value.endpoint) == ("binance", KLINES)
    assert iso(t_bad) in str(ei.value) and "nothing cached" in str(ei.value)
    pd.testing.assert_frame_equal(snapshot(cache), before)
    fake.page_hook = None  # the venue serves good bars again: the refresh catches up
    again = await src.bars("BTCUSDT", WINDOWS["1d"])
    assert int(again.time[-1]) == int(before["time"].iloc[-1]) + 12 * STEP


async def test_negative_open_interest_is_refused_naming_the_oi_endpoint(world):
    fake, clock = world
    t_bad = int(fake.frame("5m")["time"].iloc[-3])

    def hook(path: str, rows: list) -> list:
        if path == OI_HIST:
            rows = [dict(r, sumOpenInterestValue="-5.0") if int(r["timestamp"]) == t_bad else r for r in rows]
        return rows

    fake.page_hook = hook
    cache = BarCache(None)
    with pytest.raises(SourceError, match="open interest must be positive") as ei:
        await source(fake, clock, cache=cache).bars("BTCUSDT", WINDOWS["1d"])
    assert (ei.value.venue, ei.value.endpoint) == ("binance", OI_HIST) and iso(t_bad) in str(ei.value)
    assert snapshot(cache).empty
