"""The ``liqmap`` console script.

Each subcommand is an ``_add_<name>`` (arguments) and ``_run_<name>`` (work) pair registered in
``COMMANDS``. A :class:`~analysis.errors.LiqmapError` becomes a one-line ``error: ...`` on stderr and
its ``exit_code``: 2 for bad input or configuration, 75 (EX_TEMPFAIL) for
:class:`~analysis.errors.Unavailable` (database or Discord unreachable at start: a service manager
restarts the bot). Anything else is a bug, logged with its traceback and an error id (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import stat
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn, TextIO, cast

from analysis.errors import InputError, LiqmapError
from analysis.options import STACKS, THEMES, VIEWS
from analysis.venues import EXCHANGES, LIVE_VENUES
from analysis.windows import WINDOWS

if TYPE_CHECKING:
    from analysis.tape.events import TapeReader
    from bot.tape_store import TapeStore

log = logging.getLogger("liqmap")


def _choice(text: str) -> str:
    """Option values are matched case-insensitively (``7D``, `` Binance ``)."""
    return str(text).strip().lower()


class Progress:
    """A one-line progress reporter on stderr, rewritten in place; silent unless stderr is a terminal.

    Passed down to analysis as a plain ``Callable[[str], None]``; :meth:`done` clears the line.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.enabled = bool(self.stream.isatty())
        except (AttributeError, ValueError, OSError):  # a closed or odd stream: stay silent
            self.enabled = False
        self._shown = 0

    def __call__(self, line: str) -> None:
        if not self.enabled:
            return
        text = "liqmap: " + " ".join(str(line).split())[:90] + " …"
        self._write("\r" + text + " " * max(0, self._shown - len(text)))
        self._shown = len(text)

    def done(self) -> None:
        """Clear the line (before results or an error are printed)."""
        if self.enabled and self._shown:
            self._write("\r" + " " * self._shown + "\r")
            self._shown = 0

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False


def _progress() -> Progress:
    return Progress()


# -- report ------------------------------------------------------------------------------------------

def _add_report(sub: argparse._SubParsersAction) -> None:
    from analysis.sources.registry import SOURCE_HELP

    p = sub.add_parser("report", help="build a liquidation map and write liqmap.png, summary.md and liqmap.json")
    p.add_argument("--symbol", default="BTCUSDT", help="BTC, BTCUSDT, BTC/USDT or BTC-USDT-SWAP (default BTCUSDT)")
    p.add_argument("--window", default="7d", type=_choice, choices=tuple(WINDOWS),
                   help="lookback of open-interest flow (default 7d)")
    p.add_argument("--source", default=None,
                   help=f"where bars come from: {SOURCE_HELP} (default LIQMAP_SOURCE, else live)")
    p.add_argument("--exchange", default="all", type=_choice, choices=EXCHANGES,
                   help="all, or one venue of the source (default all; coinglass needs COINGLASS_API_KEY)")
    p.add_argument("--theme", default="dark", type=_choice, choices=THEMES, help="chart theme (default dark)")
    p.add_argument("--stack", default="tier", type=_choice, choices=STACKS,
                   help="stack bars by leverage tier or by exchange (default tier)")
    p.add_argument("--view", default="map", type=_choice, choices=VIEWS,
                   help="map (liqmap.png), heatmap over the window (heatmap.png) or both (default map)")
    p.add_argument("--out", required=True, type=Path,
                   help="directory to write into: liqmap.png and/or heatmap.png, summary.md, liqmap.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one model parameter, as liqmap backtest --set does (repeatable; applied after "
                        "LIQMAP_MODEL; see docs/methodology.md)")
    p.add_argument("--since", default=None, metavar="FILE|DIR|last",
                   help="also say what changed since an earlier report: its liqmap.json, the directory it was "
                        "written to, or 'last' for the liqmap.json already in --out (summary.md gains the section, "
                        "liqmap.json a \"change\" object)")
    _add_db(p, "the realized-liquidation tape drawn beside the estimate (the last 24 h, as a strip under the map, "
               "dots on the heatmap and lines in the text)",
            "Without --db the default database is read only when it exists and holds a tape; it is never created "
            "or migrated here")
    p.add_argument("--no-tape", action="store_true", help="leave the realized-liquidation tape out")
    p.add_argument("--env-file", default=".env", help="settings file read besides the environment, as the bot reads "
                                                      "it (default .env)")


def _add_db(p: argparse.ArgumentParser, what: str, more: str = "") -> None:
    """``--db``, the same for ``tape``, ``score`` and ``report``: a URL or a SQLite file, default
    ``DATABASE_URL``, else the SQLite file in the data directory (the bot's database)."""
    p.add_argument("--db", default=None, metavar="URL_OR_FILE",
                   help=f"{what}: a database URL (sqlite+aiosqlite:///FILE, postgresql+asyncpg://...) or a SQLite "
                        "file (default DATABASE_URL, else liqmap.sqlite3 in the data directory: the bot's database)"
                        + (f". {more}" if more else ""))


