"""Opt-in live check of the measured layer: ``LIQMAP_LIVE=1 pytest tests/test_measured_live.py``.

Skipped by default (no route to Hyperliquid here). Runs the real tracker for about 40 seconds on
BTC: the trades stream must name accounts, the polls must parse, the budget must hold, and the
measured map must carry its coverage. It prints what it saw; those are live figures.
"""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from analysis.measured.budget import WeightBudget
from analysis.measured.info import InfoClient
from analysis.measured.measured_map import build_measured
from analysis.measured.stream import TradesStream
from analysis.measured.tracker import Tracker

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.environ.get("LIQMAP_LIVE") != "1", reason="live exchange test; set LIQMAP_LIVE=1 to run"),
]


async def test_live_tracker_finds_polls_and_maps_btc_positions():
    async with httpx.AsyncClient(timeout=10.0) as client:
        budget = WeightBudget(share=0.5)
        tracker = Tracker(InfoClient(client, budget=budget), ["BTC"])
        await tracker.refresh_ctxs()
        stream = TradesStream(["BTC"], tracker.discovered)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(40, stop.set)
        await tracker.run(stop, stream_run=stream.run)
        snap = tracker.snapshot()
    assert stream.status.users > 0 and snap.accounts["polls"] > 0
    assert snap.accounts["weight"] == budget.charged <= budget.capacity * 2
    m = build_measured(snap, "BTC")
    print(snap.accounts, m.params["coverage"], m.notes)
    assert m.kind == "measured" and m.params["oi_usd"] > 0
