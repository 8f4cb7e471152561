"""Bybit v5 source: parsers on the documented payloads, and the source against a fake Bybit.

The fake server answers in Bybit's documented shapes (strings, newest first, cursor pages) with
real prices and open interest: the bundled Binance BTCUSDT 5m sample, re-expressed as Bybit
rows (open interest in coin = oi_usd / close). Nothing waits: clock and sleep are fake.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from analysis.bars import Bars, iso
from analysis.errors import InputError, SourceError
from analysis.sources.bybit import (
    BybitSource, chunk_ranges, join_bars, missing_ranges, parse_instruments, parse_klines,
    parse_open_interest, parse_ticker, result_of,
)
from analysis.sources.cache import BarCache
from analysis.windows import WINDOWS

from fake_clock import FakeTime

FIX = Path(__file__).resolve().parent / "fixtures" / "bybit"
STEP = 300_000


def load(name: str):
    return json.loads((FIX / name).read_text())


def _instrument(symbol: str, base: str, quote: str = "USDT", status: str = "Trading") -> dict:
    row = dict(load("instruments_linear.json")["result"]["list"][0])
    row.update(symbol=symbol, baseCoin=base, quoteCoin=quote, settleCoin=quote, status=status)
    return row


class FakeBybit:
    """Serves klines / open interest / instruments / tickers like Bybit v5 does."""

    def __init__(self, bars: Bars, *, drop_oi=(), dup_rows=False, shuffle=False, faults=None) -> None:
        self.bars = bars
        self.drop_oi = set(drop_oi)
        self.dup_rows = dup_rows
        self.shuffle = shuffle
        self.faults = list(faults or [])  # callables(request) -> Response | None, consumed in order
        self.calls: list[tuple[str, dict]] = []
        self.rng = np.random.default_rng(7)

    def ok(self, result: dict) -> httpx.Response:
        return httpx.Response(200, json={"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": 1})

    def handler(self, request: httpx.Request) -> httpx.Response:
        q = dict(request.url.params)
        self.calls.append((request.url.path, q))
        if self.faults:
            resp = self.faults.pop(0)(request)
            if resp is not None:
                return resp
        path = request.url.path
        if path == "/v5/market/instruments-info":
            rows = [_instrument("BTCUSDT", "BTC"), _instrument("ETHUSDT", "ETH"), _instrument("BTCPERP", "BTC", "USDC")]
            return self.ok({"category": "linear", "list": rows, "nextPageCursor": ""})
        if path == "/v5/market/tickers":
            return self.ok({"category": "linear", "list": [{"symbol": q["symbol"], "markPrice": "64000.5", "lastPrice": "64001"}]})
        b = self.bars
        t = b.time
        if path == "/v5/market/kline":
            sel = np.nonzero((t >= int(q["start"])) & (t <= int(q["end"])))[0][::-1][: int(q["limit"])]
            rows = [[str(t[i]), repr(float(b.open[i])), repr(float(b.high[i])), repr(float(b.low[i])), repr(float(b.close[i])), "12.5",
                     repr(float(12.5 * (b.high[i] + b.low[i] + b.close[i]) / 3))] for i in sel]
            rows = self._mess(rows)
            return self.ok({"symbol": q["symbol"], "category": "linear", "list": rows})
        if path == "/v5/market/open-interest":
            sel = [i for i in np.nonzero((t >= int(q["startTime"])) & (t <= int(q["endTime"])))[0][::-1] if t[i] not in self.drop_oi]
            cursor_at = int(q.get("cursor") or 0)
            page = sel[cursor_at: cursor_at + int(q["limit"])]
            # like Bybit: a full page carries a cursor even when nothing follows (the next page is empty)
            nxt = str(cursor_at + len(page)) if len(page) == int(q["limit"]) else ""
            rows = [{"openInterest": repr(float(2 * b.oi_usd[i] / b.close[i])),  # documented: both sides
                     "singleOpenInterest": repr(float(b.oi_usd[i] / b.close[i])), "timestamp": str(t[i])} for i in page]
            return self.ok({"symbol": q["symbol"], "category": "linear", "list": self._mess(rows), "nextPageCursor": nxt})
        return httpx.Response(404, json={"retCode": 10001, "retMsg": "unknown path"})

    def _mess(self, rows: list) -> list:
        if self.dup_rows and rows:
            rows = rows + rows[:2]  # a page repeating rows (as overlapping pages do)
        if self.shuffle:
            rows = [rows[i] for i in self.rng.permutation(len(rows))]
        return rows

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.calls if p == path)


def make_source(server: FakeBybit, now_ms: int, *, cache=None, ft: FakeTime | None = None) -> BybitSource:
    ft = ft or FakeTime()
    return BybitSource(transport=httpx.MockTransport(server.handler), cache=cache, sleep=ft.sleep, clock=ft.clock,
                       now_ms=lambda: now_ms)


def now_after(bars: Bars, k_bars_before_end: int = 0) -> int:
    """A 'now' just after the bar that closes ``k`` bars before the sample's end."""
    return bars.end_ms - k_bars_before_end * STEP + 1_000


