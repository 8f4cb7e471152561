"""Pacing the bot's channel posts under Discord's global rate limit, and what fits in the grace window.

Discord allows a bot about 50 requests per second in all (the global rate limit; interaction
responses are not counted). :class:`DiscordPacer` spends ``rate_per_s`` of them (default 45,
``LIQMAP_DISCORD_POSTS_PER_SECOND``) through a :class:`~analysis.sources.http.RateLimiter` whose
burst is the rest (``limit - rate``), so no second ever sees more than the limit. It is the same
limiter interface a cross-process (shared) limiter implements, so shards can share one pacer.

discord.py keeps its own per-route buckets and, on a 429, waits and retries by itself: nothing
here fights that. The pacer *hears* it: :func:`watch_discord_http` listens to discord.py's log of
a global 429 ("Global rate limit has been hit. Retrying in N seconds.") and pauses the pacer for
that long, and a send that discord.py gives up on (:class:`discord.RateLimited`, a Cloudflare 429)
reaches the dispatcher as :class:`Throttled`, which pauses the pacer (the post is then recorded
``failed`` and verified before any retry, as any failed send).

The dispatcher takes a turn before every post and marker search, outside the send's own timeout,
in order of due time (see :mod:`bot.scheduler`).

:func:`posting_capacity` says whether the daily posts due at each minute fit: posts go out in
order of due time at the pacer's rate, so the posts of a busy minute (and those queued before
them) finish ``count / rate`` seconds later; those that would start after their grace window are
the ones recorded missed. It gives the number of posts one due minute can hold
(``rate x grace``), the busiest minute, and how many posts would miss.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from analysis.sources.http import RateLimiter

__all__ = ["DiscordPacer", "Throttled", "watch_discord_http", "posting_capacity", "Capacity",
           "DISCORD_GLOBAL_PER_S", "DEFAULT_POSTS_PER_S"]

log = logging.getLogger(__name__)

#: Discord's global limit per bot (requests per second)
DISCORD_GLOBAL_PER_S = 50.0
#: what the dispatcher spends of it by default, leaving room for interaction follow-ups and edits
DEFAULT_POSTS_PER_S = 45.0
_GLOBAL_429 = "Global rate limit has been hit"


class Throttled(Exception):
    """Discord refused a request with a 429 that discord.py did not wait out itself; ``retry_after`` s."""

    def __init__(self, retry_after: float, detail: str = "") -> None:
        self.retry_after = float(retry_after)
        super().__init__(detail or f"Discord rate limited this bot for {self.retry_after:.1f} s")


class DiscordPacer:
    """``rate_per_s`` requests per second, bursting to ``limit_per_s`` in any second at most."""

    def __init__(self, rate_per_s: float = DEFAULT_POSTS_PER_S, limit_per_s: float = DISCORD_GLOBAL_PER_S, *,
                 limiter: RateLimiter | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        if not (math.isfinite(rate_per_s) and 0 < rate_per_s <= limit_per_s):
            raise ValueError("the posting rate must be positive and at most Discord's limit")
        self.rate_per_s = float(rate_per_s)
        self.limit_per_s = float(limit_per_s)
        burst = max(1, math.floor(limit_per_s - rate_per_s))
        self.limiter = limiter or RateLimiter(rate_per_s, burst, clock=clock, sleep=sleep)
        self.pauses = 0  # how often Discord told us to wait (tests, logs)
        self.requests = 0

    async def acquire(self) -> None:
        """Wait for one request's turn."""
        await self.limiter.acquire(1)
        self.requests += 1

    def pause(self, seconds: float, why: str = "") -> None:
        """Hold every request for ``seconds`` (Discord said so); logged."""
        self.pauses += 1
        self.limiter.pause(seconds)
        log.warning("Discord rate limit%s: posts paused for %.1f s", f" ({why})" if why else "", seconds)


