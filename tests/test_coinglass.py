"""CoinGlass v4 maps: parsing the documented payloads, normalisation into LiquidationMap, errors, key safety."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import numpy as np
import pytest

from analysis.errors import InputError, SourceError
from analysis.liqmap import merge
from analysis.metrics import read
from analysis.model import ModelParams
from analysis.sources.coinglass import (
    COIN_MAP, KEY_HEADER, PAIR_MAP, CoinGlassSource, normalize, parse_map, tier_index,
)
from analysis.windows import WINDOWS

from fake_clock import FakeTime

FIX = Path(__file__).resolve().parent / "fixtures" / "coinglass"
KEY = "cg-test-key-5f1e0c9b7d"
NOW = 1_782_000_000_000


def load(name: str):
    return json.loads((FIX / name).read_text())


def map_payload(rows: list[list]) -> dict:
    """A response in the documented shape: data.data maps a price key to its rows."""
    levels: dict[str, list] = {}
    for r in rows:
        levels.setdefault(f"{r[0]:g}", []).append(r)
    return {"code": "0", "msg": "success", "data": {"data": levels}}


# A realistic spread of levels around 64,000 with CoinGlass's usual leverages.
ROWS = [
    [60_120.0, 2_500_000.0, 100, None], [61_480.5, 7_250_000.0, 50, None], [62_010.0, 4_100_000.0, 25, None],
    [63_000.0, 9_900_000.0, 10, None], [63_950.0, 1_000_000.0, 20, None], [64_000.0, 3_000_000.0, 25, None],
    [64_600.0, 5_400_000.0, 50, None], [65_900.0, 8_800_000.0, 100, None], [67_250.0, 6_000_000.0, 75, None],
]


class FakeCoinGlass:
    def __init__(self, responses: list[httpx.Response] | None = None) -> None:
        self.responses = list(responses or [])
        self.requests: list[httpx.Request] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.responses:
            return self.responses.pop(0)
        return httpx.Response(200, json=map_payload(ROWS))


def make(server: FakeCoinGlass, *, exchange: str | None = "binance", price: float = 64_000.0, recorder=None) -> CoinGlassSource:
    ft = FakeTime(0.0)

    async def current(symbol: str) -> float:
        return price

    return CoinGlassSource(KEY, price=current, exchange=exchange, transport=httpx.MockTransport(server.handler),
                           sleep=ft.sleep, clock=ft.clock, now_ms=lambda: NOW, recorder=recorder)


# -- parsing -------------------------------------------------------------------------------------------

def test_parse_documented_pair_map():
    price, usd, lev = parse_map(load("liquidation_map.json"))
    assert price.tolist() == [48935.0] and usd.tolist() == [1579370.77] and lev.tolist() == [25.0]


def test_parse_documented_aggregated_map_has_no_leverage():
    price, usd, lev = parse_map(load("aggregated_map.json"), COIN_MAP)
    assert price.tolist() == [48935.0] and usd.tolist() == [1579370.77] and np.isnan(lev).all()


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"code": "0", "msg": "success", "data": {"data": {}}}, "empty liquidation map"),
        ({"code": "0", "msg": "success", "data": {"data": {"1": [[1.0]]}}}, r"row 0 should be \[price, level_usd"),
        ({"code": "0", "msg": "success", "data": {"data": {"1": [["x", 5, 10, None]]}}}, "price in level 1 should be a number"),
        ({"code": "0", "msg": "success", "data": {"data": {"1": [[1.0, -5, 10, None]]}}}, "non-negative"),
        ({"code": "0", "msg": "success", "data": {"data": {"1": "oops"}}}, "level 1 should be a list"),
        ({"code": "0", "msg": "success"}, "missing field 'data'"),
        ({"code": "30001", "msg": "API key missing"}, "rejected the API key"),
        ({"code": "40001", "msg": "Please upgrade your plan"}, "plan does not include liquidation maps"),
        ({"code": "500", "msg": "internal"}, "code 500: internal"),
    ],
)
def test_parse_errors_are_source_errors(payload, match):
    with pytest.raises(SourceError, match=match) as info:
        parse_map(payload)
    assert info.value.venue == "coinglass"


# -- normalisation ---------------------------------------------------------------------------------------

def test_tier_mapping_nearest_in_log_space():
    tiers = (5.0, 10.0, 25.0, 50.0, 100.0)
    got = tier_index(np.array([5, 10, 25, 50, 100, 20, 75, 3, 125, np.nan]), tiers).tolist()
    assert got == [0, 1, 2, 3, 4, 2, 4, 0, 4, -1]


def test_sides_by_current_price_tiers_kept_totals_preserved():
    price, usd, lev = parse_map(map_payload(ROWS))
    m = normalize(price, usd, lev, symbol="BTCUSDT", current_price=64_000.0, window=WINDOWS["7d"],
                  now_ms=NOW, source="Binance BTCUSDT")
    assert m.kind == "coinglass" and m.venues == ("coinglass",) and not m.is_estimate
    assert m.tiers == ("5x", "10x", "25x", "50x", "100x")
    below = sum(r[1] for r in ROWS if r[0] < 64_000)
    assert m.total_long == pytest.approx(below)
    assert m.total_short == pytest.approx(sum(r[1] for r in ROWS) - below)  # 64,000 itself is >= price: short
    # every long level sits below the price, every short level at or above it
    centers = m.centers
    assert np.all(centers[m.long_by_bin() > 0] < 64_000)
    assert np.all(m.edges[1:][m.short_by_bin() > 0] > 64_000)
    # tiers kept: 50x levels total 7.25M (long) + 5.4M (short); 20x -> 25x; 75x -> 100x
    t = {lab: i for i, lab in enumerate(m.tiers)}
    assert m.long[0, :, t["50x"]].sum() == pytest.approx(7_250_000.0)
    assert m.short[0, :, t["50x"]].sum() == pytest.approx(5_400_000.0)
    assert m.long[0, :, t["25x"]].sum() == pytest.approx(4_100_000.0 + 1_000_000.0)
    assert m.short[0, :, t["100x"]].sum() == pytest.approx(8_800_000.0 + 6_000_000.0)
    assert m.params["tier_mapping"]["20"] == "25x" and m.params["tier_mapping"]["75"] == "100x"
    assert m.params["coinglass_leverage_usd"]["10"] == 9_900_000.0
    # bins like the model's: a round width near 0.1% of the price, aligned to its multiples
    assert m.bin_width == 50.0 and m.grid_lo % 50.0 == 0
    assert m.start_ms == NOW - WINDOWS["7d"].duration_ms and m.end_ms == NOW


def test_aggregated_map_without_leverage_has_one_tier_and_reads():
    rows = [[r[0], r[1], None, None] for r in ROWS]
    price, usd, lev = parse_map(map_payload(rows), COIN_MAP)
    m = normalize(price, usd, lev, symbol="BTCUSDT", current_price=64_000.0, window=WINDOWS["1d"],
                  now_ms=NOW, source="BTC, all exchanges")
    assert m.tiers == ("all",) and m.long.shape[2] == 1
    assert m.total_long + m.total_short == pytest.approx(sum(r[1] for r in ROWS))
    reading = read(m)  # the same metrics run on it
    assert reading is not None


def test_mixed_null_leverage_gets_its_own_tier():
    rows = ROWS[:3] + [[63_100.0, 1_234.0, None, None]]
    price, usd, lev = parse_map(map_payload(rows))
    m = normalize(price, usd, lev, symbol="BTCUSDT", current_price=64_000.0, window=WINDOWS["1d"],
                  now_ms=NOW, source="x")
    assert m.tiers[-1] == "all" and m.long[0, :, -1].sum() == pytest.approx(1_234.0)


def test_custom_bin_width_and_bad_price():
    price, usd, lev = parse_map(map_payload(ROWS))
    m = normalize(price, usd, lev, symbol="BTCUSDT", current_price=64_000.0, window=WINDOWS["1d"],
                  params=ModelParams(bin_width=250.0), now_ms=NOW, source="x")
    assert m.bin_width == 250.0 and m.total_long + m.total_short == pytest.approx(sum(r[1] for r in ROWS))
    with pytest.raises(SourceError, match="no usable current price"):
        normalize(price, usd, lev, symbol="BTCUSDT", current_price=float("nan"), window=WINDOWS["1d"], now_ms=NOW, source="x")


def test_two_coinglass_maps_merge_on_one_grid():
    price, usd, lev = parse_map(map_payload(ROWS))
    a = normalize(price, usd, lev, symbol="BTCUSDT", current_price=64_000.0, window=WINDOWS["1d"], now_ms=NOW, source="a")
    b = normalize(price * 1.01, usd, lev, symbol="BTCUSDT", current_price=64_000.0, window=WINDOWS["1d"], now_ms=NOW, source="b")
    m = merge([a, b])
    assert m.total_long + m.total_short == pytest.approx(2 * sum(r[1] for r in ROWS))


# -- the source ------------------------------------------------------------------------------------------

async def test_pair_map_request_and_key_header():
    server = FakeCoinGlass()
    m = await make(server).map("btc", WINDOWS["7d"])
    req = server.requests[0]
    assert req.url.path == PAIR_MAP
    assert dict(req.url.params) == {"exchange": "Binance", "symbol": "BTCUSDT", "range": "7d"}
    assert req.headers[KEY_HEADER] == KEY and KEY not in str(req.url)
    assert m.kind == "coinglass" and m.price == 64_000.0 and m.window == "7d"


@pytest.mark.parametrize("exchange, name, pair", [("bybit", "Bybit", "BTCUSDT"), ("okx", "OKX", "BTC-USDT-SWAP")])
async def test_pair_map_uses_the_exchanges_own_pair_id(exchange, name, pair):
    # the docs: symbol is a pair of supported-exchange-pairs, whose ids are the exchange's own
    server = FakeCoinGlass()
    m = await make(server, exchange=exchange).map("BTC-USDT-SWAP", WINDOWS["1d"])
    assert dict(server.requests[0].url.params) == {"exchange": name, "symbol": pair, "range": "1d"}
    assert m.symbol == "BTCUSDT" and f"{name} {pair}" in m.notes[0]


async def test_aggregated_map_request():
    server = FakeCoinGlass([httpx.Response(200, json=load("aggregated_map.json"))])
    m = await make(server, exchange=None, price=50_000.0).map("BTC/USDT", WINDOWS["30d"])
    assert server.requests[0].url.path == COIN_MAP
    assert dict(server.requests[0].url.params) == {"symbol": "BTC", "range": "30d"}
    assert m.tiers == ("all",) and m.total_long == pytest.approx(1579370.77)  # 48,935 < 50,000: longs


async def test_bars_is_refused_and_bad_construction():
    src = make(FakeCoinGlass())
    with pytest.raises(SourceError, match="not bars"):
        await src.bars("BTC", WINDOWS["1d"])
    with pytest.raises(InputError, match="COINGLASS_API_KEY is empty"):
        CoinGlassSource("  ", price=None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="pair maps exist for binance, bybit, okx"):
        CoinGlassSource(KEY, price=None, exchange="kraken")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "response, match, status",
    [
        (httpx.Response(401, json={"code": "401", "msg": f"Invalid API key {KEY}"}), "rejected the API key", 401),
        (httpx.Response(403, json={"code": "403", "msg": "Upgrade plan"}), "plan does not include liquidation maps", 403),
        (httpx.Response(200, json={"code": "401", "msg": "apikey invalid"}), "rejected the API key", None),
        # the docs' quickstart: 401 also means "endpoint permission or plan issue (check msg)"
        (httpx.Response(401, json={"code": "401", "msg": "Upgrade plan to access this endpoint"}),
         "plan does not include liquidation maps", 401),
        (httpx.Response(200, json={"code": "401", "msg": "No permission for this API, please upgrade your plan"}),
         "plan does not include liquidation maps", None),
        (httpx.Response(200, json={"code": "0", "msg": "success", "data": {"data": {}}}), "empty liquidation map", None),
        (httpx.Response(200, content=b'{"code":"0","msg":"success","data":{"data":{"48935":[[4893'), "not valid JSON", 200),
    ],
)
async def test_errors_never_contain_the_key(response, match, status, caplog):
    caplog.set_level(logging.DEBUG)
    src = make(FakeCoinGlass([response]))
    with pytest.raises(SourceError, match=match) as info:
        await src.map("BTC", WINDOWS["1d"])
    if status is not None:
        assert info.value.status == status
    assert KEY not in str(info.value) and KEY not in info.value.reason
    assert KEY not in repr(src) and KEY not in caplog.text


async def test_no_current_price_is_a_clear_error():
    async def down(symbol: str) -> float:
        raise SourceError("binance", "/fapi/v1/premiumIndex", "server error HTTP 503")

    ft = FakeTime(0.0)
    src = CoinGlassSource(KEY, price=down, transport=httpx.MockTransport(FakeCoinGlass().handler),
                          sleep=ft.sleep, clock=ft.clock, now_ms=lambda: NOW)
    with pytest.raises(SourceError, match="no current price for BTCUSDT.*binance /fapi/v1/premiumIndex: server error"):
        await src.map("BTC", WINDOWS["1d"])


async def test_rate_limit_429_waits_then_reports_clearly():
    limited = [httpx.Response(429, headers={"Retry-After": "5"}, json={"code": "429", "msg": "Too Many Requests"})] * 8
    server = FakeCoinGlass(limited)
    with pytest.raises(SourceError, match="CoinGlass rate limit reached") as info:
        await make(server).map("BTC", WINDOWS["1d"])
    assert info.value.retry_after is not None and len(server.requests) >= 2


async def test_recorded_responses_and_logs_do_not_hold_the_key(caplog):
    caplog.set_level(logging.DEBUG)

    class Recorder:
        def __init__(self) -> None:
            self.entries: list[tuple] = []

        def record(self, *args) -> None:
            self.entries.append(args)

    rec = Recorder()
    await make(FakeCoinGlass(), recorder=rec).map("BTC", WINDOWS["1d"])
    assert rec.entries and all(KEY not in repr(e) for e in rec.entries)
    assert KEY not in caplog.text


# -- the report service hook -----------------------------------------------------------------------------

async def test_report_service_uses_map_sources_and_keeps_them_out_of_all():
    from analysis.report import ReportService
    from analysis.sources.csvfile import SampleSource

    server = FakeCoinGlass()
    svc = ReportService({"binance": SampleSource(), "coinglass": make(server)})
    assert svc.resolve_venues("all") == ("binance",)  # CoinGlass is never summed with estimates
    assert svc.resolve_venues("coinglass") == ("coinglass",)
    m, missing = await svc.maps("BTCUSDT", WINDOWS["7d"], ("coinglass",))
    assert m.kind == "coinglass" and not missing and len(server.requests) == 1
    only = ReportService({"coinglass": make(FakeCoinGlass())})
    assert only.resolve_venues("all") == ("coinglass",)


async def test_a_real_recording_holds_no_key_and_replays(tmp_path):
    from analysis.sources.recorded import Recorder, ReplayTransport, load_manifest

    rec = Recorder(tmp_path / "rec", now_ms=NOW)
    first = await make(FakeCoinGlass(), recorder=rec).map("BTC", WINDOWS["7d"])
    for f in (tmp_path / "rec").iterdir():
        assert KEY not in f.read_text(), f.name
    replay = ReplayTransport(load_manifest(tmp_path / "rec"))

    async def current(symbol: str) -> float:
        return 64_000.0

    again = await CoinGlassSource("another-key", price=current, exchange="binance", transport=replay,
                                  now_ms=lambda: NOW).map("BTC", WINDOWS["7d"])
    np.testing.assert_array_equal(again.long, first.long)
    np.testing.assert_array_equal(again.short, first.short)


def test_cli_report_passes_the_key_from_the_environment_only_for_live(monkeypatch, tmp_path, capsys):
    import analysis.sources.registry as registry
    from analysis.sources.csvfile import SampleSource
    from bot.cli import main

    seen: list = []

    def fake_make_sources(spec, **kw):
        seen.append((spec, kw.get("coinglass_api_key")))
        return {"binance": SampleSource()}

    monkeypatch.setattr(registry, "make_sources", fake_make_sources)
    monkeypatch.setenv("COINGLASS_API_KEY", KEY)
    assert main(["report", "--source", "live", "--window", "1d", "--out", str(tmp_path / "a")]) == 0
    assert main(["report", "--source", "sample", "--window", "1d", "--out", str(tmp_path / "b")]) == 0
    assert seen == [("live", KEY), ("sample", None)]
    out = capsys.readouterr()
    assert KEY not in out.out + out.err


def test_a_far_row_is_left_off_the_grid_with_a_note():
    rows = ROWS[:3] + [[1e11, 5_000.0, None, None]]
    price, usd, lev = parse_map(map_payload(rows))
    m = normalize(price, usd, lev, symbol="BTCUSDT", current_price=64_000.0, window=WINDOWS["1d"],
                  now_ms=NOW, source="x")
    assert m.n_bins < 5_000 and m.total_short + m.total_long == pytest.approx(sum(r[1] for r in ROWS[:3]))
    assert any("left off" in n and "$5,000 short" in n for n in m.notes)
