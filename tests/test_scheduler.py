"""bot.scheduler with an injected clock, a fake Discord and a fake report function, on a real SQLite file."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from analysis.errors import SourceError
from analysis.metrics import SKEW_CLASSES, Reading, classify
from bot.scheduler import (
    ChannelGone,
    Dispatcher,
    DispatcherParams,
    MissingAccess,
    default_embed,
    make_dispatcher,
)
from bot.store import Store

UTC = timezone.utc
G, U = 1000, 7


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the dispatcher catches it."""


class Clock:
    def __init__(self, start: datetime) -> None:
        self.t = start

    def __call__(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@dataclass
class FakePoster:
    """Discord as far as the dispatcher can tell: messages per channel, footers searchable."""

    gone: set[int] = field(default_factory=set)
    no_access: set[int] = field(default_factory=set)
    fail: dict[int, int] = field(default_factory=dict)  # channel -> how many sends raise before one works
    crash_after_send: bool = False
    messages: dict[int, list[dict]] = field(default_factory=dict)
    finds: int = 0
    next_id: int = 5000

    async def post(self, channel_id, *, content, embed, png, filename, nonce, extra=()):
        assert isinstance(png, bytes) and filename in ("liqmap.png", "heatmap.png") and len(nonce) <= 25
        names = [filename] + [name for _, _, name in extra]
        assert len(set(names)) == len(names)  # one message's attachments need distinct names
        if channel_id in self.gone:
            raise ChannelGone("Unknown Channel (10003)")
        if channel_id in self.no_access:
            raise MissingAccess("Missing Access (50001)")
        if self.fail.get(channel_id, 0) > 0:
            self.fail[channel_id] -= 1
            raise RuntimeError("503 Service Unavailable")
        self.next_id += 1
        self.messages.setdefault(channel_id, []).append(
            {"id": self.next_id, "embed": embed, "png": png, "nonce": nonce, "content": content,
             "filename": filename, "extra": list(extra)})
        if self.crash_after_send:
            raise Crash()
        return self.next_id

    async def find_marker(self, channel_id, marker, *, since=None):
        assert since is not None  # the dispatcher says from when to look
        self.finds += 1
        if channel_id in self.gone:
            raise ChannelGone("Unknown Channel (10003)")
        for m in reversed(self.messages.get(channel_id, [])):
            if marker in m["embed"]["footer"]["text"]:
                return m["id"]
        return None

    def count(self, channel_id=None) -> int:
        if channel_id is None:
            return sum(len(v) for v in self.messages.values())
        return len(self.messages.get(channel_id, []))


def fake_reading(symbol: str, ratio: float, end_ms: int) -> Reading:
    """A real Reading whose imbalance is ``ratio`` (all the dispatcher's tests look at)."""
    short = ratio if math.isfinite(ratio) and ratio >= 0 else 0.0
    return Reading(symbol=symbol, price=100.0, venues=("binance", "bybit"), kind="estimated", window="1d", band=0.05,
                   distances=(0.05,), cum_long=(1.0,), cum_short=(short,), long_in_band=1.0, short_in_band=short,
                   imbalance=ratio, skew=classify(ratio), clusters=(), nearest_long=None, nearest_short=None,
                   thresholds=(), total_long=1.0, total_short=short, end_ms=end_ms)


class FakeReports:
    """report(symbol, window, exchange): distinct PNG bytes per key, a settable skew ratio per symbol."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.down: dict[str, str] = {}  # symbol -> reason
        self.ratio: dict[str, float] = {}
        self.missing: dict[str, str] = {}
        self.end_ms = 1_780_000_000_000

    async def __call__(self, symbol, window, exchange):
        self.calls.append((symbol, window, exchange))
        await asyncio.sleep(0)
        if symbol in self.down:
            raise SourceError("all", "report", f"every venue failed ({self.down[symbol]})")
        r = self.ratio.get(symbol, 1.0)
        reading = fake_reading(symbol, r, self.end_ms)
        m = SimpleNamespace(venues=("binance", "bybit"), kind="estimated", end_ms=self.end_ms)
        return SimpleNamespace(symbol=symbol, png=f"PNG {symbol} {window} {exchange}".encode(), reading=reading,
                               map=m, missing=dict(self.missing), summary=f"summary {symbol}")


@pytest.fixture
async def store(url):
    s = await Store.open(url, max_per_guild=10_000)
    yield s
    await s.close()


class FakeHeatmaps:
    """heatmap(symbol, window, exchange) -> (png, states, missing), like ReportService.heatmap."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.down: dict[str, BaseException] = {}  # symbol -> what building its heatmap raises
        self.missing: dict[str, str] = {}

    async def __call__(self, symbol, window, exchange):
        self.calls.append((symbol, window, exchange))
        await asyncio.sleep(0)
        if symbol in self.down:
            raise self.down[symbol]
        states = SimpleNamespace(symbol=symbol, window=window, venues=("binance", "bybit"), end_ms=1_780_000_000_000)
        return f"HEAT {symbol} {window} {exchange}".encode(), states, dict(self.missing)


def dispatcher(store, poster, reports, clock, heatmaps=None, heatmap_text=None, **params) -> Dispatcher:
    return Dispatcher(
        store, poster, reports, params=DispatcherParams(**params), now=clock, sleep=clock.sleep,
        daily_text=lambda rep, prev: f"daily {rep.symbol} ratio {rep.reading.imbalance}",
        notice_text=lambda old, reading, m: f"{reading.symbol}: {old.key} -> {reading.skew.key}",
        heatmap=heatmaps, heatmap_text=heatmap_text or (lambda st: f"heatmap {st.symbol} {st.window}"),
    )


async def daily(store, clock, channel=1, **kw):
    args = dict(symbols="BTC", window="1d", exchange="all", time="09:00", timezone="UTC", created_by=U)
    args.update(kw)
    return await store.add_daily(G, channel, now=clock(), **args)


def post_times(poster: FakePoster, channel: int) -> list:
    return [m["at"] for m in poster.messages.get(channel, [])]


class TimedPoster(FakePoster):
    """Stamps each message with the clock time it was sent."""

    def __init__(self, clock, **kw):
        super().__init__(**kw)
        self.clock = clock

    async def post(self, channel_id, **kw):
        mid = await super().post(channel_id, **kw)
        self.messages[channel_id][-1]["at"] = self.clock()
        return mid


async def run_ticks(d: Dispatcher, clock: Clock, until: datetime, step: timedelta) -> None:
    while clock() <= until:
        await d.run_daily()
        clock.t += step


# -- the basic cycle --------------------------------------------------------------------------------

async def test_posts_once_at_local_time_then_next_day(store):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, reports = TimedPoster(clock), FakeReports()
    s = await daily(store, clock, time="10:30", timezone="Europe/Berlin")  # CEST: 08:30 UTC
    assert s.next_run_at == datetime(2026, 6, 1, 8, 30, tzinfo=UTC)
    d = dispatcher(store, poster, reports, clock)
    await run_ticks(d, clock, datetime(2026, 6, 3, 0, 0, tzinfo=UTC), timedelta(minutes=30))
    assert post_times(poster, 1) == [datetime(2026, 6, 1, 8, 30, tzinfo=UTC), datetime(2026, 6, 2, 8, 30, tzinfo=UTC)]
    msg = poster.messages[1][0]
    assert msg["png"] == b"PNG BTCUSDT 1d all"
    assert msg["embed"]["image"]["url"] == "attachment://liqmap.png"
    assert f"liqmap-d{s.id}-2026-06-01-BTCUSDT" in msg["embed"]["footer"]["text"]
    assert msg["embed"]["description"] == "daily BTCUSDT ratio 1.0"
    sent = await store.deliveries(s.id)
    assert [(x.local_date, x.state, x.message_id) for x in sent] == [
        (date(2026, 6, 1), "sent", poster.messages[1][0]["id"]), (date(2026, 6, 2), "sent", poster.messages[1][1]["id"])]
    assert (await store.get_daily(s.id)).next_run_at == datetime(2026, 6, 3, 8, 30, tzinfo=UTC)


async def test_fan_out_renders_each_key_once_and_shares_the_bytes(store):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, reports = FakePoster(), FakeReports()
    for ch in range(1, 41):
        await daily(store, clock, channel=ch, symbols="BTC, ETH")
    for ch in range(41, 51):
        await daily(store, clock, channel=ch, symbols="BTC", window="7d")
    await daily(store, clock, channel=51, time="10:00")  # not due in this tick
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    stats = await dispatcher(store, poster, reports, clock).run_daily()
    assert sorted(reports.calls) == [("BTCUSDT", "1d", "all"), ("BTCUSDT", "7d", "all"), ("ETHUSDT", "1d", "all")]
    assert stats.renders == 3 and stats.posted == 90 and stats.due == 50
    pngs = [m["png"] for ch in range(1, 41) for m in poster.messages[ch] if m["png"].startswith(b"PNG BTC")]
    assert len(pngs) == 40 and all(p is pngs[0] for p in pngs)  # the very same bytes object
    assert poster.count(51) == 0


async def test_two_dispatchers_on_one_database_post_once(url):
    # two processes sharing the database (the PostgreSQL deployment): the unique claim decides
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    a, b = await Store.open(url), await Store.open(url)
    try:
        for ch in range(1, 21):
            await daily(a, clock, channel=ch)
        clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
        poster = FakePoster()
        s1, s2 = await asyncio.gather(dispatcher(a, poster, FakeReports(), clock).run_daily(),
                                      dispatcher(b, poster, FakeReports(), clock).run_daily())
        assert s1.posted + s2.posted == 20
        assert all(poster.count(ch) == 1 for ch in range(1, 21))
    finally:
        await a.close()
        await b.close()


# -- DST --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "tz,local,start,expected",
    [
        # New York spring forward 2026-03-08: 02:30 does not exist -> posted at 03:30 EDT (07:30Z)
        ("America/New_York", "02:30", datetime(2026, 3, 7, 0, 0, tzinfo=UTC),
         ["2026-03-07T07:30", "2026-03-08T07:30", "2026-03-09T06:30"]),
        # New York fall back 2026-11-01: 01:30 happens twice -> the first (EDT, 05:30Z) only
        ("America/New_York", "01:30", datetime(2026, 10, 31, 0, 0, tzinfo=UTC),
         ["2026-10-31T05:30", "2026-11-01T05:30", "2026-11-02T06:30"]),
        # London spring forward 2026-03-29: 01:30 does not exist -> 02:30 BST (01:30Z)
        ("Europe/London", "01:30", datetime(2026, 3, 28, 0, 0, tzinfo=UTC),
         ["2026-03-28T01:30", "2026-03-29T01:30", "2026-03-30T00:30"]),
        # London fall back 2026-10-25: 01:30 twice -> first (BST, 00:30Z)
        ("Europe/London", "01:30", datetime(2026, 10, 24, 0, 0, tzinfo=UTC),
         ["2026-10-24T00:30", "2026-10-25T00:30", "2026-10-26T01:30"]),
        # an ordinary time on the London change days keeps its local clock time
        ("Europe/London", "09:00", datetime(2026, 3, 28, 0, 0, tzinfo=UTC),
         ["2026-03-28T09:00", "2026-03-29T08:00", "2026-03-30T08:00"]),
    ],
)
async def test_dst_transitions_post_once_per_local_day(store, tz, local, start, expected):
    clock = Clock(start)
    poster = TimedPoster(clock)
    await daily(store, clock, time=local, timezone=tz)
    d = dispatcher(store, poster, FakeReports(), clock)
    await run_ticks(d, clock, start + timedelta(days=3) - timedelta(minutes=1), timedelta(minutes=30))
    assert [t.strftime("%Y-%m-%dT%H:%M") for t in post_times(poster, 1)] == expected


