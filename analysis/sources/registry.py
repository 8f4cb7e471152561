"""Turn a ``--source`` spec into the named sources a report service uses.

Specs: ``sample`` (bundled real Binance BTCUSDT 5m data) or a path to a CSV file in the sample's
format. Live venues and recorded replays are added here as they land.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import Source
from .csvfile import CsvSource, SampleSource

__all__ = ["make_sources", "SOURCE_HELP"]

SOURCE_HELP = "sample (bundled recorded Binance data) or a path to a CSV file"


def make_sources(spec: str) -> dict[str, Source]:
    """The venue -> source mapping for a ``--source`` spec; InputError for an unknown spec."""
    spec = str(spec).strip()
    if spec == "sample":
        src: Source = SampleSource()
        return {src.name: src}
    path = Path(spec)
    if path.suffix.lower() in (".csv", ".gz") or path.exists():
        if not path.is_file():
            raise InputError(f"no such file: {path}")
        src = CsvSource(path)
        return {src.name: src}
    raise InputError(f"unknown source {spec[:40]!r}; use {SOURCE_HELP}")
