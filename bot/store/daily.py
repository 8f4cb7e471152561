"""Daily report schedules: adding, listing, removing, resuming, and what the dispatcher asks
(which are due, moving ``next_run_at`` on with a compare-and-set)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Sequence

from sqlalchemy import bindparam, delete, func, select, update

from analysis.windows import parse_window

from ..schedule_time import aware, next_occurrence, parse_time, parse_timezone
from .subscriptions import SubscriptionStore
from .tables import DailyReadingRow, DailyRow, DeliveryRow, UTCDateTime
from .validation import _parse_exchange, _parse_id, _valid_item_id, parse_symbols, parse_view

__all__ = ["DailySchedule", "DailyStore"]


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


class DailyStore(SubscriptionStore):
    """The ``daily_schedules`` table."""

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
        now = aware(now)
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
        now = aware(now)
        async with self._session() as s, s.begin():
            row = await self._owned(s, DailyRow, guild_id, schedule_id, "daily report")
            row.paused_reason = None
            row.paused_at = None
            row.next_run_at = next_occurrence(row.local_time, row.timezone, now)
            await s.flush()
            return DailySchedule._of(row)

    async def due_daily(self, now: datetime) -> list[DailySchedule]:
        """Active schedules whose ``next_run_at`` is at or before ``now``, earliest first."""
        async with self._session() as s:
            rows = await s.scalars(
                select(DailyRow)
                .where(DailyRow.paused_reason.is_(None), DailyRow.next_run_at <= aware(now))
                .order_by(DailyRow.next_run_at, DailyRow.id)
            )
            return [DailySchedule._of(r) for r in rows]

    async def due_load(self) -> dict[int, int]:
        """Posts per UTC minute of the day (0..1439) of the active schedules' next runs (one per
        symbol): what :func:`bot.pacer.posting_capacity` checks against the posting rate."""
        out: dict[int, int] = {}
        async with self._session() as s:
            rows = await s.execute(select(DailyRow.next_run_at, DailyRow.symbols).where(DailyRow.paused_reason.is_(None)))
            for when, symbols in rows:
                at = aware(when)
                minute = at.hour * 60 + at.minute
                out[minute] = out.get(minute, 0) + max(1, len([x for x in str(symbols).split(",") if x]))
        return out

    async def next_due_at(self) -> datetime | None:
        """The earliest ``next_run_at`` of an active schedule (None when there is none)."""
        async with self._session() as s:
            return await s.scalar(select(func.min(DailyRow.next_run_at)).where(DailyRow.paused_reason.is_(None)))

    async def advance(self, schedule_id: int, expected: datetime, new_next: datetime) -> bool:
        """Move ``next_run_at`` from ``expected`` to ``new_next`` (compare-and-set; False if it moved already)."""
        if not _valid_item_id(schedule_id):
            return False
        async with self._session() as s, s.begin():
            res = await s.execute(
                update(DailyRow)
                .where(DailyRow.id == schedule_id, DailyRow.next_run_at == aware(expected))
                .values(next_run_at=aware(new_next))
            )
            return bool(res.rowcount)

    # batch forms: one transaction per tick instead of one per channel

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
            await s.execute(stmt, [{"b_id": i, "b_expected": aware(e), "b_new": aware(n)} for i, e, n in moves])
