"""Hyperliquid open-interest snapshots recorded by liqmap (Hyperliquid serves no OI history).

Revision ID: 0009_hl_oi
Revises: 0008_tape_coverage
Create Date: 2026-12-02 16:00:00

``hl_oi_snapshots`` holds one row per (coin, time_ms) (``uq_hl_oi``, which also serves the
reads by coin and time); ``ix_hl_oi_time`` serves the retention prune. ``oi_coin`` is
Hyperliquid's ``openInterest`` (coins, one side), ``mark_px`` its ``markPx``.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0009_hl_oi"
down_revision: Union[str, Sequence[str], None] = "0008_tape_coverage"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "hl_oi_snapshots",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("coin", sa.String(20), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("time_ms", sa.BigInteger(), nullable=False),
        sa.Column("oi_coin", sa.Float(), nullable=False),
        sa.Column("mark_px", sa.Float(), nullable=False),
        sa.UniqueConstraint("coin", "time_ms", name="uq_hl_oi"),
    )
    op.create_index("ix_hl_oi_time", "hl_oi_snapshots", ["time_ms"])


def downgrade() -> None:
    op.drop_index("ix_hl_oi_time", table_name="hl_oi_snapshots")
    op.drop_table("hl_oi_snapshots")
