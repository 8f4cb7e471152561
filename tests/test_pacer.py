"""Posting under Discord's global rate limit: the pacer, posts in due order within the grace window,
claims in chunks, Discord's 429s pausing the pacer, and the capacity per due minute. Fake poster, fake clock."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from bot.pacer import DiscordPacer, Throttled, posting_capacity, watch_discord_http
from bot.scheduler import Dispatcher, DispatcherParams
from bot.store import Store
from test_scheduler import Clock, FakePoster, FakeReports

UTC = timezone.utc
G, U = 1000, 7
START = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


class World:
    """One fake clock for the dispatcher (datetime) and its pacer (seconds)."""

    def __init__(self) -> None:
        self.clock = Clock(START)

    def mono(self) -> float:
        return (self.clock.t - START).total_seconds()

    def pacer(self, rate: float, limit: float = 50.0) -> DiscordPacer:
        return DiscordPacer(rate, limit, clock=self.mono, sleep=self.clock.sleep)


class LoggingPoster(FakePoster):
    """Remembers the order and the (fake) time of every send."""

    def __init__(self, world: World, **kw) -> None:
        super().__init__(**kw)
        self.world = world
        self.order: list[tuple[int, float]] = []
        self.throttle_once: float | None = None

    async def post(self, channel_id, **kw):
        if self.throttle_once is not None:
            wait, self.throttle_once = self.throttle_once, None
            raise Throttled(wait)
        self.order.append((channel_id, self.world.mono()))
        return await super().post(channel_id, **kw)


@pytest.fixture
async def store(url):
    s = await Store.open(url, max_per_guild=100_000)
    yield s
    await s.close()


async def add(store: Store, n: int, at: str, first_channel: int) -> list[int]:
    chans = []
    for i in range(n):
        ch = first_channel + i
        await store.add_daily(G + ch // 1000, ch, symbols="BTC", window="1d", exchange="all", time=at,
                              timezone="UTC", created_by=U, now=START - timedelta(hours=1))
        chans.append(ch)
    return chans


async def test_the_pacer_never_exceeds_discords_limit_in_any_second():
    w = World()
    pacer = w.pacer(45.0)
    assert pacer.limiter.burst == 5  # 45 steady + 5 burst = the 50 of any second
    stamps = []
    for _ in range(1000):
        await pacer.acquire()
        stamps.append(w.mono())
    assert max(sum(1 for t in stamps if a <= t < a + 1.0) for a in stamps) <= 50
    assert stamps[-1] == pytest.approx((1000 - 5) / 45.0, abs=0.01)  # (the fake clock keeps microseconds)
    with pytest.raises(ValueError):
        DiscordPacer(60.0)


async def test_posts_go_out_in_due_order_at_the_pacer_rate(store):
    w = World()
    late = await add(store, 60, "08:01", 20_000)  # created first (lower ids), due a minute later
    early = await add(store, 60, "08:00", 10_000)
    poster = LoggingPoster(w)
    pacer = w.pacer(10.0, 12.0)
    d = Dispatcher(store, poster, FakeReports(), now=w.clock, sleep=w.clock.sleep, pacer=pacer)
    w.clock.t = START + timedelta(minutes=2)
    stats = await d.run_daily()
    assert stats.posted == 120 and stats.skipped == 0
    chans = [c for c, _ in poster.order]
    assert chans[:60] == early and chans[60:] == late  # earliest due first, whatever the ids
    # 2 at once (the burst), then 10 a second: the last of 118 more has its turn 11.8 s later
    assert w.mono() - 120.0 == pytest.approx(11.8, abs=1e-6)
    assert pacer.requests == 120


async def test_posts_the_rate_cannot_reach_within_grace_are_recorded_missed(store, caplog):
    w = World()
    await add(store, 100, "08:00", 10_000)
    poster = LoggingPoster(w)
    params = DispatcherParams(grace=timedelta(seconds=5))
    d = Dispatcher(store, poster, FakeReports(), params=params, now=w.clock, sleep=w.clock.sleep,
                   pacer=w.pacer(10.0, 12.0))
    w.clock.t = START
    caplog.set_level(logging.WARNING, logger="bot.scheduler")
    stats = await d.run_daily()
    # the burst of 2, then 10 a second for 5 s: 52 fit (the 52nd starts at exactly 5 s), 48 are past grace
    assert stats.posted == 52 and stats.skipped == 48
    skipped = [r for r in await _all_deliveries(store) if r.state == "skipped"]
    assert len(skipped) == 48 and all("queued behind Discord's rate limit" in (r.detail or "") for r in skipped)
    assert all((r.detail or "").startswith("missed: not posted within the 0 min grace window") for r in skipped)
    assert any("48 daily posts passed their 0 min grace window while queued" in r.getMessage() for r in caplog.records)
    again = await d.run_daily()  # reported once, never posted later
    assert again.posted == 0 and poster.count() == 52


async def _all_deliveries(store: Store):
    from sqlalchemy import select

    from bot.store.deliveries import Delivery
    from bot.store.tables import DeliveryRow

    async with store._session() as s:
        return [Delivery._of(r) for r in await s.scalars(select(DeliveryRow))]


async def test_claims_are_made_in_chunks_the_rate_sends_within_a_quarter_lease(store):
    w = World()
    await add(store, 100, "08:00", 10_000)
    poster = LoggingPoster(w)
    beats: list[datetime] = []
    params = DispatcherParams(post_timeout_s=5.0, claim_lease=timedelta(seconds=24))
    d = Dispatcher(store, poster, FakeReports(), params=params, now=w.clock, sleep=w.clock.sleep,
                   pacer=w.pacer(10.0, 12.0), heartbeat=beats.append)
    sizes: list[int] = []
    real = store.claim_many

    async def spy(claims, **kw):
        sizes.append(len(claims))
        return await real(claims, **kw)

    store.claim_many = spy  # type: ignore[method-assign]
    w.clock.t = START
    stats = await d.run_daily()
    assert stats.posted == 100 and sizes == [60, 40]  # 10/s x 24 s / 4
    assert len(beats) == 1  # the heartbeat between the chunks: a long fan-out never looks dead


async def test_a_throttled_send_pauses_the_pacer_and_is_verified_then_sent_next_tick(store):
    w = World()
    await add(store, 20, "08:00", 10_000)
    poster = LoggingPoster(w)
    poster.throttle_once = 30.0
    pacer = w.pacer(10.0, 12.0)
    d = Dispatcher(store, poster, FakeReports(), now=w.clock, sleep=w.clock.sleep, pacer=pacer)
    w.clock.t = START
    stats = await d.run_daily()
    assert stats.failed == 1 and stats.posted == 19 and pacer.pauses == 1
    times = [t for _, t in poster.order]
    gap = next(i for i, (a, b) in enumerate(zip(times, times[1:])) if b - a >= 29.9)
    # only sends whose turn came before the 429 went on (at most the sends in flight); the rest waited 30 s
    assert gap + 1 <= d.params.post_concurrency and len(times) - gap - 1 >= 19 - d.params.post_concurrency
    w.clock.t += timedelta(seconds=60)
    again = await d.run_daily()
    assert again.posted == 1 and poster.finds == 1 and poster.count() == 20  # searched first, then sent once


async def test_a_global_429_discord_py_waits_out_pauses_the_pacer_too():
    w = World()
    pacer = w.pacer(45.0)
    logger = logging.getLogger("discord.http")
    handler = watch_discord_http(pacer, logger)
    try:
        logger.warning("Global rate limit has been hit. Retrying in %.2f seconds.", 2.5)
        logger.warning("We are being rate limited. %s %s responded with 429. Retrying in %.2f seconds.", "POST", "/x", 9.0)
    finally:
        logger.removeHandler(handler)
    assert pacer.pauses == 1  # a per-route 429 is discord.py's own business, the global one pauses everyone
    assert pacer.limiter.wait_s(1) == pytest.approx(2.5)


def test_capacity_per_due_minute_and_what_misses():
    grace = timedelta(hours=2)
    cap = posting_capacity({0: 100_000}, 45.0, grace)
    assert cap.fits and cap.per_minute == 324_000 and cap.busiest == "00:00 UTC" and cap.total == 100_000
    assert cap.longest_s == pytest.approx(99_999 / 45.0)
    assert "324,000 channels due in one minute fit the 2 h 00 min grace window" in cap.line() and "(fits)" in cap.line()
    over = posting_capacity({0: 400_000}, 45.0, grace)
    assert over.late == 400_000 - (7200 * 45 + 1) and "75,999 of 400,000 would miss it" in over.line()
    # a full 23:59 delays 00:00 past midnight: its grace runs out behind the backlog
    carried = posting_capacity({1439: 324_001, 0: 5000}, 45.0, grace)
    assert 0 < carried.late < 5000
    assert posting_capacity({}, 45.0, grace).line().endswith("nothing scheduled")


async def test_the_dispatcher_checks_the_capacity_of_its_schedules(store, caplog):
    w = World()
    await add(store, 30, "08:00", 10_000)
    await add(store, 5, "21:30", 20_000)
    params = DispatcherParams(grace=timedelta(seconds=2))
    d = Dispatcher(store, FakePoster(), FakeReports(), params=params, now=w.clock, sleep=w.clock.sleep,
                   pacer=w.pacer(10.0, 12.0))
    caplog.set_level(logging.INFO, logger="bot.scheduler")
    cap = await d.check_capacity()
    assert cap is not None and d.capacity is cap
    assert cap.per_minute == 20 and cap.busiest == "08:00 UTC" and cap.busiest_count == 30 and cap.late == 9
    assert any(r.levelno == logging.WARNING and "9 of 35 would miss it" in r.getMessage() for r in caplog.records)
    assert await Dispatcher(store, FakePoster(), FakeReports()).check_capacity() is None  # no pacer: nothing to say


def test_the_benchmarks_simulated_clock_skips_waits_but_keeps_their_order():
    import asyncio
    import sys
    import time
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:  # bench/ is a folder of the checkout, not an installed package
        sys.path.insert(0, root)
    from bench.budgets import run_virtual

    async def go() -> tuple[list[str], float]:
        seen: list[str] = []

        async def after(s: float, name: str) -> None:
            await asyncio.sleep(s)
            seen.append(name)

        await asyncio.gather(after(3600, "hour"), after(60, "minute"), after(86400, "day"))
        return seen, asyncio.get_running_loop().time()

    t = time.perf_counter()
    seen, now = run_virtual(go)
    assert seen == ["minute", "hour", "day"] and now == 86400 and time.perf_counter() - t < 5
