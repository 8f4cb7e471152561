"""The interface every market-data source implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..bars import Bars
from ..windows import Window

__all__ = ["Source"]


@runtime_checkable
class Source(Protocol):
    """An async market-data source for one venue.

    ``name`` is the venue label shown to users (``binance``, ``bybit``, ``okx``, ``sample`` ...).
    ``symbols()`` lists tradable perpetuals in canonical ``BASEQUOTE`` spelling; ``bars()`` returns
    validated-shape bars covering ``window`` (the model validates content). Both raise
    :class:`~analysis.errors.LiqmapError` subclasses only.
    """

    name: str

    async def symbols(self) -> list[str]: ...

    async def bars(self, symbol: str, window: Window) -> Bars: ...
