"""Cluster alerts: subscriptions to 'approaching' and 'swept' alerts for a symbol.

Revision ID: 0007_cluster_alerts
Revises: 0003_delivery_retention
Create Date: 2026-12-02 07:00:00

``cluster_alerts`` is unique on (channel, symbol, window, exchange, kind) (``uq_cluster_alert``),
like the other subscription tables; ``phase``/``level``/``side``/``last_announced_at`` hold the
alert's hysteresis state between checks (see ``analysis.cluster_alerts``).
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

from bot.store import UTCDateTime

revision: str = "0007_cluster_alerts"
down_revision: Union[str, Sequence[str], None] = "0006_tape"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "cluster_alerts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("window", sa.String(8), nullable=False),
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("within_pct", sa.Float(), nullable=True),
        sa.Column("min_usd", sa.Float(), nullable=True),
        sa.Column("minutes", sa.Integer(), nullable=True),
        sa.Column("cooldown_s", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(8), nullable=True),
        sa.Column("level", sa.Float(), nullable=True),
        sa.Column("side", sa.String(5), nullable=True),
        sa.Column("last_announced_at", UTCDateTime(), nullable=True),
        sa.Column("paused_reason", sa.String(300), nullable=True),
        sa.Column("paused_at", UTCDateTime(), nullable=True),
        sa.Column("created_by", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("channel_id", "symbol", "window", "exchange", "kind", name="uq_cluster_alert"),
    )
    op.create_index("ix_cluster_alerts_guild_id", "cluster_alerts", ["guild_id"])
    op.create_index("ix_cluster_alerts_channel_id", "cluster_alerts", ["channel_id"])


def downgrade() -> None:
    op.drop_index("ix_cluster_alerts_channel_id", table_name="cluster_alerts")
    op.drop_index("ix_cluster_alerts_guild_id", table_name="cluster_alerts")
    op.drop_table("cluster_alerts")
