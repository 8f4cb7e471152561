"""A fake monotonic clock for offline source tests: time moves only when someone sleeps."""

from __future__ import annotations


class FakeTime:
    """``clock()`` reads the time; ``sleep(s)`` records the wait and advances it at once."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s
