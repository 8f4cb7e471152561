"""The venues liqmap knows: the one list everything else derives from.

CLI choices (``liqmap report/record --exchange``), the bot's exchange choices, the store's allowed
exchanges, the live source registry, ``LIVE_VENUES`` of the HTTP core, and the docs all read
:data:`VENUES`. Adding a venue means one :class:`Venue` here and its source module.

This module imports nothing heavy: ``liqmap --help`` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Venue", "VENUES", "VENUE_NAMES", "LIVE_VENUES", "MAP_VENUES", "EXCHANGES", "VENUE_BY_NAME", "display_name", "get"]

VenueKind = Literal["estimated", "map"]


@dataclass(frozen=True)
class Venue:
    """One venue.

    ``kind`` is ``estimated`` (bars in, liquidation map estimated by the model; summed into
    ``all``) or ``map`` (a finished map from a vendor; asked for by name only). ``source`` is the
    live source factory as ``module:Class``; ``notes`` is one line for help texts and docs.
    """

    name: str
    display: str
    kind: VenueKind
    source: str
    notes: str

    @property
    def module(self) -> str:
        return self.source.partition(":")[0]

    @property
    def cls(self) -> str:
        return self.source.partition(":")[2]


VENUES: tuple[Venue, ...] = (
    Venue("binance", "Binance", "estimated", "analysis.sources.binance:BinanceSource",
          "USDⓈ-M perpetuals, public API; open-interest history for the last 30 days"),
    Venue("bybit", "Bybit", "estimated", "analysis.sources.bybit:BybitSource",
          "v5 linear perpetuals, public API"),
    Venue("okx", "OKX", "estimated", "analysis.sources.okx:OkxSource",
          "v5 swaps, public API; the latest 1,440 points per series (coarser bars for 7d and 30d)"),
    Venue("hyperliquid", "Hyperliquid", "estimated", "analysis.sources.hyperliquid:HyperliquidSource",
          "USDC-margined perpetuals, public API; no open-interest history is served, so liqmap records it "
          "(liqmap poll-oi, or the bot with LIQMAP_HL_OI=1) and maps once 12 h are recorded"),
    Venue("coinglass", "CoinGlass", "map", "analysis.sources.coinglass:CoinGlassSource",
          "CoinGlass's own map; needs a CoinGlass API key (COINGLASS_API_KEY) and live data (--source live); "
          "never summed into all"),
)

VENUE_NAMES: tuple[str, ...] = tuple(v.name for v in VENUES)
#: venues with live bar sources (estimated maps), in the order they are suggested when one is down
LIVE_VENUES: tuple[str, ...] = tuple(v.name for v in VENUES if v.kind == "estimated")
MAP_VENUES: tuple[str, ...] = tuple(v.name for v in VENUES if v.kind == "map")
#: every value an ``exchange`` option takes: all, then each venue
EXCHANGES: tuple[str, ...] = ("all", *VENUE_NAMES)

#: name -> venue
VENUE_BY_NAME: dict[str, Venue] = {v.name: v for v in VENUES}
_BY_NAME = VENUE_BY_NAME


def get(name: str) -> Venue | None:
    """The venue called ``name`` (case-insensitive), or None."""
    return _BY_NAME.get(str(name).strip().lower())


def display_name(name: str) -> str:
    """``okx`` -> ``OKX``; ``all`` -> ``All exchanges``; an unknown name title-cased."""
    if name == "all":
        return "All exchanges"
    venue = get(name)
    return venue.display if venue else str(name).title()
