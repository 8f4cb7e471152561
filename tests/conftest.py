"""Shared fixtures: the bundled sample and, when present, the real recorded data in ../shared/data."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from analysis.bars import Bars
from analysis.sources import SAMPLE_PATH, read_bars_csv

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def shared_file(name: str) -> Path:
    """Path of a file in ../shared/data, or skip the test cleanly when it is absent."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/data is optional)")
    return path


@pytest.fixture(scope="session")
def sample_bars() -> Bars:
    """All 8,014 bundled real Binance BTCUSDT 5m bars."""
    return read_bars_csv(SAMPLE_PATH, venue="binance", symbol="BTCUSDT")


@pytest.fixture(scope="session")
def shared_5m() -> Bars:
    """The shared real Binance 5m file itself (skips when ../shared is absent)."""
    return read_bars_csv(shared_file("binance-btcusdt-perp-5m.csv"), venue="binance", symbol="BTCUSDT")


def run(coro):
    """Run a coroutine to completion in a fresh loop (for sync tests)."""
    return asyncio.run(coro)


# -- databases for the bot store (SQLite file always; PostgreSQL when a server is named) -----------

DB_BACKENDS = ["sqlite"] + (["server"] if os.environ.get("LIQMAP_TEST_DATABASE_URL") else [])


async def _reset_server_database(url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS cluster_alerts, tape_events, tape_gaps, daily_readings, deliveries, skew_alerts, skew_watches, daily_schedules, store_marks, alembic_version CASCADE"))
    await engine.dispose()


@pytest.fixture(params=DB_BACKENDS)
async def url(request, tmp_path):
    """A fresh database: a SQLite file, plus (when LIQMAP_TEST_DATABASE_URL names a PostgreSQL
    server) the same tests against it, emptied first."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}"
    server = os.environ["LIQMAP_TEST_DATABASE_URL"]
    await _reset_server_database(server)
    return server
