"""A per-user cooldown charged only when work actually starts."""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from discord import app_commands

__all__ = ["UserCooldown"]


class UserCooldown:
    """At most ``uses`` charges per user in any ``per`` seconds (a sliding window).

    Charged only when work is actually started, so a refused typo does not count.
    """

    def __init__(self, uses: int, per: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.uses = uses
        self.per = per
        self._clock = clock
        self._hits: dict[int, deque[float]] = {}
        self.cooldown = app_commands.Cooldown(uses, per)  # carried by the error, for handlers

    def charge(self, user_id: int) -> None:
        """Record one use, or raise :class:`app_commands.CommandOnCooldown` with the wait."""
        if self.per <= 0:
            return
        now = self._clock()
        if len(self._hits) > 10_000:  # forget users whose window has passed
            self._hits = {u: q for u, q in self._hits.items() if q and now - q[-1] < self.per}
        hits = self._hits.setdefault(user_id, deque())
        while hits and now - hits[0] >= self.per:
            hits.popleft()
        if len(hits) >= self.uses:
            raise app_commands.CommandOnCooldown(self.cooldown, self.per - (now - hits[0]))
        hits.append(now)
