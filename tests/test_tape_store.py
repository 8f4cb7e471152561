"""The tape in the database (bot/tape_store.py): events, gaps, reads, retention, migration, SQL."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest

from test_store import HEAD
from sqlalchemy import text

from analysis.errors import InputError
from analysis.tape.events import Gap, LiquidationEvent
from bot.store import Store
from bot.tape_store import EVENTS_CAP, HOUR_MS, TapeRunner, TapeStore, check_event, needed_symbols, parse_venues

T0 = 1_764_633_600_000  # 2025-12-02 00:00 UTC
WALL = T0 + 10 * 86_400_000


def ev(i: int, *, venue="bybit", symbol="BTCUSDT", t=None, side="long", price=90_000.0, qty=0.01, **kw) -> LiquidationEvent:
    fields = dict(venue=venue, symbol=symbol, time_ms=T0 + i * 1000 if t is None else t, side=side, price=price,
                  qty=qty, usd=price * qty, sampled=venue != "bybit", key=f"{venue}-{i}")
    fields.update(kw)
    return LiquidationEvent(**fields)


@pytest.fixture
async def tape(url):
    t = await TapeStore.open(url, wall_ms=lambda: WALL)
    yield t
    await t.close()


async def test_round_trip_oldest_first_and_filtered(tape):
    batch = [ev(3), ev(1, side="short"), ev(2, venue="okx"), ev(4, symbol="ETHUSDT", price=3000.0)]
    assert await tape.write_events(batch) == 4
    got = await tape.events("BTCUSDT", T0, T0 + 10_000)
    assert [e.key for e in got] == ["bybit-1", "okx-2", "bybit-3"]
    assert got[0] == ev(1, side="short")  # every field survives, floats exactly
    assert [e.key for e in await tape.events("BTCUSDT", T0, T0 + 10_000, venues=["okx"])] == ["okx-2"]
    assert [e.key for e in await tape.events("BTCUSDT", T0 + 2000, T0 + 3000)] == ["okx-2"]  # end exclusive
    assert [e.key for e in await tape.events("ETHUSDT", T0, T0 + 10_000)] == ["bybit-4"]


async def test_duplicates_within_and_across_batches_store_once(tape):
    assert await tape.write_events([ev(1), ev(2), ev(1)]) == 2
    assert await tape.write_events([ev(2), ev(3)]) == 1  # a replay after a reconnect
    assert await tape.write_events([ev(1, venue="okx")]) == 1  # same key string, other venue: distinct
    assert (await tape.counts())[0] == 4
    assert (tape.stored, tape.duplicates) == (4, 2)


@pytest.mark.parametrize("bad, field", [
    (dict(price=math.nan), "price"), (dict(price=-1.0), "price"), (dict(qty=0.0), "qty"),
    (dict(usd=math.inf), "usd"), (dict(usd=True), "usd"), (dict(side="buy"), "side"),
    (dict(t=123), "time_ms"), (dict(t=WALL + 2 * 86_400_000), "time_ms"), (dict(t=float(T0)), "time_ms"),
    (dict(symbol="btc-usdt"), "symbol"), (dict(venue=""), "venue"), (dict(key=""), "key"),
    (dict(key="x" * 200), "key"), (dict(key="a\nb"), "key"), (dict(sampled="yes"), "sampled"),
])
async def test_a_bad_row_is_counted_and_skipped_and_the_batch_still_stored(tape, bad, field, caplog):
    wrong = ev(9, **bad)
    assert check_event(wrong, WALL) == field
    assert await tape.write_events([ev(1), wrong, ev(2)]) == 2
    assert tape.rejected == 1
    assert [e.key for e in await tape.events("BTCUSDT", T0, WALL)] == ["bybit-1", "bybit-2"]
    assert f"bad {field}: 1" in caplog.text
    assert await tape.write_events(["not an event"]) == 0  # type: ignore[list-item]


def test_another_database_is_refused():
    from bot.tape_store import insert_events_stmt

    with pytest.raises(InputError, match="SQLite or PostgreSQL, not mysql"):
        insert_events_stmt("mysql")


async def test_an_empty_or_all_bad_batch_writes_nothing(tape):
    assert await tape.write_events([]) == 0
    assert await tape.write_events([ev(1, price=0.0)]) == 0
    assert (await tape.counts())[0] == 0


async def test_large_batches_are_split_under_the_parameter_limit(tape):
    assert await tape.write_events([ev(i) for i in range(1234)]) == 1234
    assert len(await tape.events("BTCUSDT", T0, WALL)) == 1234


async def test_gap_upsert_closes_an_open_gap_and_keeps_its_end(tape):
    await tape.write_gap(Gap("okx", None, T0, None, "disconnected"))
    await tape.write_gap(Gap("okx", "BTCUSDT", T0, None, "subscribe refused"))  # a different key
    assert [(g.symbol, g.end_ms) for g in await tape.gaps(T0, WALL)] == [(None, None), ("BTCUSDT", None)]
    await tape.write_gap(Gap("okx", None, T0, T0 + 5000, "reconnected\nafter  5 s"))
    await tape.write_gap(Gap("okx", None, T0, None, "late open replay"))  # never reopens a closed gap
    (whole, one) = await tape.gaps(T0, WALL)
    assert (whole.symbol, whole.end_ms, whole.reason) == (None, T0 + 5000, "late open replay")
    assert (one.symbol, one.end_ms) == ("BTCUSDT", None)
    assert (await tape.counts())[1] == 2


async def test_gap_reads_overlap_and_open_gaps_run_to_now(tape):
    await tape.write_gap(Gap("bybit", None, T0, T0 + 1000, "a"))
    await tape.write_gap(Gap("binance", None, T0 + 5000, None, "b"))
    assert [g.reason for g in await tape.gaps(T0 + 1000, T0 + 2000)] == []  # ended exactly at the start
    assert [g.reason for g in await tape.gaps(T0 + 999, T0 + 2000)] == ["a"]
    assert [g.reason for g in await tape.gaps(WALL - 1, WALL)] == ["b"]  # open: still running
    assert [g.reason for g in await tape.gaps(T0, WALL, venues=["bybit"])] == ["a"]
    assert await tape.close_open_gaps(["binance"], WALL) == 1
    assert (await tape.gaps(T0, WALL + 1, venues=["binance"]))[0].end_ms == WALL


@pytest.mark.parametrize("gap", [
    Gap("okx", None, T0, T0 - 1, "ends before it starts"), Gap("okx", "btc", T0, None, "x"),
    Gap("OKX!", None, T0, None, "x"), Gap("okx", None, 5, None, "x"),
])
async def test_a_malformed_gap_is_refused_clearly(tape, gap):
    with pytest.raises(InputError, match="gap"):
        await tape.write_gap(gap)


async def test_reads_are_bounded_and_validated(tape):
    await tape.write_events([ev(i) for i in range(10)])
    assert [e.key for e in await tape.events("BTCUSDT", T0, WALL, limit=3)] == ["bybit-0", "bybit-1", "bybit-2"]
    for kw in (dict(limit=0), dict(limit=EVENTS_CAP + 1)):
        with pytest.raises(InputError, match="limit"):
            await tape.events("BTCUSDT", T0, WALL, **kw)
    with pytest.raises(InputError, match="start_ms <= end_ms"):
        await tape.events("BTCUSDT", WALL, T0)
    with pytest.raises(InputError, match="canonical"):
        await tape.events("BTC'; drop table tape_events; --", T0, WALL)
    with pytest.raises(InputError, match="unknown tape venue 'kraken'"):
        await tape.totals("BTCUSDT", T0, WALL, venues=["kraken"])


async def test_totals_and_hourly_sums(tape):
    await tape.write_events([
        ev(1, qty=1.0, price=100.0), ev(2, qty=2.0, price=100.0), ev(3, side="short", qty=1.0, price=200.0),
        ev(4, venue="okx", qty=3.0, price=100.0), ev(3601, qty=1.0, price=50.0), ev(5, symbol="ETHUSDT"),
    ])
    tot = {(t.venue, t.side): t for t in await tape.totals("BTCUSDT", T0, WALL)}
    assert set(tot) == {("bybit", "long"), ("bybit", "short"), ("okx", "long")}
    assert (tot["bybit", "long"].count, tot["bybit", "long"].usd, tot["bybit", "long"].qty) == (3, 350.0, 4.0)
    assert tot["okx", "long"].sampled and not tot["bybit", "long"].sampled
    hours = [(h.hour_ms, h.venue, h.side, h.count, h.usd) for h in await tape.hourly("BTCUSDT", T0, WALL)]
    assert hours == [(T0, "bybit", "long", 2, 300.0), (T0, "bybit", "short", 1, 200.0),
                     (T0, "okx", "long", 1, 300.0), (T0 + HOUR_MS, "bybit", "long", 1, 50.0)]


async def test_prune_deletes_old_rows_in_bounded_batches(tape):
    await tape.write_events([ev(i) for i in range(25)])
    await tape.write_gap(Gap("bybit", None, T0, T0 + 1000, "old, closed"))
    await tape.write_gap(Gap("okx", None, T0, None, "old but still open: kept"))
    cut = T0 + 20_000  # events 0..19 are older
    assert await tape.prune(cut, batch=4, max_batches=2) == 8 + 1  # bounded: 8 events, then the closed gap
    assert (await tape.counts()) == (17, 1)
    assert await tape.prune(cut, batch=4, max_batches=100) == 12
    assert [e.key for e in await tape.events("BTCUSDT", T0, WALL)][:1] == ["bybit-20"]
    assert await tape.prune(cut) == 0
    with pytest.raises(ValueError):
        await tape.prune(cut, batch=0)


async def test_migration_from_0003_keeps_existing_data(url):
    from alembic import command

    from bot.store import alembic_config

    old = await Store.open(url, migrate=False)

    def up(sync_conn):
        cfg = alembic_config()
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, "0003_delivery_retention")

    async with old.engine.begin() as conn:
        await conn.run_sync(up)
    await old.close()
    st = await Store.open(url)
    try:  # the 0003 tables filled in, then the tape upgrade runs on open
        d = await st.add_daily(1, 2, symbols="SOL", window="1d", exchange="all", time="09:30",
                               timezone="UTC", created_by=3)
    finally:
        await st.close()
    st = await Store.open(url)
    tape = TapeStore(st.engine)
    try:
        assert [x.id for x in await st.list_daily(1)] == [d.id]
        assert await tape.write_events([ev(1)]) == 1
        async with st.engine.connect() as conn:
            assert (await conn.execute(text("select version_num from alembic_version"))).scalar_one() == HEAD
        assert await needed_symbols(st.engine) == ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    finally:
        await tape.close()  # a shared engine is left to its owner
        await st.close()


async def test_migration_0003_to_0006_with_rows_then_downgrade(tmp_path):
    from alembic import command

    from bot.store import alembic_config

    url = f"sqlite+aiosqlite:///{tmp_path / 'm.sqlite3'}"
    st = await Store.open(url)
    await st.add_skew_alert(1, 2, symbol="ETH", window="7d", exchange="all", created_by=3)
    tape = TapeStore(st.engine)
    await tape.write_events([ev(1)])

    def down(sync_conn):
        cfg = alembic_config()
        cfg.attributes["connection"] = sync_conn
        command.downgrade(cfg, "0003_delivery_retention")

    async with st.engine.begin() as conn:
        await conn.run_sync(down)
        tables = {r[0] for r in await conn.execute(text("select name from sqlite_master where type='table'"))}
        kept = (await conn.execute(text("select count(*) from skew_watches"))).scalar_one()
    assert "tape_events" not in tables and "skew_watches" in tables and "skew_alerts" not in tables
    assert kept == 1  # (0008 renamed the table back on the way down)
    await st.close()


def test_postgresql_sql_compiles_with_on_conflict():
    """The same statements the SQLite tests run, compiled for PostgreSQL (no driver needed)."""
    from sqlalchemy.dialects import postgresql

    from bot.tape_store import insert_events_stmt, upsert_gap_stmt

    sql = str(insert_events_stmt("postgresql").compile(dialect=postgresql.dialect()))
    assert sql.startswith("INSERT INTO tape_events (id, venue, symbol, time_ms, side, price, qty, usd, sampled, key)")
    assert "ON CONFLICT (venue, key) DO NOTHING RETURNING tape_events.id" in sql
    sql = str(upsert_gap_stmt("postgresql", Gap("okx", None, T0, None, "r")).compile(dialect=postgresql.dialect()))
    assert "ON CONFLICT (venue, symbol, start_ms) DO UPDATE SET end_ms = coalesce(excluded.end_ms, tape_gaps.end_ms)" in sql


def test_postgresql_migration_renders_offline():
    """The tape migration as PostgreSQL DDL (alembic --sql: no server, no driver)."""
    import io

    from alembic import command
    from bot.store import alembic_config

    cfg = alembic_config("postgresql+asyncpg://bot:p@db.example/liqmap")
    cfg.output_buffer = io.StringIO()
    command.upgrade(cfg, "head", sql=True)
    ddl = cfg.output_buffer.getvalue()
    assert "id BIGSERIAL NOT NULL" in ddl and "time_ms BIGINT NOT NULL" in ddl
    assert "CONSTRAINT uq_tape_event UNIQUE (venue, key)" in ddl
    assert "CREATE INDEX ix_tape_events_symbol_time ON tape_events (symbol, time_ms)" in ddl


def test_parse_venues():
    assert parse_venues(None) == ("bybit", "binance", "okx")
    assert parse_venues(" OKX, bybit,okx ") == ("okx", "bybit")
    with pytest.raises(InputError, match="choose from bybit, binance, okx"):
        parse_venues("bybit,ftx")


# -- the runner (recorder wiring, with a fake recorder of the documented API) -----------------------

@dataclasses.dataclass
class FakeStatus:
    connected: bool


class FakeRecorder:
    """The ``analysis.tape.recorder.Recorder`` API: writes a few events and a gap, then waits for stop."""

    made: list["FakeRecorder"] = []

    def __init__(self, sink, venues, symbols, *, urls=None, params=None) -> None:
        self.sink, self.venues, self.symbols, self.urls = sink, tuple(venues), tuple(symbols), urls
        self.stopped = False
        FakeRecorder.made.append(self)

    async def run(self, stop: asyncio.Event) -> None:
        await self.sink.write_events([ev(1), ev(2), ev(2)])
        await self.sink.write_gap(Gap("okx", None, T0, T0 + 500, "reconnect"))
        await stop.wait()
        self.stopped = True

    def status(self):
        return {v: FakeStatus(v != "okx") for v in self.venues}


async def test_runner_records_prunes_reports_and_marks_the_stop(tape):
    await tape.write_gap(Gap("bybit", None, T0 - 5000, None, "left open by a crash"))
    await tape.write_events([ev(i, t=WALL - 40 * 86_400_000 + i) for i in range(100, 103)])  # past retention
    lines: list[str] = []
    runner = TapeRunner(tape, ["bybit", "okx"], ["BTCUSDT"], urls={"okx": "ws://127.0.0.1:1"}, status=lines.append,
                        status_s=0.01, recorder_factory=FakeRecorder, wall_ms=lambda: WALL)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if lines and runner.sink.events == 2:
            break
    stop.set()
    await asyncio.wait_for(task, 5)
    rec = FakeRecorder.made[-1]
    assert rec.stopped and rec.venues == ("bybit", "okx") and rec.urls == {"okx": "ws://127.0.0.1:1"}
    assert runner.pruned == 3
    assert "connected bybit (1/2); 2 new events, 1 gap(s) written" in lines[0]
    assert "2 new events, 3 gap(s) written" in lines[-1]  # the final line counts the stop gaps
    gaps = await tape.gaps(T0 - 10_000, WALL + 1)
    assert (gaps[0].reason, gaps[0].end_ms) == ("left open by a crash", WALL)  # closed at the restart
    stops = [g for g in gaps if g.reason == "recorder stopped"]
    assert sorted(g.venue for g in stops) == ["bybit", "okx"] and all(g.end_ms is None for g in stops)


async def test_runner_surfaces_a_recorder_failure_after_marking_the_stop(tape):
    class Broken(FakeRecorder):
        async def run(self, stop):
            raise RuntimeError("boom")

    runner = TapeRunner(tape, ["bybit"], ["BTCUSDT"], recorder_factory=Broken, wall_ms=lambda: WALL)
    with pytest.raises(RuntimeError, match="boom"):
        await runner.run(asyncio.Event())
    assert [g.reason for g in await tape.gaps(T0, WALL + 1)] == ["recorder stopped"]


async def test_a_transient_database_error_is_retried_and_a_lasting_one_raised(tape, monkeypatch, caplog):
    from sqlalchemy.exc import OperationalError

    import bot.tape_store as ts

    monkeypatch.setattr(ts, "WRITE_RETRIES", (0.0, 0.0))
    real = tape._insert_rows
    fails = [2]

    async def flaky(rows):
        if fails[0]:
            fails[0] -= 1
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return await real(rows)

    monkeypatch.setattr(tape, "_insert_rows", flaky)
    assert await tape.write_events([ev(1), ev(2)]) == 2  # the third try succeeds
    assert caplog.text.count("database write failed (OperationalError)") == 2
    fails[0] = 3
    with pytest.raises(OperationalError):  # the recorder keeps the batch and tries again later
        await tape.write_events([ev(3)])
    assert await tape.write_events([ev(3), ev(1)]) == 1  # and nothing is doubled


# -- coverage (migration 0008) ------------------------------------------------------------------------

async def test_coverage_spans_open_extend_read_and_prune(tape):
    from analysis.tape.events import Coverage

    assert not await tape.has_tape()
    await tape.open_coverage(["bybit", "okx"], ["BTCUSDT", "ETHUSDT"], T0)
    await tape.open_coverage(["bybit"], ["BTCUSDT"], T0)  # idempotent
    assert await tape.has_tape()
    assert await tape.extend_coverage(["bybit", "okx"], T0, T0 + HOUR_MS) == 4
    assert await tape.extend_coverage(["bybit"], T0, T0 + 60_000) == 0  # a span never shrinks
    assert await tape.coverage("BTCUSDT", T0, T0 + 2 * HOUR_MS) == [
        Coverage("bybit", "BTCUSDT", T0, T0 + HOUR_MS), Coverage("okx", "BTCUSDT", T0, T0 + HOUR_MS)]
    assert await tape.coverage("BTCUSDT", T0 + HOUR_MS, T0 + 2 * HOUR_MS) == []  # ended at the start: no overlap
    assert [c.venue for c in await tape.coverage("ETHUSDT", T0, T0 + 1, venues=["okx"])] == ["okx"]
    with pytest.raises(InputError):
        await tape.coverage("btc", T0, T0 + 1)
    with pytest.raises(InputError):
        await tape.open_coverage(["bybit"], ["not a symbol"], T0)
    assert await tape.prune(T0 + HOUR_MS + 1) == 4
    assert await tape.coverage("BTCUSDT", 0, WALL) == []


async def test_runner_covers_its_run_with_heartbeats_and_ends_the_spans_at_the_stop(tape):
    now = [WALL]
    runner = TapeRunner(tape, ["bybit", "okx"], ["BTC"], status_s=3600, coverage_s=0.01,
                        recorder_factory=FakeRecorder, wall_ms=lambda: now[0])
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    for _ in range(300):
        await asyncio.sleep(0.01)
        now[0] += 1000
        spans = await tape.coverage("BTCUSDT", WALL, WALL + 10**9)
        if spans and min(c.end_ms for c in spans) >= WALL + 5000:
            break
    spans = await tape.coverage("BTCUSDT", WALL, WALL + 10**9)
    assert sorted(c.venue for c in spans) == ["bybit", "okx"] and all(c.start_ms == WALL for c in spans)
    assert all(c.end_ms >= WALL + 5000 for c in spans)  # the heartbeat extends them while it runs
    assert all(c.end_ms <= now[0] for c in spans)  # never ahead of the clock (a killed run ends at its last beat)
    stop.set()
    await asyncio.wait_for(task, 5)
    # a clean stop ends them at the stop time
    runner = TapeRunner(tape, ["bybit"], ["BTCUSDT"], status_s=3600, recorder_factory=FakeRecorder,
                        wall_ms=lambda: now[0])
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.sleep(0.05)
    start = runner.run_start_ms
    now[0] += 120_000
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [(c.start_ms, c.end_ms) for c in await tape.coverage("BTCUSDT", start, start + 1)] == [(start, start + 120_000)]
