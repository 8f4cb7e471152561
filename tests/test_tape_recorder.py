"""The tape recorder over real sockets: a loopback websocket server replays the venues' documented
frames and injects the faults of issue 11 §5 (silence, a disconnect mid-burst, malformed frames,
replays after a reconnect, server pings, the daily forced disconnect on a fake clock)."""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from analysis.errors import InputError
from analysis.tape.recorder import Recorder, RecorderParams, okx_contract_values
from fake_clock import FakeTime
from loopback_ws import BYBIT_SUBSCRIBED, OKX_SUBSCRIBED, LoopbackWS, Peer
from tape_memory import MemorySink

FIX = Path(__file__).resolve().parent / "fixtures"
TAPE = FIX / "tape"
BYBIT = json.loads((TAPE / "bybit_all_liquidation.json").read_text())
BINANCE = json.loads((TAPE / "binance_force_order.json").read_text())
OKX = json.loads((TAPE / "okx_liquidation_orders.json").read_text())
T0 = 1_767_225_600_000  # 2026-01-01

FAST = RecorderParams(
    backoff_base_s=0.05, backoff_cap_s=0.2, stable_s=0.1, open_timeout_s=2.0, subscribe_timeout_s=2.0,
    ping_interval_s={"bybit": 0.2, "okx": 0.2, "binance": 0.2}, silence_s={"bybit": 0.8, "okx": 0.8, "binance": 0.8},
    flush_interval_s=0.05, batch_size=50, sink_retry_base_s=0.05, sink_retry_cap_s=0.1, stop_flush_s=2.0,
)


def bybit_frame(i: int, symbol: str = "BTCUSDT", side: str = "Buy") -> dict[str, Any]:
    f = copy.deepcopy(BYBIT)
    f["topic"] = f"allLiquidation.{symbol}"
    f["ts"] = T0 + i * 500 + 100
    f["data"][0].update(T=T0 + i * 500, s=symbol, S=side, v=f"{0.001 * (i + 1):.3f}", p=f"{90000 + i:.1f}")
    return f


def binance_frame(i: int, symbol: str = "BTCUSDT") -> dict[str, Any]:
    f = copy.deepcopy(BINANCE)
    f["E"] = T0 + i * 1000 + 1
    f["o"].update(s=symbol, T=T0 + i * 1000, q="0.010", z="0.010", l="0.010", p=f"{90000 - i}", ap=f"{90000 - i}")
    return f


def okx_frame(i: int, inst: str = "BTC-USDT-SWAP") -> dict[str, Any]:
    f = copy.deepcopy(OKX)
    f["data"][0].update(instId=inst, instFamily=inst[:-5], uly=inst[:-5])
    f["data"][0]["details"][0].update(ts=str(T0 + i * 1000), sz=str(i + 1), bkPx=f"{90000 + i}", posSide="long", side="sell")
    return f


async def bybit_ack(peer: Peer) -> None:
    await peer.subscribed()
    await peer.send(BYBIT_SUBSCRIBED)


async def okx_ack(peer: Peer) -> None:
    await peer.subscribed()
    await peer.send(OKX_SUBSCRIBED)


