"""The report service: caching, single-flight, degraded multi-venue maps, and errors."""

from __future__ import annotations

import asyncio

import pytest

from analysis.bars import Bars
from analysis.errors import InputError, SourceError
from analysis.report import ReportService, map_nbytes
from analysis.sources import SampleSource
from analysis.windows import Window


class CountingSource:
    """The bundled sample under another venue name, counting fetches (optionally slow or failing)."""

    def __init__(self, name: str, *, fail: Exception | None = None, delay: float = 0.0) -> None:
        self.name = name
        self.fail = fail
        self.delay = delay
        self.fetches = 0
        self._sample = SampleSource()

    async def symbols(self) -> list[str]:
        return ["BTCUSDT"]

    async def bars(self, symbol: str, window: Window) -> Bars:
        self.fetches += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        b = await self._sample.bars(symbol, window)
        return Bars(self.name, b.symbol, b.interval, b.time, b.open, b.high, b.low, b.close, b.oi_usd * 0.5,
                    taker_net=b.taker_net)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def test_same_request_within_ttl_is_served_from_cache():
    src, clock = CountingSource("binance"), Clock()
    svc = ReportService({"binance": src}, ttl=60, clock=clock)
    a = await svc.report("BTC", "1d")
    b = await svc.report("BTCUSDT", "1d", "binance")
    assert a is b and src.fetches == 1 and svc.computations == 1
    clock.t = 61
    c = await svc.report("BTC", "1d")
    assert c is not a and src.fetches == 2
    await svc.report("BTC", "1d", theme="light")
    assert svc.computations == 3  # another theme is another picture


async def test_concurrent_requests_share_one_computation():
    src = CountingSource("binance", delay=0.05)
    svc = ReportService({"binance": src})
    reports = await asyncio.gather(*(svc.report("BTC", "1d") for _ in range(100)))
    assert src.fetches == 1 and svc.computations == 1
    assert all(r is reports[0] for r in reports)


async def test_concurrent_failure_reaches_every_waiter_and_is_not_cached():
    src = CountingSource("binance", delay=0.02, fail=SourceError("binance", "/fapi/v1/klines", "HTTP 503"))
    svc = ReportService({"binance": src})
    results = await asyncio.gather(*(svc.report("BTC", "1d") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, SourceError) for r in results) and src.fetches == 1
    src.fail = None
    assert (await svc.report("BTC", "1d")).png  # a later request tries again


async def test_one_venue_down_gives_a_degraded_map_that_names_it():
    good, bad = CountingSource("binance"), CountingSource("okx", fail=SourceError("okx", "/api/v5/market/candles", "HTTP 500 after 4 attempts"))
    svc = ReportService({"binance": good, "okx": bad})
    rep = await svc.report("BTC", "1d", "all")
    assert rep.venues == ("binance",)
    assert rep.missing == {"okx": "HTTP 500 after 4 attempts"}
    assert any("okx missing" in n for n in rep.map.notes)
    assert rep.to_json()["missing_venues"] == {"okx": "HTTP 500 after 4 attempts"}


async def test_all_venues_down_is_an_error_naming_each():
    svc = ReportService({
        "binance": CountingSource("binance", fail=SourceError("binance", "/fapi/v1/klines", "region blocked (HTTP 451)")),
        "okx": CountingSource("okx", fail=SourceError("okx", "/api/v5/market/candles", "timed out")),
    })
    with pytest.raises(SourceError, match="every venue failed.*binance: region blocked.*okx: timed out"):
        await svc.report("BTC", "1d")


async def test_two_venues_are_summed():
    svc = ReportService({"binance": CountingSource("binance"), "bybit": CountingSource("bybit")})
    one = await svc.report("BTC", "1d", "binance")
    both = await svc.report("BTC", "1d", "all")
    assert both.venues == ("binance", "bybit")
    assert both.map.total_long == pytest.approx(2 * one.map.total_long, rel=1e-9)
    assert both.reading.long_in_band == pytest.approx(2 * one.reading.long_in_band, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(exchange="kraken"), "unknown exchange"),
        (dict(exchange="coinglass"), "needs a CoinGlass API key"),
        (dict(window="2d"), "unknown window"),
        (dict(symbol="@everyone"), "not a symbol"),
        (dict(theme="neon"), "unknown theme"),
        (dict(stack="sideways"), "unknown stacking"),
    ],
)
async def test_bad_requests_are_input_errors(kwargs, message):
    svc = ReportService({"binance": CountingSource("binance")})
    args = dict(symbol="BTC", window="1d", exchange="all", theme="dark")
    args.update(kwargs)
    with pytest.raises(InputError, match=message):
        await svc.report(**args)


async def test_stack_by_venue_renders():
    svc = ReportService({"binance": CountingSource("binance"), "bybit": CountingSource("bybit")})
    rep = await svc.report("BTC", "1d", stack="venue")
    assert rep.png[:8] == b"\x89PNG\r\n\x1a\n"


# -- the cache is bounded in bytes and time ---------------------------------------------------------

