"""Daily schedules unique on what makes two of them identical; existing duplicates merged.

Revision ID: 0002_unique_daily_schedule
Revises: 0001_initial
Create Date: 2026-12-01 23:00:00

Before this revision a double click on ``/daily set`` could store two identical schedules (the
duplicate check was a SELECT before the INSERT). This revision keeps the **oldest** of each group
of identical schedules (lowest id; same channel, symbols, window, exchange, local time and zone)
and deletes the others, then adds the unique index ``uq_daily_schedule`` over those columns.

Deliveries of a deleted duplicate: for each (local date, symbol) the survivor has no record of,
one of the duplicate's records is moved to the survivor (a ``sent`` one first), so a post the
duplicate already made (or is making) counts for the survivor and the channel does not get a
second post that day; the record keeps its own marker and nonce, so a claim in flight is still
verified against the message it may have produced. The remaining duplicate records (the survivor
has its own) are deleted.

Plain SQL, the same on SQLite and PostgreSQL, so it also renders offline (``--sql``). A unique
index rather than a table constraint: on SQLite adding a constraint means rebuilding the table
(batch mode), and dropping ``daily_schedules`` with foreign keys on would cascade-delete every
delivery record, the very rows exactly-once rests on. The index enforces the same uniqueness.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002_unique_daily_schedule"
down_revision: Union[str, Sequence[str], None] = "0001_initial"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

KEY = ("channel_id", "symbols", "window", "exchange", "local_time", "timezone")
MAP = "liqmap_dedup_0002"  # scratch table: duplicate schedule id -> the oldest identical one

_SAME = " AND ".join(f'k."{c}" = s."{c}"' for c in KEY)
_KEEP_OF = f"(SELECT m.keep_id FROM {MAP} m WHERE m.dup_id = deliveries.schedule_id)"


def _move(only_state: str | None) -> str:
    """Move, per (survivor, local date, symbol) with no record yet, the duplicates' lowest-id record."""
    state = f" AND d2.state = '{only_state}'" if only_state else ""
    this = f" AND deliveries.state = '{only_state}'" if only_state else ""
    return f"""
        UPDATE deliveries SET schedule_id = {_KEEP_OF}
        WHERE schedule_id IN (SELECT dup_id FROM {MAP}){this}
          AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.schedule_id = {_KEEP_OF}
                          AND o.local_date = deliveries.local_date AND o.symbol = deliveries.symbol)
          AND deliveries.id = (SELECT min(d2.id) FROM deliveries d2 JOIN {MAP} m2 ON d2.schedule_id = m2.dup_id
                               WHERE m2.keep_id = {_KEEP_OF} AND d2.local_date = deliveries.local_date
                               AND d2.symbol = deliveries.symbol{state})
    """


def upgrade() -> None:
    op.create_table(
        MAP,
        sa.Column("dup_id", sa.Integer(), primary_key=True),
        sa.Column("keep_id", sa.Integer(), nullable=False),
    )
    op.execute(f"""
        INSERT INTO {MAP} (dup_id, keep_id)
        SELECT s.id, (SELECT min(k.id) FROM daily_schedules k WHERE {_SAME})
        FROM daily_schedules s
        WHERE EXISTS (SELECT 1 FROM daily_schedules k WHERE {_SAME} AND k.id < s.id)
    """)
    op.execute(_move("sent"))
    op.execute(_move(None))
    op.execute(f"DELETE FROM deliveries WHERE schedule_id IN (SELECT dup_id FROM {MAP})")
    op.execute(f"DELETE FROM daily_schedules WHERE id IN (SELECT dup_id FROM {MAP})")
    op.drop_table(MAP)
    op.create_index("uq_daily_schedule", "daily_schedules", list(KEY), unique=True)


def downgrade() -> None:
    op.drop_index("uq_daily_schedule", table_name="daily_schedules")
