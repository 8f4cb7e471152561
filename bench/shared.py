"""Shared work across processes (``python -m bench.shared``): N OS processes, one Redis, one key built once.

Starts a real ``redis-server`` on 127.0.0.1 (a free port, no disk, ``maxmemory`` with
``allkeys-lru``), then N worker processes (``multiprocessing``, spawn), each with its own
:class:`~analysis.report.ReportService` over the bundled sample, counting its source fetches and its
renders. Behind a barrier they all ask for the same keys at once (each key several times
concurrently, as several users of several shards would), first without a shared layer, then with
:class:`~analysis.sharing.RedisLayer`. Then the budget: each process takes tokens from one venue
limiter, alone and shared. Skips cleanly (exit 0, nothing written) without a ``redis-server``
binary or the ``redis`` package.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from .calibrate import Calibration
from .doc import write_section

NAME = "shared"
TITLE = "Shared work across processes: Redis, N processes, one key built once"
COMMAND = "python -m bench.shared"
KEYS = (("BTCUSDT", "1d", "dark"), ("BTCUSDT", "7d", "dark"), ("BTCUSDT", "7d", "light"), ("BTCUSDT", "30d", "dark"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(binary: str, port: int, workdir: str) -> subprocess.Popen[bytes]:
    """``redis-server`` on 127.0.0.1:``port``, ready (answers PING) or stopped and raised."""
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    proc.wait(5)
    raise RuntimeError("redis-server did not answer PING within 10 s")


class Counting:
    """A source that counts its fetches (bars calls) around the bundled sample."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.fetches = 0

    async def symbols(self) -> list[str]:
        return await self.inner.symbols()

    async def bars(self, symbol: str, window: Any) -> Any:
        self.fetches += 1
        return await self.inner.bars(symbol, window)


async def _work(url: str | None, repeats: int, prefix: str) -> dict[str, Any]:
    from analysis.report import ReportService
    from analysis.sharing import RedisLayer
    from analysis.sources.registry import make_sources

    src = Counting(make_sources("sample")["binance"])
    layer = RedisLayer(url, prefix=prefix, timeout_s=2.0) if url else None
    svc = ReportService({"binance": src}, ttl=600, shared=layer)
    t0 = time.perf_counter()
    c0 = time.process_time()
    reps = await asyncio.gather(*(svc.report(sym, win, "all", theme) for sym, win, theme in KEYS for _ in range(repeats)))
    out = {"fetches": src.fetches, "renders": svc.computations, "wall_s": time.perf_counter() - t0,
           "cpu_s": time.process_time() - c0,
           "pngs": sorted({(k, hashlib.sha256(r.png).hexdigest()) for k, r in zip(
               [k for k in KEYS for _ in range(repeats)], reps)}),
           "builds": getattr(layer, "builds", 0), "waits": getattr(layer, "waits", 0), "hits": getattr(layer, "hits", 0),
           "fallbacks": getattr(layer, "fallbacks", 0), "healthy": getattr(layer, "healthy", None)}
    if layer is not None:
        await layer.aclose()
    return out


async def _budget(url: str | None, tokens: int, rate: float, burst: int, prefix: str) -> dict[str, Any]:
    from analysis.sharing import RedisLayer
    from analysis.sources.http import RateLimiter

    limiter = RateLimiter(rate, burst)
    layer = RedisLayer(url, prefix=prefix, timeout_s=2.0) if url else None
    if layer is not None:
        limiter.share(layer.budget("bench.limiter"))
    t0 = time.perf_counter()
    for _ in range(tokens):
        await limiter.acquire(1)
    out = {"wall_s": time.perf_counter() - t0}
    if layer is not None:
        await layer.aclose()
    return out


def worker(kind: str, url: str | None, arg: dict[str, Any], barrier: Any, results: Any) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib  # noqa: F401  (imported before the barrier: the timed part is the work)

    import analysis.chart  # noqa: F401

    barrier.wait()
    if kind == "reports":
        results.put(asyncio.run(_work(url, arg["repeats"], arg["prefix"])))
    else:
        results.put(asyncio.run(_budget(url, arg["tokens"], arg["rate"], arg["burst"], arg["prefix"])))


