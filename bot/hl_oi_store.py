"""Hyperliquid open-interest snapshots in the bot's database (issue 13 §2).

Hyperliquid serves no open-interest history, so liqmap records it: :class:`HlOiStore` is the
:class:`~analysis.sources.hyperliquid_oi.OiSink` the poller writes to and the
:class:`~analysis.sources.hyperliquid_oi.OiHistory` the Hyperliquid source reads, on the same
database as :class:`bot.store.Store` (``DATABASE_URL``; migration ``0009_hl_oi``).

Table ``hl_oi_snapshots``: one row per (coin, time), ``UNIQUE(coin, time_ms)`` so a repeated write
stores once (``INSERT ... ON CONFLICT DO NOTHING``); the unique index also serves the reads, which
are bounded (:data:`~analysis.sources.hyperliquid_oi.HISTORY_CAP`, the newest kept), and an index on
``time_ms`` serves the retention prune. Every snapshot is validated before it reaches a query.

:class:`LazyOiHistory` is what ``liqmap report`` and the bot hand the source: it connects on the
first read, never creates or migrates anything (a report must not create a database), and a
database without the table (nothing recorded yet) reads as no history.

:func:`run_poller` runs :class:`~analysis.sources.hyperliquid_oi.OiPoller` for ``liqmap poll-oi``
and the bot's task (restarted after a failure).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from typing import Any, Callable, Sequence

from sqlalchemy import BigInteger, Float, Index, Integer, String, UniqueConstraint, delete, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Mapped, mapped_column

from analysis.errors import InputError, SourceError
from analysis.sources.hyperliquid_oi import HISTORY_CAP, OiPoller, OiPollParams, OiSnapshot

from .store import DEFAULT_URL, Base, _sqlite_pragmas, _upgrade

__all__ = ["HlOiStore", "LazyOiHistory", "HlOiRow", "check_snapshot", "run_poller"]

log = logging.getLogger(__name__)

_COIN = re.compile(r"[A-Za-z0-9]{1,20}", re.ASCII)
_SYMBOL = re.compile(r"[A-Z0-9]{2,32}", re.ASCII)
MIN_TIME_MS = 1_672_531_200_000  # 2023-01-01: before Hyperliquid's perpetuals had public history
MAX_AHEAD_MS = 86_400_000
MAX_VALUE = 1e15


class HlOiRow(Base):
    __tablename__ = "hl_oi_snapshots"
    __table_args__ = (
        UniqueConstraint("coin", "time_ms", name="uq_hl_oi"),
        Index("ix_hl_oi_time", "time_ms"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    coin: Mapped[str] = mapped_column(String(20))
    symbol: Mapped[str] = mapped_column(String(32))
    time_ms: Mapped[int] = mapped_column(BigInteger)
    oi_coin: Mapped[float] = mapped_column(Float)
    mark_px: Mapped[float] = mapped_column(Float)


ROWS = HlOiRow.__table__


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 < x < MAX_VALUE


def check_snapshot(s: Any, now_ms: int) -> str | None:
    """Why ``s`` cannot be stored (the field), or None."""
    if not isinstance(s, OiSnapshot):
        return "not an OiSnapshot"
    if not isinstance(s.coin, str) or not _COIN.fullmatch(s.coin):
        return "coin"
    if not isinstance(s.symbol, str) or not _SYMBOL.fullmatch(s.symbol):
        return "symbol"
    if not isinstance(s.time_ms, int) or isinstance(s.time_ms, bool) or not MIN_TIME_MS <= s.time_ms <= now_ms + MAX_AHEAD_MS:
        return "time_ms"
    if not _number(s.oi_coin):
        return "oi_coin"
    if not _number(s.mark_px):
        return "mark_px"
    return None


def _check_read(coin: str, start_ms: int, end_ms: int) -> None:
    if not isinstance(coin, str) or not _COIN.fullmatch(coin):
        raise InputError(f"{str(coin)[:24]!r} is not a Hyperliquid coin name")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start_ms, end_ms)) or start_ms > end_ms:
        raise InputError("an OI history read needs integer start_ms <= end_ms (milliseconds)")


class HlOiStore:
    """Snapshots in the bot's database: the poller's sink and the source's history.

    ``HlOiStore(engine)`` shares an engine; :meth:`open` makes its own and runs the migrations.
    """

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False, wall_ms: Callable[[], int] | None = None) -> None:
        self.engine = engine
        self._owns = owns_engine
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        inserts = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
        if engine.dialect.name not in inserts:
            raise InputError(f"the Hyperliquid OI history needs SQLite or PostgreSQL, not {engine.dialect.name}")
        self._insert = inserts[engine.dialect.name](ROWS).on_conflict_do_nothing(
            index_elements=["coin", "time_ms"]).returning(ROWS.c.id)
        self.rejected = 0

    @classmethod
    async def open(cls, url: str | None = None, *, migrate: bool = True,
                   wall_ms: Callable[[], int] | None = None) -> "HlOiStore":
        engine = create_async_engine(url or DEFAULT_URL)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        try:
            store = cls(engine, owns_engine=True, wall_ms=wall_ms)
            if migrate:
                async with engine.begin() as conn:
                    await conn.run_sync(_upgrade)
        except BaseException:
            await engine.dispose()
            raise
        return store

    async def close(self) -> None:
        if self._owns:
            await self.engine.dispose()

    async def write_oi(self, snapshots: Sequence[OiSnapshot]) -> int:
        """Store the valid snapshots in one transaction; returns how many were new."""
        now = self._wall_ms()
        rows, bad = [], 0
        for s in snapshots:
            if check_snapshot(s, now) is not None:
                bad += 1
                continue
            rows.append({"coin": s.coin, "symbol": s.symbol, "time_ms": s.time_ms, "oi_coin": float(s.oi_coin),
                         "mark_px": float(s.mark_px)})
        if bad:
            self.rejected += bad
            log.warning("hyperliquid oi: %d invalid snapshot(s) skipped", bad)
        if not rows:
            return 0
        async with self.engine.begin() as conn:
            return len((await conn.execute(self._insert, rows)).all())

    async def read_oi(self, coin: str, start_ms: int, end_ms: int) -> list[tuple[int, float]]:
        """``(time_ms, oi_coin)`` of ``coin`` with ``start_ms <= time_ms < end_ms``, oldest first
        (at most :data:`HISTORY_CAP`: the newest ones)."""
        _check_read(coin, start_ms, end_ms)
        q = (select(ROWS.c.time_ms, ROWS.c.oi_coin)
             .where(ROWS.c.coin == coin, ROWS.c.time_ms >= start_ms, ROWS.c.time_ms < end_ms)
             .order_by(ROWS.c.time_ms.desc()).limit(HISTORY_CAP))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [(int(t), float(v)) for t, v in reversed(rows)]

    async def prune_oi(self, before_ms: int, *, batch: int = 5000, max_batches: int = 100) -> int:
        """Delete snapshots older than ``before_ms`` in bounded transactions; returns rows deleted."""
        if not isinstance(before_ms, int) or isinstance(before_ms, bool):
            raise InputError("before_ms must be an integer time in milliseconds")
        total = 0
        for _ in range(max_batches):
            ids = select(ROWS.c.id).where(ROWS.c.time_ms < before_ms).order_by(ROWS.c.id).limit(batch).scalar_subquery()
            async with self.engine.begin() as conn:
                n = (await conn.execute(delete(ROWS).where(ROWS.c.id.in_(ids)))).rowcount or 0
            total += n
            if n < batch:
                break
        return total

    async def coverage(self) -> list[tuple[str, int, int, int]]:
        """``(coin, snapshots, first_ms, last_ms)`` per coin (status lines and tests)."""
        q = (select(ROWS.c.coin, func.count(), func.min(ROWS.c.time_ms), func.max(ROWS.c.time_ms))
             .group_by(ROWS.c.coin).order_by(ROWS.c.coin))
        async with self.engine.connect() as conn:
            return [(c, int(n), int(a), int(b)) for c, n, a, b in (await conn.execute(q)).all()]


class LazyOiHistory:
    """An :class:`OiHistory` over ``url`` that connects on the first read and never migrates.

    A database without the table (or an SQLite file that does not exist) reads as no history; any
    other database failure is a :class:`SourceError` naming the recorded OI, never a crash.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._store: HlOiStore | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> HlOiStore | None:
        async with self._lock:
            if self._store is None:
                if self.url.startswith("sqlite") and "mode=memory" not in self.url and ":memory:" not in self.url:
                    from sqlalchemy.engine import make_url
                    from pathlib import Path

                    database = make_url(self.url).database
                    if not database or not Path(database).is_file():
                        return None  # nothing recorded yet; a report never creates the database
                self._store = await HlOiStore.open(self.url, migrate=False)
            return self._store

    async def read_oi(self, coin: str, start_ms: int, end_ms: int) -> list[tuple[int, float]]:
        _check_read(coin, start_ms, end_ms)
        try:
            store = await self._get()
            if store is None:
                return []
            return await store.read_oi(coin, start_ms, end_ms)
        except (OperationalError, ProgrammingError) as exc:
            if "hl_oi_snapshots" in str(exc):  # no such table (SQLite) / does not exist (PostgreSQL)
                return []
            raise SourceError("hyperliquid", "recorded open interest",
                              f"the database could not be read ({type(exc.orig).__name__})") from None
        except (DBAPIError, OSError) as exc:
            raise SourceError("hyperliquid", "recorded open interest",
                              f"the database could not be read ({type(exc).__name__})") from None

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None


async def run_poller(source: Any, store: HlOiStore, stop: asyncio.Event, params: OiPollParams | None = None, *,
                     status: Callable[[str], None] | None = None, retry_s: float = 60.0,
                     max_polls: int | None = None, **clocks: Any) -> OiPoller:
    """Poll until ``stop`` (or ``max_polls``); a poller that fails unexpectedly is logged and
    started again after ``retry_s`` (venue refusals are handled inside the poller). ``clocks``
    (``clock``, ``sleep``, ``wall_ms``) go to the :class:`OiPoller` (tests)."""
    poller = OiPoller(source, store, params, status=status or log.info, **clocks)
    while not stop.is_set():
        try:
            await poller.run(stop, max_polls=max_polls)
            break
        except Exception:
            log.exception("hyperliquid oi: the poller failed; restarting in %g s", retry_s)
            try:
                await asyncio.wait_for(stop.wait(), timeout=retry_s)
            except asyncio.TimeoutError:
                pass
    return poller
