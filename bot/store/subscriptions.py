"""What every subscription table shares: the per-server cap, the exactly-once insert by natural
key, the per-server listing and ownership checks, and pausing (one subscription, or all of a channel)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Literal

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from analysis.errors import InputError

from ..schedule_time import aware
from .engine import StoreEngine
from .tables import DailyRow, SkewAlertRow
from .validation import ITEM_ID_MAX, SNOWFLAKE_MAX, _is_int_in, _parse_id, _reason, _valid_item_id

__all__ = ["Kind", "SubscriptionStore"]

Kind = Literal["daily", "skew_alert"]


class SubscriptionStore(StoreEngine):
    """The subscription plumbing shared by daily reports, skew alerts and cluster alerts."""

    async def count_subscriptions(self, guild_id: int) -> int:
        """Daily reports, skew alerts and cluster alerts of a server (paused ones count)."""
        guild_id = _parse_id(guild_id, "server id")
        async with self._session() as s:
            return await self._count(s, guild_id)

    async def pause(self, kind: Kind, item_id: int, reason: str, now: datetime | None = None) -> bool:
        """Pause one daily report or skew alert with a reason; False if it does not exist or is already paused."""
        table = {"daily": DailyRow, "skew_alert": SkewAlertRow}.get(kind)
        if table is None:
            raise InputError(f"unknown subscription kind {kind!r}; daily or skew_alert")
        if not _valid_item_id(item_id):
            return False
        async with self._session() as s, s.begin():
            res = await s.execute(
                update(table)
                .where(table.id == item_id, table.paused_reason.is_(None))
                .values(paused_reason=_reason(reason), paused_at=aware(now))
            )
            return bool(res.rowcount)

    async def pause_channel(self, channel_id: int, reason: str, now: datetime | None = None) -> int:
        """Pause every active subscription posting to a channel; returns how many were paused."""
        now = aware(now)
        if not _is_int_in(channel_id, SNOWFLAKE_MAX):
            return 0
        n = 0
        async with self._session() as s, s.begin():
            for table in (DailyRow, SkewAlertRow):
                res = await s.execute(
                    update(table)
                    .where(table.channel_id == channel_id, table.paused_reason.is_(None))
                    .values(paused_reason=_reason(reason), paused_at=now)
                )
                n += res.rowcount or 0
        return n

    async def _count(self, s: AsyncSession, guild_id: int) -> int:
        from ..cluster_store import ClusterRow  # (that module builds on this one)

        n = 0
        for table in (DailyRow, SkewAlertRow, ClusterRow):
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