KEYS = [dict(theme="dark"), dict(theme="light"), dict(stack="venue")]  # three distinct cache keys


async def test_report_size_counts_png_arrays_and_text():
    rep = await ReportService({"binance": CountingSource("binance")}).report("BTC", "1d")
    assert rep.nbytes >= len(rep.png) + rep.map.long.nbytes + rep.map.short.nbytes + len(rep.summary)


async def test_cache_evicts_least_recently_used_by_bytes():
    probe = ReportService({"binance": CountingSource("binance")}, max_bytes=10**9)
    s1, s2, s3 = [(await probe.report("BTC", "1d", **k)).nbytes for k in KEYS]
    budget = s2 + s3 + s1 // 2  # room for two reports, never three
    svc = ReportService({"binance": CountingSource("binance")}, ttl=600, max_bytes=budget, clock=Clock())
    for k in KEYS:
        await svc.report("BTC", "1d", **k)
    # two reports and the one merged map the three keys share (cached beside them, see map_nbytes)
    assert svc.cache_size == 3 and svc.cache_bytes <= budget and svc.computations == 3
    assert svc.map_computations == 1
    await svc.report("BTC", "1d", **KEYS[1])  # a hit: now the most recently used
    assert svc.computations == 3
    await svc.report("BTC", "1d", **KEYS[0])  # evicted before: built again, evicting KEYS[2]
    assert svc.computations == 4 and svc.cache_bytes <= budget
    await svc.report("BTC", "1d", **KEYS[1])
    assert svc.computations == 4
    await svc.report("BTC", "1d", **KEYS[2])
    assert svc.computations == 5


async def test_a_report_larger_than_the_budget_is_served_but_not_kept():
    svc = ReportService({"binance": CountingSource("binance")}, max_bytes=1000)
    assert (await svc.report("BTC", "1d")).png
    assert svc.cache_size == 0 and svc.cache_bytes == 0


async def test_expired_entries_are_swept_on_every_store():
    clock = Clock()
    svc = ReportService({"binance": CountingSource("binance")}, ttl=10, clock=clock)
    await svc.report("BTC", "1d", **KEYS[0])
    clock.t = 5
    await svc.report("BTC", "1d", **KEYS[1])
    assert svc.cache_size == 3 and svc.map_computations == 1  # two reports and their shared merged map
    clock.t = 12  # KEYS[0] and the map expired (stored at 0); KEYS[1] (stored at 5) is still fresh
    b = await svc.report("BTC", "1d", **KEYS[2])
    assert svc.cache_size == 3 and svc.computations == 3 and svc.map_computations == 2
    clock.t = 16  # KEYS[1] expired too: the next store sweeps it although nobody asked for it again
    c = await svc.report("BTC", "1d", **KEYS[0])
    assert svc.cache_size == 3 and svc.cache_bytes == b.nbytes + c.nbytes + map_nbytes((c.map, {}))
    assert await svc.report("BTC", "1d", **KEYS[2]) is b and svc.computations == 4


async def test_ttl_zero_stores_nothing_but_still_shares_concurrent_work():
    src = CountingSource("binance", delay=0.05)
    svc = ReportService({"binance": src}, ttl=0)
    reports = await asyncio.gather(*(svc.report("BTC", "1d") for _ in range(20)))
    assert svc.computations == 1 and src.fetches == 1 and all(r is reports[0] for r in reports)
    assert svc.cache_size == 0 and svc.cache_bytes == 0
    await svc.report("BTC", "1d")
    assert svc.computations == 2 and svc.cache_size == 0


def test_negative_limits_are_refused():
    with pytest.raises(ValueError):
        ReportService({"binance": CountingSource("binance")}, max_bytes=-1)


async def test_heatmap_of_the_service_uses_its_sources_and_names_a_snapshot_only_venue():
    from analysis.errors import InputError as _InputError
    from analysis.sources.registry import make_sources

    svc = ReportService(make_sources("sample"))
    png, states, missing = await svc.heatmap("BTCUSDT", "1d", "all", "light")
    assert png.startswith(b"\x89PNG") and not missing and states.n_columns > 1
    assert states.venues == tuple(svc.venues)

    class Snapshot:  # a source of finished maps only (as CoinGlass is)
        async def map(self, symbol, win):  # pragma: no cover - never reached
            raise AssertionError

    snap = ReportService({"coinglass": Snapshot()})
    with pytest.raises(_InputError, match="only a snapshot map"):
        await snap.heatmap("BTCUSDT", "1d", "coinglass")


# -- the heatmap: cached and single-flighted like reports, in the same byte budget ---------------------