class _DiscordHttpWatcher(logging.Handler):
    """Pauses the pacer when discord.py logs that it hit the global rate limit."""

    def __init__(self, pacer: DiscordPacer) -> None:
        super().__init__(logging.WARNING)
        self.pacer = pacer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if isinstance(record.msg, str) and record.msg.startswith(_GLOBAL_429) and record.args:
                args = record.args if isinstance(record.args, tuple) else (record.args,)
                value = args[0]
                if isinstance(value, (int, float, str)):
                    self.pacer.pause(float(value), "global 429, discord.py waits it out")
        except (TypeError, ValueError):
            pass  # a message of another shape: nothing to learn from it


def watch_discord_http(pacer: DiscordPacer, logger: logging.Logger | None = None) -> logging.Handler:
    """Listen to discord.py's HTTP log (``discord.http``) for global 429s; returns the handler (remove it to stop)."""
    handler = _DiscordHttpWatcher(pacer)
    (logger or logging.getLogger("discord.http")).addHandler(handler)
    return handler


@dataclass(frozen=True)
class Capacity:
    """Whether the daily posts fit their grace window at the pacer's rate (see :func:`posting_capacity`)."""

    rate_per_s: float
    grace: timedelta
    per_minute: int  # posts due in one minute that all start within the grace window (nothing queued before)
    busiest: str  # "HH:MM UTC" of the busiest due minute ("" when nothing is scheduled)
    busiest_count: int
    total: int
    late: int  # posts that would start after their grace window (recorded missed)
    longest_s: float  # the longest a post waits after its due time

    @property
    def fits(self) -> bool:
        return self.late == 0

    def line(self) -> str:
        """One line for logs and ``/about``."""
        base = (f"daily posts paced at {self.rate_per_s:g}/s: {self.per_minute:,} channels due in one minute fit "
                f"the {_td(self.grace)} grace window")
        if not self.total:
            return base + "; nothing scheduled"
        busy = (f"; busiest minute {self.busiest}: {self.busiest_count:,} posts; the longest wait "
                f"about {_td_s(self.longest_s)}")
        if self.fits:
            return base + busy + " (fits)"
        return base + busy + f"; {self.late:,} of {self.total:,} would miss it and be recorded missed"


def posting_capacity(due: Mapping[int, int] | Iterable[tuple[int, int]], rate_per_s: float, grace: timedelta) -> Capacity:
    """``due``: posts per due minute of the day (0..1439, UTC), as a mapping or pairs.

    Posts go out in due order at ``rate_per_s``; a minute's posts start once those before are out.
    One day's load, and the queue carried over midnight once (a busy 23:59 delays 00:00).
    """
    counts: dict[int, int] = {}
    for minute, n in (due.items() if isinstance(due, Mapping) else due):
        if n > 0:
            counts[int(minute) % 1440] = counts.get(int(minute) % 1440, 0) + int(n)
    grace_s = grace.total_seconds()
    per_minute = int(math.floor(rate_per_s * grace_s)) if grace_s > 0 else 0
    if not counts:
        return Capacity(rate_per_s, grace, per_minute, "", 0, 0, 0, 0.0)
    minutes = sorted(counts)
    busiest = max(minutes, key=lambda m: (counts[m], -m))
    late = 0
    longest = 0.0
    free_at = -math.inf  # when the queue is empty again (seconds of the day)
    for day in (0, 1):  # the second pass sees the backlog carried over midnight
        day_late, day_longest = 0, 0.0
        for m in minutes:
            t = (day * 1440 + m) * 60.0
            start = max(t, free_at)
            n = counts[m]
            # posts of this minute start at start, start + 1/rate, ...: those that would start after
            # t + grace are recorded missed and take no turn
            sent = 0 if start > t + grace_s else min(n, int(math.floor((t + grace_s - start) * rate_per_s + 1e-9)) + 1)
            day_late += n - sent
            free_at = start + sent / rate_per_s
            if sent:
                day_longest = max(day_longest, start + (sent - 1) / rate_per_s - t)
        late, longest = day_late, day_longest
    return Capacity(rate_per_s, grace, per_minute, f"{busiest // 60:02d}:{busiest % 60:02d} UTC", counts[busiest],
                    sum(counts.values()), late, longest)


def _td(d: timedelta) -> str:
    minutes = int(d.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _td_s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