#: the largest earlier liqmap.json --since reads (a 50,000-bin map's is about 10 MB)
MAX_SINCE_BYTES = 32 * 1024 * 1024


def _since_path(since: str, out: Path) -> Path:
    """The earlier liqmap.json ``--since`` names: a file, a report directory, or ``last`` (in ``out``)."""
    path = out / "liqmap.json" if since == "last" else Path(since)
    try:
        if path.is_dir():
            path = path / "liqmap.json"
    except OSError:
        pass  # reported by _read_since with the reason
    return path


def _read_since(path: Path, symbol: str):
    """The reading recorded in an earlier report's liqmap.json; anything else is one InputError."""
    from analysis.files import read_regular
    from analysis.readings import loads_json, record_of_report

    what = f"--since {path}"
    try:
        raw = read_regular(path, MAX_SINCE_BYTES)
    except FileNotFoundError:
        raise InputError(f"{what}: no such file (give an earlier report's liqmap.json or its directory)") from None
    except OSError as exc:
        raise InputError(f"{what}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(f"{what}: {exc}") from None
    doc = loads_json(raw, f"report {path}", MAX_SINCE_BYTES)
    previous = record_of_report(doc, f"report {path}")
    if previous.symbol != symbol:
        raise InputError(f"{what} is a report for {previous.symbol[:32]!r}, not {symbol}")
    return previous


def _run_report(args: argparse.Namespace) -> int:
    from analysis import commentary
    from analysis.report import ReportService
    from analysis.sources.registry import aclose_sources
    from bot.settings import build_sources, load_settings, model_params

    out: Path = args.out
    pictures = {"map": ("liqmap.png",), "heatmap": ("heatmap.png",), "both": ("liqmap.png", "heatmap.png")}[args.view]
    for name in (*pictures, "summary.md", "liqmap.json"):
        _check_output(out / name)
    previous = None
    if args.since is not None:
        from analysis.symbols import parse_symbol

        # read before anything is written: --since last names the liqmap.json this run replaces
        previous = _read_since(_since_path(args.since, out), parse_symbol(args.symbol).symbol)
    # the bot's settings (.env included): LIQMAP_SOURCE, LIQMAP_CACHE_DIR, COINGLASS_API_KEY, LIQMAP_MODEL
    settings = load_settings(args.env_file, **({"source": args.source} if args.source is not None else {}))
    params = model_params(settings.sources, args.overrides)
    progress = _progress()
    sources = build_sources(settings)

    async def build():
        tape = None
        try:
            tape = None if args.no_tape else await _report_tape(args.db, settings.database.url)
            service = ReportService(sources, params=params, tape=tape)
            rep = await service.report(args.symbol, args.window, args.exchange, args.theme, args.stack, progress=progress)
            heat = None
            if "heatmap.png" in pictures:
                heat = (await service.heatmap(args.symbol, args.window, args.exchange, args.theme, progress=progress))[0]
            return rep, heat
        finally:
            await aclose_sources(sources)
            if tape is not None:
                await tape.close()

    try:
        rep, heat = asyncio.run(build())
    finally:
        progress.done()
    doc = rep.to_json()
    body = rep.summary
    if previous is not None:
        from analysis.change import compare

        body += "\n\n" + commentary.change(previous, rep.reading, rep.map)
        doc["change"] = compare(previous, rep.reading, rep.map.path).to_json()
    text = f"{body}\n\n{commentary.footer(rep.map)}"  # a file has no embed footer: carry provenance inline
    try:
        out.mkdir(parents=True, exist_ok=True)
        if "liqmap.png" in pictures:
            (out / "liqmap.png").write_bytes(rep.png)
        if heat is not None:
            (out / "heatmap.png").write_bytes(heat)
        (out / "summary.md").write_text(text + "\n", encoding="utf-8")
        (out / "liqmap.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write to {out}: {exc.strerror or exc}") from None
    print(text)
    print("\nwrote " + ", ".join(str(out / name) for name in (*pictures, "summary.md", "liqmap.json")))
    return 0


async def _open_db_tape(url: str, *, migrate: bool = True) -> TapeStore:
    """``TapeStore.open(url)`` with a start-up failure as one clear error (``bot.app.database_error``);
    a database of a newer liqmap is refused by the store itself (``bot.schema``)."""
    from bot.app import database_error
    from bot.tape_store import TapeStore

    try:
        return await TapeStore.open(url, migrate=migrate)
    except LiqmapError:
        raise
    except Exception as exc:
        mapped = database_error(exc, url)
        if mapped is None:
            raise
        raise mapped from None


async def _report_tape(db: str | None, default_url: str) -> TapeStore | None:
    """The tape ``liqmap report`` draws, opened read-only (never created or migrated here).

    ``--db`` given: that database, which must exist and be at this liqmap's schema (else one
    clear error); one without any tape is kept, so the text says "no tape recorded". Without
    ``--db``: the default database when it exists and holds a tape, else none (the report is then
    exactly as without a tape); a default database that cannot be opened (unreachable, no driver)
    is a warning, not a failure, but one of a newer liqmap is the one clear error every command gives.
    """
    explicit = db is not None and bool(db.strip())
    url = _tape_db(db, default_url)
    shown = f"--db {db.strip()}" if explicit and db is not None else "the default database"
    path = _sqlite_path(url)
    if path is not None and not path.exists():  # decided before SQLAlchemy is imported (a fast sample report)
        if explicit:
            raise InputError(f"{shown}: no such database file {path}; record a tape first (liqmap tape --db ...)")
        return None
    from bot.schema import NewerDatabase, check_engine, head_revision, location

    try:
        tape = await _open_db_tape(url, migrate=False)
    except NewerDatabase:
        raise  # a newer liqmap's database: said even for the default, as every command says it
    except LiqmapError as exc:
        if explicit:
            raise
        print(f"warning: {_one_line(exc)}; realized liquidations left out", file=sys.stderr)
        return None
    try:
        rev, head = await check_engine(tape.engine), head_revision()
        if rev != head:
            if explicit:
                raise InputError(f"the database at {location(tape.engine.url)} is at revision {rev or 'none'}, older "
                                 f"than this liqmap (head {head}); run liqmap tape or the bot once to migrate it")
            await tape.close()
            return None
        if not explicit and not await tape.has_tape():
            await tape.close()
            return None
    except BaseException:
        await tape.close()
        raise
    return tape


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (``sqlite[+driver]:///FILE[?query]``; None for another database or
    an in-memory one). Read without SQLAlchemy: a report without a tape never imports it."""
    scheme, sep, rest = url.partition(":///")
    if not sep or scheme.split("+", 1)[0].lower() != "sqlite":
        return None
    name = rest.split("?", 1)[0]
    if not name or name == ":memory:":
        return None
    return Path(name).expanduser()  # sqlite:///rel.db is relative, sqlite:////abs.db absolute (as SQLAlchemy reads them)


def _check_output(path: Path) -> None:
    """Refuse an output path that exists and is not a regular file (writing to a FIFO would block)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"cannot write {path}: it exists and is not a regular file")


