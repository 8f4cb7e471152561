"""The tape in the bot's database: realized liquidation events and feed gaps (issue 11).

:class:`TapeStore` implements :class:`~analysis.tape.events.TapeSink` (what the recorder writes)
and :class:`~analysis.tape.events.TapeReader` (what the overlays and the live score read) on the
same database as :class:`bot.store.Store`: the same ``DATABASE_URL`` (SQLite file with WAL by
default, PostgreSQL through asyncpg), the same Alembic migrations (``0006_tape``), and either its
own engine (:meth:`TapeStore.open`) or the bot's (``TapeStore(store.engine)``).

Tables:

- ``tape_events``: one row per venue event, ``UNIQUE(venue, key)`` so a replay after a reconnect
  stores once (bulk ``INSERT ... ON CONFLICT DO NOTHING``, the sqlite and postgresql dialect
  inserts); index ``(symbol, time_ms)`` for reads, ``(time_ms)`` for the retention prune.
- ``tape_gaps``: spans when a feed was down, upserted on ``(venue, symbol, start_ms)`` so the
  recorder opens a gap and later closes it with the same key. A gap of every symbol on a
  connection (``Gap.symbol`` None) is stored with ``symbol = ''``: a NULL in a unique key never
  conflicts (NULLs are distinct in SQLite and PostgreSQL), so the upsert could not close it.
- ``tape_coverage`` (migration ``0008_tape_coverage``): one span per recorder run, venue and
  symbol, from the run's start to its last heartbeat (:data:`COVERAGE_BEAT_S`) or its stop. Time
  outside every span was not recorded, so the overlays say "no tape recorded" there instead of
  "$0 realized" (:class:`~analysis.tape.events.Coverage`).

Every event is validated before it reaches a query (:func:`check_event`); a bad one is counted
(:attr:`TapeStore.rejected`), logged without its content and skipped, never failing the batch.
Reads are bounded: :meth:`TapeStore.events` returns at most ``limit`` rows (default
:data:`EVENTS_CAP`); totals come from SQL aggregates (:meth:`TapeStore.totals`,
:meth:`TapeStore.hourly`), which stay small whatever the volume.

The second half runs the recorder (:class:`TapeRunner`): the standalone ``liqmap tape`` and the
bot's task both use it (status line, periodic retention prune, gaps written on start and stop).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from sqlalchemy import BigInteger, Boolean, Float, Index, Integer, String, UniqueConstraint, and_, delete, event, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.orm import Mapped, mapped_column

from analysis.errors import InputError
from analysis.tape.events import FEED_SAMPLED, Coverage, Gap, LiquidationEvent

from .schema import check_revision
from .store import DEFAULT_URL, Base, _sqlite_pragmas, _upgrade

__all__ = [
    "TapeStore",
    "TapeRunner",
    "supervise",
    "Totals",
    "HourlySum",
    "TAPE_VENUES",
    "EVENTS_CAP",
    "check_event",
    "check_gap",
    "insert_events_stmt",
    "upsert_gap_stmt",
    "parse_venues",
    "needed_symbols",
]

log = logging.getLogger(__name__)

TAPE_VENUES: tuple[str, ...] = tuple(FEED_SAMPLED)
#: most events one :meth:`TapeStore.events` call returns (about 200 bytes each in memory: 10 MB)
EVENTS_CAP = 50_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
#: the earliest event time accepted (2015-01-01 UTC: before any of these venues' perpetuals)
MIN_TIME_MS = 1_420_070_400_000
#: how far ahead of the wall clock an event time may be (venue clocks drift, ours too)
MAX_AHEAD_MS = DAY_MS
MAX_VALUE = 1e15  # a price, quantity or USD value above this is a corrupt frame, not a trade
MAX_KEY = 128
#: pauses before retrying a write after a transient database error (then the error is raised)
WRITE_RETRIES = (0.2, 1.0)
MAX_REASON = 300
#: how often a running recorder extends its coverage spans (seconds): a killed recorder's span
#: ends at most this long before it died
COVERAGE_BEAT_S = 60.0
_VENUE = re.compile(r"[a-z][a-z0-9_]{0,15}", re.ASCII)
_SYMBOL = re.compile(r"[A-Z0-9]{2,32}", re.ASCII)


# -- tables -----------------------------------------------------------------------------------------

EVENT_ID = BigInteger().with_variant(Integer(), "sqlite")


class TapeEventRow(Base):
    __tablename__ = "tape_events"
    __table_args__ = (
        UniqueConstraint("venue", "key", name="uq_tape_event"),
        Index("ix_tape_events_symbol_time", "symbol", "time_ms"),
        Index("ix_tape_events_time", "time_ms"),
    )

    # 64-bit on PostgreSQL (ids are never reused and a busy tape passes 2**31 in years); SQLite
    # needs INTEGER for its rowid alias
    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True)
    venue: Mapped[str] = mapped_column(String(16))
    symbol: Mapped[str] = mapped_column(String(32))
    time_ms: Mapped[int] = mapped_column(BigInteger)
    side: Mapped[str] = mapped_column(String(5))
    price: Mapped[float] = mapped_column(Float)
    qty: Mapped[float] = mapped_column(Float)
    usd: Mapped[float] = mapped_column(Float)
    sampled: Mapped[bool] = mapped_column(Boolean)
    key: Mapped[str] = mapped_column(String(MAX_KEY))


class TapeGapRow(Base):
    __tablename__ = "tape_gaps"
    __table_args__ = (
        UniqueConstraint("venue", "symbol", "start_ms", name="uq_tape_gap"),
        Index("ix_tape_gaps_start", "start_ms"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    venue: Mapped[str] = mapped_column(String(16))
    symbol: Mapped[str] = mapped_column(String(32))  # '' = every symbol of the connection
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(MAX_REASON))


class TapeCoverageRow(Base):
    __tablename__ = "tape_coverage"
    __table_args__ = (
        UniqueConstraint("venue", "symbol", "start_ms", name="uq_tape_coverage"),
        Index("ix_tape_coverage_symbol_start", "symbol", "start_ms"),
        Index("ix_tape_coverage_end", "end_ms"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    venue: Mapped[str] = mapped_column(String(16))
    symbol: Mapped[str] = mapped_column(String(32))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)


EVENTS = TapeEventRow.__table__
GAPS = TapeGapRow.__table__
COVERAGE = TapeCoverageRow.__table__


# -- validation -------------------------------------------------------------------------------------

def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _value(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 < x < MAX_VALUE


def check_event(e: Any, now_ms: int) -> str | None:
    """Why ``e`` cannot be stored (a short reason naming the field), or None when it can."""
    if not isinstance(e, LiquidationEvent):
        return "not a LiquidationEvent"
    if not isinstance(e.venue, str) or not _VENUE.fullmatch(e.venue):
        return "venue"
    if not isinstance(e.symbol, str) or not _SYMBOL.fullmatch(e.symbol):
        return "symbol"
    if not _int(e.time_ms) or not MIN_TIME_MS <= e.time_ms <= now_ms + MAX_AHEAD_MS:
        return "time_ms"
    if e.side not in ("long", "short"):
        return "side"
    for name in ("price", "qty", "usd"):
        if not _value(getattr(e, name)):
            return name
    if not isinstance(e.sampled, bool):
        return "sampled"
    if not isinstance(e.key, str) or not 1 <= len(e.key) <= MAX_KEY or not e.key.isprintable():
        return "key"
    return None


def check_gap(g: Any, now_ms: int) -> Gap:
    """The gap as stored (reason one line, at most 300 characters), or :class:`InputError`."""
    if not isinstance(g, Gap):
        raise InputError("a gap must be a Gap")
    if not isinstance(g.venue, str) or not _VENUE.fullmatch(g.venue):
        raise InputError(f"gap venue {str(g.venue)[:20]!r} is not a venue name")
    if g.symbol is not None and (not isinstance(g.symbol, str) or not _SYMBOL.fullmatch(g.symbol)):
        raise InputError(f"gap symbol {str(g.symbol)[:40]!r} is not a canonical symbol")
    if not _int(g.start_ms) or not MIN_TIME_MS <= g.start_ms <= now_ms + MAX_AHEAD_MS:
        raise InputError(f"gap start {str(g.start_ms)[:24]} is not a time in milliseconds")
    if g.end_ms is not None and (not _int(g.end_ms) or not g.start_ms <= g.end_ms <= now_ms + MAX_AHEAD_MS):
        raise InputError(f"gap end {str(g.end_ms)[:24]} is not a time at or after its start")
    reason = " ".join(str(g.reason or "no reason given").split())[:MAX_REASON]
    return Gap(g.venue, g.symbol, g.start_ms, g.end_ms, reason)


def parse_venues(venues: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"bybit, OKX"`` -> ``("bybit", "okx")``; None or empty -> every tape venue; unknown: InputError."""
    if venues is None:
        return TAPE_VENUES
    items = re.split(r"[\s,;]+", venues) if isinstance(venues, str) else [str(v) for v in venues]
    out: list[str] = []
    for item in items:
        name = item.strip().lower()
        if not name:
            continue
        if name not in FEED_SAMPLED:
            raise InputError(f"unknown tape venue {item.strip()[:20]!r}; choose from {', '.join(TAPE_VENUES)}")
        if name not in out:
            out.append(name)
    return tuple(out) or TAPE_VENUES