async def test_concurrent_identical_heatmaps_make_one_computation_and_are_then_cached():
    src, clock = CountingSource("binance", delay=0.05), Clock()
    svc = ReportService({"binance": src}, ttl=60, clock=clock)
    results = await asyncio.gather(*(svc.heatmap("BTC", "1d") for _ in range(20)))
    assert src.fetches == 1 and svc.heatmap_computations == 1 and svc.computations == 0
    assert all(r[0] is results[0][0] and r[1] is results[0][1] for r in results)  # the very same PNG and states
    again = await svc.heatmap("BTCUSDT", "1d", "binance")
    assert again[0] is results[0][0] and svc.heatmap_computations == 1
    await svc.heatmap("BTC", "1d", theme="light")  # another theme is another picture
    assert svc.heatmap_computations == 2
    clock.t = 61
    await svc.heatmap("BTC", "1d")
    assert svc.heatmap_computations == 3  # expired


async def test_a_heatmap_and_a_map_of_the_same_request_are_cached_apart_in_one_byte_budget():
    from analysis.report import heatmap_nbytes

    svc = ReportService({"binance": CountingSource("binance")}, ttl=60)
    rep = await svc.report("BTC", "1d")
    heat = await svc.heatmap("BTC", "1d")
    # the report, the heatmap and the merged map behind the report
    assert svc.cache_size == 3 and svc.cache_bytes == rep.nbytes + heatmap_nbytes(heat) + map_nbytes((rep.map, {}))
    assert heatmap_nbytes(heat) > len(heat[0]) + heat[1].long.nbytes
    assert (await svc.report("BTC", "1d")) is rep and svc.computations == 1
    # a budget that holds only one of them evicts the least recently used
    small = ReportService({"binance": CountingSource("binance")}, ttl=60,
                          max_bytes=max(rep.nbytes, heatmap_nbytes(heat)) + 1)
    await small.report("BTC", "1d")
    await small.heatmap("BTC", "1d")
    assert small.cache_size == 1 and small.cache_bytes <= small.max_bytes
    await small.heatmap("BTC", "1d")
    assert small.heatmap_computations == 1  # the heatmap stayed
    await small.report("BTC", "1d")
    assert small.computations == 2  # the map was evicted


async def test_a_heatmap_failure_reaches_every_waiter_and_is_not_cached():
    src = CountingSource("binance", delay=0.02, fail=SourceError("binance", "/fapi/v1/klines", "HTTP 503"))
    svc = ReportService({"binance": src})
    results = await asyncio.gather(*(svc.heatmap("BTC", "1d") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, SourceError) for r in results) and src.fetches == 1 and svc.cache_size == 0
    src.fail = None
    assert (await svc.heatmap("BTC", "1d"))[0].startswith(b"\x89PNG")


async def test_a_cached_heatmap_hands_out_its_missing_venues_as_a_copy():
    svc = ReportService({"binance": CountingSource("binance"),
                         "okx": CountingSource("okx", fail=SourceError("okx", "/api/v5/market/candles", "HTTP 500"))})
    _, states, missing = await svc.heatmap("BTC", "1d")
    assert missing == {"okx": "HTTP 500"} and states.venues == ("binance",)
    assert any("okx missing" in n for n in states.notes)
    missing.clear()
    assert (await svc.heatmap("BTC", "1d"))[2] == {"okx": "HTTP 500"} and svc.heatmap_computations == 1


def test_heatmap_venues_decides_without_io():
    class Snapshot:
        async def map(self, symbol, win):  # pragma: no cover - never reached
            raise AssertionError

    svc = ReportService({"binance": CountingSource("binance"), "coinglass": Snapshot()})
    assert svc.heatmap_venues("all") == ("binance",)
    with pytest.raises(InputError, match="coinglass serves only a snapshot map"):
        svc.heatmap_venues("coinglass")


# -- the reading-only path --------------------------------------------------------------------------

async def test_a_reading_renders_nothing_and_matches_the_reports_reading():
    src = CountingSource("binance")
    svc = ReportService({"binance": src}, ttl=60)
    r = await svc.reading("BTC", "1d")
    assert svc.renderer.stats.submitted == 0 and svc.computations == 0 and svc.map_computations == 1
    rep = await svc.report("BTC", "1d")  # the full report models nothing again: the merged map is shared
    assert src.fetches == 1 and svc.map_computations == 1 and svc.renderer.stats.submitted == 1
    assert r.imbalance == rep.reading.imbalance and r.skew == rep.reading.skew and r.end_ms == rep.reading.end_ms
    assert r.cum_long == rep.reading.cum_long and r.clusters == rep.reading.clusters


async def test_concurrent_readings_and_reports_share_one_model_run():
    src = CountingSource("binance", delay=0.05)
    svc = ReportService({"binance": src}, ttl=0)
    out = await asyncio.gather(*(svc.reading("BTC", "1d") for _ in range(5)), svc.report("BTC", "1d"))
    assert src.fetches == 1 and svc.map_computations == 1 and svc.computations == 1
    assert all(r.imbalance == out[-1].reading.imbalance for r in out[:5])


async def test_a_reading_of_a_bad_request_is_an_input_error():
    svc = ReportService({"binance": CountingSource("binance")})
    with pytest.raises(InputError, match="unknown exchange"):
        await svc.reading("BTC", "1d", "kraken")
    with pytest.raises(InputError, match="unknown window"):
        await svc.reading("BTC", "2d")