# -- parsers on the documented examples -------------------------------------------------------------

def test_parse_kline_documented_example_sorted_oldest_first():
    frame = parse_klines(load("kline.json"))
    assert frame["time"].tolist() == [1670601600000, 1670605200000, 1670608800000]
    row = frame.iloc[-1]
    assert (row.open, row.high, row.low, row.close) == (17071.0, 17073.0, 17027.0, 17055.5)
    assert row.volume == 268611.0 and row.quote_volume == pytest.approx(15.74462667)


def test_parse_open_interest_documented_example():
    frame, cursor = parse_open_interest(load("open_interest.json"))
    assert frame["time"].tolist() == [1669571100000, 1669571400000]
    # this older example has only ``openInterest``, documented as the sum of both sides: halved
    assert frame["oi_coin"].tolist() == [461134292.0 / 2, 461134384.0 / 2]
    assert cursor is None  # "nextPageCursor": "" means no more pages


def test_parse_open_interest_uses_the_single_side():
    frame, cursor = parse_open_interest(load("open_interest_single.json"))
    assert frame["time"].tolist() == [1780617600000, 1780704000000, 1780790400000, 1780876800000, 1780963200000]
    assert frame["oi_coin"].tolist() == [31971156.0, 31971156.0, 31955346.0, 31955346.0, 31955346.0]
    assert cursor == "lastid%3D19408935%26lasttime%3D1780617600"


def test_parse_instruments_documented_examples():
    insts, cursor = parse_instruments(load("instruments_linear.json"))
    assert [(i.canonical, i.venue_id, i.status) for i in insts] == [("BTCUSDT", "BTCUSDT", "Trading")]
    assert cursor is None
    pre, cursor = parse_instruments(load("instruments_prelaunch.json"))
    assert pre[0].status == "PreLaunch" and cursor == "first%3DBIOUSDT%26last%3DBIOUSDT"


def test_parse_ticker_documented_example():
    assert parse_ticker(load("tickers_inverse.json"), "BTCUSD") == 16596.0
    with pytest.raises(SourceError, match="no ticker for ETHUSD"):
        parse_ticker(load("tickers_inverse.json"), "ETHUSD")


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"retCode": 10001, "retMsg": "params error: symbol invalid", "result": {}}, "retCode 10001: params error"),
        ({"retMsg": "OK", "result": {}}, "missing field 'retCode'"),
        ({"retCode": 0, "retMsg": "OK"}, "missing field 'result'"),
        ({"retCode": 0, "result": []}, "result should be an object"),
        ([1, 2], "response should be an object"),
    ],
)
def test_envelope_errors_are_source_errors(payload, match):
    with pytest.raises(SourceError, match=match) as info:
        result_of(payload, "/v5/market/kline")
    assert info.value.venue == "bybit"