async def record(rec: Recorder, until: Callable[[], bool], timeout: float = 10.0) -> None:
    """Run the recorder until ``until()`` holds (bounded), then stop it; run() must not raise."""
    stop = asyncio.Event()
    task = asyncio.create_task(rec.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not until():
                assert not task.done(), "run() ended before stop"
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_disconnect_mid_burst_and_the_replay_after_it_lose_nothing_and_store_once() -> None:
    async def venue(peer: Peer) -> None:
        await bybit_ack(peer)
        if peer.index == 0:
            for i in range(25):  # half a burst, then the network cuts
                await peer.send(bybit_frame(i))
            await asyncio.sleep(0.1)
            peer.abort()
            return
        for i in range(20, 50):  # the venue repeats five of them after the reconnect
            await peer.send(bybit_frame(i))
        await asyncio.sleep(5)

    sink = MemorySink()
    async with LoopbackWS(venue, auto_pong="bybit") as server:
        rec = Recorder(sink, ["bybit"], ["BTCUSDT"], urls={"bybit": server.url}, params=FAST)
        await record(rec, lambda: len(sink.events) >= 50 and any(g.end_ms for g in sink.gap_log))
    assert sorted(e.time_ms for e in sink.events) == [T0 + i * 500 for i in range(50)]
    assert len({e.key for e in sink.events}) == 50
    st = rec.status()["bybit"]
    assert st.duplicates == 5 and st.events == 50 and st.reconnects == 1 and st.gaps == 1
    (gap,) = sink.gaps_now()
    assert gap.venue == "bybit" and gap.symbol is None and gap.end_ms is not None and gap.start_ms <= gap.end_ms
    assert [g.end_ms is None for g in sink.gap_log] == [True, False]  # opened when it dropped, closed when back
    assert all(e.side == "long" for e in sink.events)


async def test_silence_forces_a_reconnect_and_a_gap() -> None:
    async def venue(peer: Peer) -> None:
        await bybit_ack(peer)
        if peer.index == 0:
            peer.answer_pings = False  # a dead upstream: the socket stays open, nothing comes
            await peer.send(bybit_frame(0))
            await asyncio.sleep(10)
        else:
            await peer.send(bybit_frame(1))
            await asyncio.sleep(10)

    sink = MemorySink()
    async with LoopbackWS(venue, auto_pong="bybit") as server:
        rec = Recorder(sink, ["bybit"], ["BTCUSDT"], urls={"bybit": server.url}, params=FAST)
        await record(rec, lambda: len(sink.events) == 2)
    st = rec.status()["bybit"]
    assert st.reconnects == 1 and st.gaps == 1
    assert "silence" in sink.gap_log[0].reason
    assert sink.gaps_now()[0].end_ms is not None


async def test_pings_keep_a_quiet_feed_alive_without_reconnects() -> None:
    peers: list[Peer] = []

    async def venue(peer: Peer) -> None:
        peers.append(peer)
        await bybit_ack(peer)
        await asyncio.sleep(10)  # no liquidation for 2.5 silence periods: legitimately quiet

    sink = MemorySink()
    async with LoopbackWS(venue, auto_pong="bybit") as server:
        rec = Recorder(sink, ["bybit"], ["BTCUSDT"], urls={"bybit": server.url}, params=FAST)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await record(rec, lambda: loop.time() - started > 2.0)
    assert rec.status()["bybit"].reconnects == 0 and sink.gap_log == []
    assert peers[0].app_pings >= 5
    assert all(json.loads(t) in ({"op": "ping"},) for t in peers[0].received[1:])


async def test_server_pings_are_answered_and_the_feed_goes_on() -> None:
    latencies: list[float] = []

    async def venue(peer: Peer) -> None:
        for i in range(3):
            await peer.send(binance_frame(i))
            latencies.append(await peer.ping())  # Binance pings every 3 minutes; a pong must come back
        await peer.send(binance_frame(3, "ETHUSDT"))  # another symbol of the all-market stream
        await asyncio.sleep(10)

    sink = MemorySink()
    async with LoopbackWS(venue) as server:
        rec = Recorder(sink, ["binance"], ["BTCUSDT"], urls={"binance": server.url}, params=FAST)
        await record(rec, lambda: len(sink.events) == 3 and len(latencies) == 3)
        await asyncio.sleep(0)
    assert len(latencies) == 3
    st = rec.status()["binance"]
    assert st.reconnects == 0 and st.coverage == "sampled" and all(e.sampled for e in sink.events)
    assert [e.side for e in sink.events] == ["long"] * 3  # SELL orders close longs


async def test_malformed_frames_are_counted_and_skipped_and_an_oversized_one_ends_only_its_connection() -> None:
    async def venue(peer: Peer) -> None:
        await bybit_ack(peer)
        if peer.index == 0:
            for junk in ("not json", "[]", '{"topic": "allLiquidation.BTCUSDT", "data": [{"S": "Up"}]}', b"\xff\x00"):
                await peer.send(junk)
            await peer.send(bybit_frame(0))
            await peer.send("x" * 5000)  # over the recorder's max frame size
            await asyncio.sleep(5)
        else:
            await peer.send(bybit_frame(1))
            await asyncio.sleep(5)

    sink = MemorySink()
    params = RecorderParams(**{**FAST.__dict__, "max_frame_bytes": 4096})
    async with LoopbackWS(venue, auto_pong="bybit") as server:
        rec = Recorder(sink, ["bybit"], ["BTCUSDT"], urls={"bybit": server.url}, params=params)
        await record(rec, lambda: len(sink.events) == 2)
    st = rec.status()["bybit"]
    assert st.malformed == 5 and st.reconnects == 1 and st.gaps == 1
    assert "4096" in sink.gap_log[0].reason


async def test_the_daily_forced_disconnect_on_a_fake_clock_is_a_reconnect_with_a_gap() -> None:
    fake = FakeTime(T0 / 1000)
    day_over = asyncio.Event()

    async def venue(peer: Peer) -> None:
        opened = fake.clock()
        await peer.send(binance_frame(peer.index * 10))
        if peer.index == 0:
            await day_over.wait()
            assert fake.clock() - opened >= 24 * 3600
            await peer.close(1000, "24h connection limit")  # Binance: "expect to be disconnected at the 24 hour mark"
            return
        await asyncio.sleep(10)

    sink = MemorySink()
    async with LoopbackWS(venue) as server:
        rec = Recorder(sink, ["binance"], ["BTCUSDT"], urls={"binance": server.url}, params=FAST,
                       wall_ms=lambda: int(fake.clock() * 1000))
        stop = asyncio.Event()
        task = asyncio.create_task(rec.run(stop))
        async with asyncio.timeout(10):
            while len(sink.events) < 1:
                await asyncio.sleep(0.01)
            last_frame_ms = int(fake.clock() * 1000)
            await fake.sleep(24 * 3600)  # a day passes
            day_over.set()
            while not any(g.end_ms for g in sink.gap_log) or len(sink.events) < 2:
                await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 10)
    (gap,) = sink.gaps_now()
    assert gap.start_ms == last_frame_ms and gap.end_ms == last_frame_ms + 24 * 3600 * 1000
    assert "1000" in gap.reason and rec.status()["binance"].reconnects == 1


