"""The report service both front ends use: fetch -> model -> read -> render -> write.

``ReportService.report()`` returns a finished :class:`Report` (map, reading, PNG bytes, Markdown
summary, JSON). It caches finished reports for ``ttl`` seconds and makes concurrent requests for
the same key share one computation (single-flight). Venues that fail are named in the report;
only when every venue fails is it an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from . import chart, commentary
from .errors import InputError, LiqmapError, SourceError
from .liqmap import LiquidationMap, merge
from .metrics import MetricsParams, Reading, read
from .model import ModelParams, build_map, non_default_params
from .sources.base import Source
from .symbols import parse_symbol
from .venues import get as venue_info
from .windows import Window, parse_window

__all__ = ["Report", "ReportService", "ReportKey"]

log = logging.getLogger(__name__)

ReportKey = tuple[str, str, tuple[str, ...], str]


@dataclass(frozen=True, eq=False)
class Report:
    """A finished report: everything a front end needs to answer."""

    symbol: str
    window: Window
    venues: tuple[str, ...]
    map: LiquidationMap
    reading: Reading
    png: bytes
    summary: str
    missing: Mapping[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        out = self.map.to_json()
        out["reading"] = self.reading.to_json()
        out["non_default_params"] = non_default_params(self.map.params) if self.map.kind == "estimated" else {}
        out["missing_venues"] = dict(self.missing)
        return out


class ReportService:
    """Builds reports from a set of named sources, with a TTL cache and single-flight.

    ``sources`` maps a venue name to its :class:`Source`. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        sources: Mapping[str, Source],
        *,
        params: ModelParams | None = None,
        metrics: MetricsParams | None = None,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        if not sources:
            raise ValueError("a report service needs at least one source")
        self.sources = dict(sources)
        self.params = params or ModelParams()
        self.metrics = metrics or MetricsParams()
        self.ttl = ttl
        self._clock = clock
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self._cache: dict[ReportKey, tuple[float, Report]] = {}
        self._inflight: dict[ReportKey, asyncio.Future[Report]] = {}
        self.computations = 0  # how many reports were actually built (for tests and benchmarks)

    @property
    def venues(self) -> tuple[str, ...]:
        return tuple(self.sources)

    def resolve_venues(self, exchange: str) -> tuple[str, ...]:
        """``"all"`` -> every estimating venue; a venue name -> itself; anything else is an InputError.

        Sources that serve finished maps (a ``map`` coroutine, e.g. CoinGlass) are not summed into
        ``all`` with the estimates; ask for them by name. If only such sources exist, ``all`` is them.
        """
        key = str(exchange).strip().lower()
        if key == "all":
            estimating = tuple(v for v, s in self.sources.items() if not callable(getattr(s, "map", None)))
            return estimating or self.venues
        if key in self.sources:
            return (key,)
        known = venue_info(key)
        if known is not None and known.kind == "map":
            raise InputError(f"{key} is not available here: {known.notes}")
        if known is not None:
            raise InputError(f"{key} is not among this source's venues; choose all or one of {', '.join(self.sources)}")
        raise InputError(f"unknown exchange {str(exchange)[:20]!r}; choose all or one of {', '.join(self.sources)}")

    async def report(
        self, symbol: str, window: str | Window = "7d", exchange: str = "all", theme: str = "dark", stack: str = "tier",
        *, progress: Callable[[str], None] | None = None,
    ) -> Report:
        """A finished report for the request, from the cache when fresh.

        ``stack`` is ``"tier"`` (bars stacked by leverage) or ``"venue"`` (by exchange).
        ``progress``, if given, is called with one short line per slow step (fetching a venue,
        modelling, rendering) of a report that is actually built.
        """
        pair = parse_symbol(symbol)
        win = window if isinstance(window, Window) else parse_window(window)
        venues = self.resolve_venues(exchange)
        if theme not in chart.THEMES:
            raise InputError(f"unknown theme {str(theme)[:20]!r}; choose {' or '.join(chart.THEMES)}")
        if stack not in chart.STACKS:
            raise InputError(f"unknown stacking {str(stack)[:20]!r}; choose {' or '.join(chart.STACKS)}")
        key: ReportKey = (pair.symbol, win.label, venues, f"{theme}/{stack}")
        hit = self._cache.get(key)
        if hit and self._clock() - hit[0] < self.ttl:
            return hit[1]
        if key in self._inflight:
            return await asyncio.shield(self._inflight[key])
        fut: asyncio.Future[Report] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            rep = await self._build(pair.symbol, win, venues, theme, stack, progress)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        else:
            self._cache[key] = (self._clock(), rep)
            fut.set_result(rep)
            return rep
        finally:
            self._inflight.pop(key, None)

    async def maps(
        self, symbol: str, win: Window, venues: tuple[str, ...], progress: Callable[[str], None] | None = None,
    ) -> tuple[LiquidationMap, dict[str, str]]:
        """Build and merge the venues' maps; return it with {venue: why} for the venues that failed."""
        results = await asyncio.gather(*(self._venue_map(v, symbol, win, progress) for v in venues),
                                       return_exceptions=True)
        maps, missing = [], {}
        for venue, res in zip(venues, results):
            if isinstance(res, LiquidationMap):
                maps.append(res)
            elif isinstance(res, LiqmapError):
                missing[venue] = _reason(res)
            else:
                raise res  # a bug, not a venue failure
        if not maps:
            if len(venues) == 1:
                raise next(r for r in results if isinstance(r, BaseException))
            detail = "; ".join(f"{v}: {why}" for v, why in missing.items())
            exc = SourceError("all", "report", f"every venue failed ({detail})")
            exc.args = (f"no venue could serve {symbol}: every venue failed ({detail})",)  # reads as one sentence
            raise exc
        merged = merge(maps)
        if missing:
            merged = merged.with_notes(*(f"{v} missing: {why}" for v, why in missing.items()))
        return merged, missing

    async def _venue_map(
        self, venue: str, symbol: str, win: Window, progress: Callable[[str], None] | None = None,
    ) -> LiquidationMap:
        source = self.sources[venue]
        if progress is not None:
            progress(f"fetching {venue} {symbol} {win.label}")
        if callable(getattr(source, "map", None)):  # a source of finished maps (CoinGlass)
            return await source.map(symbol, win)
        bars = await source.bars(symbol, win)
        if progress is not None:
            progress(f"modelling {venue} ({len(bars):,} bars)")
        return await asyncio.to_thread(build_map, bars, self.params, window=win.label, now_ms=self._now_ms())

    async def _build(
        self, symbol: str, win: Window, venues: tuple[str, ...], theme: str, stack: str,
        progress: Callable[[str], None] | None = None,
    ) -> Report:
        self.computations += 1
        m, missing = await self.maps(symbol, win, venues, progress)
        if progress is not None:
            progress("rendering the chart and text")
        reading = read(m, self.metrics)
        png, text = await asyncio.to_thread(_render, m, reading, theme, stack)
        return Report(symbol, win, m.venues, m, reading, png, text, missing)


def _render(m: LiquidationMap, reading: Reading, theme: str, stack: str) -> tuple[bytes, str]:
    return chart.render(m, reading, theme=theme, stack=stack), commentary.summary(reading, m)


def _reason(exc: LiqmapError) -> str:
    if isinstance(exc, SourceError):
        return exc.reason
    return str(exc)

