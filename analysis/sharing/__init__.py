"""Work shared by the processes of one host (issue 14): the report cache, the single-flight of
identical reports and the venues' rate-limit budgets.

Without a shared layer (the default, one bot process) every :class:`~analysis.report.ReportService`
keeps its own LRU cache and single-flight and every :class:`~analysis.sources.http.RateLimiter` its
own bucket. With one (:class:`RedisLayer`, ``LIQMAP_REDIS_URL``), they sit under those: a report is
looked up in Redis before it is built, built by one process of the host while the others wait for
it, and stored there for the others; a venue's token bucket lives in Redis, so N processes on one
IP spend one budget. Redis down or slow never fails a report: the layer falls back to the
in-process path (a warning logged once per outage, :attr:`RedisLayer.healthy` False) and tries
again later. Pure: no Discord.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from .codec import CodecError, dumps, loads

__all__ = ["SharedLayer", "SharedBudget", "SharedUnavailable", "RedisLayer", "share_limiters",
           "CodecError", "dumps", "loads"]

T = TypeVar("T")


class SharedUnavailable(Exception):
    """The shared layer could not answer in time (down, slow, refusing): use the in-process path."""


class SharedBudget(Protocol):
    """One token bucket shared by every process (see :class:`analysis.sources.http.RateLimiter`)."""

    name: str

    async def take(self, cost: float, rate: float, burst: float) -> float:
        """Take ``cost`` tokens and return 0, or return how long to wait before trying again.
        Raises :class:`SharedUnavailable`."""
        ...

    def apply(self, op: str, value: float, rate: float, burst: float) -> None:
        """``charge``, ``pause`` or ``cap`` (observe) the shared bucket, in the background."""
        ...


class SharedLayer(Protocol):
    """What a report service and the rate limiters use across processes."""

    @property
    def healthy(self) -> bool | None:
        """True once it answered, False while it is down (the in-process path is used), None before use."""
        ...

    def status(self) -> str:
        """One line for /about and the logs, never a password."""
        ...

    async def flight(self, key: str, build: Callable[[], Awaitable[T]], *, ttl: float,
                     max_bytes: int) -> tuple[T, float]:
        """The value of ``key`` and its age in seconds: another process's when it is stored or being
        built, else ``build()``'s (stored for ``ttl`` seconds when it encodes within ``max_bytes``)."""
        ...

    def budget(self, name: str) -> SharedBudget:
        ...

    async def aclose(self) -> None:
        ...


def share_limiters(sources: Mapping[str, Any], layer: SharedLayer) -> list[str]:
    """Put every :class:`~analysis.sources.http.RateLimiter` the sources hold (as attributes, e.g.
    ``limiter``, ``weight``, or the bucket of a :class:`~analysis.sources.budget.RequestBudget` such as
    Binance's ``oi_budget``) on ``layer``'s budgets, named ``venue.attribute``;
    returns the names."""
    from ..sources.budget import RequestBudget
    from ..sources.http import RateLimiter

    names: list[str] = []
    for venue, src in sources.items():
        for attr, value in sorted(vars(src).items()) if hasattr(src, "__dict__") else ():
            if isinstance(value, RequestBudget):  # e.g. Binance's open-interest budget: its bucket
                value = value.limiter
            if isinstance(value, RateLimiter):
                name = f"{venue}.{attr}"
                value.share(layer.budget(name))
                names.append(name)
    return names


from .redis_layer import RedisLayer  # noqa: E402  (it uses SharedUnavailable from here)
