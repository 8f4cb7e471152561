"""Initial bot tables: daily_schedules, skew_watches, deliveries.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25 13:30:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

from bot.store import UTCDateTime

revision: str = "0001_initial"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "daily_schedules",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("symbols", sa.String(200), nullable=False),
        sa.Column("window", sa.String(8), nullable=False),
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("local_time", sa.String(5), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("next_run_at", UTCDateTime(), nullable=False),
        sa.Column("paused_reason", sa.String(300), nullable=True),
        sa.Column("paused_at", UTCDateTime(), nullable=True),
        sa.Column("created_by", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_daily_schedules_guild_id", "daily_schedules", ["guild_id"])
    op.create_index("ix_daily_schedules_channel_id", "daily_schedules", ["channel_id"])
    op.create_index("ix_daily_schedules_next_run_at", "daily_schedules", ["next_run_at"])

    op.create_table(
        "skew_watches",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("window", sa.String(8), nullable=False),
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("mild", sa.Float(), nullable=True),
        sa.Column("heavy", sa.Float(), nullable=True),
        sa.Column("exit_mild", sa.Float(), nullable=True),
        sa.Column("exit_heavy", sa.Float(), nullable=True),
        sa.Column("cooldown_s", sa.Integer(), nullable=False),
        sa.Column("last_class", sa.String(20), nullable=True),
        sa.Column("last_ratio", sa.Float(), nullable=True),
        sa.Column("last_announced_at", UTCDateTime(), nullable=True),
        sa.Column("paused_reason", sa.String(300), nullable=True),
        sa.Column("paused_at", UTCDateTime(), nullable=True),
        sa.Column("created_by", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("channel_id", "symbol", "window", "exchange", name="uq_skew_watch"),
    )
    op.create_index("ix_skew_watches_guild_id", "skew_watches", ["guild_id"])
    op.create_index("ix_skew_watches_channel_id", "skew_watches", ["channel_id"])

    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("schedule_id", sa.Integer(), sa.ForeignKey("daily_schedules.id", ondelete="CASCADE"), nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("marker", sa.String(100), nullable=False),
        sa.Column("nonce", sa.String(25), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("detail", sa.String(300), nullable=True),
        sa.UniqueConstraint("schedule_id", "local_date", "symbol", name="uq_delivery_once"),
    )
    op.create_index("ix_deliveries_schedule_id", "deliveries", ["schedule_id"])


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_table("skew_watches")
    op.drop_table("daily_schedules")
