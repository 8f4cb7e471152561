"""Sharding and several processes (issue 14): the shard settings and their messages, the bot as an
AutoShardedBot with this process's shards, one dispatcher, the heartbeat, /about, and the shared
layer wired from LIQMAP_REDIS_URL."""

from __future__ import annotations

import json

import pytest
from discord.ext import commands

from analysis.errors import InputError
from bot.settings import load_settings, parse_shard_ids

from bot_harness import interaction_payload, make_harness


@pytest.mark.parametrize("raw,want", [("0-3", (0, 1, 2, 3)), ("0,1", (0, 1)), (" 4, 0-1 ", (4, 0, 1)), ("", ())])
def test_parse_shard_ids(raw, want):
    assert parse_shard_ids(raw) == want


@pytest.mark.parametrize("env,msg", [
    ({"LIQMAP_SHARD_IDS": "0-3"}, "LIQMAP_SHARD_IDS needs LIQMAP_SHARD_COUNT"),
    ({"LIQMAP_SHARD_COUNT": "2", "LIQMAP_SHARD_IDS": "1-2"}, "shard 2 is not below LIQMAP_SHARD_COUNT=2 (ids run from 0 to 1)"),
    ({"LIQMAP_SHARD_COUNT": "4", "LIQMAP_SHARD_IDS": "0,1,1"}, "shard 1 is named twice (item 3)"),
    ({"LIQMAP_SHARD_COUNT": "4", "LIQMAP_SHARD_IDS": "0-2,2"}, "shard 2 is named twice (item 2)"),
    ({"LIQMAP_SHARD_COUNT": "4", "LIQMAP_SHARD_IDS": "3-1"}, "item 1 is a reversed range"),
    ({"LIQMAP_SHARD_COUNT": "4", "LIQMAP_SHARD_IDS": "one"}, "item 1 is not a shard id or range"),
    ({"LIQMAP_SHARD_COUNT": "0"}, "LIQMAP_SHARD_COUNT: Input should be greater than or equal to 1"),
    ({"LIQMAP_DISPATCHER": "maybe"}, "LIQMAP_DISPATCHER: Value error, choose auto, on or off"),
    ({"LIQMAP_REDIS_URL": "http://:pw@cache:6379"}, "LIQMAP_REDIS_URL: Value error, must be a redis://"),
    ({"LIQMAP_REDIS_PREFIX": "a b"}, "LIQMAP_REDIS_PREFIX"),
])
def test_bad_shard_and_redis_settings_are_refused_with_a_clear_message(monkeypatch, env, msg):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(InputError, match="invalid settings") as err:
        load_settings(None)
    assert msg in str(err.value) and "pw" not in str(err.value)


