"""Opt-in smoke test against the real Hyperliquid API: ``LIQMAP_LIVE=1 pytest tests/test_hyperliquid_live.py``.

Skipped by default. Checks the documented shapes against the live service: the universe lists BTC
and kPEPE-style coins, a snapshot carries BTC's open interest and mark price, a day of 5m candles
comes in one request, and a map is refused clearly while fewer than 12 h are recorded.
"""

from __future__ import annotations

import os

import pytest

from analysis.bars import INTERVAL_MS
from analysis.errors import DataError
from analysis.sources.hyperliquid import HyperliquidSource
from analysis.windows import WINDOWS

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.environ.get("LIQMAP_LIVE") != "1", reason="live exchange test; set LIQMAP_LIVE=1 to run"),
]


class OneSnapshot:
    def __init__(self, points):
        self.points = points

    async def read_oi(self, coin, start_ms, end_ms):
        return [p for p in self.points if start_ms <= p[0] < end_ms]


async def test_live_hyperliquid_serves_the_documented_shapes():
    src = HyperliquidSource()
    try:
        syms = await src.symbols()
        assert "BTCUSDT" in syms and "ETHUSDT" in syms and len(syms) > 50
        snaps = {s.coin: s for s in await src.snapshot()}
        btc = snaps["BTC"]
        assert btc.oi_coin > 0 and btc.mark_px > 1000
        step = INTERVAL_MS["5m"]
        end = (btc.time_ms // step) * step - step
        frame = await src.candles("BTC", "5m", end - 287 * step, end)
        assert len(frame) >= 280 and abs(frame["close"].iloc[-1] / btc.mark_px - 1) < 0.05
        assert src.client.request_count == 3  # metaAndAssetCtxs twice (coin list, snapshot), candles once
        src.oi_history = OneSnapshot([(btc.time_ms, btc.oi_coin)])
        with pytest.raises(DataError, match="recorded 0.0 h of open interest"):
            await src.bars("BTC", WINDOWS["1d"])
    finally:
        await src.aclose()
