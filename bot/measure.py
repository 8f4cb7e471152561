"""``liqmap measure``: track Hyperliquid positions, draw the measured map, score the estimate against it.

Three subcommands (``bot/cli.py`` wires them):

* ``track``: discover accounts (trades stream + documented lists) and poll them within the budget
  for ``--duration``; writes ``positions.json`` (the snapshot), ``measured.png`` and ``measured.json``;
* ``map``: the measured map of a ``positions.json``;
* ``compare``: the estimated map (through the source registry: :func:`estimated_map`, the one seam
  to the Hyperliquid venue) scored against the measured one; writes ``compare.png``,
  ``compare.json`` and ``measured.png``, prints the scores.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from analysis.errors import InputError
from analysis.symbols import parse_symbol

if TYPE_CHECKING:
    from analysis.liqmap import LiquidationMap
    from analysis.measured.snapshot import Snapshot

__all__ = ["run_track", "run_map", "run_compare", "estimated_map", "MAX_POSITIONS_BYTES", "ESTIMATE_VENUE"]

#: the largest positions.json read (a million positions is about 300 MB; 10,000 accounts far less)
MAX_POSITIONS_BYTES = 256 * 1024 * 1024
#: the venue whose estimated map is compared by default
ESTIMATE_VENUE = "hyperliquid"
#: tests replace the network here (an httpx.MockTransport)
TRANSPORT: httpx.AsyncBaseTransport | None = None


def coins_of(symbols: list[str]) -> list[str]:
    """Hyperliquid coin names (``BTC``) of what the user typed (``BTC``, ``BTCUSDT``, ``BTC/USDC``)."""
    return list(dict.fromkeys(parse_symbol(s).base for s in symbols))


def _write(out: Path, files: dict[str, bytes | str]) -> list[str]:
    from bot.cli import _check_output

    for name in files:
        _check_output(out / name)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            path = out / name
            if isinstance(data, bytes):
                path.write_bytes(data)
            else:
                path.write_text(data, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write to {out}: {exc.strerror or exc}") from None
    return [str(out / n) for n in files]


def read_positions(path: Path) -> Snapshot:
    """A positions.json written by ``liqmap measure track``; anything else is one InputError."""
    from analysis.files import read_regular
    from analysis.measured.snapshot import from_json

    try:
        raw = read_regular(path, MAX_POSITIONS_BYTES)
    except FileNotFoundError:
        raise InputError(f"--positions {path}: no such file (write one with liqmap measure track)") from None
    except OSError as exc:
        raise InputError(f"--positions {path}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(f"--positions {path}: {exc}") from None
    try:
        doc = json.loads(raw)
    except ValueError:
        raise InputError(f"--positions {path}: not JSON") from None
    return from_json(doc)


def snapshot_coin(snap: Snapshot, symbol: str) -> str:
    """The coin of ``symbol`` as the positions file spells it; InputError naming what it has."""
    from analysis.measured.shapes import resolve_coin

    coin = resolve_coin(parse_symbol(symbol).base, snap.coins)
    if coin is None:
        raise InputError(f"--symbol {symbol}: the positions file tracks {', '.join(snap.coins)}")
    return coin


def measured_files(snap: Snapshot, coin: str, theme: str) -> tuple[LiquidationMap, dict[str, bytes | str], list[str]]:
    from analysis import chart
    from analysis.measured.measured_map import build_measured
    from analysis.metrics import read

    m = build_measured(snap, coin)
    reading = read(m)
    png = chart.render(m, reading, theme=theme)
    lines = [f"{coin}: {note}" for note in m.notes]
    return m, {"measured.png": png, "measured.json": json.dumps(m.to_json(), indent=1) + "\n"}, lines


# -- track -----------------------------------------------------------------------------------------

def save_positions(snap: Snapshot, path: Path) -> None:
    """Write positions.json atomically (a checkpoint during a long run, and the final file)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(snap.to_json()) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None


async def track(coins: list[str], duration: float, *, max_addresses: int, share: float, info_url: str, ws_url: str,
                seed: bool, status_s: float, checkpoint: Path | None = None, save_s: float = 300.0) -> Snapshot:
    from analysis.measured.budget import WeightBudget
    from analysis.measured.info import InfoClient
    from analysis.measured.stream import TradesStream
    from analysis.measured.tracker import HLP_VAULT, Tracker, TrackerParams

    async with httpx.AsyncClient(transport=TRANSPORT, timeout=10.0) as client:
        budget = WeightBudget(share=share)
        info = InfoClient(client, url=info_url, budget=budget)
        tracker = Tracker(info, coins, params=TrackerParams(
            max_addresses=max_addresses, seed_vaults=(HLP_VAULT,) if seed else (), seed_recent_trades=seed))
        await tracker.refresh_ctxs()  # an unknown coin or an unreachable venue fails here, before anything runs
        stream = TradesStream(tracker.coins, tracker.discovered, url=ws_url)  # Hyperliquid's spelling (kPEPE)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
                pass
        loop.call_later(duration, stop.set)

        async def status() -> None:
            saved = loop.time()
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), status_s)
                except asyncio.TimeoutError:
                    pass
                snap = tracker.snapshot()
                if checkpoint is not None and loop.time() - saved >= save_s and tracker.ctx_ms:
                    save_positions(snap, checkpoint)  # a long run keeps what it saw so far
                    saved = loop.time()
                s = snap.accounts
                print(f"measure: {s['tracked']:,} accounts, {s['polls']:,} polls, {s['with_positions']:,} with positions, "
                      f"weight {budget.spent()}/{budget.capacity} in the last minute, stream "
                      f"{'up' if stream.status.connected else 'down'}"
                      f"{'' if not tracker.last_error else ', last error: ' + tracker.last_error[:120]}",
                      file=sys.stderr, flush=True)

        reporter = asyncio.ensure_future(status())
        try:
            await tracker.run(stop, stream_run=stream.run)
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        if tracker.ctx_ms == 0:
            await tracker.refresh_ctxs()
        return tracker.snapshot()


