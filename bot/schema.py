"""Which schema revision a database is at, and the one clear error for a database that is newer
than this liqmap (migrated by a later version: its revision is not in this code's chain).

Alembic alone says "Can't locate revision identified by '…'" with a traceback; every command that
opens the database (``liqmap bot``, ``tape``, ``score``, ``report``) says instead, as one line
(exit 2): "the database at … is at revision X, newer than this liqmap (head Y); upgrade liqmap".
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from analysis.errors import InputError

__all__ = ["NewerDatabase", "db_revision", "head_revision", "known_revisions", "check_revision", "check_engine", "newer_database_error",
           "location"]


class NewerDatabase(InputError):
    """The database was migrated by a newer liqmap (its revision is unknown here)."""


def _script() -> Any:
    from alembic.script import ScriptDirectory

    from .store import alembic_config

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this liqmap knows (the one head of bot/migrations)."""
    return str(_script().get_current_head())


def known_revisions() -> frozenset[str]:
    return frozenset(rev.revision for rev in _script().walk_revisions())


def db_revision(sync_conn: Any) -> str | None:
    """The revision stamped in the database (None: never migrated, or no ``alembic_version``)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(sync_conn).get_current_revision()


def location(url: Any) -> str:
    """Where a database is, safe to print: a SQLite file's path, else the URL without its password."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    u = make_url(url) if isinstance(url, str) else url
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        return str(Path(u.database).expanduser().resolve())
    return u.render_as_string(hide_password=True)


def check_revision(sync_conn: Any) -> str | None:
    """The database's revision, or :class:`NewerDatabase` when this code does not know it (newer)."""
    rev = db_revision(sync_conn)
    if rev is not None and rev not in known_revisions():
        raise NewerDatabase(f"the database at {location(sync_conn.engine.url)} is at revision {rev[:64]}, newer than "
                         f"this liqmap (head {head_revision()}); upgrade liqmap")
    return rev


async def check_engine(engine: AsyncEngine) -> str | None:
    """:func:`check_revision` over an async engine."""
    async with engine.connect() as conn:
        return await conn.run_sync(check_revision)


async def newer_database_error(url: str) -> NewerDatabase | None:
    """After a migration failed: the "newer than this liqmap" error if that was why, else None
    (the original failure stands). Opens its own short-lived connection."""
    engine = create_async_engine(url)
    try:
        await check_engine(engine)
    except NewerDatabase as exc:
        return exc
    except Exception:  # the database's own trouble: not ours to explain here
        return None
    finally:
        await engine.dispose()
    return None
