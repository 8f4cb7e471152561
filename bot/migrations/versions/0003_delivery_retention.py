"""Delivery retention: the prune horizon, and an index to find old delivery records.

Revision ID: 0003_delivery_retention
Revises: 0002_unique_daily_schedule
Create Date: 2026-12-01 23:30:00

``store_marks`` holds named instants; ``deliveries_pruned_before`` is the prune horizon: final
delivery records due before it may have been deleted, so no post due before it is ever claimed
anew (see ``Store.prune_deliveries``). ``ix_deliveries_due_at`` lets the daily prune find old
records without reading the whole table.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

from bot.store import UTCDateTime

revision: str = "0003_delivery_retention"
down_revision: Union[str, Sequence[str], None] = "0002_unique_daily_schedule"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "store_marks",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_deliveries_due_at", "deliveries", ["due_at"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_due_at", table_name="deliveries")
    op.drop_table("store_marks")
