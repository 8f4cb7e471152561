"""Exchange and Discord budgets at scale (``python -m bench.budgets``), on a simulated clock.

Two sections of docs/benchmarks.md:

* **posting spread** -- 100,000 daily schedules (one symbol each, 500 symbols, all due at 00:00
  UTC) in a temporary SQLite database, posted by the real :class:`~bot.scheduler.Dispatcher`
  through its Discord pacer (45/s) to a fake Discord that answers like Discord: each send takes a
  lognormal latency (median 250 ms, awaited with ``asyncio.sleep``, no network) and the fake
  refuses with a 429 any request beyond 50 in a rolling second. Measured: how long the 100,000
  posts take (simulated time), how many miss the 2 h grace window, how many 429s, and the process
  CPU per post (dispatcher, SQLite, fake poster: the real work of the run), at the default 8 sends
  in flight and at 32.
* **OI cold start** -- 500 symbols with nothing cached, each asked for its 7d and 30d maps at once,
  through the real :class:`~analysis.sources.binance.BinanceSource` and its open-interest budget
  (:data:`~analysis.sources.binance.OI_BUDGET`, 1,000 per 5 minutes, margin 0.9) over an offline
  stand-in of Binance (tests/fake_binance.py, every symbol served from the real BTCUSDT sample):
  minutes until the subscribed symbols (100), the most asked (100) and all 500 are fresh, in
  priority order and, for comparison, first come first served.

The simulated clock is an event loop whose time jumps to the next timer when nothing is ready
(:class:`VirtualTimeLoop`): every wait (the pacer, the budget, the fake latency) is real asyncio
code, only the waiting itself is skipped. CPU figures are real.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import tempfile
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests"):  # the Binance stand-in lives in the tests, which import their helpers flat
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from .calibrate import Calibration  # noqa: E402
from .doc import write_section  # noqa: E402

T = TypeVar("T")
UTC = timezone.utc
START = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on simulated time: when no callback is ready it jumps to the next timer.

    I/O and threads (aiosqlite) still wake it as usual; a wait on them with a timer pending costs
    no simulated time (the database's own time is in the CPU figures, not in the timeline).
    """

    def __init__(self) -> None:
        super().__init__()
        self._virtual = 0.0

    def time(self) -> float:
        return self._virtual

    def _run_once(self) -> None:
        ready = getattr(self, "_ready")
        scheduled = getattr(self, "_scheduled")
        if not ready and scheduled:
            self._virtual = max(self._virtual, scheduled[0].when())
        super()._run_once()


def run_virtual(fn: Callable[[], Any]) -> Any:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(fn())
    finally:
        loop.close()


# -- posting spread -----------------------------------------------------------------------------------

