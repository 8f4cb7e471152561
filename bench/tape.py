"""Tape recorder benchmark, offline (``python -m bench.tape``): memory over a long replay, events/s.

Part 1, memory: one hour of a realistic BTCUSDT liquidation stream replayed at 10x real rate
through three loopback websocket servers (Bybit, Binance, OKX frames in their documented shapes,
tests/fixtures/tape) into one :class:`Recorder` with a counting sink. tracemalloc (current) and
RSS are read after connecting and at each quarter of the hour.

How the stream is derived: the peak hour of realized BTC liquidations (USD, Binance+Bybit+OKX) in
``../shared/data/btc-realized-liquidations-1h-dev.csv`` when present (else ``DEFAULT_PEAK_USD``),
divided by ``MEAN_EVENT_USD`` for an event count, split evenly over the three venues, spread over
the hour with a cascade profile (a base rate plus three bursts at ``BURST_FACTOR`` times it) by a
seeded Poisson draw. Each venue then sends what its feed would: Bybit every event in 500 ms
frames (complete feed), Binance at most one event per second (its documented sampling), OKX the
events in 500 ms frames.

Part 2, throughput on one core: (a) ``VenueFeed.parse`` alone over prebuilt documented frames;
(b) end to end, the loopback server sending prebuilt frames as fast as it can and the recorder
parsing, de-duplicating and handing them to the counting sink, both in one asyncio thread (so
the figure also pays for the server); (c) the same into the real store: recorder ->
:class:`bot.tape_store.TapeStore` on a fresh SQLite file (WAL), the process pinned to one CPU
(the event loop, the loopback server and aiosqlite's thread share it), timed until the store has
reported every event stored. Medians of ``--repeat`` runs. The section starts with the run's
calibration line (bench/calibrate.py).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import csv
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from analysis.tape.events import Gap, LiquidationEvent  # noqa: E402
from analysis.tape.feeds import BinanceFeed, BybitFeed, OkxFeed  # noqa: E402
from analysis.tape.recorder import Recorder, RecorderParams  # noqa: E402
from loopback_ws import BYBIT_SUBSCRIBED, OKX_SUBSCRIBED, LoopbackWS, Peer  # noqa: E402

from .calibrate import Calibration, rss_mb  # noqa: E402
from .doc import write_section  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "tape"
SHARED_CSV = ROOT.parent / "shared" / "data" / "btc-realized-liquidations-1h-dev.csv"
DEFAULT_PEAK_USD = 300e6  # used only when the CSV is absent
MEAN_EVENT_USD = 5_000.0  # assumed mean notional of one liquidation event (venue samples: $139, $900)
BURST_FACTOR = 10.0
BURSTS_MIN = ((10, 12), (30, 35), (50, 51))  # minutes of the hour at BURST_FACTOR x the base rate
T0 = 1_767_225_600_000


def peak_hour() -> tuple[float, str]:
    """The largest hourly realized total in the shared CSV (and where it comes from)."""
    if not SHARED_CSV.exists():
        return DEFAULT_PEAK_USD, f"default ${DEFAULT_PEAK_USD / 1e6:.0f}M (../shared/data CSV absent)"
    best, when = 0.0, ""
    with SHARED_CSV.open(newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                v = float(row["liquidation_total_usd"])
            except (KeyError, ValueError):
                continue
            if v > best:
                best, when = v, row.get("datetime_utc", "")
    return best, f"peak hour of the shared realized-liquidation CSV ({when}): ${best / 1e6:.1f}M"


def per_slot_counts(events: float, slots: int, seed: int) -> np.ndarray:
    """Poisson counts per 500 ms slot over an hour with the cascade profile."""
    minute = np.arange(slots) * 0.5 / 60
    w = np.ones(slots)
    for a, b in BURSTS_MIN:
        w[(minute >= a) & (minute < b)] = BURST_FACTOR
    lam = w / w.sum() * events
    return np.random.default_rng(seed).poisson(lam)


def _templates() -> dict[str, Any]:
    return {n: json.loads((FIX / f).read_text()) for n, f in
            (("bybit", "bybit_all_liquidation.json"), ("binance", "binance_force_order.json"), ("okx", "okx_liquidation_orders.json"))}


TPL = _templates()


def bybit_frame(t_ms: int, n: int, seq: int) -> str:
    f = copy.deepcopy(TPL["bybit"])
    f["topic"], f["ts"] = "allLiquidation.BTCUSDT", t_ms + 100
    item = f["data"][0]
    f["data"] = [dict(item, T=t_ms + k, s="BTCUSDT", S="Buy" if (seq + k) % 3 else "Sell",
                      v=f"{0.001 * (1 + (seq + k) % 50):.3f}", p=f"{90000 - (seq + k) % 900:.1f}") for k in range(n)]
    return json.dumps(f)


def binance_frame(t_ms: int, seq: int) -> str:
    f = copy.deepcopy(TPL["binance"])
    q = f"{0.001 * (1 + seq % 50):.3f}"
    f["E"] = t_ms + 1
    f["o"].update(s="BTCUSDT", S="SELL" if seq % 3 else "BUY", T=t_ms, q=q, l=q, z=q, p=f"{90000 - seq % 900}", ap=f"{90000 - seq % 900}")
    return json.dumps(f)


def okx_frame(t_ms: int, n: int, seq: int) -> str:
    f = copy.deepcopy(TPL["okx"])
    f["data"][0].update(instId="BTC-USDT-SWAP", instFamily="BTC-USDT", uly="BTC-USDT")
    d = f["data"][0]["details"][0]
    f["data"][0]["details"] = [dict(d, ts=str(t_ms + k), sz=str(1 + (seq + k) % 40), bkPx=f"{90000 + (seq + k) % 900}",
                                    posSide="long" if (seq + k) % 3 else "short", side="sell") for k in range(n)]
    return json.dumps(f)


class CountingSink:
    """Counts what it is given; stores nothing."""

    def __init__(self) -> None:
        self.events = 0
        self.gaps = 0

    async def write_events(self, events: Sequence[LiquidationEvent]) -> int:
        self.events += len(events)
        return len(events)

    async def write_gap(self, gap: Gap) -> None:
        self.gaps += 1


async def replay(minutes: float, speed: float, seed: int) -> dict[str, Any]:
    peak_usd, origin = peak_hour()
    slots = int(minutes * 120)
    per_venue = peak_usd / MEAN_EVENT_USD / 3 * (minutes / 60)
    counts = {v: per_slot_counts(per_venue, slots, seed + i) for i, v in enumerate(("bybit", "binance", "okx"))}
    sent = {"bybit": 0, "binance": 0, "okx": 0}
    start = asyncio.Event()
    t_start = [0.0]
    loop = asyncio.get_running_loop()

    async def pace(slot: int) -> None:
        delay = t_start[0] + slot * 0.5 / speed - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def script(venue: str):  # noqa: ANN202
        async def run(peer: Peer) -> None:
            if venue == "bybit":
                await peer.subscribed()
                await peer.send(BYBIT_SUBSCRIBED)
            elif venue == "okx":
                await peer.subscribed()
                await peer.send(OKX_SUBSCRIBED)
            await start.wait()
            c = counts[venue]
            for slot in range(slots):
                await pace(slot)
                n = int(c[slot])
                t_ms = T0 + slot * 500
                if venue == "binance":
                    # sampled: at most one event per second; the second half-slot of a second carries it
                    if slot % 2 == 1 and (n + int(c[slot - 1])) > 0:
                        await peer.send(binance_frame(t_ms, slot))
                        sent[venue] += 1
                elif n:
                    await peer.send(bybit_frame(t_ms, n, slot) if venue == "bybit" else okx_frame(t_ms, n, slot))
                    sent[venue] += n
            await asyncio.sleep(3600)
        return run

    sink = CountingSink()
    params = RecorderParams()
    lifetime = minutes * 60 / speed + 120
    async with LoopbackWS(script("bybit"), auto_pong="bybit", lifetime_s=lifetime) as by, \
            LoopbackWS(script("binance"), lifetime_s=lifetime) as bn, \
            LoopbackWS(script("okx"), auto_pong="okx", lifetime_s=lifetime) as ok:
        rec = Recorder(sink, ["bybit", "binance", "okx"], ["BTCUSDT"],
                       urls={"bybit": by.url, "binance": bn.url, "okx": ok.url}, params=params,
                       contract_values=lambda ids: asyncio.sleep(0, {"BTC-USDT-SWAP": 0.01}))
        stop = asyncio.Event()
        task = asyncio.create_task(rec.run(stop))
        while not all(s.connected for s in rec.status().values()):
            await asyncio.sleep(0.01)
        tracemalloc.start()
        samples = [("connected", 0.0, tracemalloc.get_traced_memory()[0] / 1e6, rss_mb(), 0)]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        t_start[0] = loop.time()
        start.set()
        quarters = [q * slots // 4 for q in (1, 2, 3, 4)]
        for q, slot in enumerate(quarters, 1):
            target = t_start[0] + slot * 0.5 / speed
            await asyncio.sleep(max(0.0, target - loop.time()))
            await asyncio.sleep(params.flush_interval_s * 2)
            samples.append((f"{q * 25}% (venue minute {minutes * q / 4:g})", loop.time() - t_start[0],
                            tracemalloc.get_traced_memory()[0] / 1e6, rss_mb(), sink.events))
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        stop.set()
        await task
    st = rec.status()
    return {"origin": origin, "peak_usd": peak_usd, "samples": samples, "peak_mb": peak, "sent": sent,
            "stored": sink.events, "gaps": sink.gaps, "cpu": cpu, "wall": wall, "minutes": minutes, "speed": speed,
            "status": {v: (s.events, s.duplicates, s.dropped, s.malformed, s.reconnects) for v, s in st.items()}}


def parse_only(n_frames: int) -> dict[str, float]:
    """Events/s of ``VenueFeed.parse`` alone, per frame kind (CPU time, one thread)."""
    kinds = {
        "bybit, 1 event/frame": (BybitFeed(["BTCUSDT"]), [bybit_frame(T0 + i * 500, 1, i) for i in range(n_frames)], 1),
        "bybit, 10 events/frame": (BybitFeed(["BTCUSDT"]), [bybit_frame(T0 + i * 500, 10, i) for i in range(n_frames // 10)], 10),
        "binance, 1 event/frame": (BinanceFeed(["BTCUSDT"]), [binance_frame(T0 + i * 1000, i) for i in range(n_frames)], 1),
        "okx, 1 event/frame": (OkxFeed(["BTCUSDT"], lambda: {"BTC-USDT-SWAP": 0.01}),
                               [okx_frame(T0 + i * 500, 1, i) for i in range(n_frames)], 1),
    }
    out = {}
    for name, (feed, frames, per) in kinds.items():
        t = time.process_time()
        got = sum(len(feed.parse(f).events) for f in frames)
        dt = time.process_time() - t
        assert got == len(frames) * per
        out[name] = got / dt
    return out


async def end_to_end(n_frames: int, per_frame: int) -> tuple[float, float]:
    """Events/s through loopback server -> recorder -> counting sink (wall, and per CPU second)."""
    frames = [bybit_frame(T0 + i * 500, per_frame, i) for i in range(n_frames)]
    total = n_frames * per_frame
    go = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.subscribed()
        await peer.send(BYBIT_SUBSCRIBED)
        await go.wait()
        for f in frames:
            await peer.send(f)
        await asyncio.sleep(3600)

    sink = CountingSink()
    async with LoopbackWS(script, auto_pong="bybit", lifetime_s=600) as server:
        rec = Recorder(sink, ["bybit"], ["BTCUSDT"], urls={"bybit": server.url})
        stop = asyncio.Event()
        task = asyncio.create_task(rec.run(stop))
        while not rec.status()["bybit"].connected:
            await asyncio.sleep(0.005)
        cpu0, t0 = time.process_time(), time.perf_counter()
        go.set()
        while sink.events < total:
            await asyncio.sleep(0.002)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stop.set()
        await task
    return total / wall, total / cpu


async def end_to_end_store(n_frames: int, per_frame: int, where: str | None = None) -> tuple[float, float]:
    """Events/s through loopback server -> recorder -> TapeStore (a fresh SQLite file, WAL), wall
    and per CPU second, until the store reported every event as newly stored."""
    from bot.tape_store import TapeStore

    frames = [bybit_frame(T0 + i * 500, per_frame, i) for i in range(n_frames)]
    total = n_frames * per_frame
    go = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.subscribed()
        await peer.send(BYBIT_SUBSCRIBED)
        await go.wait()
        for f in frames:
            await peer.send(f)
        await asyncio.sleep(3600)

    with tempfile.TemporaryDirectory(dir=where) as tmp:
        tape = await TapeStore.open(f"sqlite+aiosqlite:///{Path(tmp) / 'tape.sqlite3'}")
        try:
            async with LoopbackWS(script, auto_pong="bybit", lifetime_s=600) as server:
                rec = Recorder(tape, ["bybit"], ["BTCUSDT"], urls={"bybit": server.url})
                stop = asyncio.Event()
                task = asyncio.create_task(rec.run(stop))
                while not rec.status()["bybit"].connected:
                    await asyncio.sleep(0.005)
                cpu0, t0 = time.process_time(), time.perf_counter()
                go.set()
                while rec.status()["bybit"].stored < total:
                    await asyncio.sleep(0.002)
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                stop.set()
                await task
            stored = (await tape.counts())[0]
        finally:
            await tape.close()
    if stored != total:
        raise SystemExit(f"the store holds {stored} events, {total} were sent")
    return total / wall, total / cpu


def one_core(fn):  # noqa: ANN001, ANN201
    """Run ``fn()`` with the process pinned to one CPU (where the OS allows), then unpin."""
    if not hasattr(os, "sched_setaffinity"):
        return fn(), "not pinned"
    before = os.sched_getaffinity(0)
    cpu = sorted(before)[-1]
    os.sched_setaffinity(0, {cpu})
    try:
        return fn(), f"pinned to CPU {cpu}"
    finally:
        os.sched_setaffinity(0, before)


STORE_TARGET = 5000.0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="venue time replayed (default 60)")
    ap.add_argument("--speed", type=float, default=10.0, help="times real rate (default 10)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args(argv)

    cal = Calibration()
    parse_runs = [parse_only(20_000) for _ in range(args.repeat)]
    parse_med = {k: statistics.median(r[k] for r in parse_runs) for k in parse_runs[0]}
    e2e = {per: [asyncio.run(end_to_end(20_000 // per, per)) for _ in range(args.repeat)] for per in (1, 10)}
    store_runs, pinned = one_core(lambda: {per: [asyncio.run(end_to_end_store(20_000 // per, per))
                                                 for _ in range(args.repeat)] for per in (1, 10)})
    rep = asyncio.run(replay(args.minutes, args.speed, args.seed))
    cal.finish()

    lines = [
        "Offline. Loopback websocket servers on 127.0.0.1 replay the venues' documented frame shapes "
        "(tests/fixtures/tape); the recorder runs with default `RecorderParams` into a counting sink "
        "(no database: the database sink's own rate is measured separately).",
        "",
        f"**Memory over a {rep['minutes']:.0f}-minute replay at {rep['speed']:.0f}x real rate** "
        f"({rep['wall']:.0f} s wall). Stream: {rep['origin']}, / ${MEAN_EVENT_USD:,.0f} assumed mean event = "
        f"{rep['peak_usd'] / MEAN_EVENT_USD:,.0f} events in the hour, a third per venue, base rate with bursts of "
        f"{BURST_FACTOR:.0f}x at minutes {', '.join(f'{a}-{b}' for a, b in BURSTS_MIN)} (seeded Poisson). Sent: "
        f"Bybit {rep['sent']['bybit']:,} events (complete), Binance {rep['sent']['binance']:,} (at most 1/s, sampled), "
        f"OKX {rep['sent']['okx']:,}; stored {rep['stored']:,}; gaps {rep['gaps']}.",
        "",
        "| point | wall s | tracemalloc current | RSS | events stored |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t, tm, rss, n in rep["samples"]:
        lines.append(f"| {name} | {t:.0f} | {tm:.2f} MB | {rss:.1f} MB | {n:,} |")
    first, last = rep["samples"][1], rep["samples"][-1]
    lines += [
        "",
        f"tracemalloc peak {rep['peak_mb']:.2f} MB. From the first quarter to the end, traced memory moved by "
        f"{last[2] - first[2]:+.2f} MB and RSS by {last[3] - first[3]:+.1f} MB while {last[4] - first[4]:,} more events "
        f"went through. The only state that grows with events is the de-duplication memory: per venue at most "
        f"`dedupe_keys` ({RecorderParams().dedupe_keys:,}) keys and none older than `dedupe_window_s` "
        f"({RecorderParams().dedupe_window_s:.0f} s) of venue time, so it follows the last 10 minutes' event rate "
        f"(higher after a burst) instead of the hour's total; the buffer to the sink is bounded at "
        f"`queue_bound` and stays near empty with a healthy sink. Recorder CPU during the replay "
        f"(server included): {rep['cpu']:.1f} s over {rep['wall']:.0f} s.",
        "",
        f"**Events per second on one core** (medians of {args.repeat} runs):",
        "",
        "| path | events/s |",
        "|---|---:|",
    ]
    for k, v in parse_med.items():
        lines.append(f"| `VenueFeed.parse` only, {k} | {v:,.0f} |")
    for per, runs in e2e.items():
        w = statistics.median(r[0] for r in runs)
        c = statistics.median(r[1] for r in runs)
        lines.append(f"| loopback server -> recorder -> counting sink, bybit {per} event(s)/frame, one thread | "
                     f"{w:,.0f} (wall; {c:,.0f} per CPU second) |")
    store_med = {}
    for per, runs in store_runs.items():
        w = statistics.median(r[0] for r in runs)
        c = statistics.median(r[1] for r in runs)
        store_med[per] = w
        lines.append(f"| loopback server -> recorder -> `TapeStore` (SQLite file, WAL), bybit {per} event(s)/frame, "
                     f"one core ({pinned}) | {w:,.0f} (wall; {c:,.0f} per CPU second) |")
    worst = min(store_med.values())
    lines += [
        "",
        "The end-to-end rows pay for the server's sending and the websocket framing on the same thread, so the "
        "recorder alone is faster than they show. The `TapeStore` rows are the whole path into the database: "
        "20,000 events per run, timed from the first frame until the store has reported every one stored "
        "(`RecorderParams` defaults: batches of up to 500, flushed at least every second), server, recorder and "
        "aiosqlite's thread on one CPU. "
        f"Sustained into SQLite: {worst:,.0f} events/s at the slower frame size, "
        f"{worst / STORE_TARGET:.1f}x the {STORE_TARGET:,.0f} events/s target "
        f"({'met' if worst >= STORE_TARGET else 'NOT met'}). A real cascade at the derived peak is "
        f"{rep['peak_usd'] / MEAN_EVENT_USD / 3600:,.1f} events/s over all three venues.",
    ]
    body = "\n".join(lines)
    print(cal.line() + "\n\n" + body)
    if not args.no_write:
        write_section("tape", "Tape recorder: memory over a replayed hour, events/s", "python -m bench.tape", body, cal)


if __name__ == "__main__":
    main()
