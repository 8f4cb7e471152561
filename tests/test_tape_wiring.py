"""The tape wired through: recorder (loopback websocket, documented Binance frames) -> TapeStore
(SQLite file) -> ``liqmap report`` / ``ReportService``; the bot's reader; "no tape recorded"
against "$0 realized" on a real database; one ``--db`` for tape, score and report; a database
migrated by a newer liqmap."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from analysis import numbers
from analysis.tape.events import LiquidationEvent
from bot import cli
from bot.settings import load_settings
from bot.tape_store import TapeRunner, TapeStore
from loopback_ws import LoopbackWS, Peer

from alembic.script import ScriptDirectory
from bot.store import alembic_config

_HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()

HOUR = 3_600_000
DAY = 24 * HOUR
BINANCE = json.loads((Path(__file__).resolve().parent / "fixtures" / "tape" / "binance_force_order.json").read_text())


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    for name in ("DATABASE_URL", "LIQMAP_TAPE", "LIQMAP_TAPE_SYMBOLS", "LIQMAP_TAPE_VENUES", "LIQMAP_SOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIQMAP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)


def binance_frame(t: int, side: str, qty: float, price: float) -> dict[str, Any]:
    """The documented ``forceOrder`` example (tests/fixtures/tape/SOURCES.md) at another time, side, size, price."""
    f = json.loads(json.dumps(BINANCE))
    f["E"] = t + 1
    f["o"].update(S=side, T=t, q=f"{qty:.3f}", z=f"{qty:.3f}", l=f"{qty:.3f}", p=f"{price:.1f}", ap=f"{price:.1f}")
    return f


def fed_frames(end: int) -> tuple[list[dict[str, Any]], float, float]:
    """30 liquidations in the 3 h before ``end``: SELL (a long liquidated) and BUY (a short), and
    the USD totals they make (price x filled quantity, the feed's documented fields)."""
    frames, longs, shorts = [], 0.0, 0.0
    for i in range(30):
        side, qty, price = ("BUY" if i % 3 == 0 else "SELL"), round(0.01 * (i + 1), 3), 60_000.0 + 10 * i
        frames.append(binance_frame(end - 3 * HOUR + i * 1000, side, qty, price))
        if side == "SELL":
            longs += qty * price
        else:
            shorts += qty * price
    return frames, longs, shorts


async def record_through_loopback(db: Path, frames: list[dict[str, Any]], start_wall: int, stop_wall: int) -> None:
    """Run ``TapeRunner`` (the real recorder) against a loopback Binance stream that sends ``frames``,
    until every event is in the database; the runner's wall clock reads ``start_wall`` while it
    records and ``stop_wall`` when it stops (its coverage span runs from one to the other)."""
    async def venue(peer: Peer) -> None:
        for f in frames:
            await peer.send(f)
        await asyncio.sleep(30)  # the connection stays open, quiet

    wall = [start_wall]
    tape = await TapeStore.open(f"sqlite+aiosqlite:///{db}")
    try:
        async with LoopbackWS(venue) as server:
            runner = TapeRunner(tape, ["binance"], ["BTCUSDT"], urls={"binance": server.url}, status_s=3600,
                                wall_ms=lambda: wall[0])
            stop = asyncio.Event()
            task = asyncio.create_task(runner.run(stop))
            async with asyncio.timeout(20):
                while (await tape.counts())[0] < len(frames):
                    assert not task.done()
                    await asyncio.sleep(0.05)
            wall[0] = stop_wall
            stop.set()
            await asyncio.wait_for(task, 15)
    finally:
        await tape.close()


def test_recorder_to_store_to_report_end_to_end(sample_bars, tmp_path, capsys):
    end = int(sample_bars.end_ms)
    frames, longs, shorts = fed_frames(end)
    db = tmp_path / "tape.sqlite3"
    asyncio.run(record_through_loopback(db, frames, end - 25 * HOUR, end + HOUR))

    out = tmp_path / "out"
    assert cli.main(["report", "--source", "sample", "--symbol", "BTC", "--window", "7d", "--db", str(db),
                     "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert f"Realized in the last 24 h: {numbers.usd(longs)} of longs and {numbers.usd(shorts)} of shorts." in summary
    assert "Feeds: Binance sampled (a lower bound)." in summary
    doc = json.loads((out / "liqmap.json").read_text())["realized"]
    assert doc["recorded"] == "full"
    assert doc["venues"]["binance"]["events"] == 30
    assert doc["venues"]["binance"]["long_usd"] == pytest.approx(round(longs, 2))
    assert doc["venues"]["binance"]["short_usd"] == pytest.approx(round(shorts, 2))
    capsys.readouterr()
    plain = tmp_path / "plain"
    assert cli.main(["report", "--source", "sample", "--symbol", "BTC", "--window", "7d", "--db", str(db),
                     "--no-tape", "--out", str(plain)]) == 0
    assert "Realized" not in (plain / "summary.md").read_text()
    assert (plain / "liqmap.png").read_bytes() != (out / "liqmap.png").read_bytes()  # the strip

    async def service_report():
        from analysis.report import ReportService
        from analysis.sources import SampleSource

        tape = await TapeStore.open(f"sqlite+aiosqlite:///{db}", migrate=False)
        try:
            return await ReportService({"binance": SampleSource()}, tape=tape).report("BTC", "7d")
        finally:
            await tape.close()

    rep = asyncio.run(service_report())
    assert rep.realized is not None and len(rep.realized.events) == 30
    assert rep.realized.long_usd == pytest.approx(longs) and rep.realized.short_usd == pytest.approx(shorts)


async def _write_tape(db: Path, *, events: list[LiquidationEvent] = (), spans: list[tuple[int, int]] = ()) -> None:
    tape = await TapeStore.open(f"sqlite+aiosqlite:///{db}")
    try:
        await tape.write_events(events)
        for lo, hi in spans:
            await tape.open_coverage(["binance"], ["BTCUSDT"], lo)
            await tape.extend_coverage(["binance"], lo, hi)
    finally:
        await tape.close()


def test_no_tape_recorded_and_zero_realized_are_told_apart_on_a_real_database(sample_bars, tmp_path):
    end = int(sample_bars.end_ms)
    quiet, never = tmp_path / "quiet.sqlite3", tmp_path / "never.sqlite3"
    asyncio.run(_write_tape(quiet, spans=[(end - 30 * HOUR, end + HOUR)]))  # recording the whole day, nothing happened
    asyncio.run(_write_tape(never, spans=[(end - 3 * DAY, end - 2 * DAY)]))  # a tape, but not in this window
    docs, texts, pngs = {}, {}, {}
    for name, db in (("quiet", quiet), ("never", never)):
        out = tmp_path / name
        assert cli.main(["report", "--source", "sample", "--window", "7d", "--db", str(db), "--out", str(out)]) == 0
        docs[name] = json.loads((out / "liqmap.json").read_text())["realized"]
        texts[name], pngs[name] = (out / "summary.md").read_text(), (out / "liqmap.png").read_bytes()
    assert ("Realized in the last 24 h: $0 of longs and $0 of shorts: the tape was recording and no liquidation "
            "came in.") in texts["quiet"]
    assert "no tape recorded for BTC" in texts["never"] and "$0 of longs" not in texts["never"]
    assert docs["quiet"]["recorded"] == "full" and docs["quiet"]["venues"]["binance"]["recorded_minutes"] == 1440.0
    assert docs["never"]["recorded"] == "none" and docs["never"]["venues"]["binance"]["recorded_minutes"] == 0.0
    plain = tmp_path / "plain"
    assert cli.main(["report", "--source", "sample", "--window", "7d", "--no-tape", "--out", str(plain)]) == 0
    assert pngs["never"] == (plain / "liqmap.png").read_bytes()  # nothing recorded: no strip, nothing claimed
    assert pngs["quiet"] != pngs["never"]  # recorded: a strip reading $0


# -- liqmap report --db ------------------------------------------------------------------------------

def test_report_reads_the_default_database_only_when_it_holds_a_tape_and_never_creates_it(sample_bars, tmp_path,
                                                                                          monkeypatch, capsys):
    default = tmp_path / "data" / "liqmap.sqlite3"
    out = tmp_path / "a"
    assert cli.main(["report", "--source", "sample", "--window", "7d", "--out", str(out)]) == 0
    assert "Realized" not in (out / "summary.md").read_text() and not default.exists()
    end = int(sample_bars.end_ms)
    asyncio.run(_write_tape(default, spans=[(end - 30 * HOUR, end + HOUR)]))  # `liqmap tape` recorded into it
    assert cli.main(["report", "--source", "sample", "--window", "7d", "--out", str(out)]) == 0
    assert "the tape was recording and no liquidation came in" in (out / "summary.md").read_text()
    other = tmp_path / "other.sqlite3"
    asyncio.run(_write_tape(other, spans=[(end - 30 * HOUR, end + HOUR)]))
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{other}")  # the same variable as tape and score
    default.unlink()
    assert cli.main(["report", "--source", "sample", "--window", "7d", "--out", str(out)]) == 0
    assert "the tape was recording" in (out / "summary.md").read_text()


def test_report_db_refuses_a_missing_file_and_an_older_schema_clearly(tmp_path, capsys):
    missing = tmp_path / "nope.sqlite3"
    assert cli.main(["report", "--source", "sample", "--db", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --db ") and "no such database file" in err and "Traceback" not in err
    assert not missing.exists()

    async def older(db: Path) -> None:
        tape = await TapeStore.open(f"sqlite+aiosqlite:///{db}")
        async with tape.engine.begin() as conn:
            await conn.execute(text("drop table tape_coverage"))
            await conn.execute(text("update alembic_version set version_num = '0007_cluster_alerts'"))
        await tape.close()

    old = tmp_path / "old.sqlite3"
    asyncio.run(older(old))
    assert cli.main(["report", "--source", "sample", "--db", str(old), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"is at revision 0007_cluster_alerts, older than this liqmap (head {_HEAD})" in err


def test_a_default_database_that_cannot_be_opened_is_a_warning_for_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", "postgresql+nosuchdriver://u:pw@127.0.0.1/db")
    out = tmp_path / "o"
    assert cli.main(["report", "--source", "sample", "--window", "1d", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: DATABASE_URL names an unknown database kind" in err and "realized liquidations left out" in err
    assert "pw" not in err and "Realized" not in (out / "summary.md").read_text()
    assert cli.main(["report", "--source", "sample", "--window", "1d", "--db",
                     "postgresql+nosuchdriver://u:pw@127.0.0.1/db", "--out", str(out)]) == 2  # asked for: an error


def test_tape_score_and_report_share_one_db_option():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = {}
    for name in ("tape", "score", "report"):
        (db,) = [a for a in sub.choices[name]._actions if "--db" in a.option_strings]
        assert db.metavar == "URL_OR_FILE" and db.default is None
        helps[name] = db.help.split(": a database URL", 1)[1].split(". ", 1)[0]
    assert len(set(helps.values())) == 1 and "DATABASE_URL" in helps["tape"] and "data directory" in helps["tape"]


def test_score_reads_db_as_a_file_or_url_like_tape(sample_bars, tmp_path, monkeypatch, capsys):
    seen: list[str] = []

    async def fake_open(url):
        seen.append(url)
        raise cli.InputError("stop here")

    monkeypatch.setattr(cli, "_open_tape", fake_open)
    assert cli.main(["score", "--days", "3", "--source", "sample", "--boot", "10", "--db", "t.sqlite3"]) == 2
    assert cli.main(["score", "--days", "3", "--source", "sample", "--boot", "10"]) == 2
    assert seen == [f"sqlite+aiosqlite:///{(tmp_path / 't.sqlite3').resolve()}",
                    f"sqlite+aiosqlite:///{tmp_path / 'data' / 'liqmap.sqlite3'}"]


# -- a database of a newer liqmap ------------------------------------------------------------------

def _newer(db: Path) -> None:
    async def go() -> None:
        tape = await TapeStore.open(f"sqlite+aiosqlite:///{db}")
        async with tape.engine.begin() as conn:
            await conn.execute(text("update alembic_version set version_num = '0042_from_the_future'"))
        await tape.close()

    asyncio.run(go())


@pytest.mark.parametrize("argv", [
    ["tape", "--duration", "1s", "--symbols", "BTC"],
    ["score", "--days", "3", "--source", "sample", "--boot", "10"],
    ["report", "--source", "sample", "--out", "o"],
    ["bot", "--dry-run"],
])
@pytest.mark.parametrize("how", ["--db", "DATABASE_URL"])
def test_a_database_of_a_newer_liqmap_is_one_clear_error(argv, how, tmp_path, monkeypatch, capsys):
    db = tmp_path / "new.sqlite3"
    _newer(db)
    if how == "--db" and argv[0] != "bot":
        argv = [*argv, "--db", str(db)]
    else:
        monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{db}")
    monkeypatch.setenv("LIQMAP_SOURCE", "sample")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: the database at {db.resolve()} is at revision 0042_from_the_future, newer than this "
                       f"liqmap (head {_HEAD}); upgrade liqmap")
    assert not any("Traceback" in line for line in err)


# -- the bot reads the tape --------------------------------------------------------------------------

async def _bot(tmp_path: Path, db: Path, **tape: Any):
    from analysis.report import ReportService
    from analysis.sources.registry import make_sources
    from bot.app import LiqmapBot

    settings = load_settings(None, source="sample", url=f"sqlite+aiosqlite:///{db}", cache_dir=tmp_path / "cache", **tape)
    return LiqmapBot(settings, mode="dry-run", service=ReportService(make_sources("sample")))


async def test_the_bot_reads_the_tape_when_it_records_it(tmp_path):
    bot = await _bot(tmp_path, tmp_path / "on.sqlite3", tape_enabled=True)
    async with bot:
        await bot.setup_hook()
        assert isinstance(bot.tape, TapeStore) and bot.service.tape is bot.tape
        assert bot.tape.engine is bot.store.engine  # the store's engine, not a second pool


async def test_the_bot_without_any_tape_leaves_reports_as_they_were(tmp_path):
    bot = await _bot(tmp_path, tmp_path / "off.sqlite3")
    async with bot:
        await bot.setup_hook()
        assert bot.tape is None and bot.service.tape is None
        rep = await bot.service.report("BTC", "7d")
        assert rep.realized is None and "Realized" not in rep.summary


async def test_the_bot_reads_a_tape_a_standalone_recorder_writes_and_daily_reports_carry_it(sample_bars, tmp_path):
    from bot.app import _tape_status
    from bot.scheduler import _daily_text

    end = int(sample_bars.end_ms)
    db = tmp_path / "shared.sqlite3"
    evs = [LiquidationEvent("binance", "BTCUSDT", end - HOUR - i, "long", 60_000.0, 0.5, 30_000.0, True, f"k{i}")
           for i in range(4)]
    await _write_tape(db, events=evs, spans=[(end - 30 * HOUR, end + HOUR)])
    bot = await _bot(tmp_path, db)  # LIQMAP_TAPE off: `liqmap tape` records, the bot reads
    async with bot:
        await bot.setup_hook()
        assert isinstance(bot.tape, TapeStore) and bot.service.tape is bot.tape
        assert "read the tape `liqmap tape` records" in await _tape_status(bot)
        rep = await bot.service.report("BTC", "7d")
        line = "Realized in the last 24 h: $120K of longs and $0 of shorts."
        assert rep.realized is not None and line in rep.summary
        assert line in _daily_text(rep) and line in _daily_text(rep, rep.reading)


async def test_the_bot_finds_a_tape_a_recorder_starts_later(sample_bars, tmp_path):
    db = tmp_path / "later.sqlite3"
    bot = await _bot(tmp_path, db)
    async with bot:
        await bot.setup_hook()
        assert bot.tape is None
        watch = asyncio.create_task(bot.watch_for_tape(interval_s=0.01))
        await asyncio.sleep(0.05)
        assert not watch.done() and bot.tape is None  # still nothing recorded: keeps looking
        end = int(sample_bars.end_ms)
        tape = TapeStore(bot.store.engine)
        await tape.open_coverage(["binance"], ["BTCUSDT"], end - 30 * HOUR)  # `liqmap tape` starts
        await asyncio.wait_for(watch, 5)
        assert isinstance(bot.tape, TapeStore) and bot.service.tape is bot.tape
