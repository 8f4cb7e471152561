"""Live-source benchmark, offline (``python -m bench.sources``): request counts and local CPU time.

Each venue is served by an ``httpx.MockTransport`` stand-in that answers in the venue's documented
shapes and paging rules from real Binance BTCUSDT 5m bars (the bundled sample, tiled to 35 days as
in bench/model.py so a full 30-day window exists). No network: the figures are the client's own
cost -- request planning, JSON parsing, validation, joining, the SQLite cache -- and the number of
requests it sends. Network latency is not included.

Scenarios per venue: a cold 30d fetch (empty on-disk cache), a warm refresh 5 minutes later, a
restart over the same cache file, and 100 concurrent ``ReportService.report()`` calls for the same
symbol on a cold cache (they share one fetch and one computation).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests"):  # the venue stand-ins live in the tests, which import their helpers flat
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from analysis.report import ReportService  # noqa: E402
from analysis.sources import SAMPLE_PATH, read_bars_csv  # noqa: E402
from analysis.sources.binance import BinanceSource  # noqa: E402
from analysis.sources.cache import BarCache  # noqa: E402
from analysis.windows import WINDOWS  # noqa: E402

from .calibrate import Calibration  # noqa: E402
from .doc import write_section  # noqa: E402
from .model import tiled  # noqa: E402

STEP = 300_000
DAYS = 35


class Clock:
    """The fake's and the source's shared notion of 'now' (ms) -- moved by the benchmark."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def binance_venue(frame, clock: Clock) -> tuple[Any, Callable[..., Any]]:
    from tests.fake_binance import FakeBinance

    fake = FakeBinance(frame, clock)

    def make(cache: BarCache) -> BinanceSource:
        return BinanceSource(transport=fake.transport, cache=cache, now_ms=clock)

    return fake, make


class _Counted:
    """Counts requests through a handler (for the Bybit/OKX stand-ins of their own test modules)."""

    def __init__(self, handler: Callable[[Any], Any]) -> None:
        self.n = 0
        self._handler = handler

    def handle(self, request):
        self.n += 1
        return self._handler(request)

    def count(self) -> int:
        return self.n


def bybit_venue(frame, clock: Clock) -> tuple[Any, Callable[..., Any]]:
    """Bybit v5 stand-in from tests/test_bybit.py: one per interval (it serves the bars it is given)."""
    import httpx

    from analysis.bars import Bars
    from analysis.sources.bybit import BybitSource
    from tests.fake_binance import _frame_from_5m, _resample
    from tests.test_bybit import FakeBybit

    f5 = _frame_from_5m(frame)
    fakes = {
        "5": FakeBybit(Bars.from_frame(f5, venue="bybit", symbol="BTCUSDT", interval="5m")),
        "15": FakeBybit(Bars.from_frame(_resample(f5, 900_000), venue="bybit", symbol="BTCUSDT", interval="15m")),
    }

    def route(request):
        q = request.url.params
        iv = q.get("interval") or {"5min": "5", "15min": "15"}.get(q.get("intervalTime", ""), "5")
        return fakes.get(iv, fakes["5"]).handler(request)

    counted = _Counted(route)

    def make(cache: BarCache) -> Any:
        return BybitSource(transport=httpx.MockTransport(counted.handle), cache=cache, now_ms=clock)

    return counted, make


def okx_venue(frame, clock: Clock) -> tuple[Any, Callable[..., Any]]:
    """OKX v5 stand-in from tests/test_okx.py (it aggregates 5m bars to the asked interval)."""
    import httpx

    from analysis.bars import Bars
    from analysis.sources.okx import OkxSource
    from tests.test_okx import FakeOkx

    fake = FakeOkx(Bars.from_frame(frame, venue="okx", symbol="BTCUSDT", interval="5m"), clock())

    def route(request):
        fake.now_ms = clock()
        return fake.handler(request)

    counted = _Counted(route)

    def make(cache: BarCache) -> Any:
        return OkxSource(transport=httpx.MockTransport(counted.handle), cache=cache, now_ms=clock)

    return counted, make


#: venue -> factory(frame, clock) -> (fake server with .count(), make_source(cache))
VENUES: dict[str, Callable[..., tuple[Any, Callable[..., Any]]]] = {
    "binance": binance_venue, "bybit": bybit_venue, "okx": okx_venue,
}


def _count(fake: Any) -> int:
    return fake.count(None) if hasattr(fake, "drop_times") else fake.count()


