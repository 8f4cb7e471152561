"""Hyperliquid as a venue, offline: documented shapes (tests/fixtures/hyperliquid/SOURCES.md), MockTransport."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from analysis.bars import INTERVAL_MS
from analysis.errors import DataError, InputError, SourceError
from analysis.model import ModelParams, build_map
from analysis.report import ReportService
from analysis.sources.hyperliquid import (
    CANDLE_LIMIT, HyperliquidSource, aliases_of, candle_weight, canonical_of, parse_candles, parse_meta_and_ctxs,
)
from analysis.sources.hyperliquid_oi import HistoryParams, OiSnapshot
from analysis.windows import WINDOWS
from fake_clock import FakeTime

FIX = Path(__file__).parent / "fixtures" / "hyperliquid"
META = json.loads((FIX / "meta_and_asset_ctxs.json").read_text())
STEP = INTERVAL_MS["5m"]
NOW = 1_764_000_000_000 - (1_764_000_000_000 % STEP) + 30_000  # 30 s into a 5m bar


def candle(coin: str, interval: str, t: int, price: float) -> dict:
    """One candle in the documented shape (prices and volume strings)."""
    step = INTERVAL_MS[interval]
    return {"t": t, "T": t + step - 1, "s": coin, "i": interval, "o": f"{price:.2f}", "c": f"{price * 1.0005:.2f}",
            "h": f"{price * 1.002:.2f}", "l": f"{price * 0.998:.2f}", "v": "12.5", "n": 40}


def price_at(t: int) -> float:
    return 97_000 + 800 * np.sin(t / 3_600_000 / 5)


class FakeHL:
    """``POST /info`` per the docs: candleSnapshot (at most ``limit`` candles a call, only the most
    recent ``available`` of an interval), metaAndAssetCtxs from the fixture."""

    def __init__(self, now_ms: int = NOW, limit: int = CANDLE_LIMIT, available: int = CANDLE_LIMIT) -> None:
        self.now_ms = now_ms
        self.limit = limit
        self.available = available
        self.bodies: list[dict] = []
        self.meta = META

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path == "/info"
        body = json.loads(request.content)
        self.bodies.append(body)
        if body["type"] == "metaAndAssetCtxs":
            return httpx.Response(200, json=self.meta)
        if body["type"] == "meta":  # the margin tables (h13t's documented-shape fixture)
            return httpx.Response(200, content=(FIX / "meta_tiered.json").read_bytes())
        if body["type"] == "candleSnapshot":
            req = body["req"]
            step = INTERVAL_MS[req["interval"]]
            newest = (self.now_ms // step) * step  # the candle still forming is served too
            oldest = newest - (self.available - 1) * step
            t = max(req["startTime"], oldest)
            t = -(-t // step) * step
            rows = []
            while t <= min(req["endTime"], newest) and len(rows) < self.limit:
                rows.append(candle(req["coin"], req["interval"], t, price_at(t)))
                t += step
            return httpx.Response(200, json=rows)
        return httpx.Response(422, text="Failed to deserialize the JSON body into the target type")

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def candle_calls(self) -> list[dict]:
        return [b for b in self.bodies if b["type"] == "candleSnapshot"]


class MemoryHistory:
    """Recorded OI in memory (the protocol the database store implements)."""

    def __init__(self, points: dict[str, list[tuple[int, float]]] | None = None) -> None:
        self.points = points or {}
        self.reads: list[tuple[str, int, int]] = []
        self.written: list[OiSnapshot] = []
        self.pruned_before: list[int] = []

    async def read_oi(self, coin, start_ms, end_ms):
        self.reads.append((coin, start_ms, end_ms))
        return [(t, v) for t, v in self.points.get(coin, []) if start_ms <= t < end_ms]

    async def write_oi(self, snapshots):
        self.written.extend(snapshots)
        for s in snapshots:
            self.points.setdefault(s.coin, []).append((s.time_ms, s.oi_coin))
        return len(snapshots)

    async def prune_oi(self, before_ms):
        self.pruned_before.append(before_ms)
        return 0


def recorded(hours: float, *, end_ms: int = NOW, every_s: int = 60, hole: tuple[int, int] | None = None) -> list[tuple[int, float]]:
    """One snapshot every ``every_s`` for ``hours`` before ``end_ms`` (minus a hole ``(from, to)``)."""
    n = int(hours * 3600 // every_s)
    out = []
    for k in range(n, 0, -1):
        t = end_ms - k * every_s * 1000
        if hole and hole[0] <= t < hole[1]:
            continue
        out.append((t, 30_000 + 2_000 * np.sin(t / 3_600_000)))
    return out


def source(fake: FakeHL, oi: MemoryHistory | None = None, **kw) -> HyperliquidSource:
    ft = FakeTime()
    return HyperliquidSource(transport=fake.transport(), sleep=ft.sleep, clock=ft.clock, now_ms=lambda: fake.now_ms,
                             oi_history=oi, **kw)


# -- symbols -------------------------------------------------------------------------------------

def test_coin_names_map_to_canonical_pairs():
    assert canonical_of("BTC") == "BTCUSDT"
    assert canonical_of("kPEPE") == "1000PEPEUSDT"
    assert canonical_of("KAS") == "KASUSDT"  # an upper-case K is a name, not "thousand"
    assert canonical_of("@107") is None and canonical_of("xyz:AAPL") is None and canonical_of("") is None
    assert aliases_of("kPEPE") == ("1000PEPEUSDT", "1000PEPEUSDC", "1000PEPEUSD", "KPEPEUSDT", "KPEPEUSDC", "KPEPEUSD")


async def test_symbols_and_resolution_of_every_spelling():
    src = source(FakeHL())
    assert await src.symbols() == ["1000PEPEUSDT", "BTCUSDT", "ETHUSDT", "HPOSUSDT"]  # MATIC is delisted
    for spelling in ("BTC", "btcusdt", "BTC/USDC", "BTC-USD"):
        assert (await src.resolve(spelling)).venue_id == "BTC"
    for spelling in ("kPEPE", "1000PEPE", "1000PEPEUSDT"):
        assert (await src.resolve(spelling)).venue_id == "kPEPE"
    inst = await src.resolve("BTC")
    assert inst.canonical == "BTCUSDT" and inst.quote == "USDC"
    await src.aclose()


async def test_an_unknown_or_delisted_coin_is_a_clear_input_error_with_suggestions():
    fake = FakeHL()
    src = source(fake)
    with pytest.raises(InputError, match=r"hyperliquid has no BTCCUSDT perpetual; did you mean BTCUSDT"):
        await src.resolve("BTCC")
    with pytest.raises(InputError, match="MATIC is delisted"):
        await src.resolve("MATIC")
    with pytest.raises(InputError, match="not a symbol"):
        await src.resolve("BTC\u202e")
    assert len(fake.bodies) == 1  # one metaAndAssetCtxs, cached for the coin list
    await src.aclose()


async def test_snapshot_reads_open_interest_and_mark_price_and_skips_unusable_coins():
    fake = FakeHL()
    meta = json.loads(json.dumps(META))
    meta[1][1]["openInterest"] = "NaN"  # ETH: unusable, left out of the snapshot
    fake.meta = meta
    src = source(fake)
    snaps = {s.coin: s for s in await src.snapshot()}
    assert set(snaps) == {"BTC", "kPEPE", "HPOS"}
    assert snaps["BTC"].oi_coin == pytest.approx(29871.44) and snaps["BTC"].mark_px == pytest.approx(97001.5)
    assert snaps["BTC"].symbol == "BTCUSDT" and snaps["BTC"].time_ms == NOW
    assert snaps["kPEPE"].oi_usd == pytest.approx(9123456789.0 * 0.020102)
    assert await src.mark_price("BTC") == pytest.approx(97001.5)
    with pytest.raises(SourceError, match="openInterest of ETH"):
        parse_and_check_eth(meta)
    await src.aclose()


def parse_and_check_eth(meta):
    from analysis.sources.hyperliquid import _positive

    inst, ctx = parse_meta_and_ctxs(meta)[1]
    return _positive(ctx, "openInterest", inst.venue_id, "/info metaAndAssetCtxs")


@pytest.mark.parametrize("payload, why", [
    ({"universe": []}, "should be a list"),
    ([META[0]], r"\[meta, asset contexts\]"),
    ([{"universe": [{"name": "BTC"}]}, []], "1 coins but 0 asset contexts"),
    ([{"nope": []}, []], "missing field 'universe'"),
    ([{"universe": [{"szDecimals": 5}]}, [{}]], "missing field 'name'"),
    ([{"universe": [{"name": "BTC"}]}, ["x"]], "asset context 0 should be an object"),
])
def test_garbage_meta_and_ctxs_is_a_sourceerror(payload, why):
    with pytest.raises(SourceError, match=why):
        parse_meta_and_ctxs(payload)


# -- candles ---------------------------------------------------------------------------------------

def test_documented_candles_parse():
    rows = json.loads((FIX / "candle_snapshot.json").read_text())
    frame = parse_candles(rows, "BTC", "15m")
    assert list(frame["time"]) == [1681923600000, 1681924500000]
    assert frame["close"].iloc[1] == pytest.approx(29263.0) and frame["volume"].iloc[0] == pytest.approx(0.98639)
    with pytest.raises(SourceError, match="is for 'BTC' '15m', not ETH 15m"):
        parse_candles(rows, "ETH", "15m")
    bad = [dict(rows[0], h="oops")]
    with pytest.raises(SourceError, match="h in row 0 should be a number"):
        parse_candles(bad, "BTC", "15m")
    with pytest.raises(SourceError, match="should be a list, got dict"):
        parse_candles({"error": "x"}, "BTC", "15m")


def test_candle_weight_is_one_per_sixty_rounded_up():
    assert [candle_weight(n) for n in (0, 1, 60, 61, 5000)] == [0, 1, 1, 2, 84]


async def test_candles_are_paged_beyond_the_per_answer_cap():
    fake = FakeHL(limit=5000, available=20_000)
    src = source(fake)
    step = INTERVAL_MS["5m"]
    end = (NOW // step) * step - step
    start = end - 11_999 * step  # 12,000 candles: three answers of at most 5,000
    frame = await src.candles("BTC", "5m", start, end)
    assert len(frame) == 12_000 and frame["time"].iloc[0] == start and frame["time"].iloc[-1] == end
    assert np.all(np.diff(frame["time"]) == step)
    calls = fake.candle_calls()
    assert len(calls) == 3
    assert [c["req"]["startTime"] for c in calls] == [start, start + 5000 * step, start + 10_000 * step]
    assert all(c["req"]["endTime"] == end + step - 1 for c in calls)  # the forming candle is never asked for
    await src.aclose()


async def test_a_short_last_page_ends_paging_and_the_forming_candle_is_dropped():
    fake = FakeHL(limit=5000)
    src = source(fake)
    end = (NOW // STEP) * STEP - STEP
    frame = await src.candles("BTC", "5m", end - 99 * STEP, end + STEP)  # asks past the last closed bar
    assert len(fake.candle_calls()) == 1
    assert frame["time"].iloc[-1] == end + STEP  # only as asked; bars() never asks beyond the last closed one
    await src.aclose()


async def test_candle_weight_is_charged_after_the_answer():
    fake = FakeHL()
    src = source(fake)
    before = src.limiter.tokens
    end = (NOW // STEP) * STEP - STEP
    frame = await src.candles("BTC", "5m", end - 599 * STEP, end)
    assert len(frame) == 600
    assert before - src.limiter.tokens == pytest.approx(20 + 10, abs=0.01)  # 20 for the call, 600/60 after it
    await src.aclose()


# -- refusals --------------------------------------------------------------------------------------

def scripted(*responses):
    calls = []

    def handler(request):
        calls.append(request)
        return responses[min(len(calls), len(responses)) - 1]

    handler.calls = calls
    return handler


async def test_429_without_body_is_retried_then_served():
    ft = FakeTime()
    h = scripted(httpx.Response(429), httpx.Response(200, json=META))
    src = HyperliquidSource(transport=httpx.MockTransport(h), sleep=ft.sleep, clock=ft.clock, now_ms=lambda: NOW)
    assert "BTCUSDT" in await src.symbols()
    assert len(h.calls) == 2
    await src.aclose()


async def test_429_with_body_and_a_long_retry_after_gives_up_naming_the_request():
    ft = FakeTime()
    h = scripted(httpx.Response(429, text="Too many requests", headers={"Retry-After": "600"}))
    src = HyperliquidSource(transport=httpx.MockTransport(h), sleep=ft.sleep, clock=ft.clock, now_ms=lambda: NOW)
    with pytest.raises(SourceError) as ei:
        await src.symbols()
    assert ei.value.endpoint == "/info metaAndAssetCtxs" and ei.value.status == 429
    assert ei.value.retry_after == pytest.approx(600)
    assert len(h.calls) == 1
    await src.aclose()


async def test_4xx_quotes_the_venue_text_escaped():
    ft = FakeTime()
    h = scripted(httpx.Response(422, text="Failed to deserialize the JSON body into the target type\n<@&123>\u200f"))
    src = HyperliquidSource(transport=httpx.MockTransport(h), sleep=ft.sleep, clock=ft.clock, now_ms=lambda: NOW)
    with pytest.raises(SourceError) as ei:
        await src.symbols()
    msg = str(ei.value)
    assert msg.startswith("hyperliquid /info metaAndAssetCtxs: HTTP 422: Failed to deserialize")
    assert "\n" not in msg and "\u200f" not in msg and "\\u200f" in msg
    await src.aclose()


async def test_garbage_bodies_are_sourceerrors_never_crashes():
    for resp, why in ((httpx.Response(200, content=b"<html>"), "not valid JSON"),
                      (httpx.Response(200, json={"universe": []}), "should be a list"),
                      (httpx.Response(200, json=[]), "a list of 0")):
        ft = FakeTime()
        src = HyperliquidSource(transport=httpx.MockTransport(scripted(resp)), sleep=ft.sleep, clock=ft.clock,
                                now_ms=lambda: NOW)
        with pytest.raises(SourceError, match=why):
            await src.symbols()
        await src.aclose()


async def test_garbage_candles_refuse_the_map():
    fake = FakeHL()
    hist = MemoryHistory({"BTC": recorded(30)})
    src = source(fake, hist)
    good = fake.handler

    def handler(request):
        body = json.loads(request.content)
        if body["type"] == "candleSnapshot":
            rows = json.loads(good(request).content)
            rows[5]["h"] = "0.5"  # high below the open: refused with the bar's time, nothing kept
            return httpx.Response(200, json=rows)
        return good(request)

    src.client._client._transport = httpx.MockTransport(handler)
    with pytest.raises(SourceError, match=r"hyperliquid /info candleSnapshot: BTC 5m bar at .*high"):
        await src.bars("BTC", WINDOWS["1d"])
    await src.aclose()


# -- bars from recorded history ----------------------------------------------------------------------

async def test_without_a_recorder_the_map_is_refused_clearly():
    src = source(FakeHL(), None)
    with pytest.raises(DataError, match="no open-interest recorder is configured.*liqmap poll-oi"):
        await src.bars("BTC", WINDOWS["1d"])
    await src.aclose()


async def test_too_little_history_is_a_clear_message_and_asks_for_no_candles():
    fake = FakeHL()
    hist = MemoryHistory({"BTC": recorded(3.5)})
    src = source(fake, hist)
    with pytest.raises(DataError) as ei:
        await src.bars("BTC", WINDOWS["1d"])
    msg = str(ei.value)
    assert "hyperliquid BTCUSDT: liqmap has recorded 3.5 h of open interest (210 snapshots since" in msg
    assert "needs at least 12 h" in msg and "min_history_h" in msg and "liqmap poll-oi" in msg
    assert not fake.candle_calls()
    with pytest.raises(DataError, match="recorded no open interest of ETH"):
        await src.bars("ETH", WINDOWS["1d"])
    await src.aclose()


async def test_the_threshold_is_a_parameter():
    fake = FakeHL()
    src = source(fake, MemoryHistory({"BTC": recorded(3.5)}), history=HistoryParams(min_history_h=3.0))
    bars = await src.bars("BTC", WINDOWS["1d"])
    assert len(bars) == 42  # 3.5 h of snapshots: 210 minutes of closed 5m bars hold one
    await src.aclose()
    with pytest.raises(InputError, match="min_history_h"):
        HistoryParams(min_history_h=float("nan"))


async def test_enough_history_builds_bars_notes_and_provenance():
    fake = FakeHL()
    hist = MemoryHistory({"BTC": recorded(20)})
    src = source(fake, hist)
    bars = await src.bars("BTC", WINDOWS["1d"])
    end = (NOW // STEP) * STEP - STEP
    assert bars.time[-1] == end and bars.venue == "hyperliquid" and bars.symbol == "BTCUSDT"
    assert np.all(np.diff(bars.time) == STEP)
    # OI of a bar is the last snapshot inside it, in coins, times the candle's close
    last_snap = max(v for t, v in hist.points["BTC"] if end <= t < end + STEP and t == max(
        tt for tt, _ in hist.points["BTC"] if end <= tt < end + STEP))
    assert bars.oi_usd[-1] == pytest.approx(last_snap * bars.close[-1])
    text = " | ".join(bars.notes)
    assert "USDC-margined; served as BTCUSDT" in text and "open-interest history: 20.0 h unbroken since" in text
    assert "covers 0.8 of the 1d window's days" in text
    prov = bars.provenance
    assert prov["coin"] == "BTC" and prov["margin"] == "USDC"
    assert prov["oi_history"]["used_hours"] == pytest.approx(20.0, abs=0.1) and prov["oi_history"]["snapshots_in_window"] == 1200
    m = build_map(bars, ModelParams(), window="1d", now_ms=NOW)
    doc = m.to_json()
    assert doc["provenance"]["hyperliquid"]["oi_history"]["bars"] == len(bars)
    assert any("open-interest history" in n for n in doc["notes"])
    # only candles from the first snapshot's bar on were asked for (weight kept low)
    (call,) = fake.candle_calls()
    assert call["req"]["startTime"] >= end - 20 * 3600_000 - STEP
    await src.aclose()


async def test_a_hole_in_the_recording_keeps_only_the_newest_unbroken_run():
    fake = FakeHL()
    hole = (NOW - 16 * 3600_000, NOW - 14 * 3600_000)  # the poller was down two hours
    src = source(fake, MemoryHistory({"BTC": recorded(23, hole=hole)}))
    bars = await src.bars("BTC", WINDOWS["1d"])
    assert bars.time[0] >= hole[1] - STEP
    assert any("is left out: a hole of more than 6 bars precedes it" in n for n in bars.notes)
    await src.aclose()
    src = source(FakeHL(), MemoryHistory({"BTC": recorded(23, hole=(NOW - 4 * 3600_000, NOW - 3 * 3600_000))}))
    with pytest.raises(DataError, match=r"newest unbroken run of recorded open interest is 3\.\d h"):
        await src.bars("BTC", WINDOWS["1d"])
    await src.aclose()


async def test_stale_history_is_refused_not_mapped_at_an_old_time():
    fake = FakeHL()
    src = source(fake, MemoryHistory({"BTC": recorded(20, end_ms=NOW - 2 * 3600_000)}))
    with pytest.raises(DataError, match=r"newest recorded open interest is from .*bars before the last closed one"):
        await src.bars("BTC", WINDOWS["1d"])
    await src.aclose()


async def test_all_degrades_cleanly_naming_hyperliquid_and_why():
    from analysis.sources.csvfile import SampleSource

    sample = SampleSource()
    hl = source(FakeHL(), MemoryHistory())
    service = ReportService({"binance": sample, "hyperliquid": hl})
    rep = await service.report("BTCUSDT", "1d", "all")
    assert set(rep.missing) == {"hyperliquid"}
    assert "liqmap has recorded no open interest of BTC" in rep.missing["hyperliquid"]
    assert any(n.startswith("hyperliquid missing:") for n in rep.map.notes)
    assert rep.to_json()["missing_venues"]["hyperliquid"] == rep.missing["hyperliquid"]
    with pytest.raises(DataError, match="liqmap poll-oi"):
        await service.report("BTCUSDT", "1d", "hyperliquid")
    await hl.aclose()


async def test_a_hyperliquid_report_says_how_much_history_it_rests_on():
    hl = source(FakeHL(), MemoryHistory({"BTC": recorded(14)}))
    service = ReportService({"hyperliquid": hl})
    rep = await service.report("BTC", "1d", "hyperliquid")
    doc = rep.to_json()
    hist = doc["provenance"]["hyperliquid"]["oi_history"]
    assert hist["used_hours"] == pytest.approx(14.0, abs=0.1) and hist["snapshots_in_window"] == 840
    assert doc["venues"] == ["hyperliquid"] and rep.map.total_long + rep.map.total_short > 0
    assert any("open-interest history: 14.0 h unbroken" in n for n in doc["notes"])
    await hl.aclose()


async def test_margin_tiers_come_from_meta_for_the_resolved_coin():
    fake = FakeHL()
    src = source(fake)
    table = await src.margin_tiers("BTC")
    assert table.name.startswith("Hyperliquid BTC") and table.origin != "shipped"
    again = await src.margin_tiers("BTCUSDC")  # another spelling, the same coin: no second meta request
    assert again == table and sum(b["type"] == "meta" for b in fake.bodies) == 1
    with pytest.raises(InputError, match="no DOGEUSDT perpetual"):
        await src.margin_tiers("DOGE")
    await src.aclose()
