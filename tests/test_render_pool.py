"""The render pool: real worker processes, back-pressure, timeouts, a crashed worker, shutdown."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from analysis.render_pool import (RenderBusy, RenderCrashed, RenderError, RenderPool, RenderTimeout, ThreadRenderer,
                                  make_renderer)
from analysis.report import ReportService
from analysis.sources import SampleSource


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _die() -> None:
    os._exit(3)  # the worker process dies: the pool breaks


def _die_once(flag: str) -> str:
    """Dies the first time (no flag file yet), succeeds on the retry."""
    if not os.path.exists(flag):
        open(flag, "w").close()
        os._exit(3)
    return "ok"


def _boom() -> None:
    raise ValueError("bad chart input")


async def test_renders_run_in_other_processes_and_a_report_renders_there():
    pool = RenderPool(2, warm=False)
    try:
        pids = await asyncio.gather(*(pool.run(_pid_after, 0.2) for _ in range(2)))
        assert os.getpid() not in pids
        svc = ReportService({"binance": SampleSource()}, renderer=pool)
        rep = await svc.report("BTCUSDT", "1d")
        assert rep.png[:8] == b"\x89PNG\r\n\x1a\n" and "BTC" in rep.summary
        assert pool.stats.completed == 3 and pool.in_flight == 0 and pool.worker_cpu_s > 0
    finally:
        await pool.aclose()


async def test_a_full_queue_makes_callers_wait_then_refuses_with_render_busy():
    pool = RenderPool(1, queue=1, wait_s=0.3, warm=False)
    try:
        first = [asyncio.create_task(pool.run(_pid_after, 1.5)) for _ in range(2)]  # one runs, one queued
        await asyncio.sleep(0.05)
        assert pool.in_flight == 2
        with pytest.raises(RenderBusy, match="busy"):
            await pool.run(_pid_after, 0)
        assert pool.stats.busy == 1
        await asyncio.gather(*first)
        assert await pool.run(_pid_after, 0) > 0  # a slot is free again
    finally:
        await pool.aclose()


async def test_a_waiting_caller_gets_the_next_free_slot():
    pool = RenderPool(1, queue=0, wait_s=10, warm=False)
    try:
        a = asyncio.create_task(pool.run(_pid_after, 0.5))
        await asyncio.sleep(0.05)
        b = await pool.run(_pid_after, 0)  # waits for a's slot, not refused
        assert b == await a and pool.stats.busy == 0
    finally:
        await pool.aclose()


async def test_a_slow_render_is_reported_as_a_timeout_and_keeps_its_slot_until_done(caplog):
    pool = RenderPool(1, queue=0, wait_s=0, timeout_s=60, warm=False)
    try:
        await pool.run(_pid_after, 0)  # the worker is up (its start is not the render's time)
        pool.timeout_s = 0.5
        with pytest.raises(RenderTimeout, match="took over 0.5 s"):
            await pool.run(_pid_after, 1.5)
        assert pool.stats.timeouts == 1 and "timed out" in caplog.text
        with pytest.raises(RenderBusy):  # the slow render still holds the only worker
            await pool.run(_pid_after, 0)
        await asyncio.sleep(1.5)
        assert pool.in_flight == 0 and await pool.run(_pid_after, 0) > 0
    finally:
        await pool.aclose()


async def test_a_dead_worker_recreates_the_pool_and_retries_once(tmp_path):
    pool = RenderPool(1, warm=False)
    try:
        pid = await pool.run(_pid_after, 0)
        assert await pool.run(_die_once, str(tmp_path / "flag")) == "ok"
        assert pool.stats.crashes == 1 and pool.stats.restarts == 1
        with pytest.raises(RenderCrashed, match="crashed twice"):
            await pool.run(_die)
        assert pool.stats.crashes == 3
        assert await pool.run(_pid_after, 0) not in (pid, 0)  # a fresh worker serves the next render
    finally:
        await pool.aclose()


async def test_renders_sharing_a_pool_with_a_crash_are_retried_and_succeed(tmp_path):
    pool = RenderPool(1, warm=False)
    try:
        await pool.run(_pid_after, 0)
        crash = asyncio.create_task(pool.run(_die_once, str(tmp_path / "flag")))
        await asyncio.sleep(0)  # submitted first: the renders queued behind it meet the broken pool
        bystanders = [asyncio.create_task(pool.run(_pid_after, 0.1)) for _ in range(3)]
        assert await crash == "ok" and all(p > 0 for p in await asyncio.gather(*bystanders))
        assert pool.stats.crashes >= 2 and pool.stats.restarts == 1 and pool.stats.failed == 0
        assert pool.in_flight == 0
    finally:
        await pool.aclose()


async def test_a_render_error_is_raised_as_is():
    pool = RenderPool(1, warm=False)
    try:
        with pytest.raises(ValueError, match="bad chart input"):
            await pool.run(_boom)
        assert pool.stats.failed == 1 and pool.in_flight == 0
    finally:
        await pool.aclose()


async def test_a_closed_pool_refuses_renders_and_the_service_closes_it():
    pool = RenderPool(1, warm=False)
    await pool.run(_pid_after, 0)
    svc = ReportService({"binance": SampleSource()}, renderer=pool)
    await svc.aclose()
    assert pool._pool is None
    with pytest.raises(RenderError, match="shut down"):
        await pool.run(_pid_after, 0)


async def test_the_thread_fallback_reports_a_timeout_too():
    r = ThreadRenderer(timeout_s=0.2)
    with pytest.raises(RenderTimeout):
        await r.run(time.sleep, 0.6)
    assert r.stats.timeouts == 1 and await r.run(_pid_after, 0) == os.getpid()


def test_bad_pool_settings_are_refused_and_zero_workers_means_threads():
    for kw in (dict(workers=0), dict(workers=1, queue=-1), dict(workers=1, timeout_s=0)):
        with pytest.raises(ValueError):
            RenderPool(**kw)
    assert isinstance(make_renderer(0), ThreadRenderer)
    assert make_renderer(None).workers == (os.cpu_count() or 1)  # type: ignore[attr-defined]


async def test_the_bot_builds_its_pool_from_settings_and_closes_it_on_shutdown(tmp_path):
    from bot.app import _close_sources, build_service
    from bot.settings import load_settings

    settings = load_settings(None, source="sample", cache_dir=tmp_path / "cache", render_workers=1,
                             render_queue=2, render_timeout_seconds=90)
    svc = build_service(settings)
    pool = svc.renderer
    assert isinstance(pool, RenderPool) and pool.workers == 1 and pool.capacity == 3 and pool.timeout_s == 90
    try:
        rep = await svc.report("BTCUSDT", "1d")
        assert rep.png[:8] == b"\x89PNG\r\n\x1a\n" and pool.stats.completed == 1
    finally:
        await _close_sources(svc)  # what LiqmapBot.close runs
    with pytest.raises(RenderError, match="shut down"):
        await pool.run(_pid_after, 0)
    assert isinstance(build_service(load_settings(None, source="sample", cache_dir=tmp_path / "c2",
                                                  render_workers=0)).renderer, ThreadRenderer)


def test_a_bad_render_setting_names_the_variable():
    from analysis.errors import InputError
    from bot.settings import load_settings

    with pytest.raises(InputError, match="LIQMAP_RENDER_WORKERS"):
        load_settings(None, source="sample", render_workers=-1)
    with pytest.raises(InputError, match="LIQMAP_RENDER_TIMEOUT_SECONDS"):
        load_settings(None, source="sample", render_timeout_seconds=0)


def test_the_bot_tells_the_user_why_in_one_line_and_does_not_log_a_bug():
    from bot.app import error_message

    for exc in (RenderBusy("the chart renderer is busy (6 renders running or queued); please try again in a minute"),
                RenderTimeout("rendering the chart took over 120 s; please try again in a minute"),
                RenderCrashed("the chart renderer crashed twice on this chart; please try again later")):
        text, bug = error_message(exc)
        assert not bug and str(exc).split(";")[0] in text


async def test_a_busy_renderer_defers_a_daily_post_to_the_next_tick(tmp_path):
    from datetime import datetime, timedelta, timezone

    from bot.scheduler import Dispatcher
    from bot.store import Store

    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'd.sqlite3'}")
    try:
        t0 = datetime(2026, 6, 1, 8, 59, tzinfo=timezone.utc)
        await store.add_daily(1, 2, symbols="BTC", window="1d", exchange="all", time="09:00", timezone="UTC",
                              created_by=3, now=t0)
        now = [t0 + timedelta(minutes=1)]
        busy = [True]
        svc = ReportService({"binance": SampleSource()})

        async def report(symbol, window, exchange):
            if busy[0]:
                raise RenderBusy("the chart renderer is busy (2 renders running or queued); please try again in a minute")
            return await svc.report(symbol, window, exchange)

        class Poster:
            sent = 0

            async def post(self, channel_id, **kw):
                Poster.sent += 1
                return 10**17 + Poster.sent

            async def find_marker(self, *a, **kw):
                return None

        d = Dispatcher(store, Poster(), report, now=lambda: now[0])
        first = await d.run_daily()
        assert first.deferred == 1 and first.render_failures == 1 and Poster.sent == 0
        busy[0] = False
        now[0] += timedelta(seconds=30)
        assert (await d.run_daily()).posted == 1 and Poster.sent == 1
    finally:
        await store.close()


def test_empty_render_workers_means_one_per_core(monkeypatch):
    from bot.settings import load_settings

    monkeypatch.setenv("LIQMAP_RENDER_WORKERS", "")
    monkeypatch.setenv("LIQMAP_RENDER_QUEUE", " ")
    s = load_settings(None, source="sample").schedule
    assert s.render_workers is None and s.render_queue is None
    monkeypatch.setenv("LIQMAP_RENDER_WORKERS", "3")
    assert load_settings(None, source="sample").schedule.render_workers == 3
