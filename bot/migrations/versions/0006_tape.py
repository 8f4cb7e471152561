"""The tape: realized liquidation events and feed gaps (issue 11).

Revision ID: 0006_tape
Revises: 0003_delivery_retention
Create Date: 2026-12-02 07:00:00

``tape_events`` holds one row per venue event, unique on ``(venue, key)`` so a replay after a
reconnect stores once; ``(symbol, time_ms)`` serves the reads and ``(time_ms)`` the retention
prune. ``tape_gaps`` holds the spans a feed was down, unique on ``(venue, symbol, start_ms)`` (the
recorder's upsert key; ``symbol = ''`` means every symbol of the connection, see bot/tape_store.py).
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006_tape"
down_revision: Union[str, Sequence[str], None] = "0005_daily_readings"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "tape_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("venue", sa.String(16), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("time_ms", sa.BigInteger(), nullable=False),
        sa.Column("side", sa.String(5), nullable=False),
        sa.Column("price", sa.Float(), nullable=False),
        sa.Column("qty", sa.Float(), nullable=False),
        sa.Column("usd", sa.Float(), nullable=False),
        sa.Column("sampled", sa.Boolean(), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.UniqueConstraint("venue", "key", name="uq_tape_event"),
    )
    op.create_index("ix_tape_events_symbol_time", "tape_events", ["symbol", "time_ms"])
    op.create_index("ix_tape_events_time", "tape_events", ["time_ms"])
    op.create_table(
        "tape_gaps",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("venue", sa.String(16), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("start_ms", sa.BigInteger(), nullable=False),
        sa.Column("end_ms", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(300), nullable=False),
        sa.UniqueConstraint("venue", "symbol", "start_ms", name="uq_tape_gap"),
    )
    op.create_index("ix_tape_gaps_start", "tape_gaps", ["start_ms"])


def downgrade() -> None:
    op.drop_index("ix_tape_gaps_start", table_name="tape_gaps")
    op.drop_table("tape_gaps")
    op.drop_index("ix_tape_events_time", table_name="tape_events")
    op.drop_index("ix_tape_events_symbol_time", table_name="tape_events")
    op.drop_table("tape_events")