class DiscordLike:
    """Answers sends like Discord: a lognormal latency, a 429 beyond ``limit`` requests in a second."""

    def __init__(self, *, median_s: float = 0.25, sigma: float = 0.35, limit: int = 50, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.median_s, self.sigma, self.limit = median_s, sigma, limit
        self.recent: deque[float] = deque()
        self.sent = 0
        self.refused = 0
        self.done_at: list[float] = []
        self.next_id = 10**17

    async def post(self, channel_id: int, *, content: Any, embed: Any, png: bytes, filename: str, nonce: str,
                   extra: Any = ()) -> int:
        from bot.pacer import Throttled

        now = asyncio.get_running_loop().time()  # when the request reaches Discord
        while self.recent and self.recent[0] <= now - 1.0:
            self.recent.popleft()
        refused = len(self.recent) >= self.limit
        if not refused:
            self.recent.append(now)
        await asyncio.sleep(self.median_s * math.exp(self.sigma * self.rng.gauss(0, 1)))
        if refused:
            self.refused += 1
            raise Throttled(1.0, "HTTP 429 (global)")
        self.sent += 1
        self.next_id += 1
        self.done_at.append(asyncio.get_running_loop().time())
        return self.next_id

    async def find_marker(self, channel_id: int, marker: str, *, since: Any = None) -> int | None:
        return None


async def _populate(store: Any, channels: int, symbols: int) -> None:
    from sqlalchemy import insert

    from bot.store.tables import DailyRow

    rows = [dict(guild_id=1 + i // 25, channel_id=10**6 + i, symbols=f"S{i % symbols:03d}USDT", window="1d",
                 exchange="all", local_time="00:00", timezone="UTC", next_run_at=START, paused_reason=None,
                 paused_at=None, created_by=1, created_at=START - timedelta(days=1), view="map")
            for i in range(channels)]
    async with store.engine.begin() as conn:
        for k in range(0, len(rows), 5000):
            await conn.execute(insert(DailyRow), rows[k:k + 5000])


async def _base_report() -> Any:
    import dataclasses

    from analysis.bars import Bars
    from analysis.report import ReportService
    from analysis.sources import SAMPLE_PATH, read_bars_csv
    from analysis.windows import Window

    class Sample:
        name = "binance"

        def __init__(self) -> None:
            self._bars = read_bars_csv(SAMPLE_PATH, venue="binance", symbol="BTCUSDT")

        async def symbols(self) -> list[str]:
            return ["BTCUSDT"]

        async def bars(self, symbol: str, window: Window) -> Bars:
            return dataclasses.replace(self._bars, symbol=symbol).last(window.duration_ms)

    return await ReportService({"binance": Sample()}, ttl=0).report("BTC", "1d", "all")


def posting(channels: int, symbols: int, concurrency: int, rate: float) -> dict[str, Any]:
    import dataclasses

    from bot.pacer import DiscordPacer
    from bot.scheduler import Dispatcher, DispatcherParams
    from bot.store import Store

    async def go() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        base = await _base_report()
        reports: dict[str, Any] = {}

        async def report(symbol: str, window: str, exchange: str) -> Any:  # real reports, precomputed
            if symbol not in reports:
                reports[symbol] = dataclasses.replace(base, symbol=symbol,
                                                      reading=dataclasses.replace(base.reading, symbol=symbol))
            return reports[symbol]

        with tempfile.TemporaryDirectory() as tmp:
            store = await Store.open(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.sqlite3'}", max_per_guild=1000)
            try:
                await _populate(store, channels, symbols)
                discord = DiscordLike()
                pacer = DiscordPacer(rate, clock=loop.time)
                params = DispatcherParams(post_concurrency=concurrency)
                t0 = loop.time()
                d = Dispatcher(store, discord, report, params=params, pacer=pacer,
                               now=lambda: START + timedelta(seconds=loop.time() - t0))
                cap = await d.check_capacity()
                c0, w0 = time.process_time(), time.perf_counter()
                ticks = 0
                posted = skipped = failed = 0
                while True:  # ticks until every post is final (failed ones are verified and retried)
                    stats = await d.run_daily()
                    ticks += 1
                    posted += stats.posted
                    skipped += stats.skipped
                    failed += stats.failed
                    if stats.due == 0 or ticks > 20:
                        break
                    await asyncio.sleep(d.params.tick_s)
                cpu = time.process_time() - c0
                wall = time.perf_counter() - w0
            finally:
                await store.close()
        span = (discord.done_at[-1] - t0) if discord.done_at else 0.0
        return {"channels": channels, "concurrency": concurrency, "rate": rate, "posted": posted,
                "skipped": skipped, "failed": failed, "refused": discord.refused, "span_s": span,
                "cpu_s": cpu, "wall_s": wall, "ticks": ticks, "capacity": cap.line() if cap else "",
                "achieved": discord.sent / span if span else 0.0}

    return run_virtual(go)


# -- OI cold start ------------------------------------------------------------------------------------

def cold_start(n_symbols: int, subscribed: int, asked: int, prioritised: bool) -> dict[str, Any]:
    import httpx

    from analysis.sources import SAMPLE_PATH, read_bars_csv
    from analysis.sources.binance import OI_BUDGET, BinanceSource
    from analysis.sources.budget import Demand
    from analysis.sources.cache import BarCache
    from analysis.windows import WINDOWS

    from .model import tiled
    from fake_binance import FakeBinance

    sample = read_bars_csv(SAMPLE_PATH, venue="binance", symbol="BTCUSDT")
    frame = tiled(sample, 35 * 288).to_frame()
    now_ms = int(frame["time"].iloc[-1]) + 300_000 + 30_000
    names = [f"S{i:03d}USDT" for i in range(n_symbols)]

    class ManySymbols(FakeBinance):
        """Every listed symbol served from the same real bars; the weight header per (simulated) minute."""

        def __init__(self) -> None:
            super().__init__(frame, lambda: now_ms)
            self.exchange_info = {"symbols": [
                {"symbol": s, "baseAsset": s[:-4], "quoteAsset": "USDT", "contractType": "PERPETUAL", "status": "TRADING"}
                for s in names]}
            self.listed = set(names)
            self.minute = -1

        def _weight_header(self, weight: int) -> dict[str, str]:
            minute = int(asyncio.get_running_loop().time() // 60)
            if minute != self.minute:
                self.minute, self.used_weight = minute, 0
            return super()._weight_header(weight)

        def handle(self, request: httpx.Request) -> httpx.Response:
            sym = request.url.params.get("symbol")
            if sym in self.listed:
                self.symbol = sym
            return super().handle(request)

    class Timed(BinanceSource):
        def _refresh_done(self, key: tuple[str, str], end: int, task: asyncio.Task[Any]) -> None:
            super()._refresh_done(key, end, task)
            if not task.cancelled() and task.exception() is None:
                done.setdefault(key, asyncio.get_running_loop().time())

    done: dict[tuple[str, str], float] = {}

    async def go() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        fake = ManySymbols()
        demand = Demand(clock=loop.time)
        subs = set(names[::max(1, n_symbols // subscribed)][:subscribed])
        rest = [s for s in names if s not in subs]
        top = rest[:asked]
        if prioritised:
            demand.set_subscribed(subs)
            for i, s in enumerate(top):
                for _ in range(1 + (asked - i) // 10):
                    demand.asked(s)
        src = Timed(transport=fake.transport, cache=BarCache(None), clock=loop.time, now_ms=lambda: now_ms,
                    demand=demand)
        t0 = loop.time()
        c0 = time.process_time()
        order = list(names)
        random.Random(1).shuffle(order)  # the order the requests arrive in: not the priority order
        held = 0

        async def ask(sym: str, window: str) -> None:
            nonlocal held
            try:
                await src.bars(sym, WINDOWS[window])
            except Exception as exc:  # HeldBack: queued, served later
                held += type(exc).__name__ == "HeldBack"

        await asyncio.gather(*(ask(s, w) for s in order for w in ("7d", "30d")))
        peak = len(src.oi_budget.held())
        while src._refreshing:
            await asyncio.sleep(5)
        cpu = time.process_time() - c0
        await src.aclose()

        def fresh_at(group: set[str] | list[str]) -> float:
            return max(done[(s, iv)] for s in group for iv in ("5m", "15m")) - t0

        return {"prioritised": prioritised, "symbols": n_symbols, "oi_requests": fake.count("/futures/data/openInterestHist"),
                "klines": fake.count("/fapi/v1/klines"), "subscribed_min": fresh_at(subs) / 60,
                "asked_min": fresh_at(top) / 60, "all_min": fresh_at(names) / 60, "held": held, "peak_held": peak,
                "cpu_s": cpu, "budget": OI_BUDGET.describe()}

    return run_virtual(go)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.budgets", description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=100_000)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--only", choices=("posting", "oi"), help="run one section only")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch docs/benchmarks.md")
    args = parser.parse_args(argv)

    if args.only in (None, "posting"):
        cal = Calibration()
        runs = [posting(args.channels, args.symbols, c, 45.0) for c in (8, 32)]
        cal.finish()
        rows = "\n".join(
            f"| {r['concurrency']} | {r['posted']:,} | {r['skipped']:,} | {r['refused']:,} | "
            f"{r['span_s'] / 60:.1f} min | {r['achieved']:.1f}/s | {r['cpu_s'] * 1000 / max(1, r['posted']):.2f} ms | "
            f"{r['wall_s']:.0f} s |" for r in runs)
        body = f"""
{args.channels:,} daily schedules over {args.symbols} symbols, all due at 00:00 UTC, in a temporary SQLite
file; the real dispatcher and its pacer at 45 posts/s (burst to Discord's 50 in any second); a fake
Discord with a lognormal send latency (median 250 ms), refusing any request beyond 50 in a rolling
second with a 429. Time is simulated (bench/budgets.py, `VirtualTimeLoop`); CPU is real process CPU
(dispatcher, SQLite, fake poster) divided by the posts made. Grace window 2 h.

At startup the dispatcher says: "{runs[0]['capacity']}".

| sends in flight | posted | missed (past grace) | 429s | last post after | achieved rate | CPU per post | real time |
|---:|---:|---:|---:|---:|---:|---:|---:|
{rows}

{args.channels:,} posts at 45/s need {args.channels / 45 / 60:.1f} min, well inside the 2 h grace
window (the pacer's capacity is 324,000 channels per due minute). With 8 sends in flight the
latency, not the pacer, bounds the rate ({runs[0]['achieved']:.1f}/s: 8 sends over a mean latency above
0.25 s), and the posts take {runs[0]['span_s'] / 60:.1f} min instead of {runs[1]['span_s'] / 60:.1f}; so
`make_dispatcher` keeps rate x 0.7 s = 32 sends in flight and the pacer decides. The CPU per post
stays under a millisecond at this scale: the 37 minutes are the pacer's, not the dispatcher's
({runs[1]['cpu_s']:.0f} s of CPU in all).
"""
        print(cal.line(), body.strip(), sep="\n\n")
        if not args.no_write:
            write_section("posting-spread", f"Posting spread: {args.channels:,} due channels under Discord's global limit",
                          "python -m bench.budgets --only posting", body, cal)

    if args.only in (None, "oi"):
        cal = Calibration()
        runs = [cold_start(args.symbols, args.symbols // 5, args.symbols // 5, p) for p in (True, False)]
        cal.finish()
        pr, fifo = runs
        rows = "\n".join(
            f"| {'subscribed, asked, rest' if r['prioritised'] else 'first come, first served'} | "
            f"{r['subscribed_min']:.1f} | {r['asked_min']:.1f} | {r['all_min']:.1f} | {r['oi_requests']:,} | "
            f"{r['klines']:,} | {r['held']:,} | {r['cpu_s']:.0f} s |" for r in runs)
        body = f"""
{args.symbols} symbols with nothing cached, each asked for its 7d (5m bars) and 30d (15m bars) map at once
(in a shuffled order), through the real Binance source and its budget ({pr['budget']}) over an
offline stand-in of Binance (tests/fake_binance.py; every symbol served from the real sample). A fifth
of the symbols ({args.symbols // 5}) are subscribed, a fifth more asked for with decreasing counts. Requests that the budget cannot
serve within 10 s are held back (their refresh stays queued) and answered with when they will be
ready. Simulated time (bench/budgets.py); CPU is real.

| OI order | subscribed fresh (min) | most asked fresh (min) | all fresh (min) | OI requests | klines requests | requests held back | CPU |
|---|---:|---:|---:|---:|---:|---:|---:|
{rows}

The cold start spends {pr['oi_requests']:,} open-interest requests: {pr['oi_requests'] - OI_BURST:,} past the
burst at 3 a second is {(pr['oi_requests'] - OI_BURST) / 3 / 60:.1f} min, so all {args.symbols} are fresh after
{pr['all_min']:.0f} min either way; in priority order the subscribed symbols are fresh after
{pr['subscribed_min']:.1f} min instead of {fifo['subscribed_min']:.1f} (ratio {fifo['subscribed_min'] / max(pr['subscribed_min'], 1e-9):.1f}).
"""
        print(cal.line(), body.strip(), sep="\n\n")
        if not args.no_write:
            write_section("oi-cold-start", f"OI cold start: {args.symbols} symbols under Binance's open-interest budget",
                          "python -m bench.budgets --only oi", body, cal)


OI_BURST = 100

if __name__ == "__main__":
    main()
