"""Tape storage benchmark (``python -m bench.tape_store``): events/s the database sustains.

Writes batches of realistic liquidation events (``--batch`` per flush, default 100: what a
recorder flushes during a cascade) through :meth:`bot.tape_store.TapeStore.write_events` into a
fresh SQLite file (WAL, the bot's default database), the process pinned to one CPU where the OS
allows it. Each batch mixes three venues and three symbols, with 2% of its events replays of
already-stored ones (the duplicates a reconnect delivers). Reported: sustained events/s (all new
events over the whole run's wall time), the median and p95 latency of one batch, CPU time per
event, first into an empty table and then into one already holding ``--prefill`` rows; and the
retention prune (rows deleted per second, in its default batches of 5,000). The section starts
with the run's calibration line (bench/calibrate.py, timed at the start and the end of the run),
so figures from other days or machines compare by ratio. Target: >= 5,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from analysis.tape.events import LiquidationEvent
from bot.tape_store import DAY_MS, TapeStore

from .calibrate import Calibration
from .doc import write_section

NAME = "tape_store"
TITLE = "Tape storage: events/s into the database"
COMMAND = "python -m bench.tape_store"
TARGET = 5000.0
#: measured once before the change it describes (same machine, `--batches 50 --prefill 20000`)
HISTORY = ("Before the insert became one cached executemany statement (SQLAlchemy's insertmanyvalues), each batch "
           "compiled a fresh multi-row VALUES statement: 9,734 / 9,449 events/s (batch median 8.9 ms, CPU "
           "~100 µs/event) in a shorter run on the same machine (2026-12-02, `--batches 50 --prefill 20000`).")
VENUES = ("bybit", "binance", "okx")
SYMBOLS = (("BTCUSDT", 90_000.0), ("ETHUSDT", 3_000.0), ("SOLUSDT", 140.0))


class Events:
    """Deterministic event stream: unique keys, a random walk of prices, sides mixed."""

    def __init__(self, start_ms: int, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.n = 0
        self.t = start_ms
        self.recent: list[LiquidationEvent] = []

    def batch(self, size: int, dup_share: float = 0.02) -> list[LiquidationEvent]:
        out: list[LiquidationEvent] = []
        for _ in range(size):
            if self.recent and self.rng.random() < dup_share:
                out.append(self.rng.choice(self.recent))
                continue
            venue = VENUES[self.n % 3]
            symbol, base = SYMBOLS[self.rng.randrange(3)]
            price = base * (1 + self.rng.uniform(-0.02, 0.02))
            qty = round(self.rng.lognormvariate(0, 1.5) * 1000 / price, 6) or 0.001
            self.t += self.rng.randrange(1, 20)
            e = LiquidationEvent(venue, symbol, self.t, "long" if self.rng.random() < 0.5 else "short", price, qty,
                                 price * qty, venue != "bybit", f"{venue}:{self.seed}:{self.n}")
            self.n += 1
            out.append(e)
        self.recent = out[-50:]
        return out


async def phase(tape: TapeStore, events: Events, batches: int, size: int) -> dict[str, float]:
    lat: list[float] = []
    new = 0
    todo = [events.batch(size) for _ in range(batches)]  # generated outside the timing
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for b in todo:
        t = time.perf_counter()
        new += await tape.write_events(b)
        lat.append((time.perf_counter() - t) * 1000)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    lat.sort()
    return {"events_s": new / wall, "median_ms": statistics.median(lat), "p95_ms": lat[int(0.95 * (len(lat) - 1))],
            "cpu_us": cpu / max(new, 1) * 1e6, "new": new, "batches": batches}


async def run(batches: int, size: int, prefill: int, where: str | None,
              url: str | None = None) -> tuple[list[tuple[str, dict[str, float]]], dict[str, float]]:
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        url = url or f"sqlite+aiosqlite:///{Path(tmp) / 'tape.sqlite3'}"
        now = int(time.time() * 1000)
        old = now - 40 * DAY_MS  # the prefill lies past a 30-day retention: the prune deletes it
        tape = await TapeStore.open(url)
        try:
            if (await tape.counts()) != (0, 0):
                raise SystemExit("the database already holds tape rows; benchmark an empty one")
            rows = [("empty table", await phase(tape, Events(now - DAY_MS, seed=1), batches, size))]
            pre = Events(old, seed=2)
            for _ in range(prefill // 1000):
                await tape.write_events(pre.batch(1000, dup_share=0.0))
            label = f"table holding {prefill + rows[0][1]['new']:,.0f} rows"
            rows.append((label, await phase(tape, Events(now - DAY_MS // 2, seed=3), batches, size)))
            t = time.perf_counter()
            deleted = await tape.prune(now - 30 * DAY_MS, max_batches=10_000)
            prune = {"rows": deleted, "rows_s": deleted / max(time.perf_counter() - t, 1e-9)}
        finally:
            await tape.close()
    return rows, prune


def _filesystem(path: str) -> str:
    """The filesystem type of ``path`` (Linux /proc/mounts), e.g. ``ext4``, else ``a local disk``."""
    best, kind = "", "a local disk"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and os.path.realpath(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=300, help="batches per phase (default 300)")
    ap.add_argument("--batch", type=int, default=100, help="events per batch (default 100)")
    ap.add_argument("--prefill", type=int, default=200_000, help="rows stored before the second phase (default 200000)")
    ap.add_argument("--dir", default=None, help="directory for the SQLite file (default: the system temp dir); "
                                                 "use the disk the bot's database lives on")
    ap.add_argument("--url", default=None, help="benchmark this (empty) database instead, e.g. a scratch "
                                                 "postgresql+asyncpg://... (printed only, never written to the doc)")
    ap.add_argument("--no-doc", action="store_true", help="print only, do not rewrite docs/benchmarks.md")
    args = ap.parse_args(argv)
    pinned = "not pinned"
    if hasattr(os, "sched_setaffinity"):
        cpu = sorted(os.sched_getaffinity(0))[-1]
        os.sched_setaffinity(0, {cpu})  # one core: the event loop and aiosqlite's thread share it
        pinned = f"pinned to CPU {cpu}"
    cal = Calibration()
    rows, prune = asyncio.run(run(args.batches, args.batch, args.prefill, args.dir, args.url))
    fs = _filesystem(args.dir or tempfile.gettempdir())
    if args.url:
        args.no_doc = True
        fs = f"{args.url.partition('://')[0]} (not SQLite: the WAL/synchronous note does not apply)"
    cal.finish()
    lines = [
        f"SQLite file (WAL, `synchronous=FULL`: SQLite's default, a sync per commit) on {fs}, process {pinned}; {args.batches} batches of {args.batch} events per "
        "phase through `TapeStore.write_events` (validation, one transaction, `INSERT ... ON CONFLICT DO NOTHING "
        "RETURNING`), 3 venues x 3 symbols, 2% of each batch replays of stored events. Events/s counts new rows "
        "over the phase's wall time. Target: >= 5,000 events/s.",
        "",
        "| phase | events/s | batch median ms | batch p95 ms | CPU µs/event |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, r in rows:
        lines.append(f"| {label} | {r['events_s']:,.0f} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} | {r['cpu_us']:.0f} |")
    worst = min(r["events_s"] for _, r in rows)
    lines += [
        "",
        f"Retention prune: {prune['rows']:,.0f} rows older than 30 days deleted at {prune['rows_s']:,.0f} rows/s "
        "(transactions of 5,000).",
        "",
        f"Result: the slower phase sustained {worst:,.0f} events/s, {worst / TARGET:.1f}x the 5,000 events/s target "
        f"({'met' if worst >= TARGET else 'NOT met'}).",
    ]
    if not args.url:
        lines += ["", HISTORY]
    body = "\n".join(lines)
    print(cal.line() + "\n\n" + body)
    if not args.no_doc:
        write_section(NAME, TITLE, COMMAND, body, cal)


if __name__ == "__main__":
    main()
