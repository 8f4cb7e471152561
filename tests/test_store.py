"""bot.store on a real SQLite file: validation, cap, restart, migrations, delivery claims."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from analysis.errors import InputError
from bot.store import (
    Store,
    delivery_marker,
    next_occurrence,
    parse_symbols,
    parse_time,
    parse_timezone,
)

UTC = timezone.utc


def _head() -> str:
    from alembic.script import ScriptDirectory

    from bot.store import alembic_config

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


HEAD = "0010_skew_alerts"


def test_the_migration_chain_has_one_head_the_one_these_tests_expect():
    assert _head() == HEAD  # a second head would make get_current_head raise

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
G, C, U = 111, 222, 333


@pytest.fixture
async def store(url):
    s = await Store.open(url, max_per_guild=4)
    yield s
    await s.close()


async def add_daily(store, **kw):
    args = dict(symbols="BTC", window="1d", exchange="all", time="09:30", timezone="Europe/London", created_by=U, now=NOW)
    args.update(kw)
    guild = args.pop("guild", G)
    channel = args.pop("channel", C)
    return await store.add_daily(guild, channel, **args)


# -- validators -------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,want", [("09:30", "09:30"), ("9:30", "09:30"), (" 00:00 ", "00:00"), ("23:59", "23:59")])
def test_parse_time_accepts(raw, want):
    assert parse_time(raw) == want


@pytest.mark.parametrize("raw", ["24:00", "12:60", "9", "0930", "-1:00", "", "12:3", "12:30pm", "１２:30"])
def test_parse_time_refuses_with_valid_range(raw):
    with pytest.raises(InputError, match="HH:MM from 00:00 to 23:59"):
        parse_time(raw)


def test_parse_timezone_canonicalises_and_suggests():
    assert parse_timezone("europe/london") == "Europe/London"
    assert parse_timezone(" America/New_York ") == "America/New_York"
    with pytest.raises(InputError) as e:
        parse_timezone("Europe/Londn")
    assert "did you mean Europe/London" in str(e.value) and "IANA" in str(e.value)
    for bad in ("../../etc/passwd", "", "EST5EDT; DROP TABLE", "localtime", "x" * 200):
        with pytest.raises(InputError, match="unknown timezone"):
            parse_timezone(bad)


def test_parse_symbols():
    assert parse_symbols("btc, ETH;btcusdt") == ("BTCUSDT", "ETHUSDT")
    assert parse_symbols(["SOL/USDT"]) == ("SOLUSDT",)
    with pytest.raises(InputError, match="no symbol"):
        parse_symbols(" , ")
    with pytest.raises(InputError, match="at most 5"):
        parse_symbols("A1 B1 C1 D1 E1 F1")
    with pytest.raises(InputError, match="not a symbol"):
        parse_symbols("BTC'; drop table x;--")


# -- daily schedules --------------------------------------------------------------------------------

async def test_add_and_list_daily_computes_next_run(store):
    d = await add_daily(store, symbols="btc eth", time="9:30", timezone="europe/london")
    assert d.symbols == ("BTCUSDT", "ETHUSDT")
    assert (d.local_time, d.timezone, d.window, d.exchange) == ("09:30", "Europe/London", "1d", "all")
    # 1 March is GMT: 09:30 local is 09:30 UTC, and 12:00 has passed -> tomorrow
    assert d.next_run_at == datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    assert [x.id for x in await store.list_daily(G)] == [d.id]
    assert await store.list_daily(999) == []


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"time": "25:00"}, "HH:MM"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"symbols": "BT C$"}, "not a symbol"),
        ({"window": "2d"}, "unknown window"),
        ({"exchange": "kraken"}, "unknown exchange"),
        ({"view": "candles"}, r"unknown view 'candles'; choose one of map, heatmap, both"),
        ({"channel": 0}, "channel id"),
        ({"guild": -5}, "server id"),
    ],
)
async def test_add_daily_refuses_bad_input_and_stores_nothing(store, kw, msg):
    with pytest.raises(InputError, match=msg):
        await add_daily(store, **kw)
    assert await store.list_daily(G) == []


async def test_daily_view_is_validated_stored_and_survives_a_restart(url):
    s = await Store.open(url)
    try:
        assert (await add_daily(s)).view == "map"  # the default
        both = await add_daily(s, time="10:00", view=" Both ")
        heat = await add_daily(s, time="11:00", view="heatmap")
        assert (both.view, heat.view) == ("both", "heatmap")
        # the view is not part of what makes two schedules identical
        with pytest.raises(InputError, match=f"already exists.*id {heat.id}"):
            await add_daily(s, time="11:00", view="map")
    finally:
        await s.close()
    s2 = await Store.open(url)
    try:
        assert [d.view for d in await s2.list_daily(G)] == ["map", "both", "heatmap"]
        assert (await s2.get_daily(both.id)).view == "both"
    finally:
        await s2.close()


async def test_duplicate_daily_refused(store):
    d = await add_daily(store)
    with pytest.raises(InputError, match=f"already exists.*id {d.id}"):
        await add_daily(store, symbols="BTCUSDT")
    await add_daily(store, time="10:00")  # a different time is a different schedule


async def test_cap_counts_both_kinds_and_says_so(store):
    await add_daily(store, time="01:00")
    await add_daily(store, time="02:00")
    await store.add_skew_alert(G, C, symbol="BTC", window="1d", exchange="all", created_by=U)
    await store.add_skew_alert(G, C, symbol="ETH", window="1d", exchange="all", created_by=U)
    with pytest.raises(InputError, match="already has 4 subscriptions.*limit is 4"):
        await add_daily(store, time="03:00")
    with pytest.raises(InputError, match="limit is 4"):
        await store.add_skew_alert(G, C, symbol="SOL", window="1d", exchange="all", created_by=U)
    assert await store.count_subscriptions(G) == 4
    await add_daily(store, guild=555, channel=999, time="03:00")  # other servers are not affected
    d = (await store.list_daily(G))[0]
    await store.remove_daily(G, d.id)
    await add_daily(store, time="03:00")


async def test_cap_holds_when_managers_subscribe_at_the_same_moment(url):
    import asyncio

    st = await Store.open(url, max_per_guild=2)
    try:
        symbols = ("BTC", "ETH", "SOL", "XRP", "DOGE", "ADA")
        got = await asyncio.gather(
            *(st.add_skew_alert(G, C, symbol=sym, window="7d", exchange="all", created_by=U) for sym in symbols[:3]),
            *(st.add_daily(G, C, symbols=sym, window="1d", exchange="all", time="09:30", timezone="UTC",
                           created_by=U, now=NOW) for sym in symbols[3:]),
            return_exceptions=True,
        )
        assert sum(not isinstance(x, BaseException) for x in got) == 2
        assert all(isinstance(x, InputError) and "limit is 2" in str(x) for x in got if isinstance(x, BaseException))
        assert await st.count_subscriptions(G) == 2
    finally:
        await st.close()


async def test_remove_and_resume_only_within_own_guild(store):
    d = await add_daily(store)
    with pytest.raises(InputError, match="no daily report with id"):
        await store.remove_daily(999, d.id)
    with pytest.raises(InputError, match="no daily report with id"):
        await store.resume_daily(G, 12345)
    assert await store.pause("daily", d.id, "channel deleted", now=NOW)
    assert not await store.pause("daily", d.id, "a second reason", now=NOW)  # the first reason stays
    assert not await store.pause("daily", 9999, "no such id", now=NOW)
    with pytest.raises(InputError, match="daily or skew_alert"):
        await store.pause("weekly", d.id, "x")
    listed = (await store.list_daily(G))[0]
    assert listed.paused and listed.paused_reason == "channel deleted" and listed.paused_at == NOW
    assert await store.due_daily(NOW + timedelta(days=5)) == []  # paused: never due
    later = NOW + timedelta(days=3)
    resumed = await store.resume_daily(G, d.id, now=later)
    assert not resumed.paused
    assert resumed.next_run_at == next_occurrence("09:30", "Europe/London", later)
    removed = await store.remove_daily(G, d.id)
    assert removed.id == d.id and await store.list_daily(G) == []


async def test_pause_channel_pauses_every_kind_there(store):
    await add_daily(store)
    await add_daily(store, channel=999, time="10:00")
    w = await store.add_skew_alert(G, C, symbol="BTC", window="7d", exchange="all", created_by=U)
    assert await store.pause_channel(C, "missing access: Send Messages", now=NOW) == 2
    assert await store.pause_channel(C, "again", now=NOW) == 0  # already paused ones keep their first reason
    daily = {d.channel_id: d for d in await store.list_daily(G)}
    assert daily[C].paused_reason == "missing access: Send Messages" and not daily[999].paused
    assert (await store.list_skew_alerts(G))[0].paused
    assert await store.active_skew_alerts() == []
    await store.set_skew_alert_class(w.id, expected=None, new="short", ratio=2.0, announced_at=None)
    resumed = await store.resume_skew_alert(G, w.id)
    assert not resumed.paused and resumed.last_class is None  # fresh baseline after a pause


# -- skew alerts ------------------------------------------------------------------------------------

async def test_add_skew_alert_defaults_and_validation(store):
    w = await store.add_skew_alert(G, C, symbol="eth-usdt-swap", window="7D", exchange="OKX", created_by=U)
    assert (w.symbol, w.window, w.exchange, w.cooldown_s, w.last_class) == ("ETHUSDT", "7d", "okx", 3600, None)
    assert (w.params.mild, w.params.heavy) == (1.5, 3.0)
    with pytest.raises(InputError, match=rf"that skew alert for ETHUSDT 7d on okx already exists in this channel \(id {w.id}\)"):
        await store.add_skew_alert(G, C, symbol="ETHUSDT", window="7d", exchange="okx", created_by=U)
    with pytest.raises(InputError, match="1 < mild < heavy"):
        await store.add_skew_alert(G, C, symbol="BTC", window="7d", exchange="okx", mild=4, heavy=3, created_by=U)
    with pytest.raises(InputError, match="finite"):
        await store.add_skew_alert(G, C, symbol="BTC", window="7d", exchange="okx", mild=float("nan"), created_by=U)
    with pytest.raises(InputError, match="cooldown"):
        await store.add_skew_alert(G, C, symbol="BTC", window="7d", exchange="okx", cooldown_s=5, created_by=U)
    custom = await store.add_skew_alert(G, C, symbol="BTC", window="7d", exchange="okx", mild=2, heavy=4, created_by=U)
    assert (custom.params.mild, custom.params.heavy) == (2.0, 4.0)
    assert [x.id for x in await store.list_skew_alerts(G)] == [w.id, custom.id]
    await store.remove_skew_alert(G, w.id)
    with pytest.raises(InputError, match="no skew alert"):
        await store.remove_skew_alert(G, w.id)


async def test_set_skew_alert_class_is_compare_and_set(store):
    w = await store.add_skew_alert(G, C, symbol="BTC", window="7d", exchange="all", created_by=U)
    assert await store.set_skew_alert_class(w.id, expected=None, new="balanced", ratio=1.0, announced_at=None)
    assert not await store.set_skew_alert_class(w.id, expected=None, new="short", ratio=2.0, announced_at=NOW)
    assert await store.set_skew_alert_class(w.id, expected="balanced", new="short", ratio=2.0, announced_at=NOW)
    got = await store.get_skew_alert(w.id)
    assert (got.last_class, got.last_ratio, got.last_announced_at) == ("short", 2.0, NOW)
    assert await store.set_skew_alert_class(w.id, expected="short", new="balanced", ratio=float("inf"),
                                       announced_at=None, previous_announced_at=None, restore=True)
    got = await store.get_skew_alert(w.id)
    assert (got.last_class, got.last_ratio, got.last_announced_at) == ("balanced", None, None)


# -- restart and migrations -------------------------------------------------------------------------

async def test_everything_survives_a_restart(url):
    s = await Store.open(url)
    d = await add_daily(s, symbols="BTC,ETH")
    w = await s.add_skew_alert(G, C, symbol="SOL", window="30d", exchange="bybit", mild=2.0, heavy=5.0, created_by=U)
    await s.pause("skew_alert", w.id, "missing access", now=NOW)
    claimed, _ = await s.claim_delivery(d, date(2026, 3, 2), "BTCUSDT", due_at=d.next_run_at, now=NOW,
                                        lease=timedelta(minutes=5))
    await s.close()

    s2 = await Store.open(url)  # the migrations run again: a no-op
    try:
        assert await s2.list_daily(G) == [d]
        (w2,) = await s2.list_skew_alerts(G)
        assert (w2.mild, w2.heavy, w2.paused_reason) == (2.0, 5.0, "missing access")
        (dv,) = await s2.deliveries(d.id)
        assert dv == claimed and dv.state == "claimed"
    finally:
        await s2.close()


async def test_migrations_idempotent_and_match_models(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import bot.tape_store  # noqa: F401  (its tables are on Base.metadata)
    import bot.cluster_store  # noqa: F401  (registers its table on the same Base)
    import bot.hl_oi_store  # noqa: F401  (the Hyperliquid OI snapshots, too)
    from bot.store import Base

    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}"
    for _ in range(2):
        s = await Store.open(url)
        async with s.engine.connect() as conn:
            assert (await conn.execute(text("select version_num from alembic_version"))).scalar_one() == HEAD
            assert (await conn.execute(text("pragma journal_mode"))).scalar_one() == "wal"
            assert (await conn.execute(text("pragma busy_timeout"))).scalar_one() == 5000

            def diff(sync_conn):
                return compare_metadata(MigrationContext.configure(sync_conn), Base.metadata)

            assert await conn.run_sync(diff) == []
        await s.close()


async def test_open_from_another_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no alembic.ini anywhere near
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'elsewhere.sqlite3'}")
    await s.close()
    assert (tmp_path / "elsewhere.sqlite3").exists()


async def test_failed_write_leaves_previous_state(store, monkeypatch):
    d = await add_daily(store)
    import bot.store.daily as store_mod

    def boom(*a, **k):
        raise RuntimeError("crash mid-write")

    monkeypatch.setattr(store_mod, "next_occurrence", boom)
    with pytest.raises(RuntimeError):
        await store.resume_daily(G, d.id, now=NOW)
    assert await store.list_daily(G) == [d]


# -- deliveries -------------------------------------------------------------------------------------

async def test_claim_is_exactly_once_and_recoverable(store):
    d = await add_daily(store)
    day, lease = date(2026, 3, 2), timedelta(minutes=5)
    first, rec = await store.claim_delivery(d, day, "BTCUSDT", due_at=d.next_run_at, now=NOW, lease=lease)
    assert first is not None and not rec and first.attempts == 1
    assert (first.marker, first.nonce) == delivery_marker(d.id, day, "BTCUSDT")
    assert len(first.nonce) <= 25
    # a second claimer inside the lease gets nothing
    assert await store.claim_delivery(d, day, "BTCUSDT", due_at=d.next_run_at, now=NOW, lease=lease) == (None, False)
    # after the lease the stale claim is taken over, flagged as a recovery
    again, rec = await store.claim_delivery(d, day, "BTCUSDT", due_at=d.next_run_at, now=NOW + lease, lease=lease)
    assert rec and again.id == first.id and again.attempts == 2
    await store.finish_delivery(again.id, "failed", now=NOW, detail="HTTP 503")
    # a failed send may be retried at once, again as a recovery
    third, rec = await store.claim_delivery(d, day, "BTCUSDT", due_at=d.next_run_at, now=NOW, lease=lease)
    assert rec and third.attempts == 3
    await store.finish_delivery(third.id, "sent", now=NOW, message_id=42)
    assert await store.claim_delivery(d, day, "BTCUSDT", due_at=d.next_run_at, now=NOW + lease * 10,
                                      lease=lease) == (None, False)
    assert not await store.skip_delivery(d, day, "BTCUSDT", due_at=d.next_run_at, now=NOW, detail="late")
    (final,) = await store.deliveries(d.id, day)
    assert (final.state, final.message_id, final.final) == ("sent", 42, True)


async def test_advance_is_compare_and_set(store):
    d = await add_daily(store)
    nxt = d.next_run_at + timedelta(days=1)
    assert await store.advance(d.id, d.next_run_at, nxt)
    assert not await store.advance(d.id, d.next_run_at, nxt + timedelta(days=1))
    assert (await store.get_daily(d.id)).next_run_at == nxt
    assert [x.id for x in await store.due_daily(nxt)] == [d.id]
    assert await store.due_daily(nxt - timedelta(seconds=1)) == []
    assert await store.next_due_at() == nxt


async def test_naive_datetimes_refused(store):
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.due_daily(datetime(2026, 1, 1))


async def test_batch_claims_skips_and_advances(store):
    from bot.store import Claim, Outcome

    a = await add_daily(store)
    b = await add_daily(store, channel=999)
    day, lease = date(2026, 3, 2), timedelta(minutes=5)
    ca, cb = Claim(a, day, "BTCUSDT", a.next_run_at), Claim(b, day, "BTCUSDT", b.next_run_at)
    won = await store.claim_many([ca, cb], now=NOW, lease=lease)
    assert [(d.schedule_id, rec) for d, rec in won] == [(a.id, False), (b.id, False)]
    assert await store.claim_many([ca, cb], now=NOW, lease=lease) == []  # both held
    await store.finish_many([Outcome(won[0][0].id, "sent", message_id=7), Outcome(won[1][0].id, "failed", detail="x")],
                            now=NOW)
    again = await store.claim_many([ca, cb], now=NOW, lease=lease)
    assert [(d.schedule_id, rec, d.attempts) for d, rec in again] == [(b.id, True, 2)]
    # skips never override an existing record
    c_next = Claim(a, date(2026, 3, 3), "BTCUSDT", a.next_run_at)
    assert await store.skip_many([ca, c_next], now=NOW, detail="missed") == 1
    got = await store.deliveries_for([(a.id, day), (a.id, date(2026, 3, 3)), (b.id, day)])
    assert {k: v.state for k, v in got.items()} == {
        (a.id, day, "BTCUSDT"): "sent", (a.id, date(2026, 3, 3), "BTCUSDT"): "skipped",
        (b.id, day, "BTCUSDT"): "claimed"}
    with pytest.raises(ValueError, match="bad delivery state"):
        await store.finish_many([Outcome(1, "claimed")], now=NOW)
    new = a.next_run_at + timedelta(days=1)
    await store.advance_many([(a.id, a.next_run_at, new), (b.id, a.next_run_at - timedelta(days=9), new)])
    assert (await store.get_daily(a.id)).next_run_at == new
    assert (await store.get_daily(b.id)).next_run_at == b.next_run_at  # expected value did not match


async def test_a_stale_outcome_never_overwrites_a_claim_taken_over_and_renew_is_compare_and_set(store):
    from bot.store import Claim, Outcome

    a = await add_daily(store)
    day, lease = date(2026, 3, 2), timedelta(minutes=5)
    c = Claim(a, day, "BTCUSDT", a.next_run_at)
    ((mine, _),) = await store.claim_many([c], now=NOW, lease=lease)
    assert await store.renew_claim(mine.id, mine.attempts, now=NOW + timedelta(minutes=4))
    # the renewed lease holds off a second dispatcher until it runs out from the renewal
    assert await store.claim_many([c], now=NOW + lease, lease=lease) == []
    ((theirs, rec),) = await store.claim_many([c], now=NOW + timedelta(minutes=9), lease=lease)
    assert rec and theirs.attempts == mine.attempts + 1
    # the first dispatcher, late: it may neither renew nor record its outcome over the new claim
    assert not await store.renew_claim(mine.id, mine.attempts, now=NOW + timedelta(minutes=9))
    await store.finish_many([Outcome(mine.id, "failed", detail="timeout", attempts=mine.attempts)], now=NOW)
    (rec,) = await store.deliveries(a.id, day)
    assert (rec.state, rec.attempts) == ("claimed", theirs.attempts)
    await store.finish_many([Outcome(theirs.id, "sent", message_id=9, attempts=theirs.attempts)], now=NOW)
    (rec,) = await store.deliveries(a.id, day)
    assert (rec.state, rec.message_id) == ("sent", 9)


async def test_claim_many_falls_back_one_by_one_on_a_conflict(store):
    from bot.store import Claim

    a = await add_daily(store)
    c = Claim(a, date(2026, 3, 2), "BTCUSDT", a.next_run_at)
    # the same post twice in one batch: the bulk insert conflicts, the fallback lets exactly one win
    won = await store.claim_many([c, c], now=NOW, lease=timedelta(minutes=5))
    assert len(won) == 1 and len(await store.deliveries(a.id)) == 1


async def test_record_baselines_only_fills_empty_classes(store):
    w1 = await store.add_skew_alert(G, C, symbol="BTC", window="7d", exchange="all", created_by=U)
    w2 = await store.add_skew_alert(G, C, symbol="ETH", window="7d", exchange="all", created_by=U)
    await store.set_skew_alert_class(w2.id, expected=None, new="short", ratio=2.0, announced_at=NOW)
    await store.record_baselines([(w1.id, "long", 0.6), (w2.id, "balanced", 1.0)])
    assert (await store.get_skew_alert(w1.id)).last_class == "long"
    assert (await store.get_skew_alert(w2.id)).last_class == "short"


def test_migrations_render_for_postgresql_offline():
    """The same migration as PostgreSQL DDL (alembic --sql mode: no server, no driver needed)."""
    import io

    from alembic import command

    from bot.store import alembic_config

    cfg = alembic_config("postgresql+asyncpg://bot:p%40ss@db.example/liqmap")
    cfg.output_buffer = io.StringIO()
    command.upgrade(cfg, "head", sql=True)
    ddl = cfg.output_buffer.getvalue()
    assert "next_run_at TIMESTAMP WITH TIME ZONE NOT NULL" in ddl
    assert "guild_id BIGINT NOT NULL" in ddl and "message_id BIGINT" in ddl
    assert "CONSTRAINT uq_delivery_once UNIQUE (schedule_id, local_date, symbol)" in ddl
    assert "REFERENCES daily_schedules (id) ON DELETE CASCADE" in ddl
    assert ("CREATE UNIQUE INDEX uq_daily_schedule ON daily_schedules "
            "(channel_id, symbols, \"window\", exchange, local_time, timezone)") in ddl
    assert ddl.index("DELETE FROM daily_schedules WHERE id IN") < ddl.index("CREATE UNIQUE INDEX uq_daily_schedule")
    assert "ALTER TABLE skew_watches RENAME TO skew_alerts" in ddl  # 0008: a rename, rows kept
    assert 'ADD CONSTRAINT uq_skew_alert UNIQUE (channel_id, symbol, "window", exchange)' in ddl


@pytest.mark.skipif(not __import__("os").environ.get("LIQMAP_TEST_DATABASE_URL"),
                    reason="set LIQMAP_TEST_DATABASE_URL=postgresql+asyncpg://... to run against a real server")
async def test_live_database_round_trip():
    import os
    import uuid

    s = await Store.open(os.environ["LIQMAP_TEST_DATABASE_URL"])
    guild = int(uuid.uuid4().int % 10**15) + 1
    try:
        d = await add_daily(s, guild=guild, channel=guild)
        assert await s.list_daily(guild) == [d]
        got, _ = await s.claim_delivery(d, date(2026, 3, 2), "BTCUSDT", due_at=d.next_run_at, now=NOW,
                                        lease=timedelta(minutes=5))
        assert got is not None
        assert await s.claim_delivery(d, date(2026, 3, 2), "BTCUSDT", due_at=d.next_run_at, now=NOW,
                                      lease=timedelta(minutes=5)) == (None, False)
    finally:
        for x in await s.list_daily(guild):
            await s.remove_daily(guild, x.id)
        await s.close()


# -- identical subscriptions at the same moment (audit issue 8, item 1) -----------------------------

@pytest.mark.parametrize("kind", ["daily", "skew_alert"])
async def test_a_double_submit_stores_one_row_and_refuses_the_other_clearly(url, kind):
    import asyncio

    st = await Store.open(url)
    try:
        for attempt in range(5):  # each round: two identical commands at once
            if kind == "daily":
                make = lambda: st.add_daily(G, C + attempt, symbols="BTC, ETH", window="1d", exchange="all",  # noqa: E731
                                            time="09:30", timezone="Europe/London", created_by=U, now=NOW)
                listed = st.list_daily
                noun = "daily report"
            else:
                make = lambda: st.add_skew_alert(G, C + attempt, symbol="BTC", window="7d", exchange="all",  # noqa: E731
                                            created_by=U)
                listed = st.list_skew_alerts
                noun = "skew alert for BTCUSDT 7d on all"
            got = await asyncio.gather(make(), make(), return_exceptions=True)
            ok = [x for x in got if not isinstance(x, BaseException)]
            errors = [x for x in got if isinstance(x, BaseException)]
            assert len(ok) == 1 and len(errors) == 1, got
            assert isinstance(errors[0], InputError)
            assert str(errors[0]) == f"that {noun} already exists in this channel (id {ok[0].id})"
            rows = [r for r in await listed(G) if r.channel_id == C + attempt]
            assert [r.id for r in rows] == [ok[0].id]
    finally:
        await st.close()


async def test_the_database_itself_refuses_an_identical_daily_schedule(store):
    from sqlalchemy.exc import IntegrityError

    d = await add_daily(store)
    cols = "guild_id, channel_id, symbols, \"window\", exchange, local_time, timezone, next_run_at, created_by, created_at"
    with pytest.raises(IntegrityError):
        async with store.engine.begin() as conn:  # bypassing the store's own code path
            await conn.execute(text(f"INSERT INTO daily_schedules ({cols}) SELECT {cols} FROM daily_schedules "
                                    f"WHERE id = {d.id}"))
    assert len(await store.list_daily(G)) == 1


async def _schema_at(url: str, revision: str) -> Store:
    """A store whose database is migrated only up to ``revision`` (foreign keys on, as in production)."""
    from alembic import command

    from bot.store import alembic_config

    st = await Store.open(url, migrate=False)

    def up(sync_conn):
        cfg = alembic_config()
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, revision)

    async with st.engine.begin() as conn:
        await conn.run_sync(up)
    return st


async def test_migration_0002_merges_duplicates_keeping_the_oldest_and_their_deliveries(url):
    old = await _schema_at(url, "0001_initial")
    cols = ("guild_id, channel_id, symbols, \"window\", exchange, local_time, timezone, next_run_at, "
            "paused_reason, created_by, created_at")

    def sched(i, channel=C, time="09:30", paused=None):
        return {"id": i, "g": G, "c": channel, "sy": "BTCUSDT,ETHUSDT", "w": "1d", "e": "all", "t": time,
                "z": "Europe/London", "n": datetime(2026, 3, 2, 9, 30), "p": paused, "u": U,
                "a": datetime(2026, 3, 1, 12, i)}

    rows = [sched(1), sched(2, paused="x"), sched(3), sched(4, time="10:00"), sched(5, channel=999), sched(6, channel=999)]
    deliveries = [  # (id, schedule, date, symbol, state)
        (1, 1, "2026-03-01", "BTCUSDT", "sent"),      # the oldest's own record stays
        (2, 2, "2026-03-01", "BTCUSDT", "sent"),      # the survivor has one: dropped
        (3, 2, "2026-03-01", "ETHUSDT", "skipped"),   # survivor has none, a sent one exists at 3: that one moves
        (4, 3, "2026-03-01", "ETHUSDT", "sent"),
        (5, 3, "2026-03-02", "BTCUSDT", "claimed"),   # in flight on a duplicate: moves, marker kept
        (6, 6, "2026-03-02", "BTCUSDT", "sent"),      # the other group
        (7, 4, "2026-03-01", "BTCUSDT", "sent"),      # not a duplicate (other time): untouched
    ]
    async with old.engine.begin() as conn:
        await conn.execute(text(f"INSERT INTO daily_schedules (id, {cols}) VALUES "
                                "(:id, :g, :c, :sy, :w, :e, :t, :z, :n, :p, :u, :a)"), rows)
        await conn.execute(text(
            "INSERT INTO deliveries (id, schedule_id, local_date, symbol, channel_id, state, marker, nonce, attempts, "
            "due_at) VALUES (:id, :s, :d, :sym, :c, :st, :m, :nc, 1, :due)"),
            [{"id": i, "s": s, "d": date.fromisoformat(d), "sym": sym, "c": C, "st": st, "m": f"liqmap-d{s}-{d}-{sym}",
              "nc": f"n{i}", "due": datetime(2026, 3, 1, 9, 30)} for i, s, d, sym, st in deliveries])
    await old.close()

    st = await Store.open(url)  # upgrades to head
    try:
        assert [d.id for d in await st.list_daily(G)] == [1, 4, 5]
        assert not (await st.get_daily(1)).paused  # the oldest is kept as it was
        got = {(x.local_date.isoformat(), x.symbol): (x.id, x.state, x.marker) for x in await st.deliveries(1)}
        assert got == {
            ("2026-03-01", "BTCUSDT"): (1, "sent", "liqmap-d1-2026-03-01-BTCUSDT"),
            ("2026-03-01", "ETHUSDT"): (4, "sent", "liqmap-d3-2026-03-01-ETHUSDT"),
            ("2026-03-02", "BTCUSDT"): (5, "claimed", "liqmap-d3-2026-03-02-BTCUSDT"),
        }
        assert [(x.id, x.state) for x in await st.deliveries(5)] == [(6, "sent")]
        assert [x.id for x in await st.deliveries(4)] == [7]
        async with st.engine.connect() as conn:
            assert (await conn.execute(text("select count(*) from deliveries"))).scalar_one() == 5
        # and from now on the database refuses a new duplicate
        with pytest.raises(InputError, match=r"already exists in this channel \(id 1\)"):
            await st.add_daily(G, C, symbols="BTC, ETH", window="1d", exchange="all", time="09:30",
                               timezone="Europe/London", created_by=U, now=NOW)
    finally:
        await st.close()


async def test_migration_0004_gives_existing_schedules_the_map_view_and_keeps_their_deliveries(url):
    old = await _schema_at(url, "0003_delivery_retention")
    async with old.engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO daily_schedules (id, guild_id, channel_id, symbols, \"window\", exchange, local_time, timezone, "
            "next_run_at, created_by, created_at) VALUES (7, :g, :c, 'BTCUSDT', '1d', 'all', '09:30', 'UTC', :n, :u, :a)"),
            {"g": G, "c": C, "n": datetime(2026, 3, 2, 9, 30), "u": U, "a": datetime(2026, 3, 1, 12, 0)})
        await conn.execute(text(
            "INSERT INTO deliveries (id, schedule_id, local_date, symbol, channel_id, state, marker, nonce, attempts, "
            "due_at) VALUES (1, 7, :d, 'BTCUSDT', :c, 'sent', 'liqmap-d7-2026-03-01-BTCUSDT', 'n1', 1, :due)"),
            {"d": date(2026, 3, 1), "c": C, "due": datetime(2026, 3, 1, 9, 30)})
    await old.close()

    st = await Store.open(url)  # upgrades to head
    try:
        (d,) = await st.list_daily(G)
        assert (d.id, d.view, d.symbols, d.next_run_at) == (7, "map", ("BTCUSDT",), datetime(2026, 3, 2, 9, 30, tzinfo=UTC))
        assert [(x.id, x.state) for x in await st.deliveries(7)] == [(1, "sent")]  # no table rebuild, no cascade
        async with st.engine.connect() as conn:
            assert (await conn.execute(text("select version_num from alembic_version"))).scalar_one() == HEAD
    finally:
        await st.close()


async def test_migration_0010_renames_skew_watches_to_skew_alerts_keeping_rows_and_state(url):
    old = await _schema_at(url, "0009_hl_oi")
    cols = ("id, guild_id, channel_id, symbol, \"window\", exchange, mild, heavy, exit_mild, exit_heavy, cooldown_s, "
            "last_class, last_ratio, last_announced_at, paused_reason, paused_at, created_by, created_at")
    rows = [
        {"id": 3, "g": G, "c": C, "s": "BTCUSDT", "w": "7d", "e": "all", "mi": 2.0, "he": 5.0, "xm": None, "xh": 4.0,
         "cd": 600, "lc": "short_heavy", "lr": 5.5, "la": datetime(2026, 3, 1, 11, 0), "pr": None, "pa": None,
         "u": U, "a": datetime(2026, 3, 1, 10, 0)},
        {"id": 9, "g": G, "c": C, "s": "ETHUSDT", "w": "1d", "e": "binance", "mi": None, "he": None, "xm": None,
         "xh": None, "cd": 3600, "lc": None, "lr": None, "la": None, "pr": "missing access",
         "pa": datetime(2026, 3, 1, 11, 30), "u": U, "a": datetime(2026, 3, 1, 10, 5)},
    ]
    async with old.engine.begin() as conn:
        await conn.execute(text(f"INSERT INTO skew_watches ({cols}) VALUES (:id, :g, :c, :s, :w, :e, :mi, :he, :xm, "
                                ":xh, :cd, :lc, :lr, :la, :pr, :pa, :u, :a)"), rows)
    await old.close()

    st = await Store.open(url)  # upgrades to head
    try:
        a, b = await st.list_skew_alerts(G)
        assert (a.id, a.symbol, a.window, a.exchange, a.mild, a.heavy, a.exit_mild, a.exit_heavy, a.cooldown_s) == (
            3, "BTCUSDT", "7d", "all", 2.0, 5.0, None, 4.0, 600)
        assert (a.last_class, a.last_ratio, a.last_announced_at) == ("short_heavy", 5.5,
                                                                      datetime(2026, 3, 1, 11, 0, tzinfo=UTC))
        assert (b.id, b.paused_reason, b.paused_at) == (9, "missing access", datetime(2026, 3, 1, 11, 30, tzinfo=UTC))
        # the unique key is there under its new name, and new ids continue after the kept ones
        with pytest.raises(InputError, match=r"already exists in this channel \(id 3\)"):
            await st.add_skew_alert(G, C, symbol="BTC", window="7d", exchange="all", created_by=U)
        new = await st.add_skew_alert(G, C, symbol="SOL", window="7d", exchange="all", created_by=U)
        assert new.id > 9
        async with st.engine.connect() as conn:
            assert (await conn.execute(text("select version_num from alembic_version"))).scalar_one() == HEAD

            def names(sync_conn):
                from sqlalchemy import inspect

                insp = inspect(sync_conn)
                return (set(insp.get_table_names()), {i["name"] for i in insp.get_indexes("skew_alerts")},
                        {u["name"] for u in insp.get_unique_constraints("skew_alerts")})

            tables, indexes, uniques = await conn.run_sync(names)
        assert "skew_alerts" in tables and "skew_watches" not in tables
        assert {"ix_skew_alerts_guild_id", "ix_skew_alerts_channel_id"} <= indexes
        assert "uq_skew_alert" in uniques
    finally:
        await st.close()

    # and back down: the rows (the one added after the upgrade too) return to skew_watches
    from alembic import command

    from bot.store import alembic_config

    st = await Store.open(url, migrate=False)
    try:
        def down(sync_conn):
            cfg = alembic_config()
            cfg.attributes["connection"] = sync_conn
            command.downgrade(cfg, "0009_hl_oi")

        async with st.engine.begin() as conn:
            await conn.run_sync(down)
        async with st.engine.connect() as conn:
            got = (await conn.execute(text("select id, symbol, last_class, paused_reason from skew_watches order by id"))).all()
        assert [tuple(r) for r in got] == [(3, "BTCUSDT", "short_heavy", None), (9, "ETHUSDT", None, "missing access"),
                                           (new.id, "SOLUSDT", None, None)]
    finally:
        await st.close()
    again = await Store.open(url)  # and up again
    try:
        assert [x.id for x in await again.list_skew_alerts(G)] == [3, 9, new.id]
    finally:
        await again.close()


# -- out-of-range ids (audit issue 8, item 2): refused or "no such row", never OverflowError --------

BAD_IDS = [0, -1, 2**31, 2**63, 2**64]
BAD_SNOWFLAKES = [0, -1, 2**63, 2**64]  # 2**31 is a valid Discord id


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_out_of_range_subscription_ids_match_nothing_at_every_entry_point(store, bad):
    from bot.store import Claim, Outcome

    d = await add_daily(store)
    w = await store.add_skew_alert(G, C, symbol="BTC", window="7d", exchange="all", created_by=U)
    for call, noun in ((store.remove_daily, "daily report"), (store.resume_daily, "daily report"),
                       (store.remove_skew_alert, "skew alert"), (store.resume_skew_alert, "skew alert")):
        with pytest.raises(InputError, match=f"this server has no {noun} with id {bad}"):
            await call(G, bad)
    assert await store.get_daily(bad) is None and await store.get_skew_alert(bad) is None
    assert not await store.pause("daily", bad, "x") and not await store.pause("skew_alert", bad, "x")
    assert await store.deliveries(bad) == [] and await store.deliveries_for([(bad, date(2026, 3, 2))]) == {}
    assert not await store.advance(bad, NOW, NOW)
    assert not await store.renew_claim(bad, 1, now=NOW)
    assert not await store.set_skew_alert_class(bad, expected=None, new="short", ratio=1.0, announced_at=None)
    await store.finish_delivery(bad, "sent", now=NOW, message_id=1)
    await store.finish_many([Outcome(bad, "sent", message_id=1), Outcome(bad, "failed", attempts=1)], now=NOW)
    await store.advance_many([(bad, NOW, NOW)])
    await store.record_baselines([(bad, "short", 1.0)])
    # nothing real was touched
    assert await store.list_daily(G) == [d] and await store.list_skew_alerts(G) == [w]
    assert await store.claim_many([Claim(d, date(2026, 3, 2), "BTCUSDT", d.next_run_at)], now=NOW,
                                  lease=timedelta(minutes=5))


@pytest.mark.parametrize("bad", BAD_SNOWFLAKES)
async def test_out_of_range_discord_ids_are_refused_at_every_entry_point(store, bad):
    d = await add_daily(store)
    for kw in ({"guild": bad}, {"channel": bad}, {"created_by": bad}):
        with pytest.raises(InputError, match="must be a positive Discord id"):
            await add_daily(store, time="10:00", **kw)
        args = {"guild": G, "channel": C, "created_by": U, **kw}
        with pytest.raises(InputError, match="must be a positive Discord id"):
            await store.add_skew_alert(args["guild"], args["channel"], symbol="BTC", window="7d", exchange="all",
                                  created_by=args["created_by"])
    for call in (store.list_daily, store.list_skew_alerts, store.count_subscriptions):
        with pytest.raises(InputError, match="server id must be a positive Discord id"):
            await call(bad)
    for call in (store.remove_daily, store.resume_daily, store.remove_skew_alert, store.resume_skew_alert):
        with pytest.raises(InputError, match="server id must be a positive Discord id"):
            await call(bad, d.id)
    assert await store.pause_channel(bad, "x") == 0
    assert await store.list_daily(G) == [d] and await store.count_subscriptions(G) == 1


async def test_the_largest_ids_are_accepted(store):
    big = 2**63 - 1
    d = await store.add_daily(big, big, symbols="BTC", window="1d", exchange="all", time="09:30",
                              timezone="UTC", created_by=big, now=NOW)
    assert (await store.list_daily(big))[0] == d
    assert await store.get_daily(2**31 - 1) is None
    with pytest.raises(InputError, match="no daily report with id 2147483647;"):
        await store.remove_daily(big, 2**31 - 1)


# -- retention (audit issue 8, item 3) --------------------------------------------------------------

async def test_prune_deletes_only_old_final_records_in_bounded_batches_and_raises_the_horizon(store):
    from bot.store import Claim, Outcome

    d = await add_daily(store)
    lease = timedelta(minutes=10)
    day0 = date(2026, 3, 2)
    claims = [Claim(d, day0 + timedelta(days=i), "BTCUSDT", d.next_run_at + timedelta(days=i)) for i in range(8)]
    won = await store.claim_many(claims, now=NOW, lease=lease)
    # days 0-4 sent, day 5 skipped, day 6 still claimed (a crash mid-send), day 7 failed
    await store.finish_many([Outcome(x.id, "sent", message_id=100 + i) for i, (x, _) in enumerate(won[:5])]
                            + [Outcome(won[5][0].id, "skipped", detail="no data"),
                               Outcome(won[7][0].id, "failed", detail="timeout")], now=NOW)
    assert await store.prune_horizon() is None
    cutoff = d.next_run_at + timedelta(days=7, hours=1)  # every record is due before it
    assert await store.prune_deliveries(cutoff, batch=2, max_batches=2) == 4  # bounded: two batches of two
    assert await store.prune_horizon() == cutoff
    assert await store.prune_deliveries(cutoff, batch=2, max_batches=2) == 2
    assert await store.prune_deliveries(cutoff, batch=2, max_batches=2) == 0
    left = await store.deliveries(d.id)
    assert [(x.local_date, x.state) for x in left] == [(day0 + timedelta(days=6), "claimed"),
                                                      (day0 + timedelta(days=7), "failed")]
    # the horizon never moves back (a clock set back prunes less, and forgets nothing)
    await store.prune_deliveries(cutoff - timedelta(days=20))
    assert await store.prune_horizon() == cutoff


async def test_a_post_due_before_the_horizon_is_never_claimed_anew_but_an_unfinished_one_is_still_verified(store):
    from bot.store import BEFORE_HORIZON, Claim

    d = await add_daily(store)
    lease = timedelta(minutes=10)
    old_day, open_day = date(2026, 3, 2), date(2026, 3, 3)
    c_old = Claim(d, old_day, "BTCUSDT", d.next_run_at)
    c_open = Claim(d, open_day, "BTCUSDT", d.next_run_at + timedelta(days=1))
    ((sent, _),) = await store.claim_many([c_old], now=NOW, lease=lease)
    await store.finish_delivery(sent.id, "sent", now=NOW, message_id=1)
    ((stuck, _),) = await store.claim_many([c_open], now=NOW, lease=lease)  # crashed mid-send
    assert await store.prune_deliveries(d.next_run_at + timedelta(days=2)) == 1
    assert await store.deliveries(d.id, old_day) == []
    later = NOW + timedelta(hours=1)
    # the pruned post: no claim (batch or single), recorded skipped instead
    assert await store.claim_many([c_old], now=later, lease=lease) == []
    (rec,) = await store.deliveries(d.id, old_day)
    assert (rec.state, rec.detail) == ("skipped", BEFORE_HORIZON)
    await store.prune_deliveries(d.next_run_at + timedelta(days=2))
    assert await store.claim_delivery(d, old_day, "BTCUSDT", due_at=c_old.due_at, now=later, lease=lease) == (None, False)
    assert (await store.deliveries(d.id, old_day))[0].state == "skipped"
    # the unfinished record before the horizon was kept, and is still taken over for verification
    ((again, recovering),) = await store.claim_many([c_open], now=later, lease=lease)
    assert again.id == stuck.id and recovering


# -- several processes on one database (issue 14) ---------------------------------------------------

def test_taking_over_stale_claims_skips_rows_another_dispatcher_holds_on_postgresql():
    from sqlalchemy.dialects import postgresql, sqlite

    from bot.store.deliveries import lock_free

    pg = str(lock_free([1, 2]).compile(dialect=postgresql.dialect()))
    assert pg.rstrip().endswith("FOR UPDATE SKIP LOCKED") and "deliveries.id IN" in pg
    assert "FOR UPDATE" not in str(lock_free([1]).compile(dialect=sqlite.dialect()))  # SQLite has no row locks


@pytest.mark.parametrize("stale", [False, True], ids=["new", "taken-over"])
async def test_two_stores_on_one_database_never_both_win_a_claim(url, stale):
    import asyncio

    from bot.store import Claim

    one, two = await Store.open(url), await Store.open(url)  # two processes' stores on one file
    try:
        scheds = [await add_daily(one, channel=1000 + i) for i in range(6)]
        day, lease = date(2026, 3, 2), timedelta(minutes=5)
        claims = [Claim(s, day, "BTCUSDT", s.next_run_at) for s in scheds]
        when = NOW
        if stale:  # every record claimed by a third dispatcher that crashed: both try to take them over
            assert len(await one.claim_many(claims, now=NOW, lease=lease)) == 6
            when = NOW + lease
        for _ in range(3):
            a, b = await asyncio.gather(one.claim_many(claims, now=when, lease=lease),
                                        two.claim_many(claims, now=when, lease=lease))
            ids_a, ids_b = {d.id for d, _ in a}, {d.id for d, _ in b}
            assert not ids_a & ids_b
            if ids_a or ids_b:
                assert len(ids_a | ids_b) == 6 and all(rec == stale for _, rec in a + b)
                break
        else:
            pytest.fail("neither store won the claims")
        # one by one, at the same moment: exactly one winner per post
        more = [Claim(s, date(2026, 3, 3), "BTCUSDT", s.next_run_at) for s in scheds]
        got = await asyncio.gather(*(st.claim_delivery(c.schedule, c.local_date, c.symbol, due_at=c.due_at,
                                                       now=NOW, lease=lease) for c in more for st in (one, two)))
        winners = [d.id for d, _ in got if d is not None]
        assert len(winners) == len(set(winners)) == 6
    finally:
        await one.close()
        await two.close()
