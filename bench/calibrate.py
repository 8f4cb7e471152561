"""The calibration line every benchmark section starts with.

One fixed numpy pass (a cumulative sum of 10,000,000 float64 into a preallocated buffer: memory
bandwidth and vector arithmetic) and one fixed pure-Python loop (1,000,000 integer additions:
the interpreter), both timed in the benchmark's own process, at its start and again at its end.
Figures from different days or machines compare by their ratio to these; the spread between start
and end shows how busy the machine was meanwhile (it is shared, and its speed varies).
:func:`rss_mb` is the process's resident memory, which the memory benchmarks report beside it.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

NUMPY_N = 10_000_000
LOOP_N = 1_000_000
REPEAT = 7


@dataclass(frozen=True)
class Timing:
    """Median ms of the numpy pass and of the Python loop, over ``repeat`` runs each."""

    numpy_ms: float
    loop_ms: float
    repeat: int
    numpy_n: int = NUMPY_N
    loop_n: int = LOOP_N


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: first-touch page faults, caches
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000


def measure(repeat: int = REPEAT, numpy_n: int = NUMPY_N, loop_n: int = LOOP_N) -> Timing:
    """Time both fixed passes now, in this process."""
    data = np.random.default_rng(0).random(numpy_n)
    out = np.empty_like(data)

    def numpy_pass() -> None:
        np.cumsum(data, out=out)

    def python_loop() -> None:
        total = 0
        for i in range(loop_n):
            total += i

    return Timing(_median_ms(numpy_pass, repeat), _median_ms(python_loop, repeat), repeat, numpy_n, loop_n)


def _size(n: int) -> str:
    exp = len(str(n)) - 1
    return f"1e{exp}" if n == 10**exp else f"{n:,}"


class Calibration:
    """The start timing (taken on construction) and, after :meth:`finish`, the end timing."""

    def __init__(self, repeat: int = REPEAT, numpy_n: int = NUMPY_N, loop_n: int = LOOP_N) -> None:
        self.repeat, self.numpy_n, self.loop_n = repeat, numpy_n, loop_n
        self.start = measure(repeat, numpy_n, loop_n)
        self.end: Timing | None = None

    def finish(self) -> Calibration:
        """Time both passes again (the end of the run); returns self."""
        self.end = measure(self.repeat, self.numpy_n, self.loop_n)
        return self

    def line(self) -> str:
        """e.g. ``calibration: numpy 1e7 cumsum 21.3 ms, python loop 1e6 adds 38.2 ms (median of 7)``;
        with an end timing, both: ``... 21.3 / 22.0 ms ...`` (start / end of the run)."""
        s, e = self.start, self.end
        np_ms = f"{s.numpy_ms:.1f}" + (f" / {e.numpy_ms:.1f}" if e else "")
        py_ms = f"{s.loop_ms:.1f}" + (f" / {e.loop_ms:.1f}" if e else "")
        when = ", start / end of the run" if e else ""
        return (f"calibration: numpy {_size(s.numpy_n)} cumsum {np_ms} ms, python loop {_size(s.loop_n)} adds "
                f"{py_ms} ms (median of {s.repeat}{when})")


def rss_mb() -> float:
    """The process's resident set size now, MB (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