def _check_input(path: Path, what: str) -> None:
    """Refuse an input path that is not a regular file before anything opens it (a FIFO would block)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"no such file: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path} is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path} is not a regular file; {what} must be one")


# -- record ------------------------------------------------------------------------------------------

def _add_record(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="save the raw venue responses behind a report, for offline replay (--source recorded:DIR)")
    p.add_argument("--symbol", default="BTCUSDT", help="BTC, BTCUSDT, BTC/USDT or BTC-USDT-SWAP (default BTCUSDT)")
    p.add_argument("--window", default="1d", type=_choice, choices=tuple(WINDOWS), help="lookback (default 1d)")
    p.add_argument("--exchange", default="all", type=_choice, choices=("all", *LIVE_VENUES),
                   help="all, or one live venue (default all)")
    p.add_argument("--out", required=True, type=Path, help="an empty directory for the responses and manifest.json")
    p.add_argument("--env-file", default=".env", help="settings file read besides the environment, as the bot reads "
                                                      "it (default .env)")


def _run_record(args: argparse.Namespace) -> int:
    from analysis.sources.registry import record
    from bot.settings import load_settings

    load_settings(args.env_file)  # the same settings as report and the bot: a bad .env fails here too
    progress = _progress()
    try:  # a recording starts from an empty in-memory cache on purpose (every page a cold report needs)
        lines = asyncio.run(record(args.symbol, args.window, args.exchange, args.out, progress=progress))
    finally:
        progress.done()
    print("\n".join(lines))
    return 0


# -- bot / sync-commands ---------------------------------------------------------------------------

def _add_bot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bot", help="run the Discord bot (settings from the environment and .env; see .env.example)")
    p.add_argument("--dry-run", action="store_true",
                   help="start everything except the Discord connection (settings, database and migrations, "
                        "dispatcher, command tree), print the command definitions as JSON and exit; needs no token")
    p.add_argument("--env-file", default=".env", help="settings file read besides the environment (default .env)")


def _run_bot(args: argparse.Namespace) -> int:
    from bot import app
    from bot.settings import load_settings

    settings = load_settings(args.env_file)
    if args.dry_run:
        progress = _progress()
        progress("dry run: database, dispatcher, command tree and a sample report")
        try:
            defs, status = asyncio.run(app.dry_run(settings))
        finally:
            progress.done()
        for line in status:
            print(line, file=sys.stderr)
        print(json.dumps(defs, indent=1, ensure_ascii=False))
        return 0
    asyncio.run(app.run(settings))  # logging: INFO by default for the service (main -> bot.logs)
    return 0


def _add_sync_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sync-commands", help="push the slash-command definitions to Discord now (HTTP only, no gateway)")
    p.add_argument("--guild", type=int, default=None, metavar="ID",
                   help="sync to this server only (instant) instead of globally")
    p.add_argument("--env-file", default=".env", help="settings file read besides the environment (default .env)")


def _run_sync_commands(args: argparse.Namespace) -> int:
    from bot import app
    from bot.settings import load_settings

    if args.guild is not None and args.guild <= 0:
        raise InputError(f"--guild must be a server id, not {args.guild}")
    for line in asyncio.run(app.sync_commands(load_settings(args.env_file), guild_id=args.guild)):
        print(line)
    return 0


# -- health ------------------------------------------------------------------------------------------

def _add_health(sub: argparse._SubParsersAction) -> None:
    from bot.health import DEFAULT_MAX_AGE_S

    p = sub.add_parser("health", help="exit 0 if the bot's dispatcher wrote its heartbeat recently, else 1 "
                                      "(for a container HEALTHCHECK or a monitor)")
    p.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE_S, metavar="SECONDS",
                   help=f"oldest acceptable heartbeat (default {DEFAULT_MAX_AGE_S:g})")


def _run_health(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from analysis.paths import heartbeat_path
    from bot.health import check

    if not args.max_age > 0:
        raise InputError(f"--max-age must be a positive number of seconds, not {args.max_age}")
    result = check(heartbeat_path(create=False), datetime.now(timezone.utc), args.max_age)
    print(result.reason, file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


# -- tape --------------------------------------------------------------------------------------------

def _tape_venues_help() -> str:
    from analysis.tape.events import FEED_SAMPLED, feed_coverage
    from analysis.venues import display_name

    notes = {"bybit": "every liquidation", "binance": "at most one per symbol per second", "okx": "not every order is pushed"}
    return "; ".join(f"{v} ({display_name(v)}: {feed_coverage(v)}, {notes.get(v, '')})".replace(", )", ")")
                     for v in FEED_SAMPLED)


def _add_tape(sub: argparse._SubParsersAction) -> None:
    from analysis.tape.events import FEED_SAMPLED

    venues = ",".join(FEED_SAMPLED)
    p = sub.add_parser(
        "tape", help="record realized liquidations from the Bybit, Binance and OKX public feeds into the database "
                     "(standalone; the bot can run the same recorder with LIQMAP_TAPE=true)",
        description="Record the realized-liquidation feeds into the database (the same tables the bot reads), "
                    f"until SIGINT/SIGTERM or --duration. Venues: {_tape_venues_help()}. A sampled feed's figures "
                    "are lower bounds. Spans without a connection are stored as gaps.",
    )
    p.add_argument("--venues", default=None, help=f"comma-separated, from {venues} (default LIQMAP_TAPE_VENUES, else all)")
    p.add_argument("--symbols", default=None,
                   help="comma-separated tickers, e.g. BTC,ETH,SOL (default LIQMAP_TAPE_SYMBOLS, else BTC, ETH and "
                        "the symbols of the bot's active daily reports and alerts in the database)")
    _add_db(p, "where the tape is recorded")
    p.add_argument("--duration", default=None, help="stop after this long, e.g. 90s, 10m, 2h, 1d (default: until stopped)")
    p.add_argument("--status-every", type=float, default=60.0, metavar="SECONDS",
                   help="print a status line to stderr this often (default 60)")
    p.add_argument("--env-file", default=".env", help="settings file read besides the environment (default .env)")


def _seconds(text: str, what: str) -> float:
    import math
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text).lower())
    value = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)] if m else math.nan
    if not (0 < value <= 366 * 86400):
        raise InputError(f"cannot read {what} {str(text)[:20]!r}; write e.g. 90s, 10m, 2h or 1d (at most 366d)")
    return value


def _tape_db(text: str | None, default: str) -> str:
    if text is None or not text.strip():
        return default
    raw = text.strip()
    if "://" in raw:
        return raw
    path = Path(raw).expanduser()
    if path.is_dir():
        raise InputError(f"--db {path} is a directory; name a SQLite file or a database URL")
    if path.exists() and not path.is_file():
        raise InputError(f"--db {path} is not a regular file")
    return f"sqlite+aiosqlite:///{path.resolve()}"


def _run_tape(args: argparse.Namespace) -> int:
    import signal

    from bot.settings import load_settings, parse_tape_symbols
    from bot.tape_store import parse_venues

    if not (1 <= args.status_every <= 86400):
        raise InputError(f"--status-every must be between 1 and 86400 seconds, not {args.status_every:g}")
    duration = _seconds(args.duration, "--duration") if args.duration is not None else None
    settings = load_settings(args.env_file)
    venues = parse_venues(args.venues if args.venues is not None else settings.tape.venue_list)
    symbols: tuple[str, ...] = ()
    if args.symbols is not None:
        try:
            symbols = parse_tape_symbols(args.symbols)
        except ValueError as exc:
            raise InputError(f"--symbols: {exc}") from None
        if not symbols:
            raise InputError("--symbols names no symbol; write e.g. BTC,ETH")
    symbols = symbols or settings.tape.symbol_list
    url = _tape_db(args.db, settings.database.url)

    async def main() -> int:
        from bot.tape_store import TapeRunner, needed_symbols

        tape = await _open_db_tape(url)
        try:
            syms = symbols or await needed_symbols(tape.engine)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, stop.set)
                except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
                    pass
            if duration is not None:
                loop.call_later(duration, stop.set)

            def status(line: str) -> None:
                print(line, file=sys.stderr, flush=True)

            runner = TapeRunner(tape, venues, syms, urls=settings.tape.urls, retention_days=settings.tape.tape_retention_days,
                                status=status, status_s=args.status_every)
            print(f"tape: recording {', '.join(syms)} from {', '.join(venues)} into {_tape_location(tape)}",
                  file=sys.stderr, flush=True)
            await runner.run(stop)
            print(f"tape: stopped; {runner.sink.events} new events, {runner.sink.gaps} gap(s) written, "
                  f"{runner.pruned} old row(s) pruned", file=sys.stderr, flush=True)
        finally:
            await tape.close()
        return 0

    return asyncio.run(main())


def _tape_location(tape: TapeStore) -> str:
    return tape.engine.url.render_as_string(hide_password=True)


# -- poll-oi -----------------------------------------------------------------------------------------

def _add_poll_oi(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "poll-oi", help="record Hyperliquid open interest into the database (Hyperliquid serves no OI history; "
                        "its estimated maps need what this records; the bot does the same with LIQMAP_HL_OI=1)",
        description="Poll Hyperliquid's metaAndAssetCtxs (weight 20 of the documented 1200 per minute) every "
                    "--interval seconds and store each kept coin's open interest and mark price, until "
                    "SIGINT/SIGTERM or --duration. Snapshots older than 35 days are pruned.",
    )
    p.add_argument("--symbols", default=None,
                   help="comma-separated tickers, e.g. BTC,ETH,kPEPE (default LIQMAP_HL_OI_SYMBOLS, else the top 50 "
                        "coins by open-interest notional at each snapshot)")
    p.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                   help="seconds between snapshots, 5..3600 (default LIQMAP_HL_OI_INTERVAL, else 60)")
    p.add_argument("--db", default=None, metavar="URL_OR_FILE",
                   help="database URL or a SQLite file (default DATABASE_URL, else the bot's SQLite file)")
    p.add_argument("--duration", default=None, help="stop after this long, e.g. 90s, 10m, 2h, 1d (default: until stopped)")
    p.add_argument("--status-every", type=int, default=10, metavar="POLLS",
                   help="print a status line to stderr every this many polls (default 10)")
    p.add_argument("--env-file", default=".env", help="settings file read besides the environment (default .env)")


def _run_poll_oi(args: argparse.Namespace) -> int:
    import dataclasses
    import signal

    from bot.settings import load_settings, parse_tape_symbols

    if not (1 <= args.status_every <= 100_000):
        raise InputError(f"--status-every must be between 1 and 100000 polls, not {args.status_every}")
    duration = _seconds(args.duration, "--duration") if args.duration is not None else None
    settings = load_settings(args.env_file)
    params = settings.tape.hl_oi_params
    if args.symbols is not None:
        try:
            symbols = parse_tape_symbols(args.symbols)
        except ValueError as exc:
            raise InputError(f"--symbols: {exc}") from None
        if not symbols:
            raise InputError("--symbols names no symbol; write e.g. BTC,ETH")
        params = dataclasses.replace(params, symbols=symbols)
    if args.interval is not None:
        params = dataclasses.replace(params, interval_s=args.interval)  # checked by OiPollParams
    url = _tape_db(args.db, settings.database.url)

    async def main() -> int:
        from analysis.sources.hyperliquid import HyperliquidSource
        from bot.app import database_error
        from bot.hl_oi_store import HlOiStore

        try:
            store = await HlOiStore.open(url)
        except LiqmapError:
            raise
        except Exception as exc:
            mapped = database_error(exc, url)
            if mapped is None:
                raise
            raise mapped from None
        source = HyperliquidSource()
        try:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, stop.set)
                except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
                    pass
            if duration is not None:
                loop.call_later(duration, stop.set)

            def status(line: str) -> None:
                print(line, file=sys.stderr, flush=True)

            what = ", ".join(params.symbols) if params.symbols else f"the top {params.top_n} coins by OI notional"
            where = store.engine.url.render_as_string(hide_password=True)
            print(f"hyperliquid oi: recording {what} every {params.interval_s:g} s into {where}", file=sys.stderr, flush=True)
            from analysis.sources.hyperliquid_oi import OiPoller

            poller = OiPoller(source, store, params, status=status, status_every=args.status_every)
            await poller.run(stop)
        finally:
            await source.aclose()
            await store.close()
        return 0

    return asyncio.run(main())


# -- backtest ----------------------------------------------------------------------------------------

def _add_backtest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backtest",
        help="score the model's swept notional per bar against realized liquidations (see docs/methodology.md)",
    )
    p.add_argument("--data", required=True, type=Path,
                   help="CSV in the format of btc-realized-liquidations-1h-dev.csv (bars, OI, realized long/short)")
    p.add_argument("--warmup", default="7d", help="leading span that only builds positions, e.g. 7d, 36h, 0 (default 7d)")
    p.add_argument("--symbol", default="BTCUSDT", help="symbol of the file, picks the margin table (default BTCUSDT)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--png", type=Path, default=None, help="also draw realized vs model (time and scatter) to this PNG")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples for the intervals (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one model parameter, e.g. --set holding_days=0 (repeatable; see docs/methodology.md)")


def _run_backtest(args: argparse.Namespace) -> int:
    from analysis.backtest import load_history, params_with, parse_duration, render_png, run_backtest
    from analysis.symbols import parse_symbol

    if not (1 <= args.boot <= 100_000):
        raise InputError(f"--boot must be between 1 and 100000, not {args.boot}")
    if not (0 <= args.seed < 2**63):
        raise InputError(f"--seed must be between 0 and 2**63-1, not {str(args.seed)[:24]}")
    params = params_with(args.overrides)
    parse_duration(args.warmup)  # fail before reading the file
    _check_input(args.data, "CSV file")
    if args.png is not None:
        _check_output(args.png)
    progress = _progress()
    png: bytes | None = None
    try:
        progress(f"reading {args.data.name}")
        hist = load_history(args.data, symbol=parse_symbol(args.symbol).symbol)
        result = run_backtest(hist, params, warmup=args.warmup, n_boot=args.boot, seed=args.seed, progress=progress)
        if args.png is not None:
            progress("rendering the plots")
            png = render_png(result)
    finally:
        progress.done()
    if args.png is not None and png is not None:
        try:
            args.png.write_bytes(png)
        except OSError as exc:
            raise InputError(f"cannot write {args.png}: {exc.strerror or exc}") from None
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(result.table())
        if args.png is not None:
            print(f"\nwrote {args.png}")
    return 0


# -- score -------------------------------------------------------------------------------------------

def _add_score(sub: argparse._SubParsersAction) -> None:
    from analysis.sources.registry import SOURCE_HELP

    p = sub.add_parser(
        "score",
        help="the live accuracy score: the map's swept estimate per hour against liqmap's own liquidation tape, "
             "per venue (see docs/methodology.md, 'Live score')",
    )
    p.add_argument("--days", type=int, default=7, help="hours of the last N days are scored (1-23; default 7)")
    p.add_argument("--symbol", default="BTCUSDT", help="BTC, BTCUSDT, BTC/USDT or BTC-USDT-SWAP (default BTCUSDT)")
    p.add_argument("--exchange", default="all", type=_choice, choices=EXCHANGES,
                   help="all, or one venue of the source (default all)")
    p.add_argument("--source", default=None,
                   help=f"where bars come from: {SOURCE_HELP} (default LIQMAP_SOURCE, else live)")
    _add_db(p, "the tape to score against")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples for the intervals (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--env-file", default=".env", help="settings file read besides the environment, as the bot reads "
                                                      "it (default .env)")


async def _open_tape(url: str | None) -> TapeReader:
    """The tape's database reader (``bot.tape_store.TapeStore.open``), imported only when a score is
    asked for; tests replace this function with an in-memory reader."""
    import importlib

    try:
        getattr(importlib.import_module("bot.tape_store"), "TapeStore")
    except (ImportError, AttributeError):
        raise InputError("this liqmap has no tape database reader (bot.tape_store); the score needs the "
                         "tape that liqmap tape or the bot records") from None
    return cast("TapeReader", await _open_db_tape(url or _tape_db(None, _default_url())))


def _default_url() -> str:
    from bot.settings import default_database_url

    return default_database_url()


async def _close_tape(reader: object) -> None:
    for name in ("aclose", "close", "dispose"):
        close = getattr(reader, name, None)
        if callable(close):
            res = close()
            if asyncio.iscoroutine(res):
                await res
            return


def _run_score(args: argparse.Namespace) -> int:
    from analysis.report import ReportService
    from analysis.sources.registry import aclose_sources
    from analysis.symbols import parse_symbol
    from analysis.tape.score import DAY_MS, HOUR_MS, ScoreParams, latest_score_path, live_score, read_hourly, \
        write_latest
    from analysis.windows import WINDOWS
    from bot.settings import build_sources, load_settings, model_params

    params = ScoreParams(n_boot=args.boot, seed=args.seed)
    window = WINDOWS["30d"]
    most = int(window.duration_ms / DAY_MS - params.warmup_days)
    if not (1 <= args.days <= most):
        raise InputError(f"--days must be between 1 and {most} (the {window.label} of bars minus a "
                         f"{params.warmup_days:g}-day warm-up), not {args.days}")
    if not (1 <= args.boot <= 100_000):
        raise InputError(f"--boot must be between 1 and 100000, not {args.boot}")
    if not (0 <= args.seed < 2**63):
        raise InputError(f"--seed must be between 0 and 2**63-1, not {str(args.seed)[:24]}")
    symbol = parse_symbol(args.symbol).symbol
    settings = load_settings(args.env_file, **({"source": args.source} if args.source is not None else {}))
    model = model_params(settings.sources)
    url = _tape_db(args.db, settings.database.url)  # as liqmap tape and liqmap report read --db
    progress = _progress()
    sources = build_sources(settings)

    async def build():
        try:
            service = ReportService(sources, params=model, ttl=0)
            venues = service.resolve_venues(args.exchange)
            bars, missing = {}, {}
            for venue in venues:
                progress(f"fetching {venue} {symbol} {window.label}")
                try:
                    bars[venue] = await sources[venue].bars(symbol, window)
                except LiqmapError as exc:
                    missing[venue] = " ".join(str(exc).split())[:200]
            if not bars:
                raise InputError(f"no bars for {symbol}: " + "; ".join(f"{v}: {w}" for v, w in missing.items()))
        finally:
            await aclose_sources(sources)
        now_ms = int(time.time() * 1000)
        end = min(min(int(b.end_ms) for b in bars.values()), now_ms) // HOUR_MS * HOUR_MS
        start = end - args.days * DAY_MS
        reader = await _open_tape(url)
        try:
            progress("reading the liquidation tape")
            tapes = await read_hourly(reader, symbol, tuple(bars), start, end, chunk_hours=params.chunk_hours)
            gaps = await reader.gaps(start, end, tuple(bars))
        finally:
            await _close_tape(reader)
        progress("scoring")
        result = await asyncio.to_thread(live_score, symbol, args.days, bars, tapes, gaps, start, end,
                                         params=params, model=model, now_ms=now_ms)
        return result, missing

    try:
        result, missing = asyncio.run(build())
    finally:
        progress.done()
    for venue, why in missing.items():
        result.skipped.setdefault(venue, f"bars unavailable: {why}")
    try:
        path = latest_score_path()
        write_latest(result, path)
        saved = f"wrote {path}"
    except InputError as exc:
        saved = f"warning: {exc}"
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(result.table())
    print(saved, file=sys.stderr)
    return 0


# -- measure ---------------------------------------------------------------------------------------

def _add_measure(sub: argparse._SubParsersAction) -> None:
    from analysis.sources.registry import SOURCE_HELP

    p = sub.add_parser(
        "measure", help="Hyperliquid's real positions: track them, draw the measured map, score the estimate against it",
        description="The measured layer (docs/methodology.md, Measured positions and Model against measurement). "
                    "track: discover accounts from the public trades stream and documented lists, poll their "
                    "positions within Hyperliquid's rate limit, write positions.json and the measured map. map: the "
                    "measured map of a positions.json. compare: the estimated map's shape scored against the measured "
                    "one, with a naive baseline.",
    )
    msub = p.add_subparsers(dest="measure_command", required=True, metavar="SUBCOMMAND", parser_class=type(p))
    t = msub.add_parser("track", help="discover and poll accounts for --duration; write positions.json, measured.png, "
                                      "measured.json")
    t.add_argument("--symbol", action="append", default=None, help="coin to track, e.g. BTC (repeatable; default BTC)")
    t.add_argument("--duration", default="10m", help="how long to track, e.g. 90s, 10m, 2h (default 10m)")
    t.add_argument("--max-addresses", type=int, default=10_000, help="accounts kept at most (default 10,000)")
    t.add_argument("--budget-share", type=float, default=0.8,
                   help="share of the IP's 1200 weight a minute to use (default 0.8)")
    t.add_argument("--no-seed", action="store_true", help="do not read recentTrades and the HLP vault's accounts at start")
    t.add_argument("--status-every", type=float, default=30.0, metavar="SECONDS",
                   help="status line interval (default 30); positions.json is also saved every 5 minutes")
    t.add_argument("--info-url", default="https://api.hyperliquid.xyz/info", help=argparse.SUPPRESS)
    t.add_argument("--ws-url", default="wss://api.hyperliquid.xyz/ws", help=argparse.SUPPRESS)
    m = msub.add_parser("map", help="the measured map of a positions.json: measured.png, measured.json")
    c = msub.add_parser("compare", help="score the estimated map's shape against the measured one: compare.png, "
                                        "compare.json, measured.png")
    for q in (m, c):
        q.add_argument("--positions", required=True, type=Path, help="a positions.json written by liqmap measure track")
        q.add_argument("--symbol", default="BTC", help="the coin, e.g. BTC (default BTC)")
    c.add_argument("--source", default=None, help=f"where the estimate's bars come from: {SOURCE_HELP} "
                                                   "(default LIQMAP_SOURCE, else live)")
    c.add_argument("--exchange", default="hyperliquid", type=_choice,
                   help="the venue whose estimated map is scored (default hyperliquid)")
    c.add_argument("--window", default="7d", type=_choice, choices=tuple(WINDOWS), help="the estimate's window (default 7d)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one model parameter (repeatable)")
    c.add_argument("--env-file", default=".env", help="settings file read besides the environment (default .env)")
    for q in (t, m, c):
        q.add_argument("--theme", default="dark", type=_choice, choices=THEMES, help="chart theme (default dark)")
        q.add_argument("--out", required=True, type=Path, help="directory to write into")
        q.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)


def _run_measure(args: argparse.Namespace) -> int:
    from bot import measure

    run = {"track": measure.run_track, "map": measure.run_map, "compare": measure.run_compare}[args.measure_command]
    return run(args)


COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Callable[[argparse.Namespace], int]]] = {
    "report": (_add_report, _run_report),
    "record": (_add_record, _run_record),
    "bot": (_add_bot, _run_bot),
    "sync-commands": (_add_sync_commands, _run_sync_commands),
    "backtest": (_add_backtest, _run_backtest),
    "health": (_add_health, _run_health),
    "tape": (_add_tape, _run_tape),
    "poll-oi": (_add_poll_oi, _run_poll_oi),
    "score": (_add_score, _run_score),
    "measure": (_add_measure, _run_measure),
}


def _version() -> str:
    """The installed distribution's version (package metadata), or a note when run from a bare tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("liqmap")
    except PackageNotFoundError:
        return "unknown (not installed)"


