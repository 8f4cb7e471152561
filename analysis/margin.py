"""Maintenance-margin brackets: the ``mmr`` in the isolated-margin liquidation formula.

Binance (and Bybit/OKX alike) charge a maintenance-margin rate that rises with position notional;
the maximum leverage falls with it. The model does not know individual position sizes, so it
prices every level with the bracket of one *typical position* (``ModelParams.typical_position_usd``),
falling back to the largest bracket that still allows the level's leverage.

The shipped tables are Binance's published USDⓈ-M tiers (BTCUSDT as announced 2021-03-18; the
others are the published tiers of the same era). Exchanges revise them, so they are defaults, not
truth: pass your own :class:`MarginTable` to :class:`~analysis.model.ModelParams` to override.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Bracket", "MarginTable", "DEFAULT_TABLES", "GENERIC_TABLE", "table_for"]


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