@pytest.mark.parametrize(
    "rows, match",
    [
        ([["1670608800000", "17071", "17073", "17027"]], "row 0 has 4 fields"),
        ([["1670608800000", "17071", "x", "17027", "17055.5", "1", "2"]], "highPrice|high"),
        ([{"t": 1}], "row 0 should be a list"),
    ],
)
def test_kline_row_errors(rows, match):
    with pytest.raises(SourceError, match=match):
        parse_klines({"retCode": 0, "result": {"list": rows}})


def test_open_interest_row_errors():
    with pytest.raises(SourceError, match="missing field 'openInterest' in row 0"):
        parse_open_interest({"retCode": 0, "result": {"list": [{"timestamp": "1"}]}})
    with pytest.raises(SourceError, match="openInterest in row 0 should be a number"):
        parse_open_interest({"retCode": 0, "result": {"list": [{"timestamp": "1", "openInterest": None}]}})
    with pytest.raises(SourceError, match="singleOpenInterest in row 0 should be a number"):
        parse_open_interest({"retCode": 0, "result": {"list": [{"timestamp": "1", "openInterest": "2", "singleOpenInterest": "x"}]}})


# -- assembly helpers ---------------------------------------------------------------------------------

def test_chunk_ranges_cover_every_bar_once():
    chunks = chunk_ranges(0, 2015 * STEP, STEP, 1000)
    assert chunks == [(0, 999 * STEP), (1000 * STEP, 1999 * STEP), (2000 * STEP, 2015 * STEP)]
    assert chunk_ranges(10, 5, STEP, 10) == []


def test_missing_ranges_before_and_after_cache():
    import pandas as pd
    cached = pd.DataFrame({"time": [10 * STEP, 11 * STEP, 12 * STEP]})
    assert missing_ranges(cached, 0, 20 * STEP, STEP) == [(0, 9 * STEP), (13 * STEP, 20 * STEP)]
    assert missing_ranges(cached, 10 * STEP, 12 * STEP, STEP) == []


def test_join_floors_open_interest_stamps_to_the_bar_grid():
    import pandas as pd
    k = pd.DataFrame({"time": [0, STEP], "open": [1.0] * 2, "high": [2.0] * 2, "low": [0.5] * 2, "close": [100.0, 200.0]})
    oi = pd.DataFrame({"time": [17, STEP + 5, STEP + 9], "oi_coin": [3.0, 4.0, 5.0]})
    out = join_bars(k, oi, STEP)
    assert out["time"].tolist() == [0, STEP] and out["oi_usd"].tolist() == [300.0, 1000.0]  # last point in a bar wins
    assert len(join_bars(k, oi)) == 0  # without the grid nothing lines up


def test_join_keeps_only_bars_with_open_interest_and_converts_to_usd():
    import pandas as pd
    k = pd.DataFrame({"time": [0, STEP, 2 * STEP], "open": [1.0] * 3, "high": [2.0] * 3, "low": [0.5] * 3,
                      "close": [100.0, 200.0, 300.0]})
    oi = pd.DataFrame({"time": [0, 2 * STEP], "oi_coin": [3.0, 4.0]})
    out = join_bars(k, oi)
    assert out["time"].tolist() == [0, 2 * STEP]
    assert out["oi_usd"].tolist() == [300.0, 1200.0]


# -- the source against a fake Bybit ----------------------------------------------------------------

async def test_bars_7d_match_the_source_data_and_count_requests(sample_bars):
    server = FakeBybit(sample_bars)
    src = make_source(server, now_after(sample_bars))
    bars = await src.bars("btc", WINDOWS["7d"])
    assert bars.venue == "bybit" and bars.symbol == "BTCUSDT" and bars.interval == "5m"
    assert len(bars) == 2016
    ref = sample_bars.slice(len(sample_bars) - 2016)
    np.testing.assert_array_equal(bars.time, ref.time)
    np.testing.assert_allclose(bars.close, ref.close)
    np.testing.assert_allclose(bars.oi_usd, ref.oi_usd, rtol=1e-12)
    assert bars.taker_net is None and bars.taker_buy is None  # Bybit has no taker split
    bars.validate()
    # 2016 bars: 3 kline pages (1000) + 11 open-interest pages (200) + 1 instruments page
    assert server.count("/v5/market/kline") == 3
    assert server.count("/v5/market/open-interest") == 11
    assert server.count("/v5/market/instruments-info") == 1
    assert len(server.calls) == 15
    for _, q in server.calls:
        assert int(q.get("limit", 0)) <= 1000
    assert all(int(q["limit"]) <= 200 for p, q in server.calls if p == "/v5/market/open-interest")
    assert any("Bybit BTCUSDT" in n for n in bars.notes)


