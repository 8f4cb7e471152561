"""Dispatcher benchmark (``python -m bench.bot``): 1,000 subscribed channels over 10 symbols.

A temporary SQLite database holds 1,000 daily schedules (one per channel, 40 guilds of 25, all at
09:00 UTC, 10 symbols) and 1,000 skew subscriptions on the same channels. A no-op poster stands in
for Discord. Measured, as medians over several simulated days:

* a daily tick in which all 1,000 reports are due: renders per tick (should be 10), the dispatcher's
  CPU time and wall time, with a fake report function that returns precomputed real reports (so
  the CPU is the dispatcher's own: queries, claims, texts, embeds, records);
* an idle tick (nothing due), the common case every ``tick_s``;
* skew checks: the first (1,000 baselines), a steady one (no change), one where a symbol flips
  class for 100 channels;
* one daily tick with real renders (report service over the bundled sample, relabelled as 10
  symbols, no cache), for the end-to-end figure.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from analysis.bars import Bars
from analysis.report import ReportService
from analysis.sources import SAMPLE_PATH, read_bars_csv
from analysis.windows import Window
from bot.scheduler import Dispatcher, DispatcherParams
from bot.store import Store

from .calibrate import Calibration
from .doc import write_section

UTC = timezone.utc
SYMBOLS = ("BTC", "ETH", "SOL", "XRP", "DOGE", "BNB", "ADA", "AVAX", "LINK", "TRX")
CHANNELS = 1000
PER_GUILD = 25


class NoopPoster:
    """Accepts every message at once (Discord's own latency is not the dispatcher's CPU)."""

    def __init__(self) -> None:
        self.sent = 0

    async def post(self, channel_id: int, *, content: Any, embed: Any, png: bytes, filename: str, nonce: str,
                   extra: Any = ()) -> int:
        self.sent += 1
        return 10**17 + self.sent

    async def find_marker(self, channel_id: int, marker: str, *, since: Any = None) -> int | None:
        return None


class RelabelledSample:
    """The bundled real Binance sample served under any symbol (for real renders of 10 'symbols')."""

    name = "binance"

    def __init__(self) -> None:
        self._bars = read_bars_csv(SAMPLE_PATH, venue="binance", symbol="BTCUSDT")

    async def symbols(self) -> list[str]:
        return [f"{s}USDT" for s in SYMBOLS]

    async def bars(self, symbol: str, window: Window) -> Bars:
        return dataclasses.replace(self._bars, symbol=symbol).last(window.duration_ms)


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


async def populate(store: Store, now: datetime) -> None:
    for i in range(CHANNELS):
        guild, channel = 1 + i // PER_GUILD, 10_000 + i
        sym = SYMBOLS[i % len(SYMBOLS)]
        await store.add_daily(guild, channel, symbols=sym, window="1d", exchange="all", time="09:00",
                              timezone="UTC", created_by=1, now=now)
        await store.add_skew_alert(guild, channel, symbol=sym, window="1d", exchange="all", created_by=1, now=now)


def measure(fn):
    async def timed(*a: Any) -> tuple[Any, float, float]:
        c0, w0 = time.process_time(), time.perf_counter()
        out = await fn(*a)
        return out, (time.process_time() - c0) * 1000, (time.perf_counter() - w0) * 1000
    return timed


TABLES = ("deliveries", "skew_alerts", "daily_schedules", "store_marks", "alembic_version")


async def _server_tables(url: str, drop: bool) -> list[str]:
    """The bot's tables present in a server database (and drop them when ``drop``)."""
    from sqlalchemy import inspect, text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            present = await conn.run_sync(lambda c: [t for t in TABLES if inspect(c).has_table(t)])
            if drop and present:
                await conn.execute(text(f"DROP TABLE IF EXISTS {', '.join(TABLES)} CASCADE"))
        return present
    finally:
        await engine.dispose()


