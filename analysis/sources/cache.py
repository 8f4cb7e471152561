"""An on-disk cache of bars per (venue, symbol, interval), so a restart does not refetch 30 days.

Format: one SQLite file (stdlib ``sqlite3``, WAL journal) with two tables.

``bars``
    primary key ``(venue, symbol, interval, time)`` (``WITHOUT ROWID``), columns ``open, high,
    low, close, oi_usd`` (NOT NULL) and ``volume, quote_volume, taker_buy, taker_net`` (NULL
    when the venue does not provide them). ``time`` is the bar open in epoch ms, UTC.
``meta``
    ``(key, value, updated)`` small JSON values such as a venue's symbol list with its fetch time.

Writes are atomic upserts: a frame is checked completely, every row by the project's one bar
rule (:func:`analysis.bars.bar_fault`: integer, strictly increasing times; finite positive
prices with high >= max(open, close) and low <= min(open, close); positive OI) before one
transaction replaces the rows it covers. A malformed frame raises
:class:`~analysis.errors.DataError` and writes nothing, so the cache never holds a bar that a
map would refuse. SQLite was chosen over
Parquet because upserting a few new bars into a 30-day series is one small transaction instead
of rewriting a file, and WAL lets the bot and the CLI read while another process writes.

The default path is ``bars.sqlite3`` in :func:`analysis.paths.cache_dir` (``LIQMAP_CACHE_DIR``, else
systemd's ``$CACHE_DIRECTORY``, ``$XDG_CACHE_HOME/liqmap``, ``~/.cache/liqmap``); ``None`` keeps it in memory.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..bars import bar_fault, iso, show_value
from ..errors import DataError
from ..paths import cache_dir

__all__ = ["BarCache", "default_cache_path", "BAR_COLUMNS", "columns_of"]

REQUIRED = ("time", "open", "high", "low", "close", "oi_usd")
OPTIONAL = ("volume", "quote_volume", "taker_buy", "taker_net")
BAR_COLUMNS = REQUIRED + OPTIONAL

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bars (
    venue TEXT NOT NULL, symbol TEXT NOT NULL, interval TEXT NOT NULL, time INTEGER NOT NULL,
    open REAL NOT NULL, high REAL NOT NULL, low REAL NOT NULL, close REAL NOT NULL, oi_usd REAL NOT NULL,
    volume REAL, quote_volume REAL, taker_buy REAL, taker_net REAL,
    PRIMARY KEY (venue, symbol, interval, time)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);
"""


def default_cache_path() -> Path:
    """``bars.sqlite3`` in the cache directory of :func:`analysis.paths.cache_dir`
    (``LIQMAP_CACHE_DIR``, ``$CACHE_DIRECTORY``, ``$XDG_CACHE_HOME/liqmap``, ``~/.cache/liqmap``, ...)."""
    return cache_dir() / "bars.sqlite3"