async def test_pages_with_duplicates_out_of_order_rows_and_missing_oi(sample_bars):
    ref = sample_bars.slice(len(sample_bars) - 288)
    dropped = [int(ref.time[50]), int(ref.time[51]), int(ref.time[200])]
    server = FakeBybit(sample_bars, drop_oi=dropped, dup_rows=True, shuffle=True)
    src = make_source(server, now_after(sample_bars))
    bars = await src.bars("BTCUSDT", WINDOWS["1d"])
    assert len(bars) == 288 - 3
    assert not set(dropped) & set(bars.time.tolist())
    assert np.all(np.diff(bars.time) > 0)  # sorted, unique
    gaps = bars.validate()
    assert [(g.missing) for g in gaps] == [2, 1]  # reported as gaps, never interpolated


async def test_open_interest_cursor_is_followed_when_a_page_is_full(sample_bars, monkeypatch):
    import analysis.sources.bybit as mod
    monkeypatch.setattr(mod, "OI_LIMIT", 50)  # server pages of 50 inside a 50-bar chunk
    server = FakeBybit(sample_bars)
    src = make_source(server, now_after(sample_bars))
    bars = await src.bars("BTCUSDT", WINDOWS["1d"])
    assert len(bars) == 288
    assert server.count("/v5/market/open-interest") >= 288 // 50


async def test_incremental_refresh_fetches_only_new_bars(sample_bars):
    cache = BarCache(None)
    server = FakeBybit(sample_bars)
    ft = FakeTime()
    first = make_source(server, now_after(sample_bars, 12), cache=cache, ft=ft)
    b1 = await first.bars("BTCUSDT", WINDOWS["7d"])
    cold = len(server.calls)
    assert cold == 15
    # five minutes later, a new process (fresh source, same on-disk cache)
    server.calls.clear()
    second = make_source(server, now_after(sample_bars, 11), cache=cache, ft=ft)
    b2 = await second.bars("BTCUSDT", WINDOWS["7d"])
    assert server.count("/v5/market/kline") == 1 and server.count("/v5/market/open-interest") == 1
    assert b2.time[-1] == b1.time[-1] + STEP and len(b2) == len(b1)
    kq = next(q for p, q in server.calls if p == "/v5/market/kline")
    assert int(kq["start"]) == b1.time[-1] + STEP  # only the bar after the newest cached one


async def test_concurrent_requests_share_one_fetch(sample_bars):
    server = FakeBybit(sample_bars)
    src = make_source(server, now_after(sample_bars))
    results = await asyncio.gather(*(src.bars("BTCUSDT", WINDOWS["1d"]) for _ in range(20)))
    assert all(len(r) == 288 for r in results)
    assert server.count("/v5/market/kline") == 1 and server.count("/v5/market/open-interest") == 2


async def test_unknown_symbol_suggests_close_names(sample_bars):
    server = FakeBybit(sample_bars)
    src = make_source(server, now_after(sample_bars))
    with pytest.raises(InputError, match=r"bybit has no trading ETHUSD perpetual; did you mean ETHUSDT"):
        await src.bars("ETH/USD", WINDOWS["1d"])
    assert await src.symbols() == ["BTCUSDC", "BTCUSDT", "ETHUSDT"]
    assert (await src.resolve("BTC/USDC")).venue_id == "BTCPERP"  # Bybit names USDC perps ...PERP


async def test_symbol_list_ttl(sample_bars):
    server = FakeBybit(sample_bars)
    ft = FakeTime()
    src = make_source(server, now_after(sample_bars), ft=ft)
    await src.symbols()
    await src.symbols()
    assert server.count("/v5/market/instruments-info") == 1
    ft.t += 3601
    await src.symbols()
    assert server.count("/v5/market/instruments-info") == 2


