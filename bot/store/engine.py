"""The store's engine: connecting (SQLite pragmas, PostgreSQL's migration lock) and the Alembic
migrations in ``bot/migrations``, run from code on :meth:`StoreEngine.open` (no alembic.ini, no CWD)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self, Sequence

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from analysis.errors import InputError

from .validation import EXCHANGES

__all__ = ["DEFAULT_URL", "MIGRATIONS", "alembic_config", "StoreEngine"]

DEFAULT_URL = "sqlite+aiosqlite:///liqmap.sqlite3"
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str | None = None) -> Any:
    """An Alembic Config built in code (no alembic.ini, independent of the working directory)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _upgrade(sync_conn: Any) -> None:
    from alembic import command

    if sync_conn.dialect.name == "postgresql":
        # several processes may start at once: one migrates, the others wait (lock ends with the transaction)
        sync_conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7365001)")
    cfg = alembic_config()
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=5000")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


class StoreEngine:
    """The connection pool and its sessions; the concern classes of :class:`bot.store.Store` build on it."""

    engine: AsyncEngine
    max_per_guild: int
    exchanges: tuple[str, ...]
    _session: async_sessionmaker[AsyncSession]

    def __init__(self, engine: AsyncEngine, *, max_per_guild: int = 25, exchanges: Sequence[str] = EXCHANGES) -> None:
        self.engine = engine
        self.max_per_guild = max_per_guild
        self.exchanges = tuple(e.lower() for e in exchanges)
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        max_per_guild: int = 25,
        exchanges: Sequence[str] = EXCHANGES,
        migrate: bool = True,
        echo: bool = False,
    ) -> Self:
        """Connect to ``url`` (default :data:`DEFAULT_URL`) and bring the schema to the latest migration."""
        url = url or DEFAULT_URL
        if max_per_guild < 1:
            raise InputError("the per-server subscription cap must be at least 1")
        engine = create_async_engine(url, echo=echo)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        store = cls(engine, max_per_guild=max_per_guild, exchanges=exchanges)
        if migrate:
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(_upgrade)
            except BaseException:
                await engine.dispose()
                raise
        return store

    @property
    def location(self) -> str:
        """Where the data lives, safe to print: a SQLite file's absolute path (a relative path in
        ``DATABASE_URL`` is relative to the working directory: start the bot from the same one, or
        the next start opens an empty database), else the URL without its password."""
        url = self.engine.url
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            return f"SQLite file {Path(url.database).expanduser().resolve()}"
        return url.render_as_string(hide_password=True)

    async def close(self) -> None:
        """Dispose of the connection pool."""
        await self.engine.dispose()
