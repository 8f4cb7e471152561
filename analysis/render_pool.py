"""Where charts are rendered: a process pool off the event loop and off the GIL, with back-pressure.

:class:`RenderPool` wraps :class:`concurrent.futures.ProcessPoolExecutor` (``spawn`` start method:
safe beside threads and the event loop, the same on every OS). ``workers`` processes (default
``os.cpu_count()``) render; at most ``workers + queue`` renders are admitted at once, and a caller
beyond that waits up to ``wait_s`` for a slot, then gets :class:`RenderBusy` (back-pressure, never
an unbounded backlog). A render that does not finish within ``timeout_s`` raises
:class:`RenderTimeout` for its caller, is logged and counted (:attr:`RenderStats.timeouts`), and
keeps its slot until its worker is really done, so a stuck render still counts against the bound.
A worker that dies (``BrokenProcessPool``) is logged and counted, the pool is recreated, and the
render is tried once more on the new pool; a second crash raises :class:`RenderCrashed`.

:class:`ThreadRenderer` has the same interface and renders in a thread (``asyncio.to_thread``):
the fallback for tests and one-core hosts (``LIQMAP_RENDER_WORKERS=0``); it holds the GIL while
matplotlib runs, so concurrent renders share one core.

What is rendered must be picklable: a module-level function and plain data (the map, the
reading), never the service.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Protocol, TypeVar

from .errors import Unavailable

__all__ = ["Renderer", "RenderPool", "ThreadRenderer", "RenderStats", "RenderBusy", "RenderTimeout",
           "RenderCrashed", "RenderError", "make_renderer"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class RenderError(Unavailable):
    """A chart could not be rendered right now (busy, too slow, or the renderer crashed)."""


class RenderBusy(RenderError):
    """Every render slot stayed taken for longer than the wait limit."""


class RenderTimeout(RenderError):
    """A render did not finish within its time limit."""


class RenderCrashed(RenderError):
    """The render's worker process died, twice."""


@dataclass
class RenderStats:
    """Counters since the renderer started (for logs, /about, tests and benchmarks)."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    busy: int = 0
    timeouts: int = 0
    crashes: int = 0
    restarts: int = 0
    worker_s: float = 0.0  # wall time of finished renders inside the workers (not queue time)


class Renderer(Protocol):
    """What :class:`~analysis.report.ReportService` renders with."""

    stats: RenderStats

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` off the event loop; raises :class:`RenderError` subclasses or ``fn``'s own error."""
        ...

    async def aclose(self) -> None:
        """Stop rendering and release the workers."""
        ...


