"""Alembic environment for the bot's tables.

:meth:`bot.store.Store.open` passes a live (sync-facing) connection in
``config.attributes["connection"]``; otherwise (e.g. ``alembic -x`` use from a shell with a Config
built by :func:`bot.store.alembic_config`) an async engine is created from ``sqlalchemy.url``.
Works for ``sqlite+aiosqlite`` and ``postgresql+asyncpg``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import bot.tape_store  # noqa: F401  (the tape tables are on Base.metadata too)
import bot.hl_oi_store  # noqa: F401  (and the Hyperliquid OI snapshots)
from bot.store import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs batch mode to alter tables
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_configure)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
    else:
        asyncio.run(_run_async(config.get_main_option("sqlalchemy.url")))
