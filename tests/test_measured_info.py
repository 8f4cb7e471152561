"""The Hyperliquid info client and the documented parsers: weights, refusals, limits, shapes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from analysis.errors import SourceError
from analysis.measured.budget import WeightBudget
from analysis.measured.info import InfoClient, items_weight, weight_of
from analysis.measured.shapes import parse_asset_ctxs, parse_clearinghouse, parse_vault_addresses, trade_users
from fake_clock import FakeTime

FIX = Path(__file__).parent / "fixtures" / "hyperliquid_measured"
USER = "0x31ca8395cf837de08b24da3f660e77761dfb974b"


def load(name: str):
    return json.loads((FIX / name).read_text())


def client(handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def test_documented_weights():
    assert weight_of("clearinghouseState") == 2
    assert weight_of("metaAndAssetCtxs") == 20
    assert weight_of("userRole") == 60
    assert weight_of("vaultDetails") == 20
    assert items_weight("recentTrades", 0) == 0
    assert items_weight("recentTrades", 20) == 1
    assert items_weight("recentTrades", 21) == 2
    assert items_weight("clearinghouseState", 100) == 0


async def test_post_sends_the_documented_body_and_charges_its_weight():
    seen = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append((req.method, str(req.url), json.loads(req.content), req.headers["content-type"]))
        return httpx.Response(200, json=load("clearinghouse_state_btc.json"))

    t = FakeTime()
    budget = WeightBudget(clock=t.clock, sleep=t.sleep)
    async with client(handler) as c:
        info = InfoClient(c, budget=budget)
        doc = await info.post({"type": "clearinghouseState", "user": USER})
    assert seen == [("POST", "https://api.hyperliquid.xyz/info", {"type": "clearinghouseState", "user": USER},
                     "application/json")]
    assert budget.spent() == 2 and info.weight == 2 and info.requests == 1
    acct = parse_clearinghouse(doc, USER)
    assert [(p.coin, p.side, p.liquidation_px) for p in acct.positions] == [("BTC", "long", 80112.4), ("ETH", "short", None)]
    btc = acct.positions[0]
    assert (btc.szi, btc.entry_px, btc.position_value, btc.leverage_type, btc.leverage, btc.margin_used) == (
        20.0, 88210.0, 1801200.0, "cross", 10.0, 180120.0)
    assert btc.polled_ms == 1764000000000


@pytest.mark.parametrize("status,headers,body,expect", [
    (429, {"Retry-After": "7"}, b"", "HTTP 429"),
    (422, {"content-type": "text/plain"}, b"Failed to deserialize the JSON body into the target type", "Failed to deserialize"),
    (500, {}, b"", "HTTP 500: (empty body)"),
])
async def test_refusals_are_one_source_error(status, headers, body, expect):
    t = FakeTime()
    budget = WeightBudget(clock=t.clock, sleep=t.sleep)
    async with client(lambda req: httpx.Response(status, headers=headers, content=body)) as c:
        with pytest.raises(SourceError) as err:
            await InfoClient(c, budget=budget).post({"type": "clearinghouseState", "user": USER})
    assert expect in str(err.value) and err.value.venue == "hyperliquid" and err.value.endpoint == "clearinghouseState"
    assert err.value.status == status
    if status == 429:
        assert err.value.retry_after == 7.0
        # the budget's gate is closed for the server's wait: the next request waits it out
        before = t.t
        await budget.acquire(2)
        assert t.t - before == pytest.approx(7.0)


async def test_not_json_oversized_and_network_errors():
    async with client(lambda req: httpx.Response(200, content=b"<html>gateway</html>")) as c:
        with pytest.raises(SourceError, match="not JSON"):
            await InfoClient(c).post({"type": "metaAndAssetCtxs"})
    big = b"[" + b"1," * (1 << 20) + b"1]"
    async with client(lambda req: httpx.Response(200, content=big)) as c:
        with pytest.raises(SourceError, match="larger than"):
            await InfoClient(c).post({"type": "clearinghouseState", "user": USER})

    def boom(req):
        raise httpx.ConnectError("refused")

    async with client(boom) as c:
        with pytest.raises(SourceError, match="network error"):
            await InfoClient(c).post({"type": "clearinghouseState", "user": USER})

    def slow(req):
        raise httpx.ReadTimeout("slow")

    async with client(slow) as c:
        with pytest.raises(SourceError, match="timed out"):
            await InfoClient(c).post({"type": "clearinghouseState", "user": USER})


def test_documented_example_account_parses():
    acct = parse_clearinghouse(load("clearinghouse_state_doc.json"), USER)
    (p,) = acct.positions
    assert (p.coin, p.szi, p.liquidation_px, p.leverage_type, p.leverage) == ("ETH", 0.0335, 2866.26936529, "isolated", 20.0)
    assert parse_clearinghouse(load("clearinghouse_state_empty.json"), USER).positions == ()


def test_a_position_off_the_shape_is_skipped_and_counted_and_a_bad_answer_refused():
    doc = load("clearinghouse_state_btc.json")
    doc["assetPositions"][1]["position"]["szi"] = "lots"
    acct = parse_clearinghouse(doc, USER)
    assert [p.coin for p in acct.positions] == ["BTC"] and acct.skipped == 1
    for bad in ([], {"assetPositions": "none"}, {"marginSummary": {}}):
        with pytest.raises(SourceError):
            parse_clearinghouse(bad, USER)


def test_asset_contexts_pair_universe_and_contexts():
    ctxs = parse_asset_ctxs(load("meta_and_asset_ctxs.json"))
    assert set(ctxs) == {"BTC", "ETH", "HPOS"}
    assert ctxs["BTC"].mark_px == 90055.0 and ctxs["BTC"].open_interest == 30124.51
    assert ctxs["BTC"].oi_usd == pytest.approx(90055.0 * 30124.51)
    doc = load("meta_and_asset_ctxs.json")
    doc[1].pop()
    with pytest.raises(SourceError, match="3 assets in the universe but 2 contexts"):
        parse_asset_ctxs(doc)
    with pytest.raises(SourceError):
        parse_asset_ctxs({"universe": []})


def test_trade_users_and_vault_lists():
    users, bad = trade_users(load("trades_frame.json")["data"])
    assert users == ["0xb08ed6f6ad7b22138d4db6d0549efcf1f5e51767", "0x13558be785661958932ceac35ba20de187275a42",
                     "0x31ca8395cf837de08b24da3f660e77761dfb974b", "0xb08ed6f6ad7b22138d4db6d0549efcf1f5e51767"]
    assert bad == 0
    users, bad = trade_users([{"users": ["0xnothex", "0x" + "1" * 40]}, {"coin": "BTC"}, "junk"])
    assert users == ["0x" + "1" * 40] and bad == 3
    assert parse_vault_addresses(load("vault_details.json")) == [
        "0xdfc24b077bc1425ad1dea75bcb6f8158e10df303", "0x010461c14e146ac35fe42271bdc1134ee31c703a",
        "0x2e3d94f0562703b25c83308a05046ddaf9a8dd14", "0x31ca8395cf837de08b24da3f660e77761dfb974b"]
    with pytest.raises(SourceError, match="no such vault"):
        parse_vault_addresses(None)


def test_coin_spellings_resolve_to_hyperliquid_names_and_back_to_pairs():
    from analysis.measured.shapes import canonical_symbol, resolve_coin

    known = ["BTC", "ETH", "kPEPE"]
    assert resolve_coin("BTC", known) == "BTC"
    assert resolve_coin("KPEPE", known) == "kPEPE" and resolve_coin("1000PEPE", known) == "kPEPE"
    assert resolve_coin("SOL", known) is None
    assert canonical_symbol("BTC") == "BTCUSDT" and canonical_symbol("kPEPE") == "1000PEPEUSDT"
