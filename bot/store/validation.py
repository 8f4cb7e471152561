"""Checks every value passes before it reaches a query: symbols, views, exchanges, Discord and row
ids, cooldowns; each refusal an :class:`~analysis.errors.InputError` saying what would be valid."""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Sequence

from analysis.errors import InputError
from analysis.options import VIEWS
from analysis.symbols import parse_symbol
from analysis.venues import EXCHANGES as VENUE_EXCHANGES

__all__ = [
    "EXCHANGES",
    "MAX_SYMBOLS",
    "DEFAULT_COOLDOWN_S",
    "MIN_COOLDOWN_S",
    "MAX_COOLDOWN_S",
    "SNOWFLAKE_MAX",
    "ITEM_ID_MAX",
    "parse_symbols",
    "parse_view",
]

EXCHANGES = VENUE_EXCHANGES  # all + every venue of analysis.venues
MAX_SYMBOLS = 5
DEFAULT_COOLDOWN_S = 3600
MIN_COOLDOWN_S = 60
MAX_COOLDOWN_S = 7 * 86400


def parse_symbols(symbols: str | Iterable[str]) -> tuple[str, ...]:
    """``"BTC, eth"`` or ``["BTC", "ETHUSDT"]`` -> ``("BTCUSDT", "ETHUSDT")`` (deduplicated, at most 5)."""
    items = re.split(r"[\s,;]+", symbols) if isinstance(symbols, str) else list(symbols)
    out: list[str] = []
    for item in items:
        if str(item).strip():
            sym = parse_symbol(item).symbol
            if sym not in out:
                out.append(sym)
    if not out:
        raise InputError("no symbol given; name one or more tickers like BTC or BTC, ETH")
    if len(out) > MAX_SYMBOLS:
        raise InputError(f"at most {MAX_SYMBOLS} symbols per daily report (got {len(out)}); split them over two schedules")
    return tuple(out)


def parse_view(text: str) -> str:
    """``map``, ``heatmap`` or ``both`` (what a daily report posts), case-insensitive."""
    key = str(text).strip().lower()
    if key not in VIEWS:
        raise InputError(f"unknown view {str(text)[:20]!r}; choose one of {', '.join(VIEWS)}")
    return key


def _parse_exchange(text: str, allowed: Sequence[str]) -> str:
    key = str(text).strip().lower()
    if key not in allowed:
        raise InputError(f"unknown exchange {str(text)[:20]!r}; choose one of {', '.join(allowed)}")
    return key


SNOWFLAKE_MAX = 2**63 - 1  # Discord ids are unsigned 64-bit in JSON but fit BIGINT (signed) in practice
ITEM_ID_MAX = 2**31 - 1  # subscription and delivery ids are Integer primary keys (32-bit on PostgreSQL)


def _is_int_in(value: Any, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= hi


def _parse_id(value: Any, what: str) -> int:
    """A Discord snowflake (1 .. 2**63-1), else InputError; checked before any query (a larger
    int would raise OverflowError in the database driver)."""
    if not _is_int_in(value, SNOWFLAKE_MAX):
        raise InputError(f"{what} must be a positive Discord id, not {str(value)[:24]!r}")
    return value


def _valid_item_id(value: Any) -> bool:
    """Whether ``value`` can be the id of a stored row (1 .. 2**31-1); anything else matches no row."""
    return _is_int_in(value, ITEM_ID_MAX)



def _chunks(items: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _reason(text: str | None) -> str:
    text = " ".join(str(text or "no reason given").split())
    return text[:300]


def _f(x: float | None) -> float | None:
    return None if x is None else float(x)


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


