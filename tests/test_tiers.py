"""Each symbol's real margin tiers: the venues' parsers on documented shapes, paging, refusals, a venue
that lists a symbol without tiers, stale tiers, the cache, and the model priced with them.

Shapes are named in tests/fixtures/<venue>/SOURCES.md; the network is an httpx MockTransport.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from analysis.errors import SourceError
from analysis.liqmap import merge
from analysis.margin import OPEN_CAP, Bracket, MarginTable, table_for
from analysis.model import ModelParams, build_map, fit_leverage
from analysis.report import ReportService
from analysis.sources.bybit import BybitSource, parse_risk_limits
from analysis.sources.cache import BarCache
from analysis.sources.okx import OkxSource, parse_position_tiers
from analysis.sources.tiers import TierBook, hyperliquid_tier_book, parse_hyperliquid_meta, table_from_rows

from conftest import run
from reference_model import reference_grid, reference_levels

FIX = Path(__file__).resolve().parent / "fixtures"
DAY = 86_400.0


def load(venue: str, name: str):
    return json.loads((FIX / venue / name).read_text())


def venue_table(max_lev: float = 20.0, *, as_of_ms: int = 1_700_000_000_000) -> MarginTable:
    """A venue table of a coin whose maximum is ``max_lev`` (tiers in the shape the parsers build)."""
    return MarginTable("TEST 20x", (Bracket(1e6, max_lev, 0.025), Bracket(OPEN_CAP, max_lev / 2, 0.05)),
                       origin="venue", as_of_ms=as_of_ms)


# -- parsers -------------------------------------------------------------------------------------------

def test_bybit_documented_risk_limit_example_reads_percentages():
    page, cursor = parse_risk_limits(load("bybit", "risk_limit_inverse.json"))
    assert cursor is None
    assert page == {"BTCUSD": [Bracket(150.0, 100.0, 0.005)]}


def test_bybit_tiers_in_another_unit_are_refused_not_priced_a_hundred_times_off():
    body = load("bybit", "risk_limit_inverse.json")
    row = body["result"]["list"][0]
    row.update(maintenanceMargin="0.005", initialMargin="0.01")  # fractions, not the documented percentages
    with pytest.raises(SourceError, match="initialMargin 0.01% does not match maxLeverage 100x"):
        parse_risk_limits(body)


def test_bybit_refusal_and_bad_rows_are_source_errors():
    with pytest.raises(SourceError, match="retCode 10001: params error"):
        parse_risk_limits({"retCode": 10001, "retMsg": "params error", "result": {}, "time": 1})
    body = load("bybit", "risk_limit_inverse.json")
    body["result"]["list"][0]["riskLimitValue"] = "lots"
    with pytest.raises(SourceError, match="riskLimitValue of BTCUSD"):
        parse_risk_limits(body)


def test_okx_documented_position_tiers_example():
    rows = parse_position_tiers(load("okx", "position_tiers.json"), "BTC-USDT", 0.01)
    assert rows == [Bracket(OPEN_CAP, 10.0, 0.03)]  # the one (highest) tier is open-ended


def test_okx_swap_tiers_are_in_contracts_and_other_families_ignored():
    body = load("okx", "position_tiers_swap.json")
    body["data"].append(dict(body["data"][0], instFamily="ETH-USDT", uly="ETH-USDT", maxLever="5"))
    rows = parse_position_tiers(body, "BTC-USDT", 0.01)
    assert rows == [Bracket(5.0, 100.0, 0.004), Bracket(25.0, 50.0, 0.008), Bracket(OPEN_CAP, 20.0, 0.02)]
    table = table_from_rows("okx", "/t", "OKX BTC", rows, cap_unit="coin")
    usd = table.in_usd(60_000.0)
    assert [b.cap_usd for b in usd.brackets] == [300_000.0, 1_500_000.0, OPEN_CAP]
    assert usd.max_leverage == 100


def test_tiers_that_cannot_price_levels_are_refused_naming_the_fault():
    with pytest.raises(SourceError, match="maintenance margin rate 0.2 must be above 0 and below the initial margin 1/10"):
        table_from_rows("okx", "/t", "x", [Bracket(OPEN_CAP, 10.0, 0.2)])
    with pytest.raises(SourceError, match="no tiers"):
        table_from_rows("okx", "/t", "x", [])


def test_hyperliquid_documented_meta_example():
    tables = parse_hyperliquid_meta(load("hyperliquid", "meta.json"))
    assert sorted(tables) == ["BTC", "ETH", "HPOS"]  # LOOM is delisted
    assert tables["BTC"].brackets == (Bracket(OPEN_CAP, 50.0, 0.01),)  # mmr = 1 / (2 x 50)
    assert tables["HPOS"].max_leverage == 3


def test_hyperliquid_margin_tables_by_id():
    tables = parse_hyperliquid_meta(load("hyperliquid", "meta_tiered.json"))
    assert tables["BTC"].brackets == (Bracket(150e6, 40.0, 0.0125), Bracket(OPEN_CAP, 20.0, 0.025))
    assert tables["SOL"].max_leverage == 20
    assert tables["OP"].brackets == (Bracket(3e6, 10.0, 0.05), Bracket(OPEN_CAP, 5.0, 0.1))
    assert tables["NEWCOIN"].brackets == (Bracket(OPEN_CAP, 5.0, 0.1),)  # id < 50: one tier at the id
    assert "ORPHAN" not in tables  # names a table the answer lacks: no tiers (shipped fallback)
    with pytest.raises(SourceError, match="marginTables\\[0\\] should be \\[id, table\\]"):
        parse_hyperliquid_meta({"universe": [], "marginTables": [{"id": 1}]})


# -- the venues' sources ---------------------------------------------------------------------------------

def _bybit_instrument(symbol: str, base: str) -> dict:
    row = dict(load("bybit", "instruments_linear.json")["result"]["list"][0])
    row.update(symbol=symbol, baseCoin=base, quoteCoin="USDT", settleCoin="USDT", status="Trading")
    return row


class FakeBybitTiers:
    """Instruments and paged risk limits in Bybit's documented shapes; ``refuse`` answers a retCode."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.refuse: str | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        q = dict(request.url.params)
        if request.url.path == "/v5/market/instruments-info":
            rows = [_bybit_instrument("BTCUSDT", "BTC"), _bybit_instrument("ETHUSDT", "ETH")]
            return httpx.Response(200, json={"retCode": 0, "retMsg": "OK", "time": 1,
                                             "result": {"category": "linear", "list": rows, "nextPageCursor": ""}})
        assert request.url.path == "/v5/market/risk-limit"
        self.calls.append(q)
        if self.refuse:
            return httpx.Response(200, json={"retCode": 10001, "retMsg": self.refuse, "result": {}, "time": 1})
        if q["symbol"] == "ETHUSDT":  # listed, but no tiers in the answer
            return httpx.Response(200, json={"retCode": 0, "retMsg": "OK", "time": 1,
                                             "result": {"category": "linear", "list": [], "nextPageCursor": ""}})
        name = "risk_limit_page2.json" if q.get("cursor") else "risk_limit_page1.json"
        return httpx.Response(200, json=load("bybit", name))