def run_track(args: Any) -> int:
    from bot.cli import _seconds

    coins = coins_of(args.symbol or ["BTC"])
    duration = _seconds(args.duration, "--duration")
    if not (isinstance(args.max_addresses, int) and 1 <= args.max_addresses <= 1_000_000):
        raise InputError("--max-addresses must be between 1 and 1,000,000")
    if not (0 < args.budget_share <= 1):
        raise InputError(f"--budget-share must be in (0, 1], not {args.budget_share:g}")
    if not str(args.info_url).startswith(("https://", "http://")):
        raise InputError("--info-url must be an http(s):// URL")
    if not str(args.ws_url).startswith(("wss://", "ws://")):
        raise InputError("--ws-url must be a ws(s):// URL")
    if not (1 <= args.status_every <= 86400):
        raise InputError(f"--status-every must be between 1 and 86400 seconds, not {args.status_every:g}")
    from bot.cli import _check_output

    _check_output(args.out / "positions.json")
    snap = asyncio.run(track(coins, duration, max_addresses=args.max_addresses, share=args.budget_share,
                             info_url=args.info_url, ws_url=args.ws_url, seed=not args.no_seed,
                             status_s=args.status_every, checkpoint=args.out / "positions.json"))
    files: dict[str, bytes | str] = {"positions.json": json.dumps(snap.to_json()) + "\n"}
    lines = []
    for coin in snap.coins:
        _, f, ls = measured_files(snap, coin, args.theme)
        files.update({(k if len(snap.coins) == 1 else f"{coin}-{k}"): v for k, v in f.items()})
        lines += ls
    written = _write(args.out, files)
    print("\n".join(lines))
    print(f"\n{snap.accounts.get('polls', 0):,} polls of {snap.accounts.get('tracked', 0):,} accounts, "
          f"weight {snap.accounts.get('weight', 0):,}; wrote " + ", ".join(written))
    return 0


# -- map ---------------------------------------------------------------------------------------------

def run_map(args: Any) -> int:
    snap = read_positions(args.positions)
    _, files, lines = measured_files(snap, snapshot_coin(snap, args.symbol), args.theme)
    written = _write(args.out, files)
    print("\n".join(lines))
    print("\nwrote " + ", ".join(written))
    return 0


# -- compare -----------------------------------------------------------------------------------------

async def estimated_map(sources: dict[str, Any], venue: str, symbol: str, window: str, params: Any) -> LiquidationMap:
    """THE SEAM to the Hyperliquid venue: the estimated map of ``venue`` through the source registry
    (``--source``), exactly as ``liqmap report --exchange <venue>`` builds it. Once the registry
    has a ``hyperliquid`` source, the default ``--exchange hyperliquid`` just works; until then any
    venue of the source (``--exchange binance``) can stand in, and the chart names it."""
    from analysis.report import ReportService
    from analysis.windows import WINDOWS

    if venue not in sources:
        have = ", ".join(sorted(sources)) or "none"
        hint = (" (the Hyperliquid venue, candles and OI history, is not in this source yet; "
                "compare another venue's estimate with --exchange, e.g. binance)") if venue == ESTIMATE_VENUE else ""
        raise InputError(f"--exchange {venue}: the source has no {venue} venue; it has {have}{hint}")
    service = ReportService({venue: sources[venue]}, params=params)
    m, _missing = await service.maps(symbol, WINDOWS[window], (venue,))
    if m.kind != "estimated":
        raise InputError(f"--exchange {venue} serves a {m.kind} map, not an estimate; choose an estimating venue")
    return m


def run_compare(args: Any) -> int:
    from analysis.measured.compare import compare_maps
    from analysis.measured.compare_chart import render_compare
    from analysis.sources.registry import aclose_sources
    from bot.settings import build_sources, load_settings, model_params

    snap = read_positions(args.positions)
    pair = parse_symbol(args.symbol)
    measured, files, _ = measured_files(snap, snapshot_coin(snap, args.symbol), args.theme)
    settings = load_settings(args.env_file, **({"source": args.source} if args.source is not None else {}))
    params = model_params(settings.sources, args.overrides)
    sources = build_sources(settings)

    async def build() -> LiquidationMap:
        try:
            return await estimated_map(sources, args.exchange, pair.symbol, args.window, params)
        finally:
            await aclose_sources(sources)

    est = asyncio.run(build())
    cmp = compare_maps(est, measured, model=params)
    files = {"compare.png": render_compare(est, measured, cmp, theme_name=args.theme),
             "compare.json": json.dumps(cmp.to_json(), indent=1) + "\n", **files}
    written = _write(args.out, files)
    print("\n".join(cmp.lines()))
    if args.exchange != ESTIMATE_VENUE:
        print(f"note: the estimate is {args.exchange}'s, not Hyperliquid's: a stand-in until the Hyperliquid venue exists")
    print("\nwrote " + ", ".join(written))
    return 0
