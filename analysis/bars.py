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

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Bars", "Gap", "INTERVAL_MS", "interval_ms", "iso"]

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


def interval_ms(interval: str) -> int:
    """Milliseconds in a bar interval such as ``"5m"``."""
    try:
        return INTERVAL_MS[interval]
    except KeyError:
        raise DataError(f"unknown bar interval {interval!r}; expected one of {', '.join(INTERVAL_MS)}") from None


def iso(ms: int | float) -> str:
    """Epoch milliseconds as ``YYYY-MM-DDTHH:MMZ`` (UTC)."""
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


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
            self.close[s], self.oi_usd[s], notes=self.notes, **cols,
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
            self.oi_usd, notes=self.notes + tuple(notes), **cols,
        )

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
        step = np.diff(self.time)
        if np.any(step == 0):
            i = int(np.nonzero(step == 0)[0][0]) + 1
            raise DataError(f"{who}: duplicate timestamp {iso(self.time[i])} (row {i})")
        if np.any(step < 0):
            i = int(np.nonzero(step < 0)[0][0]) + 1
            raise DataError(f"{who}: timestamps are not sorted at row {i} ({iso(self.time[i])})")
        if np.any(step % self.interval_ms != 0):
            i = int(np.nonzero(step % self.interval_ms)[0][0]) + 1
            raise DataError(f"{who}: timestamp {iso(self.time[i])} (row {i}) is off the {self.interval} grid")
        for name in ("open", "high", "low", "close", "oi_usd", *_OPTIONAL):
            col = getattr(self, name)
            if col is not None and not np.all(np.isfinite(col)):
                i = int(np.nonzero(~np.isfinite(col))[0][0])
                raise DataError(f"{who}: {name} is missing or not a number at {iso(self.time[i])} (row {i})")
        prices = np.stack([self.open, self.high, self.low, self.close])
        if np.any(prices <= 0):
            i = int(np.nonzero((prices <= 0).any(axis=0))[0][0])
            raise DataError(f"{who}: non-positive price at {iso(self.time[i])} (row {i})")
        bad = (self.high < self.low) | (self.close > self.high * (1 + 1e-9)) | (self.close < self.low * (1 - 1e-9))
        if np.any(bad):
            i = int(np.nonzero(bad)[0][0])
            raise DataError(f"{who}: inconsistent OHLC (high < low or close outside the range) at {iso(self.time[i])}")
        if np.any(self.oi_usd <= 0):
            i = int(np.nonzero(self.oi_usd <= 0)[0][0])
            raise DataError(f"{who}: open interest must be positive; got {self.oi_usd[i]:g} at {iso(self.time[i])} (row {i})")
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
