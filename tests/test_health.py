"""The heartbeat the dispatcher writes and `liqmap health`, on a fake clock."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from bot import cli
from bot.health import Heartbeat, check
from bot.scheduler import Dispatcher, DispatcherParams

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def test_fresh_stale_missing_unreadable_and_future(tmp_path):
    path = tmp_path / "heartbeat.json"
    assert not check(path, T0).ok and "no heartbeat" in check(path, T0).reason
    Heartbeat(path)(T0)
    assert json.loads(path.read_text())["time"] == "2026-03-01T12:00:00+00:00"
    assert [p.name for p in tmp_path.iterdir()] == ["heartbeat.json"]  # written via a temporary file
    fresh = check(path, T0 + timedelta(seconds=59), max_age_s=60)
    assert fresh.ok and fresh.reason.startswith("ok: last heartbeat 59 s ago")
    stale = check(path, T0 + timedelta(seconds=61), max_age_s=60)
    assert not stale.ok and "61 s ago" in stale.reason and "older than 60 s" in stale.reason
    assert not check(path, T0 - timedelta(hours=1), max_age_s=60).ok  # from the future
    path.write_text("{not json")
    assert not check(path, T0).ok and "unreadable" in check(path, T0).reason
    assert "\n" not in check(path, T0).reason


def test_a_naive_or_other_zone_time_is_stored_as_utc(tmp_path):
    path = tmp_path / "hb.json"
    Heartbeat(path)(datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1))))
    assert check(path, T0, max_age_s=1).ok


def test_an_unwritable_heartbeat_is_logged_not_raised(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    beat = Heartbeat(blocker / "heartbeat.json")
    beat(T0)
    beat(T0)
    assert sum("cannot write the heartbeat" in r.getMessage() for r in caplog.records) == 1  # once


async def test_the_dispatcher_beats_after_every_loop_iteration(tmp_path, monkeypatch):
    now = [T0]
    ticks: list[datetime] = []
    stop = asyncio.Event()
    path = tmp_path / "heartbeat.json"
    beats: list[datetime] = []

    def beat(t: datetime) -> None:
        beats.append(t)
        Heartbeat(path)(t)

    async def sleep(seconds: float) -> None:  # the fake clock moves only when the loop sleeps
        now[0] += timedelta(seconds=seconds)
        if len(ticks) >= 3:
            stop.set()

    nothing: Any = None  # the loop under test never reaches the store, poster or reports
    d = Dispatcher(nothing, nothing, nothing, params=DispatcherParams(tick_s=30), now=lambda: now[0], sleep=sleep,
                   heartbeat=beat)

    async def tick() -> None:
        ticks.append(now[0])

    monkeypatch.setattr(d, "tick", tick)
    await d.run(stop)
    assert beats == ticks == [T0, T0 + timedelta(seconds=30), T0 + timedelta(seconds=60)]
    assert check(path, T0 + timedelta(seconds=110), max_age_s=60).ok
    assert not check(path, T0 + timedelta(seconds=130), max_age_s=60).ok


def test_cli_health_exit_status_and_one_line_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LIQMAP_DATA_DIR", str(tmp_path))
    assert cli.main(["health"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    Heartbeat(tmp_path / "heartbeat.json")(datetime.now(timezone.utc))
    assert cli.main(["health", "--max-age", "3600"]) == 0
    assert capsys.readouterr().out.startswith("ok: last heartbeat")
    Heartbeat(tmp_path / "heartbeat.json")(datetime.now(timezone.utc) - timedelta(hours=2))
    assert cli.main(["health", "--max-age", "3600"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("unhealthy: last heartbeat") and err.count("\n") == 1
    assert cli.main(["health", "--max-age", "-1"]) == 2
