"""Daily readings: the reading behind each posted daily report, for "what changed since the last one".

Revision ID: 0005_daily_readings
Revises: 0003_delivery_retention
Create Date: 2026-12-02 07:00:00

``daily_readings`` keeps, per (schedule, symbol), the versioned reading record
(``analysis.readings``) of the last few posted daily reports (``bot.store.KEEP_READINGS``). Rows
go with their schedule (``ON DELETE CASCADE``); ``ix_daily_readings_latest`` finds the latest per
(schedule, symbol) without a scan. Existing rows of other tables are untouched.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

from bot.store import UTCDateTime

revision: str = "0005_daily_readings"
down_revision: Union[str, Sequence[str], None] = "0004_daily_view"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "daily_readings",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("schedule_id", sa.Integer(), sa.ForeignKey("daily_schedules.id", ondelete="CASCADE"), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("posted_at", UTCDateTime(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
    )
    op.create_index("ix_daily_readings_latest", "daily_readings", ["schedule_id", "symbol", "id"])


def downgrade() -> None:
    op.drop_index("ix_daily_readings_latest", table_name="daily_readings")
    op.drop_table("daily_readings")
