"""Address discovery from the trades stream, over a loopback websocket server playing Hyperliquid."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from analysis.errors import InputError
from analysis.measured.stream import StreamParams, TradesStream
from loopback_ws import LoopbackWS, Peer, hold

FIX = Path(__file__).parent / "fixtures" / "hyperliquid_measured"
FRAME = json.loads((FIX / "trades_frame.json").read_text())
ACK = json.loads((FIX / "subscription_response.json").read_text())
FAST = StreamParams(ping_s=0.2, silence_s=1.5, subscribe_timeout_s=1.0, backoff_base_s=0.05, backoff_cap_s=0.1)


def is_sub(coin: str):
    def pred(text: str) -> bool:
        return text.startswith("{") and json.loads(text) == {"method": "subscribe", "subscription": {"type": "trades",
                                                                                                     "coin": coin}}
    return pred


async def run_until(stream: TradesStream, done, timeout: float = 10.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(stream.run(stop))
    try:
        await asyncio.wait_for(done(), timeout)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_subscribes_per_coin_and_hands_over_buyers_and_sellers():
    found: list[str] = []
    got = asyncio.Event()

    async def venue(peer: Peer) -> None:
        await peer.send("Websocket connection established.")
        for coin in ("BTC", "ETH"):
            await peer.wait_for(is_sub(coin))
            await peer.send({"channel": "subscriptionResponse", "data": {"method": "subscribe",
                                                                         "subscription": {"type": "trades", "coin": coin}}})
        await peer.send(FRAME)
        await peer.send({"channel": "trades", "data": [{"coin": "BTC", "users": ["0xnope", 7]}]})
        await peer.send("{not json")
        await hold(5)

    def on_users(users: list[str]) -> None:
        found.extend(users)
        got.set()

    async with LoopbackWS(venue) as server:
        stream = TradesStream(["BTC", "ETH"], on_users, url=server.url, params=FAST)

        async def done():
            await got.wait()
            while stream.status.malformed < 2:
                await asyncio.sleep(0.01)

        await run_until(stream, done)
    assert found == ["0xb08ed6f6ad7b22138d4db6d0549efcf1f5e51767", "0x13558be785661958932ceac35ba20de187275a42",
                     "0x31ca8395cf837de08b24da3f660e77761dfb974b", "0xb08ed6f6ad7b22138d4db6d0549efcf1f5e51767"]
    st = stream.status
    assert st.trades == 3 and st.users == 4 and st.malformed == 2


async def test_a_quiet_connection_is_pinged_and_the_pong_keeps_it():
    async def venue(peer: Peer) -> None:
        await peer.wait_for(is_sub("BTC"))
        await peer.send(ACK)
        for _ in range(3):
            seen = len([t for t in peer.received if t == '{"method": "ping"}'])
            await peer.wait_for(lambda t, n=seen: len([x for x in peer.received if x == '{"method": "ping"}']) > n)
            await peer.send({"channel": "pong"})
        await hold(5)

    async with LoopbackWS(venue) as server:
        stream = TradesStream(["BTC"], lambda u: None, url=server.url, params=FAST)

        async def done():
            while stream.status.pongs < 3:
                await asyncio.sleep(0.01)

        await run_until(stream, done)
        assert len(server.peers) == 1  # pinged, answered, never reconnected
    assert stream.status.pings >= 3 and stream.status.reconnects == 0


async def test_silence_a_refusal_and_a_cut_each_reconnect():
    async def venue(peer: Peer) -> None:
        await peer.wait_for(is_sub("BTC"))
        if peer.index == 0:
            await peer.send({"channel": "error", "data": "Invalid subscription"})
            await hold(5)
        elif peer.index == 1:
            await peer.send(ACK)
            peer.abort()
        elif peer.index == 2:
            await peer.send(ACK)
            await hold(5)  # silent, pings unanswered: the watchdog ends it
        else:
            await peer.send(ACK)
            await peer.send(FRAME)
            await hold(5)

    found: list[str] = []
    async with LoopbackWS(venue) as server:
        stream = TradesStream(["BTC"], found.extend, url=server.url, params=FAST)

        async def done():
            while not found:
                await asyncio.sleep(0.01)

        await run_until(stream, done, timeout=15)
        assert len(server.peers) == 4
    assert stream.status.reconnects == 3 and len(found) == 4


def test_bad_stream_parameters_are_refused():
    with pytest.raises(InputError):
        StreamParams(ping_s=80, silence_s=60)
    with pytest.raises(InputError):
        TradesStream([], lambda u: None)
