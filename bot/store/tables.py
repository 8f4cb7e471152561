"""The bot's tables (SQLAlchemy 2 declarative models); the migrations in ``bot/migrations`` build
them, ``tests/test_store.py`` checks the two agree."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, Date, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from ..schedule_time import UTC

__all__ = ["UTCDateTime", "Base", "DailyRow", "SkewAlertRow", "DeliveryRow", "MarkRow", "DailyReadingRow"]


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


class SkewAlertRow(Base):
    __tablename__ = "skew_alerts"
    natural_key = ("channel_id", "symbol", "window", "exchange")
    __table_args__ = (UniqueConstraint(*natural_key, name="uq_skew_alert"),)

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



class DailyReadingRow(Base):
    __tablename__ = "daily_readings"
    __table_args__ = (Index("ix_daily_readings_latest", "schedule_id", "symbol", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_id: Mapped[int] = mapped_column(Integer, ForeignKey("daily_schedules.id", ondelete="CASCADE"))
    symbol: Mapped[str] = mapped_column(String(32))
    local_date: Mapped[date] = mapped_column(Date)
    posted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    record: Mapped[str] = mapped_column(Text)
