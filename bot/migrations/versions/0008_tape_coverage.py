"""The tape's coverage: the spans the recorder ran, per venue and symbol (issue 11).

Revision ID: 0008_tape_coverage
Revises: 0007_cluster_alerts
Create Date: 2026-12-02 16:00:00

``tape_coverage`` holds one row per recorder run, venue and symbol: ``start_ms`` when the run
began, ``end_ms`` its last heartbeat (about every minute) or its stop. Time outside every span was
not recorded at all, so "no event" there is "no tape", never "$0 realized" (bot/tape_store.py).
Unique on ``(venue, symbol, start_ms)``; ``(symbol, start_ms)`` serves the reads, ``(end_ms)`` the
retention prune.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0008_tape_coverage"
down_revision: Union[str, Sequence[str], None] = "0007_cluster_alerts"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "tape_coverage",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("venue", sa.String(16), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("start_ms", sa.BigInteger(), nullable=False),
        sa.Column("end_ms", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("venue", "symbol", "start_ms", name="uq_tape_coverage"),
    )
    op.create_index("ix_tape_coverage_symbol_start", "tape_coverage", ["symbol", "start_ms"])
    op.create_index("ix_tape_coverage_end", "tape_coverage", ["end_ms"])


def downgrade() -> None:
    op.drop_index("ix_tape_coverage_end", table_name="tape_coverage")
    op.drop_index("ix_tape_coverage_symbol_start", table_name="tape_coverage")
    op.drop_table("tape_coverage")
