"""The report service both front ends use: fetch -> model -> read -> render -> write.

``ReportService.report()`` returns a finished :class:`Report` (map, reading, PNG bytes, Markdown
summary, JSON). It caches finished reports for ``ttl`` seconds in an LRU bounded by bytes
(``max_bytes``, default :data:`DEFAULT_CACHE_BYTES`; each report counts its PNG, map arrays and
text, see :attr:`Report.nbytes`), sweeps expired entries on every store, stores nothing when
``ttl`` is 0, and makes concurrent requests for the same key share one computation (single-flight). Venues that fail are named in the report;
only when every venue fails is it an error.

With a shared layer (``shared``, :mod:`analysis.sharing`: Redis for several bot processes on one
host) a key missing here is looked up there, built by one process while the others wait, and
stored there for them; the local LRU keeps what this process got, for what is left of its TTL.

``ReportService.reading()`` is the reading-only path (bars -> model -> metrics, no chart, no
text) for the skew watcher and the cluster alerts. It shares with ``report()`` the merged map of
each (symbol, window, venues), cached and single-flighted under the ``theme`` part ``map`` in the
same byte budget (:func:`map_nbytes`), so a reading followed by the full report of the same key
models it once.

Charts are rendered by the service's ``renderer`` (:mod:`analysis.render_pool`: a process pool in
the bot, a thread by default); the chart and text functions and their data are sent to it, never
the service.

``ReportService.heatmap()`` is cached and single-flighted the same way, under its own key
(``theme`` part ``heatmap/<theme>``) and in the same byte budget (PNG plus the state arrays, see
:func:`heatmap_nbytes`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, TypeVar

from . import chart, commentary
from .errors import InputError, LiqmapError, SourceError
from .liqmap import LiquidationMap, merge
from .margin import shipped_table
from .metrics import MetricsParams, Reading, read
from .model import ModelParams, non_default_params
from .model_state import ModelCache
from .readings import to_record
from .render_pool import Renderer, ThreadRenderer
from .sources.base import Source
from .symbols import parse_symbol
from .venues import get as venue_info
from .windows import Window, parse_window

if TYPE_CHECKING:
    from .heatmap import HeatmapStates
    from .sharing import SharedLayer
    from .tape.events import TapeReader
    from .tape.realized import RealizedParams, RealizedTape

T = TypeVar("T")

__all__ = ["Report", "ReportService", "ReportKey", "HeatmapResult", "MapResult", "heatmap_nbytes", "map_nbytes",
           "DEFAULT_CACHE_BYTES"]

log = logging.getLogger(__name__)

ReportKey = tuple[str, str, tuple[str, ...], str]  # (symbol, window, venues, "theme/stack" or "heatmap/theme")
HeatmapResult = tuple[bytes, "HeatmapStates", dict[str, str]]  # (PNG, merged states, {venue: why it is missing})
MapResult = tuple[LiquidationMap, dict[str, str]]  # (merged map, {venue: why it is missing})

#: Default byte budget of the report cache (a typical report is about 0.8 MB).
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
_OVERHEAD_BYTES = 4096  # the reading, dataclasses and dict slots: small, but never zero


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
    realized: RealizedTape | None = None

    @property
    def nbytes(self) -> int:
        """What this report holds in memory, approximately: PNG, map arrays, text and a fixed overhead."""
        text = len(self.summary.encode("utf-8"))
        tape = self.realized.nbytes() if self.realized is not None else 0
        return len(self.png) + map_nbytes((self.map, self.missing)) + text + tape

    def to_json(self) -> dict[str, Any]:
        out = self.map.to_json()
        out["reading"] = self.reading.to_json()
        out["record"] = to_record(self.reading)  # what a later `liqmap report --since` compares with
        out["non_default_params"] = non_default_params(self.map.params) if self.map.kind == "estimated" else {}
        out["missing_venues"] = dict(self.missing)
        if self.realized is not None:
            out["realized"] = self.realized.to_json()
        return out


def map_nbytes(result: tuple[LiquidationMap, Mapping[str, str]]) -> int:
    """What a cached merged map holds in memory, approximately: its arrays, notes and a fixed overhead."""
    m, missing = result
    arrays = m.long.nbytes + m.short.nbytes
    if m.swept is not None:
        arrays += m.swept.time.nbytes + m.swept.long.nbytes + m.swept.short.nbytes
    if m.path is not None:
        arrays += m.path.nbytes
    text = sum(len(n) for n in m.notes) + sum(len(v) for v in missing.values())
    return arrays + text + _OVERHEAD_BYTES


def heatmap_nbytes(result: HeatmapResult) -> int:
    """What a cached heatmap holds in memory, approximately: PNG, state arrays, text and a fixed overhead."""
    png, st, missing = result
    arrays = sum(a.nbytes for a in (st.times, st.long, st.short, st.open, st.high, st.low, st.close))
    text = sum(len(n) for n in st.notes) + sum(len(v) for v in missing.values())
    return len(png) + arrays + text + _OVERHEAD_BYTES


class ReportService:
    """Builds reports from a set of named sources, with a TTL cache and single-flight.

    ``sources`` maps a venue name to its :class:`Source`. ``ttl`` (seconds; 0 caches nothing) and
    ``max_bytes`` bound the cache in time and memory. ``clock`` is injectable for tests.
    ``tape``, a :class:`~analysis.tape.events.TapeReader`, adds the realized liquidations of the
    24 h before the map's data time to the chart, the heatmap and the text; a tape that fails or
    is slow (``tape_params.timeout_s``) leaves a note, never a failed report. ``renderer`` renders
    the charts (default a :class:`~analysis.render_pool.ThreadRenderer`); :meth:`aclose` closes it.
    """

    def __init__(
        self,
        sources: Mapping[str, Source],
        *,
        params: ModelParams | None = None,
        metrics: MetricsParams | None = None,
        ttl: float = 60.0,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        clock: Callable[[], float] = time.monotonic,
        now_ms: Callable[[], int] | None = None,
        tape: TapeReader | None = None,
        tape_params: RealizedParams | None = None,
        shared: SharedLayer | None = None,
        renderer: Renderer | None = None,
    ) -> None:
        if not sources:
            raise ValueError("a report service needs at least one source")
        if ttl < 0 or max_bytes < 0:
            raise ValueError("ttl and max_bytes must not be negative")
        self.sources = dict(sources)
        self.params = params or ModelParams()
        self.metrics = metrics or MetricsParams()
        self.ttl = ttl
        self.max_bytes = int(max_bytes)
        self._clock = clock
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        # reports and heatmaps in one LRU (oldest first) and one byte budget: (stored at, value, bytes)
        self._cache: OrderedDict[ReportKey, tuple[float, Any, int]] = OrderedDict()
        self._cache_bytes = 0
        self._inflight: dict[ReportKey, asyncio.Future[Any]] = {}
        self.computations = 0  # how many reports were actually built (for tests and benchmarks)
        self.heatmap_computations = 0  # how many heatmaps were actually built
        self.map_computations = 0  # how many merged maps were actually modelled (reports and readings share them)
        self.renderer: Renderer = renderer or ThreadRenderer()
        self.tape = tape
        self.tape_params = tape_params
        self.shared = shared  # the cache and single-flight of every process on the host (None: this one's only)
        # the model states of the venue maps, extended by new bars instead of rebuilt (analysis/model_state.py)
        self.models = ModelCache()

    @property
    def venues(self) -> tuple[str, ...]:
        return tuple(self.sources)

    @property
    def cache_bytes(self) -> int:
        """Bytes the cached reports and heatmaps hold now (by :attr:`Report.nbytes` / :func:`heatmap_nbytes`)."""
        return self._cache_bytes

    @property
    def cache_size(self) -> int:
        """How many reports and heatmaps are cached now."""
        return len(self._cache)

    def _cached(self, key: ReportKey) -> Any:
        hit = self._cache.get(key)
        if hit is None:
            return None
        if self._clock() - hit[0] >= self.ttl:
            self._drop(key)
            return None
        self._cache.move_to_end(key)
        return hit[1]

    def _drop(self, key: ReportKey) -> None:
        _, _, size = self._cache.pop(key)
        self._cache_bytes -= size

    def _store(self, key: ReportKey, rep: Any, size: int, age: float = 0.0) -> None:
        """Cache ``rep`` of ``size`` bytes (unless ``ttl`` is 0 or it alone exceeds the budget), then
        sweep expired entries and evict least recently used ones until the cache fits ``max_bytes``.
        ``age``: how old ``rep`` already is (built by another process), taken off its TTL here."""
        now = self._clock()
        if key in self._cache:
            self._drop(key)
        for k in [k for k, (t, _, _) in self._cache.items() if now - t >= self.ttl]:
            self._drop(k)
        if self.ttl <= 0 or size > self.max_bytes or age >= self.ttl:
            return
        while self._cache and self._cache_bytes + size > self.max_bytes:
            self._drop(next(iter(self._cache)))
        self._cache[key] = (now - max(age, 0.0), rep, size)
        self._cache_bytes += size

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
        rep: Report = await self._single_flight(
            key, lambda: self._build(pair.symbol, win, venues, theme, stack, progress), lambda r: r.nbytes)
        return rep

    async def reading(self, symbol: str, window: str | Window = "7d", exchange: str = "all") -> Reading:
        """The map's reading only (no chart, no text, no tape): what the skew watcher and the cluster
        alerts compare. Shares the cached merged map with :meth:`report` (see the module docstring)."""
        pair = parse_symbol(symbol)
        win = window if isinstance(window, Window) else parse_window(window)
        venues = self.resolve_venues(exchange)
        m, _missing = await self._merged(pair.symbol, win, venues)
        return await asyncio.to_thread(read, m, self.metrics)

    async def _merged(
        self, symbol: str, win: Window, venues: tuple[str, ...], progress: Callable[[str], None] | None = None,
    ) -> MapResult:
        """:meth:`maps`, cached and single-flighted per (symbol, window, venues)."""
        async def build() -> MapResult:
            self.map_computations += 1
            return await self.maps(symbol, win, venues, progress)

        m, missing = await self._single_flight((symbol, win.label, venues, "map"), build, map_nbytes)
        return m, dict(missing)  # a copy: the cached mapping stays as built

    async def aclose(self) -> None:
        """Close the renderer (a process pool's workers exit); the sources are the caller's."""
        await self.renderer.aclose()

    async def _single_flight(self, key: ReportKey, build: Callable[[], Awaitable[T]], size: Callable[[T], int]) -> T:
        """The cached value of ``key`` when fresh; else one ``build()`` shared by every concurrent caller."""
        hit = self._cached(key)
        if hit is not None:
            return hit
        if key in self._inflight:
            return await asyncio.shield(self._inflight[key])
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            if self.shared is not None and self.ttl > 0:
                value, age = await self.shared.flight(self._shared_key(key), build, ttl=self.ttl, max_bytes=self.max_bytes)
                try:
                    nbytes = size(value)
                except (AttributeError, TypeError, ValueError):  # another kind of value under this key (a foreign writer)
                    log.warning("shared layer: the value stored under %s %s is not what that key holds; built here",
                                key[0], key[1])
                    value, age = await build(), 0.0
                    nbytes = size(value)
            else:
                value, age = await build(), 0.0
                nbytes = size(value)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        else:
            self._store(key, value, nbytes, age)
            fut.set_result(value)
            return value
        finally:
            self._inflight.pop(key, None)

    def _shared_key(self, key: ReportKey) -> str:
        """``key`` for the shared layer, scoped by what else shapes the value (parameters, sources,
        tape), so that processes configured differently never share a report."""
        scope = repr((self.params, self.metrics, [(v, type(s).__name__) for v, s in self.sources.items()],
                      self.tape is not None, self.tape_params))
        symbol, window, venues, view = key
        return f"{symbol}:{window}:{','.join(venues)}:{view}:{hashlib.sha256(scope.encode()).hexdigest()[:16]}"

    async def maps(
        self, symbol: str, win: Window, venues: tuple[str, ...], progress: Callable[[str], None] | None = None,
    ) -> tuple[LiquidationMap, dict[str, str]]:
        """Build and merge the venues' maps; return it with {venue: why} for the venues that failed."""
        maps, missing = await self._per_venue(symbol, venues, lambda v: self._venue_map(v, symbol, win, progress))
        merged = merge(maps)
        if missing:
            merged = merged.with_notes(*(f"{v} missing: {why}" for v, why in missing.items()))
        return merged, missing

    def heatmap_venues(self, exchange: str) -> tuple[str, ...]:
        """The venues a heatmap for ``exchange`` is built from (no I/O): the estimating ones.

        Sources of finished snapshots (CoinGlass) have no history; asking for only those is an InputError.
        """
        venues = tuple(v for v in self.resolve_venues(exchange) if not callable(getattr(self.sources[v], "map", None)))
        if not venues:
            raise InputError(f"{str(exchange)[:20]} serves only a snapshot map; the heatmap needs an estimating venue "
                             "(choose all or one of the exchanges whose data the map is estimated from)")
        return venues

    async def heatmap(
        self, symbol: str, window: str | Window = "7d", exchange: str = "all", theme: str = "dark",
        progress: Callable[[str], None] | None = None,
    ) -> HeatmapResult:
        """The liquidation heatmap (PNG, the merged states, {venue: why} for failed venues).

        The states come from the same model run as the venue's map (:func:`analysis.heatmap.build_states`).
        Sources of finished snapshots (CoinGlass) have no history and are left out (see
        :meth:`heatmap_venues`). Cached and shared by concurrent requests like :meth:`report`.
        """
        pair = parse_symbol(symbol)
        win = window if isinstance(window, Window) else parse_window(window)
        if theme not in chart.THEMES:
            raise InputError(f"unknown theme {str(theme)[:20]!r}; choose {' or '.join(chart.THEMES)}")
        venues = self.heatmap_venues(exchange)
        key: ReportKey = (pair.symbol, win.label, venues, f"heatmap/{theme}")
        png, states, missing = await self._single_flight(
            key, lambda: self._build_heatmap(pair.symbol, win, venues, theme, progress), heatmap_nbytes)
        return png, states, dict(missing)  # a copy: the cached mapping stays as built

    async def _build_heatmap(
        self, symbol: str, win: Window, venues: tuple[str, ...], theme: str,
        progress: Callable[[str], None] | None = None,
    ) -> HeatmapResult:
        from .heatmap import build_states, merge_states
        from .heatmap_chart import render_heatmap

        self.heatmap_computations += 1

        async def one(venue: str) -> HeatmapStates:
            if progress is not None:
                progress(f"fetching {venue} {symbol} {win.label}")
            bars, params = await asyncio.gather(self.sources[venue].bars(symbol, win), self.venue_params(venue, symbol))
            if progress is not None:
                progress(f"modelling {venue} over time ({len(bars):,} bars)")
            return await asyncio.to_thread(build_states, bars, params, window=win.label)

        states, missing = await self._per_venue(symbol, venues, one)
        merged = merge_states(states)
        if missing:
            merged = replace(merged, notes=tuple(merged.notes) + tuple(f"{v} missing: {why}" for v, why in missing.items()))
        tape, note = await self.realized(symbol, merged.venues, int(merged.end_ms), progress)
        if note:
            merged = replace(merged, notes=tuple(merged.notes) + (note,))
        if progress is not None:
            progress("rendering the heatmap")
        png = await self.renderer.run(render_heatmap, merged, theme=theme, realized=tape)
        return png, merged, missing

    async def realized(
        self, symbol: str, venues: tuple[str, ...], end_ms: int, progress: Callable[[str], None] | None = None,
    ) -> tuple[RealizedTape | None, str | None]:
        """The tape of the 24 h before ``end_ms`` (None without a tape reader), or None and a note
        saying why it is left out. Never raises for the tape's own faults."""
        if self.tape is None:
            return None, None
        from .tape.realized import RealizedParams, fetch_realized

        params = self.tape_params or RealizedParams()
        if progress is not None:
            progress("reading the liquidation tape")
        try:
            tape = await asyncio.wait_for(fetch_realized(self.tape, symbol, venues, end_ms, params), params.timeout_s)
        except asyncio.TimeoutError:
            return None, f"tape: no answer within {params.timeout_s:g} s; realized liquidations left out"
        except LiqmapError as exc:
            return None, f"tape unavailable ({_reason(exc)}); realized liquidations left out"
        except Exception as exc:  # the database's own errors: logged, never a failed report
            log.warning("reading the tape for %s failed", symbol, exc_info=True)
            return None, f"tape unavailable ({type(exc).__name__}); realized liquidations left out"
        return tape, (tape.notes[0] if tape.notes else None)

    async def _per_venue(
        self, symbol: str, venues: tuple[str, ...], work: Callable[[str], Awaitable[T]],
    ) -> tuple[list[T], dict[str, str]]:
        """``work`` for every venue at once: the results, and {venue: why} for those that failed.

        Only when every venue fails is it an error (the venue's own when there is one venue).
        """
        results = await asyncio.gather(*(work(v) for v in venues), return_exceptions=True)
        done: list[T] = []
        missing: dict[str, str] = {}
        for venue, res in zip(venues, results):
            if isinstance(res, LiqmapError):
                missing[venue] = _reason(res)
            elif isinstance(res, BaseException):
                raise res  # a bug, not a venue failure
            else:
                done.append(res)
        if not done:
            if len(venues) == 1:
                raise next(r for r in results if isinstance(r, BaseException))
            detail = "; ".join(f"{v}: {why}" for v, why in missing.items())
            exc = SourceError("all", "report", f"every venue failed ({detail})")
            exc.args = (f"no venue could serve {symbol}: every venue failed ({detail})",)  # reads as one sentence
            raise exc
        return done, missing

    async def _venue_map(
        self, venue: str, symbol: str, win: Window, progress: Callable[[str], None] | None = None,
    ) -> LiquidationMap:
        source = self.sources[venue]
        if progress is not None:
            progress(f"fetching {venue} {symbol} {win.label}")
        if callable(getattr(source, "map", None)):  # a source of finished maps (CoinGlass)
            return await source.map(symbol, win)
        bars, params = await asyncio.gather(source.bars(symbol, win), self.venue_params(venue, symbol))
        if progress is not None:
            progress(f"modelling {venue} ({len(bars):,} bars)")
        return await asyncio.to_thread(self.models.build_map, (venue, symbol, win.label), bars, params,
                                       window=win.label, now_ms=self._now_ms())

    async def venue_params(self, venue: str, symbol: str) -> ModelParams:
        """The model parameters for ``venue``'s map of ``symbol``: priced with the venue's own margin tiers
        (``source.margin_tiers``, see :mod:`analysis.sources.tiers`) unless a table is configured; a source
        without tiers, or whose tiers fail, leaves the shipped table (the map's notes say which)."""
        get = getattr(self.sources[venue], "margin_tiers", None)
        if self.params.margin_table is not None or get is None:
            return self.params
        try:
            table = await get(symbol)
        except LiqmapError as exc:  # e.g. the symbol is unknown there: the bars say so too
            table = shipped_table(symbol, f"tiers unavailable ({_reason(exc)})")
        return replace(self.params, margin_table=table)

    async def _build(
        self, symbol: str, win: Window, venues: tuple[str, ...], theme: str, stack: str,
        progress: Callable[[str], None] | None = None,
    ) -> Report:
        self.computations += 1
        m, missing = await self._merged(symbol, win, venues, progress)
        if progress is not None:
            progress("rendering the chart and text")
        tape, note = await self.realized(symbol, m.venues, int(m.end_ms), progress)
        if note:
            m = m.with_notes(note)
        reading = read(m, self.metrics)
        png, text = await self.renderer.run(_render, m, reading, theme, stack, tape)
        return Report(symbol, win, m.venues, m, reading, png, text, missing, realized=tape)


def _render(m: LiquidationMap, reading: Reading, theme: str, stack: str,
            tape: RealizedTape | None = None) -> tuple[bytes, str]:
    return (chart.render(m, reading, theme=theme, stack=stack, realized=tape),
            commentary.summary(reading, m, realized=tape))


def _reason(exc: LiqmapError) -> str:
    if isinstance(exc, SourceError):
        return exc.reason
    return str(exc)