def _timed(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[T, float, int, float]:
    """Runs in the worker: the result, its wall seconds, the worker's pid and its CPU seconds so far."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0, os.getpid(), time.process_time()


def _warm() -> None:
    """Worker initializer: import matplotlib and the chart modules once, before the first render."""
    from . import chart, heatmap_chart  # noqa: F401  (imported for their side effect: a warm worker)


class ThreadRenderer:
    """Renders in a thread of this process (no pool): the small-host and test fallback."""

    def __init__(self, timeout_s: float = 120.0) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.timeout_s = timeout_s
        self.stats = RenderStats()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.stats.submitted += 1
        t0 = time.perf_counter()
        try:
            out = await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), self.timeout_s)
        except asyncio.TimeoutError:
            self.stats.timeouts += 1
            log.error("render %s timed out after %g s (its thread runs on)", getattr(fn, "__name__", fn), self.timeout_s)
            raise RenderTimeout(f"rendering the chart took over {self.timeout_s:g} s; please try again in a minute") from None
        except BaseException:
            self.stats.failed += 1
            raise
        self.stats.completed += 1
        self.stats.worker_s += time.perf_counter() - t0
        return out

    async def aclose(self) -> None:
        return None


class RenderPool:
    """A bounded process pool for renders (see the module docstring)."""

    def __init__(self, workers: int | None = None, *, queue: int | None = None, wait_s: float = 30.0,
                 timeout_s: float = 120.0, warm: bool = True) -> None:
        workers = (os.cpu_count() or 1) if workers is None else workers
        queue = 4 * workers if queue is None else queue
        if workers < 1 or queue < 0 or wait_s < 0 or timeout_s <= 0:
            raise ValueError("a render pool needs workers >= 1, queue >= 0, wait_s >= 0 and timeout_s > 0")
        self.workers, self.queue, self.wait_s, self.timeout_s = workers, queue, wait_s, timeout_s
        self._warm = warm
        self.stats = RenderStats()
        self._slots: asyncio.Semaphore | None = None  # made on first use, in the running loop
        self._admitted = 0  # renders holding a slot (running or queued in the executor)
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False
        self._cpu: dict[int, float] = {}  # worker pid -> its CPU seconds at its last finished render

    @property
    def capacity(self) -> int:
        """How many renders may be admitted at once (running plus queued)."""
        return self.workers + self.queue

    @property
    def in_flight(self) -> int:
        """Admitted renders not yet finished by their workers (running or queued)."""
        return self._admitted

    @property
    def worker_cpu_s(self) -> float:
        """CPU seconds the current and past workers spent, as of their last finished render."""
        return sum(self._cpu.values())

    def _executor(self) -> ProcessPoolExecutor:
        if self._closed:
            raise RenderError("the renderer is shut down")
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_warm if self._warm else None)
        return self._pool

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        if self._pool is broken:
            self._pool = None
            self.stats.restarts += 1
            broken.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise RenderError("the renderer is shut down")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.capacity)
        slots = self._slots
        try:
            await (asyncio.wait_for(slots.acquire(), self.wait_s) if self.wait_s > 0 else _try(slots))
            self._admitted += 1
        except (asyncio.TimeoutError, _NoSlot):
            self.stats.busy += 1
            log.warning("render refused: all %d render slots busy for %g s", self.capacity, self.wait_s)
            raise RenderBusy(f"the chart renderer is busy ({self.capacity} renders running or queued); "
                             "please try again in a minute") from None
        self.stats.submitted += 1
        loop = asyncio.get_running_loop()

        def free(_f: object) -> None:  # in the executor's thread, when the worker is really done
            try:
                loop.call_soon_threadsafe(self._free, slots)
            except RuntimeError:  # the loop is closed (shutdown): nobody waits for the slot any more
                pass

        for attempt in (1, 2):
            if attempt == 2:
                try:  # the retry takes a slot again (the crashed one was freed)
                    await asyncio.wait_for(slots.acquire(), max(self.wait_s, 1.0))
                    self._admitted += 1
                except asyncio.TimeoutError:
                    self.stats.failed += 1
                    raise RenderCrashed("the chart renderer crashed and is busy restarting; "
                                        "please try again in a minute") from None
            pool = None
            try:
                pool = self._executor()
                try:
                    cf: Future[tuple[T, float, int, float]] = pool.submit(_timed, fn, args, kwargs)
                except RuntimeError:  # shut down meanwhile: by aclose, or as broken by another render
                    if self._closed:
                        raise RenderError("the renderer is shut down") from None
                    raise BrokenProcessPool("the render pool was replaced") from None
            except BrokenProcessPool:  # broken by another render's crash before this one was submitted
                self._free(slots)  # nothing was submitted: the slot is ours to give back
                if pool is not None:
                    self._restart(pool)
                if attempt == 1:
                    continue
                self.stats.failed += 1
                raise RenderCrashed("the chart renderer keeps crashing; please try again later") from None
            except BaseException:
                self._free(slots)
                self.stats.failed += 1
                raise
            # the slot is freed when the worker is really done, even after a timeout
            cf.add_done_callback(free)
            try:
                # on timeout wait_for cancels the wrapper and so ``cf``: a queued render never starts,
                # a running one finishes in its worker and only then frees its slot
                out, wall, pid, cpu = await asyncio.wait_for(asyncio.wrap_future(cf), self.timeout_s)
            except asyncio.TimeoutError:
                self.stats.timeouts += 1
                log.error("render %s timed out after %g s (%d in flight)", getattr(fn, "__name__", fn),
                          self.timeout_s, self.in_flight)
                raise RenderTimeout(f"rendering the chart took over {self.timeout_s:g} s; "
                                    "please try again in a minute") from None
            except BrokenProcessPool:
                self.stats.crashes += 1
                log.error("a render worker died (attempt %d); recreating the render pool", attempt)
                self._restart(pool)
                if attempt == 1:
                    continue
                self.stats.failed += 1
                raise RenderCrashed("the chart renderer crashed twice on this chart; please try again later") from None
            except BaseException:
                self.stats.failed += 1
                raise
            self.stats.completed += 1
            self.stats.worker_s += wall
            self._cpu[pid] = cpu
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    def _free(self, slots: asyncio.Semaphore) -> None:
        self._admitted -= 1
        slots.release()

    async def aclose(self) -> None:
        """Refuse new renders, cancel queued ones and wait for the workers to exit."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)


class _NoSlot(Exception):
    pass


async def _try(slots: asyncio.Semaphore) -> None:
    """Take a slot now or raise :class:`_NoSlot` (``wait_s`` = 0: fail fast)."""
    if slots.locked():
        raise _NoSlot
    await slots.acquire()


def make_renderer(workers: int | None, *, queue: int | None = None, wait_s: float = 30.0,
                  timeout_s: float = 120.0) -> Renderer:
    """``workers`` 0 -> :class:`ThreadRenderer`; None -> a pool of ``os.cpu_count()``; n -> a pool of n."""
    if workers == 0:
        return ThreadRenderer(timeout_s=timeout_s)
    return RenderPool(workers, queue=queue, wait_s=wait_s, timeout_s=timeout_s)