def bybit(fake: FakeBybitTiers, now: list[float], cache: BarCache | None = None) -> BybitSource:
    src = BybitSource(transport=httpx.MockTransport(fake.handler), cache=cache)
    src.tiers = TierBook("bybit", src._load_tiers, cache=cache, now=lambda: now[0])
    return src


def test_bybit_tiers_follow_the_cursor_to_the_last_page():
    fake, now = FakeBybitTiers(), [1_700_000_000.0]
    table = run(bybit(fake, now).margin_tiers("BTC"))
    # Bybit's cursor is already percent-encoded; httpx releases differ in whether they decode it on read
    from urllib.parse import unquote

    assert [c.get("cursor") and unquote(c.get("cursor")) for c in fake.calls] == [None, "2:1,2:1"]
    assert all(c["category"] == "linear" and c["symbol"] == "BTCUSDT" for c in fake.calls)
    assert table.brackets == (Bracket(2e6, 100.0, 0.005), Bracket(1e7, 50.0, 0.01), Bracket(4e7, 20.0, 0.025))
    assert (table.origin, table.as_of_ms, table.stale) == ("venue", 1_700_000_000_000, False)


def test_a_symbol_listed_without_tiers_uses_the_shipped_table_and_says_so():
    fake, now = FakeBybitTiers(), [1_700_000_000.0]
    src = bybit(fake, now)
    table = run(src.margin_tiers("ETHUSDT"))
    assert table.origin == "shipped" and table.name == table_for("ETHUSDT").name
    assert table.why == "no venue tiers (bybit lists ETHUSDT but publishes no margin tiers for it)"
    run(src.margin_tiers("ETHUSDT"))
    assert len(fake.calls) == 1  # not asked again within the retry interval
    now[0] += 601
    run(src.margin_tiers("ETHUSDT"))
    assert len(fake.calls) == 2


