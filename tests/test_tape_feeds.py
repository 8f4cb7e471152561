"""The venue frame parsers of the tape, on the venues' documented frames (tests/fixtures/tape/SOURCES.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.tape.feeds import (
    BYBIT_ARGS_PER_REQUEST, DEFAULT_URLS, BinanceFeed, BybitFeed, Malformed, OkxFeed,
)

FIX = Path(__file__).resolve().parent / "fixtures" / "tape"


def text(name: str) -> str:
    return (FIX / name).read_text(encoding="utf-8")


def test_bybit_documented_frame_buy_means_a_long_was_liquidated() -> None:
    feed = BybitFeed(["ROSEUSDT"])
    (ev,) = feed.parse(text("bybit_all_liquidation.json")).events
    assert (ev.venue, ev.symbol, ev.time_ms, ev.side) == ("bybit", "ROSEUSDT", 1739502302929, "short")  # "Sell"
    assert ev.price == pytest.approx(0.04499) and ev.qty == 20000 and ev.usd == pytest.approx(899.8)
    assert ev.sampled is False
    frame = json.loads(text("bybit_all_liquidation.json"))
    frame["data"][0]["S"] = "Buy"
    assert feed.parse(json.dumps(frame)).events[0].side == "long"


def test_bybit_acks_pongs_and_subscribe_batches() -> None:
    feed = BybitFeed([f"C{i}USDT" for i in range(23)])
    assert feed.parse(text("bybit_pong.json")).pong
    assert feed.parse(text("bybit_subscribe.json")).subscribed
    refused = feed.parse(json.dumps({"success": False, "ret_msg": "error:handler not found,topic:x", "op": "subscribe"}))
    assert refused.error and "handler not found" in refused.error
    msgs = [json.loads(m) for m in feed.subscribe_messages()]
    assert [len(m["args"]) for m in msgs] == [BYBIT_ARGS_PER_REQUEST, BYBIT_ARGS_PER_REQUEST, 3]
    assert msgs[0] == {"op": "subscribe", "args": [f"allLiquidation.C{i}USDT" for i in range(10)]}
    assert json.loads(feed.ping_message()) == {"op": "ping"}


def test_binance_documented_frame_sell_means_a_long_was_liquidated() -> None:
    feed = BinanceFeed(["BTCUSDT"])
    (ev,) = feed.parse(text("binance_force_order.json")).events
    assert (ev.venue, ev.symbol, ev.time_ms, ev.side) == ("binance", "BTCUSDT", 1568014460893, "long")
    assert ev.price == 9910 and ev.qty == pytest.approx(0.014) and ev.usd == pytest.approx(138.74)
    assert ev.sampled is True
    other = json.loads(text("binance_force_order.json"))
    other["o"]["s"] = "ETHUSDT"
    assert feed.parse(json.dumps(other)).events == []  # the all-market stream: other symbols ignored
    assert DEFAULT_URLS["binance"] == "wss://fstream.binance.com/market/ws/!forceOrder@arr"


def test_okx_documented_frame_converts_contracts_with_ct_val() -> None:
    feed = OkxFeed(["IOSTUSDT"], lambda: {"IOST-USDT-SWAP": 10.0})  # a test value, not OKX's
    (ev,) = feed.parse(text("okx_liquidation_orders.json")).events
    assert (ev.venue, ev.symbol, ev.time_ms, ev.side) == ("okx", "IOSTUSDT", 1692266434010, "short")
    assert ev.qty == pytest.approx(130.0) and ev.usd == pytest.approx(130 * 0.007831) and ev.sampled
    assert feed.parse(text("okx_subscribe.json")).subscribed
    assert "60012" in (feed.parse(text("okx_error.json")).error or "")
    assert feed.parse("pong").pong


def test_okx_without_ct_val_never_assumes_one() -> None:
    frame = OkxFeed(["IOSTUSDT"], dict).parse(text("okx_liquidation_orders.json"))
    assert frame.events == [] and frame.unconverted == {"IOST-USDT-SWAP": 1}


def test_okx_net_mode_uses_the_order_side() -> None:
    frame = json.loads(text("okx_liquidation_orders.json"))
    frame["data"][0]["details"][0].update(posSide="net", side="sell")
    ev = OkxFeed(["IOSTUSDT"], lambda: {"IOST-USDT-SWAP": 1.0}).parse(json.dumps(frame)).events[0]
    assert ev.side == "long"


@pytest.mark.parametrize("bad", [
    "", "{", "[1, 2]", "null", '"text"', "x" * 5000, b"\xff\xfe", "[" * 100_000,
    '{"topic": "allLiquidation.BTCUSDT", "data": "nope"}',
])
def test_malformed_frames_raise_malformed_only(bad: str | bytes) -> None:
    for feed in (BybitFeed(["BTCUSDT"]), OkxFeed(["BTCUSDT"], dict)):
        with pytest.raises(Malformed):
            feed.parse(bad)
    if bad not in ('{"topic": "allLiquidation.BTCUSDT", "data": "nope"}',):
        with pytest.raises(Malformed):
            BinanceFeed(["BTCUSDT"]).parse(bad)


@pytest.mark.parametrize("field,value", [
    ("S", "Long"), ("v", "-1"), ("v", "nan"), ("p", "0"), ("T", "soon"), ("T", 1e300), ("s", 7), ("p", "1" * 400),
])
def test_bad_items_are_counted_and_the_good_ones_kept(field: str, value: object) -> None:
    frame = json.loads(text("bybit_all_liquidation.json"))
    good = dict(frame["data"][0])
    bad = dict(good, **{field: value})
    frame["data"] = [bad, good]
    out = BybitFeed(["ROSEUSDT"]).parse(json.dumps(frame))
    assert out.bad_items == 1 and len(out.events) == 1


def test_keys_are_stable_and_identical_items_in_one_frame_stay_distinct() -> None:
    frame = json.loads(text("bybit_all_liquidation.json"))
    frame["data"] = [frame["data"][0], frame["data"][0]]
    feed = BybitFeed(["ROSEUSDT"])
    a = [e.key for e in feed.parse(json.dumps(frame)).events]
    b = [e.key for e in feed.parse(json.dumps(frame)).events]
    assert a == b and len(set(a)) == 2