# -- downtime ---------------------------------------------------------------------------------------

async def test_missed_report_inside_grace_is_posted_once_late(store):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster = TimedPoster(clock)
    s = await daily(store, clock)
    clock.t = datetime(2026, 6, 1, 10, 45, tzinfo=UTC)  # back after downtime, 1 h 45 late
    d = dispatcher(store, poster, FakeReports(), clock)
    await d.run_daily()
    await d.run_daily()
    assert post_times(poster, 1) == [datetime(2026, 6, 1, 10, 45, tzinfo=UTC)]
    assert (await store.get_daily(s.id)).next_run_at == datetime(2026, 6, 2, 9, 0, tzinfo=UTC)


async def test_missed_report_beyond_grace_is_skipped_and_recorded(store, caplog):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster = FakePoster()
    s = await daily(store, clock, symbols="BTC ETH")
    clock.t = datetime(2026, 6, 1, 11, 1, tzinfo=UTC)  # 2 h 01 late
    stats = await dispatcher(store, poster, FakeReports(), clock).run_daily()
    assert poster.count() == 0 and stats.skipped == 2 and stats.renders == 0
    recs = await store.deliveries(s.id)
    assert [(r.symbol, r.state) for r in recs] == [("BTCUSDT", "skipped"), ("ETHUSDT", "skipped")]
    assert "grace window" in recs[0].detail
    assert "skipped" in caplog.text and "grace" in caplog.text
    assert (await store.get_daily(s.id)).next_run_at == datetime(2026, 6, 2, 9, 0, tzinfo=UTC)


async def test_days_of_downtime_skip_each_missed_day_and_post_today_within_grace(store):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster = FakePoster()
    s = await daily(store, clock)
    clock.t = datetime(2026, 6, 4, 10, 0, tzinfo=UTC)  # offline for three days; today's 09:00 is 1 h ago
    await dispatcher(store, poster, FakeReports(), clock).run_daily()
    recs = {r.local_date.day: r.state for r in await store.deliveries(s.id)}
    assert recs == {1: "skipped", 2: "skipped", 3: "skipped", 4: "sent"}
    assert poster.count(1) == 1
    assert (await store.get_daily(s.id)).next_run_at == datetime(2026, 6, 5, 9, 0, tzinfo=UTC)


# -- the crash between send and record --------------------------------------------------------------

async def test_crash_after_send_before_record_never_posts_twice(url):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster = FakePoster(crash_after_send=True)
    st = await Store.open(url)
    s = await daily(st, clock, symbols="BTC")
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    with pytest.raises(Crash):
        await dispatcher(st, poster, FakeReports(), clock).run_daily()
    await st.close()
    assert poster.count(1) == 1  # the message went out, the record did not

    poster.crash_after_send = False
    st = await Store.open(url)  # restart on the same database
    try:
        d = dispatcher(st, poster, FakeReports(), clock)
        clock.t += timedelta(minutes=1)  # still inside the lease: left alone, not resent
        stats = await d.run_daily()
        assert poster.count(1) == 1 and stats.posted == 0 and poster.finds == 0
        assert (await st.get_daily(s.id)).next_run_at == datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
        clock.t += timedelta(minutes=10)  # lease over: verified through the marker, recorded, not resent
        stats = await d.run_daily()
        assert poster.count(1) == 1 and stats.recovered == 1 and poster.finds == 1
        (rec,) = await st.deliveries(s.id)
        assert rec.state == "sent" and rec.message_id == poster.messages[1][0]["id"] and rec.attempts == 2
        assert (await st.get_daily(s.id)).next_run_at == datetime(2026, 6, 2, 9, 0, tzinfo=UTC)
        await d.run_daily()
        assert poster.count(1) == 1
    finally:
        await st.close()