def test_a_refusal_falls_back_to_the_shipped_table_with_the_venues_reason():
    fake, now = FakeBybitTiers(), [1_700_000_000.0]
    fake.refuse = "params error: symbol invalid"
    table = run(bybit(fake, now).margin_tiers("BTCUSDT"))
    assert table.origin == "shipped"
    assert "retCode 10001: params error: symbol invalid" in (table.why or "")


def test_stale_tiers_keep_serving_with_their_age_when_a_refresh_fails_and_refresh_once_it_works():
    fake, now = FakeBybitTiers(), [1_700_000_000.0]
    src = bybit(fake, now)
    first = run(src.margin_tiers("BTCUSDT"))
    now[0] += 0.5 * DAY
    assert run(src.margin_tiers("BTCUSDT")) == first and len(fake.calls) == 2  # fresh for a day: no request
    now[0] += 1.5 * DAY
    fake.refuse = "system busy"
    stale = run(src.margin_tiers("BTCUSDT"))
    assert stale.stale and stale.brackets == first.brackets and stale.as_of_ms == first.as_of_ms
    note = stale.source_note("bybit", int(now[0] * 1000))
    assert note.startswith("bybit: margin tiers from the venue (Bybit BTCUSDT risk limits), fetched 2023-11-14 22:13 UTC, "
                           "2 days old; refresh failed (")
    assert "system busy" in note and note.endswith("last good copy used")
    calls = len(fake.calls)
    run(src.margin_tiers("BTCUSDT"))
    assert len(fake.calls) == calls  # the failure is not retried for every map
    now[0] += 601
    fake.refuse = None
    fresh = run(src.margin_tiers("BTCUSDT"))
    assert not fresh.stale and fresh.as_of_ms == int(now[0] * 1000)


def test_tiers_survive_a_restart_in_the_bar_cache_and_a_corrupt_copy_is_refetched(tmp_path):
    fake, now = FakeBybitTiers(), [1_700_000_000.0]
    cache = BarCache(tmp_path / "bars.sqlite3")
    first = run(bybit(fake, now, cache).margin_tiers("BTCUSDT"))
    calls = len(fake.calls)
    again = run(bybit(fake, now, cache).margin_tiers("BTCUSDT"))  # a new process within the day
    assert again == first and len(fake.calls) == calls
    now[0] += 3 * DAY
    fake.refuse = "down"
    stale = run(bybit(fake, now, cache).margin_tiers("BTCUSDT"))  # down after a restart: the stored copy
    assert stale.stale and stale.brackets == first.brackets
    cache.put_meta("tiers:bybit", {"format": 1, "symbols": {"BTCUSDT": {"brackets": "garbage"}}})
    fake.refuse = None
    assert run(bybit(fake, now, cache).margin_tiers("BTCUSDT")).brackets == first.brackets  # refetched
    cache.close()


def test_okx_tiers_are_read_per_family_in_isolated_mode_and_sized_by_ctval():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v5/public/instruments":
            return httpx.Response(200, json=load("okx", "instruments_swap.json"))
        calls.append(dict(request.url.params))
        if calls[-1]["instFamily"] == "ETH-USDT":
            return httpx.Response(200, json=load("okx", "error_51001.json"))
        return httpx.Response(200, json=load("okx", "position_tiers_swap.json"))

    src = OkxSource(transport=httpx.MockTransport(handler))
    table = run(src.margin_tiers("BTC-USDT-SWAP"))
    assert calls == [{"instType": "SWAP", "tdMode": "isolated", "instFamily": "BTC-USDT"}]
    assert (table.cap_unit, table.origin, table.max_leverage) == ("coin", "venue", 100.0)
    assert table.brackets[0] == Bracket(5.0, 100.0, 0.004)  # 500 contracts x 0.01 BTC
    refused = run(src.margin_tiers("ETHUSDT"))
    assert refused.origin == "shipped" and "code 51001" in (refused.why or "")