async def test_symbol_list_survives_a_restart_and_a_failed_refresh(sample_bars):
    cache = BarCache(None)
    server = FakeBybit(sample_bars)
    ft = FakeTime()
    await make_source(server, now_after(sample_bars), cache=cache, ft=ft).symbols()
    restarted = make_source(server, now_after(sample_bars), cache=cache, ft=ft)
    assert "BTCUSDT" in await restarted.symbols()
    assert server.count("/v5/market/instruments-info") == 1  # the stored list was still fresh
    ft.t += 3601
    server.faults = [_once(httpx.Response(400, json={"retCode": 10001, "retMsg": "boom"}))]
    assert "BTCUSDT" in await restarted.symbols()  # stale list beats no list


async def test_price_from_tickers(sample_bars):
    server = FakeBybit(sample_bars)
    src = make_source(server, now_after(sample_bars))
    assert await src.mark_price("BTC") == 64000.5


# -- faults -------------------------------------------------------------------------------------------

def _once(resp: httpx.Response):
    return lambda request: resp


async def test_retcode_10006_is_retried_after_a_pause(sample_bars):
    limited = httpx.Response(200, json=load("error_10006.json"))
    server = FakeBybit(sample_bars, faults=[_once(limited), _once(limited)])
    ft = FakeTime()
    src = make_source(server, now_after(sample_bars), ft=ft)
    assert "BTCUSDT" in await src.symbols()
    assert server.count("/v5/market/instruments-info") == 3
    assert sum(ft.slept) >= 2.0  # paused 1 s per 10006


async def test_retcode_10006_three_times_gives_up(sample_bars):
    limited = httpx.Response(200, json=load("error_10006.json"))
    server = FakeBybit(sample_bars, faults=[_once(limited)] * 3)
    src = make_source(server, now_after(sample_bars))
    with pytest.raises(SourceError, match="rate limited \\(retCode 10006: Too many visits!\\)") as info:
        await src.symbols()
    assert info.value.retry_after is not None


async def test_http_403_access_too_frequent_blocks_for_ten_minutes(sample_bars):
    server = FakeBybit(sample_bars, faults=[_once(httpx.Response(403, text="access too frequent"))])
    ft = FakeTime()
    src = make_source(server, now_after(sample_bars), ft=ft)
    with pytest.raises(SourceError, match="access too frequent") as info:
        await src.symbols()
    assert info.value.status == 403 and info.value.retry_after == 600
    sent = len(server.calls)
    with pytest.raises(SourceError, match="not sending"):
        await src.symbols()
    assert len(server.calls) == sent  # nothing sent during the block
    ft.t += 601
    assert await src.symbols()


async def test_http_403_region_block_is_named_as_such(sample_bars):
    body = "<HTML><BODY>The Amazon CloudFront distribution is configured to block access from your country.</BODY></HTML>"
    server = FakeBybit(sample_bars, faults=[_once(httpx.Response(403, text=body))])
    with pytest.raises(SourceError, match="refuses service from this region.*--exchange binance") as info:
        await make_source(server, now_after(sample_bars)).symbols()
    assert info.value.status == 403


async def test_server_error_and_timeout_are_retried(sample_bars):
    def timeout(request):
        raise httpx.ReadTimeout("slow", request=request)

    server = FakeBybit(sample_bars, faults=[_once(httpx.Response(502, text="bad gateway")), timeout])
    ft = FakeTime()
    src = make_source(server, now_after(sample_bars), ft=ft)
    assert await src.symbols()
    assert server.count("/v5/market/instruments-info") == 3 and ft.slept


