"""Durable bot state: daily report schedules, skew alerts and daily deliveries.

SQLAlchemy 2 async ORM. The default database is an embedded SQLite file
(``sqlite+aiosqlite:///liqmap.sqlite3``, WAL journal, 5 s busy timeout, foreign keys on);
PostgreSQL works through ``postgresql+asyncpg://...`` (install the ``postgres`` extra). Alembic
migrations in ``bot/migrations`` run on :meth:`Store.open`, from code (no alembic.ini, no CWD).

Everything a command passes in is validated *before* it reaches a query, and refused with an
:class:`~analysis.errors.InputError` whose message says what would be valid. Each write is one
transaction, so a crash mid-write leaves the previous state. Rows are returned as frozen
dataclasses (:class:`DailySchedule`, :class:`SkewAlert`, :class:`Delivery`), detached from any session.

API for the Discord layer (all ``async``)::

    store = await Store.open(url=None, max_per_guild=25)     # url None -> DEFAULT_URL
    await store.close()
    await store.add_daily(guild_id, channel_id, symbols="BTC, ETH", window="1d", exchange="all",
                          time="09:30", timezone="Europe/London", created_by=user_id,
                          view="map") -> DailySchedule               # view: map, heatmap or both
    await store.list_daily(guild_id) -> list[DailySchedule]        # paused ones included, with reason
    await store.remove_daily(guild_id, schedule_id) -> DailySchedule
    await store.resume_daily(guild_id, schedule_id) -> DailySchedule  # next run recomputed from now
    await store.add_skew_alert(guild_id, channel_id, symbol="BTC", window="7d", exchange="all",
                          mild=None, heavy=None, exit_mild=None, exit_heavy=None,
                          cooldown_s=None, created_by=user_id) -> SkewAlert
    await store.list_skew_alerts(guild_id) / remove_skew_alert(guild_id, id) / resume_skew_alert(guild_id, id)
    await store.get_daily(id) / get_skew_alert(id) -> record | None   # any guild: check guild_id yourself
    await store.count_subscriptions(guild_id) -> int              # daily + skew alerts + cluster alerts, paused included
    await store.pause("daily" | "skew_alert", id, reason) -> bool      # False: no such id or already paused
    await store.pause_channel(channel_id, reason) -> int          # every subscription posting there
    await store.deliveries(schedule_id, local_date=None) -> list[Delivery]
    await store.prune_deliveries(before, batch=5000, max_batches=100) -> int  # final records due before
    await store.latest_readings([(schedule_id, symbol), ...]) -> {(id, symbol): StoredReading}
    await store.readings(schedule_id, symbol=None) -> list[StoredReading]   # the last KEEP_READINGS kept

Ids are range-checked before any query: Discord ids 1..2**63-1 (else InputError), subscription
ids 1..2**31-1 (else "no such id": None, False or an InputError saying so).

Every refusal is an ``InputError`` (bad time/timezone/symbol/window/exchange/view/threshold/cooldown,
duplicate (decided by the table's unique key, see ``_insert_subscription``), cap reached, unknown id in this guild). The cap counts daily reports, skew alerts
and cluster alerts (``bot/cluster_store.py``) together, paused ones included.

Validators usable on their own (e.g. in autocomplete or a pre-check): :func:`parse_time`,
:func:`parse_timezone`, :func:`parse_symbols`. Time-zone and DST arithmetic (:func:`next_occurrence`,
:func:`local_occurrence`, the DST policy) is :mod:`bot.schedule_time`; the names are re-exported here.

The package is split by concern, each a class :class:`Store` builds on: ``engine`` (connecting,
migrations), ``tables`` (the models), ``validation``, ``subscriptions`` (cap, exactly-once insert,
pausing), ``daily``, ``skew_alerts``, ``deliveries`` (claims, outcomes, pruning) and ``readings``.

The dispatcher (``bot/scheduler.py``) uses :meth:`Store.due_daily`, :meth:`Store.deliveries_for`,
:meth:`Store.claim_many`, :meth:`Store.finish_many` (which also keeps the readings of the posted
reports), :meth:`Store.latest_readings`, :meth:`Store.skip_many`,
:meth:`Store.advance_many`, :meth:`Store.active_skew_alerts`, :meth:`Store.record_baselines` and
:meth:`Store.set_skew_alert_class` (one transaction per step per tick, not per channel).
"""

from __future__ import annotations

from ..schedule_time import TZ_HELP, UTC, local_date_of, local_occurrence, next_occurrence, parse_time, parse_timezone
from ..schedule_time import aware as _aware
from .daily import DailySchedule, DailyStore
from .deliveries import (
    BEFORE_HORIZON,
    FINAL_STATES,
    PRUNE_HORIZON,
    Claim,
    Delivery,
    DeliveryState,
    DeliveryStore,
    Outcome,
    delivery_marker,
)
from .engine import DEFAULT_URL, MIGRATIONS, _sqlite_pragmas, _upgrade, alembic_config
from .readings import KEEP_READINGS, ReadingIn, StoredReading
from .skew_alerts import SkewAlert, SkewAlertStore, _hysteresis
from .subscriptions import Kind
from .tables import Base, DailyReadingRow, DailyRow, DeliveryRow, MarkRow, UTCDateTime, SkewAlertRow
from .validation import (
    DEFAULT_COOLDOWN_S,
    EXCHANGES,
    ITEM_ID_MAX,
    MAX_COOLDOWN_S,
    MAX_SYMBOLS,
    MIN_COOLDOWN_S,
    SNOWFLAKE_MAX,
    _is_int_in,
    _parse_exchange,
    _parse_id,
    _reason,
    _valid_item_id,
    parse_symbols,
    parse_view,
)

__all__ = [
    "Store",
    # records
    "DailySchedule",
    "SkewAlert",
    "Delivery",
    "Claim",
    "Outcome",
    "DeliveryState",
    "ReadingIn",
    "StoredReading",
    "Kind",
    # tables and engine
    "Base",
    "UTCDateTime",
    "DailyRow",
    "SkewAlertRow",
    "DeliveryRow",
    "MarkRow",
    "DailyReadingRow",
    "DEFAULT_URL",
    "MIGRATIONS",
    "alembic_config",
    # limits and validators
    "EXCHANGES",
    "MAX_SYMBOLS",
    "DEFAULT_COOLDOWN_S",
    "MIN_COOLDOWN_S",
    "MAX_COOLDOWN_S",
    "SNOWFLAKE_MAX",
    "ITEM_ID_MAX",
    "KEEP_READINGS",
    "PRUNE_HORIZON",
    "FINAL_STATES",
    "BEFORE_HORIZON",
    "parse_symbols",
    "parse_view",
    "delivery_marker",
    # from bot.schedule_time
    "UTC",
    "TZ_HELP",
    "parse_time",
    "parse_timezone",
    "local_occurrence",
    "next_occurrence",
    "local_date_of",
]

# Also importable from here, for the modules built on the store (cluster_store, tape_store):
# _aware, _hysteresis, _is_int_in, _parse_exchange, _parse_id, _reason, _sqlite_pragmas, _upgrade,
# _valid_item_id.


class Store(DailyStore, SkewAlertStore, DeliveryStore):
    """Async access to the bot's tables. Create with :meth:`Store.open`; one per process."""