def test_binance_uses_the_shipped_tables_saying_why():
    from analysis.sources.binance import BinanceSource

    table = run(BinanceSource(transport=httpx.MockTransport(lambda r: httpx.Response(500))).margin_tiers("SOLUSDT"))
    assert table.origin == "shipped" and table.name == table_for("SOLUSDT").name
    assert "signed" in (table.why or "")


def test_hyperliquid_one_meta_answer_serves_every_coin_and_a_coin_without_its_table_falls_back():
    posts = []

    async def post_meta():
        posts.append(1)
        return load("hyperliquid", "meta_tiered.json")

    now = [1_700_000_000.0]
    book = hyperliquid_tier_book(post_meta, lambda coin: f"{coin}USDC", now=lambda: now[0])
    btc, sol = run(book.table("BTCUSDC")), run(book.table("SOLUSDC"))
    assert len(posts) == 1 and btc.max_leverage == 40 and sol.max_leverage == 20 and sol.origin == "venue"
    orphan = run(book.table("ORPHANUSDC"))
    assert orphan.origin == "shipped" and "hyperliquid lists ORPHANUSDC but publishes no margin tiers" in orphan.why
    assert len(posts) == 1  # the bulk answer was fresh: no second request


# -- the model with the symbol's tiers ------------------------------------------------------------------------

def test_tiers_above_the_maximum_are_dropped_and_their_weight_redistributed():
    p = ModelParams()  # 5, 10, 25, 50, 100 at .30 .30 .20 .12 .08
    prop = fit_leverage(p, venue_table(20.0))
    assert prop.leverage == (5.0, 10.0) and prop.leverage_weights == pytest.approx((0.5, 0.5))
    assert prop.max_leverage == 20.0
    high = fit_leverage(replace(p, excess_leverage="highest"), venue_table(20.0))
    assert high.leverage_weights == pytest.approx((0.3, 0.7))
    low = fit_leverage(p, venue_table(3.0))  # below every tier: one tier at 3x
    assert low.leverage == (3.0,) and low.leverage_weights == (1.0,) and low.tier_labels == ("3x",)
    assert fit_leverage(p, table_for("BTCUSDT")).leverage == p.leverage  # 125x: nothing dropped
    own = fit_leverage(p.with_overrides(["max_leverage=20"]), table_for("BTCUSDT"))  # a cap of one's own
    assert own.leverage == (5.0, 10.0) and own.max_leverage == 20.0


def test_a_20x_symbol_has_no_50x_or_100x_levels_and_keeps_its_notional(sample_bars):
    from analysis.model import run_model

    capped = build_map(sample_bars, ModelParams(margin_table=venue_table(20.0)), now_ms=1_700_086_400_000)
    wide = ModelParams(margin_table=replace(venue_table(), brackets=(Bracket(OPEN_CAP, 200.0, 0.004),)))
    assert capped.tiers == ("5x", "10x") and len(build_map(sample_bars, wide).tiers) == 5
    r_cap, r_wide = run_model(sample_bars, ModelParams(margin_table=venue_table(20.0))), run_model(sample_bars, wide)
    opened = [r.longs.weight.sum() + r.shorts.weight.sum() for r in (r_cap, r_wide)]
    assert opened[0] == pytest.approx(opened[1], rel=1e-9)  # the dropped weight went to 5x and 10x
    w = r_cap.longs.weight
    assert w[r_cap.longs.tier == 1].sum() == pytest.approx(w[r_cap.longs.tier == 0].sum(), rel=1e-9)  # .3/.3 -> .5/.5
    # no level closer to the price than a 20x position's liquidation distance allows (1/20 - mmr)
    nearest = capped.centers[np.nonzero(capped.long_by_bin())[0]].max()
    assert nearest <= capped.price * (1 - (1 / 20 - 0.05)) + capped.bin_width
    margin = capped.params["margin"][sample_bars.venue]
    assert margin["origin"] == "venue" and margin["tiers_dropped"] == ["25x", "50x", "100x"]
    assert margin["leverage_cap"] == 20.0 and margin["age_hours"] == 24.0
    assert any("maximum leverage 20x: the 25x, 50x, 100x tier(s) dropped" in n for n in capped.notes)
    assert any("margin tiers from the venue (TEST 20x)" in n and "24 h old" in n for n in capped.notes)
    assert capped.params["non_default_params"] == {}  # the table is chosen, not configured


