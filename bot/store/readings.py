"""Daily readings: the reading record of each posted daily report (what the next report compares
itself with); the latest :data:`KEEP_READINGS` per (schedule, symbol) are kept."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Iterable, Sequence

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from analysis.readings import MAX_RECORD_BYTES

from .engine import StoreEngine
from .tables import DailyReadingRow, DailyRow
from .validation import _chunks, _valid_item_id

__all__ = ["KEEP_READINGS", "ReadingIn", "StoredReading", "ReadingStore"]

#: how many posted readings are kept per (schedule, symbol); only the latest is compared with
KEEP_READINGS = 3


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


class ReadingStore(StoreEngine):
    """The ``daily_readings`` table."""

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
