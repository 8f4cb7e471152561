"""Durable bot state: daily report schedules, skew-notice subscriptions and daily deliveries.

SQLAlchemy 2 async ORM. The default database is an embedded SQLite file
(``sqlite+aiosqlite:///liqmap.sqlite3``, WAL journal, 5 s busy timeout, foreign keys on);
PostgreSQL works through ``postgresql+asyncpg://...`` (install the ``postgres`` extra). Alembic
migrations in ``bot/migrations`` run on :meth:`Store.open`, from code (no alembic.ini, no CWD).

Everything a command passes in is validated *before* it reaches a query, and refused with an
:class:`~analysis.errors.InputError` whose message says what would be valid. Each write is one
transaction, so a crash mid-write leaves the previous state. Rows are returned as frozen
dataclasses (:class:`DailySchedule`, :class:`SkewWatch`, :class:`Delivery`), detached from any session.

API for the Discord layer (all ``async``)::

    store = await Store.open(url=None, max_per_guild=25)     # url None -> DEFAULT_URL
    await store.close()
    await store.add_daily(guild_id, channel_id, symbols="BTC, ETH", window="1d", exchange="all",
                          time="09:30", timezone="Europe/London", created_by=user_id,
                          view="map") -> DailySchedule               # view: map, heatmap or both
    await store.list_daily(guild_id) -> list[DailySchedule]        # paused ones included, with reason
    await store.remove_daily(guild_id, schedule_id) -> DailySchedule
    await store.resume_daily(guild_id, schedule_id) -> DailySchedule  # next run recomputed from now
    await store.add_watch(guild_id, channel_id, symbol="BTC", window="7d", exchange="all",
                          mild=None, heavy=None, exit_mild=None, exit_heavy=None,
                          cooldown_s=None, created_by=user_id) -> SkewWatch
    await store.list_watches(guild_id) / remove_watch(guild_id, id) / resume_watch(guild_id, id)
    await store.get_daily(id) / get_watch(id) -> record | None   # any guild: check guild_id yourself
    await store.count_subscriptions(guild_id) -> int              # daily + watches + cluster alerts, paused included
    await store.pause("daily" | "watch", id, reason) -> bool      # False: no such id or already paused
    await store.pause_channel(channel_id, reason) -> int          # every subscription posting there
    await store.deliveries(schedule_id, local_date=None) -> list[Delivery]
    await store.prune_deliveries(before, batch=5000, max_batches=100) -> int  # final records due before
    await store.latest_readings([(schedule_id, symbol), ...]) -> {(id, symbol): StoredReading}
    await store.readings(schedule_id, symbol=None) -> list[StoredReading]   # the last KEEP_READINGS kept

Ids are range-checked before any query: Discord ids 1..2**63-1 (else InputError), subscription
ids 1..2**31-1 (else "no such id": None, False or an InputError saying so).

Every refusal is an ``InputError`` (bad time/timezone/symbol/window/exchange/view/threshold/cooldown,
duplicate (decided by the table's unique key, see ``_insert_subscription``), cap reached, unknown id in this guild). The cap counts daily reports, skew notices
and cluster alerts (``bot/cluster_store.py``) together, paused ones included.

Validators usable on their own (e.g. in autocomplete or a pre-check): :func:`parse_time`,
:func:`parse_timezone`, :func:`parse_symbols`. Scheduling helpers: :func:`next_occurrence`,
:func:`local_occurrence` (the DST policy).

The dispatcher (``bot/scheduler.py``) uses :meth:`Store.due_daily`, :meth:`Store.deliveries_for`,
:meth:`Store.claim_many`, :meth:`Store.finish_many` (which also keeps the readings of the posted
reports), :meth:`Store.latest_readings`, :meth:`Store.skip_many`,
:meth:`Store.advance_many`, :meth:`Store.active_watches`, :meth:`Store.record_baselines` and
:meth:`Store.set_watch_class` (one transaction per step per tick, not per channel).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
import zoneinfo
from dataclasses import dataclass
from datetime import date, datetime, time as dtime, timedelta, timezone as dt_timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from analysis.errors import InputError
from analysis.hysteresis import HysteresisParams
from analysis.options import VIEWS
from analysis.readings import MAX_RECORD_BYTES
from analysis.symbols import parse_symbol
from analysis.windows import parse_window
from analysis.venues import EXCHANGES as VENUE_EXCHANGES

__all__ = [
    "DEFAULT_URL",
    "EXCHANGES",
    "Store",
    "DailySchedule",
    "SkewWatch",
    "Delivery",
    "Claim",
    "Outcome",
    "ReadingIn",
    "StoredReading",
    "KEEP_READINGS",
    "parse_time",
    "parse_timezone",
    "parse_symbols",
    "parse_view",
    "next_occurrence",
    "delivery_marker",
]

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite+aiosqlite:///liqmap.sqlite3"
EXCHANGES = VENUE_EXCHANGES  # all + every venue of analysis.venues
MAX_SYMBOLS = 5
DEFAULT_COOLDOWN_S = 3600
MIN_COOLDOWN_S = 60
MAX_COOLDOWN_S = 7 * 86400
TZ_HELP = "use an IANA name such as Europe/London, America/New_York or Asia/Singapore (full list: https://en.wikipedia.org/wiki/List_of_tz_database_time_zones)"
UTC = dt_timezone.utc

Kind = Literal["daily", "watch"]
DeliveryState = Literal["claimed", "failed", "sent", "skipped"]


# -- validation -------------------------------------------------------------------------------------

_TIME = re.compile(r"^\s*([0-9]{1,2}):([0-9]{2})\s*$", re.ASCII)


def parse_time(text: str) -> str:
    """``"9:30"`` / ``"09:30"`` -> ``"09:30"``; anything outside 00:00-23:59 is an InputError."""
    m = _TIME.match(str(text))
    if m and int(m.group(1)) <= 23 and int(m.group(2)) <= 59:
        return f"{int(m.group(1)):02d}:{m.group(2)}"
    raise InputError(f"invalid time {str(text)[:12]!r}; use 24-hour HH:MM from 00:00 to 23:59, e.g. 09:30 or 21:00")


_TZ_NAMES: dict[str, str] | None = None


def _tz_names() -> dict[str, str]:
    global _TZ_NAMES
    if _TZ_NAMES is None:
        names = {n for n in zoneinfo.available_timezones() if n not in ("Factory", "localtime", "posixrules")}
        _TZ_NAMES = {n.lower(): n for n in names}
    return _TZ_NAMES


def parse_timezone(text: str) -> str:
    """A valid IANA timezone name in its canonical spelling (case-insensitive input), else InputError."""
    raw = str(text).strip()
    names = _tz_names()
    hit = names.get(raw.lower()) if re.fullmatch(r"[A-Za-z0-9_+\-/]{1,64}", raw) else None
    if hit is None:
        close = difflib.get_close_matches(raw.lower(), list(names), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(names[c] for c in close)}? " if close else ""
        raise InputError(f"unknown timezone {raw[:40]!r}; {hint}{TZ_HELP}")
    return hit


def parse_symbols(symbols: str | Iterable[str]) -> tuple[str, ...]:
    """``"BTC, eth"`` or ``["BTC", "ETHUSDT"]`` -> ``("BTCUSDT", "ETHUSDT")`` (deduplicated, at most 5)."""
    items = re.split(r"[\s,;]+", symbols) if isinstance(symbols, str) else list(symbols)
    out: list[str] = []
    for item in items:
        if str(item).strip():
            sym = parse_symbol(item).symbol
            if sym not in out:
                out.append(sym)
    if not out:
        raise InputError("no symbol given; name one or more tickers like BTC or BTC, ETH")
    if len(out) > MAX_SYMBOLS:
        raise InputError(f"at most {MAX_SYMBOLS} symbols per daily report (got {len(out)}); split them over two schedules")
    return tuple(out)


def parse_view(text: str) -> str:
    """``map``, ``heatmap`` or ``both`` (what a daily report posts), case-insensitive."""
    key = str(text).strip().lower()
    if key not in VIEWS:
        raise InputError(f"unknown view {str(text)[:20]!r}; choose one of {', '.join(VIEWS)}")
    return key


def _parse_exchange(text: str, allowed: Sequence[str]) -> str:
    key = str(text).strip().lower()
    if key not in allowed:
        raise InputError(f"unknown exchange {str(text)[:20]!r}; choose one of {', '.join(allowed)}")
    return key


SNOWFLAKE_MAX = 2**63 - 1  # Discord ids are unsigned 64-bit in JSON but fit BIGINT (signed) in practice
ITEM_ID_MAX = 2**31 - 1  # subscription and delivery ids are Integer primary keys (32-bit on PostgreSQL)


def _is_int_in(value: Any, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= hi


def _parse_id(value: Any, what: str) -> int:
    """A Discord snowflake (1 .. 2**63-1), else InputError; checked before any query (a larger
    int would raise OverflowError in the database driver)."""
    if not _is_int_in(value, SNOWFLAKE_MAX):
        raise InputError(f"{what} must be a positive Discord id, not {str(value)[:24]!r}")
    return value


def _valid_item_id(value: Any) -> bool:
    """Whether ``value`` can be the id of a stored row (1 .. 2**31-1); anything else matches no row."""
    return _is_int_in(value, ITEM_ID_MAX)


def _aware(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("datetimes passed to the store must be timezone-aware")
    return now.astimezone(UTC)


# -- scheduling helpers -----------------------------------------------------------------------------

def local_occurrence(day: date, local_time: str, tz_name: str) -> datetime:
    """The UTC instant of ``local_time`` on local ``day`` in ``tz_name``.

    DST policy (PEP 495, ``fold=0``): a nonexistent local time (spring forward, e.g. 02:30 on the
    US change day) is read with the offset in force before the jump, so it lands the same amount
    *after* the jump (02:30 -> 03:30 local). An ambiguous local time (fall back, e.g. 01:30 on the
    US change day) means its first occurrence (still daylight time). Either way: one post that day.
    """
    hh, mm = (int(x) for x in local_time.split(":"))
    tz = zoneinfo.ZoneInfo(tz_name)
    return datetime.combine(day, dtime(hh, mm), tzinfo=tz).replace(fold=0).astimezone(UTC)


def next_occurrence(local_time: str, tz_name: str, after: datetime) -> datetime:
    """The first UTC instant strictly after ``after`` at which the local clock reads ``local_time``."""
    after = _aware(after)
    day = after.astimezone(zoneinfo.ZoneInfo(tz_name)).date() - timedelta(days=1)
    for _ in range(4):
        at = local_occurrence(day, local_time, tz_name)
        if at > after:
            return at
        day += timedelta(days=1)
    raise AssertionError("no occurrence within three days")  # pragma: no cover


def local_date_of(at: datetime, tz_name: str) -> date:
    """The local calendar date of a UTC instant in ``tz_name``."""
    return at.astimezone(zoneinfo.ZoneInfo(tz_name)).date()


def delivery_marker(schedule_id: int, local_day: date, symbol: str) -> tuple[str, str]:
    """The deterministic ``(marker, nonce)`` of one daily post.

    The marker goes in the message (embed footer) so a restarted dispatcher can find a post it
    made but did not record; the nonce (25 chars, Discord's maximum) lets Discord itself drop a
    duplicate send within its nonce window.
    """
    marker = f"liqmap-d{schedule_id}-{local_day.isoformat()}-{symbol}"
    nonce = "lq" + hashlib.sha256(marker.encode()).hexdigest()[:23]
    return marker, nonce


# -- tables -----------------------------------------------------------------------------------------

class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out (SQLite keeps naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


# A subscription table declares ``natural_key``: the columns that make two subscriptions the same.
# The database enforces it (a unique index or constraint over exactly those columns), and
# Store._insert_subscription turns the violation into a friendly refusal naming the existing id,
# so two identical commands at the same moment (a double click) store one row, never two.

class DailyRow(Base):
    __tablename__ = "daily_schedules"
    natural_key = ("channel_id", "symbols", "window", "exchange", "local_time", "timezone")
    __table_args__ = (Index("uq_daily_schedule", *natural_key, unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, index=True)
    channel_id: Mapped[int] = mapped_column(BigInteger, index=True)
    symbols: Mapped[str] = mapped_column(String(200))
    window: Mapped[str] = mapped_column(String(8))
    exchange: Mapped[str] = mapped_column(String(32))
    local_time: Mapped[str] = mapped_column(String(5))
    timezone: Mapped[str] = mapped_column(String(64))
    next_run_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    paused_reason: Mapped[str | None] = mapped_column(String(300))
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # what is posted (analysis.options.VIEWS); not part of the natural key: one schedule per
    # channel, symbols, window, exchange and time, whose view is map, heatmap or both (migration 0004)
    view: Mapped[str] = mapped_column(String(8), default="map", server_default="map")


class WatchRow(Base):
    __tablename__ = "skew_watches"
    natural_key = ("channel_id", "symbol", "window", "exchange")
    __table_args__ = (UniqueConstraint(*natural_key, name="uq_skew_watch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, index=True)
    channel_id: Mapped[int] = mapped_column(BigInteger, index=True)
    symbol: Mapped[str] = mapped_column(String(32))
    window: Mapped[str] = mapped_column(String(8))
    exchange: Mapped[str] = mapped_column(String(32))
    mild: Mapped[float | None] = mapped_column(Float)
    heavy: Mapped[float | None] = mapped_column(Float)
    exit_mild: Mapped[float | None] = mapped_column(Float)
    exit_heavy: Mapped[float | None] = mapped_column(Float)
    cooldown_s: Mapped[int] = mapped_column(Integer)
    last_class: Mapped[str | None] = mapped_column(String(20))
    last_ratio: Mapped[float | None] = mapped_column(Float)
    last_announced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    paused_reason: Mapped[str | None] = mapped_column(String(300))
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeliveryRow(Base):
    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("schedule_id", "local_date", "symbol", name="uq_delivery_once"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_id: Mapped[int] = mapped_column(Integer, ForeignKey("daily_schedules.id", ondelete="CASCADE"), index=True)
    local_date: Mapped[date] = mapped_column(Date)
    symbol: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(10))
    marker: Mapped[str] = mapped_column(String(100))
    nonce: Mapped[str] = mapped_column(String(25))
    message_id: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    detail: Mapped[str | None] = mapped_column(String(300))


class MarkRow(Base):
    """Named instants the store keeps (``deliveries_pruned_before``: the prune horizon)."""

    __tablename__ = "store_marks"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


PRUNE_HORIZON = "deliveries_pruned_before"
FINAL_STATES = ("sent", "skipped")
BEFORE_HORIZON = "not posted: due before the delivery-retention horizon (its record may have been pruned)"


# -- public records ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class DailySchedule:
    """A daily report: ``symbols`` posted to ``channel_id`` at ``local_time`` in ``timezone``."""

    id: int
    guild_id: int
    channel_id: int
    symbols: tuple[str, ...]
    window: str
    exchange: str
    local_time: str
    timezone: str
    next_run_at: datetime
    paused_reason: str | None
    paused_at: datetime | None
    created_by: int
    created_at: datetime
    view: str = "map"  # map, heatmap or both

    @property
    def paused(self) -> bool:
        return self.paused_reason is not None

    @classmethod
    def _of(cls, r: DailyRow) -> "DailySchedule":
        return cls(r.id, r.guild_id, r.channel_id, tuple(r.symbols.split(",")), r.window, r.exchange,
                   r.local_time, r.timezone, r.next_run_at, r.paused_reason, r.paused_at, r.created_by, r.created_at,
                   r.view)


@dataclass(frozen=True)
class SkewWatch:
    """A skew-change subscription of ``channel_id`` to one (symbol, window, exchange).

    ``mild``/``heavy``/``exit_*`` are None when the defaults apply; ``params`` resolves them.
    ``last_class`` is the last class announced (or recorded as the baseline), None before the first
    observation.
    """

    id: int
    guild_id: int
    channel_id: int
    symbol: str
    window: str
    exchange: str
    mild: float | None
    heavy: float | None
    exit_mild: float | None
    exit_heavy: float | None
    cooldown_s: int
    last_class: str | None
    last_ratio: float | None
    last_announced_at: datetime | None
    paused_reason: str | None
    paused_at: datetime | None
    created_by: int
    created_at: datetime

    @property
    def paused(self) -> bool:
        return self.paused_reason is not None

    @property
    def params(self) -> HysteresisParams:
        return _hysteresis(self.mild, self.heavy, self.exit_mild, self.exit_heavy)

    @classmethod
    def _of(cls, r: WatchRow) -> "SkewWatch":
        return cls(r.id, r.guild_id, r.channel_id, r.symbol, r.window, r.exchange, r.mild, r.heavy, r.exit_mild,
                   r.exit_heavy, r.cooldown_s, r.last_class, r.last_ratio, r.last_announced_at, r.paused_reason,
                   r.paused_at, r.created_by, r.created_at)


@dataclass(frozen=True)
class Delivery:
    """One daily post (schedule x local date x symbol) and where it stands.

    ``state``: ``claimed`` (a dispatcher is sending, or crashed while sending), ``failed`` (the send
    raised; outcome unknown until verified), ``sent`` (``message_id`` known), ``skipped`` (``detail``
    says why). Only ``sent`` and ``skipped`` are final.
    """

    id: int
    schedule_id: int
    local_date: date
    symbol: str
    channel_id: int
    state: str
    marker: str
    nonce: str
    message_id: int | None
    attempts: int
    due_at: datetime
    claimed_at: datetime | None
    finished_at: datetime | None
    detail: str | None

    @property
    def final(self) -> bool:
        return self.state in ("sent", "skipped")

    @classmethod
    def _of(cls, r: DeliveryRow) -> "Delivery":
        return cls(r.id, r.schedule_id, r.local_date, r.symbol, r.channel_id, r.state, r.marker, r.nonce,
                   r.message_id, r.attempts, r.due_at, r.claimed_at, r.finished_at, r.detail)


@dataclass(frozen=True)
class Claim:
    """One post a dispatcher wants to make (or skip): a schedule's run on a local date, for one symbol."""

    schedule: DailySchedule
    local_date: date
    symbol: str
    due_at: datetime


@dataclass(frozen=True)
class Outcome:
    """How a claimed delivery ended: ``sent`` (with ``message_id``), ``failed`` or ``skipped``."""

    delivery_id: int
    state: DeliveryState
    message_id: int | None = None
    detail: str | None = None
    attempts: int | None = None  # the claim's attempt number: the outcome is written only if still ours


def _hysteresis(mild: float | None, heavy: float | None, exit_mild: float | None, exit_heavy: float | None) -> HysteresisParams:
    kw: dict[str, float] = {}
    if mild is not None:
        kw["mild"] = mild
    if heavy is not None:
        kw["heavy"] = heavy
    return HysteresisParams(exit_mild=exit_mild, exit_heavy=exit_heavy, **kw)


# -- migrations -------------------------------------------------------------------------------------

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Any:
    """An Alembic Config built in code (no alembic.ini, independent of the working directory)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _upgrade(sync_conn: Any) -> None:
    from alembic import command

    if sync_conn.dialect.name == "postgresql":
        # several processes may start at once: one migrates, the others wait (lock ends with the transaction)
        sync_conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7365001)")
    cfg = alembic_config()
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


# -- the store --------------------------------------------------------------------------------------

class Store:
    """Async access to the bot's tables. Create with :meth:`Store.open`; one per process."""

    def __init__(self, engine: AsyncEngine, *, max_per_guild: int = 25, exchanges: Sequence[str] = EXCHANGES) -> None:
        self.engine = engine
        self.max_per_guild = max_per_guild
        self.exchanges = tuple(e.lower() for e in exchanges)
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        max_per_guild: int = 25,
        exchanges: Sequence[str] = EXCHANGES,
        migrate: bool = True,
        echo: bool = False,
    ) -> "Store":
        """Connect to ``url`` (default :data:`DEFAULT_URL`) and bring the schema to the latest migration."""
        url = url or DEFAULT_URL
        if max_per_guild < 1:
            raise InputError("the per-server subscription cap must be at least 1")
        engine = create_async_engine(url, echo=echo)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        store = cls(engine, max_per_guild=max_per_guild, exchanges=exchanges)
        if migrate:
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(_upgrade)
            except BaseException:
                await engine.dispose()
                raise
        return store

    @property
    def location(self) -> str:
        """Where the data lives, safe to print: a SQLite file's absolute path (a relative path in
        ``DATABASE_URL`` is relative to the working directory: start the bot from the same one, or
        the next start opens an empty database), else the URL without its password."""
        url = self.engine.url
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            return f"SQLite file {Path(url.database).expanduser().resolve()}"
        return url.render_as_string(hide_password=True)

    async def close(self) -> None:
        """Dispose of the connection pool."""
        await self.engine.dispose()

    # -- daily schedules ----------------------------------------------------------------------------

    async def add_daily(
        self,
        guild_id: int,
        channel_id: int,
        *,
        symbols: str | Iterable[str],
        window: str,
        exchange: str,
        time: str,
        timezone: str,
        created_by: int,
        now: datetime | None = None,
        view: str = "map",
    ) -> DailySchedule:
        """Validate and store a daily report; its first run is the next ``time`` in ``timezone``.
        ``view`` is what it posts: the map, the heatmap or both."""
        guild_id, channel_id = _parse_id(guild_id, "server id"), _parse_id(channel_id, "channel id")
        created_by = _parse_id(created_by, "user id")
        syms = parse_symbols(symbols)
        win = parse_window(window).label
        exch = _parse_exchange(exchange, self.exchanges)
        hhmm = parse_time(time)
        tz = parse_timezone(timezone)
        shown = parse_view(view)
        now = _aware(now)
        values = dict(
            guild_id=guild_id, channel_id=channel_id, symbols=",".join(syms), window=win, exchange=exch,
            local_time=hhmm, timezone=tz, next_run_at=next_occurrence(hhmm, tz, now),
            created_by=created_by, created_at=now, view=shown,
        )
        return await self._insert_subscription(DailyRow, values, DailySchedule._of, "daily report")

    async def list_daily(self, guild_id: int) -> list[DailySchedule]:
        """Every daily report of a server (paused ones too), oldest first."""
        return await self._guild_rows(DailyRow, DailySchedule._of, guild_id)

    async def get_daily(self, schedule_id: int) -> DailySchedule | None:
        return await self._one(DailyRow, DailySchedule._of, schedule_id)

    async def remove_daily(self, guild_id: int, schedule_id: int) -> DailySchedule:
        """Delete a server's daily report (and its delivery history); InputError if it has no such id."""
        async with self._session() as s, s.begin():
            row = await self._owned(s, DailyRow, guild_id, schedule_id, "daily report")
            out = DailySchedule._of(row)
            await s.execute(delete(DeliveryRow).where(DeliveryRow.schedule_id == schedule_id))
            await s.execute(delete(DailyReadingRow).where(DailyReadingRow.schedule_id == schedule_id))
            await s.delete(row)
            return out

    async def resume_daily(self, guild_id: int, schedule_id: int, now: datetime | None = None) -> DailySchedule:
        """Unpause; the next run is the next local time from now (missed days are not caught up)."""
        now = _aware(now)
        async with self._session() as s, s.begin():
            row = await self._owned(s, DailyRow, guild_id, schedule_id, "daily report")
            row.paused_reason = None
            row.paused_at = None
            row.next_run_at = next_occurrence(row.local_time, row.timezone, now)
            await s.flush()
            return DailySchedule._of(row)

    # -- skew watches -------------------------------------------------------------------------------

    async def add_watch(
        self,
        guild_id: int,
        channel_id: int,
        *,
        symbol: str,
        window: str,
        exchange: str,
        created_by: int,
        mild: float | None = None,
        heavy: float | None = None,
        exit_mild: float | None = None,
        exit_heavy: float | None = None,
        cooldown_s: int | None = None,
        now: datetime | None = None,
    ) -> SkewWatch:
        """Validate and store a skew-notice subscription (thresholds default to the metrics' mild/heavy)."""
        guild_id, channel_id = _parse_id(guild_id, "server id"), _parse_id(channel_id, "channel id")
        created_by = _parse_id(created_by, "user id")
        sym = parse_symbol(symbol).symbol
        win = parse_window(window).label
        exch = _parse_exchange(exchange, self.exchanges)
        _hysteresis(mild, heavy, exit_mild, exit_heavy)  # validates
        cd = DEFAULT_COOLDOWN_S if cooldown_s is None else cooldown_s
        if isinstance(cd, bool) or not isinstance(cd, int) or not (MIN_COOLDOWN_S <= cd <= MAX_COOLDOWN_S):
            raise InputError(
                f"cooldown must be {MIN_COOLDOWN_S // 60} minute(s) to {MAX_COOLDOWN_S // 86400} days, in seconds (got {cd!r})"
            )
        now = _aware(now)
        values = dict(
            guild_id=guild_id, channel_id=channel_id, symbol=sym, window=win, exchange=exch,
            mild=_f(mild), heavy=_f(heavy), exit_mild=_f(exit_mild), exit_heavy=_f(exit_heavy),
            cooldown_s=cd, created_by=created_by, created_at=now,
        )
        return await self._insert_subscription(WatchRow, values, SkewWatch._of, f"skew alert for {sym} {win} on {exch}")

    async def list_watches(self, guild_id: int) -> list[SkewWatch]:
        """Every skew subscription of a server (paused ones too), oldest first."""
        return await self._guild_rows(WatchRow, SkewWatch._of, guild_id)

    async def get_watch(self, watch_id: int) -> SkewWatch | None:
        return await self._one(WatchRow, SkewWatch._of, watch_id)

    async def remove_watch(self, guild_id: int, watch_id: int) -> SkewWatch:
        """Delete a server's skew subscription; InputError if it has no such id."""
        async with self._session() as s, s.begin():
            row = await self._owned(s, WatchRow, guild_id, watch_id, "skew alert")
            out = SkewWatch._of(row)
            await s.delete(row)
            return out

    async def resume_watch(self, guild_id: int, watch_id: int) -> SkewWatch:
        """Unpause; the next check records a fresh baseline (no notice for what changed while paused)."""
        async with self._session() as s, s.begin():
            row = await self._owned(s, WatchRow, guild_id, watch_id, "skew alert")
            row.paused_reason = None
            row.paused_at = None
            row.last_class = None
            row.last_ratio = None
            await s.flush()
            return SkewWatch._of(row)

    # -- pausing ------------------------------------------------------------------------------------

    async def pause(self, kind: Kind, item_id: int, reason: str, now: datetime | None = None) -> bool:
        """Pause one daily report or skew notice with a reason; False if it does not exist or is already paused."""
        table = {"daily": DailyRow, "watch": WatchRow}.get(kind)
        if table is None:
            raise InputError(f"unknown subscription kind {kind!r}; daily or watch")
        if not _valid_item_id(item_id):
            return False
        async with self._session() as s, s.begin():
            res = await s.execute(
                update(table)
                .where(table.id == item_id, table.paused_reason.is_(None))
                .values(paused_reason=_reason(reason), paused_at=_aware(now))
            )
            return bool(res.rowcount)

    async def pause_channel(self, channel_id: int, reason: str, now: datetime | None = None) -> int:
        """Pause every active subscription posting to a channel; returns how many were paused."""
        now = _aware(now)
        if not _is_int_in(channel_id, SNOWFLAKE_MAX):
            return 0
        n = 0
        async with self._session() as s, s.begin():
            for table in (DailyRow, WatchRow):
                res = await s.execute(
                    update(table)
                    .where(table.channel_id == channel_id, table.paused_reason.is_(None))
                    .values(paused_reason=_reason(reason), paused_at=now)
                )
                n += res.rowcount or 0
        return n

    # -- for the dispatcher -------------------------------------------------------------------------

    async def due_daily(self, now: datetime) -> list[DailySchedule]:
        """Active schedules whose ``next_run_at`` is at or before ``now``, earliest first."""
        async with self._session() as s:
            rows = await s.scalars(
                select(DailyRow)
                .where(DailyRow.paused_reason.is_(None), DailyRow.next_run_at <= _aware(now))
                .order_by(DailyRow.next_run_at, DailyRow.id)
            )
            return [DailySchedule._of(r) for r in rows]

    async def next_due_at(self) -> datetime | None:
        """The earliest ``next_run_at`` of an active schedule (None when there is none)."""
        async with self._session() as s:
            return await s.scalar(select(func.min(DailyRow.next_run_at)).where(DailyRow.paused_reason.is_(None)))

    async def deliveries(self, schedule_id: int, local_day: date | None = None) -> list[Delivery]:
        """The delivery records of a schedule (of one local date when given)."""
        if not _valid_item_id(schedule_id):
            return []
        q = select(DeliveryRow).where(DeliveryRow.schedule_id == schedule_id)
        if local_day is not None:
            q = q.where(DeliveryRow.local_date == local_day)
        async with self._session() as s:
            return [Delivery._of(r) for r in await s.scalars(q.order_by(DeliveryRow.id))]

    async def claim_delivery(
        self,
        sched: DailySchedule,
        local_day: date,
        symbol: str,
        *,
        due_at: datetime,
        now: datetime,
        lease: timedelta,
    ) -> tuple[Delivery | None, bool]:
        """Take the right to send one daily post. Returns ``(delivery, recovering)``.

        * no record yet: insert it as ``claimed`` (the unique key makes this exactly one winner
          across processes) -> ``(d, False)``;
        * a ``failed`` record, or a ``claimed`` one older than ``lease`` (its sender crashed):
          take it over with a compare-and-set -> ``(d, True)``: the caller must check the channel
          for the marker before sending again;
        * a final record, a fresh claim by someone else, or a lost race -> ``(None, False)``.
        """
        now = _aware(now)
        marker, nonce = delivery_marker(sched.id, local_day, symbol)
        async with self._session() as s:
            horizon = await self._horizon(s)
        if horizon is not None and _aware(due_at) < horizon:
            # its record may have been pruned: never claimed anew (an existing record is still verified below)
            await self.skip_delivery(sched, local_day, symbol, due_at=due_at, now=now, detail=BEFORE_HORIZON)
        else:
            try:
                async with self._session() as s, s.begin():
                    row = DeliveryRow(
                        schedule_id=sched.id, local_date=local_day, symbol=symbol, channel_id=sched.channel_id,
                        state="claimed", marker=marker, nonce=nonce, attempts=1, due_at=due_at, claimed_at=now,
                    )
                    s.add(row)
                    await s.flush()
                    return Delivery._of(row), False
            except IntegrityError:
                pass
        async with self._session() as s, s.begin():
            row = await s.scalar(
                select(DeliveryRow).where(
                    DeliveryRow.schedule_id == sched.id, DeliveryRow.local_date == local_day, DeliveryRow.symbol == symbol
                )
            )
            if row is None or not _reclaimable(row, now, lease):
                return None, False
            res = await s.execute(
                update(DeliveryRow)
                .where(DeliveryRow.id == row.id, DeliveryRow.state == row.state, DeliveryRow.attempts == row.attempts)
                .values(state="claimed", claimed_at=now, attempts=row.attempts + 1)
                .execution_options(synchronize_session=False)
            )
            if not res.rowcount:
                return None, False
            await s.refresh(row)
            return Delivery._of(row), True

    async def finish_delivery(
        self,
        delivery_id: int,
        state: DeliveryState,
        *,
        now: datetime,
        message_id: int | None = None,
        detail: str | None = None,
    ) -> None:
        """Record the outcome of a claimed delivery (``sent``, ``failed`` or ``skipped``)."""
        if state not in ("sent", "failed", "skipped"):
            raise ValueError(f"bad delivery state {state!r}")
        if not _valid_item_id(delivery_id):
            return
        async with self._session() as s, s.begin():
            await s.execute(
                update(DeliveryRow)
                .where(DeliveryRow.id == delivery_id)
                .values(state=state, message_id=message_id, finished_at=_aware(now),
                        detail=_reason(detail) if detail else None)
            )

    async def skip_delivery(
        self, sched: DailySchedule, local_day: date, symbol: str, *, due_at: datetime, now: datetime, detail: str
    ) -> bool:
        """Record a post that will not be made (missed beyond the grace window, or no data).

        Never overrides a record that is ``sent``; a non-final record is turned into ``skipped`` only
        by its claimer (use :meth:`finish_delivery`). Returns True when a skip was recorded.
        """
        marker, nonce = delivery_marker(sched.id, local_day, symbol)
        now = _aware(now)
        try:
            async with self._session() as s, s.begin():
                s.add(DeliveryRow(
                    schedule_id=sched.id, local_date=local_day, symbol=symbol, channel_id=sched.channel_id,
                    state="skipped", marker=marker, nonce=nonce, attempts=0, due_at=due_at, finished_at=now,
                    detail=_reason(detail),
                ))
            return True
        except IntegrityError:
            return False

    async def prune_horizon(self) -> datetime | None:
        """The instant before which final delivery records may have been pruned (None: never pruned)."""
        async with self._session() as s:
            return await self._horizon(s)

    @staticmethod
    async def _horizon(s: AsyncSession) -> datetime | None:
        return await s.scalar(select(MarkRow.at).where(MarkRow.name == PRUNE_HORIZON))

    async def prune_deliveries(self, before: datetime, *, batch: int = 5000, max_batches: int = 100) -> int:
        """Delete final (``sent``/``skipped``) delivery records due before ``before``; returns how many.

        First the prune horizon is raised to ``before`` (never lowered) and committed: from then on
        no post due before the horizon is claimed anew (:meth:`claim_many` records it ``skipped``),
        so a pruned record can never let its post be made again, whatever a schedule's
        ``next_run_at`` says or the clock reads. Records still ``claimed`` or ``failed`` are kept
        (the lease and the marker check need them). Deletes in transactions of at most ``batch``
        rows, at most ``max_batches`` of them (the rest waits for the next prune).
        """
        before = _aware(before)
        if batch < 1 or max_batches < 1:
            raise ValueError("batch and max_batches must be at least 1")
        async with self._session() as s, s.begin():
            mark = await s.get(MarkRow, PRUNE_HORIZON)
            if mark is None:
                s.add(MarkRow(name=PRUNE_HORIZON, at=before))
            elif mark.at < before:
                mark.at = before
        total = 0
        for _ in range(max_batches):
            async with self._session() as s, s.begin():
                ids = (
                    select(DeliveryRow.id)
                    .where(DeliveryRow.state.in_(FINAL_STATES), DeliveryRow.due_at < before)
                    .order_by(DeliveryRow.id)
                    .limit(batch)
                )
                res = await s.execute(delete(DeliveryRow).where(DeliveryRow.id.in_(ids)))
                n = res.rowcount or 0
            total += n
            if n < batch:
                break
        return total

    async def advance(self, schedule_id: int, expected: datetime, new_next: datetime) -> bool:
        """Move ``next_run_at`` from ``expected`` to ``new_next`` (compare-and-set; False if it moved already)."""
        if not _valid_item_id(schedule_id):
            return False
        async with self._session() as s, s.begin():
            res = await s.execute(
                update(DailyRow)
                .where(DailyRow.id == schedule_id, DailyRow.next_run_at == _aware(expected))
                .values(next_run_at=_aware(new_next))
            )
            return bool(res.rowcount)

    # batch forms: one transaction per tick instead of one per channel

    async def deliveries_for(self, runs: Iterable[tuple[int, date]]) -> dict[tuple[int, date, str], Delivery]:
        """Delivery records of several (schedule id, local date) runs, keyed by (id, date, symbol)."""
        wanted = {(sid, d) for sid, d in runs if _valid_item_id(sid)}
        if not wanted:
            return {}
        ids = sorted({sid for sid, _ in wanted})
        days = sorted({d for _, d in wanted})
        out: dict[tuple[int, date, str], Delivery] = {}
        async with self._session() as s:
            for chunk in _chunks(ids, 500):
                rows = await s.scalars(
                    select(DeliveryRow).where(DeliveryRow.schedule_id.in_(chunk), DeliveryRow.local_date.in_(days))
                )
                for r in rows:
                    if (r.schedule_id, r.local_date) in wanted:
                        out[(r.schedule_id, r.local_date, r.symbol)] = Delivery._of(r)
        return out

    async def claim_many(self, claims: Sequence[Claim], *, now: datetime, lease: timedelta) -> list[tuple[Delivery, bool]]:
        """:meth:`claim_delivery` for many posts in one transaction; returns only the claims won.

        If another process inserted one of the records meanwhile, the batch is rolled back and the
        claims are retried one by one (each still exactly-once through the unique key).
        """
        if not claims:
            return []
        now = _aware(now)
        keys = {(c.schedule.id, c.local_date, c.symbol) for c in claims}
        try:
            async with self._session() as s, s.begin():
                existing: dict[tuple[int, date, str], DeliveryRow] = {}
                ids = sorted({c.schedule.id for c in claims})
                days = sorted({c.local_date for c in claims})
                for chunk in _chunks(ids, 500):
                    for r in await s.scalars(
                        select(DeliveryRow).where(DeliveryRow.schedule_id.in_(chunk), DeliveryRow.local_date.in_(days))
                    ):
                        if (r.schedule_id, r.local_date, r.symbol) in keys:
                            existing[(r.schedule_id, r.local_date, r.symbol)] = r
                won: list[tuple[DeliveryRow, bool]] = []
                horizon = await self._horizon(s)
                for c in claims:
                    r = existing.get((c.schedule.id, c.local_date, c.symbol))
                    if r is None:
                        marker, nonce = delivery_marker(c.schedule.id, c.local_date, c.symbol)
                        if horizon is not None and _aware(c.due_at) < horizon:
                            # its record may have been pruned: never claim it anew (see prune_deliveries)
                            s.add(DeliveryRow(
                                schedule_id=c.schedule.id, local_date=c.local_date, symbol=c.symbol,
                                channel_id=c.schedule.channel_id, state="skipped", marker=marker, nonce=nonce,
                                attempts=0, due_at=c.due_at, finished_at=now, detail=BEFORE_HORIZON,
                            ))
                            continue
                        r = DeliveryRow(
                            schedule_id=c.schedule.id, local_date=c.local_date, symbol=c.symbol,
                            channel_id=c.schedule.channel_id, state="claimed", marker=marker, nonce=nonce,
                            attempts=1, due_at=c.due_at, claimed_at=now,
                        )
                        s.add(r)
                        won.append((r, False))
                    elif _reclaimable(r, now, lease):
                        res = await s.execute(
                            update(DeliveryRow)
                            .where(DeliveryRow.id == r.id, DeliveryRow.state == r.state, DeliveryRow.attempts == r.attempts)
                            .values(state="claimed", claimed_at=now, attempts=r.attempts + 1)
                            .execution_options(synchronize_session=False)
                        )
                        if res.rowcount:
                            r.state, r.claimed_at, r.attempts = "claimed", now, r.attempts + 1
                            won.append((r, True))
                await s.flush()
                return [(Delivery._of(r), rec) for r, rec in won]
        except IntegrityError:
            out = []
            for c in claims:
                d, rec = await self.claim_delivery(c.schedule, c.local_date, c.symbol, due_at=c.due_at, now=now, lease=lease)
                if d is not None:
                    out.append((d, rec))
            return out

    async def finish_many(self, outcomes: Sequence[Outcome], *, now: datetime,
                          readings: Sequence["ReadingIn"] = ()) -> None:
        """Record the outcomes of many claimed deliveries in one transaction.

        An outcome with ``attempts`` is written only while the record is still that claim (state
        ``claimed``, same attempt number): if another dispatcher took the claim over meanwhile (its
        lease ran out), its record wins and this stale outcome is dropped.

        ``readings`` (the records of the reports just posted, :class:`ReadingIn`) are kept in the
        same transaction, so a posted report is never recorded without its reading; they are kept
        even when the outcome is dropped as stale (the post was made, with that reading). A
        schedule removed meanwhile simply loses its readings.
        """
        if not outcomes and not readings:
            return
        now = _aware(now)
        plain, guarded = [], []
        for o in outcomes:
            if o.state not in ("sent", "failed", "skipped"):
                raise ValueError(f"bad delivery state {o.state!r}")
            if not _valid_item_id(o.delivery_id):
                continue  # matches no row
            row = {"b_id": o.delivery_id, "b_state": o.state, "b_message_id": o.message_id, "b_finished_at": now,
                   "b_detail": _reason(o.detail) if o.detail else None}
            if o.attempts is None:
                plain.append(row)
            else:
                guarded.append({**row, "b_attempts": o.attempts})
        t = DeliveryRow.__table__
        values = dict(state=bindparam("b_state"), message_id=bindparam("b_message_id"),
                      finished_at=bindparam("b_finished_at", type_=UTCDateTime()), detail=bindparam("b_detail"))
        keep = [r for r in readings if _valid_item_id(r.schedule_id)]
        for attempt in range(2):
            try:
                async with self._session() as s, s.begin():  # (executemany: rowcount is not reliable on asyncpg)
                    if plain:
                        await s.execute(update(t).where(t.c.id == bindparam("b_id")).values(**values), plain)
                    if guarded:
                        await s.execute(
                            update(t)
                            .where(t.c.id == bindparam("b_id"), t.c.state == "claimed",
                                   t.c.attempts == bindparam("b_attempts"))
                            .values(**values),
                            guarded,
                        )
                    await self._keep_readings(s, keep, now)
                return
            except IntegrityError:
                if attempt or not keep:
                    raise
                keep = await self._live_readings(keep)  # a schedule was removed meanwhile: drop its readings

    async def renew_claim(self, delivery_id: int, attempts: int, *, now: datetime) -> bool:
        """Refresh the lease of a claim still held (state ``claimed``, same attempt number).

        False if another dispatcher took it over: the caller must then not send.
        """
        if not _valid_item_id(delivery_id):
            return False
        async with self._session() as s, s.begin():
            res = await s.execute(
                update(DeliveryRow)
                .where(DeliveryRow.id == delivery_id, DeliveryRow.state == "claimed", DeliveryRow.attempts == attempts)
                .values(claimed_at=_aware(now))
                .execution_options(synchronize_session=False)
            )
            return bool(res.rowcount)

    async def skip_many(self, skips: Sequence[Claim], *, now: datetime, detail: str | Sequence[str]) -> int:
        """Record ``skipped`` for posts that have no record yet (others are left alone); returns how many."""
        if not skips:
            return 0
        now = _aware(now)
        details = [detail] * len(skips) if isinstance(detail, str) else list(detail)
        existing = await self.deliveries_for((c.schedule.id, c.local_date) for c in skips)
        todo = [(c, why) for c, why in zip(skips, details) if (c.schedule.id, c.local_date, c.symbol) not in existing]
        try:
            async with self._session() as s, s.begin():
                for c, why in todo:
                    marker, nonce = delivery_marker(c.schedule.id, c.local_date, c.symbol)
                    s.add(DeliveryRow(
                        schedule_id=c.schedule.id, local_date=c.local_date, symbol=c.symbol,
                        channel_id=c.schedule.channel_id, state="skipped", marker=marker, nonce=nonce, attempts=0,
                        due_at=c.due_at, finished_at=now, detail=_reason(why),
                    ))
            return len(todo)
        except IntegrityError:
            n = 0
            for c, why in todo:
                n += await self.skip_delivery(c.schedule, c.local_date, c.symbol, due_at=c.due_at, now=now, detail=why)
            return n

    async def advance_many(self, moves: Sequence[tuple[int, datetime, datetime]]) -> None:
        """:meth:`advance` for many ``(schedule id, expected, new)`` moves in one transaction."""
        moves = [m for m in moves if _valid_item_id(m[0])]
        if not moves:
            return
        stmt = (
            update(DailyRow.__table__)
            .where(DailyRow.__table__.c.id == bindparam("b_id"),
                   DailyRow.__table__.c.next_run_at == bindparam("b_expected", type_=UTCDateTime()))
            .values(next_run_at=bindparam("b_new", type_=UTCDateTime()))
        )
        async with self._session() as s, s.begin():
            await s.execute(stmt, [{"b_id": i, "b_expected": _aware(e), "b_new": _aware(n)} for i, e, n in moves])

    async def record_baselines(self, items: Sequence[tuple[int, str, float | None]]) -> None:
        """Set the first observed class of watches that have none yet: ``(watch id, class key, ratio)``."""
        items = [i for i in items if _valid_item_id(i[0])]
        if not items:
            return
        t = WatchRow.__table__
        stmt = (
            update(t)
            .where(t.c.id == bindparam("b_id"), t.c.last_class.is_(None))
            .values(last_class=bindparam("b_class"), last_ratio=bindparam("b_ratio"))
        )
        async with self._session() as s, s.begin():
            await s.execute(stmt, [{"b_id": i, "b_class": k, "b_ratio": _finite(r)} for i, k, r in items])

    async def active_watches(self) -> list[SkewWatch]:
        """Every unpaused skew subscription."""
        async with self._session() as s:
            rows = await s.scalars(select(WatchRow).where(WatchRow.paused_reason.is_(None)).order_by(WatchRow.id))
            return [SkewWatch._of(r) for r in rows]

    async def set_watch_class(
        self,
        watch_id: int,
        *,
        expected: str | None,
        new: str | None,
        ratio: float | None,
        announced_at: datetime | None,
        previous_announced_at: datetime | None = None,
        restore: bool = False,
    ) -> bool:
        """Compare-and-set the last announced class (so two dispatchers cannot both announce).

        ``announced_at`` is written as ``last_announced_at`` (None leaves it unchanged unless
        ``restore`` is set, which writes ``previous_announced_at`` back: used to undo a claim
        whose notice could not be sent).
        """
        values: dict[str, Any] = {"last_class": new, "last_ratio": _finite(ratio)}
        if restore:
            values["last_announced_at"] = None if previous_announced_at is None else _aware(previous_announced_at)
        elif announced_at is not None:
            values["last_announced_at"] = _aware(announced_at)
        if not _valid_item_id(watch_id):
            return False
        cond = WatchRow.last_class.is_(None) if expected is None else WatchRow.last_class == expected
        async with self._session() as s, s.begin():
            res = await s.execute(update(WatchRow).where(WatchRow.id == watch_id, cond).values(**values))
            return bool(res.rowcount)

    # -- helpers ------------------------------------------------------------------------------------

    async def count_subscriptions(self, guild_id: int) -> int:
        """Daily reports, skew notices and cluster alerts of a server (paused ones count)."""
        guild_id = _parse_id(guild_id, "server id")
        async with self._session() as s:
            return await self._count(s, guild_id)

    async def _count(self, s: AsyncSession, guild_id: int) -> int:
        from .cluster_store import ClusterRow  # (that module builds on this one)

        n = 0
        for table in (DailyRow, WatchRow, ClusterRow):
            n += int(await s.scalar(select(func.count()).select_from(table).where(table.guild_id == guild_id)) or 0)
        return n

    async def _check_cap(self, s: AsyncSession, guild_id: int, *, added: int = 0) -> None:
        """Refuse when the server is at its cap. ``added``: rows this transaction has inserted
        already; checked again after the insert, because two commands running at once may both
        have counted before either inserted (SQLite: the insert holds the write lock, so the
        recount sees every earlier insert; PostgreSQL: a per-server advisory lock orders them)."""
        if not added and s.bind.dialect.name == "postgresql":
            await s.execute(select(func.pg_advisory_xact_lock(guild_id)))
        n = await self._count(s, guild_id) - added
        if n >= self.max_per_guild:
            raise InputError(
                f"this server already has {n} subscriptions (daily reports, skew and cluster alerts together; "
                f"the limit is {self.max_per_guild}); remove one first"
            )

    async def _insert_subscription(self, table: Any, values: dict[str, Any], wrap: Callable[[Any], Any],
                                   noun: str) -> Any:
        """Insert one subscription row under the server's cap, exactly once per natural key.

        No check-then-insert: the table's unique key decides, so of two identical commands running
        at once exactly one stores its row and the other is refused with the id of that row
        (``that <noun> already exists in this channel (id N)``). Every subscription table uses this.
        """
        for _ in range(3):
            try:
                async with self._session() as s, s.begin():
                    await self._check_cap(s, values["guild_id"])
                    row = table(**values)
                    s.add(row)
                    await s.flush()
                    await self._check_cap(s, values["guild_id"], added=1)
                    return wrap(row)
            except IntegrityError:
                async with self._session() as s:
                    same = await s.scalar(
                        select(table.id)
                        .where(*(getattr(table, c) == values[c] for c in table.natural_key))
                        .order_by(table.id).limit(1)
                    )
                if same is not None:
                    raise InputError(f"that {noun} already exists in this channel (id {same})") from None
                # the identical row was removed between our insert and the lookup: insert again
        raise InputError(f"that {noun} was changed by another command at the same moment; please try again")

    async def _guild_rows(self, table: Any, wrap: Callable[[Any], Any], guild_id: int) -> list[Any]:
        """Every row of ``table`` that belongs to a server, oldest first, as frozen views."""
        guild_id = _parse_id(guild_id, "server id")
        async with self._session() as s:
            rows = await s.scalars(select(table).where(table.guild_id == guild_id).order_by(table.id))
            return [wrap(r) for r in rows]

    async def _one(self, table: Any, wrap: Callable[[Any], Any], item_id: int) -> Any:
        if not _valid_item_id(item_id):
            return None
        async with self._session() as s:
            row = await s.get(table, item_id)
            return wrap(row) if row else None

    @staticmethod
    async def _owned(s: AsyncSession, table: type, guild_id: int, item_id: int, what: str) -> Any:
        guild_id = _parse_id(guild_id, "server id")
        if not _valid_item_id(item_id):
            raise InputError(f"this server has no {what} with id {str(item_id)[:24]} (ids are 1 to {ITEM_ID_MAX}); "
                             "the list command shows the ids")
        row = await s.get(table, item_id)
        if row is None or row.guild_id != guild_id:
            raise InputError(f"this server has no {what} with id {item_id}; the list command shows the ids")
        return row


    # -- daily readings (see DailyReadingRow at the end of the file) ---------------------------------

    async def _keep_readings(self, s: AsyncSession, items: Sequence[ReadingIn], now: datetime) -> None:
        """Insert ``items`` and drop all but the latest :data:`KEEP_READINGS` of each (schedule, symbol)."""
        items = [r for r in items if len(r.record) <= MAX_RECORD_BYTES and len(r.symbol) <= 32]
        if not items:
            return
        t = DailyReadingRow.__table__
        await s.execute(t.insert(), [{"schedule_id": r.schedule_id, "symbol": r.symbol, "local_date": r.local_date,
                                      "posted_at": now, "record": r.record} for r in items])
        newest = (select(t.c.id).where(t.c.schedule_id == bindparam("b_s"), t.c.symbol == bindparam("b_y"))
                  .order_by(t.c.id.desc()).limit(KEEP_READINGS))
        pairs = sorted({(r.schedule_id, r.symbol) for r in items})
        await s.execute(
            delete(t).where(t.c.schedule_id == bindparam("b_s"), t.c.symbol == bindparam("b_y"),
                            t.c.id.not_in(newest.scalar_subquery())),
            [{"b_s": sid, "b_y": sym} for sid, sym in pairs],
        )

    async def _live_readings(self, items: Sequence[ReadingIn]) -> list[ReadingIn]:
        """``items`` whose schedule still exists."""
        ids = sorted({r.schedule_id for r in items})
        live: set[int] = set()
        async with self._session() as s:
            for chunk in _chunks(ids, 500):
                live.update(await s.scalars(select(DailyRow.id).where(DailyRow.id.in_(chunk))))
        return [r for r in items if r.schedule_id in live]

    async def latest_readings(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], StoredReading]:
        """The latest kept reading of each (schedule id, symbol) that has one: one query (per 500 schedules)."""
        wanted = {(sid, sym) for sid, sym in keys if _valid_item_id(sid)}
        if not wanted:
            return {}
        t = DailyReadingRow
        out: dict[tuple[int, str], StoredReading] = {}
        async with self._session() as s:
            for chunk in _chunks(sorted({sid for sid, _ in wanted}), 500):
                latest = (select(func.max(t.id)).where(t.schedule_id.in_(chunk))
                          .group_by(t.schedule_id, t.symbol).scalar_subquery())
                for r in await s.scalars(select(t).where(t.id.in_(latest))):
                    if (r.schedule_id, r.symbol) in wanted:
                        out[(r.schedule_id, r.symbol)] = StoredReading._of(r)
        return out

    async def readings(self, schedule_id: int, symbol: str | None = None) -> list[StoredReading]:
        """The kept readings of a schedule (one symbol, or all), oldest first."""
        if not _valid_item_id(schedule_id):
            return []
        q = select(DailyReadingRow).where(DailyReadingRow.schedule_id == schedule_id)
        if symbol is not None:
            q = q.where(DailyReadingRow.symbol == symbol)
        async with self._session() as s:
            return [StoredReading._of(r) for r in await s.scalars(q.order_by(DailyReadingRow.id))]