def okx_instruments() -> httpx.MockTransport:
    body = (FIX / "okx" / "instruments_swap.json").read_bytes()
    return httpx.MockTransport(lambda request: httpx.Response(200, content=body, headers={"content-type": "application/json"}))


async def test_okx_sizes_are_converted_with_ct_val_from_the_instrument_list_and_text_pings_are_used() -> None:
    peers: list[Peer] = []

    async def venue(peer: Peer) -> None:
        peers.append(peer)
        await okx_ack(peer)
        await peer.send(okx_frame(0))
        await peer.send(okx_frame(1, "ETH-USDT-SWAP"))
        await peer.send(okx_frame(2, "DOGE-USDT-SWAP"))  # not recorded: another swap of the channel
        await peer.send(okx_frame(3, "LUNA-USDT-SWAP"))  # suspended in the instrument list: no ctVal
        await asyncio.sleep(10)

    load = functools.partial(okx_contract_values, transport=okx_instruments())  # the default loader, offline

    sink = MemorySink()
    async with LoopbackWS(venue, auto_pong="okx") as server:
        rec = Recorder(sink, ["okx"], ["BTCUSDT", "ETHUSDT", "LUNAUSDT"], urls={"okx": server.url}, params=FAST,
                       contract_values=load)
        loop = asyncio.get_running_loop()
        t = loop.time()
        await record(rec, lambda: len(sink.events) == 2 and loop.time() - t > 1.0)
    btc, eth = sorted(sink.events, key=lambda e: e.symbol)
    assert (btc.symbol, btc.qty, btc.side) == ("BTCUSDT", pytest.approx(0.01), "long")  # 1 contract x 0.01 BTC
    assert (eth.symbol, eth.qty) == ("ETHUSDT", pytest.approx(0.2))  # 2 contracts x 0.1 ETH
    assert rec.status()["okx"].unconverted == 1  # LUNA: never assumed to be 1 coin per contract
    assert peers[0].app_pings >= 1 and "ping" in peers[0].received
    assert json.loads(peers[0].received[0]) == {"op": "subscribe", "args": [{"channel": "liquidation-orders", "instType": "SWAP"}]}


async def test_okx_without_an_instrument_list_uses_the_published_table_and_never_guesses_the_rest() -> None:
    async def venue(peer: Peer) -> None:
        await okx_ack(peer)
        await peer.send(okx_frame(0))
        await peer.send(okx_frame(1, "SOL-USDT-SWAP"))
        await asyncio.sleep(10)

    async def down(inst_ids: list[str]) -> dict[str, float]:
        raise ConnectionError("okx REST unreachable")

    sink = MemorySink()
    async with LoopbackWS(venue, auto_pong="okx") as server:
        rec = Recorder(sink, ["okx"], ["BTCUSDT", "SOLUSDT"], urls={"okx": server.url}, params=FAST,
                       contract_values=down)
        await record(rec, lambda: len(sink.events) == 1 and rec.status()["okx"].unconverted == 1)
    assert sink.events[0].qty == pytest.approx(0.01)
    st = rec.status()["okx"]
    assert any("built-in table" in n for n in st.notes) and any("SOL-USDT-SWAP" in n for n in st.notes)
    sol = [g for g in sink.gaps_now() if g.symbol == "SOLUSDT"]
    assert len(sol) == 1 and sol[0].end_ms is not None and "contract value" in sol[0].reason


async def test_a_failing_sink_is_retried_and_nothing_is_lost() -> None:
    async def venue(peer: Peer) -> None:
        await bybit_ack(peer)
        for i in range(120):
            await peer.send(bybit_frame(i))
        await asyncio.sleep(10)

    sink = MemorySink()
    sink.fail_next = 4
    async with LoopbackWS(venue, auto_pong="bybit") as server:
        rec = Recorder(sink, ["bybit"], ["BTCUSDT"], urls={"bybit": server.url}, params=FAST)
        seen_error: list[str] = []

        def done() -> bool:
            err = rec.status()["bybit"].last_error
            if err:
                seen_error.append(err)
            return len(sink.events) == 120

        await record(rec, done)
    assert any("sink failed" in e for e in seen_error)
    st = rec.status()["bybit"]
    assert st.stored == 120 and st.dropped == 0


