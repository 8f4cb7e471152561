"""The CLI's failure paths: one ``error:`` line, exit 2 for bad input, 75 for try-again-later."""

from __future__ import annotations

import json
import os
import socket

import pytest

from analysis.errors import EX_TEMPFAIL, InputError, LiqmapError, Unavailable
from bot.cli import main

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GhIjKl.very-secret-token-value"
ENV_NAMES = (
    "DISCORD_TOKEN", "DEV_GUILD_ID", "DATABASE_URL", "LIQMAP_SOURCE", "COINGLASS_API_KEY", "LIQMAP_CACHE_DIR",
    "LIQMAP_DAILY_GRACE_MINUTES", "LIQMAP_WATCH_INTERVAL_MINUTES", "LIQMAP_GUILD_SUBSCRIPTION_CAP",
    "LIQMAP_REPORT_TTL_SECONDS", "LIQMAP_REPORT_CACHE_MB", "LIQMAP_COOLDOWN_USES", "LIQMAP_COOLDOWN_SECONDS",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIQMAP_CACHE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)


def one_error(capsys, code: int, expected: int, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == expected, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "unexpected internal error" not in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_error_classes_carry_their_exit_codes():
    assert LiqmapError("x").exit_code == InputError("x").exit_code == 2
    assert Unavailable("x").exit_code == EX_TEMPFAIL == 75


def test_a_multi_line_message_is_printed_as_one_line(monkeypatch, capsys):
    import bot.cli as cli

    def refuse(args):
        raise InputError("first\nsecond\r\nthird")

    add, _ = cli.COMMANDS["report"]
    monkeypatch.setitem(cli.COMMANDS, "report", (add, refuse))
    one_error(capsys, main(["report", "--out", "x"]), 2, "first second third")


# -- settings files ---------------------------------------------------------------------------------

def test_env_file_that_is_not_utf8(tmp_path, capsys):
    env = tmp_path / "bad.env"
    env.write_bytes(b"LIQMAP_SOURCE=sample\nDISCORD_TOKEN=\xff\xfe" + TOKEN.encode() + b"\n")
    line = one_error(capsys, main(["bot", "--dry-run", "--env-file", str(env)]), 2, "not UTF-8 text (line 2)")
    assert TOKEN not in line


def test_env_file_that_is_a_fifo_does_not_block(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.env")
    one_error(capsys, main(["bot", "--dry-run", "--env-file", str(tmp_path / "fifo.env")]), 2, "not a regular file")


def test_env_file_that_is_a_directory_or_huge(tmp_path, capsys):
    (tmp_path / "dir.env").mkdir()
    one_error(capsys, main(["sync-commands", "--env-file", str(tmp_path / "dir.env")]), 2, "not a regular file")
    (tmp_path / "big.env").write_bytes(b"#" * (2 * 1024 * 1024))
    one_error(capsys, main(["bot", "--dry-run", "--env-file", str(tmp_path / "big.env")]), 2, "at most 1048576")


def test_report_reads_the_bots_settings_so_a_bad_dotenv_is_one_clear_error(tmp_path, capsys):
    (tmp_path / ".env").write_bytes(b"COINGLASS_API_KEY=\xff\n")
    code = main(["report", "--source", "sample", "--window", "1d", "--out", str(tmp_path / "o"),
                 "--env-file", str(tmp_path / ".env")])
    line = one_error(capsys, code, 2, "not UTF-8")
    assert "\xff" not in line and not (tmp_path / "o").exists()


# -- the database at start --------------------------------------------------------------------------

def dry_run_with(tmp_path, url: str) -> list[str]:
    env = tmp_path / "db.env"
    env.write_text(f"LIQMAP_SOURCE=sample\nDATABASE_URL={url}\n")
    return ["bot", "--dry-run", "--env-file", str(env)]


@pytest.mark.parametrize(
    "url, fragments",
    [
        ("foo://bar", ("unknown database kind 'foo'",)),
        (":::", ("is not a database URL",)),
        ("sqlite:///x.db", ("is not an asyncio driver",)),
        ("sqlite+aiosqlite:////nonexistent-dir/deeper/x.db", ("cannot open the SQLite database", "directory exists")),
    ],
    ids=["unknown-kind", "not-a-url", "sync-driver", "sqlite-dir-missing"],
)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_bad_database_url_is_exit_2(tmp_path, capsys, url, fragments):
    import threading

    one_error(capsys, main(dry_run_with(tmp_path, url)), 2, *fragments)
    # aiosqlite's worker of the failed connection reports to the finished event loop as it ends
    # (bot/store.py's engine; harmless in the CLI, whose process exits): let it end inside this test.
    for t in threading.enumerate():
        if "connection_worker" in t.name:
            t.join(10)


def test_missing_postgres_driver_says_what_to_install(tmp_path, capsys):
    pytest.importorskip("sqlalchemy")
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("asyncpg is installed here")
    url = "postgresql+asyncpg://liqmap:pg-secret-123@127.0.0.1:1/liqmap"
    line = one_error(capsys, main(dry_run_with(tmp_path, url)), 2, "asyncpg", "pip install 'liqmap[postgres]'")
    assert "pg-secret-123" not in line


def test_unreachable_database_server_is_exit_75(tmp_path, capsys, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from bot import store

    async def refused(*args, **kwargs):  # what the driver raises when nothing listens on the port
        raise OperationalError("connect", {}, ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)"))

    monkeypatch.setattr(store.Store, "open", refused)
    url = "postgresql+asyncpg://liqmap:pg-secret-123@127.0.0.1:1/liqmap"
    line = one_error(capsys, main(dry_run_with(tmp_path, url)), 75, "unreachable", "ConnectionRefusedError")
    assert "pg-secret-123" not in line and "liqmap:***@127.0.0.1:1" in line


def test_database_error_mapping():
    from sqlalchemy.exc import OperationalError

    from bot.app import database_error

    locked = OperationalError("x", {}, Exception("database is locked"))
    assert isinstance(database_error(locked, "sqlite+aiosqlite:///a.db"), Unavailable)
    assert isinstance(database_error(TimeoutError(), "postgresql+asyncpg://u:p@h/db"), Unavailable)
    assert database_error(ZeroDivisionError(), "postgresql+asyncpg://u:p@h/db") is None  # a bug stays a bug


# -- Discord at start -------------------------------------------------------------------------------

@pytest.fixture
def discord_unreachable(monkeypatch):
    """Point discord.py's HTTP API at a closed port on 127.0.0.1 (connection refused)."""
    import discord.http

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{port}/api/v10")


@pytest.mark.parametrize("command", [["sync-commands"], ["bot"]])
def test_discord_unreachable_at_start_is_exit_75(tmp_path, capsys, monkeypatch, discord_unreachable, command):
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("LIQMAP_SOURCE", "sample")
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}")
    line = one_error(capsys, main([*command, "--env-file", str(tmp_path / "none.env")]), 75, "cannot reach Discord")
    assert TOKEN not in line


def test_discord_error_mapping():
    import types

    import discord

    from bot.app import discord_error

    response = types.SimpleNamespace(status=503, reason="Service Unavailable")
    assert isinstance(discord_error(discord.DiscordServerError(response, "down")), Unavailable)
    forbidden = discord.Forbidden(types.SimpleNamespace(status=403, reason="Forbidden"), "Missing Access")
    assert isinstance(discord_error(forbidden), InputError)
    assert isinstance(discord_error(discord.LoginFailure()), InputError)
    assert discord_error(ZeroDivisionError()) is None


# -- backtest and CSV input -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "item, fragment",
    [
        ("bin_width=nan", "bin_width: cannot read 'nan'; expected a finite number"),
        ("holding_days=none", "holding_days: cannot read 'none'; expected a finite number"),
        ("entry_points=1e30", "entry_points"),
    ],
)
def test_backtest_set_refusals_are_one_line(tmp_path, capsys, item, fragment):
    (tmp_path / "h.csv").write_text("x\n1\n")
    one_error(capsys, main(["backtest", "--data", str(tmp_path / "h.csv"), "--set", item]), 2, fragment)


def test_backtest_data_that_is_a_fifo_or_a_seed_out_of_range(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.csv")
    one_error(capsys, main(["backtest", "--data", str(tmp_path / "fifo.csv")]), 2, "not a regular file")
    (tmp_path / "h.csv").write_text("x\n1\n")
    one_error(capsys, main(["backtest", "--data", str(tmp_path / "h.csv"), "--seed", "-1"]), 2, "--seed")


def test_report_output_that_is_a_fifo_does_not_block(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    os.mkfifo(out / "liqmap.png")
    one_error(capsys, main(["report", "--source", "sample", "--out", str(out)]), 2, "not a regular file")


def test_a_400_digit_number_in_a_csv(tmp_path, capsys):
    rows = "".join(f"{i * 300000},100,101,99,100,{'9' * 400 if i == 7 else 1000 + i}\n" for i in range(40))
    (tmp_path / "big.csv").write_text("timestamp,open,high,low,close,oi_usd\n" + rows)
    one_error(capsys, main(["report", "--source", str(tmp_path / "big.csv"), "--out", str(tmp_path / "o")]), 2)


def test_a_timestamp_past_year_9999_in_a_csv(tmp_path, capsys):
    rows = "0,100,101,99,100.5,1000\n300000,101,102,100,101.5,1001\n999999999999999,102,103,101,102.5,1002\n"
    (tmp_path / "t.csv").write_text("timestamp,open,high,low,close,oi_usd\n" + rows)
    one_error(capsys, main(["report", "--source", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o")]), 2)


def test_one_absurd_high_price_in_a_csv_is_clipped_with_a_note(tmp_path, capsys):
    rows = "".join(f"{i * 300000},100,{10**13 if i == 1 else 101},99,100.5,{1000 + i}\n" for i in range(12))
    (tmp_path / "p.csv").write_text("timestamp,open,high,low,close,oi_usd\n" + rows)
    assert main(["report", "--source", str(tmp_path / "p.csv"), "--window", "1d", "--out", str(tmp_path / "o")]) == 0
    notes = json.loads((tmp_path / "o" / "liqmap.json").read_text())["notes"]
    assert any("bad prints and clipped" in n for n in notes), notes


# -- record -----------------------------------------------------------------------------------------

def test_failed_record_leaves_nothing_that_blocks_the_retry(tmp_path, capsys, monkeypatch):
    import httpx

    from analysis.sources import registry

    real = registry.live_sources

    def offline(**kw):  # the venues answer 451 (no network in tests)
        kw["transport"] = httpx.MockTransport(lambda request: httpx.Response(451, json={"msg": "restricted"}))
        return real(**kw)

    monkeypatch.setattr(registry, "live_sources", offline)
    for _ in range(2):  # the second attempt fails the same way, not with "already holds a recording"
        one_error(capsys, main(["record", "--exchange", "binance", "--out", str(tmp_path / "r")]), 2,
                  "every venue failed")
    assert not (tmp_path / "r").exists()


def test_recorded_manifest_with_bad_url_is_one_line(tmp_path, capsys):
    d = tmp_path / "rec"
    d.mkdir()
    (d / "a.json").write_bytes(b"[]")
    entry = {"file": "a.json", "venue": "binance", "url": "https://[::1", "sha256": "0" * 64}
    (d / "manifest.json").write_text(json.dumps({"format": 1, "now_ms": 5, "responses": [entry]}))
    one_error(capsys, main(["report", "--source", f"recorded:{d}", "--out", str(tmp_path / "o")]), 2, "https URL")
