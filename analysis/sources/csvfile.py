"""Bars from CSV files: the bundled real sample, or any file in the same format.

The format is the one of ``shared/data/binance-btcusdt-perp-5m.csv``: ``timestamp`` (bar open,
epoch ms), ``open, high, low, close``, ``oi_usd`` and optionally ``taker_net_vol_btc``. Our own
column names (``time``, ``volume``, ``quote_volume``, ``taker_buy``, ``taker_net``) work too.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import lzma
from pathlib import Path
from typing import IO, Callable

import numpy as np

from ..bars import INTERVAL_MS, MAX_TIME_MS, Bars, bar_fault, iso, show_value
from ..errors import DataError, InputError
from ..symbols import parse_symbol
from ..windows import Window

__all__ = ["CsvSource", "SampleSource", "SAMPLE_PATH", "read_bars_csv"]

SAMPLE_PATH = Path(__file__).resolve().parent.parent / "data" / "binance-btcusdt-perp-5m.csv.gz"

_ALIASES = {
    "time": ("time", "timestamp", "open_time"),
    "open": ("open", "price_open"),
    "high": ("high", "price_high"),
    "low": ("low", "price_low"),
    "close": ("close", "price_close"),
    "oi_usd": ("oi_usd", "open_interest_usd", "sumOpenInterestValue", "oi_close"),
    "volume": ("volume",),
    "quote_volume": ("quote_volume",),
    "taker_buy": ("taker_buy", "taker_buy_volume"),
    "taker_net": ("taker_net", "taker_net_vol_btc"),
}
_REQUIRED = ("time", "open", "high", "low", "close", "oi_usd")


def read_bars_csv(path: str | Path, *, venue: str = "csv", symbol: str = "BTCUSDT") -> Bars:
    """Read a bars CSV. The interval is inferred from the most common timestamp step.

    Raises :class:`DataError` for an unreadable file, missing columns, a cell that is not a
    finite number, or a row that breaks :func:`~analysis.bars.bar_fault` (naming its data row,
    counted from 1 after the header, and its column). Time order is left to :meth:`Bars.validate`.
    """
    path = Path(path)
    try:
        header, rows = _read_table(path)
    except FileNotFoundError:
        raise InputError(f"no such file: {path}") from None
    except (csv.Error, EOFError, UnicodeDecodeError, OSError, lzma.LZMAError) as exc:
        raise DataError(f"{path.name}: not a readable CSV ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    cols: dict[str, int] = {}
    for name, options in _ALIASES.items():
        for opt in options:
            if opt in header:
                cols[name] = header.index(opt)
                break
    missing = [c for c in _REQUIRED if c not in cols]
    if missing:
        raise DataError(f"{path.name}: missing column(s) {', '.join(missing)} (have: {', '.join(header[:12])})")
    data: dict[str, np.ndarray] = {}
    for name, i in cols.items():
        data[name] = _numbers([row[i] if i < len(row) else "" for row in rows], header[i], path.name)
    if len(rows) < 2:
        raise DataError(f"{path.name}: {len(rows)} row(s) is too short for a map")
    t = data.pop("time")
    bad = (t != np.floor(t)) | (t < 0) | (t >= MAX_TIME_MS)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path.name}: row {i + 1}: {header[cols['time']]} is not an epoch-ms timestamp, an integer from 0 "
                        f"to {MAX_TIME_MS:.0e} ({header[cols['time']]} = {show_value(t[i])})")
    fault = bar_fault({**data, "time": np.arange(t.size)})  # values only: time order is Bars.validate's
    if fault is not None:
        i = fault.row
        raise DataError(f"{path.name}: row {i + 1}: {fault.reason} ({header[cols[fault.column]]} = {show_value(data[fault.column][i])})")
    step = np.diff(t)
    pos = step[step > 0]
    if pos.size == 0:
        raise DataError(f"{path.name}: timestamps never advance")
    vals, counts = np.unique(pos, return_counts=True)
    step_ms = int(vals[np.argmax(counts)])
    interval = next((k for k, v in INTERVAL_MS.items() if v == step_ms), None)
    if interval is None:
        raise DataError(f"{path.name}: bar spacing of {step_ms} ms is not a supported interval ({', '.join(INTERVAL_MS)})")
    return Bars(venue, symbol, interval, t.astype(np.int64), **data)


_OPENERS: dict[str, Callable[..., IO[str]]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV (plain, .gz, .bz2 or .xz), blank lines skipped.

    The standard library is enough here and keeps pandas out of the sample path (startup time).
    """
    opener = _OPENERS.get(path.suffix.lower(), open)
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        lines = [row for row in csv.reader(f) if row]
    if not lines:
        raise csv.Error("no columns to parse from file")
    header, rows = lines[0], lines[1:]
    for n, row in enumerate(rows, start=2):
        if len(row) > len(header):
            raise csv.Error(f"expected {len(header)} fields in line {n}, saw {len(row)}")
    return header, rows