async def test_crash_after_claim_before_send_sends_once_on_restart(url, monkeypatch):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster = FakePoster()
    st = await Store.open(url)
    await daily(st, clock)
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)

    async def die(*a, **k):
        raise Crash()

    d = dispatcher(st, poster, FakeReports(), clock)
    monkeypatch.setattr(d.poster, "post", die)
    with pytest.raises(Crash):
        await d.run_daily()
    await st.close()
    monkeypatch.undo()

    st = await Store.open(url)
    try:
        clock.t += timedelta(minutes=15)
        d2 = dispatcher(st, poster, FakeReports(), clock)
        stats = await d2.run_daily()
        assert poster.finds == 1 and stats.posted == 1 and poster.count(1) == 1
        (m,) = poster.messages[1]
        (rec,) = await st.deliveries(1)
        assert m["nonce"] == rec.nonce  # the resend reuses the claim's nonce (Discord dedups it too)
    finally:
        await st.close()


async def test_crash_left_unverified_past_grace_is_checked_but_never_resent(url):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster = FakePoster()
    st = await Store.open(url)
    s = await daily(st, clock)
    d = await st.get_daily(s.id)
    await st.claim_delivery(d, date(2026, 6, 1), "BTCUSDT", due_at=d.next_run_at,
                            now=datetime(2026, 6, 1, 9, 0, tzinfo=UTC), lease=timedelta(minutes=10))
    await st.close()
    st = await Store.open(url)
    try:
        clock.t = datetime(2026, 6, 1, 14, 0, tzinfo=UTC)
        await dispatcher(st, poster, FakeReports(), clock).run_daily()
        (rec,) = await st.deliveries(s.id)
        assert poster.finds == 1 and poster.count() == 0
        assert rec.state == "skipped" and "grace" in rec.detail
        assert (await st.get_daily(s.id)).next_run_at == datetime(2026, 6, 2, 9, 0, tzinfo=UTC)
    finally:
        await st.close()


async def test_claim_is_stamped_after_rendering_so_a_slow_render_does_not_shorten_its_lease(url, monkeypatch):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, reports = FakePoster(), FakeReports()
    st = await Store.open(url)
    s = await daily(st, clock)
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    slow = reports.__call__

    async def slow_render(*key):
        clock.t += timedelta(minutes=8)  # the exchanges are slow today
        return await slow(*key)

    async def die(*a, **k):
        raise Crash()

    d = dispatcher(st, poster, slow_render, clock)
    monkeypatch.setattr(d.poster, "post", die)
    with pytest.raises(Crash):  # claimed at 09:08, then the process dies before sending
        await d.run_daily()
    await st.close()
    monkeypatch.undo()
    st = await Store.open(url)
    try:
        (rec,) = await st.deliveries(s.id)
        assert rec.state == "claimed" and rec.claimed_at == datetime(2026, 6, 1, 9, 8, tzinfo=UTC)
        clock.t = datetime(2026, 6, 1, 9, 12, tzinfo=UTC)  # 12 min after the tick began, 4 after the claim
        stats = await dispatcher(st, poster, reports, clock).run_daily()
        assert poster.finds == 0 and poster.count() == 0 and stats.posted == 0  # the claim is still held
        clock.t = datetime(2026, 6, 1, 9, 18, tzinfo=UTC)  # lease over: verified, then sent once
        stats = await dispatcher(st, poster, reports, clock).run_daily()
        assert poster.finds == 1 and poster.count(1) == 1 and stats.posted == 1
    finally:
        await st.close()


class SlowPoster(FakePoster):
    """Each send takes ``minutes`` of clock time; ``before_send(channel)`` runs first."""

    def __init__(self, clock, minutes, before_send=None, **kw):
        super().__init__(**kw)
        self.clock, self.minutes, self.before_send = clock, minutes, before_send

    async def post(self, channel_id, **kw):
        if self.before_send is not None:
            await self.before_send(channel_id)
        self.clock.t += timedelta(minutes=self.minutes)
        return await super().post(channel_id, **kw)


async def test_a_send_that_starts_late_renews_its_claim(store):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster = SlowPoster(clock, 6)
    for ch in (1, 2):
        await daily(store, clock, channel=ch)
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    stats = await dispatcher(store, poster, FakeReports(), clock, post_concurrency=1).run_daily()
    assert stats.posted == 2 and poster.count() == 2
    recs = sorted([r for sid in (1, 2) for r in await store.deliveries(sid)], key=lambda r: r.channel_id)
    assert [r.state for r in recs] == ["sent", "sent"]
    # the second send began 6 min after the claim (past half the 10 min lease): renewed first
    assert [r.claimed_at for r in recs] == [datetime(2026, 6, 1, 9, 0, tzinfo=UTC), datetime(2026, 6, 1, 9, 6, tzinfo=UTC)]


async def test_a_claim_taken_over_while_waiting_is_not_sent_twice(url):
    # two processes on one database; each send takes 2 min (a slow Discord), one at a time
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    a, b = await Store.open(url), await Store.open(url)
    try:
        for ch in range(1, 8):
            await daily(a, clock, channel=ch)
        clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
        other_stats: list = []

        async def other_dispatcher_ticks(channel_id):
            if channel_id == 6 and not other_stats:  # 09:10: the untouched 09:00 claims have run out
                other_stats.append(await dispatcher(b, discord_, FakeReports(), clock).run_daily())

        discord_ = SlowPoster(clock, 2, before_send=other_dispatcher_ticks)
        stats = await dispatcher(a, discord_, FakeReports(), clock, post_concurrency=1).run_daily()
        assert all(discord_.count(ch) == 1 for ch in range(1, 8))  # channel 7 went out once, not twice
        # the other one verified the posts already made (1-3), left the renewed claims alone (4-6)
        # and sent channel 7, whose claim this one then no longer held
        assert (other_stats[0].recovered, other_stats[0].posted) == (3, 1)
        assert stats.posted == 6
        recs = {r.channel_id: r for sid in range(1, 8) for r in await a.deliveries(sid)}
        assert all(r.state == "sent" for r in recs.values())
        assert recs[7].attempts == 2 and recs[7].message_id == discord_.messages[7][0]["id"]
    finally:
        await a.close()
        await b.close()


async def test_a_deleted_post_refused_by_its_nonce_is_recorded_sent_not_paused(store):
    from bot.scheduler import AlreadyPosted

    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster = FakePoster()
    s = await daily(store, clock)
    w = await store.add_skew_alert(G, 1, symbol="BTC", window="1d", exchange="all", created_by=U)

    async def refused(channel_id, **kw):
        raise AlreadyPosted("Discord 10008: message with nonce lq... was deleted")

    poster.post = refused
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    d = dispatcher(store, poster, FakeReports(), clock)
    stats = await d.run_daily()
    assert stats.paused == 0 and stats.failed == 0 and stats.recovered == 1
    (rec,) = await store.deliveries(s.id)
    assert rec.state == "sent" and "deleted" in rec.detail
    assert not (await store.get_daily(s.id)).paused and not (await store.get_skew_alert(w.id)).paused
    assert (await store.get_daily(s.id)).next_run_at == datetime(2026, 6, 2, 9, 0, tzinfo=UTC)
    # a skew notice refused the same way counts as announced: the class is kept, nothing paused
    await store.set_skew_alert_class(w.id, expected=None, new="heavily_long", ratio=0.1, announced_at=None)
    stats = await d.run_skew()
    assert stats.announced == 1 and stats.paused == 0
    assert (await store.get_skew_alert(w.id)).last_class == "balanced"