class UsageError(Exception):
    """A command line argparse refused; :func:`main` shows it as one ``error:`` line (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


_VERBOSE_HELP = "log debug detail to stderr"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="liqmap", description="Estimated liquidation maps for crypto perpetuals.")
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    parser.add_argument("--version", action="version", version=f"liqmap {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add, _ in COMMANDS.values():
        add(sub)
    for command in sub.choices.values():  # -v after the subcommand too; SUPPRESS keeps a -v given before it
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    """LIQMAP_LOG_LEVEL / LIQMAP_LOG_FORMAT (bot.logs): INFO for the running bot, WARNING otherwise."""
    from bot import logs

    service = args.command in ("bot", "tape", "poll-oi") and not getattr(args, "dry_run", False)
    logs.configure(verbose=args.verbose, service=service)


def _one_line(exc: LiqmapError) -> str:
    """The error's text as one line (messages may quote outside text with newlines), bounded."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 1000 else text[:999] + "…"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``liqmap`` script; returns the process exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _, run = COMMANDS[args.command]
    try:
        _configure_logging(args)
        return run(args)
    except LiqmapError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `liqmap backtest | head`): not an error of ours
        try:  # silence the final flush of the dead pipe at interpreter exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass
        return 0
    except Exception:  # a bug: keep the traceback in the log, give the user an id to quote
        error_id = uuid.uuid4().hex[:8]
        log.exception("unexpected error %s", error_id)
        print(f"error: unexpected internal error (id {error_id}); please report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
