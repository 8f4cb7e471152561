"""The dispatcher keeps the reading behind each posted daily report and passes the last one as
``previous`` to the next report's text: per (schedule, symbol), loaded once per tick."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np

from analysis.liqmap import PricePath
from bot.scheduler import Dispatcher, DispatcherParams
from bot.store import Store
from test_commentary import cluster, make_map, make_reading
from test_scheduler import Clock, FakePoster, FakeReports, daily, store  # noqa: F401  (store: the fixture)

UTC = timezone.utc
DAY_MS = 86_400_000


class Texts:
    """daily_text that records the previous reading it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def __call__(self, rep, prev):
        self.calls.append((rep.symbol, prev))
        return f"daily {rep.symbol} prev {None if prev is None else prev.end_ms}"


def make(store, poster, reports, clock, texts, **kw) -> Dispatcher:
    return Dispatcher(store, poster, reports, params=DispatcherParams(), now=clock, sleep=clock.sleep,
                      daily_text=texts, notice_text=lambda old, r, m: "notice", **kw)


class CountingStore:
    """The real store, counting latest_readings calls."""

    def __init__(self, inner: Store) -> None:
        self.inner, self.loads = inner, 0

    async def latest_readings(self, keys):
        self.loads += 1
        return await self.inner.latest_readings(keys)

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def test_the_second_day_gets_the_first_days_reading_as_previous(store):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, reports, texts = FakePoster(), FakeReports(), Texts()
    a = await daily(store, clock, symbols="BTC, ETH")
    b = await daily(store, clock, channel=2, time="10:00")  # same key, its own history
    counting = CountingStore(store)
    d = make(counting, poster, reports, clock, texts)
    clock.t = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    await d.run_daily()
    # no previous anywhere: one text per key (a's BTC and b's BTC share it)
    assert [p for _, p in texts.calls] == [None, None] and counting.loads == 1
    assert [r.symbol for r in await store.readings(a.id)] == ["BTCUSDT", "ETHUSDT"]
    kept = json.loads((await store.readings(b.id))[0].record)
    assert kept["format"] == "liqmap.reading" and kept["end_ms"] == reports.end_ms

    texts.calls.clear()
    first = reports.end_ms
    reports.end_ms += DAY_MS
    reports.ratio["BTCUSDT"] = 4.0
    clock.t = datetime(2026, 6, 2, 10, 0, tzinfo=UTC)
    await d.run_daily()
    assert counting.loads == 2  # one load per tick, not per channel
    got = {(sym, p.end_ms, p.imbalance) for sym, p in texts.calls}
    # the BTC text is built once per distinct previous reading: schedules a and b each have their own
    assert sorted(got) == [("BTCUSDT", first, 1.0), ("ETHUSDT", first, 1.0)] and len(texts.calls) == 3
    assert sorted(m["embed"]["description"] for m in poster.messages[1][-2:]) == [
        f"daily BTCUSDT prev {first}", f"daily ETHUSDT prev {first}"]
    latest = await store.latest_readings([(a.id, "BTCUSDT")])
    assert json.loads(latest[(a.id, "BTCUSDT")].record)["skew"] == "heavily_short"


async def test_no_reading_is_kept_for_a_post_recovered_after_a_crash(store):
    from test_scheduler import Crash

    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, reports = FakePoster(crash_after_send=True), FakeReports()
    s = await daily(store, clock)
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    d = make(store, poster, reports, clock, Texts())
    try:
        await d.run_daily()
    except Crash:
        pass
    poster.crash_after_send = False
    clock.t += timedelta(minutes=11)  # past the lease: verified by marker, recorded sent
    await d.run_daily()
    assert [x.state for x in await store.deliveries(s.id)] == ["sent"] and poster.count(1) == 1
    assert await store.readings(s.id) == []  # what that post said is not known for sure: nothing kept