async def bench(days: int, database_url: str | None = None) -> dict[str, Any]:
    start = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    if database_url and await _server_tables(database_url, drop=False):
        raise SystemExit("that database already holds liqmap tables; give an empty database")
    with tempfile.TemporaryDirectory() as tmp:
        url = database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.sqlite3'}"
        store = await Store.open(url, max_per_guild=100)
        try:
            t0 = time.perf_counter()
            await populate(store, start)
            populate_s = time.perf_counter() - t0

            real = ReportService({"binance": RelabelledSample()}, ttl=0)
            base = await real.report("BTC", "1d", "all")
            ratio = {f"{s}USDT": 1.0 for s in SYMBOLS}

            async def fake(symbol: str, window: str, exchange: str) -> Any:
                reading = dataclasses.replace(base.reading, symbol=symbol, imbalance=ratio[symbol])
                return dataclasses.replace(base, symbol=symbol, reading=reading)

            clock = Clock(start)
            poster = NoopPoster()
            d = Dispatcher(store, poster, fake, params=DispatcherParams(), now=clock)
            daily = measure(d.run_daily)
            skew = measure(d.run_skew)

            due_cpu, due_wall, renders, posted = [], [], [], []
            idle_cpu = []
            for day in range(days):
                clock.t = start + timedelta(days=day, hours=1)  # 09:00 UTC: all 1,000 due
                stats, cpu, wall = await daily()
                due_cpu.append(cpu), due_wall.append(wall), renders.append(stats.renders), posted.append(stats.posted)
                clock.t += timedelta(seconds=30)
                _, cpu, _ = await daily()
                idle_cpu.append(cpu)

            clock.t += timedelta(minutes=15)
            s_first, first_cpu, first_wall = await skew()
            steady = []
            for _ in range(days):
                clock.t += timedelta(minutes=15)
                s_steady, cpu, _ = await skew()
                steady.append(cpu)
            ratio["ETHUSDT"] = 4.0
            clock.t += timedelta(minutes=15)
            s_flip, flip_cpu, flip_wall = await skew()

            # one tick with real renders: 10 symbols through the report service, no cache
            d_real = Dispatcher(store, NoopPoster(), real.report, params=DispatcherParams(), now=clock)
            clock.t = start + timedelta(days=days, hours=1)
            before = real.computations
            c0, w0 = time.process_time(), time.perf_counter()
            s_real = await d_real.run_daily()
            real_cpu, real_wall = (time.process_time() - c0) * 1000, (time.perf_counter() - w0) * 1000
            real_renders = real.computations - before
        finally:
            await store.close()
            if database_url:
                await _server_tables(database_url, drop=True)
    return {
        "backend": store.engine.dialect.name,
        "populate_s": populate_s,
        "renders": renders, "posted": posted,
        "due_cpu": statistics.median(due_cpu), "due_wall": statistics.median(due_wall),
        "idle_cpu": statistics.median(idle_cpu),
        "skew_first": (s_first.baselines, s_first.renders, first_cpu, first_wall),
        "skew_steady": (s_steady.unchanged, s_steady.renders, statistics.median(steady)),
        "skew_flip": (s_flip.announced, s_flip.renders, flip_cpu, flip_wall),
        "real": (s_real.posted, real_renders, real_cpu, real_wall),
        "days": days,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bot", description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=5, help="simulated days (repetitions) for the medians")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch docs/benchmarks.md")
    parser.add_argument("--database-url", help="run on this (empty) server database instead of a temporary SQLite "
                        "file, e.g. postgresql+asyncpg://...; its tables are dropped afterwards")
    args = parser.parse_args(argv)
    cal = Calibration()
    r = asyncio.run(bench(args.days, args.database_url))
    cal.finish()
    sf, ss, sx, real = r["skew_first"], r["skew_steady"], r["skew_flip"], r["real"]
    backend = ("SQLite file database (WAL)" if r["backend"] == "sqlite" else
               f"{r['backend']} server database on the same machine (its server's CPU is not counted below)")
    body = f"""
1,000 channels (40 guilds x 25) over 10 symbols, each with a 09:00 UTC daily report and a skew
subscription; {backend}; no-op poster. CPU is process CPU time (all threads) of the
tick; medians over {r['days']} simulated days.

| tick | renders | messages | dispatcher CPU | wall |
|---|---:|---:|---:|---:|
| daily, all 1,000 due (precomputed reports) | {statistics.median(r['renders']):.0f} | {statistics.median(r['posted']):.0f} | {r['due_cpu']:.0f} ms | {r['due_wall']:.0f} ms |
| daily, nothing due | 0 | 0 | {r['idle_cpu']:.1f} ms | |
| skew, first check (1,000 baselines) | {sf[1]} | 0 | {sf[2]:.0f} ms | {sf[3]:.0f} ms |
| skew, no change | {ss[1]} | 0 | {ss[2]:.0f} ms | |
| skew, one symbol flips (100 notices) | {sx[1]} | {sx[0]} | {sx[2]:.0f} ms | {sx[3]:.0f} ms |
| daily, all 1,000 due, real renders (report service, no cache) | {real[1]} | {real[0]} | {real[2]:.0f} ms | {real[3]:.0f} ms |

Renders per due tick on each simulated day: {', '.join(str(x) for x in r['renders'])} (one per distinct
symbol x window x exchange, fanned out to 100 channels each). Creating the 2,000 subscriptions through
the store's validated API took {r['populate_s']:.1f} s.
"""
    print(cal.line(), body.strip(), sep="\n\n")
    if not args.no_write:
        if args.database_url:
            write_section("bot-server", f"Discord dispatcher on {r['backend']}: 1,000 channels over 10 symbols",
                          "python -m bench.bot --database-url <server>", body, cal)
        else:
            write_section("bot", "Discord dispatcher: 1,000 channels over 10 symbols", "python -m bench.bot", body, cal)


if __name__ == "__main__":
    main()