async def test_a_full_buffer_drops_new_events_counts_them_and_writes_a_gap_over_them() -> None:
    async def venue(peer: Peer) -> None:
        await bybit_ack(peer)
        for i in range(40):
            await peer.send(bybit_frame(i))
        await asyncio.sleep(10)

    sink = MemorySink()
    sink.fail_next = 10**6
    params = RecorderParams(**{**FAST.__dict__, "queue_bound": 10, "batch_size": 5})
    async with LoopbackWS(venue, auto_pong="bybit") as server:
        rec = Recorder(sink, ["bybit"], ["BTCUSDT"], urls={"bybit": server.url}, params=params)
        stop = asyncio.Event()
        task = asyncio.create_task(rec.run(stop))
        async with asyncio.timeout(10):
            while rec.status()["bybit"].events < 40:
                await asyncio.sleep(0.01)
            sink.fail_next = 0  # the database is back
            while not sink.gap_log or len(sink.events) < 10:
                await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 10)
    st = rec.status()["bybit"]
    assert st.dropped == 30 and st.stored == 10
    (gap,) = sink.gaps_now()
    assert "dropped" in gap.reason and gap.start_ms == T0 + 10 * 500 and gap.end_ms == T0 + 39 * 500 + 1


async def test_a_refused_subscription_is_retried_with_backoff_and_reported() -> None:
    async def venue(peer: Peer) -> None:
        await peer.subscribed()
        await peer.send({"success": False, "ret_msg": "error:handler not found,topic:allLiquidation.BTCUSDT",
                         "conn_id": "x", "op": "subscribe"})
        await asyncio.sleep(5)

    sink = MemorySink()
    async with LoopbackWS(venue, auto_pong="bybit", max_connections=3) as server:
        rec = Recorder(sink, ["bybit"], ["BTCUSDT"], urls={"bybit": server.url}, params=FAST)
        await record(rec, lambda: rec.status()["bybit"].reconnects >= 2)
    st = rec.status()["bybit"]
    assert not st.connected and "handler not found" in (st.last_error or "")
    assert [g.end_ms is None for g in sink.gap_log] == [True, False]  # down since start: one gap, closed at stop
    assert len(sink.gaps_now()) == 1 and sink.gaps_now()[0].start_ms == sink.gap_log[0].start_ms


async def test_an_unreachable_venue_never_raises_and_stops_promptly() -> None:
    sink = MemorySink()
    url = f"ws://127.0.0.1:{free_port()}/ws"
    rec = Recorder(sink, ["bybit", "okx"], ["BTCUSDT"], urls={"bybit": url, "okx": url}, params=FAST,
                   contract_values=lambda ids: asyncio.sleep(0, {"BTC-USDT-SWAP": 0.01}))
    await record(rec, lambda: all(s.reconnects >= 2 for s in rec.status().values()))
    for st in rec.status().values():
        assert not st.connected and st.last_error and st.gaps == 1


def test_params_and_arguments_are_checked() -> None:
    with pytest.raises(InputError, match="ping interval"):
        RecorderParams(ping_interval_s={"bybit": 60.0})
    with pytest.raises(InputError, match="queue_bound"):
        RecorderParams(queue_bound=0)
    with pytest.raises(InputError, match="no liquidation feed"):
        Recorder(MemorySink(), ["kraken"], ["BTCUSDT"])
    with pytest.raises(InputError):
        Recorder(MemorySink(), ["bybit"], ["BTC\u200dUSDT"])
    rec = Recorder(MemorySink(), ["okx", "bybit", "binance"], ["btc", "ETH-USDT-SWAP"])
    assert rec.symbols == ("BTCUSDT", "ETHUSDT")
    assert rec.urls["binance"].startswith("wss://fstream.binance.com/market/")
    assert {v: s.coverage for v, s in rec.status().items()} == {"okx": "sampled", "bybit": "complete", "binance": "sampled"}


def test_the_dedupe_memory_is_bounded_by_count_and_by_venue_time() -> None:
    from analysis.tape.recorder import _Recent

    recent = _Recent(size=100, window_ms=10_000)
    for i in range(1000):
        assert not recent.seen(f"k{i}", T0 + i)  # 1 ms apart: the count bound holds
    assert len(recent) == 100 and recent.seen("k999", T0 + 999) and not recent.seen("k0", T0 + 1000)
    recent = _Recent(size=10**6, window_ms=10_000)
    for i in range(1000):
        recent.seen(f"k{i}", T0 + i * 1000)  # 1 s apart: only the last 10 s are kept
    assert len(recent) == 11