def _reclaimable(row: DeliveryRow, now: datetime, lease: timedelta) -> bool:
    """A record may be taken over when its send failed, or its claimer has held it longer than ``lease``."""
    if row.state == "failed":
        return True
    return row.state == "claimed" and (row.claimed_at is None or now - row.claimed_at >= lease)


def _chunks(items: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=5000")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


def _reason(text: str | None) -> str:
    text = " ".join(str(text or "no reason given").split())
    return text[:300]


def _f(x: float | None) -> float | None:
    return None if x is None else float(x)


def _finite(x: float | None) -> float | None:
    import math

    return float(x) if x is not None and math.isfinite(x) else None


# -- daily readings (what a daily report compares itself with) ----------------------------------------
# The table and its records; the Store methods are at the end of the Store class.

#: how many posted readings are kept per (schedule, symbol); only the latest is compared with
KEEP_READINGS = 3


class DailyReadingRow(Base):
    __tablename__ = "daily_readings"
    __table_args__ = (Index("ix_daily_readings_latest", "schedule_id", "symbol", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_id: Mapped[int] = mapped_column(Integer, ForeignKey("daily_schedules.id", ondelete="CASCADE"))
    symbol: Mapped[str] = mapped_column(String(32))
    local_date: Mapped[date] = mapped_column(Date)
    posted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    record: Mapped[str] = mapped_column(Text)


@dataclass(frozen=True)
class ReadingIn:
    """The reading record (JSON text, :mod:`analysis.readings`) of one posted daily report, to keep."""

    schedule_id: int
    symbol: str
    local_date: date
    record: str


@dataclass(frozen=True)
class StoredReading:
    """A kept reading record: what the daily report of ``schedule_id``/``symbol`` said on ``local_date``."""

    id: int
    schedule_id: int
    symbol: str
    local_date: date
    posted_at: datetime
    record: str

    @classmethod
    def _of(cls, r: DailyReadingRow) -> "StoredReading":
        return cls(r.id, r.schedule_id, r.symbol, r.local_date, r.posted_at, r.record)
