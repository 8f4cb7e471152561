"""bot.store's daily readings: kept with the delivery outcome, the latest few per (schedule, symbol),
loaded in one query, gone with their schedule; migration 0005 over a database with rows."""

from __future__ import annotations

from datetime import date, datetime, timezone

from sqlalchemy import text

from bot.store import KEEP_READINGS, Claim, Outcome, ReadingIn, Store
from test_store import HEAD, C, G, NOW, U, _schema_at, add_daily

UTC = timezone.utc
DAY = date(2026, 3, 1)


async def claimed(store, sched, symbol="BTCUSDT", day=DAY):
    from datetime import timedelta

    won = await store.claim_many([Claim(sched, day, symbol, NOW)], now=NOW, lease=timedelta(minutes=10))
    return won[0][0]


async def test_reading_is_kept_in_the_same_call_as_the_outcome_and_read_back(url):
    store = await Store.open(url)
    try:
        s = await add_daily(store, symbols="BTC, ETH")
        d = await claimed(store, s)
        await store.finish_many([Outcome(d.id, "sent", message_id=9, attempts=d.attempts)], now=NOW,
                                readings=[ReadingIn(s.id, "BTCUSDT", DAY, '{"x": 1}')])
        assert (await store.deliveries(s.id))[0].state == "sent"
        got = await store.latest_readings([(s.id, "BTCUSDT"), (s.id, "ETHUSDT"), (0, "BTCUSDT"), (2**40, "X")])
        assert list(got) == [(s.id, "BTCUSDT")]
        r = got[(s.id, "BTCUSDT")]
        assert (r.record, r.local_date, r.posted_at, r.symbol) == ('{"x": 1}', DAY, NOW, "BTCUSDT")
        assert await store.latest_readings([]) == {}
    finally:
        await store.close()


async def test_only_the_latest_few_are_kept_per_schedule_and_symbol(url):
    store = await Store.open(url)
    try:
        a = await add_daily(store, symbols="BTC, ETH")
        b = await add_daily(store, symbols="BTC", channel=C + 1)
        for i in range(KEEP_READINGS + 3):
            await store.finish_many([], now=NOW, readings=[
                ReadingIn(a.id, "BTCUSDT", date(2026, 3, 1 + i), f'"a{i}"'),
                ReadingIn(a.id, "ETHUSDT", date(2026, 3, 1 + i), f'"e{i}"'),
                ReadingIn(b.id, "BTCUSDT", date(2026, 3, 1 + i), f'"b{i}"'),
            ])
        n = KEEP_READINGS + 3
        assert [r.record for r in await store.readings(a.id, "BTCUSDT")] == [f'"a{i}"' for i in range(3, n)]
        assert len(await store.readings(a.id)) == 2 * KEEP_READINGS
        latest = await store.latest_readings([(a.id, "BTCUSDT"), (a.id, "ETHUSDT"), (b.id, "BTCUSDT")])
        assert {k: v.record for k, v in latest.items()} == {
            (a.id, "BTCUSDT"): f'"a{n - 1}"', (a.id, "ETHUSDT"): f'"e{n - 1}"', (b.id, "BTCUSDT"): f'"b{n - 1}"'}
        # an oversized record is not kept (the dispatcher never makes one; the table stays bounded)
        await store.finish_many([], now=NOW, readings=[ReadingIn(b.id, "BTCUSDT", DAY, "x" * (1 << 17))])
        assert (await store.latest_readings([(b.id, "BTCUSDT")]))[(b.id, "BTCUSDT")].record == f'"b{n - 1}"'
    finally:
        await store.close()


async def test_a_removed_schedule_takes_its_readings_and_a_late_reading_for_it_is_dropped(url):
    store = await Store.open(url)
    try:
        a = await add_daily(store)
        b = await add_daily(store, channel=C + 1)
        await store.finish_many([], now=NOW, readings=[ReadingIn(a.id, "BTCUSDT", DAY, '"a"')])
        d = await claimed(store, b)
        await store.remove_daily(G, a.id)
        assert await store.readings(a.id) == []
        # a tick that posted for both before `a` was removed: b's outcome and reading still land
        await store.finish_many([Outcome(d.id, "sent", message_id=5, attempts=d.attempts)], now=NOW, readings=[
            ReadingIn(a.id, "BTCUSDT", DAY, '"late"'), ReadingIn(b.id, "BTCUSDT", DAY, '"b"')])
        assert (await store.deliveries(b.id))[0].state == "sent"
        assert [r.record for r in await store.readings(b.id)] == ['"b"'] and await store.readings(a.id) == []
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("select count(*) from daily_readings"))).scalar_one() == 1
    finally:
        await store.close()


async def test_migration_0005_from_0003_keeps_existing_rows(url):
    old = await _schema_at(url, "0003_delivery_retention")
    async with old.engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO daily_schedules (id, guild_id, channel_id, symbols, \"window\", exchange, local_time, timezone, "
            "next_run_at, created_by, created_at) VALUES (7, :g, :c, 'BTCUSDT', '1d', 'all', '09:30', 'UTC', :n, :u, :n)"),
            {"g": G, "c": C, "u": U, "n": datetime(2026, 3, 2, 9, 30)})
        await conn.execute(text(
            "INSERT INTO deliveries (id, schedule_id, local_date, symbol, channel_id, state, marker, nonce, attempts, "
            "due_at) VALUES (3, 7, :d, 'BTCUSDT', :c, 'sent', 'liqmap-d7-2026-03-01-BTCUSDT', 'n3', 1, :due)"),
            {"d": DAY, "c": C, "due": datetime(2026, 3, 1, 9, 30)})
    await old.close()
    st = await Store.open(url)  # upgrades to head
    try:
        async with st.engine.connect() as conn:
            assert (await conn.execute(text("select version_num from alembic_version"))).scalar_one() == HEAD
        assert [d.id for d in await st.list_daily(G)] == [7]
        assert [(x.id, x.state) for x in await st.deliveries(7)] == [(3, "sent")]
        assert await st.latest_readings([(7, "BTCUSDT")]) == {}
        await st.finish_many([], now=NOW, readings=[ReadingIn(7, "BTCUSDT", DAY, '"r"')])
        assert (await st.latest_readings([(7, "BTCUSDT")]))[(7, "BTCUSDT")].record == '"r"'
    finally:
        await st.close()


def test_migration_0005_renders_for_postgresql_offline():
    import io

    from alembic import command

    from bot.store import alembic_config

    cfg = alembic_config("postgresql+asyncpg://bot@db.example/liqmap")
    cfg.output_buffer = io.StringIO()
    command.upgrade(cfg, "0003_delivery_retention:0005_daily_readings", sql=True)
    ddl = cfg.output_buffer.getvalue()
    assert "CREATE TABLE daily_readings" in ddl and "record TEXT NOT NULL" in ddl
    assert "FOREIGN KEY(schedule_id) REFERENCES daily_schedules (id) ON DELETE CASCADE" in ddl
    assert "CREATE INDEX ix_daily_readings_latest ON daily_readings (schedule_id, symbol, id)" in ddl
