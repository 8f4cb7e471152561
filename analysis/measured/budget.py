"""The rate-limit budget and the poll schedule, both on an injectable clock (tests use a fake one).

:class:`WeightBudget` is a sliding window over the documented IP limit: Hyperliquid allows 1200
weight per minute per IP for REST requests (``clearinghouseState`` weighs 2, ``metaAndAssetCtxs``
and ``recentTrades`` 20). We take only ``share`` of it: by default 60% (720 a minute), so that
with the Hyperliquid source's own limiter (``SOURCE_WEIGHT_PER_MIN`` = 400 a minute for candles,
OI and tiers) the two stay under the IP's 1200 with 80 to spare when they share one IP. ``acquire(w)`` waits until the weight charged
in the last 60 s plus ``w`` fits, then charges it: the sum over any 60 s window never exceeds the
budget, exactly, counting every request we sent. A 429 closes the gate for the server's wait.

:class:`PollScheduler` decides whom to poll next. An account is re-polled after an interval that
shrinks with its tracked notional (``PollParams.intervals``: $1M+ every minute, $100k+ every 5
minutes, …); accounts with nothing open in the tracked coins wait ``empty_s``. When the whole
schedule would need more weight than the budget, every interval is stretched by the same factor
(large accounts stay polled more often than small ones). Accounts never polled take the slack:
they are polled only when no known account is due, with ``new_share`` of the budget reserved for
them by the stretch.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from ..errors import InputError

__all__ = ["WeightBudget", "PollParams", "PollScheduler", "IP_LIMIT_PER_MIN", "CLEARINGHOUSE_WEIGHT"]

#: the documented REST limit: aggregated weight per minute per IP
IP_LIMIT_PER_MIN = 1200
#: the measured layer's default share of the IP limit; see the module docstring
DEFAULT_SHARE = 0.6
#: documented weight of one clearinghouseState request
CLEARINGHOUSE_WEIGHT = 2


class WeightBudget:
    """At most ``floor(limit * share)`` weight in any ``window_s`` seconds, waiting when it is spent."""

    def __init__(self, *, limit: int = IP_LIMIT_PER_MIN, share: float = DEFAULT_SHARE, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if not (isinstance(limit, int) and limit > 0):
            raise InputError(f"the weight limit must be a positive integer, got {limit!r}")
        if not (isinstance(share, (int, float)) and 0 < share <= 1):
            raise InputError(f"the budget share must be in (0, 1], got {share!r}")
        if not (isinstance(window_s, (int, float)) and window_s > 0):
            raise InputError(f"the budget window must be positive seconds, got {window_s!r}")
        self.capacity = int(math.floor(limit * share))
        self.window_s = float(window_s)
        self._clock = clock
        self._sleep = sleep
        self._log: deque[tuple[float, int]] = deque()
        self._in_window = 0
        self._blocked_until = -math.inf
        self._lock = asyncio.Lock()
        self.charged = 0  # everything ever charged
        self.waited_s = 0.0

    def _prune(self, now: float) -> None:
        while self._log and self._log[0][0] <= now - self.window_s:
            self._in_window -= self._log.popleft()[1]

    def spent(self) -> int:
        """Weight charged in the last ``window_s`` seconds."""
        self._prune(self._clock())
        return self._in_window

    def _wait_for(self, weight: int, now: float) -> float:
        if now < self._blocked_until:
            return self._blocked_until - now
        need = self._in_window + weight - self.capacity
        if need <= 0:
            return 0.0
        freed = 0
        for t, w in self._log:  # oldest first: when enough has left the window
            freed += w
            if freed >= need:
                return max(t + self.window_s - now, 1e-6)
        return self.window_s  # unreachable: a weight over the capacity is refused in acquire

    async def acquire(self, weight: int) -> None:
        """Wait until ``weight`` fits in the window, then charge it (callers are served in turn)."""
        if not (isinstance(weight, int) and 0 < weight <= self.capacity):
            raise InputError(f"a request weight must be 1..{self.capacity}, got {weight!r}")
        async with self._lock:
            while True:
                now = self._clock()
                self._prune(now)
                wait = self._wait_for(weight, now)
                if wait <= 0:
                    self._add(now, weight)
                    return
                self.waited_s += wait
                await self._sleep(wait)

    def charge(self, weight: int) -> None:
        """Charge weight already spent (a response's per-item extra): later acquires wait for it."""
        if weight > 0:
            now = self._clock()
            self._prune(now)
            self._add(now, int(weight))

    def back_off(self, seconds: float) -> None:
        """The server said 429: send nothing for ``seconds`` (clamped by the caller)."""
        self._blocked_until = max(self._blocked_until, self._clock() + max(0.0, float(seconds)))

    def _add(self, now: float, weight: int) -> None:
        self._log.append((now, weight))
        self._in_window += weight
        self.charged += weight


def _default_intervals() -> tuple[tuple[float, float], ...]:
    return ((1_000_000.0, 60.0), (100_000.0, 300.0), (10_000.0, 900.0), (0.0, 1800.0))


@dataclass(frozen=True)
class PollParams:
    """How often accounts are polled (docs/methodology.md, "Measured positions")."""

    #: (notional at least USD, re-poll after seconds), largest first; the last row catches every open position
    intervals: tuple[tuple[float, float], ...] = field(default_factory=_default_intervals)
    #: an account with nothing open in the tracked coins is polled again after this long
    empty_s: float = 3600.0
    #: share of the budget the known accounts' schedule may fill before intervals stretch; the
    #: rest is left to accounts never polled
    new_share: float = 0.25
    #: weight of one poll (the documented clearinghouseState weight)
    weight: int = CLEARINGHOUSE_WEIGHT

    def __post_init__(self) -> None:
        rows = self.intervals
        if not rows or any(len(r) != 2 or not (r[1] > 0 and r[0] >= 0) for r in rows):
            raise InputError("PollParams.intervals must be (notional >= 0, seconds > 0) rows")
        if [r[0] for r in rows] != sorted((r[0] for r in rows), reverse=True) or rows[-1][0] != 0:
            raise InputError("PollParams.intervals must run from the largest notional down to 0")
        if [r[1] for r in rows] != sorted(r[1] for r in rows):
            raise InputError("PollParams.intervals: larger positions must not be polled less often")
        if not self.empty_s > 0 or not 0 <= self.new_share < 1:
            raise InputError("PollParams: empty_s must be positive and new_share in [0, 1)")

    def interval(self, notional: float) -> float:
        """Seconds between polls of an account with ``notional`` USD open in the tracked coins."""
        if not notional > 0:
            return self.empty_s
        for floor, seconds in self.intervals:
            if notional >= floor:
                return seconds
        return self.intervals[-1][1]


class PollScheduler:
    """Known accounts by due time (lazy heap), new accounts in discovery order."""

    def __init__(self, params: PollParams | None = None, *, capacity_per_min: float = 960.0) -> None:
        self.params = params or PollParams()
        self.capacity_per_min = float(capacity_per_min)
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, tuple[float, int]] = {}
        self._interval: dict[str, float] = {}  # base interval of each known account
        self._rate = 0.0  # sum of 1 / base interval over known accounts (polls per second)
        self._new: dict[str, None] = {}  # insertion-ordered set
        self._seq = 0
        self.polls = 0

    def __len__(self) -> int:
        return len(self._due) + len(self._new)

    def __contains__(self, address: object) -> bool:
        return address in self._due or address in self._new or address in self._interval

    @property
    def known(self) -> int:
        return len(self._due)

    @property
    def pending_new(self) -> int:
        return len(self._new)

    def stretch(self) -> float:
        """The factor every interval is multiplied by so the known accounts fit their share of the budget."""
        demand = self._rate * 60.0 * self.params.weight  # weight per minute at the base intervals
        room = self.capacity_per_min * (1.0 - self.params.new_share)
        return max(1.0, demand / room) if room > 0 else 1.0

    def add(self, address: str) -> bool:
        """Queue a newly discovered account (polled when no known one is due); False if already here."""
        if address in self:
            return False
        self._new[address] = None
        return True

    def remove(self, address: str) -> None:
        """Forget an account (evicted from the address book)."""
        self._new.pop(address, None)
        self._due.pop(address, None)
        if address in self._interval:
            self._rate -= 1.0 / self._interval.pop(address)

    def take(self, address: str) -> None:
        """Take ``address`` out of the queue while it is being polled (:meth:`done` or :meth:`failed` puts it back)."""
        self._new.pop(address, None)
        self._due.pop(address, None)

    def next(self, now: float) -> tuple[str, float] | None:
        """The account to poll next and when: a known account due by ``now``, else the oldest new one,
        else the known account due soonest (the caller waits until its time). None when empty."""
        top = self._peek()
        if top is not None and top[0] <= now:
            return top[1], top[0]
        if self._new:
            return next(iter(self._new)), now
        return (top[1], top[0]) if top is not None else None

    def _peek(self) -> tuple[float, str] | None:
        heap = self._heap
        while heap:
            due, seq, addr = heap[0]
            if self._due.get(addr) == (due, seq):
                return due, addr
            heapq.heappop(heap)  # stale entry: the account was rescheduled or removed
        return None

    def done(self, address: str, now: float, notional: float) -> float:
        """Record a poll of ``address`` (``notional``: USD open in the tracked coins); returns its next due time."""
        self.polls += 1
        self._new.pop(address, None)
        base = self.params.interval(notional)
        old = self._interval.get(address)
        if old is not None:
            self._rate -= 1.0 / old
        self._interval[address] = base
        self._rate += 1.0 / base
        due = now + base * self.stretch()
        self._seq += 1
        self._due[address] = (due, self._seq)
        heapq.heappush(self._heap, (due, self._seq, address))
        if len(self._heap) > 4 * len(self._due) + 64:  # drop stale entries now and then: memory stays bounded
            self._heap = [(d, s, a) for d, s, a in self._heap if self._due.get(a) == (d, s)]
            heapq.heapify(self._heap)
        return due

    def failed(self, address: str, now: float, retry_s: float) -> None:
        """A poll that failed: try that account again after ``retry_s`` (a new account becomes known)."""
        self._new.pop(address, None)
        if address not in self._interval:
            self._interval[address] = self.params.empty_s
            self._rate += 1.0 / self.params.empty_s
        self._seq += 1
        self._due[address] = (now + retry_s, self._seq)
        heapq.heappush(self._heap, (now + retry_s, self._seq, address))