async def test_send_error_is_verified_then_retried_once(store):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster = FakePoster(fail={2: 1})
    for ch in (1, 2, 3):
        await daily(store, clock, channel=ch)
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    d = dispatcher(store, poster, FakeReports(), clock)
    stats = await d.run_daily()
    assert (poster.count(1), poster.count(2), poster.count(3)) == (1, 0, 1)  # one channel failing blocks nobody
    assert stats.failed == 1 and "503" in stats.errors[0]
    clock.t += timedelta(seconds=30)
    stats = await d.run_daily()
    assert poster.finds == 1 and stats.posted == 1 and poster.count(2) == 1
    await d.run_daily()
    assert poster.count() == 3


# -- channel gone / permissions ---------------------------------------------------------------------

async def test_channel_gone_or_access_lost_pauses_not_deletes(store):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster = FakePoster(gone={1}, no_access={2})
    for ch in (1, 2, 3):
        await daily(store, clock, channel=ch)
    await daily(store, clock, channel=1, time="12:00")  # same deleted channel, later schedule
    w = await store.add_skew_alert(G, 2, symbol="BTC", window="7d", exchange="all", created_by=U)
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    stats = await dispatcher(store, poster, FakeReports(), clock).run_daily()
    assert stats.paused == 4 and poster.count(3) == 1
    listed = {(x.channel_id, x.local_time): x for x in await store.list_daily(G)}
    assert len(listed) == 4
    assert listed[(1, "09:00")].paused_reason.startswith("channel deleted") and listed[(1, "12:00")].paused
    assert listed[(2, "09:00")].paused_reason == "missing permissions: Missing Access (50001)"
    assert (await store.get_skew_alert(w.id)).paused
    recs = await store.deliveries(listed[(1, "09:00")].id)
    assert recs[0].state == "skipped" and "paused" in recs[0].detail
    # resuming is one call; the next run is tomorrow's
    poster.no_access.clear()
    r = await store.resume_daily(G, listed[(2, "09:00")].id, now=clock())
    assert r.next_run_at == datetime(2026, 6, 2, 9, 0, tzinfo=UTC)
    clock.t = r.next_run_at
    await dispatcher(store, poster, FakeReports(), clock).run_daily()
    assert poster.count(2) == 1 and poster.count(1) == 0


# -- exchange down ----------------------------------------------------------------------------------

async def test_exchange_down_retries_within_grace_then_skips(store):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, reports = FakePoster(), FakeReports()
    s = await daily(store, clock, symbols="BTC ETH")
    reports.down["ETHUSDT"] = "binance: HTTP 503"
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    d = dispatcher(store, poster, reports, clock, tick_s=300)
    stats = await d.run_daily()
    assert stats.posted == 1 and stats.deferred == 1 and stats.render_failures == 1
    assert (await store.get_daily(s.id)).next_run_at == datetime(2026, 6, 1, 9, 0, tzinfo=UTC)  # held
    clock.t += timedelta(minutes=30)
    stats = await d.run_daily()
    assert stats.posted == 0 and stats.deferred == 1 and reports.calls.count(("BTCUSDT", "1d", "all")) == 1
    del reports.down["ETHUSDT"]  # back up inside the grace window: posted once, late
    clock.t += timedelta(minutes=30)
    assert (await d.run_daily()).posted == 1
    assert [m["png"] for m in poster.messages[1]] == [b"PNG BTCUSDT 1d all", b"PNG ETHUSDT 1d all"]
    # the next day ETH stays down past the grace window: recorded skipped with the reason
    reports.down["ETHUSDT"] = "binance: HTTP 503"
    clock.t = datetime(2026, 6, 2, 9, 0, tzinfo=UTC)
    while clock() < datetime(2026, 6, 2, 11, 30, tzinfo=UTC):
        await d.run_daily()
        clock.t += timedelta(minutes=5)
    recs = {r.symbol: r for r in await store.deliveries(s.id, date(2026, 6, 2))}
    assert recs["BTCUSDT"].state == "sent" and recs["ETHUSDT"].state == "skipped"
    assert "no report within the grace window" in recs["ETHUSDT"].detail and "503" in recs["ETHUSDT"].detail
    assert (await store.get_daily(s.id)).next_run_at == datetime(2026, 6, 3, 9, 0, tzinfo=UTC)
    assert poster.count(1) == 3


async def test_degraded_map_names_the_missing_venue():
    reports = FakeReports()
    reports.missing = {"okx": "HTTP 429 rate limited"}
    rep = await reports("BTCUSDT", "1d", "all")
    e = default_embed(rep, "t", "d", "liqmap-d1-2026-06-01-BTCUSDT")
    assert e["fields"][0]["value"] == "**okx**: HTTP 429 rate limited"
    assert e["footer"]["text"].endswith("liqmap-d1-2026-06-01-BTCUSDT")
    assert "binance, bybit" in e["footer"]["text"] and "Estimated" in e["footer"]["text"]


# -- skew alerts ------------------------------------------------------------------------------------

async def watch(store, channel, symbol="BTC", **kw):
    return await store.add_skew_alert(G, channel, symbol=symbol, window="7d", exchange="all", created_by=U, **kw)