async def test_truncated_body_is_a_source_error_and_nothing_is_cached(sample_bars):
    cache = BarCache(None)
    good = FakeBybit(sample_bars)

    def truncated(request):
        if request.url.path == "/v5/market/open-interest":
            return httpx.Response(200, content=b'{"retCode":0,"retMsg":"OK","result":{"list":[{"openIn')
        return None

    server = FakeBybit(sample_bars, faults=[lambda r: None, truncated] + [truncated] * 20)
    src = make_source(server, now_after(sample_bars), cache=cache)
    with pytest.raises(SourceError, match="not valid JSON"):
        await src.bars("BTCUSDT", WINDOWS["1d"])
    assert cache.count("bybit", "BTCUSDT", "5m") == 0  # nothing half-written
    # the next attempt (venue healthy again) fetches everything cleanly
    src2 = make_source(good, now_after(sample_bars), cache=cache)
    assert len(await src2.bars("BTCUSDT", WINDOWS["1d"])) == 288


async def test_empty_lists_are_a_clear_error(sample_bars):
    empty = sample_bars.slice(0, 0)
    server = FakeBybit(empty)
    src = make_source(server, now_after(sample_bars))
    with pytest.raises(SourceError, match="no bars with open interest for BTCUSDT"):
        await src.bars("BTCUSDT", WINDOWS["1d"])


async def test_region_block_451_names_other_venues(sample_bars):
    server = FakeBybit(sample_bars, faults=[_once(httpx.Response(451, text="unavailable"))])
    src = make_source(server, now_after(sample_bars))
    with pytest.raises(SourceError, match="451.*--exchange binance or --exchange okx"):
        await src.symbols()


async def test_record_then_replay_gives_the_same_bars(sample_bars, tmp_path):
    from analysis.sources.recorded import Recorder, ReplayTransport, load_manifest

    now = now_after(sample_bars)
    rec = Recorder(tmp_path / "rec", now_ms=now)
    ft = FakeTime()
    live = BybitSource(transport=httpx.MockTransport(FakeBybit(sample_bars).handler), recorder=rec,
                       sleep=ft.sleep, clock=ft.clock, now_ms=lambda: now)
    recorded = await live.bars("BTCUSDT", WINDOWS["1d"])
    replayed = await BybitSource(transport=ReplayTransport(load_manifest(tmp_path / "rec")), sleep=ft.sleep,
                                 clock=ft.clock, now_ms=lambda: now).bars("BTCUSDT", WINDOWS["1d"])
    np.testing.assert_array_equal(replayed.time, recorded.time)
    np.testing.assert_array_equal(replayed.oi_usd, recorded.oi_usd)


