"""bot.cluster_watch with a fake clock, a fake Discord, fake readings and a fake tape, on a real SQLite file."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest

from analysis.errors import InputError, SourceError
from analysis.metrics import SKEW_CLASSES, Cluster, Reading
from analysis.tape.events import Gap, LiquidationEvent
from bot.cluster_store import ClusterStore
from bot.cluster_watch import ClusterWatcher, MapReading, WatchParams
from bot.scheduler import AlreadyPosted, ChannelGone, MissingAccess
from bot.store import Store

UTC = timezone.utc
T0 = datetime(2026, 6, 22, 12, 0, tzinfo=UTC)
G, C, C2, U = 1000, 2000, 2001, 7
MIN15 = timedelta(minutes=15)


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


class Clock:
    def __init__(self, start: datetime) -> None:
        self.t = start

    def __call__(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@dataclass
class FakePoster:
    gone: set[int] = field(default_factory=set)
    no_access: set[int] = field(default_factory=set)
    fail: int = 0
    hang: bool = False
    deleted_after_post: bool = False
    sent: list[tuple[int, dict, str]] = field(default_factory=list)

    async def send_alert(self, channel_id, *, embed, nonce):
        assert len(nonce) <= 25
        if channel_id in self.gone:
            raise ChannelGone("Unknown Channel (10003)")
        if channel_id in self.no_access:
            raise MissingAccess("missing Embed Links in #alerts")
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("503 Service Unavailable")
        if self.hang:
            await asyncio.sleep(3600)
        if self.deleted_after_post:
            raise AlreadyPosted("10008")
        self.sent.append((channel_id, embed, nonce))
        return len(self.sent)


def reading(price: float, symbol: str = "BTCUSDT") -> Reading:
    clusters = (Cluster("short", 101.0, 100.7, 101.3, 1.0, 80e6, "25x", True),
                Cluster("long", 95.0, 94.7, 95.3, -5.0, 60e6, "50x", True))
    return Reading(symbol=symbol, price=price, venues=("bybit",), kind="estimated", window="7d", band=0.05,
                   distances=(0.01,), cum_long=(0.0,), cum_short=(0.0,), long_in_band=1e6, short_in_band=1e6,
                   imbalance=1.0, skew=SKEW_CLASSES["balanced"], clusters=clusters, nearest_long=None,
                   nearest_short=None, thresholds=(), total_long=1e6, total_short=1e6)


class FakeReadings:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.price = 98.0
        self.calls: list[tuple[str, str, str]] = []
        self.error: Exception | None = None

    async def __call__(self, symbol, window, exchange):
        self.calls.append((symbol, window, exchange))
        if self.error is not None:
            raise self.error
        return MapReading(reading(self.price, symbol), ms(self.clock()), ("binance", "bybit", "okx"))


class FakeTape:
    def __init__(self) -> None:
        self.events_: list[LiquidationEvent] = []
        self.gaps_: list[Gap] = []
        self.asked: list[tuple] = []

    async def events(self, symbol, start_ms, end_ms, venues=None):
        self.asked.append((symbol, start_ms, end_ms, tuple(venues or ())))
        return [e for e in self.events_ if e.symbol == symbol and start_ms <= e.time_ms < end_ms]

    async def gaps(self, start_ms, end_ms, venues=None):
        return [g for g in self.gaps_ if g.start_ms < end_ms and (g.end_ms is None or g.end_ms > start_ms)]


@pytest.fixture
async def store(url):
    s = await Store.open(url, max_per_guild=100)
    yield s
    await s.close()


@pytest.fixture
def rig(store):
    clock = Clock(T0)
    poster = FakePoster()
    reads = FakeReadings(clock)
    tape = FakeTape()
    clusters = ClusterStore(store)
    w = ClusterWatcher(clusters, poster, reads, tape=lambda: tape, params=WatchParams(interval_s=900, post_timeout_s=1),
                       now=clock, sleep=clock.sleep)
    return clock, poster, reads, tape, clusters, w


async def subscribe(clusters, **kw):
    args = dict(symbol="BTC", window="7d", exchange="all", kind="approaching", created_by=U, within_pct=1.0,
                cooldown_s=3600)
    args.update(kw)
    return await clusters.add(G, args.pop("channel", C), **args)


async def walk(w, clock, reads, prices):
    stats = []
    for p in prices:
        reads.price = p
        stats.append(await w.tick())
        clock.t += MIN15
    return stats


async def test_approaching_fires_once_for_a_price_hovering_at_the_edge(rig):
    clock, poster, reads, _, clusters, w = rig
    a = await subscribe(clusters)
    edge = 101.0 / 1.01
    stats = await walk(w, clock, reads, [98.0, edge + 0.01, edge - 0.01, edge + 0.01, edge - 0.01, edge + 0.02])
    assert [s.baselines for s in stats] == [1, 0, 0, 0, 0, 0]
    assert [s.announced for s in stats] == [0, 1, 0, 0, 0, 0]
    (ch, embed, nonce), = poster.sent
    assert ch == C and embed["title"] == "BTCUSDT cluster alert · approaching"
    assert "of a major liquidation cluster" in embed["description"] and f"liqmap-c{a.id}-" in embed["footer"]["text"]
    assert (await clusters.get(a.id)).phase == "near"
    assert reads.calls[0] == ("BTCUSDT", "7d", "all")


async def test_one_reading_per_key_for_many_channels(rig):
    clock, poster, reads, _, clusters, w = rig
    await subscribe(clusters)
    await subscribe(clusters, channel=C2)
    await subscribe(clusters, symbol="ETH")
    await walk(w, clock, reads, [98.0, 100.5])
    assert sorted(set(reads.calls)) == [("BTCUSDT", "7d", "all"), ("ETHUSDT", "7d", "all")] and len(reads.calls) == 4
    assert sorted(ch for ch, _, _ in poster.sent) == [C, C, C2]


async def test_rearms_beyond_the_exit_distance_and_the_cooldown_holds_the_second_notice(rig):
    clock, poster, reads, _, clusters, w = rig
    await subscribe(clusters)  # cooldown 60 min, checks every 15 min
    stats = await walk(w, clock, reads, [98.0, 100.5, 98.0, 100.5, 100.5, 100.5])
    # 100.5 fires; 98 is 3% away: re-armed; back at 100.5 within the hour: held until the hour is up
    assert [s.announced for s in stats] == [0, 1, 0, 0, 0, 1]
    assert [s.cooldown for s in stats] == [0, 0, 0, 1, 1, 0]
    assert len(poster.sent) == 2


async def test_a_deleted_channel_pauses_every_subscription_posting_there(rig, store):
    clock, poster, reads, _, clusters, w = rig
    a = await subscribe(clusters)
    other = await subscribe(clusters, channel=C2)
    await store.add_skew_alert(G, C, symbol="BTC", window="7d", exchange="all", created_by=U)
    poster.gone.add(C)
    stats = await walk(w, clock, reads, [98.0, 100.5])
    assert stats[1].paused == 2 and stats[1].announced == 1  # alert + skew watch paused; C2 still posted
    p = await clusters.get(a.id)
    assert p.paused and p.paused_reason.startswith("channel deleted or not visible")
    assert (await store.list_skew_alerts(G))[0].paused
    assert not (await clusters.get(other.id)).paused
    # paused alerts are not read any more
    n = len(reads.calls)
    await walk(w, clock, reads, [100.5])
    assert len(reads.calls) == n + 1  # only the key of C2


async def test_a_missing_permission_pauses_with_the_reason(rig):
    clock, poster, reads, _, clusters, w = rig
    a = await subscribe(clusters)
    poster.no_access.add(C)
    await walk(w, clock, reads, [98.0, 100.5])
    p = await clusters.get(a.id)
    assert p.paused and p.paused_reason == "missing permissions: missing Embed Links in #alerts"


async def test_a_failed_send_is_retried_at_the_next_check_and_a_timed_out_one_is_not(rig):
    clock, poster, reads, _, clusters, w = rig
    a = await subscribe(clusters)
    poster.fail = 1
    stats = await walk(w, clock, reads, [98.0, 100.5, 100.5])
    assert [s.failed for s in stats] == [0, 1, 0] and [s.announced for s in stats] == [0, 0, 1]
    assert len(poster.sent) == 1
    # now a send that hangs (it may have been posted): the state is kept, never resent blindly
    await walk(w, clock, reads, [98.0])  # re-armed
    poster.hang = True
    clock.t += timedelta(hours=2)
    stats = await walk(w, clock, reads, [100.5])
    assert stats[0].failed == 1 and "timed out" in stats[0].errors[0]
    poster.hang = False
    stats = await walk(w, clock, reads, [100.5, 100.5])
    assert [s.announced for s in stats] == [0, 0] and (await clusters.get(a.id)).phase == "near"


async def test_a_notice_deleted_since_counts_as_posted(rig):
    clock, poster, reads, _, clusters, w = rig
    a = await subscribe(clusters)
    poster.deleted_after_post = True
    stats = await walk(w, clock, reads, [98.0, 100.5, 100.5])
    assert [s.announced for s in stats] == [0, 1, 0] and not (await clusters.get(a.id)).paused


async def test_a_request_the_service_refuses_pauses_and_an_outage_skips(rig):
    clock, poster, reads, _, clusters, w = rig
    a = await subscribe(clusters)
    reads.error = SourceError("all", "report", "every venue failed (timeout)")
    stats = await walk(w, clock, reads, [98.0])
    assert stats[0].reading_failures == 1 and not (await clusters.get(a.id)).paused
    reads.error = InputError("bybit is not among this source's venues")
    await walk(w, clock, reads, [98.0])
    assert (await clusters.get(a.id)).paused_reason.startswith("cannot read BTCUSDT: bybit is not among")


def liq(t: datetime, price: float, usd: float, venue: str = "bybit", side: str = "short") -> LiquidationEvent:
    return LiquidationEvent(venue, "BTCUSDT", ms(t), side, price, usd / price, usd, venue != "bybit", f"{venue}{ms(t)}")


async def test_swept_waits_for_a_reading_from_before_its_window_then_fires_once(rig):
    clock, poster, reads, tape, clusters, w = rig
    a = await subscribe(clusters, kind="swept", within_pct=0.5, min_usd=2e6, minutes=30)
    stats = await walk(w, clock, reads, [98.0, 98.0])  # 12:00, 12:15: no reading 30 min old yet
    assert [s.waiting for s in stats] == [1, 1] and (await clusters.get(a.id)).phase is None
    stats = await walk(w, clock, reads, [98.0])  # 12:30: the 12:00 reading is the reference: baseline
    assert stats[0].baselines == 1
    tape.events_ += [liq(clock.t - timedelta(minutes=5), 101.1, 1.5e6), liq(clock.t - timedelta(minutes=4), 100.9, 1e6)]
    stats = await walk(w, clock, reads, [101.5, 101.5])  # 12:45 fires; 13:00 same events in window: quiet
    assert [s.announced for s in stats] == [1, 0]
    (_, embed, _), = poster.sent
    assert "$2.5M of short liquidations realized near $101.00 in the last 30 min" in embed["description"]
    assert "Feeds: Bybit complete; Binance, OKX sampled" in embed["description"]
    assert tape.asked[-1][3] == ("binance", "bybit", "okx")
    end = tape.asked[-1][2]
    assert tape.asked[-1][1] == end - 30 * 60_000


async def test_swept_names_gaps_and_does_not_rearm_during_one(rig):
    clock, poster, reads, tape, clusters, w = rig
    a = await subscribe(clusters, kind="swept", within_pct=0.5, min_usd=2e6, minutes=30, cooldown_s=60)
    await walk(w, clock, reads, [98.0, 98.0, 98.0])  # to 12:30, baseline recorded
    tape.events_.append(liq(clock.t - timedelta(minutes=2), 101.0, 3e6))
    gap = Gap("binance", None, ms(clock.t - timedelta(minutes=10)), ms(clock.t - timedelta(minutes=8)), "reconnect")
    tape.gaps_.append(gap)
    stats = await walk(w, clock, reads, [101.0])
    assert stats[0].announced == 1
    assert "Feed gaps in this window (Binance 12:35 UTC–12:37 UTC)" in poster.sent[0][1]["description"]
    tape.gaps_.append(Gap("bybit", None, ms(clock.t - timedelta(minutes=1)), None, "silence"))
    clock.t += timedelta(hours=1)  # the events have left the window, but a gap is open: no re-arm
    await walk(w, clock, reads, [101.0])
    assert (await clusters.get(a.id)).phase == "swept"
    tape.gaps_.clear()
    await walk(w, clock, reads, [101.0])
    assert (await clusters.get(a.id)).phase == "armed"


async def test_swept_without_a_tape_is_skipped_not_paused(store):
    clock = Clock(T0)
    clusters = ClusterStore(store)
    reads = FakeReadings(clock)
    w = ClusterWatcher(clusters, FakePoster(), reads, tape=lambda: None, now=clock, sleep=clock.sleep)
    a = await subscribe(clusters, kind="swept")
    stats = await w.tick()
    assert stats.no_tape == 1 and not (await clusters.get(a.id)).paused


async def test_the_loop_runs_on_its_interval_and_stops(rig, monkeypatch):
    clock, poster, reads, _, clusters, w = rig
    await subscribe(clusters)
    stop = asyncio.Event()
    ticks = []
    real_tick = w.tick

    async def tick():
        ticks.append(clock.t)
        if len(ticks) == 3:
            stop.set()
        return await real_tick()

    monkeypatch.setattr(w, "tick", tick)
    await asyncio.wait_for(w.run(stop), 10)
    assert ticks == [T0, T0 + MIN15, T0 + 2 * MIN15]


class Crash(BaseException):
    """Stands for the process dying mid-send: not an Exception, so nothing in the watcher catches it."""


async def test_a_crash_between_the_state_write_and_the_send_loses_that_notice_never_doubles_it(rig, store):
    clock, poster, reads, tape, clusters, w = rig
    a = await subscribe(clusters)
    await walk(w, clock, reads, [98.0])

    async def dies(channel_id, *, embed, nonce):
        raise Crash()

    poster.send_alert = dies  # the process dies as it sends
    reads.price = 100.5
    with pytest.raises(Crash):
        await w.tick()
    assert (await clusters.get(a.id)).phase == "near"  # written before the send: at most once
    restarted = ClusterWatcher(clusters, FakePoster(), reads, tape=lambda: tape, now=clock, sleep=clock.sleep)
    clock.t += MIN15
    stats = await restarted.tick()
    assert stats.announced == 0 and stats.unchanged == 1


async def test_stop_ends_a_sleeping_loop_at_once(store):
    clusters = ClusterStore(store)
    w = ClusterWatcher(clusters, FakePoster(), FakeReadings(Clock(T0)), params=WatchParams(interval_s=3600))
    task = w.start()
    for _ in range(100):  # the first check (no alerts) is done: the loop sleeps for an hour
        if w.last is not None:
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(w.stop(timeout=30), 2)
    assert task.done()


async def test_alerts_take_their_turn_from_the_shared_discord_pacer(rig):
    from bot.pacer import DiscordPacer

    clock, poster, reads, _, clusters, w = rig
    w.pacer = DiscordPacer(10.0, 12.0, clock=lambda: 0.0, sleep=clock.sleep)
    await subscribe(clusters)
    stats = await walk(w, clock, reads, [98.0, 100.5])
    assert stats[1].announced == 1 and w.pacer.requests == 1  # one notice, one request of the bot's global rate


async def test_the_bots_watcher_reads_through_the_services_reading_only_path(store):
    """make_cluster_watch reads ReportService.reading: the merged map is modelled once and shared
    with the reports, and no chart is rendered."""
    from types import SimpleNamespace

    from analysis.report import ReportService
    from analysis.sources import SampleSource
    from bot.cluster_watch import make_cluster_watch

    svc = ReportService({"binance": SampleSource()}, ttl=60)
    bot = SimpleNamespace(store=store, service=svc, settings=SimpleNamespace(schedule=None), tape=None)
    w = make_cluster_watch(bot)
    assert w is not None
    got = await w.reading("BTCUSDT", "1d", "all")
    assert isinstance(got, MapReading) and got.end_ms == got.reading.end_ms > 0 and got.venues == ("binance",)
    assert svc.map_computations == 1 and svc.renderer.stats.submitted == 0
    rep = await svc.report("BTCUSDT", "1d")  # the report reuses the map the watcher read
    assert svc.map_computations == 1 and rep.reading.imbalance == got.reading.imbalance
