"""Scale benchmark (``python -m bench.scale``): 10,000 and 100,000 channels over 500 symbols, real
renders in the render pool, the skew check before and after the reading-only path, and memory over
a simulated day of varied requests.

Data: the bundled real Binance BTCUSDT 5m sample, served under 500 symbol names (``S000USDT`` ...)
with a 1d window (288 bars per symbol: the model is cheap, the chart is the full chart). Every
chart is really rendered, in a :class:`~analysis.render_pool.RenderPool` of ``--workers`` processes
(default: one per core). A temporary SQLite database (WAL) holds the subscriptions; they are
inserted in bulk (one row made through the store's validated API, then copied with other ids and
symbols). A no-op poster stands in for Discord.

Measured, each once (a tick with real renders takes minutes on 2 cores; nothing is extrapolated):

* a daily tick with every channel due at 09:00 UTC, the report service uncached (ttl 0, so the
  renders are the tick's own): renders per tick (must equal the distinct keys, 500), messages,
  wall time, CPU of the bot process and of the pool's workers; then the same tick a day later with
  precomputed reports (the dispatcher's own cost: queries, claims, texts, records);
* skew checks over one alert per channel of the 10,000 (500 keys): with full reports for every
  key (before the reading-only path) and with ``ReportService.reading`` (after), the same steady
  check (no class changes), and one in which 10 keys announce;
* a simulated day (24 h of injected clock) of varied ``/liqmap`` requests (symbols drawn
  Zipf-like, two windows, two themes, two stackings) against a service with a byte-bounded cache:
  the cache's bytes after every request (never above the bound), and the process's RSS; run alone
  (``--memory``, a fresh process, its own section), so the ticks' memory is not in its RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import random
import resource
import statistics
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from analysis.bars import Bars
from analysis.render_pool import RenderPool
from analysis.report import ReportService
from analysis.sources import SAMPLE_PATH, read_bars_csv
from analysis.windows import Window
from bot.scheduler import Dispatcher, DispatcherParams
from bot.store import Store
from bot.store.tables import DailyRow, SkewAlertRow

from .bot import Clock, NoopPoster
from .calibrate import Calibration, rss_mb
from .doc import write_section

UTC = timezone.utc
N_SYMBOLS = 500
SYMBOLS = tuple(f"S{i:03d}USDT" for i in range(N_SYMBOLS))
PER_GUILD = 25
WINDOW = "1d"


class ManySymbols:
    """The bundled real Binance sample served under any of the 500 symbol names."""

    name = "binance"

    def __init__(self) -> None:
        self._bars = read_bars_csv(SAMPLE_PATH, venue="binance", symbol="BTCUSDT")
        self.fetches = 0

    async def symbols(self) -> list[str]:
        return list(SYMBOLS)

    async def bars(self, symbol: str, window: Window) -> Bars:
        self.fetches += 1
        return dataclasses.replace(self._bars, symbol=symbol).last(window.duration_ms)


async def bulk(store: Store, channels: int, now: datetime, *, skew: bool) -> float:
    """``channels`` daily schedules at 09:00 UTC (and skew alerts when ``skew``), channel i on
    symbol i mod 500; one of each through the validated API, the rest copied in bulk. Seconds taken."""
    t0 = time.perf_counter()
    d = await store.add_daily(1, 10_000, symbols=SYMBOLS[0], window=WINDOW, exchange="all", time="09:00",
                              timezone="UTC", created_by=1, now=now)
    tables = [(DailyRow, d.id, "symbols")]
    if skew:
        w = await store.add_skew_alert(1, 10_000, symbol=SYMBOLS[0], window=WINDOW, exchange="all", created_by=1, now=now)
        tables.append((SkewAlertRow, w.id, "symbol"))
    async with store.engine.begin() as conn:
        for table, first, col in tables:
            row = (await conn.execute(select(table.__table__).where(table.__table__.c.id == first))).mappings().one()
            base = {k: v for k, v in row.items() if k != "id"}
            for start in range(1, channels, 5000):
                rows = [{**base, "guild_id": 1 + i // PER_GUILD, "channel_id": 10_000 + i, col: SYMBOLS[i % N_SYMBOLS]}
                        for i in range(start, min(channels, start + 5000))]
                await conn.execute(insert(table.__table__), rows)
    return time.perf_counter() - t0


def cpu_now(pool: RenderPool) -> tuple[float, float, float]:
    """(this process's CPU s, the pool workers' CPU s, wall s) now."""
    return time.process_time(), pool.worker_cpu_s, time.perf_counter()


def since(t0: tuple[float, float, float], pool: RenderPool) -> dict[str, float]:
    c, w, t = cpu_now(pool)
    return {"cpu_s": c - t0[0], "worker_cpu_s": w - t0[1], "wall_s": t - t0[2]}


async def daily_tick(channels: int, workers: int | None, tmp: Path) -> dict[str, Any]:
    start = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    store = await Store.open(f"sqlite+aiosqlite:///{tmp / f'daily{channels}.sqlite3'}", max_per_guild=PER_GUILD)
    pool = RenderPool(workers)
    try:
        populate_s = await bulk(store, channels, start, skew=False)
        svc = ReportService({"binance": ManySymbols()}, ttl=0, renderer=pool)
        await svc.report(SYMBOLS[0], WINDOW)  # the workers are up and warm (not counted in the tick)
        c0, r0, m0 = cpu_now(pool), pool.stats.completed, svc.computations
        clock = Clock(start + timedelta(hours=1))  # 09:00 UTC: every channel due
        d = Dispatcher(store, NoopPoster(), svc.report, params=DispatcherParams(), now=clock)
        stats = await d.run_daily()
        real = {**since(c0, pool), "renders": svc.computations - m0, "pool_renders": pool.stats.completed - r0,
                "posted": stats.posted, "failures": stats.render_failures}
        # the same tick a day later with precomputed reports: the dispatcher's own cost
        base = await svc.report(SYMBOLS[0], WINDOW)
        reports = {s: dataclasses.replace(base, symbol=s, reading=dataclasses.replace(base.reading, symbol=s))
                   for s in SYMBOLS}

        async def fake(symbol: str, window: str, exchange: str) -> Any:
            return reports[symbol]

        clock.t += timedelta(days=1)
        d2 = Dispatcher(store, NoopPoster(), fake, params=DispatcherParams(), now=clock)
        c1 = cpu_now(pool)
        s2 = await d2.run_daily()
        own = {**since(c1, pool), "renders": s2.renders, "posted": s2.posted}
        return {"channels": channels, "populate_s": populate_s, "real": real, "own": own}
    finally:
        await pool.aclose()
        await store.close()


async def skew_checks(channels: int, workers: int | None, tmp: Path) -> dict[str, Any]:
    start = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    store = await Store.open(f"sqlite+aiosqlite:///{tmp / 'skew.sqlite3'}", max_per_guild=PER_GUILD)
    pool = RenderPool(workers)
    out: dict[str, Any] = {"channels": channels}
    try:
        await bulk(store, channels, start, skew=True)
        svc = ReportService({"binance": ManySymbols()}, ttl=0, renderer=pool)
        await svc.report(SYMBOLS[0], WINDOW)  # warm workers
        clock = Clock(start)
        before = Dispatcher(store, NoopPoster(), svc.report, params=DispatcherParams(), now=clock)
        after = Dispatcher(store, NoopPoster(), svc.report, params=DispatcherParams(), now=clock, reading=svc.reading)
        await after.run_skew()  # the baselines
        for name, d in (("after", after), ("before", before), ("after2", after)):
            clock.t += timedelta(minutes=15)
            c0, r0 = cpu_now(pool), pool.stats.completed
            s = await d.run_skew()
            out[name] = {**since(c0, pool), "renders": pool.stats.completed - r0, "readings": s.readings,
                         "unchanged": s.unchanged, "announced": s.announced}
        # 10 keys announce: their stored class set to one their maps cannot be in
        flip = list(SYMBOLS[:10])
        async with store.engine.begin() as conn:
            t = SkewAlertRow.__table__
            await conn.execute(update(t).where(t.c.symbol.in_(flip)).values(last_class="heavily_long",
                                                                              last_announced_at=None))
        clock.t += timedelta(minutes=15)
        c0, r0 = cpu_now(pool), pool.stats.completed
        s = await after.run_skew()
        out["flip"] = {**since(c0, pool), "renders": pool.stats.completed - r0, "readings": s.readings,
                       "unchanged": s.unchanged, "announced": s.announced}
        return out
    finally:
        await pool.aclose()
        await store.close()


class SimClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def memory_day(requests: int, cache_mb: float, workers: int | None) -> dict[str, Any]:
    """``requests`` varied reports spread over 24 simulated hours against a byte-bounded cache."""
    rng = random.Random(14)
    weights = [1 / (k + 1) for k in range(N_SYMBOLS)]  # Zipf-like: a few symbols asked for often
    bound = int(cache_mb * 1024 * 1024)
    clock = SimClock()
    pool = RenderPool(workers)
    svc = ReportService({"binance": ManySymbols()}, ttl=3600, max_bytes=bound, clock=clock, renderer=pool)
    try:
        await svc.report(SYMBOLS[0], WINDOW)
        gc.collect()
        rss0 = rss_mb()
        tracemalloc.start()  # Python allocations of the bot process from here (the renders are the pool's)
        peak_cache, rss_samples = 0, []
        keys = set()
        t0 = time.perf_counter()
        batch = 4  # four requests at a time, like a busy bot (the pool has a queue)
        for i in range(0, requests, batch):
            reqs = []
            for _ in range(min(batch, requests - i)):
                sym = rng.choices(SYMBOLS, weights)[0]
                kw = dict(window=rng.choice(("1d", "7d")), theme=rng.choice(("dark", "light")),
                          stack=rng.choice(("tier", "venue")))
                keys.add((sym, *kw.values()))
                reqs.append(svc.report(sym, kw["window"], "all", kw["theme"], kw["stack"]))
            await asyncio.gather(*reqs)
            clock.t += 86_400 / requests * batch
            peak_cache = max(peak_cache, svc.cache_bytes)
            assert svc.cache_bytes <= bound, "the cache went over its bound"
            if (i // batch) % 25 == 0:
                rss_samples.append(rss_mb())
        gc.collect()
        rss_samples.append(rss_mb())
        traced, traced_peak = tracemalloc.get_traced_memory()
        end_cache, entries = svc.cache_bytes, svc.cache_size
        svc._cache.clear()  # what the cache's entries themselves held: the traced bytes freed with them
        gc.collect()
        held = traced - tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return {"traced_mb": traced / 2**20, "traced_peak_mb": traced_peak / 2**20, "cache_held_mb": held / 2**20,
                "requests": requests, "distinct": len(keys), "built": svc.computations, "bound_mb": cache_mb,
                "peak_cache_mb": peak_cache / 2**20, "end_cache_mb": end_cache / 2**20,
                "entries": entries, "rss0": rss0, "rss_end": rss_samples[-1], "rss_max": max(rss_samples),
                "wall_s": time.perf_counter() - t0}
    finally:
        await pool.aclose()


async def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"ticks": []}
    for channels in args.channels:
        out["ticks"].append(await daily_tick(channels, args.workers, tmp))
        out["ticks"][-1]["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"daily tick {channels:,} done", flush=True)
    out["skew"] = await skew_checks(args.skew_channels, args.workers, tmp)
    print("skew checks done", flush=True)
    return out


def memory_main(args: argparse.Namespace) -> None:
    """The simulated day alone, in a fresh process (so its RSS is not the ticks')."""
    cal = Calibration()
    mem = asyncio.run(memory_day(args.requests, args.cache_mb, args.workers))
    cal.finish()
    body = f"""
{mem['requests']:,} `/liqmap` requests spread over 24 h of injected clock (4 at a time), in a fresh
process: symbols drawn Zipf-like from the 500 (the bundled real sample under 500 names), window 1d
or 7d, dark or light, by tier or by venue ({mem['distinct']:,} distinct keys, {mem['built']:,} reports
built, every chart really rendered in the render pool of {args.workers or os.cpu_count()} workers), cache
TTL 1 h and a bound of {mem['bound_mb']:g} MB (`LIQMAP_REPORT_CACHE_MB`).

| | MB |
|---|---:|
| cache bound | {mem['bound_mb']:g} |
| cache bytes, peak (checked after every request never to exceed the bound) | {mem['peak_cache_mb']:.1f} |
| cache bytes at the end ({mem['entries']} entries: reports and their merged maps) | {mem['end_cache_mb']:.1f} |
| bot process RSS after the first report | {mem['rss0']:.0f} |
| bot process RSS at the end of the day | {mem['rss_end']:.0f} |
| bot process RSS, largest sample (every 100 requests) | {mem['rss_max']:.0f} |
| Python allocations of the bot process at the end (tracemalloc, started after the first report) | {mem['traced_mb']:.1f} |
| ... their peak over the day | {mem['traced_peak_mb']:.1f} |
| ... freed when the cache's entries are dropped at the end: what the cache really held | {mem['cache_held_mb']:.1f} |

The cache's accounted bytes stay under the bound, and what its entries really hold (traced) is
{mem['cache_held_mb']:.1f} MB against the {mem['end_cache_mb']:.1f} MB it counted: the accounting errs on the safe
side. RSS grew {mem['rss_end'] - mem['rss0']:+.0f} MB over the day: the live Python allocations at the end are
{mem['traced_mb']:.1f} MB (peak {mem['traced_peak_mb']:.1f} MB, the cache plus the four reports being built at that
moment), so the rest of the growth is memory the allocator keeps
after it was freed (fragmentation), not memory still in use. The render workers' memory is their own
processes', not counted here.
Took {mem['wall_s']:.0f} s.
"""
    print(cal.line(), body.strip(), sep="\n\n")
    if not args.no_write:
        write_section("scale-memory", "Memory over a simulated day of varied requests",
                      "python -m bench.scale --memory", body, cal)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--skew-channels", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=1200, help="requests in the simulated day")
    parser.add_argument("--cache-mb", type=float, default=16.0, help="the cache bound of the simulated day")
    parser.add_argument("--workers", type=int, default=None, help="render processes (default: one per core)")
    parser.add_argument("--memory", action="store_true", help="only the simulated day (its own section)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.memory:
        memory_main(args)
        return
    cal = Calibration()
    with tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(bench(args, Path(tmp)))
    cal.finish()
    workers = args.workers or os.cpu_count()

    def ms(x: float) -> str:
        return f"{x * 1000:,.0f} ms" if x < 10 else f"{x:,.1f} s"

    rows = []
    for t in r["ticks"]:
        re, own = t["real"], t["own"]
        rows.append(f"| {t['channels']:,} channels, real renders | {re['renders']} ({re['pool_renders']} in the pool) | "
                    f"{re['posted']:,} | {ms(re['cpu_s'])} | {ms(re['worker_cpu_s'])} | {ms(re['wall_s'])} |")
        rows.append(f"| {t['channels']:,} channels a day later, precomputed reports (the dispatcher's own cost) | "
                    f"0 ({own['renders']} reports asked for) | "
                    f"{own['posted']:,} | {ms(own['cpu_s'])} | | {ms(own['wall_s'])} |")
    sk = r["skew"]
    srows = []
    for name, label in (("before", "full reports for every key (before)"), ("after", "reading-only path (after)"),
                        ("after2", "reading-only path (after, again)"),
                        ("flip", "reading-only path, 10 keys announce")):
        s = sk[name]
        total = s["cpu_s"] + s["worker_cpu_s"]
        srows.append(f"| {label} | {s['readings']} | {s['renders']} | {s['announced']} | {ms(s['cpu_s'])} | "
                     f"{ms(s['worker_cpu_s'])} | {ms(total)} | {ms(s['wall_s'])} |")
    nkeys = min(sk["channels"], N_SYMBOLS)
    before = sk["before"]["cpu_s"] + sk["before"]["worker_cpu_s"]
    after = statistics.median([sk[k]["cpu_s"] + sk[k]["worker_cpu_s"] for k in ("after", "after2")])
    body = f"""
500 symbols (the bundled real Binance BTCUSDT 5m sample under 500 names, {WINDOW} window: 288 bars
per symbol, so the model is cheap and the chart is the full 1280x720 chart), every chart really
rendered in a render pool of {workers} worker processes; SQLite file database (WAL), subscriptions
inserted in bulk; no-op poster. "bot CPU" is the bot process's CPU time (all its threads: the
dispatcher, the database driver, the model); "pool CPU" is the render workers' CPU time. Each
figure is one run (nothing extrapolated).

**Daily ticks, every channel due at once** (report service uncached, so the tick renders for itself):

| tick | renders | messages | bot CPU | pool CPU | wall |
|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Renders per tick equal the distinct keys: {', '.join(str(t['real']['renders']) for t in r['ticks'])} renders for
{' and '.join(f"{t['channels']:,}" for t in r['ticks'])} channels, whose keys are
{', '.join(str(min(t['channels'], N_SYMBOLS)) for t in r['ticks'])} distinct (symbol x window x exchange).
The day-1 tick posts without a previous report; the day-2 tick compares each post with the reading
of the schedule's last one ("what changed since": one query per tick, one comparison per post),
which is why the dispatcher's own cost is higher then. The process's peak RSS after each tick:
{', '.join(f"{t['peak_rss']:.0f} MB" for t in r['ticks'])} (a tick's claims, texts and records are
in memory at once). Bulk-inserting the subscriptions took
{', '.join(f"{t['populate_s']:.1f} s" for t in r['ticks'])}. The memory over a day is its own section below.

**Skew checks**, {sk['channels']:,} alerts over {nkeys} keys, no class changes unless said:

| check | readings | renders | notices | bot CPU | pool CPU | total CPU | wall |
|---|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(srows)}

CPU per steady skew check: {ms(before)} before, {ms(after)} after the reading-only path
({before / after:.0f}x less); per key {before / nkeys * 1000:.0f} ms before, {after / nkeys * 1000:.1f} ms after.

"""
    print(cal.line(), body.strip(), sep="\n\n")
    if not args.no_write:
        cmd = "python -m bench.scale" + (f" --workers {args.workers}" if args.workers else "")
        write_section("scale", "Scale: 10,000 and 100,000 channels over 500 symbols, real renders in the pool",
                      cmd, body, cal)


if __name__ == "__main__":
    main()
