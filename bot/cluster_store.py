"""Durable cluster-alert subscriptions (``/cluster-alerts``), kept apart from the ``bot/store`` package.

One table, ``cluster_alerts`` (migration ``0007_cluster_alerts``), on the store's declarative
``Base``; :class:`ClusterStore` works through a :class:`~bot.store.Store`'s session and shares its
insert helper, so the per-server cap (daily reports + skew alerts + cluster alerts, paused ones
included) and the unique natural key (channel, symbol, window, exchange, kind) behave exactly like
the other subscriptions. Every value is validated before any query
(:class:`~analysis.cluster_alerts.ClusterAlertParams` for the thresholds), and a refusal is an
:class:`~analysis.errors.InputError` saying what would be valid.

The watcher (``bot/cluster_watch.py``) reads :meth:`ClusterStore.active`, and advances a row with
:meth:`ClusterStore.set_state`: a compare-and-set on the stored state, so two processes cannot
both announce the same transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Float, Integer, String, UniqueConstraint, select, update
from sqlalchemy.orm import Mapped, mapped_column

from analysis.cluster_alerts import AlertState, ClusterAlertParams
from analysis.errors import InputError
from analysis.symbols import parse_symbol
from analysis.windows import parse_window

from .schedule_time import aware as _aware
from .store import Store
from .store.tables import Base, UTCDateTime
from .store.validation import (
    DEFAULT_COOLDOWN_S,
    MAX_COOLDOWN_S,
    MIN_COOLDOWN_S,
    SNOWFLAKE_MAX,
    _is_int_in,
    _parse_exchange,
    _parse_id,
    _reason,
    _valid_item_id,
)

__all__ = ["ClusterRow", "ClusterAlert", "ClusterStore"]


class ClusterRow(Base):
    __tablename__ = "cluster_alerts"
    natural_key = ("channel_id", "symbol", "window", "exchange", "kind")
    __table_args__ = (UniqueConstraint(*natural_key, name="uq_cluster_alert"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, index=True)
    channel_id: Mapped[int] = mapped_column(BigInteger, index=True)
    symbol: Mapped[str] = mapped_column(String(32))
    window: Mapped[str] = mapped_column(String(8))
    exchange: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(12))
    within_pct: Mapped[float | None] = mapped_column(Float)
    min_usd: Mapped[float | None] = mapped_column(Float)
    minutes: Mapped[int | None] = mapped_column(Integer)
    cooldown_s: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str | None] = mapped_column(String(8))
    level: Mapped[float | None] = mapped_column(Float)
    side: Mapped[str | None] = mapped_column(String(5))
    last_announced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    paused_reason: Mapped[str | None] = mapped_column(String(300))
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


@dataclass(frozen=True)
class ClusterAlert:
    """A cluster-alert subscription of ``channel_id`` to one (symbol, window, exchange, kind)."""

    id: int
    guild_id: int
    channel_id: int
    symbol: str
    window: str
    exchange: str
    kind: str
    within_pct: float | None
    min_usd: float | None
    minutes: int | None
    cooldown_s: int
    phase: str | None
    level: float | None
    side: str | None
    last_announced_at: datetime | None
    paused_reason: str | None
    paused_at: datetime | None
    created_by: int
    created_at: datetime

    @property
    def paused(self) -> bool:
        return self.paused_reason is not None

    @property
    def params(self) -> ClusterAlertParams:
        return ClusterAlertParams(self.kind, self.within_pct, self.min_usd, self.minutes)

    @property
    def state(self) -> AlertState:
        return AlertState(self.phase, self.level, self.side, self.last_announced_at)

    @property
    def cooldown(self) -> timedelta:
        return timedelta(seconds=self.cooldown_s)

    @classmethod
    def _of(cls, r: ClusterRow) -> "ClusterAlert":
        return cls(r.id, r.guild_id, r.channel_id, r.symbol, r.window, r.exchange, r.kind, r.within_pct, r.min_usd,
                   r.minutes, r.cooldown_s, r.phase, r.level, r.side, r.last_announced_at, r.paused_reason,
                   r.paused_at, r.created_by, r.created_at)


def _cooldown(cooldown_s: int | None) -> int:
    cd = DEFAULT_COOLDOWN_S if cooldown_s is None else cooldown_s
    if isinstance(cd, bool) or not isinstance(cd, int) or not (MIN_COOLDOWN_S <= cd <= MAX_COOLDOWN_S):
        raise InputError(
            f"cooldown must be {MIN_COOLDOWN_S // 60} minute(s) to {MAX_COOLDOWN_S // 86400} days, in seconds (got {cd!r})"
        )
    return cd


class ClusterStore:
    """Cluster-alert rows through ``store``'s engine, session, cap and insert helper."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def max_per_guild(self) -> int:
        return self.store.max_per_guild

    async def count_subscriptions(self, guild_id: int) -> int:
        return await self.store.count_subscriptions(guild_id)

    async def add(
        self,
        guild_id: int,
        channel_id: int,
        *,
        symbol: str,
        window: str,
        exchange: str,
        kind: str,
        created_by: int,
        within_pct: float | None = None,
        min_usd: float | None = None,
        minutes: int | None = None,
        cooldown_s: int | None = None,
        now: datetime | None = None,
    ) -> ClusterAlert:
        """Validate and store a cluster alert (thresholds None: the kind's defaults)."""
        guild_id, channel_id = _parse_id(guild_id, "server id"), _parse_id(channel_id, "channel id")
        created_by = _parse_id(created_by, "user id")
        sym = parse_symbol(symbol).symbol
        win = parse_window(window).label
        exch = _parse_exchange(exchange, self.store.exchanges)
        kind_key = str(kind).strip().lower()
        p = ClusterAlertParams(kind_key, within_pct, min_usd, minutes)  # validates
        cd = _cooldown(cooldown_s)
        now = _aware(now)
        values = dict(
            guild_id=guild_id, channel_id=channel_id, symbol=sym, window=win, exchange=exch, kind=p.kind,
            within_pct=None if within_pct is None else float(within_pct),
            min_usd=None if min_usd is None else float(min_usd), minutes=minutes,
            cooldown_s=cd, created_by=created_by, created_at=now,
        )
        return await self.store._insert_subscription(
            ClusterRow, values, ClusterAlert._of, f"{p.kind} cluster alert for {sym} {win} on {exch}")

    async def list(self, guild_id: int) -> list[ClusterAlert]:
        """Every cluster alert of a server (paused ones too), oldest first."""
        return await self.store._guild_rows(ClusterRow, ClusterAlert._of, guild_id)

    async def get(self, alert_id: int) -> ClusterAlert | None:
        return await self.store._one(ClusterRow, ClusterAlert._of, alert_id)

    async def remove(self, guild_id: int, alert_id: int) -> ClusterAlert:
        """Delete a server's cluster alert; InputError if it has no such id."""
        async with self.store._session() as s, s.begin():
            row = await self.store._owned(s, ClusterRow, guild_id, alert_id, "cluster alert")
            out = ClusterAlert._of(row)
            await s.delete(row)
            return out

    async def resume(self, guild_id: int, alert_id: int) -> ClusterAlert:
        """Unpause; the next check records a fresh baseline (nothing is announced for the pause)."""
        async with self.store._session() as s, s.begin():
            row = await self.store._owned(s, ClusterRow, guild_id, alert_id, "cluster alert")
            row.paused_reason = None
            row.paused_at = None
            row.phase = row.level = row.side = None
            await s.flush()
            return ClusterAlert._of(row)

    async def active(self) -> list[ClusterAlert]:
        """Every unpaused cluster alert."""
        async with self.store._session() as s:
            rows = await s.scalars(select(ClusterRow).where(ClusterRow.paused_reason.is_(None)).order_by(ClusterRow.id))
            return [ClusterAlert._of(r) for r in rows]

    async def pause(self, alert_id: int, reason: str, now: datetime | None = None) -> bool:
        """Pause one alert with a reason; False if it does not exist or is already paused."""
        if not _valid_item_id(alert_id):
            return False
        async with self.store._session() as s, s.begin():
            res = await s.execute(
                update(ClusterRow).where(ClusterRow.id == alert_id, ClusterRow.paused_reason.is_(None))
                .values(paused_reason=_reason(reason), paused_at=_aware(now))
            )
            return bool(res.rowcount)

    async def pause_channel(self, channel_id: int, reason: str, now: datetime | None = None) -> int:
        """Pause every active cluster alert posting to a channel; returns how many."""
        if not _is_int_in(channel_id, SNOWFLAKE_MAX):
            return 0
        async with self.store._session() as s, s.begin():
            res = await s.execute(
                update(ClusterRow).where(ClusterRow.channel_id == channel_id, ClusterRow.paused_reason.is_(None))
                .values(paused_reason=_reason(reason), paused_at=_aware(now))
            )
            return int(res.rowcount or 0)

    async def set_state(self, alert_id: int, *, expected: AlertState, new: AlertState) -> bool:
        """Compare-and-set the stored state (phase, level, side, last announcement) from ``expected`` to
        ``new``; False when the row changed meanwhile (another process got there first) or is gone."""
        if not _valid_item_id(alert_id):
            return False
        conds: list[Any] = [ClusterRow.id == alert_id, ClusterRow.paused_reason.is_(None)]
        for col, value in ((ClusterRow.phase, expected.phase), (ClusterRow.level, expected.level),
                           (ClusterRow.side, expected.side),
                           (ClusterRow.last_announced_at,
                            None if expected.last_announced_at is None else _aware(expected.last_announced_at))):
            conds.append(col.is_(None) if value is None else col == value)
        values = dict(phase=new.phase, level=new.level, side=new.side,
                      last_announced_at=None if new.last_announced_at is None else _aware(new.last_announced_at))
        async with self.store._session() as s, s.begin():
            res = await s.execute(update(ClusterRow).where(*conds).values(**values))
            return bool(res.rowcount)
