"""Opt-in smoke test against the real exchanges: ``LIQMAP_LIVE=1 pytest tests/test_live_smoke.py``.

Skipped by default (CI and development machines have no route to the exchanges). Each venue gets
the same checks: the symbol list has BTCUSDT, a cold 1d fetch gives validated bars, and a second
call right after is served from the cache with at most a couple of requests. Add a venue by adding
its name to ``VENUES`` (the registry builds it).
"""

from __future__ import annotations

import os

import pytest

from analysis.sources.cache import BarCache
from analysis.sources.registry import aclose_sources, live_sources
from analysis.windows import WINDOWS

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.environ.get("LIQMAP_LIVE") != "1", reason="live exchange test; set LIQMAP_LIVE=1 to run"),
]

VENUES = ["binance", "bybit", "okx"]


@pytest.mark.parametrize("venue", VENUES)
async def test_live_venue_serves_a_day_of_bars(venue):
    sources = live_sources(cache=BarCache(None), venues=(venue,))
    if venue not in sources:
        pytest.skip(f"{venue} source not installed")
    src = sources[venue]
    try:
        syms = await src.symbols()
        assert "BTCUSDT" in syms and len(syms) > 50
        bars = await src.bars("BTC", WINDOWS["1d"])
        assert len(bars) >= 250 and bars.interval == "5m"
        assert len(bars.validate()) <= 3
        client = getattr(src, "client", None)
        before = client.request_count if client is not None else 0
        again = await src.bars("BTCUSDT", WINDOWS["1d"])
        if client is not None:
            assert client.request_count - before <= 2
        assert again.time[-1] >= bars.time[-1]
        if hasattr(src, "mark_price"):
            mark = await src.mark_price("BTCUSDT")
            assert abs(mark / bars.price - 1) < 0.05
    finally:
        await aclose_sources(sources)


@pytest.mark.skipif(not os.environ.get("COINGLASS_API_KEY"), reason="needs COINGLASS_API_KEY")
async def test_live_coinglass_map():
    key = os.environ["COINGLASS_API_KEY"]
    sources = live_sources(cache=BarCache(None), venues=("binance", "coinglass"), coinglass_api_key=key)
    try:
        m = await sources["coinglass"].map("BTC", WINDOWS["7d"])
        assert m.kind == "coinglass" and m.total_long > 0 and m.total_short > 0
        assert abs(m.price / await sources["binance"].mark_price("BTCUSDT") - 1) < 0.01
    finally:
        await aclose_sources(sources)