def _cpu(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, (time.process_time() - c0) * 1000, (time.perf_counter() - w0) * 1000


def run_venue(venue: str, frame, end_ms: int, repeats: int) -> dict[str, Any]:
    rows: dict[str, list[tuple[int, float, float, int]]] = {k: [] for k in ("cold30", "warm30", "cold7", "warm7", "restart", "c100")}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bars.sqlite3"
            # now: 1 minute before a 15m boundary, so 5 minutes later one new 15m bar and one new 5m bar have closed
            clock = Clock(end_ms - (end_ms % 900_000) - 900_000 - 60_000)
            fake, make = VENUES[venue](frame, clock)
            src = make(BarCache(path))

            def step(coro_fn):
                n0 = _count(fake)
                bars, cpu, wall = _cpu(lambda: asyncio.run(coro_fn()))
                return _count(fake) - n0, cpu, wall, f"{len(bars):,} x {bars.interval}"

            async def fetch(win):
                try:
                    return await src.bars("BTCUSDT", WINDOWS[win])
                finally:
                    await src.client.aclose()  # each asyncio.run needs its own connection pool

            def reopen():
                nonlocal src
                src = make(src.cache)

            rows["cold30"].append(step(lambda: fetch("30d")))
            reopen()
            rows["cold7"].append(step(lambda: fetch("7d")))
            clock.ms += 5 * 60_000
            reopen()
            rows["warm30"].append(step(lambda: fetch("30d")))
            reopen()
            rows["warm7"].append(step(lambda: fetch("7d")))
            src = make(BarCache(path))  # a restart: a new process over the same cache file
            rows["restart"].append(step(lambda: fetch("7d")))
        with tempfile.TemporaryDirectory() as tmp:
            clock = Clock(end_ms)
            fake, make = VENUES[venue](frame, clock)
            src = make(BarCache(Path(tmp) / "bars.sqlite3"))

            async def hundred():
                service = ReportService({venue: src})
                try:
                    reps = await asyncio.gather(*(service.report("BTCUSDT", "7d") for _ in range(100)))
                finally:
                    await src.client.aclose()
                assert len({id(r) for r in reps}) == 1
                return [None] * service.computations

            n0 = _count(fake)
            comps, cpu, wall = _cpu(lambda: asyncio.run(hundred()))
            rows["c100"].append((_count(fake) - n0, cpu, wall, f"{len(comps)} computation(s)"))
    return {k: (v[0][0], statistics.median(x[1] for x in v), statistics.median(x[2] for x in v), v[0][3]) for k, v in rows.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    cal = Calibration()
    real = read_bars_csv(SAMPLE_PATH, venue="binance", symbol="BTCUSDT")
    bars = tiled(real, DAYS * 288)
    frame = bars.to_frame()
    end_ms = int(frame["time"].iloc[-1]) + STEP + 30_000
    lines = [
        f"Offline: each venue is an `httpx.MockTransport` stand-in serving its documented shapes and paging from the "
        f"real Binance BTCUSDT 5m sample tiled to {DAYS} days ({len(bars):,} bars). CPU is process CPU time "
        f"(all threads) on this machine; wall excludes any network latency. Medians of {args.repeats} runs; "
        "request counts are exact and identical in every run.",
        "",
        "| venue | scenario | requests | bars | CPU | wall |",
        "|---|---|---:|---:|---:|---:|",
    ]
    labels = {
        "cold30": "cold 30d fetch (empty cache)",
        "cold7": "cold 7d fetch (symbol list already cached)",
        "warm30": "warm 30d refresh 5 min later (a new bar has closed)",
        "warm7": "warm 7d refresh 5 min later (a new bar has closed)",
        "restart": "restart right after, same cache file, 7d",
        "c100": "100 concurrent report() calls, same symbol, cold",
    }
    for venue in VENUES:
        try:
            res = run_venue(venue, frame, end_ms, args.repeats)
        except (ImportError, AttributeError, TypeError) as exc:  # a venue or its stand-in is absent or changed
            print(f"skipping {venue}: {exc}", file=sys.stderr)
            continue
        for key, label in labels.items():
            n, cpu, wall, extra = res[key]
            lines.append(f"| {venue} | {label} | {n} | {extra} | {cpu:.0f} ms | {wall:.0f} ms |")
    lines += [
        "",
        "Binance requests: a cold fetch is 1 exchangeInfo + ceil(bars/1500) klines + ceil(bars/500) openInterestHist "
        "pages (the 30d window is clamped to Binance's 30 days of open-interest history); a refresh asks only for "
        "bars from the newest cached one on (one page each); nothing is sent when no new bar has closed. "
        "The 100-call figure includes building the map and rendering the chart once. Bybit and OKX are served by the "
        "stand-ins of their own test modules (tests/test_bybit.py, tests/test_okx.py) and use their own intervals "
        "and page sizes; their wall time includes their rate limiters' real waits.",
    ]
    body = "\n".join(lines)
    cal.finish()
    print(cal.line(), body, sep="\n\n")
    if not args.no_write:
        write_section("sources", "Live sources: requests and local CPU (offline)", "python -m bench.sources", body,
                      cal)
        print("\nwrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