def _float(cell: str) -> float:
    try:
        return float(cell)
    except (ValueError, OverflowError):
        return np.nan


def _numbers(cells: list[str], col: str, file: str) -> np.ndarray:
    """A column as finite floats, or a DataError naming the first bad cell's row and column."""
    try:
        values = np.array(cells, dtype=np.float64)
    except (ValueError, OverflowError):
        values = np.array([_float(c) for c in cells], dtype=np.float64)
    if len(values) and np.isnan(values).all():
        raise DataError(f"{file}: column {col} holds no numbers")
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        cell = cells[i].strip()
        if cell == "" or cell.lower() == "nan":
            shown = "empty or NaN"
        elif cell.isdigit():  # an integer too long for a float: show its length, not 400 digits
            shown = show_value(int(cell)) if len(cell) <= 4300 else f"a {len(cell)}-digit number"
        elif np.isinf(values[i]):
            shown = show_value(values[i])
        else:
            shown = show_value(cell)
        raise DataError(f"{file}: row {i + 1}: {col} is missing or not a number ({col} = {shown})")
    return values


class CsvSource:
    """A source over one CSV file of one symbol; the window takes the file's last bars."""

    def __init__(self, path: str | Path, *, venue: str | None = None, symbol: str | None = None) -> None:
        self.path = Path(path)
        self.name = venue or self.path.name.split(".")[0]
        self._symbol = parse_symbol(symbol).symbol if symbol else None

    async def symbols(self) -> list[str]:
        return [self._symbol] if self._symbol else []

    def _check_symbol(self, symbol: str) -> str:
        wanted = parse_symbol(symbol).symbol
        if self._symbol and wanted != self._symbol:
            raise InputError(f"{self.path.name} only holds {self._symbol}; {wanted} is not in it")
        return wanted

    async def bars(self, symbol: str, window: Window) -> Bars:
        wanted = self._check_symbol(symbol)
        bars = read_bars_csv(self.path, venue=self.name, symbol=wanted)
        return _cut(bars, window, f"file {self.path.name}")


class SampleSource(CsvSource):
    """The bundled real Binance BTCUSDT 5m sample (no network needed)."""

    def __init__(self) -> None:
        super().__init__(SAMPLE_PATH, venue="binance", symbol="BTCUSDT")

    async def bars(self, symbol: str, window: Window) -> Bars:
        wanted = self._check_symbol(symbol)
        bars = read_bars_csv(self.path, venue=self.name, symbol=wanted)
        return _cut(bars, window, "bundled sample (recorded Binance data)")


def _cut(bars: Bars, window: Window, what: str) -> Bars:
    """The window's last bars, noting provenance and any shortfall in coverage."""
    if len(bars) >= 2 and np.any(np.diff(bars.time) <= 0):
        return bars.with_notes(f"data: {what}")  # let validation name the first bad row
    cut = bars.last(window.duration_ms)
    notes = [f"data: {what}, ending {iso(cut.end_ms)}"]
    covered = (cut.end_ms - cut.start_ms) if len(cut) else 0
    if covered < 0.97 * window.duration_ms:
        notes.append(
            f"the data covers {covered / 86_400_000:.1f} of the {window.label} window's days; the map uses all of it"
        )
    return cut.with_notes(*notes)

