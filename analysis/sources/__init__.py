"""Market-data sources. Each turns a (symbol, window) request into normalized :class:`~analysis.bars.Bars`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Source
    from .csvfile import SAMPLE_PATH, CsvSource, SampleSource, read_bars_csv

__all__ = ["Source", "CsvSource", "SampleSource", "SAMPLE_PATH", "read_bars_csv"]


def __getattr__(name: str) -> Any:
    """Import on first use, so ``analysis.sources.registry`` (``liqmap --help``) stays light."""
    if name == "Source":
        from .base import Source

        return Source
    if name in __all__:
        from . import csvfile

        return getattr(csvfile, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
