"""Recording Hyperliquid open interest: the poller on a fake clock, the database store, history reads."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest
from sqlalchemy import text

from analysis.errors import InputError, SourceError
from analysis.sources.hyperliquid import HyperliquidSource
from analysis.sources.hyperliquid_oi import OiPoller, OiPollParams, OiSnapshot, choose, contiguous_tail
from bot.hl_oi_store import HlOiStore, LazyOiHistory, check_snapshot, run_poller
from fake_clock import FakeTime
from test_hyperliquid import NOW, FakeHL, MemoryHistory

import numpy as np


class Wall:
    """A wall clock in ms that follows a FakeTime (the poller stamps snapshots with it)."""

    def __init__(self, ft: FakeTime, start_ms: int = NOW) -> None:
        self.ft = ft
        self.t0 = ft.t
        self.start_ms = start_ms

    def __call__(self) -> int:
        return self.start_ms + int((self.ft.t - self.t0) * 1000)


def snap(coin: str, oi: float, px: float, t: int = NOW) -> OiSnapshot:
    return OiSnapshot(coin, f"{coin.upper()}USDT", t, oi, px)


# -- the poller, on a fake clock ---------------------------------------------------------------------

async def test_the_poller_keeps_its_cadence_and_stores_each_snapshot():
    ft = FakeTime()
    wall = Wall(ft)
    fake = FakeHL()
    src = HyperliquidSource(transport=fake.transport(), sleep=ft.sleep, clock=ft.clock, now_ms=wall)
    sink = MemoryHistory()
    poller = OiPoller(src, sink, OiPollParams(interval_s=60), clock=ft.clock, sleep=ft.sleep, wall_ms=wall)
    await poller.run(asyncio.Event(), max_polls=5)
    assert poller.status.polls == 5 and poller.status.failures == 0
    metas = [b for b in fake.bodies if b["type"] == "metaAndAssetCtxs"]
    assert len(metas) == 5  # one request (weight 20) per poll
    times = sorted({s.time_ms for s in sink.written})
    assert np.diff(times).tolist() == [60_000] * 4  # every 60 s of the fake clock, no drift
    assert {s.coin for s in sink.written} == {"BTC", "ETH", "kPEPE", "HPOS"}  # top 50: all of them; MATIC is delisted
    assert sink.pruned_before == [NOW - 35 * 86_400_000]  # pruned once at start, then hourly
    assert "5 poll(s), 20 snapshot(s) stored" in poller.status.line()
    await src.aclose()


async def test_failed_polls_back_off_and_honour_retry_after_within_the_budget():
    ft = FakeTime()
    wall = Wall(ft)
    calls = []

    def handler(request):
        calls.append(ft.t)
        if len(calls) <= 3:
            return httpx.Response(503, text="busy")
        if len(calls) <= 5:
            return httpx.Response(429, headers={"Retry-After": "400"})
        return FakeHL().handler(request)

    src = HyperliquidSource(transport=httpx.MockTransport(handler), sleep=ft.sleep, clock=ft.clock, now_ms=wall,
                            budget_s=5.0)
    sink = MemoryHistory()
    params = OiPollParams(interval_s=60, max_backoff_s=600)
    poller = OiPoller(src, sink, params, clock=ft.clock, sleep=ft.sleep, wall_ms=wall)
    await poller.run(asyncio.Event(), max_polls=4)
    st = poller.status
    assert st.polls == 4 and st.failures >= 2 and st.stored == 4
    # weight actually sent stays inside the documented 1200 per minute (and the source's share)
    assert len(calls) * 20 / ((ft.t - 1000.0) / 60) < 400
    # after a 429 asking for 400 s, nothing is sent before those 400 s have passed
    first_429 = calls[3]
    assert all(t - first_429 >= 400 or t == first_429 for t in calls[4:])
    await src.aclose()


async def test_the_poll_budget_on_a_fake_clock_is_well_inside_the_documented_limit():
    ft = FakeTime()
    wall = Wall(ft)
    fake = FakeHL()
    src = HyperliquidSource(transport=fake.transport(), sleep=ft.sleep, clock=ft.clock, now_ms=wall)
    poller = OiPoller(src, MemoryHistory(), OiPollParams(interval_s=5), clock=ft.clock, sleep=ft.sleep, wall_ms=wall)
    await poller.run(asyncio.Event(), max_polls=60)
    minutes = (ft.t - 1000.0) / 60
    weight_per_min = 20 * len(fake.bodies) / minutes
    assert weight_per_min <= 400 + 1e-9  # the source's own limiter: a third of the 1200 per minute
    await src.aclose()


def test_choose_keeps_configured_symbols_or_the_top_n_by_notional():
    snaps = [snap("BTC", 30_000, 97_000), snap("ETH", 400_000, 3_600), snap("DOGE", 1e9, 0.1)]
    assert [s.coin for s in choose(snaps, OiPollParams(top_n=2))] == ["BTC", "ETH"]  # $2.9e9, $1.4e9, $1e8
    assert [s.coin for s in choose(snaps, OiPollParams(symbols=("DOGEUSDT",)))] == ["DOGE"]
    for bad in ({"interval_s": 1}, {"interval_s": math.nan}, {"top_n": 0}, {"retention_days": 0},
                {"max_backoff_s": 10}):
        with pytest.raises(InputError):
            OiPollParams(**bad)


def test_contiguous_tail_finds_the_newest_unbroken_run():
    step = 300_000
    t = np.array([0, 1, 2, 10, 11, 12, 14]) * step
    assert contiguous_tail(t, step, 6) == 3  # the hole of 7 bars after 2 breaks the run
    assert contiguous_tail(t, step, 7) == 0
    assert contiguous_tail(np.array([5]), step, 0) == 0


# -- the database --------------------------------------------------------------------------------------

async def test_the_store_writes_once_reads_bounded_and_prunes(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"
    store = await HlOiStore.open(url, wall_ms=lambda: NOW)
    rows = [snap("BTC", 100.0 + k, 97_000, NOW - k * 60_000) for k in range(10)]
    assert await store.write_oi(rows) == 10
    assert await store.write_oi(rows[:3]) == 0  # the same snapshots again: stored once
    bad = [snap("BTC", math.nan, 1.0), snap("BTC", 1.0, -1.0), OiSnapshot("xyz:AAPL", "AAPLUSDT", NOW, 1, 1),
           snap("BTC", 1.0, 1.0, t=NOW + 3 * 86_400_000)]
    assert await store.write_oi(bad) == 0 and store.rejected == 4
    got = await store.read_oi("BTC", NOW - 5 * 60_000, NOW + 1)
    assert [t for t, _ in got] == [NOW - k * 60_000 for k in range(5, -1, -1)]  # oldest first
    assert got[-1][1] == 100.0
    assert await store.read_oi("ETH", 0, NOW) == []
    with pytest.raises(InputError):
        await store.read_oi("BTC'; drop table x", 0, NOW)
    with pytest.raises(InputError):
        await store.read_oi("BTC", NOW, 0)
    assert await store.prune_oi(NOW - 4 * 60_000) == 5
    assert [c[:2] for c in await store.coverage()] == [("BTC", 5)]
    await store.close()


def test_check_snapshot_names_the_field():
    assert check_snapshot(snap("BTC", 1, 1), NOW) is None
    assert check_snapshot(snap("BTC", 0, 1), NOW) == "oi_coin"
    assert check_snapshot(OiSnapshot("BTC", "btc usdt", NOW, 1, 1), NOW) == "symbol"
    assert check_snapshot(OiSnapshot("BTC", "BTCUSDT", 5, 1, 1), NOW) == "time_ms"
    assert check_snapshot("x", NOW) == "not an OiSnapshot"


async def test_lazy_history_never_creates_a_database_and_reads_what_the_poller_stored(tmp_path):
    path = tmp_path / "db.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"
    lazy = LazyOiHistory(url)
    assert await lazy.read_oi("BTC", 0, NOW) == [] and not path.exists()  # a report never creates it
    # a database without the table (an older liqmap's) also reads as no history
    from sqlalchemy.ext.asyncio import create_async_engine

    eng = create_async_engine(url)
    async with eng.begin() as conn:
        await conn.execute(text("create table other (x int)"))
    await eng.dispose()
    assert await lazy.read_oi("BTC", 0, NOW) == []
    await lazy.close()
    # the poller (through the store) writes; the lazy reader sees it
    ft = FakeTime()
    wall = Wall(ft)
    store = await HlOiStore.open(url, wall_ms=wall)
    src = HyperliquidSource(transport=FakeHL().transport(), sleep=ft.sleep, clock=ft.clock, now_ms=wall)
    poller = await run_poller(src, store, asyncio.Event(), OiPollParams(interval_s=60, symbols=("BTCUSDT",)),
                              max_polls=3, clock=ft.clock, sleep=ft.sleep, wall_ms=wall)
    assert poller.status.stored == 3
    lazy = LazyOiHistory(url)
    got = await lazy.read_oi("BTC", NOW - 1, NOW + 10 * 60_000)
    assert [t - NOW for t, _ in got] == [0, 60_000, 120_000] and got[0][1] == pytest.approx(29871.44)
    await lazy.close()
    await store.close()
    await src.aclose()


async def test_lazy_history_turns_a_broken_database_into_a_sourceerror(tmp_path):
    path = tmp_path / "db.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    lazy = LazyOiHistory(f"sqlite+aiosqlite:///{path}")
    with pytest.raises(SourceError, match="recorded open interest: the database could not be read"):
        await lazy.read_oi("BTC", 0, NOW)
    await lazy.close()


async def test_migration_0009_creates_the_table_kept_at_head(tmp_path):
    from bot.store import Store

    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}")
    async with s.engine.connect() as conn:
        cols = [r[1] for r in (await conn.execute(text("pragma table_info(hl_oi_snapshots)"))).all()]
        version = (await conn.execute(text("select version_num from alembic_version"))).scalar_one()
    assert cols == ["id", "coin", "symbol", "time_ms", "oi_coin", "mark_px"] and version == "0010_skew_alerts"
    await s.close()


# -- liqmap poll-oi ----------------------------------------------------------------------------------

def test_cli_poll_oi_records_into_the_database_and_stops(tmp_path, monkeypatch, capsys):
    import functools

    import analysis.sources.hyperliquid as hl_mod
    from bot.cli import main

    fake = FakeHL(now_ms=1_800_000_000_000)
    monkeypatch.setattr(hl_mod, "HyperliquidSource", functools.partial(hl_mod.HyperliquidSource, transport=fake.transport()))
    db = tmp_path / "oi.sqlite3"
    assert main(["poll-oi", "--db", str(db), "--duration", "1s", "--interval", "5", "--symbols", "BTC,kPEPE",
                 "--env-file", str(tmp_path / "none.env")]) == 0
    err = capsys.readouterr().err
    assert "hyperliquid oi: recording BTCUSDT, KPEPEUSDT every 5 s" in err
    assert "1 poll(s), 2 snapshot(s) stored" in err

    async def coins():
        store = await HlOiStore.open(f"sqlite+aiosqlite:///{db}")
        try:
            return [c[:2] for c in await store.coverage()]
        finally:
            await store.close()

    assert asyncio.run(coins()) == [("BTC", 1), ("kPEPE", 1)]


@pytest.mark.parametrize("argv, why", [
    (["--interval", "1"], "poll interval must be 5..3600"),
    (["--symbols", ","], "--symbols names no symbol"),
    (["--duration", "soon"], "cannot read --duration"),
    (["--status-every", "0"], "--status-every must be between"),
])
def test_cli_poll_oi_bad_arguments_are_one_line(tmp_path, capsys, argv, why):
    from bot.cli import main

    assert main(["poll-oi", "--db", str(tmp_path / "x.sqlite3"), "--env-file", str(tmp_path / "none.env"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and why in err[0]
    assert not (tmp_path / "x.sqlite3").exists()


async def test_the_bot_polls_hyperliquid_oi_when_asked_and_stops_on_close(tmp_path, monkeypatch):
    from analysis.report import ReportService
    from analysis.sources.csvfile import SampleSource
    from bot.app import LiqmapBot
    from bot.settings import load_settings

    async def no_sync(self):
        return []

    monkeypatch.setattr(LiqmapBot, "sync_commands", no_sync)  # no Discord HTTP here
    url = f"sqlite+aiosqlite:///{tmp_path / 'r.sqlite3'}"
    ft = FakeTime()
    wall = Wall(ft)
    hl = HyperliquidSource(transport=FakeHL().transport(), sleep=ft.sleep, clock=ft.clock, now_ms=wall)
    off = load_settings(None, source="sample", url=url, cache_dir=tmp_path / "cache")
    bot = LiqmapBot(off, mode="run", service=ReportService({"binance": SampleSource(), "hyperliquid": hl}))
    async with bot:
        await bot.setup_hook()
        assert bot.hl_oi_task is None  # off by default
        await bot.close()
    on = load_settings(None, source="sample", url=url, cache_dir=tmp_path / "cache", hl_oi_enabled=True,
                       hl_oi_symbols="BTC")
    hl = HyperliquidSource(transport=FakeHL().transport(), sleep=ft.sleep, clock=ft.clock, now_ms=wall)  # closed with the bot
    bot = LiqmapBot(on, mode="run", service=ReportService({"binance": SampleSource(), "hyperliquid": hl}))
    async with bot:
        await bot.setup_hook()
        assert bot.hl_oi_task is not None  # started by setup_hook; stopped by close
        await bot.stop_hl_oi()
        assert bot.hl_oi_task is None
        # one poll, run to its end, on the bot's own engine
        assert bot.start_hl_oi(max_polls=1, wall_ms=wall)  # the retention prune uses the same clock as the stamps
        poller = await asyncio.wait_for(bot.hl_oi_task, timeout=60)
        assert poller.status.polls == 1 and poller.status.stored == 1
        store = HlOiStore(bot.store.engine)
        assert [c[:2] for c in await store.coverage()] == [("BTC", 1)]
        await bot.close()
        assert bot.hl_oi_task is None
    await hl.aclose()


@pytest.mark.parametrize("name, value, why", [
    ("LIQMAP_HL_OI_INTERVAL", "1", "LIQMAP_HL_OI_INTERVAL: Input should be greater than or equal to 5"),
    ("LIQMAP_HL_OI_INTERVAL", "nan", "LIQMAP_HL_OI_INTERVAL"),
    ("LIQMAP_HL_OI_SYMBOLS", "BTC,<@1>", "LIQMAP_HL_OI_SYMBOLS"),
])
def test_a_bad_oi_setting_exits_2_naming_the_variable_not_the_value(tmp_path, monkeypatch, capsys, name, value, why):
    from bot.cli import main

    monkeypatch.setenv(name, value)
    assert main(["poll-oi", "--db", str(tmp_path / "x.sqlite3"), "--env-file", str(tmp_path / "none.env")]) == 2
    err = capsys.readouterr().err
    assert why in err and "<@1>" not in err


async def test_live_sources_read_the_recorded_history_of_the_configured_database(tmp_path):
    from analysis.sources.registry import aclose_sources
    from bot.settings import build_sources, load_settings

    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}"
    settings = load_settings(None, source="live", url=url, cache_dir=tmp_path / "cache")
    sources = build_sources(settings, transport=FakeHL().transport())
    try:
        hist = sources["hyperliquid"].oi_history
        assert isinstance(hist, LazyOiHistory) and hist.url == url
        assert await hist.read_oi("BTC", 0, NOW) == [] and not (tmp_path / "bot.sqlite3").exists()
    finally:
        await aclose_sources(sources)
