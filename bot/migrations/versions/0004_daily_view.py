"""Daily schedules choose what they post: the map, the heatmap or both.

Revision ID: 0004_daily_view
Revises: 0003_delivery_retention
Create Date: 2026-12-02 07:00:00

Adds ``daily_schedules.view`` (``map``, ``heatmap`` or ``both``; validated by ``Store.add_daily``),
NOT NULL with the server default ``map``, so every existing schedule keeps posting the map. A plain
``ADD COLUMN`` (no batch mode): on SQLite a batch rebuild would drop ``daily_schedules``, and with
foreign keys on that cascade-deletes the delivery records exactly-once rests on (see 0002).
The view is not part of the unique key ``uq_daily_schedule``.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004_daily_view"
down_revision: Union[str, Sequence[str], None] = "0003_delivery_retention"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column("daily_schedules", sa.Column("view", sa.String(8), nullable=False, server_default="map"))


def downgrade() -> None:
    # SQLite >= 3.35 drops a column in place; older ones need a rebuild, which this does not risk
    op.drop_column("daily_schedules", "view")
