"""Market-data sources. Each turns a (symbol, window) request into normalized :class:`~analysis.bars.Bars`."""

from .base import Source
from .csvfile import CsvSource, SampleSource, SAMPLE_PATH, read_bars_csv

__all__ = ["Source", "CsvSource", "SampleSource", "SAMPLE_PATH", "read_bars_csv"]
