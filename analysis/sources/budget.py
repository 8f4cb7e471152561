"""An endpoint's own request budget, spent in priority order, and who is held back by it.

Binance serves open-interest history (``/futures/data/openInterestHist``) under a limit of its own,
1,000 requests per 5 minutes per IP, apart from the request weight. :class:`RequestBudget` is that
limit as a named budget:

* **the bucket** is a :class:`~analysis.sources.http.RateLimiter` (so a shared, cross-process
  limiter can stand in for it) refilling ``limit * margin`` requests per window with a burst of
  ``limit * (1 - margin)``: in any window at most ``limit`` requests leave, whatever the timing
  (at the default margin 0.9, 900 per 5 minutes steady plus a burst of 100);
* **the queue**: :meth:`RequestBudget.take` waits its turn by priority (lower first, then first
  come), one token handed out at a time, so when many symbols refresh at once (a cold start)
  the subscribed and most asked ones are served first;
* **the estimate**: :meth:`RequestBudget.eta_s` says how long ``need`` more requests at a
  priority would wait now (the queue ahead and the bucket's balance);
* **held back**: a source that will not wait that long serves its last data (or a clear refusal)
  and marks the key with :meth:`RequestBudget.hold`; it is logged once per hold, not per request,
  and :meth:`RequestBudget.held` lists the holds (``/about``) until :meth:`RequestBudget.release`.

:class:`Demand` orders symbols: subscribed ones (daily reports, skew and cluster alerts) first,
then the most asked for (a bounded, decaying count of recent requests), then the rest.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import SourceError
from .http import RateLimiter

__all__ = ["BudgetParams", "RequestBudget", "Hold", "HeldBack", "Demand", "Priority", "SUBSCRIBED", "ASKED", "OTHER",
           "wait_words"]

log = logging.getLogger(__name__)

Priority = tuple[int, int]  # (class, rank within it): lower is served first
SUBSCRIBED, ASKED, OTHER = 0, 1, 2


@dataclass(frozen=True)
class BudgetParams:
    """A named budget: ``limit`` requests per ``window_s`` seconds, of which ``margin`` is spent steadily.

    The rest (``1 - margin``) is the burst, so no window ever sees more than ``limit``.
    """

    name: str
    limit: int
    window_s: float
    margin: float = 0.9

    def __post_init__(self) -> None:
        if self.limit < 1 or not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError("a budget needs a positive limit and window")
        if not 0 < self.margin < 1:
            raise ValueError("the margin must be between 0 and 1 (exclusive)")

    @property
    def steady(self) -> int:
        """Requests per window spent at an even rate (at most ``limit - 1``: the burst is at least one)."""
        return min(self.limit - 1, math.floor(self.limit * self.margin + 1e-9)) if self.limit > 1 else 1

    @property
    def rate_per_s(self) -> float:
        return self.steady / self.window_s

    @property
    def burst(self) -> int:
        return max(1, self.limit - self.steady)

    def describe(self) -> str:
        """``Binance open-interest history: 1,000 requests per 5 min (900 steady + 100 burst)``."""
        window = f"{self.window_s / 60:g} min" if self.window_s >= 60 else f"{self.window_s:g} s"
        return f"{self.name}: {self.limit:,} requests per {window} ({self.steady:,} steady + {self.burst:,} burst)"


class HeldBack(SourceError):
    """A symbol with no data yet whose fetch is queued behind a request budget; ``retry_after`` is
    the estimate of when it should be ready (seconds). Its text is meant for users as it is."""


@dataclass(frozen=True)
class Hold:
    """A key held back by the budget: since when (wall clock, epoch s), the ETA given then, whether
    its last data is served meanwhile (``stale``) or it has none yet."""

    key: str
    since: float
    eta_s: float
    stale: bool


class RequestBudget:
    """A :class:`BudgetParams` budget over a :class:`RateLimiter`, with a priority queue and holds.

    ``limiter`` may be given (e.g. one shared by several processes); it must refill at the
    budget's rate. ``clock``/``sleep`` are the limiter's when it is built here; ``wall`` stamps holds.
    """

    def __init__(
        self,
        params: BudgetParams,
        *,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.params = params
        self.limiter = limiter or RateLimiter(params.rate_per_s, params.burst, clock=clock, sleep=sleep)
        self._wall = wall
        self._queue: list[tuple[Priority, int, asyncio.Future[None]]] = []
        self._seq = 0
        self._spare = 0  # a token taken for a waiter that left meanwhile: the next one gets it
        self._pump: asyncio.Task[None] | None = None
        self._holds: dict[str, Hold] = {}
        self.taken = 0  # tokens handed out (tests and benchmarks)

    # -- spending ------------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """Requests waiting for their turn now."""
        return sum(1 for _, _, f in self._queue if not f.done())

    async def take(self, priority: Priority = (OTHER, 0)) -> None:
        """Wait for one request of the budget, served by ``priority`` (lower first, then FIFO)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._queue, (priority, self._seq, fut))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.ensure_future(self._run())
        await fut  # cancelled: the pump skips it (a token it already took goes to the next one)

    async def _run(self) -> None:
        try:
            while True:
                while self._queue and self._queue[0][2].done():
                    heapq.heappop(self._queue)
                if not self._queue:
                    return
                if not self._spare:
                    await self.limiter.acquire(1)
                    self._spare = 1
                while self._queue and self._queue[0][2].done():  # left while we waited
                    heapq.heappop(self._queue)
                if self._queue:  # the best waiter *now*: a subscribed symbol that arrived meanwhile goes first
                    _, _, fut = heapq.heappop(self._queue)
                    self._spare = 0
                    self.taken += 1
                    fut.set_result(None)
        except Exception as exc:  # a limiter that fails (a shared store down): every waiter hears it
            for _, _, fut in self._queue:
                if not fut.done():
                    fut.set_exception(exc)
            self._queue.clear()
            log.warning("%s: the request budget failed (%s)", self.params.name, type(exc).__name__)

    def eta_s(self, priority: Priority = (OTHER, 0), need: int = 1) -> float:
        """Seconds before ``need`` more requests at ``priority`` would be served, from now (an estimate:
        the waiters served before them plus ``need``, against the bucket's balance and rate)."""
        ahead = sum(1 for p, _, f in self._queue if p <= priority and not f.done())
        total = ahead + max(0, int(need)) - self._spare
        if total <= 0:
            return 0.0
        lim = self.limiter
        burst = max(1.0, lim.burst)
        first = lim.wait_s(min(float(total), burst))  # the part the balance (or a pause) decides
        rest = max(0.0, total - burst)
        return first + rest / lim.rate

    # -- holds -----------------------------------------------------------------------------------
    def hold(self, key: str, eta_s: float, *, stale: bool) -> Hold:
        """Mark ``key`` held back (logged once per hold); returns the hold (kept until released)."""
        old = self._holds.get(key)
        if old is not None:
            return old
        h = Hold(key, self._wall(), max(0.0, float(eta_s)), stale)
        self._holds[key] = h
        log.warning("%s: %s held back by the budget (about %s ahead; %s); %d held back now",
                    self.params.name, key, wait_words(h.eta_s),
                    "serving its last data, marked stale" if stale else "no data yet, requests are told when",
                    len(self._holds))
        return h

    def release(self, key: str) -> None:
        """``key`` is fresh again (its refresh was served): the hold ends, logged once."""
        h = self._holds.pop(key, None)
        if h is not None:
            log.info("%s: %s is no longer held back (after %.0f s)", self.params.name, key, self._wall() - h.since)

    def is_held(self, key: str) -> bool:
        return key in self._holds

    def held(self) -> list[Hold]:
        """The keys held back now, oldest hold first."""
        return sorted(self._holds.values(), key=lambda h: (h.since, h.key))


