"""Command definitions (committed snapshot), the explicit sync policy, and the bot CLI commands.

The snapshot ``tests/fixtures/commands.json`` is what Discord receives for the production set-up
(venues binance, bybit, okx; no CoinGlass key). When a change to the commands is intended,
refresh it and commit it with the change:

    LIQMAP_UPDATE_COMMANDS=1 .venv/bin/pytest -q tests/test_bot_commands.py

(The bot re-syncs global commands by itself on its next start, because their hash changes.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bot import cli
from bot.app import definitions_hash

from bot_harness import APP_ID, DISCORD_OK, PINNED, StubSource, make_harness, snowflake

pytestmark = pytest.mark.skipif(not DISCORD_OK, reason=f"harness uses discord.py internals pinned to {PINNED}")

SNAPSHOT = Path(__file__).resolve().parent / "fixtures" / "commands.json"
LIVE_VENUES = ("binance", "bybit", "okx")


def _stubs(*names: str) -> dict:
    return {n: StubSource(n, ("BTCUSDT", "ETHUSDT")) for n in names}


@pytest.fixture
async def live_like(tmp_path):
    h = await make_harness(tmp_path / "bot.db", sources=_stubs(*LIVE_VENUES))
    yield h
    await h.stop()


async def test_command_definitions_match_the_committed_snapshot(live_like):
    defs = live_like.bot.definitions()
    if os.environ.get("LIQMAP_UPDATE_COMMANDS") == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(json.dumps(defs, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    committed = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert defs == committed, (
        "the slash-command definitions changed; if that is intended, refresh the snapshot with "
        "`LIQMAP_UPDATE_COMMANDS=1 .venv/bin/pytest -q tests/test_bot_commands.py` and commit it"
    )


def test_snapshot_reads_naturally_in_the_picker():
    defs = {d["name"]: d for d in json.loads(SNAPSHOT.read_text(encoding="utf-8"))}
    assert set(defs) == {"liqmap", "about", "daily", "skew-alerts", "cluster-alerts"}
    for name in ("liqmap", "about"):  # installable by a server and a user; servers, the bot's DM, private channels
        assert defs[name]["integration_types"] == [0, 1] and defs[name]["contexts"] == [0, 1, 2], name
    for name in ("daily", "skew-alerts", "cluster-alerts"):  # subscriptions: server installs, servers only
        assert defs[name]["integration_types"] == [0] and defs[name]["contexts"] == [0], name
    assert [o["name"] for o in defs["liqmap"]["options"]] == ["symbol", "window", "exchange", "private", "view"]
    exch = next(o for o in defs["liqmap"]["options"] if o["name"] == "exchange")
    assert [c["value"] for c in exch["choices"]] == ["all", *LIVE_VENUES]
    assert [o["name"] for o in defs["daily"]["options"]] == ["set", "list", "remove", "resume"]
    daily_set = next(o for o in defs["daily"]["options"] if o["name"] == "set")
    for options in (defs["liqmap"]["options"], daily_set["options"]):
        (view,) = [o for o in options if o["name"] == "view"]
        assert [c["value"] for c in view["choices"]] == ["map", "heatmap", "both"] and not view.get("required")
    assert [o["name"] for o in defs["skew-alerts"]["options"]] == ["subscribe", "list", "unsubscribe", "resume"]
    assert [o["name"] for o in defs["cluster-alerts"]["options"]] == ["subscribe", "list", "remove", "resume"]
    for name in ("daily", "skew-alerts", "cluster-alerts"):  # Manage Server (0x20), servers only
        assert defs[name]["default_member_permissions"] == 1 << 5 and defs[name]["dm_permission"] is False, name

    def walk(options):
        for o in options:
            yield o
            yield from walk(o.get("options", []))

    for d in defs.values():
        assert 1 <= len(d["description"]) <= 100
        for o in walk(d.get("options", [])):
            assert 1 <= len(o["description"]) <= 100, o["name"]
            assert o["name"] == o["name"].lower() and " " not in o["name"]


async def test_coinglass_is_offered_only_when_the_service_has_it(tmp_path):
    h = await make_harness(tmp_path / "bot.db", sources=_stubs(*LIVE_VENUES, "coinglass"))
    try:
        defs = {d["name"]: d for d in h.bot.definitions()}
        exch = next(o for o in defs["liqmap"]["options"] if o["name"] == "exchange")
        assert exch["choices"][-1] == {"name": "CoinGlass", "value": "coinglass"}
    finally:
        await h.stop()


def test_definitions_hash_ignores_key_order_but_not_content():
    a = [{"name": "liqmap", "description": "x", "options": []}]
    b = [{"options": [], "description": "x", "name": "liqmap"}]
    assert definitions_hash(a) == definitions_hash(b)
    assert definitions_hash(a) != definitions_hash([{**a[0], "description": "y"}])


def _answer_sync(call):
    if call.method == "PUT" and call.path.endswith("/commands"):
        return [{**d, "id": snowflake(), "application_id": str(APP_ID), "version": snowflake()} for d in call.json]
    return None


async def test_global_sync_happens_only_when_definitions_change(live_like):
    bot, rest = live_like.bot, live_like.rest
    rest.respond = _answer_sync
    puts = lambda: [c for c in rest.calls if c.method == "PUT"]  # noqa: E731
    (line,) = await bot.sync_commands()
    assert line.startswith("synced 5 global command(s)")
    (put,) = puts()
    assert put.path == f"/applications/{APP_ID}/commands"
    assert sorted(put.json, key=lambda d: d["name"]) == json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    # a restart with the same definitions: no sync
    (line,) = await bot.sync_commands()
    assert "unchanged" in line and len(puts()) == 1
    # the definitions change (e.g. a new option): the next start syncs again
    bot.tree.get_command("liqmap")._params["private"].description = "changed"
    (line,) = await bot.sync_commands()
    assert line.startswith("synced") and len(puts()) == 2
    # an explicit sync-commands always syncs
    assert (await bot.sync_global(force=True)).startswith("synced") and len(puts()) == 3


async def test_dev_guild_syncs_there_instantly_and_leaves_global_alone(tmp_path):
    h = await make_harness(tmp_path / "bot.db", sources=_stubs(*LIVE_VENUES), dev_guild_id=123456789012345678)
    try:
        h.rest.respond = _answer_sync
        (line,) = await h.bot.sync_commands()
        assert line == "synced 5 command(s) to guild 123456789012345678"
        (put,) = [c for c in h.rest.calls if c.method == "PUT"]
        assert put.path == f"/applications/{APP_ID}/guilds/123456789012345678/commands"
    finally:
        await h.stop()


def test_cli_dry_run_prints_definitions_without_a_token(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.setenv("LIQMAP_SOURCE", "sample")
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'dry.db'}")
    assert cli.main(["bot", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    defs = json.loads(out)
    assert [d["name"] for d in defs] == ["about", "cluster-alerts", "daily", "liqmap", "skew-alerts"]
    assert "migrated" in err and "dispatcher: Dispatcher ready" in err and '"token": "unset"' in err
    assert "cluster alerts: ClusterWatcher ready (not started); swept alerts unavailable: no realized-liquidation tape" in err
    assert (tmp_path / "dry.db").exists()  # the database was created and migrated


def test_dry_run_names_the_absolute_database_file(tmp_path, monkeypatch, capsys):
    # a relative SQLite path depends on the working directory: say which file it is
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.setenv("LIQMAP_SOURCE", "sample")
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///relative.db")
    assert cli.main(["bot", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert f"database: SQLite file {tmp_path.resolve() / 'relative.db'} migrated" in err


@pytest.mark.parametrize("argv", [["bot"], ["sync-commands"], ["sync-commands", "--guild", "5"]])
def test_cli_without_token_says_how_to_set_it(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.setenv("LIQMAP_SOURCE", "sample")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "DISCORD_TOKEN is not set" in err and ".env" in err


def test_cli_bad_settings_exit_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEV_GUILD_ID", "not-a-number")
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token-value")
    assert cli.main(["bot", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "DEV_GUILD_ID" in err and "secret-token-value" not in err and "not-a-number" not in err


def test_invite_url_scopes_and_minimal_permissions():
    from bot.app import invite_permissions, invite_url

    assert invite_permissions(history=False).value == 1024 + 2048 + 16384 + 32768 == 52224
    assert invite_permissions().value == 52224 + 65536 == 117760
    assert invite_url(123, history=False) == (
        "https://discord.com/oauth2/authorize?client_id=123&scope=bot+applications.commands&permissions=52224")


def _fake_discord(monkeypatch, *, reject_token: bool = False):
    """Replace ``HTTPClient.request`` for bots created inside the CLI: login and sync answered offline."""
    import discord
    from discord.http import HTTPClient

    from bot_harness import BOT_ID, RestRecorder, http_error

    rec = RestRecorder()
    user = {"id": str(BOT_ID), "username": "liqmap", "discriminator": "0", "avatar": None, "bot": True}

    def respond(call):
        if call.path == "/users/@me":
            if reject_token:
                raise http_error(discord.HTTPException, 401, 0, "401: Unauthorized")
            return user
        if call.path == "/oauth2/applications/@me":
            return {"id": str(APP_ID), "name": "liqmap", "description": "", "icon": None, "bot_public": True,
                    "bot_require_code_grant": False, "owner": user, "verify_key": "00", "flags": 0}
        return _answer_sync(call)

    rec.respond = respond

    async def request(self, route, **kwargs):
        return await rec(route, **kwargs)

    monkeypatch.setattr(HTTPClient, "request", request)
    return rec


def test_cli_sync_commands_logs_in_over_http_and_syncs_globally(tmp_path, monkeypatch, capsys, caplog):
    token = "MTAx.fake.token-that-must-not-leak"
    rec = _fake_discord(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCORD_TOKEN", token)
    monkeypatch.setenv("LIQMAP_SOURCE", "sample")
    monkeypatch.setenv("LIQMAP_CACHE_DIR", str(tmp_path / "cache"))
    caplog.set_level("DEBUG")
    assert cli.main(["sync-commands"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("synced 5 global command(s)")
    assert [(c.method, c.path) for c in rec.calls] == [
        ("GET", "/users/@me"), ("GET", "/oauth2/applications/@me"), ("PUT", f"/applications/{APP_ID}/commands")]
    assert (tmp_path / "cache" / "command-sync.json").exists()  # a later start sees nothing changed
    assert token not in caplog.text and token not in out
    assert cli.main(["sync-commands", "--guild", "42"]) == 0
    assert capsys.readouterr().out.startswith("synced 5 command(s) to guild 42")
    assert rec.calls[-1].path == f"/applications/{APP_ID}/guilds/42/commands"


def test_cli_sync_commands_with_a_rejected_token(tmp_path, monkeypatch, capsys):
    _fake_discord(monkeypatch, reject_token=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCORD_TOKEN", "MTAx.fake.revoked")
    monkeypatch.setenv("LIQMAP_SOURCE", "sample")
    assert cli.main(["sync-commands"]) == 2
    err = capsys.readouterr().err
    assert "Discord rejected DISCORD_TOKEN" in err and "MTAx.fake.revoked" not in err


async def test_run_mode_start_syncs_once_then_not_again_on_restart(tmp_path, monkeypatch):
    """Two starts (login + setup_hook, as `liqmap bot` does before connecting the gateway)."""
    from bot.app import LiqmapBot
    from bot.settings import load_settings

    rec = _fake_discord(monkeypatch)
    settings = load_settings(None, source="sample", url=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
                             cache_dir=tmp_path / "cache")
    for start in range(2):
        bot = LiqmapBot(settings, mode="run")
        async with bot:
            await bot.login("MTAx.fake.token")
            assert bot.scheduler is not None and bot.scheduler._task is None  # waits for READY
        puts = [c for c in rec.calls if c.method == "PUT"]
        assert len(puts) == 1, f"start {start}: {len(puts)} syncs"


async def test_close_stops_the_dispatcher_and_closes_the_database_and_the_sources(tmp_path, monkeypatch):
    """What SIGTERM/Ctrl-C runs (``bot.close``): dispatcher stopped, store disposed, each source closed."""
    from analysis.report import ReportService
    from bot.app import LiqmapBot
    from bot.settings import load_settings

    _fake_discord(monkeypatch)
    closed: list[str] = []

    class ClosingSource(StubSource):
        async def aclose(self) -> None:
            closed.append(self.name)

    settings = load_settings(None, source="sample", url=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
                             cache_dir=tmp_path / "cache")
    service = ReportService({n: ClosingSource(n, ("BTCUSDT",)) for n in LIVE_VENUES})
    bot = LiqmapBot(settings, mode="run", service=service)
    async with bot:
        await bot.login("MTAx.fake.token")
        task = bot.scheduler.start()
        store = bot.store
        disposed: list[bool] = []
        real_close = store.close

        async def close() -> None:
            disposed.append(True)
            await real_close()

        monkeypatch.setattr(store, "close", close)
        await bot.close()
        assert task.done() and bot.scheduler._task is None
        assert disposed == [True] and sorted(closed) == sorted(LIVE_VENUES)
        assert bot.is_closed()