async def test_a_bad_kept_record_or_one_that_cannot_be_made_never_stops_the_report(store, caplog):
    from bot.store import ReadingIn

    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, reports, texts = FakePoster(), FakeReports(), Texts()
    s = await daily(store, clock, symbols="BTC, ETH")
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    await store.finish_many([], now=clock(), readings=[
        ReadingIn(s.id, "BTCUSDT", clock().date(), "{not json"),
        ReadingIn(s.id, "ETHUSDT", clock().date(), json.dumps({"format": "liqmap.reading", "version": 99}))])
    reports.ratio["BTCUSDT"] = float("inf")  # a reading whose record cannot be written (short total infinite)
    reports.ratio["ETHUSDT"] = 2.0

    def unrecordable(rep):
        from analysis.readings import dumps_record

        return dumps_record(replace(rep.reading, short_in_band=float("nan")) if rep.symbol == "BTCUSDT" else rep.reading)

    d = make(store, poster, reports, clock, texts, reading_record=unrecordable)
    await d.run_daily()
    assert poster.count(1) == 2 and [p for _, p in texts.calls] == [None, None]
    assert "is not used" in caplog.text and "is not kept" in caplog.text
    kept = {r.symbol: json.loads(r.record) for r in await store.readings(s.id) if r.record.startswith('{"format')}
    assert set(kept) == {"ETHUSDT"} and kept["ETHUSDT"]["version"] == 1


async def test_removed_schedule_and_changed_symbols_do_not_crash(store):
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster, reports, texts = FakePoster(), FakeReports(), Texts()
    a = await daily(store, clock, symbols="BTC")
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    d = make(store, poster, reports, clock, texts)
    await d.run_daily()
    await store.remove_daily(1000, a.id)
    assert await store.readings(a.id) == []
    # the channel's new schedule for other symbols starts without a previous reading
    b = await daily(store, clock, symbols="ETH, BTC", time="10:00")
    clock.t = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    texts.calls.clear()
    await d.run_daily()
    assert [p for _, p in texts.calls] == [None, None] and len(await store.readings(b.id)) == 2


async def test_real_daily_text_says_what_changed_since_the_posted_report(store):
    """The default text (analysis.commentary.daily) with a real map: the second post names the change."""
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    poster = FakePoster()
    day = {"n": 0}
    end = 1_782_128_700_000

    async def report(symbol, window, exchange):
        from types import SimpleNamespace

        n = day["n"]
        if n == 0:
            r = make_reading(1e8, 1e8, clusters=(cluster("long", 63_500, 2e8),))
        else:
            r = make_reading(3e8, 1e8, clusters=(cluster("long", 63_500, 2e8), cluster("short", 66_800, 2.5e8)))
        r = replace(r, end_ms=end + n * DAY_MS)
        t = end + (n - 1) * DAY_MS + 3_600_000 * np.arange(24, dtype=np.int64)
        low = np.full(24, 64_000.0)
        low[5] = 63_400.0
        m = replace(make_map(), end_ms=r.end_ms, path=PricePath(t, np.full(24, 64_700.0), low, 3_600_000))
        return SimpleNamespace(symbol=symbol, png=b"PNG", reading=r, map=m, missing={}, summary="")

    await daily(store, clock)
    clock.t = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    d = Dispatcher(store, poster, report, params=DispatcherParams(), now=clock, sleep=clock.sleep)
    await d.run_daily()
    assert "Since the last report" not in poster.messages[1][0]["embed"]["description"]
    day["n"] = 1
    clock.t += timedelta(days=1)
    await d.run_daily()
    text = poster.messages[1][1]["embed"]["description"]
    assert "**Since the last report (data to 2026-06-22 11:45 UTC)**" in text
    assert "• Skew: balanced → heavily short-skewed" in text
    assert "• Shorts within +5%: $100M → $300M (+200%)" in text
    assert "• New short cluster: ~$250M around $66,800 (+3.4%)." in text
    assert "• Swept: the long cluster of ~$200M around $63,500 (price low since then $63,400)." in text