class BarCache:
    """Bars per (venue, symbol, interval) in SQLite; thread-safe; ``path=None`` keeps it in memory."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                ":memory:" if self.path is None else str(self.path), check_same_thread=False, isolation_level=None,
            )
            if self.path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise DataError(f"cannot open the bar cache at {path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- bars --------------------------------------------------------------------------------------
    def load(self, venue: str, symbol: str, interval: str, since_ms: int = 0, until_ms: int | None = None) -> pd.DataFrame:
        """Cached bars with ``since_ms <= time < until_ms``, sorted by time.

        Columns: ``time`` (int64) and the price/OI columns; an optional column appears only when
        every returned row has it.
        """
        sql = f"SELECT {', '.join(BAR_COLUMNS)} FROM bars WHERE venue=? AND symbol=? AND interval=? AND time>=?"
        args: list[Any] = [venue, symbol, interval, int(since_ms)]
        if until_ms is not None:
            sql += " AND time<?"
            args.append(int(until_ms))
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY time", args).fetchall()
        frame = pd.DataFrame.from_records(rows, columns=list(BAR_COLUMNS))
        frame["time"] = frame["time"].astype(np.int64)
        for col in BAR_COLUMNS[1:]:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(np.float64)
        drop = [c for c in OPTIONAL if len(frame) == 0 or frame[c].isna().any()]
        return frame.drop(columns=drop)

    def store(self, venue: str, symbol: str, interval: str, frame: pd.DataFrame) -> int:
        """Validate ``frame`` and upsert all its rows in one transaction; return the row count.

        Raises :class:`DataError` (and writes nothing) when a required column is missing or any
        row breaks :func:`~analysis.bars.bar_fault`.
        """
        rows = _rows(frame, f"{venue} {symbol} {interval}")
        if not rows:
            return 0
        sql = (
            f"INSERT OR REPLACE INTO bars (venue, symbol, interval, {', '.join(BAR_COLUMNS)}) "
            f"VALUES (?, ?, ?, {', '.join('?' * len(BAR_COLUMNS))})"
        )
        key = (venue, symbol, interval)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(sql, (key + r for r in rows))
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise DataError(f"cannot write the bar cache: {exc}") from None
                raise
        return len(rows)

    def last_time(self, venue: str, symbol: str, interval: str) -> int | None:
        """Open time of the newest cached bar, or None."""
        return self._one("SELECT MAX(time) FROM bars WHERE venue=? AND symbol=? AND interval=?", venue, symbol, interval)

    def first_time(self, venue: str, symbol: str, interval: str) -> int | None:
        """Open time of the oldest cached bar, or None."""
        return self._one("SELECT MIN(time) FROM bars WHERE venue=? AND symbol=? AND interval=?", venue, symbol, interval)

    def newest(self, venue: str) -> int | None:
        """Open time of the newest bar cached for ``venue`` in any series, or None.

        The series are found through their coverage records (``cover:<venue>:<id>:<interval>`` in
        ``meta``, written at a series' first fetch), so each is one primary-key seek, not a scan.
        """
        prefix = f"cover:{venue}:"
        with self._lock:
            keys = [k for (k,) in self._db.execute("SELECT key FROM meta WHERE substr(key, 1, ?) = ?",
                                                    (len(prefix), prefix))]
        newest: int | None = None
        for key in keys:
            venue_id, _, interval = key[len(prefix):].rpartition(":")
            t = self.last_time(venue, venue_id, interval)
            if t is not None and (newest is None or t > newest):
                newest = int(t)
        return newest

    def count(self, venue: str, symbol: str, interval: str) -> int:
        return int(self._one("SELECT COUNT(*) FROM bars WHERE venue=? AND symbol=? AND interval=?", venue, symbol, interval) or 0)

    def prune(self, venue: str, symbol: str, interval: str, before_ms: int) -> int:
        """Delete bars older than ``before_ms``; return how many went."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM bars WHERE venue=? AND symbol=? AND interval=? AND time<?", (venue, symbol, interval, int(before_ms))
            )
            return cur.rowcount

    def _one(self, sql: str, *args: Any) -> Any:
        with self._lock:
            return self._db.execute(sql, args).fetchone()[0]

    # -- small JSON values (symbol lists) ----------------------------------------------------------
    def get_meta(self, key: str) -> tuple[Any, float] | None:
        """``(value, updated_epoch_s)`` stored under ``key``, or None."""
        with self._lock:
            row = self._db.execute("SELECT value, updated FROM meta WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0]), float(row[1])
        except ValueError:
            return None

    def put_meta(self, key: str, value: Any, updated: float | None = None) -> None:
        text = json.dumps(value, separators=(",", ":"))
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value, updated) VALUES (?, ?, ?)",
                (key, text, time.time() if updated is None else float(updated)),
            )


def columns_of(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The bar columns of ``frame`` as float arrays (a non-number becomes NaN), for :func:`bar_fault`."""
    return {c: pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64) for c in BAR_COLUMNS if c in frame.columns}


def _rows(frame: pd.DataFrame, who: str) -> list[tuple[Any, ...]]:
    """Rows ready for SQLite, after checking every bar with :func:`~analysis.bars.bar_fault`."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(f"{who}: cannot cache bars without column(s) {', '.join(missing)}")
    if len(frame) == 0:
        return []
    cols = columns_of(frame)
    fault = bar_fault(cols)
    if fault is not None:
        t = cols["time"][fault.row]
        raise DataError(f"{who}: cannot cache bars: {fault.reason} at {iso(t)} (row {fault.row}, "
                        f"{fault.column} = {show_value(frame[fault.column].iloc[fault.row])})")
    n = len(frame)
    lists = [cols["time"].astype(np.int64).tolist()]
    lists += [cols[c].tolist() if c in cols else [None] * n for c in BAR_COLUMNS[1:]]
    return list(zip(*lists))
