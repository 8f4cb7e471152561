"""``Bars``: one venue x symbol x interval of OHLC + open interest, as numpy columns.

Every source (sample CSV, exchanges, recorded replays) produces this one type, and the model only
reads this type. :meth:`Bars.validate` is the single place that decides whether a series can carry
a map; it raises :class:`~analysis.errors.DataError` with a message that says what is wrong and where.

Gap policy (documented in docs/methodology.md): a gap is a missing run of bars. Gaps are never
interpolated. Up to ``max_gap_bars`` missing bars in a row are tolerated: the open-interest change
across the gap is booked at the first bar after it and the gap is reported in the map's notes,
because the price path inside the gap is unknown and levels it may have swept are not removed.
Longer gaps are an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Bars", "BarFault", "Gap", "INTERVAL_MS", "bar_fault", "interval_ms", "iso", "show_value", "MAX_TIME_MS"]

INTERVAL_MS: dict[str, int] = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}

_OPTIONAL = ("volume", "quote_volume", "taker_buy", "taker_net")
_PRICES = ("open", "high", "low", "close")
#: bar open times must lie in [0, MAX_TIME_MS): epoch ms up to the year 5138, exact in float64 and int64
MAX_TIME_MS = 100_000_000_000_000
#: relative tolerance of the OHLC consistency checks (float noise, never a real price difference)
_OHLC_TOL = 1e-9


def interval_ms(interval: str) -> int:
    """Milliseconds in a bar interval such as ``"5m"``."""
    try:
        return INTERVAL_MS[interval]
    except KeyError:
        raise DataError(f"unknown bar interval {interval!r}; expected one of {', '.join(INTERVAL_MS)}") from None


def iso(ms: int | float) -> str:
    """Epoch milliseconds as ``YYYY-MM-DDTHH:MMZ`` (UTC); a time no calendar can hold as ``<ms> ms``."""
    try:
        return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    except (OverflowError, OSError, ValueError):
        return f"{ms!r} ms"


def show_value(value: object) -> str:
    """A cell value for an error message: numbers as ``%.10g``, anything else quoted; long ones cut."""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.10g}"
    text = str(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return text if len(text) <= 20 else f"{text[:12]}... (a {len(text)}-digit number)"
    return repr(text) if len(text) <= 40 else f"{text[:30]!r}... ({len(text)} characters)"


@dataclass(frozen=True)
class BarFault:
    """Why bar ``row`` cannot be a bar: the ``column`` at fault and a short ``reason``."""

    row: int
    column: str
    reason: str


def bar_fault(columns: Mapping[str, np.ndarray | None]) -> BarFault | None:
    """The first row that cannot be a bar, or None: the one per-row rule of the project.

    ``columns`` holds ``time, open, high, low, close, oi_usd`` and optionally the volume columns.
    A bar needs: an integer time in ``[0, MAX_TIME_MS)`` after the previous bar's (strictly
    increasing); finite prices above zero with ``high >= max(open, close)`` and
    ``low <= min(open, close)`` (relative tolerance 1e-9); finite open interest above zero;
    optional columns finite, and volumes (not the signed ``taker_net``) not negative.
    Both :meth:`Bars.validate` and the bar cache apply it, so nothing is cached that a map
    would refuse.
    """
    rules: list[tuple[np.ndarray, str, str]] = []
    t = np.asarray(columns["time"], dtype=np.float64)
    rules.append((~np.isfinite(t) | (t != np.floor(t)) | (t < 0) | (t >= MAX_TIME_MS), "time",
                  "the time is not an integer epoch ms in range"))
    step = np.diff(t, prepend=-np.inf)
    rules.append((step == 0, "time", "duplicate timestamp"))
    rules.append((step < 0, "time", "timestamps are not sorted"))
    for name in (*_PRICES, "oi_usd", *_OPTIONAL):
        col = columns.get(name)
        if col is not None:
            rules.append((~np.isfinite(np.asarray(col, dtype=np.float64)), name, f"{name} is missing or not a number"))
    o, h, lo, c = (np.asarray(columns[k], dtype=np.float64) for k in _PRICES)
    with np.errstate(invalid="ignore"):
        for name, col in zip(_PRICES, (o, h, lo, c)):
            rules.append((col <= 0, name, f"non-positive price ({name})"))
        rules.append((h < lo, "high", "inconsistent OHLC: high < low"))
        rules.append((h < np.maximum(o, c) * (1 - _OHLC_TOL), "high", "inconsistent OHLC: high below the open or close"))
        rules.append((lo > np.minimum(o, c) * (1 + _OHLC_TOL), "low", "inconsistent OHLC: low above the open or close"))
        rules.append((np.asarray(columns["oi_usd"], dtype=np.float64) <= 0, "oi_usd", "open interest must be positive"))
        for name in ("volume", "quote_volume", "taker_buy"):
            col = columns.get(name)
            if col is not None:
                rules.append((np.asarray(col, dtype=np.float64) < 0, name, f"{name} is negative"))
    first: BarFault | None = None
    for mask, column, reason in rules:
        hit = np.flatnonzero(mask)
        if hit.size and (first is None or hit[0] < first.row):
            first = BarFault(int(hit[0]), column, reason)
    return first


@dataclass(frozen=True)
class Gap:
    """A run of missing bars: ``missing`` bars absent before the bar at ``index``."""

    index: int
    after_ms: int
    before_ms: int
    missing: int


@dataclass(frozen=True, eq=False)
class Bars:
    """Bars of one venue and symbol at a fixed interval.

    Columns are 1-D numpy arrays of equal length. ``time`` is the bar open in epoch ms (UTC).
    ``oi_usd`` is open-interest notional in USD at the bar. Optional columns are ``None`` when the
    venue does not provide them: ``volume`` (base units), ``quote_volume`` (USD), ``taker_buy``
    (taker-buy base volume) and ``taker_net`` (taker buys minus sells, base units).
    """

    venue: str
    symbol: str
    interval: str
    time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    oi_usd: np.ndarray
    volume: np.ndarray | None = None
    quote_volume: np.ndarray | None = None
    taker_buy: np.ndarray | None = None
    taker_net: np.ndarray | None = None
    notes: tuple[str, ...] = field(default=())
    #: what a venue says about where the data came from, for the map's JSON (e.g. Hyperliquid's OI history)
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.time)
        object.__setattr__(self, "time", np.asarray(self.time, dtype=np.int64))
        for name in ("open", "high", "low", "close", "oi_usd", *_OPTIONAL):
            col = getattr(self, name)
            if col is None:
                continue
            arr = np.asarray(col, dtype=np.float64)
            if arr.shape != (n,):
                raise DataError(f"{self.venue} {self.symbol}: column {name} has {arr.size} values, expected {n}")
            object.__setattr__(self, name, arr)
        interval_ms(self.interval)

    # -- shape ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.time.size)

    @property
    def interval_ms(self) -> int:
        return INTERVAL_MS[self.interval]

    @property
    def start_ms(self) -> int:
        return int(self.time[0])

    @property
    def end_ms(self) -> int:
        """Close time of the last bar (its open plus one interval)."""
        return int(self.time[-1]) + self.interval_ms

    @property
    def price(self) -> float:
        """The latest close: the map's current price."""
        return float(self.close[-1])

    def slice(self, start: int, stop: int | None = None) -> "Bars":
        """Bars ``[start:stop]`` by position, keeping every column."""
        s = np.s_[start:stop]
        cols = {name: (None if getattr(self, name) is None else getattr(self, name)[s]) for name in _OPTIONAL}
        return Bars(
            self.venue, self.symbol, self.interval, self.time[s], self.open[s], self.high[s], self.low[s],
            self.close[s], self.oi_usd[s], notes=self.notes, provenance=self.provenance, **cols,
        )

    def last(self, duration_ms: int) -> "Bars":
        """The bars whose open lies within ``duration_ms`` of the series' end."""
        cutoff = self.end_ms - duration_ms
        return self.slice(int(np.searchsorted(self.time, cutoff, side="left")))

    def with_notes(self, *notes: str) -> "Bars":
        """A copy with extra notes (e.g. provenance) attached."""
        cols = {name: getattr(self, name) for name in _OPTIONAL}
        return Bars(
            self.venue, self.symbol, self.interval, self.time, self.open, self.high, self.low, self.close,
            self.oi_usd, notes=self.notes + tuple(notes), provenance=self.provenance, **cols,
        )

    def with_provenance(self, provenance: Mapping[str, Any]) -> "Bars":
        """A copy whose :attr:`provenance` is ``provenance`` (a JSON-ready mapping)."""
        return replace(self, provenance=dict(provenance))

    # -- quality ---------------------------------------------------------------------------------
    def gaps(self) -> list[Gap]:
        """Runs of missing bars (only meaningful on sorted, unique times)."""
        if len(self) < 2:
            return []
        step = np.diff(self.time)
        idx = np.nonzero(step > self.interval_ms)[0]
        return [
            Gap(int(i + 1), int(self.time[i]), int(self.time[i + 1]), int(step[i] // self.interval_ms) - 1)
            for i in idx
        ]

    def validate(self, *, min_bars: int = 12, max_gap_bars: int = 6) -> list[Gap]:
        """Check the series can carry a map; return the tolerated gaps.

        Raises :class:`DataError` for: too few bars, unsorted or duplicate or misaligned times,
        NaN/inf, high < low or a close outside its bar, zero or negative prices or OI, prices that
        never move, and gaps longer than ``max_gap_bars``.
        """
        who = f"{self.venue} {self.symbol} {self.interval}"
        n = len(self)
        if n < min_bars:
            raise DataError(f"{who}: {n} bars is too short; at least {min_bars} are needed")
        fault = bar_fault({name: getattr(self, name) for name in ("time", *_PRICES, "oi_usd", *_OPTIONAL)})
        if fault is not None:
            i = fault.row
            value = show_value(getattr(self, fault.column)[i])
            raise DataError(f"{who}: {fault.reason} at {iso(self.time[i])} (row {i}, {fault.column} = {value})")
        step = np.diff(self.time)
        if np.any(step % self.interval_ms != 0):
            i = int(np.nonzero(step % self.interval_ms)[0][0]) + 1
            raise DataError(f"{who}: timestamp {iso(self.time[i])} (row {i}) is off the {self.interval} grid")
        if float(np.max(self.high)) <= float(np.min(self.low)):
            raise DataError(f"{who}: price never moves ({self.close[0]:g} throughout); there is no range to map")
        gaps = self.gaps()
        long_gaps = [g for g in gaps if g.missing > max_gap_bars]
        if long_gaps:
            g = long_gaps[0]
            raise DataError(
                f"{who}: {g.missing} bars missing between {iso(g.after_ms)} and {iso(g.before_ms)}; "
                f"at most {max_gap_bars} in a row are tolerated (gaps are never interpolated)"
            )
        return gaps

    # -- conversion ------------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """A DataFrame with one column per present field (time in ms)."""
        data = {name: getattr(self, name) for name in ("time", "open", "high", "low", "close", "oi_usd")}
        data.update({n: getattr(self, n) for n in _OPTIONAL if getattr(self, n) is not None})
        import pandas as pd  # only the live sources and the backtest convert frames

        return pd.DataFrame(data)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, venue: str, symbol: str, interval: str) -> "Bars":
        """Build from a DataFrame with columns ``time, open, high, low, close, oi_usd`` (+ optional)."""
        missing = [c for c in ("time", "open", "high", "low", "close", "oi_usd") if c not in frame.columns]
        if missing:
            raise DataError(f"{venue} {symbol}: missing column(s) {', '.join(missing)}")
        opt = {n: frame[n].to_numpy(dtype=np.float64) for n in _OPTIONAL if n in frame.columns}
        return cls(
            venue, symbol, interval,
            frame["time"].to_numpy(dtype=np.int64),
            *(frame[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close", "oi_usd")),
            **opt,
        )