async def test_skew_baseline_then_announce_with_hysteresis_and_cooldown(store):
    clock = Clock(datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    poster, reports = FakePoster(), FakeReports()
    w = await watch(store, 1, cooldown_s=3600)
    d = dispatcher(store, poster, reports, clock)
    reports.ratio["BTCUSDT"] = 1.0
    st = await d.run_skew()
    assert st.baselines == 1 and poster.count() == 0  # first observation: recorded, not announced
    assert (await store.get_skew_alert(w.id)).last_class == "balanced"

    def at(minutes):
        clock.t = datetime(2026, 6, 1, 0, 0, tzinfo=UTC) + timedelta(minutes=minutes)

    at(15); reports.ratio["BTCUSDT"] = 1.6
    assert (await d.run_skew()).announced == 1
    msg = poster.messages[1][-1]
    assert msg["embed"]["description"] == "BTCUSDT: balanced -> short"
    assert msg["embed"]["title"] == "BTCUSDT skew: balanced → short-skewed"
    for minute, r in [(20, 1.45), (25, 1.52), (30, 1.40), (35, 1.5)]:  # hovering inside the exit band: no flap
        at(minute); reports.ratio["BTCUSDT"] = r
        assert (await d.run_skew()).unchanged == 1
    assert poster.count(1) == 1
    at(60); reports.ratio["BTCUSDT"] = 1.2  # a real change, but within the hour's cooldown (announced at 15)
    st = await d.run_skew()
    assert st.cooldown == 1 and poster.count(1) == 1
    assert (await store.get_skew_alert(w.id)).last_class == "short"
    at(74)
    assert (await d.run_skew()).cooldown == 1
    at(75)  # cooldown over and the change persisted: announced now
    assert (await d.run_skew()).announced == 1
    assert poster.messages[1][-1]["embed"]["description"] == "BTCUSDT: short -> balanced"


async def test_no_reannounce_after_restart(url):
    clock = Clock(datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    poster, reports = FakePoster(), FakeReports()
    st = await Store.open(url)
    await watch(st, 1, cooldown_s=60)
    reports.ratio["BTCUSDT"] = 1.0
    await dispatcher(st, poster, reports, clock).run_skew()
    clock.t += timedelta(minutes=15)
    reports.ratio["BTCUSDT"] = 3.5
    assert (await dispatcher(st, poster, reports, clock).run_skew()).announced == 1
    await st.close()
    st = await Store.open(url)
    try:
        clock.t += timedelta(hours=2)  # well past the cooldown
        stats = await dispatcher(st, poster, reports, clock).run_skew()
        assert stats.unchanged == 1 and stats.announced == 0 and poster.count() == 1
    finally:
        await st.close()


async def test_skew_renders_once_per_key_and_baselines_in_bulk(store):
    clock = Clock(datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    poster, reports = FakePoster(), FakeReports()
    for ch in range(1, 61):
        await watch(store, ch, symbol=("BTC", "ETH", "SOL")[ch % 3])
    d = dispatcher(store, poster, reports, clock)
    assert (await d.run_skew()).baselines == 60
    assert len(reports.calls) == 3
    reports.ratio["ETHUSDT"] = 0.2
    clock.t += timedelta(minutes=15)
    stats = await d.run_skew()
    assert len(reports.calls) == 6 and stats.announced == 20 and stats.unchanged == 40
    eth = [m["png"] for ch in range(1, 61) for m in poster.messages.get(ch, [])]
    assert all(p is eth[0] for p in eth)


async def test_skew_send_failure_restores_class_and_channel_gone_pauses(store):
    clock = Clock(datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    poster, reports = FakePoster(fail={1: 1}, gone={2}), FakeReports()
    w1, w2 = await watch(store, 1), await watch(store, 2)
    d = dispatcher(store, poster, reports, clock)
    await d.run_skew()
    reports.ratio["BTCUSDT"] = 4.0
    clock.t += timedelta(minutes=15)
    stats = await d.run_skew()
    assert stats.failed == 1 and stats.paused == 1 and poster.count() == 0
    got1, got2 = await store.get_skew_alert(w1.id), await store.get_skew_alert(w2.id)
    assert got1.last_class == "balanced" and got1.last_announced_at is None  # put back: retried next check
    assert got2.paused and "channel deleted" in got2.paused_reason
    clock.t += timedelta(minutes=15)
    assert (await d.run_skew()).announced == 1
    assert poster.messages[1][0]["embed"]["description"] == "BTCUSDT: balanced -> heavily_short"


async def test_skew_nan_ratio_and_report_failure_change_nothing(store):
    clock = Clock(datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    poster, reports = FakePoster(), FakeReports()
    w = await watch(store, 1)
    d = dispatcher(store, poster, reports, clock)
    reports.ratio["BTCUSDT"] = 2.0
    await d.run_skew()
    reports.ratio["BTCUSDT"] = math.nan
    assert (await d.run_skew()).unchanged == 1
    reports.down["BTCUSDT"] = "every venue down"
    assert (await d.run_skew()).render_failures == 1
    assert (await store.get_skew_alert(w.id)).last_class == "short" and poster.count() == 0


# -- the loop ---------------------------------------------------------------------------------------

async def test_one_loop_ticks_daily_and_skew_on_their_own_intervals(store):
    clock = Clock(datetime(2026, 6, 1, 8, 50, tzinfo=UTC))
    poster, reports = FakePoster(), FakeReports()
    await daily(store, clock)
    await watch(store, 9)
    d = dispatcher(store, poster, reports, clock, tick_s=60, skew_interval_s=900)
    stop = asyncio.Event()
    ticks = 0

    async def sleep(seconds):
        nonlocal ticks
        ticks += 1
        clock.t += timedelta(seconds=seconds)
        if ticks >= 60:
            stop.set()

    d.sleep = sleep
    await d.run(stop)
    assert poster.count(1) == 1
    skew_calls = [c for c in reports.calls if c[1] == "7d"]
    assert len(skew_calls) == 4  # minutes 0, 15, 30, 45 of the hour simulated


async def test_a_clock_set_back_does_not_stall_the_skew_alerts(store):
    clock = Clock(datetime(2026, 6, 1, 9, 0, tzinfo=UTC))
    reports = FakeReports()
    await watch(store, 9)
    d = dispatcher(store, FakePoster(), reports, clock, skew_interval_s=900)
    await d.tick()
    clock.t -= timedelta(hours=3)  # NTP steps the clock back
    await d.tick()
    clock.t += timedelta(minutes=5)
    await d.tick()  # inside the interval from the second check: not again
    assert len([c for c in reports.calls if c[1] == "7d"]) == 2


async def test_a_failing_tick_does_not_stop_the_loop(store, monkeypatch, caplog):
    clock = Clock(datetime(2026, 6, 1, 9, 0, tzinfo=UTC))
    d = dispatcher(store, FakePoster(), FakeReports(), clock)
    calls = 0

    async def broken(now):
        nonlocal calls
        calls += 1
        raise RuntimeError("database is locked")

    monkeypatch.setattr(store, "due_daily", broken)
    stop = asyncio.Event()

    async def sleep(seconds):
        clock.t += timedelta(seconds=seconds)
        if calls >= 3:
            stop.set()

    d.sleep = sleep
    await d.run(stop)
    assert calls == 3 and "daily dispatch tick failed" in caplog.text


async def test_start_and_stop_background_task(store):
    d = make_dispatcher(store, SimpleNamespace(report=FakeReports()), FakePoster(),
                        SimpleNamespace(schedule=SimpleNamespace(daily_grace_minutes=90, watch_interval_minutes=5)))
    assert d.params.grace == timedelta(minutes=90) and d.params.skew_interval_s == 300
    task = d.start()
    assert d.start() is task
    await asyncio.sleep(0.05)
    await d.stop()
    assert task.done()


def test_params_validation():
    with pytest.raises(ValueError):
        DispatcherParams(tick_s=0)
    with pytest.raises(ValueError):
        DispatcherParams(grace=timedelta(minutes=-1))


def test_skew_classes_used_by_notices_exist():
    assert set(SKEW_CLASSES) == {"heavily_short", "short", "balanced", "long", "heavily_long"}


# -- with the real report service -------------------------------------------------------------------

async def test_real_report_service_over_the_bundled_sample(store):
    from analysis.report import ReportService
    from analysis.sources.registry import make_sources

    service = ReportService(make_sources("sample"))
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster = FakePoster()
    s = await store.add_daily(G, 1, symbols="BTC", window="1d", exchange="all", time="09:00", timezone="UTC",
                              created_by=U, now=clock())
    await store.add_skew_alert(G, 2, symbol="BTC", window="1d", exchange="all", created_by=U)
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    d = make_dispatcher(store, service, poster, None, now=clock)
    await d.tick()
    assert service.computations == 1  # the daily post and the skew check share one report
    (msg,) = poster.messages[1]
    assert msg["png"].startswith(b"\x89PNG") and "BTCUSDT daily liquidation map" in msg["embed"]["description"]
    assert f"liqmap-d{s.id}-2026-06-01-BTCUSDT" in msg["embed"]["footer"]["text"]
    assert d.last_skew.baselines == 1 and poster.count(2) == 0


async def test_a_long_outage_records_a_bounded_number_of_skips(store):
    clock = Clock(datetime(2026, 1, 1, 8, 0, tzinfo=UTC))
    s = await daily(store, clock)
    clock.t = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # five months later, past today's run
    await dispatcher(store, FakePoster(), FakeReports(), clock).run_daily()
    recs = await store.deliveries(s.id)
    assert len(recs) == 31 and all(r.state == "skipped" for r in recs)
    assert (await store.get_daily(s.id)).next_run_at == datetime(2026, 6, 2, 9, 0, tzinfo=UTC)


async def test_a_request_the_service_refuses_pauses_that_subscription_only(store):
    from analysis.errors import InputError

    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, reports = FakePoster(), FakeReports()
    inner = reports.__call__

    async def refusing(symbol, window, exchange):
        if exchange == "coinglass":
            raise InputError("unknown exchange 'coinglass'; choose all or one of binance, bybit, okx")
        return await inner(symbol, window, exchange)

    bad = await daily(store, clock, channel=1, exchange="coinglass")
    good = await daily(store, clock, channel=2)
    w = await store.add_skew_alert(G, 3, symbol="BTC", window="7d", exchange="coinglass", created_by=U)
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    d = dispatcher(store, poster, refusing, clock)
    stats = await d.run_daily()
    assert stats.paused == 1 and poster.count(2) == 1 and poster.count(1) == 0
    got = await store.get_daily(bad.id)
    assert got.paused and "unknown exchange 'coinglass'" in got.paused_reason
    assert not (await store.get_daily(good.id)).paused
    assert (await store.deliveries(bad.id))[0].state == "skipped"
    assert (await d.run_skew()).paused == 1
    assert "unknown exchange" in (await store.get_skew_alert(w.id)).paused_reason


async def test_stop_lets_a_tick_in_progress_finish(store):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    await daily(store, clock)
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    gate = asyncio.Event()
    reports = FakeReports()

    async def slow(symbol, window, exchange):
        await gate.wait()
        return await reports(symbol, window, exchange)

    poster = FakePoster()
    d = dispatcher(store, poster, slow, clock)
    d.start()
    for _ in range(200):  # until the first tick is under way
        await asyncio.sleep(0.01)
        if d._in_tick:
            break
    assert d._in_tick and not reports.calls
    stopping = asyncio.create_task(d.stop(timeout=5))
    await asyncio.sleep(0.05)
    gate.set()
    await stopping
    assert poster.count(1) == 1  # the tick finished its post instead of being cut short


# -- retention (audit issue 8, item 3) --------------------------------------------------------------

async def test_old_delivery_records_are_pruned_once_a_day_and_recent_ones_kept(store):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, reports = FakePoster(), FakeReports()
    s = await daily(store, clock)
    d = dispatcher(store, poster, reports, clock, retention=timedelta(days=5))
    prunes = []
    real = store.prune_deliveries

    async def spy(before, **kw):
        prunes.append((clock(), before))
        return await real(before, **kw)

    store.prune_deliveries = spy
    while clock() < datetime(2026, 6, 12, 8, 0, tzinfo=UTC):
        await d.tick()
        clock.t += timedelta(hours=3)
    assert poster.count(1) == 11  # one post a day, pruning or not
    # once a day, each time with the cutoff `retention` before the clock
    assert [at for at, _ in prunes] == [datetime(2026, 6, 1, 8, 0, tzinfo=UTC) + timedelta(days=i) for i in range(11)]
    assert all(at - before == timedelta(days=5) for at, before in prunes)
    kept = await store.deliveries(s.id)
    assert [x.local_date for x in kept] == [date(2026, 6, i) for i in range(6, 12)]
    assert await store.prune_horizon() == datetime(2026, 6, 6, 8, 0, tzinfo=UTC)


async def test_a_pruned_record_never_lets_its_post_be_made_again(store):
    # a schedule whose next_run_at was not advanced past the pruned day, with the clock set back to it
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, reports = FakePoster(), FakeReports()
    s = await daily(store, clock)
    d = dispatcher(store, poster, reports, clock, retention=timedelta(days=5))
    clock.t = datetime(2026, 6, 1, 9, 1, tzinfo=UTC)
    await d.run_daily()
    assert poster.count(1) == 1
    clock.t = datetime(2026, 6, 8, 9, 1, tzinfo=UTC)
    await d.prune()
    assert await store.deliveries(s.id, date(2026, 6, 1)) == []
    first = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    assert await store.advance(s.id, (await store.get_daily(s.id)).next_run_at, first)  # stuck on the old day
    clock.t = datetime(2026, 6, 1, 9, 5, tzinfo=UTC)  # and the clock set back to it
    stats = await d.run_daily()
    assert poster.count(1) == 1 and stats.posted == 0
    (rec,) = await store.deliveries(s.id, date(2026, 6, 1))
    assert rec.state == "skipped" and "retention" in rec.detail
    assert (await store.get_daily(s.id)).next_run_at == datetime(2026, 6, 2, 9, 0, tzinfo=UTC)


def test_retention_must_cover_the_grace_window_and_the_lease():
    with pytest.raises(ValueError, match="retention"):
        DispatcherParams(retention=timedelta(hours=12))
    with pytest.raises(ValueError, match="retention"):
        DispatcherParams(grace=timedelta(hours=24), retention=timedelta(days=2))
    assert DispatcherParams().retention == timedelta(days=30)


def test_retention_comes_from_the_settings(store):
    sched = SimpleNamespace(daily_grace_minutes=90, watch_interval_minutes=5, delivery_retention_days=45)
    d = make_dispatcher(store, SimpleNamespace(report=FakeReports()), FakePoster(), SimpleNamespace(schedule=sched))
    assert d.params.retention == timedelta(days=45)


# -- blind retries stay inside Discord's nonce window (audit issue 8, item 5) ---------------------

class LoggingPoster(FakePoster):
    """Logs every send and marker search with the fake clock's time. ``created_then_timeout``: that
    many sends create the message and then time out (Discord got it; the answer never came)."""

    def __init__(self, clock, created_then_timeout=0, **kw):
        super().__init__(**kw)
        self.clock = clock
        self.created_then_timeout = created_then_timeout
        self.log: list[tuple[datetime, str, str]] = []  # (time, "post" | "find", marker)

    async def post(self, channel_id, **kw):
        marker = kw["embed"]["footer"]["text"].rsplit(" · ", 1)[-1]
        self.log.append((self.clock(), "post", marker))
        mid = await super().post(channel_id, **kw)
        if self.created_then_timeout > 0:
            self.created_then_timeout -= 1
            raise asyncio.TimeoutError()
        return mid

    async def find_marker(self, channel_id, marker, *, since=None):
        self.log.append((self.clock(), "find", marker))
        return await super().find_marker(channel_id, marker, since=since)


def assert_blind_retries_inside_the_window(log):
    """Every send of a marker later than BLIND_RETRY_WINDOW after its first send is preceded, since
    the previous send, by a marker search."""
    from bot.scheduler import BLIND_RETRY_WINDOW

    first: dict[str, datetime] = {}
    searched: dict[str, bool] = {}
    for at, kind, marker in log:
        if kind == "find":
            searched[marker] = True
        elif marker not in first:
            first[marker], searched[marker] = at, False
        else:
            assert at - first[marker] <= BLIND_RETRY_WINDOW or searched[marker], (marker, at, log)
            searched[marker] = False


@pytest.mark.parametrize("created", [True, False])
async def test_a_send_that_timed_out_is_retried_only_after_a_marker_search(store, created):
    clock = Clock(datetime(2026, 6, 1, 8, 59, tzinfo=UTC))
    poster = LoggingPoster(clock, created_then_timeout=1 if created else 0, fail={} if created else {1: 1})
    await daily(store, clock)
    d = dispatcher(store, poster, FakeReports(), clock)
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    while clock() < datetime(2026, 6, 1, 10, 0, tzinfo=UTC):
        await d.run_daily()
        clock.t += timedelta(minutes=3)  # ticks further apart than the blind-retry window
    assert poster.count(1) == 1  # exactly one message, whether the first send reached Discord or not
    assert_blind_retries_inside_the_window(poster.log)
    assert [k for _, k, _ in poster.log] == (["post", "find"] if created else ["post", "find", "post"])


def test_the_send_timeout_and_lease_keep_blind_retries_inside_the_nonce_window():
    from bot.scheduler import BLIND_RETRY_WINDOW

    p = DispatcherParams()
    assert p.post_timeout_s <= BLIND_RETRY_WINDOW.total_seconds() and p.claim_lease > timedelta(seconds=4 * p.post_timeout_s)
    with pytest.raises(ValueError, match="post_timeout_s"):
        DispatcherParams(post_timeout_s=BLIND_RETRY_WINDOW.total_seconds() + 1)
    with pytest.raises(ValueError, match="claim_lease"):
        DispatcherParams(post_timeout_s=90, claim_lease=timedelta(minutes=6))


def test_retention_setting_defaults_and_bounds(monkeypatch, tmp_path):
    from analysis.errors import InputError
    from bot.settings import load_settings

    monkeypatch.delenv("LIQMAP_DELIVERY_RETENTION_DAYS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_settings(None).schedule.delivery_retention_days == 30
    monkeypatch.setenv("LIQMAP_DELIVERY_RETENTION_DAYS", "90")
    assert load_settings(None).schedule.delivery_retention_days == 90
    monkeypatch.setenv("LIQMAP_DELIVERY_RETENTION_DAYS", "1")
    with pytest.raises(InputError, match="LIQMAP_DELIVERY_RETENTION_DAYS"):
        load_settings(None)


async def test_a_skew_notice_that_timed_out_is_not_resent_blindly_at_the_next_check(store):
    clock = Clock(datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    poster, reports = LoggingPoster(clock, created_then_timeout=1), FakeReports()
    w = await watch(store, 1)
    d = dispatcher(store, poster, reports, clock)
    await d.run_skew()  # baseline
    reports.ratio["BTCUSDT"] = 4.0
    clock.t += timedelta(minutes=15)
    assert (await d.run_skew()).failed == 1  # Discord created it, the answer timed out
    clock.t += timedelta(minutes=15)
    await d.run_skew()
    assert poster.count(1) == 1  # not announced a second time with a new nonce
    assert (await store.get_skew_alert(w.id)).last_class == "heavily_short"


# -- the daily view: map, heatmap or both -------------------------------------------------------------

async def test_each_view_posts_its_pictures_and_each_map_and_heatmap_is_rendered_once(store):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, reports, heats = FakePoster(), FakeReports(), FakeHeatmaps()
    m = await daily(store, clock, channel=1)
    h = await daily(store, clock, channel=2, view="heatmap")
    b = await daily(store, clock, channel=3, view="both")
    await daily(store, clock, channel=4, view="both")
    await daily(store, clock, channel=5, view="heatmap", window="7d")
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    stats = await dispatcher(store, poster, reports, clock, heats).run_daily()
    assert stats.posted == 5
    assert reports.calls == [("BTCUSDT", "1d", "all")]  # one map for the map and both views
    assert sorted(heats.calls) == [("BTCUSDT", "1d", "all"), ("BTCUSDT", "7d", "all")]
    assert stats.renders == 3

    (mm,) = poster.messages[1]
    assert (mm["filename"], mm["png"], mm["extra"]) == ("liqmap.png", b"PNG BTCUSDT 1d all", [])
    assert f"liqmap-d{m.id}-2026-06-01-BTCUSDT" in mm["embed"]["footer"]["text"]

    (hm,) = poster.messages[2]
    assert (hm["filename"], hm["png"], hm["extra"]) == ("heatmap.png", b"HEAT BTCUSDT 1d all", [])
    e = hm["embed"]
    assert e["image"]["url"] == "attachment://heatmap.png" and e["title"] == "Daily BTCUSDT liquidation heatmap · 1d"
    assert e["description"] == "heatmap BTCUSDT 1d"
    assert f"liqmap-d{h.id}-2026-06-01-BTCUSDT" in e["footer"]["text"] and "Estimated" in e["footer"]["text"]

    (bm,) = poster.messages[3]
    assert (bm["filename"], bm["png"]) == ("liqmap.png", b"PNG BTCUSDT 1d all")
    assert bm["embed"]["image"]["url"] == "attachment://liqmap.png"
    assert f"liqmap-d{b.id}-2026-06-01-BTCUSDT" in bm["embed"]["footer"]["text"]  # the marker, in the first embed
    ((he, hpng, hname),) = bm["extra"]
    assert (hname, hpng) == ("heatmap.png", b"HEAT BTCUSDT 1d all") and hpng is hm["png"]  # shared bytes
    assert he["image"]["url"] == "attachment://heatmap.png" and "liqmap-d" not in he["footer"]["text"]
    assert poster.messages[5][0]["png"] == b"HEAT BTCUSDT 7d all"
    for x in (m, h, b):
        assert [r.state for r in await store.deliveries(x.id)] == ["sent"]


async def test_both_views_fit_discords_6000_characters_per_message(store):
    from bot.scheduler import embed_length

    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, heats = FakePoster(), FakeHeatmaps()
    heats.missing = {"okx": "HTTP 500 " * 40}
    s = await daily(store, clock, view="both")
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    d = Dispatcher(store, poster, FakeReports(), now=clock, heatmap=heats,
                   daily_text=lambda rep, prev: "map words " * 500, heatmap_text=lambda st: "heat words " * 300)
    assert (await d.run_daily()).posted == 1
    (msg,) = poster.messages[1]
    ((he, _, _),) = msg["extra"]
    assert embed_length(msg["embed"]) + embed_length(he) <= 6000
    assert len(he["description"]) <= 4096 and msg["embed"]["description"].endswith("…")
    assert he["fields"][0]["name"].startswith("Missing venues") and "okx" in he["fields"][0]["value"]
    assert f"liqmap-d{s.id}-2026-06-01-BTCUSDT" in msg["embed"]["footer"]["text"]  # the marker is never clipped


async def test_a_failing_heatmap_holds_only_the_views_that_need_it_then_skips_them(store):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, reports, heats = FakePoster(), FakeReports(), FakeHeatmaps()
    heats.down["BTCUSDT"] = SourceError("all", "report", "every venue failed (binance: HTTP 503)")
    m = await daily(store, clock, channel=1)
    b = await daily(store, clock, channel=2, view="both")
    h = await daily(store, clock, channel=3, view="heatmap")
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    d = dispatcher(store, poster, reports, clock, heats, tick_s=300)
    stats = await d.run_daily()
    assert stats.posted == 1 and stats.deferred == 2 and poster.count(1) == 1
    assert poster.count(2) == poster.count(3) == 0
    assert await store.deliveries(b.id) == [] and await store.deliveries(h.id) == []  # nothing claimed
    while clock() < datetime(2026, 6, 1, 11, 30, tzinfo=UTC):
        await d.run_daily()
        clock.t += timedelta(minutes=5)
    for x in (b, h):
        (rec,) = await store.deliveries(x.id)
        assert rec.state == "skipped" and "503" in rec.detail
        assert not (await store.get_daily(x.id)).paused
    assert poster.count() == 1 and [r.state for r in await store.deliveries(m.id)] == ["sent"]


async def test_a_heatmap_the_service_refuses_pauses_that_schedule(store):
    from analysis.errors import InputError

    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, heats = FakePoster(), FakeHeatmaps()
    heats.down["BTCUSDT"] = InputError("coinglass serves only a snapshot map; the heatmap needs an estimating venue")
    s = await daily(store, clock, view="heatmap")
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    stats = await dispatcher(store, poster, FakeReports(), clock, heats).run_daily()
    assert stats.paused == 1 and poster.count() == 0
    got = await store.get_daily(s.id)
    assert got.paused and "only a snapshot map" in got.paused_reason
    # a dispatcher built without a heatmap renderer refuses the same way, and says so
    s2 = await daily(store, clock, channel=2, view="both")
    clock.t = datetime(2026, 6, 2, 9, 0, tzinfo=UTC)
    await dispatcher(store, poster, FakeReports(), clock).run_daily()
    assert "no heatmap renderer" in (await store.get_daily(s2.id)).paused_reason


async def test_a_hand_edited_unknown_view_pauses_with_the_valid_ones(store):
    from sqlalchemy import text

    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    s = await daily(store, clock)
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE daily_schedules SET view = 'candles' WHERE id = :i"), {"i": s.id})
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    reports = FakeReports()
    await dispatcher(store, FakePoster(), reports, clock, FakeHeatmaps()).run_daily()
    got = await store.get_daily(s.id)
    assert got.paused and "unknown view 'candles'; choose one of map, heatmap, both" in got.paused_reason
    assert reports.calls == []


@pytest.mark.parametrize("view", ["heatmap", "both"])
async def test_a_crash_after_sending_a_heatmap_view_never_posts_it_twice(url, view):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, heats = FakePoster(crash_after_send=True), FakeHeatmaps()
    st = await Store.open(url)
    s = await daily(st, clock, view=view)
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    with pytest.raises(Crash):
        await dispatcher(st, poster, FakeReports(), clock, heats).run_daily()
    await st.close()
    poster.crash_after_send = False
    st = await Store.open(url)
    try:
        d = dispatcher(st, poster, FakeReports(), clock, heats)
        clock.t += timedelta(minutes=11)  # lease over: found by its marker, recorded, not resent
        stats = await d.run_daily()
        assert poster.count(1) == 1 and stats.recovered == 1 and stats.posted == 0
        (rec,) = await st.deliveries(s.id)
        assert rec.state == "sent" and rec.message_id == poster.messages[1][0]["id"]
    finally:
        await st.close()


async def test_make_dispatcher_posts_the_real_heatmap_of_the_service(store):
    from analysis.report import ReportService
    from analysis.sources.registry import make_sources

    service = ReportService(make_sources("sample"))
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster = FakePoster()
    s = await store.add_daily(G, 1, symbols="BTC", window="1d", exchange="all", time="09:00", timezone="UTC",
                              created_by=U, now=clock(), view="both")
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    d = make_dispatcher(store, service, poster, None, now=clock)
    await d.run_daily()
    assert service.computations == 1 and service.heatmap_computations == 1
    (msg,) = poster.messages[1]
    assert msg["png"].startswith(b"\x89PNG") and "BTCUSDT daily liquidation map" in msg["embed"]["description"]
    ((he, hpng, name),) = msg["extra"]
    assert name == "heatmap.png" and hpng.startswith(b"\x89PNG") and hpng != msg["png"]
    assert "liquidation heatmap" in he["description"] and "estimated" in he["description"]
    assert f"liqmap-d{s.id}-2026-06-01-BTCUSDT" in msg["embed"]["footer"]["text"]


# -- the skew check's reading-only path -------------------------------------------------------------

class FakeReadings:
    """reading(symbol, window, exchange) -> the same reading FakeReports would carry (no PNG)."""

    def __init__(self, reports: FakeReports) -> None:
        self.reports = reports
        self.calls: list[tuple[str, str, str]] = []

    async def __call__(self, symbol, window, exchange):
        self.calls.append((symbol, window, exchange))
        await asyncio.sleep(0)
        return fake_reading(symbol, self.reports.ratio.get(symbol, 1.0), self.reports.end_ms)


async def test_skew_reads_without_rendering_and_renders_only_the_keys_that_announce(store):
    clock = Clock(datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    poster, reports = FakePoster(), FakeReports()
    readings = FakeReadings(reports)
    for ch in range(1, 61):
        await watch(store, ch, symbol=("BTC", "ETH", "SOL")[ch % 3])
    d = dispatcher(store, poster, reports, clock)
    d.reading = readings
    first = await d.run_skew()
    assert first.baselines == 60 and first.readings == 3 and first.renders == 0 and reports.calls == []
    clock.t += timedelta(minutes=15)
    steady = await d.run_skew()
    assert steady.unchanged == 60 and steady.renders == 0 and len(readings.calls) == 6 and reports.calls == []
    reports.ratio["ETHUSDT"] = 0.2
    clock.t += timedelta(minutes=15)
    stats = await d.run_skew()
    assert stats.readings == 3 and stats.renders == 1 and stats.announced == 20 and stats.unchanged == 40
    assert reports.calls == [("ETHUSDT", "7d", "all")]  # one full report, for the key that announces
    pngs = [m["png"] for ch in range(1, 61) for m in poster.messages.get(ch, [])]
    assert len(pngs) == 20 and all(p == b"PNG ETHUSDT 7d all" for p in pngs)  # the full report's chart


async def test_skew_whose_announcing_report_fails_keeps_its_class_and_retries(store):
    clock = Clock(datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    poster, reports = FakePoster(), FakeReports()
    w = await watch(store, 1)
    d = dispatcher(store, poster, reports, clock)

    async def full(symbol, window, exchange):
        if "BTCUSDT" in reports.down:
            raise SourceError("all", "report", "chart renderer busy")
        return await reports(symbol, window, exchange)

    d.report, d.reading = full, FakeReadings(reports)
    await d.run_skew()
    reports.ratio["BTCUSDT"] = 4.0
    reports.down["BTCUSDT"] = "x"
    clock.t += timedelta(minutes=15)
    stats = await d.run_skew()
    assert stats.deferred == 1 and stats.render_failures == 1 and stats.announced == 0 and poster.count() == 0
    assert (await store.get_skew_alert(w.id)).last_class == "balanced"  # unchanged: the next check retries
    del reports.down["BTCUSDT"]
    clock.t += timedelta(minutes=15)
    assert (await d.run_skew()).announced == 1 and poster.count() == 1


async def test_skew_through_the_report_service_renders_only_announcing_keys(store):
    """The real service: readings model the maps once, charts are rendered only for the announcing key."""
    from analysis.report import ReportService
    from bot.scheduler import make_dispatcher
    from analysis.sources import SampleSource

    class Relabelled(SampleSource):
        """The bundled sample under any symbol."""

        async def bars(self, symbol, window):
            return dataclasses.replace(await super().bars("BTCUSDT", window), symbol=symbol)

    svc = ReportService({"binance": Relabelled()}, ttl=0)
    clock = Clock(datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    poster = FakePoster()
    for ch, sym in ((1, "BTC"), (2, "ETH"), (3, "ETH")):
        await store.add_skew_alert(G, ch, symbol=sym, window="1d", exchange="all", created_by=U)
    d = make_dispatcher(store, svc, poster, now=clock, sleep=clock.sleep)
    assert (await d.run_skew()).baselines == 3
    assert svc.renderer.stats.submitted == 0 and svc.computations == 0 and svc.map_computations == 2
    # make ETH's stored class differ from what its map says, so the next check announces it
    eth = [w for w in await store.active_skew_alerts() if w.symbol == "ETHUSDT"]
    real = eth[0].last_class
    other = "heavily_long" if real != "heavily_long" else "heavily_short"
    for w in eth:
        assert await store.set_skew_alert_class(w.id, expected=real, new=other, ratio=None, announced_at=None)
    clock.t += timedelta(minutes=15)
    stats = await d.run_skew()
    assert stats.readings == 2 and stats.renders == 1 and stats.announced == 2
    assert svc.renderer.stats.submitted == 1 and svc.computations == 1  # one chart, for ETH only
    assert poster.count(1) == 0 and poster.messages[2][0]["png"][:8] == b"\x89PNG\r\n\x1a\n"