def test_capped_model_matches_the_reference_loop(sample_bars):
    bars = sample_bars.slice(0, 400)
    params = ModelParams(margin_table=venue_table(20.0), levels_per_hour=12.0)
    m = build_map(bars, params)
    active, ref_long, ref_short = reference_levels(bars, params)
    np.testing.assert_allclose(m.swept.long, ref_long, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(m.swept.short, ref_short, rtol=1e-9, atol=1e-6)
    lo, long, short = reference_grid(active, bars.price, m.bin_width, len(m.tiers))
    np.testing.assert_allclose(m.long[0], long, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(m.short[0], short, rtol=1e-9, atol=1e-6)


def test_maps_with_different_maximum_leverage_merge_on_the_united_tiers(sample_bars):
    a = build_map(sample_bars, ModelParams(margin_table=venue_table(20.0)))
    b = build_map(replace(sample_bars, venue="okx"), ModelParams())
    m = merge([a, b])
    assert m.tiers == ("5x", "10x", "25x", "50x", "100x")
    assert m.long[0, :, 2:].sum() == 0 and m.long[1, :, 2:].sum() > 0
    assert m.total_long == pytest.approx(a.total_long + b.total_long, rel=1e-9)
    assert set(m.params["margin"]) == {sample_bars.venue, "okx"}


def test_the_report_prices_each_venue_with_its_own_tiers_and_says_which(sample_bars):
    class Plain:  # a source without tiers
        name = "okx"

        async def symbols(self):
            return ["BTCUSDT"]

        async def bars(self, symbol, window):
            return replace(sample_bars, venue=self.name)

    class Tiered(Plain):
        name = "bybit"

        async def margin_tiers(self, symbol):
            return venue_table(20.0, as_of_ms=sample_bars.end_ms)

    svc = ReportService({"bybit": Tiered(), "okx": Plain()}, now_ms=lambda: sample_bars.end_ms + 3_600_000)
    rep = run(svc.report("BTCUSDT", "1d"))
    out = rep.to_json()
    assert out["params"]["margin"]["bybit"]["origin"] == "venue"
    assert out["params"]["margin"]["bybit"]["age_hours"] == 1.0
    assert out["params"]["margin"]["okx"]["origin"] == "shipped"
    assert any(n.startswith("bybit: margin tiers from the venue") for n in out["notes"])
    assert any(n.startswith("okx: shipped margin table") for n in out["notes"])
    assert rep.map.long[0, :, 2:].sum() == 0  # bybit: 20x, so nothing at 25x and above
    _, states, _ = run(svc.heatmap("BTCUSDT", "1d", "bybit"))  # the heatmap is priced with the same tiers
    assert any("maximum leverage 20x" in n for n in states.notes)


def test_the_chart_of_a_20x_symbol_has_no_50x_or_100x_bars(sample_bars):
    from matplotlib.legend import Legend

    from analysis.chart import build_figure
    from analysis.metrics import read

    m = build_map(sample_bars, ModelParams(margin_table=venue_table(20.0)), window="7d")
    fig = build_figure(m, read(m))
    labels = [t.get_text() for leg in fig.findobj(Legend) for t in leg.get_texts()]
    assert "5x" in labels and "10x" in labels
    assert not {"25x", "50x", "100x"} & set(labels)


async def test_a_recording_keeps_the_tiers_and_its_replay_prices_with_them(sample_bars, tmp_path):
    from test_bybit import FakeBybit, now_after

    from analysis.sources.registry import aclose_sources, make_sources, record

    bars_fake, tiers_fake = FakeBybit(sample_bars), FakeBybitTiers()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v5/market/risk-limit":
            return tiers_fake.handler(request)
        return bars_fake.handler(request)

    now = now_after(sample_bars)
    lines = await record("BTCUSDT", "1d", "bybit", tmp_path / "rec", transport=httpx.MockTransport(handler), now_ms=now)
    assert "bybit: margin tiers: Bybit BTCUSDT risk limits (venue)" in lines
    sources = make_sources(f"recorded:{tmp_path / 'rec'}")
    try:
        rep = await ReportService(sources, now_ms=lambda: now).report("BTCUSDT", "1d", "bybit")
    finally:
        await aclose_sources(sources)
    margin = rep.to_json()["params"]["margin"]["bybit"]
    assert margin["origin"] == "venue" and margin["table"] == "Bybit BTCUSDT risk limits"
    assert margin["age_hours"] == 0.0  # stamped with the recording's time, not the replay's
