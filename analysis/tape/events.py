"""The normalised realized-liquidation event, the gap marker, and the interfaces between them.

Every venue feed (``analysis.tape.feeds``) turns its frames into :class:`LiquidationEvent` and
reports outages as :class:`Gap`; it writes both to a :class:`TapeSink`. The bot's database
implements the sink and the :class:`TapeReader` that the overlays and the live score read from.
This module imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

__all__ = ["Side", "LiquidationEvent", "Gap", "Coverage", "TapeSink", "TapeReader", "FEED_SAMPLED", "feed_coverage"]

Side = Literal["long", "short"]

#: whether a venue's public liquidation feed is sampled (drops events) or complete
FEED_SAMPLED: dict[str, bool] = {
    "bybit": False,  # v5 allLiquidation: every liquidation
    "binance": True,  # !forceOrder@arr: at most the latest liquidation per symbol per 1000 ms
    "okx": True,  # liquidation-orders: not every order is pushed
}


def feed_coverage(venue: str) -> str:
    """``complete`` or ``sampled`` for a venue's feed (``unknown`` for a venue without one)."""
    if venue not in FEED_SAMPLED:
        return "unknown"
    return "sampled" if FEED_SAMPLED[venue] else "complete"


@dataclass(frozen=True, slots=True)
class LiquidationEvent:
    """One realized liquidation, as a venue reported it.

    ``side`` is the side of the position that was liquidated (a long liquidation is a forced sell).
    ``qty`` is in base units; ``usd`` is ``price * qty`` in quote (USD/USDT) terms. ``key`` is
    stable across reconnects for the same venue event, so a replay after a reconnect stores once.
    """

    venue: str
    symbol: str  # canonical, e.g. BTCUSDT
    time_ms: int
    side: Side
    price: float
    qty: float
    usd: float
    sampled: bool
    key: str


@dataclass(frozen=True, slots=True)
class Gap:
    """A span when a feed was not connected (or not trusted): events in it may be missing.

    ``symbol`` None means every symbol on that connection. ``end_ms`` None while still open.
    """

    venue: str
    symbol: str | None
    start_ms: int
    end_ms: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Coverage:
    """A span when the recorder ran for ``symbol`` on ``venue`` (from its start to its last
    heartbeat or its stop). Time outside every span was not recorded at all; inside one, a
    :class:`Gap` marks when the feed was down. So "no event" means "none happened" (on a complete
    feed) only where a span covers the time and no gap does."""

    venue: str
    symbol: str
    start_ms: int
    end_ms: int


class TapeSink(Protocol):
    """Where a recorder writes. Implementations de-duplicate on ``(venue, key)``."""

    async def write_events(self, events: Sequence[LiquidationEvent]) -> int:
        """Store the events; return how many were new (duplicates are ignored, not errors)."""
        ...

    async def write_gap(self, gap: Gap) -> None:
        """Record (or close, same venue/symbol/start_ms) a gap."""
        ...


class TapeReader(Protocol):
    """What the overlays, the commentary and the live score read."""

    async def events(
        self, symbol: str, start_ms: int, end_ms: int, venues: Sequence[str] | None = None,
    ) -> list[LiquidationEvent]:
        """Events of ``symbol`` with ``start_ms <= time_ms < end_ms``, oldest first."""
        ...

    async def gaps(self, start_ms: int, end_ms: int, venues: Sequence[str] | None = None) -> list[Gap]:
        """Gaps overlapping ``[start_ms, end_ms)``; an open gap counts as running to now."""
        ...

    async def coverage(
        self, symbol: str, start_ms: int, end_ms: int, venues: Sequence[str] | None = None,
    ) -> list[Coverage]:
        """The recorder's spans for ``symbol`` overlapping ``[start_ms, end_ms)``."""
        ...
