"""Skew alerts have one name: the table skew_watches becomes skew_alerts.

Revision ID: 0010_skew_alerts
Revises: 0009_hl_oi
Create Date: 2026-12-02 16:10:00

A rename, rows kept: the table, its two indexes (``ix_skew_alerts_guild_id``,
``ix_skew_alerts_channel_id``) and its unique key (``uq_skew_alert``, same columns). On SQLite the
unique key is renamed by batch mode (the table is copied into a new one, rows and ids included);
on PostgreSQL by ALTER TABLE, and the primary key's index and id sequence are renamed too.
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0010_skew_alerts"
down_revision: Union[str, Sequence[str], None] = "0009_hl_oi"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

KEY = ["channel_id", "symbol", "window", "exchange"]


def _rename(old: str, new: str) -> None:
    op.drop_index(f"ix_{old}_channel_id", table_name=old)
    op.drop_index(f"ix_{old}_guild_id", table_name=old)
    op.rename_table(old, new)
    old_key, new_key = ("uq_skew_watch", "uq_skew_alert") if new == "skew_alerts" else ("uq_skew_alert", "uq_skew_watch")
    with op.batch_alter_table(new) as batch:
        batch.drop_constraint(old_key, type_="unique")
        batch.create_unique_constraint(new_key, KEY)
    op.create_index(f"ix_{new}_guild_id", new, ["guild_id"])
    op.create_index(f"ix_{new}_channel_id", new, ["channel_id"])
    if op.get_context().dialect.name == "postgresql":
        op.execute(f"ALTER INDEX IF EXISTS {old}_pkey RENAME TO {new}_pkey")
        op.execute(f"ALTER SEQUENCE IF EXISTS {old}_id_seq RENAME TO {new}_id_seq")


def upgrade() -> None:
    _rename("skew_watches", "skew_alerts")


def downgrade() -> None:
    _rename("skew_alerts", "skew_watches")
