"""Opt-in smoke test of the tape against the real venues: ``LIQMAP_LIVE=1 pytest tests/test_tape_live.py``.

Skipped by default (no network in CI). Each venue must accept the documented subscription on
its default URL within 30 s, keep the connection through at least one keepalive exchange, and
send nothing the parser calls malformed.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from analysis.tape.recorder import Recorder, RecorderParams
from tape_memory import MemorySink

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.environ.get("LIQMAP_LIVE") != "1", reason="live exchange test; set LIQMAP_LIVE=1 to run"),
]


@pytest.mark.parametrize("venue", ["bybit", "binance", "okx"])
async def test_live_feed_subscribes_and_stays_up(venue: str) -> None:
    sink = MemorySink()
    params = RecorderParams(ping_interval_s={venue: 5.0}, silence_s={venue: 20.0})
    rec = Recorder(sink, [venue], ["BTCUSDT", "ETHUSDT"], params=params)
    stop = asyncio.Event()
    task = asyncio.create_task(rec.run(stop))
    try:
        async with asyncio.timeout(30):
            while not rec.status()[venue].connected:
                await asyncio.sleep(0.1)
        await asyncio.sleep(12)  # at least two keepalive cadences
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    st = rec.status()[venue]
    assert st.reconnects == 0 and st.malformed == 0, st