@pytest.mark.parametrize("env,count,ids,dispatcher", [
    ({}, None, None, True),
    ({"LIQMAP_SHARD_COUNT": "4"}, 4, None, True),
    ({"LIQMAP_SHARD_COUNT": "4", "LIQMAP_SHARD_IDS": "0-1"}, 4, [0, 1], True),
    ({"LIQMAP_SHARD_COUNT": "4", "LIQMAP_SHARD_IDS": "2,3"}, 4, [2, 3], False),
    ({"LIQMAP_SHARD_COUNT": "4", "LIQMAP_SHARD_IDS": "2,3", "LIQMAP_DISPATCHER": "on"}, 4, [2, 3], True),
    ({"LIQMAP_DISPATCHER": "off"}, None, None, False),
])
async def test_the_bot_is_auto_sharded_with_this_process_s_shards(monkeypatch, tmp_path, env, count, ids, dispatcher):
    from bot.app import LiqmapBot

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = load_settings(None, source="sample", url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    bot = LiqmapBot(settings, mode="dry-run")
    await bot.__aenter__()  # as `async with bot` in bot.app.run (AutoShardedClient makes its queue there)
    assert isinstance(bot, commands.AutoShardedBot)
    assert bot.shard_count == count and bot.shard_ids == ids and bot.runs_dispatcher is dispatcher
    assert settings.scale.shard_of(175928847299117063) == (None if count is None else (175928847299117063 >> 22) % 4)
    want = {None: "shards: automatic", 4: "shards 0-3 of 4" if ids is None else f"shards {ids[0]}-{ids[-1]} of 4"}
    if ids == [2, 3]:
        want[4] = "shards 2-3 of 4"
    assert bot.shard_summary().startswith(want[count])
    await bot.close()


async def test_a_process_without_the_dispatcher_answers_commands_and_starts_no_loop(monkeypatch, tmp_path):
    monkeypatch.setenv("LIQMAP_DATA_DIR", str(tmp_path / "data"))
    h = await make_harness(tmp_path / "bot.db", shard_count=4, shard_ids="1")
    try:
        assert h.bot.scheduler is None and h.bot.cluster_watch is None
        calls = await h.dispatch(interaction_payload("about"))
        text = calls[-1].body["embeds"][0]["description"]
        assert "This process: shard 1 of 4; work shared by no other process" in text
    finally:
        await h.stop()


def test_the_heartbeat_names_the_process_s_shards(tmp_path):
    from datetime import datetime, timezone

    from bot.health import Heartbeat, check

    path = tmp_path / "heartbeat.json"
    now = datetime(2026, 3, 1, tzinfo=timezone.utc)
    Heartbeat(path, shards="shards 0-1 of 4")(now)
    assert json.loads(path.read_text())["shards"] == "shards 0-1 of 4" and check(path, now).ok
    assert check(path, now).reason.endswith("(2026-03-01T00:00:00+00:00), shards 0-1 of 4")
    Heartbeat(path)(now)
    assert "shards" not in json.loads(path.read_text()) and check(path, now).reason.endswith("+00:00)")


def test_redis_url_builds_the_shared_layer_and_shares_the_venues_budgets(monkeypatch, tmp_path, caplog):
    pytest.importorskip("redis")
    import logging

    from analysis.sharing import RedisLayer
    from bot.app import build_service

    monkeypatch.setenv("LIQMAP_REDIS_URL", "redis://:s3cret@127.0.0.1:1/0")
    monkeypatch.setenv("LIQMAP_REDIS_PREFIX", "host-a")
    settings = load_settings(None, source="live", url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}",
                             cache_dir=str(tmp_path / "cache"))
    assert "s3cret" not in repr(settings.scale) and "s3cret" not in str(settings.safe_dict())
    with caplog.at_level(logging.INFO):
        svc = build_service(settings)
    assert isinstance(svc.shared, RedisLayer) and svc.shared.prefix == "host-a"
    assert svc.sources["binance"].weight.shared is not None and svc.sources["bybit"].limiter.shared is not None
    assert "binance.weight" in caplog.text and "s3cret" not in caplog.text and "127.0.0.1:1/0" in caplog.text


def test_without_redis_there_is_no_shared_layer(tmp_path):
    from bot.app import build_service

    svc = build_service(load_settings(None, source="sample", url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"))
    assert svc.shared is None


def test_the_compose_file_has_a_sharded_profile_with_redis_and_two_bot_processes():
    """Structure only (no docker here): with PyYAML when installed, else the service blocks by indentation."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docker-compose.yml").read_text(encoding="utf-8")
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        services = yaml.safe_load(text)["services"]
        blocks = {name: yaml.safe_dump(body) for name, body in services.items()}
    else:
        body = text.split("\nservices:\n", 1)[1].split("\nvolumes:\n", 1)[0]
        parts = re.split(r"^  ([a-z0-9-]+):\n", body, flags=re.M)
        blocks = dict(zip(parts[1::2], parts[2::2]))
    assert set(blocks) == {"db", "bot", "redis", "bot-1"}
    for name in ("redis", "bot-1"):
        assert re.search(r"profiles: \[\"sharded\"\]|profiles:\n\s*- sharded\n", blocks[name]), name
    assert "profiles" not in blocks["bot"] and "profiles" not in blocks["db"]
    assert "redis:7-alpine" in blocks["redis"] and "allkeys-lru" in blocks["redis"] and "maxmemory" in blocks["redis"]
    assert "LIQMAP_SHARD_IDS" in blocks["bot"] and "${LIQMAP_SHARD_COUNT:+0}" in blocks["bot"]
    assert 'LIQMAP_SHARD_IDS: "1"' in blocks["bot-1"] or "LIQMAP_SHARD_IDS: '1'" in blocks["bot-1"]
    for name in ("bot", "bot-1"):
        assert "postgresql+asyncpg://" in blocks[name] and "redis://redis:6379/0" in blocks[name]
    assert "liqmap-data-1:/data" in blocks["bot-1"]  # its own heartbeat


async def test_the_dry_run_says_where_the_dispatcher_runs_and_which_shards_are_here(monkeypatch, tmp_path):
    from bot.app import dry_run

    monkeypatch.setenv("LIQMAP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LIQMAP_SHARD_COUNT", "2")
    monkeypatch.setenv("LIQMAP_SHARD_IDS", "1")
    settings = load_settings(None, source="sample", url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    _, status = await dry_run(settings, sync_state_path=tmp_path / "sync.json")
    assert "dispatcher and cluster alerts: in another process (LIQMAP_DISPATCHER)" in status
    assert "processes: shard 1 of 2; work shared by no other process" in status
