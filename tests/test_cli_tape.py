"""``liqmap tape``, the tape settings and the bot's tape task, with a fake recorder of the documented API."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from analysis.errors import InputError
from analysis.tape.events import Gap, LiquidationEvent
from bot import cli
from bot.settings import load_settings

TAPE_ENV = ("LIQMAP_TAPE", "LIQMAP_TAPE_VENUES", "LIQMAP_TAPE_SYMBOLS", "LIQMAP_TAPE_RETENTION_DAYS",
            "LIQMAP_TAPE_URL_BYBIT", "LIQMAP_TAPE_URL_BINANCE", "LIQMAP_TAPE_URL_OKX", "DATABASE_URL")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in TAPE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIQMAP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)


class Status:
    def __init__(self, connected: bool) -> None:
        self.connected = connected


class FakeRecorder:
    """``Recorder(sink, venues, symbols, *, urls=None, params=None)`` with ``run(stop)`` and ``status()``."""

    made: list["FakeRecorder"] = []

    def __init__(self, sink, venues, symbols, *, urls=None, params=None) -> None:
        self.sink, self.venues, self.symbols, self.urls = sink, tuple(venues), tuple(symbols), urls
        self.stopped = False
        FakeRecorder.made.append(self)

    async def run(self, stop: asyncio.Event) -> None:
        t = int(time.time() * 1000) - 60_000  # a minute ago: inside the retention
        await self.sink.write_events([LiquidationEvent(v, self.symbols[0], t + i, "long", 100.0, 1.0, 100.0,
                                                       v != "bybit", f"k{i}") for i, v in enumerate(self.venues)])
        await stop.wait()
        self.stopped = True

    def status(self):
        return {v: Status(True) for v in self.venues}


@pytest.fixture
def fake_recorder(monkeypatch):
    import bot.tape_store as ts

    FakeRecorder.made.clear()
    monkeypatch.setattr(ts, "default_recorder_factory", lambda: FakeRecorder)
    return FakeRecorder


# -- arguments ----------------------------------------------------------------------------------------

def test_help_names_the_venues_and_their_coverage(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["tape", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "bybit (Bybit: complete" in out and "binance (Binance: sampled" in out and "okx (OKX: sampled" in out
    assert "--duration" in out and "--db" in out and "--symbols" in out and "--venues" in out


@pytest.mark.parametrize("argv, msg", [
    (["--venues", "bybit,ftx"], "unknown tape venue 'ftx'; choose from bybit, binance, okx"),
    (["--symbols", "BTC,b@d"], "--symbols: item 2 is not a symbol"),
    (["--symbols", " , "], "--symbols names no symbol"),
    (["--duration", "0"], "cannot read --duration '0'"),
    (["--duration", "soon"], "cannot read --duration 'soon'"),
    (["--duration", "400d"], "at most 366d"),
    (["--status-every", "0"], "--status-every must be between 1 and 86400"),
    (["--db", "."], "is a directory"),
    (["--db", "postgresql+nosuchdriver://x/y"], "DATABASE_URL"),
])
def test_bad_arguments_exit_2_with_one_clear_line(argv, msg, capsys, fake_recorder):
    assert cli.main(["tape", *argv, "--env-file", "none.env"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1
    assert not fake_recorder.made


def test_a_bad_setting_exits_2_naming_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("LIQMAP_TAPE_URL_OKX", "http://relay.example/ws")
    assert cli.main(["tape", "--duration", "1s"]) == 2
    assert "LIQMAP_TAPE_URL_OKX: Value error, must be a ws:// or wss:// URL" in capsys.readouterr().err


# -- running ------------------------------------------------------------------------------------------

def test_runs_for_the_duration_then_writes_the_stop_gaps(tmp_path, capsys, fake_recorder, monkeypatch):
    monkeypatch.setenv("LIQMAP_TAPE_URL_BYBIT", "ws://127.0.0.1:9/v5/public/linear")
    db = tmp_path / "tape.sqlite3"
    assert cli.main(["tape", "--venues", "bybit, okx", "--symbols", "sol", "--db", str(db),
                     "--duration", "0.3s", "--status-every", "1", "--env-file", "none.env"]) == 0
    err = capsys.readouterr().err
    assert f"tape: recording SOLUSDT from bybit, okx into sqlite+aiosqlite:///{db}" in err
    assert "tape: connected bybit, okx (2/2); 2 new events, 2 gap(s) written" in err  # the final status line
    assert "tape: stopped; 2 new events, 2 gap(s) written, 0 old row(s) pruned" in err
    (rec,) = fake_recorder.made
    assert rec.stopped and rec.venues == ("bybit", "okx") and rec.symbols == ("SOLUSDT",)
    assert rec.urls == {"bybit": "ws://127.0.0.1:9/v5/public/linear"}
    assert [g.reason for g in asyncio.run(_gaps(db))] == ["recorder stopped", "recorder stopped"]


async def _gaps(db) -> list[Gap]:
    from bot.tape_store import TapeStore

    tape = await TapeStore.open(f"sqlite+aiosqlite:///{db}")
    try:
        return await tape.gaps(0, 2**62)
    finally:
        await tape.close()


def test_default_symbols_are_what_the_bot_needs_from_the_same_database(tmp_path, capsys, fake_recorder, monkeypatch):
    from bot.store import Store

    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}"

    async def subscribe() -> None:
        st = await Store.open(url)
        await st.add_skew_alert(1, 2, symbol="DOGE", window="7d", exchange="all", created_by=3)
        await st.close()

    asyncio.run(subscribe())
    monkeypatch.setenv("DATABASE_URL", url)
    assert cli.main(["tape", "--duration", "0.1s", "--env-file", "none.env"]) == 0
    (rec,) = fake_recorder.made
    assert rec.symbols == ("BTCUSDT", "ETHUSDT", "DOGEUSDT") and rec.venues == ("bybit", "binance", "okx")


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_stops_cleanly_with_the_stop_gaps(tmp_path, capsys, fake_recorder):
    db = tmp_path / "t.sqlite3"

    def kill_when_running() -> None:
        for _ in range(500):
            if fake_recorder.made and fake_recorder.made[0].sink.events:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            threading.Event().wait(0.01)

    threading.Thread(target=kill_when_running, daemon=True).start()
    assert cli.main(["tape", "--symbols", "BTC", "--db", str(db), "--duration", "20s", "--env-file", "none.env"]) == 0
    assert fake_recorder.made[0].stopped
    assert len(asyncio.run(_gaps(db))) == 3  # one stop gap per venue
    assert "tape: stopped; 3 new events" in capsys.readouterr().err


# -- settings -----------------------------------------------------------------------------------------

def test_tape_settings_defaults():
    t = load_settings(None).tape
    assert not t.tape_enabled and t.venue_list == ("bybit", "binance", "okx") and t.symbol_list == ()
    assert t.tape_retention_days == 30.0 and t.urls == {}


def test_tape_settings_parse_and_normalise(monkeypatch):
    monkeypatch.setenv("LIQMAP_TAPE", "true")
    monkeypatch.setenv("LIQMAP_TAPE_VENUES", "OKX; bybit okx")
    monkeypatch.setenv("LIQMAP_TAPE_SYMBOLS", "btc, SOL-USDT-SWAP, BTCUSDT")
    monkeypatch.setenv("LIQMAP_TAPE_URL_BINANCE", "wss://relay:s3cret@relay.example:9443/ws")
    s = load_settings(None)
    t = s.tape
    assert t.tape_enabled and t.venue_list == ("okx", "bybit") and t.symbol_list == ("BTCUSDT", "SOLUSDT")
    assert t.urls == {"binance": "wss://relay:s3cret@relay.example:9443/ws"}
    assert "s3cret" not in repr(t) and "s3cret" not in str(s.safe_dict())
    assert s.safe_dict()["tape"]["tape_url_binance"] == "wss://relay:***@relay.example:9443/ws"


@pytest.mark.parametrize("name, value, msg", [
    ("LIQMAP_TAPE_URL_BYBIT", "https://stream.bybit.com", "must be a ws:// or wss:// URL"),
    ("LIQMAP_TAPE_URL_OKX", "wss:///no-host", "must be a ws:// or wss:// URL"),
    ("LIQMAP_TAPE_URL_OKX", "ws://host:99999/x", "not a URL"),
    ("LIQMAP_TAPE_URL_BINANCE", "ws://a b/", "must be a ws:// or wss:// URL"),
    ("LIQMAP_TAPE_VENUES", "bybit,ftx", "item 2 is not a tape venue"),
    ("LIQMAP_TAPE_VENUES", ",", "name at least one of bybit, binance, okx"),
    ("LIQMAP_TAPE_SYMBOLS", "BTC,???", "item 2 is not a symbol"),
    ("LIQMAP_TAPE_SYMBOLS", ",".join(f"A{i}" for i in range(51)), "at most 50 symbols"),
    ("LIQMAP_TAPE_RETENTION_DAYS", "0.5", "greater than or equal to 1"),
    ("LIQMAP_TAPE_RETENTION_DAYS", "nan", "LIQMAP_TAPE_RETENTION_DAYS"),
    ("LIQMAP_TAPE", "maybe", "LIQMAP_TAPE: "),
])
def test_tape_settings_refused_naming_the_variable_not_the_value(monkeypatch, name, value, msg):
    monkeypatch.setenv(name, value)
    with pytest.raises(InputError) as err:
        load_settings(None)
    assert name in str(err.value) and msg in str(err.value)
    if len(value) > 3:
        assert value not in str(err.value)


# -- the bot's task -----------------------------------------------------------------------------------

async def test_the_bot_runs_the_tape_when_enabled_and_stops_it_on_close(tmp_path, fake_recorder):
    from bot_harness import DISCORD_OK, make_harness

    if not DISCORD_OK:
        pytest.skip("discord.py version not pinned for the harness")
    h = await make_harness(tmp_path / "bot.sqlite3", wait_symbols=False, tape_enabled=True, tape_venues="bybit")
    try:
        assert h.bot.start_tape()
        assert not h.bot.start_tape()  # one task
        for _ in range(300):
            await asyncio.sleep(0.01)
            if fake_recorder.made and fake_recorder.made[0].sink.events:
                break
        (rec,) = fake_recorder.made
        assert rec.venues == ("bybit",) and rec.symbols == ("BTCUSDT", "ETHUSDT")
    finally:
        await h.bot.close()
    assert rec.stopped and h.bot.tape_task is None
    from bot.tape_store import TapeStore

    st = await TapeStore.open(f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}")
    try:
        assert [g.reason for g in await st.gaps(0, 2**62)] == ["recorder stopped"]
        assert (await st.counts())[0] == 1
    finally:
        await st.close()


async def test_the_bot_does_not_record_when_the_tape_is_off(tmp_path, fake_recorder):
    from bot_harness import DISCORD_OK, make_harness

    if not DISCORD_OK:
        pytest.skip("discord.py version not pinned for the harness")
    h = await make_harness(tmp_path / "bot.sqlite3", wait_symbols=False)
    try:
        assert not h.bot.start_tape() and h.bot.tape_task is None
    finally:
        await h.bot.close()
    assert not fake_recorder.made


async def test_supervisor_restarts_the_recorder_when_the_needed_symbols_change(tmp_path, fake_recorder):
    from bot.store import Store
    from bot.tape_store import TapeStore, supervise

    st = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'b.sqlite3'}")
    tape = TapeStore(st.engine)
    stop = asyncio.Event()
    task = asyncio.create_task(supervise(tape, stop, venues=["okx"], refresh_s=0.05))
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if fake_recorder.made:
                break
        await st.add_skew_alert(1, 2, symbol="XRP", window="7d", exchange="all", created_by=3)
        for _ in range(300):
            await asyncio.sleep(0.01)
            if len(fake_recorder.made) == 2:
                break
        assert [r.symbols for r in fake_recorder.made] == [("BTCUSDT", "ETHUSDT"), ("BTCUSDT", "ETHUSDT", "XRPUSDT")]
        assert fake_recorder.made[0].stopped
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await st.close()
    assert fake_recorder.made[1].stopped


async def test_supervisor_restarts_a_failed_recorder_after_a_pause(tmp_path, monkeypatch, caplog):
    import bot.tape_store as ts
    from bot.tape_store import TapeStore, supervise

    runs: list[int] = []

    class Failing(FakeRecorder):
        async def run(self, stop):
            runs.append(1)
            raise ConnectionError("feed down")

    monkeypatch.setattr(ts, "default_recorder_factory", lambda: Failing)
    tape = await TapeStore.open(f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite3'}")
    stop = asyncio.Event()
    task = asyncio.create_task(supervise(tape, stop, venues=["bybit"], symbols=["BTCUSDT"], retry_s=0.05))
    try:
        for _ in range(300):
            await asyncio.sleep(0.01)
            if len(runs) >= 2:
                break
        assert len(runs) >= 2 and "the recorder failed; restarting in 0.05 s" in caplog.text
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await tape.close()


async def test_the_dry_run_says_what_the_tape_would_record(tmp_path):
    from bot import app

    on = load_settings(None, source="sample", url=f"sqlite+aiosqlite:///{tmp_path / 'a.sqlite3'}",
                       cache_dir=tmp_path / "cache", tape_enabled=True, tape_venues="okx,bybit")
    _, status = await app.dry_run(on)
    assert "tape: would record BTCUSDT, ETHUSDT from okx, bybit (not started)" in status
    off = load_settings(None, source="sample", url=f"sqlite+aiosqlite:///{tmp_path / 'b.sqlite3'}",
                        cache_dir=tmp_path / "cache")
    _, status = await app.dry_run(off)
    assert any(line.startswith("tape: off") for line in status)


async def test_the_bot_starts_the_tape_in_run_mode_and_stops_it_on_close(tmp_path, fake_recorder, monkeypatch):
    from analysis.report import ReportService
    from analysis.sources.registry import make_sources
    from bot.app import LiqmapBot

    async def no_sync(self):
        return []

    monkeypatch.setattr(LiqmapBot, "sync_commands", no_sync)  # no Discord HTTP here
    settings = load_settings(None, source="sample", url=f"sqlite+aiosqlite:///{tmp_path / 'r.sqlite3'}",
                             cache_dir=tmp_path / "cache", tape_enabled=True, tape_symbols="SOL")
    bot = LiqmapBot(settings, mode="run", service=ReportService(make_sources("sample")))
    async with bot:
        await bot.setup_hook()  # what login runs
        assert bot.tape_task is not None
        for _ in range(300):
            await asyncio.sleep(0.01)
            if fake_recorder.made and fake_recorder.made[0].sink.events:
                break
        (rec,) = fake_recorder.made
        assert rec.symbols == ("SOLUSDT",) and rec.venues == ("bybit", "binance", "okx")
        await bot.close()
        assert rec.stopped and bot.tape_task is None
