"""Shared fixtures: the bundled sample and, when present, the real recorded data in ../shared/data."""

from __future__ import annotations

import asyncio
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
