"""Maintenance-margin brackets: the ``mmr`` in the isolated-margin liquidation formula.

Binance (and Bybit/OKX alike) charge a maintenance-margin rate that rises with position notional;
the maximum leverage falls with it. The model does not know individual position sizes, so it
prices every level with the bracket of one *typical position* (``ModelParams.typical_position_usd``),
falling back to the largest bracket that still allows the level's leverage.

The shipped tables are Binance's published USDⓈ-M tiers (BTCUSDT as announced 2021-03-18; the
others are the published tiers of the same era). Exchanges revise them, so they are defaults, not
truth: a live report prices each venue with that venue's own tiers (``origin="venue"``, read and
refreshed by :mod:`analysis.sources.tiers`) and falls back to these (``origin="shipped"``, with
``why``); pass your own :class:`MarginTable` to :class:`~analysis.model.ModelParams` to override both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Literal

__all__ = ["Bracket", "MarginTable", "DEFAULT_TABLES", "GENERIC_TABLE", "table_for", "shipped_table", "brackets_fault",
           "TableOrigin", "CapUnit", "OPEN_CAP", "age_text"]

#: where a table comes from: the venue's own published tiers, or the tables shipped here
TableOrigin = Literal["venue", "shipped"]
#: what a bracket's cap counts: USD notional, or base coin (OKX tiers are in contracts x ctVal)
CapUnit = Literal["usd", "coin"]
#: the cap of a last, open-ended tier
OPEN_CAP = 1e12


@dataclass(frozen=True)
class Bracket:
    """Positions with notional up to ``cap_usd`` may use ``max_leverage`` and pay ``mmr``."""

    cap_usd: float
    max_leverage: float
    mmr: float


@dataclass(frozen=True)
class MarginTable:
    """An ordered list of brackets (ascending notional cap)."""

    name: str
    brackets: tuple[Bracket, ...]
    origin: TableOrigin = "shipped"
    as_of_ms: int | None = None
    cap_unit: CapUnit = "usd"
    stale: bool = False
    why: str | None = None

    def source_note(self, venue: str, now_ms: int) -> str:
        """One line for a map's notes: which table priced ``venue``, how old it is, and why."""
        if self.origin == "venue" and self.as_of_ms is not None:
            when = datetime.fromtimestamp(self.as_of_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            line = f"{venue}: margin tiers from the venue ({self.name}), fetched {when}, {age_text(self.as_of_ms, now_ms)} old"
            return line + (f"; refresh failed ({self.why}), last good copy used" if self.stale else "")
        return f"{venue}: shipped margin table {self.name} (fallback)" + (f": {self.why}" if self.why else "")

    def source_json(self, now_ms: int) -> dict[str, object]:
        """The same for the map's JSON: table, origin, fetch time and age, stale, why, maximum leverage."""
        return {
            "table": self.name, "origin": self.origin, "max_leverage": self.max_leverage,
            "fetched": None if self.as_of_ms is None else
            datetime.fromtimestamp(self.as_of_ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z"),
            "age_hours": None if self.as_of_ms is None else round(max(0.0, (now_ms - self.as_of_ms) / 3_600_000), 2),
            "stale": self.stale, "why": self.why,
        }

    @property
    def max_leverage(self) -> float:
        """The symbol's maximum leverage: the highest any bracket allows."""
        return max(b.max_leverage for b in self.brackets)

    def in_usd(self, price: float) -> "MarginTable":
        """The table with caps in USD: a table counted in coin is valued at ``price``."""
        if self.cap_unit == "usd":
            return self
        brackets = tuple(Bracket(b.cap_usd if b.cap_usd >= OPEN_CAP else b.cap_usd * price, b.max_leverage, b.mmr)
                         for b in self.brackets)
        return replace(self, brackets=brackets, cap_unit="usd")

    def mmr_for(self, leverage: float, position_usd: float) -> float:
        """Maintenance-margin rate for a position of ``position_usd`` at ``leverage``."""
        for b in self.brackets:
            if position_usd <= b.cap_usd:
                if leverage <= b.max_leverage:
                    return b.mmr
                break
        # The typical size is not allowed at this leverage: use the largest bracket that is.
        allowed = [b for b in self.brackets if leverage <= b.max_leverage]
        return allowed[-1].mmr if allowed else self.brackets[0].mmr


def age_text(ms: int, now_ms: int) -> str:
    """``5 h`` below two days, else ``3 days``."""
    days = max(0.0, (now_ms - ms) / 86_400_000)
    return f"{days * 24:.0f} h" if days < 2 else f"{days:.0f} days"


def brackets_fault(brackets: tuple[Bracket, ...]) -> str | None:
    """Why ``brackets`` cannot price levels (None when they can): at least one, caps positive and
    strictly increasing, leverage 1..1000, mmr in (0, 1) and below the initial margin ``1/leverage``."""
    if not brackets:
        return "no tiers"
    for i, b in enumerate(brackets):
        if not all(math.isfinite(x) for x in (b.cap_usd, b.max_leverage, b.mmr)):
            return f"tier {i + 1}: a number is not finite"
        if b.cap_usd <= 0 or (i and b.cap_usd <= brackets[i - 1].cap_usd):
            return f"tier {i + 1}: caps must be positive and increasing (cap {b.cap_usd:g})"
        if not 1 <= b.max_leverage <= 1000:
            return f"tier {i + 1}: maximum leverage {b.max_leverage:g} is outside 1..1000"
        if not 0 < b.mmr < 1 or b.mmr >= 1 / b.max_leverage:
            return (f"tier {i + 1}: maintenance margin rate {b.mmr:g} must be above 0 and below the initial margin "
                    f"1/{b.max_leverage:g}")
    return None


def _table(name: str, rows: list[tuple[float, float, float]]) -> MarginTable:
    return MarginTable(name, tuple(Bracket(cap, lev, mmr) for cap, lev, mmr in rows))


BTC_TABLE = _table(
    "BTCUSDT (Binance 2021-03-18)",
    [
        (50_000, 125, 0.004), (250_000, 100, 0.005), (1_000_000, 50, 0.01), (10_000_000, 20, 0.025),
        (20_000_000, 10, 0.05), (50_000_000, 5, 0.10), (100_000_000, 4, 0.125), (200_000_000, 3, 0.15),
        (300_000_000, 2, 0.25), (500_000_000, 1, 0.50),
    ],
)
ETH_TABLE = _table(
    "ETHUSDT (Binance 2021)",
    [
        (10_000, 100, 0.005), (100_000, 75, 0.0065), (500_000, 50, 0.01), (1_000_000, 25, 0.02),
        (2_000_000, 10, 0.05), (5_000_000, 5, 0.10), (10_000_000, 4, 0.125), (20_000_000, 3, 0.15),
        (40_000_000, 2, 0.25), (1e12, 1, 0.50),
    ],
)
MAJOR_ALT_TABLE = _table(
    "major alt (Binance 75x tiers)",
    [
        (10_000, 75, 0.0065), (50_000, 50, 0.01), (250_000, 25, 0.02), (1_000_000, 10, 0.05),
        (2_000_000, 5, 0.10), (5_000_000, 4, 0.125), (10_000_000, 3, 0.15), (20_000_000, 2, 0.25),
        (1e12, 1, 0.50),
    ],
)
GENERIC_TABLE = _table(
    "generic (Binance 50x tiers)",
    [
        (5_000, 50, 0.01), (25_000, 20, 0.025), (100_000, 10, 0.05), (250_000, 5, 0.10),
        (1_000_000, 2, 0.125), (1e12, 1, 0.50),
    ],
)

DEFAULT_TABLES: dict[str, MarginTable] = {
    "BTC": BTC_TABLE,
    "ETH": ETH_TABLE,
    **{base: MAJOR_ALT_TABLE for base in ("BNB", "SOL", "XRP", "DOGE", "ADA", "LTC", "LINK", "AVAX", "DOT", "BCH", "TRX")},
}


def table_for(symbol: str) -> MarginTable:
    """The default table for a symbol, by base asset (``BTCUSDT`` -> ``BTC``)."""
    base = symbol.upper()
    for quote in ("USDT", "USDC", "USD"):
        if base.endswith(quote) and len(base) > len(quote):
            base = base[: -len(quote)]
            break
    return DEFAULT_TABLES.get(base, GENERIC_TABLE)


def shipped_table(symbol: str, why: str | None = None) -> MarginTable:
    """The shipped table of ``symbol`` (:func:`table_for`), saying why it is used."""
    return replace(table_for(symbol), why=why)
