"""Hyperliquid open interest recorded by liqmap itself: snapshots, their history, and the poller.

Hyperliquid serves the current open interest of every perpetual (``metaAndAssetCtxs``) but no
history of it, and the model needs open interest bar by bar. So liqmap records it: the
:class:`OiPoller` asks for one snapshot of every coin every :attr:`OiPollParams.interval_s`
(one request of weight 20, about 1.7% of the documented 1200 per minute) and writes the coins it
keeps to an :class:`OiSink` (``bot.hl_oi_store.HlOiStore``, table ``hl_oi_snapshots``). The
Hyperliquid source reads them back through an :class:`OiHistory` and joins them with candles.

Pure except for the poller's loop, whose clock and sleep are injectable (tests run it on a fake
clock). Every threshold is a named parameter with a default (see docs/methodology.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from ..bars import iso
from ..errors import InputError, LiqmapError

__all__ = [
    "OiSnapshot", "OiHistory", "OiSink", "HistoryParams", "History", "contiguous_tail", "OiPollParams", "OiPoller",
    "HISTORY_CAP",
]

log = logging.getLogger(__name__)

#: most snapshots one history read returns (30 days at one a minute is 43,200)
HISTORY_CAP = 100_000


@dataclass(frozen=True, slots=True)
class OiSnapshot:
    """One coin's open interest as Hyperliquid reported it at ``time_ms`` (our clock at receipt).

    ``coin`` is Hyperliquid's name (``BTC``, ``kPEPE``), ``symbol`` liqmap's canonical pair
    (``BTCUSDT``, ``1000PEPEUSDT``); ``oi_coin`` is ``openInterest`` in coins, one side (the
    longs, which equal the shorts); ``mark_px`` the mark price in USDC.
    """

    coin: str
    symbol: str
    time_ms: int
    oi_coin: float
    mark_px: float

    @property
    def oi_usd(self) -> float:
        return self.oi_coin * self.mark_px


@runtime_checkable
class OiHistory(Protocol):
    """What the Hyperliquid source reads: a coin's snapshots ``start_ms <= time_ms < end_ms``,
    oldest first, as ``(time_ms, oi_coin)`` pairs (at most :data:`HISTORY_CAP`; beyond, the newest)."""

    async def read_oi(self, coin: str, start_ms: int, end_ms: int) -> Sequence[tuple[int, float]]: ...


@runtime_checkable
class OiSink(Protocol):
    """What the poller writes to: returns how many snapshots were new; ``prune_oi`` drops old ones."""

    async def write_oi(self, snapshots: Sequence[OiSnapshot]) -> int: ...

    async def prune_oi(self, before_ms: int) -> int: ...


# -- history ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HistoryParams:
    """When recorded open interest is enough for an estimated map.

    ``min_history_h``: the shortest unbroken run of recorded OI (hours) a map is built from; with
    less, the source refuses with a message saying how much there is. ``max_gap_bars``: missing
    bars in a row tolerated inside the run (the model's own default); a longer hole (the poller
    was down) ends the run, and the history before it is left out. ``max_stale_bars``: how many of
    the newest closed bars may lack OI before the history counts as stale (the poller stopped).
    """

    min_history_h: float = 12.0
    max_gap_bars: int = 6
    max_stale_bars: int = 3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_history_h) and 0 < self.min_history_h <= 24 * 400):
            raise InputError("min_history_h must be a number of hours between 0 and 9600")
        if not (0 <= self.max_gap_bars <= 10_000 and 0 <= self.max_stale_bars <= 10_000):
            raise InputError("max_gap_bars and max_stale_bars must be 0..10,000")


@dataclass(frozen=True)
class History:
    """How much recorded OI a map rests on: the run used and what the store holds in the window."""

    first_ms: int | None  # oldest snapshot in the window (None: none)
    last_ms: int | None  # newest snapshot in the window
    snapshots: int
    used_from_ms: int | None  # first bar of the unbroken run the map uses
    used_to_ms: int | None  # close of its last bar
    bars: int

    @property
    def used_hours(self) -> float:
        if self.used_from_ms is None or self.used_to_ms is None:
            return 0.0
        return (self.used_to_ms - self.used_from_ms) / 3_600_000

    def to_json(self) -> dict[str, Any]:
        return {
            "oi_source": "liqmap's own snapshots of Hyperliquid metaAndAssetCtxs (Hyperliquid serves no OI history)",
            "snapshots_in_window": self.snapshots,
            "first_snapshot": iso(self.first_ms) if self.first_ms is not None else None,
            "last_snapshot": iso(self.last_ms) if self.last_ms is not None else None,
            "used_from": iso(self.used_from_ms) if self.used_from_ms is not None else None,
            "used_to": iso(self.used_to_ms) if self.used_to_ms is not None else None,
            "used_hours": round(self.used_hours, 2),
            "bars": self.bars,
        }


def contiguous_tail(times: np.ndarray, step_ms: int, max_gap_bars: int) -> int:
    """Index where the newest run of bar times without a hole of more than ``max_gap_bars`` starts."""
    if times.size < 2:
        return 0
    missing = np.diff(times) // step_ms - 1
    holes = np.nonzero(missing > max_gap_bars)[0]
    return int(holes[-1] + 1) if holes.size else 0


def oi_frame(points: Sequence[tuple[int, float]]) -> pd.DataFrame:
    """Snapshots as a ``time, oi_coin`` frame; rows with a non-finite or non-positive OI left out."""
    if not points:
        return pd.DataFrame({"time": np.empty(0, np.int64), "oi_coin": np.empty(0)})
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    keep = np.isfinite(arr[:, 0]) & np.isfinite(arr[:, 1]) & (arr[:, 1] > 0)
    return pd.DataFrame({"time": arr[keep, 0].astype(np.int64), "oi_coin": arr[keep, 1]})


# -- the poller ---------------------------------------------------------------------------------------

class SnapshotSource(Protocol):
    """What the poller polls (:class:`~analysis.sources.hyperliquid.HyperliquidSource`)."""

    async def snapshot(self) -> list[OiSnapshot]: ...


@dataclass(frozen=True)
class OiPollParams:
    """The poller's cadence and what it keeps.

    ``interval_s``: seconds between snapshots (60: about five per 5-minute bar; weight 20 each, 20
    per minute of the documented 1200). ``symbols``: canonical pairs to keep; empty keeps the
    ``top_n`` coins by OI notional of each snapshot (the set may change between snapshots; a coin
    that drops out has a hole in its history, handled like any gap). ``retention_days``: snapshots
    older than this are pruned every ``prune_s`` (the longest window is 30 days). ``max_backoff_s``:
    the longest pause after failed polls (doubling from ``interval_s``; a venue's retry-after is
    honoured, clamped to it).
    """

    interval_s: float = 60.0
    symbols: tuple[str, ...] = ()
    top_n: int = 50
    retention_days: float = 35.0
    prune_s: float = 3600.0
    max_backoff_s: float = 900.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval_s) and 5 <= self.interval_s <= 3600):
            raise InputError("the OI poll interval must be 5..3600 seconds")
        if not 1 <= self.top_n <= 1000:
            raise InputError("top_n must be 1..1000")
        if not (math.isfinite(self.retention_days) and 1 <= self.retention_days <= 3650):
            raise InputError("retention_days must be 1..3650")
        if not (math.isfinite(self.prune_s) and self.prune_s > 0 and math.isfinite(self.max_backoff_s)
                and self.max_backoff_s >= self.interval_s):
            raise InputError("prune_s must be positive and max_backoff_s at least interval_s")


def choose(snapshots: Sequence[OiSnapshot], params: OiPollParams) -> list[OiSnapshot]:
    """The snapshots the poller keeps: the configured symbols, else the ``top_n`` by OI notional."""
    if params.symbols:
        from .hyperliquid import aliases_of  # (that module builds on this one)

        wanted = set(params.symbols)
        return [s for s in snapshots if s.symbol in wanted or wanted.intersection(aliases_of(s.coin))]
    return sorted(snapshots, key=lambda s: s.oi_usd, reverse=True)[: params.top_n]


@dataclass
class PollStatus:
    """What the poller has done (its status line and tests read it)."""

    polls: int = 0
    failures: int = 0
    stored: int = 0
    pruned: int = 0
    last_ms: int | None = None
    last_error: str | None = None
    coins: int = 0
    missing: list[str] = field(default_factory=list)

    def line(self) -> str:
        last = iso(self.last_ms) if self.last_ms is not None else "never"
        err = f"; last error: {self.last_error}" if self.last_error else ""
        gone = f"; not listed: {', '.join(self.missing[:5])}" if self.missing else ""
        return (f"hyperliquid oi: {self.polls} poll(s), {self.stored} snapshot(s) stored ({self.coins} coin(s) last time), "
                f"last at {last}, {self.failures} failed{gone}{err}")


class OiPoller:
    """Polls ``source.snapshot()`` every ``params.interval_s`` and writes what it keeps to ``sink``.

    A failed poll (a :class:`LiqmapError` from the venue or the sink) is logged and counted; the
    next one waits twice as long (at most ``max_backoff_s``, at least the venue's retry-after), so
    a venue that refuses is not hammered. Ticks are scheduled from the start of the previous poll,
    so the cadence does not drift with the request's duration. ``clock``/``sleep``/``wall_ms`` are
    injectable: tests drive the poller on a fake clock.
    """

    def __init__(self, source: SnapshotSource, sink: OiSink, params: OiPollParams | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 wall_ms: Callable[[], int] | None = None,
                 status: Callable[[str], None] | None = None, status_every: int = 60) -> None:
        self.source = source
        self.sink = sink
        self.params = params or OiPollParams()
        self._clock = clock
        self._sleep = sleep
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        self.status = PollStatus()
        self._status_cb = status
        self._status_every = max(1, int(status_every))
        self._next_prune = -math.inf
        self._backoff = self.params.interval_s

    async def poll_once(self) -> int:
        """One snapshot: fetch, keep, write; returns how many were stored. Raises LiqmapError."""
        self.status.polls += 1
        snaps = await self.source.snapshot()
        kept = choose(snaps, self.params)
        if self.params.symbols:
            from .hyperliquid import aliases_of

            have = {a for s in kept for a in (s.symbol, *aliases_of(s.coin))}
            self.status.missing = [s for s in self.params.symbols if s not in have]
        n = await self.sink.write_oi(kept)
        self.status.stored += n
        self.status.coins = len(kept)
        self.status.last_ms = max((s.time_ms for s in kept), default=self.status.last_ms)
        self.status.last_error = None
        return n

    async def _prune_if_due(self) -> None:
        now = self._clock()
        if now < self._next_prune:
            return
        self._next_prune = now + self.params.prune_s
        before = self._wall_ms() - int(self.params.retention_days * 86_400_000)
        try:
            self.status.pruned += await self.sink.prune_oi(before)
        except Exception as exc:  # the database's own errors: a prune failing never stops the poller
            log.warning("hyperliquid oi: pruning failed (%s); retrying in %g s", type(exc).__name__, self.params.prune_s)

    async def tick(self) -> float:
        """One poll (and a prune when due); returns the seconds to wait before the next one."""
        started = self._clock()
        try:
            await self.poll_once()
            self._backoff = self.params.interval_s
            wait = self.params.interval_s
        except LiqmapError as exc:
            self.status.failures += 1
            self.status.last_error = " ".join(str(exc).split())[:200]
            retry = float(getattr(exc, "retry_after", None) or 0.0)
            wait = min(self.params.max_backoff_s, max(self._backoff, retry))
            self._backoff = min(self.params.max_backoff_s, self._backoff * 2)
            log.warning("hyperliquid oi: poll failed (%s); next in %.0f s", self.status.last_error, wait)
        await self._prune_if_due()
        if self._status_cb is not None and self.status.polls % self._status_every == 0:
            self._status_cb(self.status.line())
        return max(0.0, started + wait - self._clock())

    async def run(self, stop: asyncio.Event, *, max_polls: int | None = None) -> None:
        """Poll until ``stop`` is set (or ``max_polls`` polls were made)."""
        while not stop.is_set():
            wait = await self.tick()
            if max_polls is not None and self.status.polls >= max_polls:
                break
            if stop.is_set():
                break
            await self._sleep_unless(stop, wait)
        if self._status_cb is not None:
            self._status_cb(self.status.line())

    async def _sleep_unless(self, stop: asyncio.Event, seconds: float) -> None:
        waiter = asyncio.ensure_future(stop.wait())
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (waiter, sleeper):
                t.cancel()
            await asyncio.gather(waiter, sleeper, return_exceptions=True)