def _check_span(start_ms: int, end_ms: int) -> None:
    if not (_int(start_ms) and _int(end_ms)) or start_ms > end_ms:
        raise InputError("a tape span needs integer start_ms <= end_ms (milliseconds)")


def _check_symbol(symbol: str) -> str:
    if not isinstance(symbol, str) or not _SYMBOL.fullmatch(symbol):
        raise InputError(f"tape symbol {str(symbol)[:40]!r} is not canonical (e.g. BTCUSDT)")
    return symbol


# -- statements -------------------------------------------------------------------------------------

def _dialect_insert(dialect: str) -> Any:
    if dialect == "sqlite":
        return sqlite.insert
    if dialect == "postgresql":
        return postgresql.insert
    raise InputError(f"the tape needs SQLite or PostgreSQL, not {dialect}")


def insert_events_stmt(dialect: str) -> Any:
    """The bulk insert, executed with a list of rows: ``INSERT ... ON CONFLICT (venue, key) DO
    NOTHING RETURNING id``; SQLAlchemy sends it as multi-row VALUES batches ("insertmanyvalues",
    within each driver's parameter limit) and returns only the rows actually inserted."""
    return (_dialect_insert(dialect)(EVENTS)
            .on_conflict_do_nothing(index_elements=["venue", "key"]).returning(EVENTS.c.id))