def wait_words(seconds: float) -> str:
    """``4 min`` / ``30 s`` (at least ``1 s``): a wait as users and logs read it."""
    return f"{max(1, round(seconds)):.0f} s" if seconds < 90 else f"{round(seconds / 60):.0f} min"


class Demand:
    """Which symbols matter most: subscribed (:data:`SUBSCRIBED`), most asked (:data:`ASKED`), others.

    :meth:`asked` counts a request for a symbol; counts halve every ``half_life_s`` (so they say
    *recent*) and at most ``max_symbols`` are kept (Space-Saving: a newcomer takes the least
    counted slot and its count, an overestimate by at most that count). :meth:`set_subscribed`
    replaces the subscribed set (the bot reads it from its database).
    """

    def __init__(self, *, max_symbols: int = 1000, half_life_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_symbols < 1 or half_life_s <= 0:
            raise ValueError("max_symbols and half_life_s must be positive")
        self.max_symbols = max_symbols
        self.half_life_s = half_life_s
        self._clock = clock
        self._counts: dict[str, float] = {}
        self._decayed_at = clock()
        self.subscribed: frozenset[str] = frozenset()

    def set_subscribed(self, symbols: Iterable[str]) -> None:
        self.subscribed = frozenset(symbols)

    def _decay(self) -> None:
        now = self._clock()
        halves = math.floor((now - self._decayed_at) / self.half_life_s)
        if halves <= 0:
            return
        self._decayed_at += halves * self.half_life_s
        factor = 0.5 ** min(halves, 64)
        self._counts = {s: c * factor for s, c in self._counts.items() if c * factor >= 0.5}

    def asked(self, symbol: str) -> None:
        """One more recent request for ``symbol``."""
        self._decay()
        if symbol not in self._counts and len(self._counts) >= self.max_symbols:
            # Space-Saving (Metwally et al. 2005): the least counted gives its slot and count to the
            # newcomer, so a rising symbol can climb in while the table stays bounded
            least = min(self._counts, key=lambda s: self._counts[s])
            self._counts[symbol] = self._counts.pop(least)
        self._counts[symbol] = self._counts.get(symbol, 0.0) + 1.0

    def count(self, symbol: str) -> float:
        self._decay()
        return self._counts.get(symbol, 0.0)

    def priority(self, symbol: str) -> Priority:
        """``(0, 0)`` subscribed, ``(1, -recent requests)`` asked for, ``(2, 0)`` the rest."""
        if symbol in self.subscribed:
            return (SUBSCRIBED, 0)
        n = self.count(symbol)
        return (ASKED, -int(round(n * 1000))) if n > 0 else (OTHER, 0)