def run_round(n: int, kind: str, url: str | None, arg: dict[str, Any]) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(kind, url, arg, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(30)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=COMMAND)
    ap.add_argument("--processes", type=int, default=3, help="worker processes (at least 2)")
    ap.add_argument("--repeats", type=int, default=5, help="concurrent requests per key in each process")
    ap.add_argument("--runs", type=int, default=3, help="rounds with Redis (medians reported)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    n = max(2, args.processes)
    binary = shutil.which("redis-server")
    try:
        import redis  # noqa: F401
    except ImportError:
        print("skipped: the redis package is not installed (pip install 'liqmap[redis]')")
        return 0
    if binary is None:
        print("skipped: no redis-server binary on PATH (e.g. apt-get install redis-server)")
        return 0
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()[2:3]
    cal = Calibration()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        try:
            server = start_redis(binary, port, tmp)
        except (OSError, RuntimeError) as exc:
            print(f"skipped: could not start redis-server ({exc})")
            return 0
        url = f"redis://127.0.0.1:{port}/0"
        try:
            alone = run_round(n, "reports", None, {"repeats": args.repeats, "prefix": "alone"})
            shared = [run_round(n, "reports", url, {"repeats": args.repeats, "prefix": f"run{i}"})
                      for i in range(args.runs)]
            budget = {"tokens": 40, "rate": 50.0, "burst": 10, "prefix": "budget"}
            b_alone = run_round(n, "budget", None, budget)
            b_shared = run_round(n, "budget", url, budget)
        finally:
            server.terminate()
            server.wait(10)
    cal.finish()

    keys = len(KEYS)
    asked = n * keys * args.repeats

    def row(label: str, rounds: list[list[dict[str, Any]]]) -> str:
        fetches = [sum(w["fetches"] for w in r) for r in rounds]
        renders = [sum(w["renders"] for w in r) for r in rounds]
        wall = statistics.median(max(w["wall_s"] for w in r) for r in rounds)
        cpu = statistics.median(sum(w["cpu_s"] for w in r) for r in rounds)
        per = f"{max(renders) / keys:g}" if min(renders) == max(renders) else f"{min(renders) / keys:g}-{max(renders) / keys:g}"
        return (f"| {label} | {asked} | {min(fetches)}-{max(fetches)} | {min(renders)}-{max(renders)} | {per} "
                f"| {wall:.2f} s | {cpu:.2f} s |")

    waits = sum(w["waits"] for r in shared for w in r)
    hits = sum(w["hits"] for r in shared for w in r)
    builds = sum(w["builds"] for r in shared for w in r)
    falls = sum(w["fallbacks"] for r in shared for w in r)
    same_png = all(len({tuple(p) for w in r for p in w["pngs"]}) == keys for r in shared)
    t_alone = statistics.median(w["wall_s"] for w in b_alone)
    t_shared = max(w["wall_s"] for w in b_shared)
    ideal = (n * budget["tokens"] - budget["burst"]) / budget["rate"]
    body = "\n".join([
        f"{n} worker processes (multiprocessing, spawn) on this machine, one `redis-server` "
        f"{version[0].removeprefix('v=') if version else ''} on 127.0.0.1 (apt's Debian package; no disk, "
        "`maxmemory 256mb`, `allkeys-lru`). Each process has its own `ReportService` over the bundled sample "
        f"(source fetches counted) and, behind a barrier, asks for the same {keys} keys (BTCUSDT 1d, 7d dark and "
        f"light, 30d) {args.repeats} times each, concurrently: {asked} requests per round. Without Redis each process "
        "builds every key itself; with `LIQMAP_REDIS_URL` (analysis.sharing.RedisLayer) one process builds a key "
        "while the others wait for it. Wall is the slowest process of a round, CPU the sum of the processes' "
        f"own CPU (median of rounds; {args.runs} rounds with Redis, 1 without). The 7d dark and light reports "
        "share one merged map (its own shared key, also what the skew check's reading-only path reads), so "
        "a process fetches 3 maps for the 4 keys; builds count the reports and the maps.",
        "",
        "| shared layer | requests | fetches | renders | renders per key | wall | CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
        row("none (each process alone)", [alone]),
        row("Redis", shared),
        "",
        f"With Redis, over all rounds: {builds} builds, {waits} processes waited for another's build, {hits} "
        f"values read from Redis, {falls} fallbacks to building locally; in every round all processes got "
        f"byte-identical PNGs for each key (SHA-256): "
        f"{'yes' if same_png else 'no'}.",
        "",
        f"Budget: one venue limiter of {budget['rate']:g} tokens/s, burst {budget['burst']}; each of the {n} processes "
        f"takes {budget['tokens']} tokens. Alone, each process has its own bucket: {t_alone:.2f} s (median), so "
        f"together they spend {n}x the budget. Shared in Redis: the last process finishes after {t_shared:.2f} s "
        f"(one bucket for all: ({n} x {budget['tokens']} - {budget['burst']}) / {budget['rate']:g} = {ideal:.2f} s).",
    ])
    print(body)
    if not args.no_write:
        write_section(NAME, TITLE, COMMAND, body, cal)
        print("\nwrote docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