def upsert_gap_stmt(dialect: str, gap: Gap) -> Any:
    """``INSERT ... ON CONFLICT (venue, symbol, start_ms) DO UPDATE``: closes an open gap (an end
    already stored is kept when the new row has none) and takes the new reason."""
    ins = _dialect_insert(dialect)(GAPS).values(venue=gap.venue, symbol=gap.symbol or "", start_ms=gap.start_ms,
                                                end_ms=gap.end_ms, reason=gap.reason)
    return ins.on_conflict_do_update(
        index_elements=["venue", "symbol", "start_ms"],
        set_={"end_ms": func.coalesce(ins.excluded.end_ms, GAPS.c.end_ms), "reason": ins.excluded.reason},
    )


# -- records ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Totals:
    """Realized liquidations of one venue and side over a span."""

    venue: str
    side: str
    count: int
    qty: float
    usd: float
    sampled: bool  # the venue's feed drops events: a lower bound


@dataclass(frozen=True, slots=True)
class HourlySum:
    """Realized USD of one venue and side in the UTC hour starting at ``hour_ms``."""

    hour_ms: int
    venue: str
    side: str
    count: int
    usd: float


# -- the store --------------------------------------------------------------------------------------

class TapeStore:
    """Tape rows in the bot's database; a :class:`TapeSink` and a :class:`TapeReader`.

    ``TapeStore(engine)`` shares an engine (the bot's ``store.engine``; :meth:`close` then leaves
    it alone); :meth:`open` makes its own and runs the migrations. ``wall_ms`` is the clock used to
    refuse event times far in the future (injectable for tests).
    """

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False,
                 wall_ms: Callable[[], int] | None = None) -> None:
        self.engine = engine
        self._owns = owns_engine
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        self.rejected = 0  # events refused by check_event since start
        self.stored = 0  # new events stored since start
        self.duplicates = 0  # events already stored (a replay after a reconnect)
        self.dialect = engine.dialect.name
        self._insert_events = insert_events_stmt(self.dialect)  # also refuses another database now

    @classmethod
    async def open(cls, url: str | None = None, *, migrate: bool = True,
                   wall_ms: Callable[[], int] | None = None) -> "TapeStore":
        """Connect to ``url`` (default :data:`bot.store.DEFAULT_URL`) and migrate to the latest schema.
        A database at a revision this liqmap does not know (migrated by a newer one) is an
        :class:`InputError` saying so (:func:`bot.schema.check_revision`)."""
        engine = create_async_engine(url or DEFAULT_URL)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        try:
            tape = cls(engine, owns_engine=True, wall_ms=wall_ms)
            async with engine.begin() as conn:
                await conn.run_sync(check_revision)  # a newer liqmap's database: one clear error
                if migrate:
                    await conn.run_sync(_upgrade)
        except BaseException:
            await engine.dispose()
            raise
        return tape

    async def close(self) -> None:
        """Dispose of the engine if this store created it."""
        if self._owns:
            await self.engine.dispose()

    # -- sink ---------------------------------------------------------------------------------------

    async def write_events(self, events: Sequence[LiquidationEvent]) -> int:
        """Store the valid events in one transaction; return how many were new.

        Invalid events are counted in :attr:`rejected` and skipped; duplicates (same venue and
        key, in this batch or stored before) are ignored.
        """
        now = self._wall_ms()
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        bad: dict[str, int] = {}
        for e in events:
            why = check_event(e, now)
            if why is not None:
                bad[why] = bad.get(why, 0) + 1
                continue
            rows.setdefault((e.venue, e.key), {
                "venue": e.venue, "symbol": e.symbol, "time_ms": e.time_ms, "side": e.side,
                "price": float(e.price), "qty": float(e.qty), "usd": float(e.usd), "sampled": e.sampled, "key": e.key,
            })
        if bad:
            self.rejected += sum(bad.values())
            log.warning("tape: %d invalid event(s) skipped (bad %s)", sum(bad.values()),
                        ", ".join(f"{k}: {n}" for k, n in sorted(bad.items())))
        if not rows:
            return 0
        new = await self._retrying(self._insert_rows, list(rows.values()))
        self.stored += new
        self.duplicates += len(events) - sum(bad.values()) - new
        return new

    async def write_gap(self, gap: Gap) -> None:
        """Record or close (same venue, symbol and start) a gap; a malformed gap is InputError."""
        gap = check_gap(gap, self._wall_ms())
        await self._retrying(self._upsert_gap, gap)

    async def _insert_rows(self, rows: list[dict[str, Any]]) -> int:
        async with self.engine.begin() as conn:
            return len((await conn.execute(self._insert_events, rows)).all())

    async def _upsert_gap(self, gap: Gap) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(upsert_gap_stmt(self.dialect, gap))

    async def _retrying(self, write: Callable[[Any], Any], arg: Any) -> Any:
        """Run an idempotent write, again after a transient database error (a lock held past the
        busy timeout, a dropped server connection): :data:`WRITE_RETRIES` more tries, then raise,
        so the recorder keeps the batch. Both writes are idempotent, so a retry never doubles a row."""
        for attempt, pause in enumerate((*WRITE_RETRIES, None)):
            try:
                return await write(arg)
            except (OperationalError, InterfaceError, OSError) as exc:
                if pause is None:
                    raise
                log.warning("tape: database write failed (%s), retry %d in %g s", type(exc).__name__, attempt + 1, pause)
                await asyncio.sleep(pause)

    async def close_open_gaps(self, venues: Sequence[str], end_ms: int, reason: str | None = None) -> int:
        """Close every open gap of ``venues`` that started at or before ``end_ms`` (a recorder
        starting again: the span it was not running ends now); returns how many."""
        venues = parse_venues(venues)
        if not _int(end_ms):
            raise InputError("end_ms must be an integer time in milliseconds")
        values: dict[str, Any] = {"end_ms": end_ms}
        if reason is not None:
            values["reason"] = " ".join(reason.split())[:MAX_REASON]
        async with self.engine.begin() as conn:
            res = await conn.execute(update(GAPS).where(
                GAPS.c.venue.in_(venues), GAPS.c.end_ms.is_(None), GAPS.c.start_ms <= end_ms).values(**values))
        return res.rowcount or 0

    # -- coverage -----------------------------------------------------------------------------------

    async def open_coverage(self, venues: Sequence[str], symbols: Sequence[str], start_ms: int) -> None:
        """A recorder run starts: one span per venue and symbol, ``[start_ms, start_ms]`` (idempotent)."""
        venues = parse_venues(venues)
        syms = [_check_symbol(x) for x in dict.fromkeys(symbols)]
        if not _int(start_ms):
            raise InputError("start_ms must be an integer time in milliseconds")
        rows = [{"venue": v, "symbol": x, "start_ms": start_ms, "end_ms": start_ms} for v in venues for x in syms]
        if not rows:
            return
        stmt = _dialect_insert(self.dialect)(COVERAGE).on_conflict_do_nothing(
            index_elements=["venue", "symbol", "start_ms"])
        async with self.engine.begin() as conn:
            await conn.execute(stmt, rows)

    async def extend_coverage(self, venues: Sequence[str], start_ms: int, end_ms: int) -> int:
        """The run that started at ``start_ms`` is still recording (or stopped) at ``end_ms``: its
        spans of ``venues`` end there (never earlier than they did); returns the spans updated."""
        venues = parse_venues(venues)
        _check_span(start_ms, end_ms)
        async with self.engine.begin() as conn:
            res = await conn.execute(update(COVERAGE).where(
                COVERAGE.c.venue.in_(venues), COVERAGE.c.start_ms == start_ms, COVERAGE.c.end_ms < end_ms)
                .values(end_ms=end_ms))
        return res.rowcount or 0

    async def coverage(self, symbol: str, start_ms: int, end_ms: int,
                       venues: Sequence[str] | None = None) -> list[Coverage]:
        """The recorder's spans of ``symbol`` overlapping ``[start_ms, end_ms)``, oldest first (at
        most :data:`EVENTS_CAP`)."""
        _check_span(start_ms, end_ms)
        cond = [COVERAGE.c.symbol == _check_symbol(symbol), COVERAGE.c.start_ms < end_ms, COVERAGE.c.end_ms > start_ms]
        if venues is not None:
            cond.append(COVERAGE.c.venue.in_(parse_venues(venues)))
        q = (select(COVERAGE.c.venue, COVERAGE.c.symbol, COVERAGE.c.start_ms, COVERAGE.c.end_ms)
             .where(*cond).order_by(COVERAGE.c.start_ms, COVERAGE.c.id).limit(EVENTS_CAP))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [Coverage(r.venue, r.symbol, int(r.start_ms), int(r.end_ms)) for r in rows]

    async def has_tape(self) -> bool:
        """Whether anything was ever recorded here (a coverage span or an event): the bot reads the
        tape of a database a standalone ``liqmap tape`` writes into."""
        async with self.engine.connect() as conn:
            for table in (COVERAGE, EVENTS):
                if (await conn.execute(select(table.c.id).limit(1))).first() is not None:
                    return True
        return False

    # -- reader -------------------------------------------------------------------------------------

    def _where(self, symbol: str, start_ms: int, end_ms: int, venues: Sequence[str] | None) -> list[Any]:
        _check_span(start_ms, end_ms)
        cond = [EVENTS.c.symbol == _check_symbol(symbol), EVENTS.c.time_ms >= start_ms, EVENTS.c.time_ms < end_ms]
        if venues is not None:
            cond.append(EVENTS.c.venue.in_(parse_venues(venues)))
        return cond

    async def events(self, symbol: str, start_ms: int, end_ms: int, venues: Sequence[str] | None = None,
                     *, limit: int = EVENTS_CAP) -> list[LiquidationEvent]:
        """Events of ``symbol`` with ``start_ms <= time_ms < end_ms``, oldest first, at most
        ``limit`` (1..:data:`EVENTS_CAP`) of them: when a call returns exactly ``limit`` rows
        there may be more (ask again from the last ``time_ms``, or use :meth:`totals`/:meth:`hourly`)."""
        if not _int(limit) or not 1 <= limit <= EVENTS_CAP:
            raise InputError(f"limit must be between 1 and {EVENTS_CAP}")
        q = (select(EVENTS.c.venue, EVENTS.c.symbol, EVENTS.c.time_ms, EVENTS.c.side, EVENTS.c.price,
                    EVENTS.c.qty, EVENTS.c.usd, EVENTS.c.sampled, EVENTS.c.key)
             .where(*self._where(symbol, start_ms, end_ms, venues))
             .order_by(EVENTS.c.time_ms, EVENTS.c.id).limit(limit))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [LiquidationEvent(r.venue, r.symbol, int(r.time_ms), r.side, float(r.price), float(r.qty),
                                 float(r.usd), bool(r.sampled), r.key) for r in rows]

    async def gaps(self, start_ms: int, end_ms: int, venues: Sequence[str] | None = None) -> list[Gap]:
        """Gaps overlapping ``[start_ms, end_ms)`` (an open gap runs to now), oldest first; at most
        :data:`EVENTS_CAP` of them."""
        _check_span(start_ms, end_ms)
        cond = [GAPS.c.start_ms < end_ms, or_(GAPS.c.end_ms.is_(None), GAPS.c.end_ms > start_ms)]
        if venues is not None:
            cond.append(GAPS.c.venue.in_(parse_venues(venues)))
        q = select(GAPS).where(and_(*cond)).order_by(GAPS.c.start_ms, GAPS.c.id).limit(EVENTS_CAP)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [Gap(r.venue, r.symbol or None, int(r.start_ms), None if r.end_ms is None else int(r.end_ms), r.reason)
                for r in rows]

    async def totals(self, symbol: str, start_ms: int, end_ms: int,
                     venues: Sequence[str] | None = None) -> list[Totals]:
        """Count, quantity and USD per venue and side over ``[start_ms, end_ms)`` (one SQL aggregate)."""
        q = (select(EVENTS.c.venue, EVENTS.c.side, func.count(), func.sum(EVENTS.c.qty), func.sum(EVENTS.c.usd))
             .where(*self._where(symbol, start_ms, end_ms, venues))
             .group_by(EVENTS.c.venue, EVENTS.c.side).order_by(EVENTS.c.venue, EVENTS.c.side))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [Totals(v, s, int(n), float(q_ or 0.0), float(u or 0.0), FEED_SAMPLED.get(v, True))
                for v, s, n, q_, u in rows]

    async def hourly(self, symbol: str, start_ms: int, end_ms: int,
                     venues: Sequence[str] | None = None) -> list[HourlySum]:
        """USD per UTC hour, venue and side over ``[start_ms, end_ms)`` (at most 24 x 6 rows a day),
        for the live score; hours without events are absent (zero), gaps say where that is unknown."""
        hour = (EVENTS.c.time_ms // HOUR_MS).label("hour")
        q = (select(hour, EVENTS.c.venue, EVENTS.c.side, func.count(), func.sum(EVENTS.c.usd))
             .where(*self._where(symbol, start_ms, end_ms, venues))
             .group_by(hour, EVENTS.c.venue, EVENTS.c.side).order_by(hour, EVENTS.c.venue, EVENTS.c.side))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [HourlySum(int(h) * HOUR_MS, v, s, int(n), float(u or 0.0)) for h, v, s, n, u in rows]

    async def latest(self, since_ms: int) -> dict[str, int]:
        """Per venue, the time of its newest event at or after ``since_ms`` (a range of the time index,
        so bounded by the events of that span); venues with none are absent."""
        q = (select(EVENTS.c.venue, func.max(EVENTS.c.time_ms)).where(EVENTS.c.time_ms >= int(since_ms))
             .group_by(EVENTS.c.venue))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return {str(v): int(t) for v, t in rows if t is not None}

    async def counts(self) -> tuple[int, int]:
        """``(events, gaps)`` stored (for status lines and tests)."""
        async with self.engine.connect() as conn:
            n_e = (await conn.execute(select(func.count()).select_from(EVENTS))).scalar_one()
            n_g = (await conn.execute(select(func.count()).select_from(GAPS))).scalar_one()
        return int(n_e), int(n_g)

    # -- retention ----------------------------------------------------------------------------------

    async def prune(self, before_ms: int, *, batch: int = 5000, max_batches: int = 100) -> int:
        """Delete events with ``time_ms < before_ms``, closed gaps and coverage spans that ended before it, in
        transactions of at most ``batch`` rows, at most ``max_batches`` of them per table (the rest
        waits for the next prune, so one call never holds the database long); returns rows deleted."""
        if not _int(before_ms):
            raise InputError("before_ms must be an integer time in milliseconds")
        if batch < 1 or max_batches < 1:
            raise ValueError("batch and max_batches must be at least 1")
        total = 0
        for table, old in ((EVENTS, EVENTS.c.time_ms < before_ms),
                           (GAPS, and_(GAPS.c.end_ms.is_not(None), GAPS.c.end_ms < before_ms)),
                           (COVERAGE, COVERAGE.c.end_ms < before_ms)):
            for _ in range(max_batches):
                async with self.engine.begin() as conn:
                    n = await _delete_batch(conn, table, old, batch)
                total += n
                if n < batch:
                    break
        return total


async def _delete_batch(conn: AsyncConnection, table: Any, cond: Any, batch: int) -> int:
    ids = select(table.c.id).where(cond).order_by(table.c.id).limit(batch).scalar_subquery()
    res = await conn.execute(delete(table).where(table.c.id.in_(ids)))
    return res.rowcount or 0


async def needed_symbols(engine: AsyncEngine, extra: Iterable[str] = ("BTCUSDT", "ETHUSDT"), *, cap: int = 50) -> tuple[str, ...]:
    """The symbols the bot needs on the tape: ``extra`` first, then those of active daily reports
    and skew alerts (at most ``cap``; the rest is logged and left out)."""
    from .store import DailyRow, SkewAlertRow

    out: list[str] = []
    for s in extra:
        if s not in out:
            out.append(s)
    async with engine.connect() as conn:
        for (text,) in (await conn.execute(select(DailyRow.symbols).where(DailyRow.paused_reason.is_(None)))).all():
            out.extend(s for s in str(text).split(",") if s and s not in out)
        for (sym,) in (await conn.execute(select(SkewAlertRow.symbol).where(SkewAlertRow.paused_reason.is_(None)))).all():
            if sym not in out:
                out.append(sym)
    out = [s for s in out if _SYMBOL.fullmatch(s)]
    if len(out) > cap:
        log.warning("tape: %d symbols needed, recording the first %d", len(out), cap)
    return tuple(out[:cap])


# -- running the recorder ---------------------------------------------------------------------------

RecorderFactory = Callable[..., Any]


def default_recorder_factory() -> RecorderFactory:
    """``analysis.tape.recorder.Recorder`` (imported late: the websocket client loads only here)."""
    from analysis.tape.recorder import Recorder

    return Recorder


class _CountingSink:
    """Passes writes to the store and counts them for the status line."""

    def __init__(self, tape: TapeStore) -> None:
        self.tape = tape
        self.events = 0
        self.gaps = 0

    async def write_events(self, events: Sequence[LiquidationEvent]) -> int:
        n = await self.tape.write_events(events)
        self.events += n
        return n

    async def write_gap(self, gap: Gap) -> None:
        await self.tape.write_gap(gap)
        self.gaps += 1


class TapeRunner:
    """One recorder over a :class:`TapeStore`, with its housekeeping.

    On start, open gaps of these venues left by an earlier run are closed at now (the span it was
    not running) and a coverage span per venue and symbol opens (``tape_coverage``). While
    running: the spans are extended every ``coverage_s``, a status line every ``status_s`` (to
    ``status``), and a retention prune every ``prune_s``. On stop: the recorder is stopped through
    its ``stop`` event, the spans end at the stop, then one open gap per venue is written
    (``recorder stopped``), which the next start closes, so the time nothing was recorded is
    always marked (a killed recorder's spans end at its last heartbeat).
    """

    def __init__(self, tape: TapeStore, venues: Sequence[str], symbols: Sequence[str], *,
                 urls: Mapping[str, str] | None = None, retention_days: float = 30.0,
                 status: Callable[[str], None] | None = None, status_s: float = 60.0, prune_s: float = 3600.0,
                 coverage_s: float = COVERAGE_BEAT_S,
                 recorder_factory: RecorderFactory | None = None, wall_ms: Callable[[], int] | None = None) -> None:
        from analysis.symbols import parse_symbol

        self.tape = tape
        self.venues = parse_venues(venues)
        self.symbols = tuple(dict.fromkeys(parse_symbol(x).symbol for x in symbols))
        self.coverage_s = coverage_s
        self.run_start_ms: int | None = None
        self.urls = dict(urls or {})
        self.retention_ms = int(retention_days * DAY_MS)
        self.status_cb = status
        self.status_s = status_s
        self.prune_s = prune_s
        self.sink = _CountingSink(tape)
        self._factory = recorder_factory
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        self.recorder: Any = None
        self.pruned = 0

    def status_line(self) -> str:
        """``tape: connected bybit, okx (2/3); 120 new events, 1 gap(s) written; 0 invalid skipped``."""
        connected: list[str] = []
        if self.recorder is not None:
            try:
                for venue, st in self.recorder.status().items():
                    if getattr(st, "connected", False):
                        connected.append(str(venue))
            except Exception:  # a status read must never stop the recorder
                log.exception("tape: reading the recorder status failed")
        return (f"tape: connected {', '.join(connected) or 'none'} ({len(connected)}/{len(self.venues)}); "
                f"{self.sink.events} new events, {self.sink.gaps} gap(s) written; "
                f"{self.tape.rejected} invalid skipped")

    async def prune_once(self) -> int:
        n = await self.tape.prune(self._wall_ms() - self.retention_ms)
        self.pruned += n
        if n:
            log.info("tape: pruned %d row(s) older than %g days", n, self.retention_ms / DAY_MS)
        return n

    async def run(self, stop: asyncio.Event) -> None:
        """Record until ``stop`` is set (or the recorder returns), then write the stop gaps."""
        factory = self._factory or default_recorder_factory()
        start = self._wall_ms()
        closed = await self.tape.close_open_gaps(self.venues, start)
        if closed:
            log.info("tape: closed %d gap(s) left open by an earlier run", closed)
        await self.tape.open_coverage(self.venues, self.symbols, start)
        self.run_start_ms = start
        self.recorder = factory(self.sink, self.venues, self.symbols, urls=self.urls or None)
        inner = asyncio.Event()
        rec = asyncio.create_task(self.recorder.run(inner), name="liqmap-tape-recorder")
        house = asyncio.create_task(self._housekeeping(), name="liqmap-tape-housekeeping")
        waiter = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({rec, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            inner.set()
            waiter.cancel()
            house.cancel()
            done, _ = await asyncio.wait({rec}, timeout=10.0)
            if not done:
                log.warning("tape: the recorder did not stop within 10 s; cancelled")
                rec.cancel()
                await asyncio.gather(rec, return_exceptions=True)
            await asyncio.gather(house, return_exceptions=True)
            await self._extend_coverage()
            await self._write_stop_gaps()
            if self.status_cb is not None:
                self.status_cb(self.status_line())
        failure = rec.exception() if rec.done() and not rec.cancelled() else None
        if failure is not None:
            raise failure

    async def _extend_coverage(self) -> None:
        if self.run_start_ms is None:
            return
        try:
            await self.tape.extend_coverage(self.venues, self.run_start_ms, max(self.run_start_ms, self._wall_ms()))
        except Exception:  # the next beat tries again; the span only ends early
            log.exception("tape: extending the coverage spans failed")

    async def _write_stop_gaps(self) -> None:
        at = self._wall_ms()
        for venue in self.venues:
            try:
                await self.sink.write_gap(Gap(venue, None, at, None, "recorder stopped"))
            except Exception:
                log.exception("tape: writing the stop gap of %s failed", venue)

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        next_status = loop.time() + self.status_s
        next_prune = loop.time()  # prune once at start, then every prune_s
        next_beat = loop.time() + self.coverage_s
        while True:
            now = loop.time()
            if now >= next_beat:
                await self._extend_coverage()
                next_beat = now + self.coverage_s
            if now >= next_prune:
                try:
                    await self.prune_once()
                except Exception:
                    log.exception("tape: retention prune failed; retrying in %g s", self.prune_s)
                next_prune = now + self.prune_s
            if now >= next_status and self.status_cb is not None:
                self.status_cb(self.status_line())
                next_status = now + self.status_s
            await asyncio.sleep(max(0.05, min(next_prune, next_status, next_beat) - loop.time()))


async def supervise(tape: TapeStore, stop: asyncio.Event, *, venues: Sequence[str], symbols: Sequence[str] = (),
                    urls: Mapping[str, str] | None = None, retention_days: float = 30.0, refresh_s: float = 900.0,
                    retry_s: float = 60.0, recorder_factory: RecorderFactory | None = None) -> None:
    """The bot's tape task: a :class:`TapeRunner` until ``stop`` is set.

    With no ``symbols`` configured it records what the bot needs (:func:`needed_symbols`), re-read
    every ``refresh_s``; when that set changes the recorder is restarted with the new one (the
    restart is marked as a gap). A recorder that fails is logged and started again after ``retry_s``.
    """
    while not stop.is_set():
        try:
            current = tuple(symbols) or await needed_symbols(tape.engine)
        except Exception:
            log.exception("tape: reading the symbols the bot needs failed; retrying in %g s", retry_s)
            await _sleep_unless(stop, retry_s)
            continue
        inner = asyncio.Event()
        runner = TapeRunner(tape, venues, current, urls=urls, retention_days=retention_days,
                            status=log.info, status_s=refresh_s, recorder_factory=recorder_factory)
        log.info("tape: recording %s from %s", ", ".join(current), ", ".join(runner.venues))
        task = asyncio.create_task(runner.run(inner), name="liqmap-tape")
        while not task.done() and not stop.is_set():
            await _wait_any(task, stop, refresh_s)
            if task.done() or stop.is_set() or symbols:
                continue
            try:
                if await needed_symbols(tape.engine) != current:
                    break
            except Exception:
                log.exception("tape: reading the symbols the bot needs failed; keeping %s", ", ".join(current))
        inner.set()
        try:
            await task
        except Exception:
            log.exception("tape: the recorder failed; restarting in %g s", retry_s)
            await _sleep_unless(stop, retry_s)


async def _wait_any(task: asyncio.Task[Any], stop: asyncio.Event, timeout: float) -> None:
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