async def test_kline_pages_capped_below_the_limit_are_continued(sample_bars):
    """Older docs cap kline ``limit`` at 200: a server that does so must not leave holes."""
    server = FakeBybit(sample_bars)
    plain = server.handler

    def capped(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v5/market/kline":
            request = httpx.Request("GET", request.url.copy_set_param("limit", "200"))
        return plain(request)

    ft = FakeTime()
    src = BybitSource(transport=httpx.MockTransport(capped), sleep=ft.sleep, clock=ft.clock,
                      now_ms=lambda: now_after(sample_bars))
    bars = await src.bars("BTCUSDT", WINDOWS["7d"])
    assert len(bars) == 2016 and not bars.gaps()
    assert server.count("/v5/market/kline") == 11  # 1000 + 1000 + 16 bars, in pages of 200


async def test_a_window_longer_than_the_history_asks_for_the_empty_head_once(sample_bars):
    """A young listing (here: the sample starts 1 day into a 7-day window) is not re-requested."""
    cache = BarCache(None)
    short = sample_bars.slice(len(sample_bars) - 1700)  # ~5.9 days of data
    server = FakeBybit(short)
    ft = FakeTime()
    first = await make_source(server, now_after(short, 2), cache=cache, ft=ft).bars("BTCUSDT", WINDOWS["7d"])
    assert len(first) == 1698 and any("covers 5.9 of the 7d" in n for n in first.notes)
    server.calls.clear()
    again = await make_source(server, now_after(short, 1), cache=cache, ft=ft).bars("BTCUSDT", WINDOWS["7d"])
    assert len(server.calls) == 2 and len(again) == 1699  # the new bar only; not the empty head


# -- bad bars: refused before the cache, naming venue, endpoint and time -------------------------------

def spoil(bars: Bars, rows, **values: float) -> Bars:
    """A copy of ``bars`` with the given columns set at ``rows`` (bad prints from the venue)."""
    frame = bars.to_frame()
    for k, v in values.items():
        frame.loc[frame.index[rows], k] = v
    return Bars.from_frame(frame, venue=bars.venue, symbol=bars.symbol, interval=bars.interval)


@pytest.mark.parametrize("with_cache", [True, False])
async def test_fifty_bars_with_high_below_low_are_refused_and_nothing_is_cached(sample_bars, with_cache):
    cache = BarCache(None) if with_cache else None
    server = FakeBybit(sample_bars)
    await make_source(server, now_after(sample_bars, 60), cache=cache).bars("BTCUSDT", WINDOWS["1d"])
    before = cache.load("bybit", "BTCUSDT", "5m") if cache else None
    bad = slice(-55, -5)
    server.bars = spoil(sample_bars, bad, high=sample_bars.low[bad] * 0.99)  # the audit's 50 rows
    with pytest.raises(SourceError, match="high < low") as ei:
        await make_source(server, now_after(sample_bars), cache=cache).bars("BTCUSDT", WINDOWS["1d"])
    assert (ei.value.venue, ei.value.endpoint) == ("bybit", "/v5/market/kline")
    assert iso(int(sample_bars.time[-55])) in str(ei.value) and "nothing cached" in str(ei.value)
    if cache is not None:
        pd.testing.assert_frame_equal(cache.load("bybit", "BTCUSDT", "5m"), before)
    server.bars = sample_bars  # good bars again: the venue is back in the map at once
    bars = await make_source(server, now_after(sample_bars), cache=cache).bars("BTCUSDT", WINDOWS["1d"])
    assert bars.time[-1] == sample_bars.time[-1] and len(bars) == 288


async def test_negative_open_interest_is_refused_naming_the_oi_endpoint(sample_bars):
    cache = BarCache(None)
    server = FakeBybit(spoil(sample_bars, [-3], oi_usd=-1e6))
    with pytest.raises(SourceError, match="open interest must be positive") as ei:
        await make_source(server, now_after(sample_bars), cache=cache).bars("BTCUSDT", WINDOWS["1d"])
    assert (ei.value.venue, ei.value.endpoint) == ("bybit", "/v5/market/open-interest")
    assert iso(int(sample_bars.time[-3])) in str(ei.value)
    assert cache.count("bybit", "BTCUSDT", "5m") == 0


async def test_a_bar_high_of_1e11_is_cached_as_sent_and_clipped_in_the_all_venue_map(sample_bars):
    from test_okx import FakeOkx, make_source as make_okx

    from analysis.model import build_map
    from analysis.report import ReportService

    i = len(sample_bars) - 100
    spiked = spoil(sample_bars, [i], high=1e11)
    now = now_after(sample_bars)
    cache = BarCache(None)
    bybit = make_source(FakeBybit(spiked), now, cache=cache)
    okx = make_okx(FakeOkx(sample_bars, now))
    svc = ReportService({"bybit": bybit, "okx": okx}, now_ms=lambda: now)
    m, missing = await svc.maps("BTCUSDT", WINDOWS["1d"], ("bybit", "okx"))
    assert m.venues == ("bybit", "okx") and not missing
    assert any(n.startswith("bybit: 1 bar(s) with a high more than 100x") for n in m.notes)
    assert m.n_bins < 5_000
    assert cache.load("bybit", "BTCUSDT", "5m")["high"].max() == 1e11  # the data is kept as the venue sent it
    # the bybit slice equals the map of the same bars without the bad print
    clipped = spoil(sample_bars, [i], high=max(sample_bars.open[i], sample_bars.close[i]))
    clean = build_map(await make_source(FakeBybit(clipped), now).bars("BTCUSDT", WINDOWS["1d"]))
    assert m.short[0].sum() == pytest.approx(clean.total_short) and m.long[0].sum() == pytest.approx(clean.total_long)
