"""analysis.sharing: the safe codec, the Redis layer's cache, cross-process single-flight and shared
budgets (on fakeredis, in memory; two clients on one fake server stand for two processes), and its
failure paths (Redis down, Redis silent on a loopback socket, a builder that fails or crashes)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading

import numpy as np
import pytest

fakeredis = pytest.importorskip("fakeredis")
pytest.importorskip("lupa")  # fakeredis runs the Lua scripts through lupa

from analysis.report import ReportService  # noqa: E402
from analysis.sharing import CodecError, RedisLayer, SharedUnavailable, dumps, loads, share_limiters  # noqa: E402
from analysis.sources.http import RateLimiter  # noqa: E402
from test_report import CountingSource  # noqa: E402


def two_layers(**kw):
    # fakeredis runs Lua in-process (lupa): on a loaded CI machine one call can pass the default
    # 0.5 s timeout, which would mark the layer down and let a test fall back to its local state
    kw.setdefault("timeout_s", 10.0)
    server = fakeredis.FakeServer()
    return (RedisLayer(client=fakeredis.FakeAsyncRedis(server=server), **kw),
            RedisLayer(client=fakeredis.FakeAsyncRedis(server=server), **kw), server)


def service(layer, *, delay=0.2, **kw):
    src = CountingSource("binance", delay=delay, **kw)
    return ReportService({"binance": src}, ttl=60, shared=layer), src


# -- codec --------------------------------------------------------------------------------------------

async def test_a_report_and_a_heatmap_round_trip_exactly():
    svc, _ = service(None, delay=0)
    rep = await svc.report("BTC", "1d")
    back = loads(dumps(rep))
    assert back.png == rep.png and back.summary == rep.summary and back.reading == rep.reading
    assert back.window == rep.window and dict(back.missing) == dict(rep.missing)
    assert np.array_equal(back.map.long, rep.map.long) and back.map.long.dtype == rep.map.long.dtype
    assert back.map.long.flags.writeable
    assert json.dumps(back.to_json(), sort_keys=True, default=str) == json.dumps(rep.to_json(), sort_keys=True, default=str)
    png, states, missing = await svc.heatmap("BTC", "1d")
    png2, states2, missing2 = loads(dumps((png, states, missing)))
    assert png2 == png and np.array_equal(states2.long, states.long) and missing2 == missing


def test_specials_and_containers_round_trip():
    value = (float("nan"), float("inf"), -0.0, 2**70, np.int64(3), np.float32(1.5), {1: [b"x", None, True]}, "é")
    out = loads(dumps(value))
    assert np.isnan(out[0]) and out[1:] == (float("inf"), -0.0, 2**70, 3, 1.5, {1: [b"x", None, True]}, "é")


class NotAllowed:
    pass


def test_anything_not_allowed_is_refused_when_encoding():
    from dataclasses import dataclass

    @dataclass
    class Other:
        x: int = 1

    for bad in (NotAllowed(), Other(), np.array([object()]), {1, 2}):
        with pytest.raises(CodecError, match="cannot share"):
            dumps(bad)


def _raw(tree, blobs=()):
    header = json.dumps({"v": tree, "b": [len(b) for b in blobs]}).encode()
    return b"LQS1" + struct.pack(">I", len(header)) + header + b"".join(blobs)


@pytest.mark.parametrize("data,msg", [
    (b"\x80\x04pickle", "wrong magic"),
    (b"LQS1\x00\x00\x10\x00{}", "truncated"),
    (b"LQS1\x00\x00\x00\x02{]", "malformed header"),
    (_raw({"$dc": "os.system", "f": {}}), "refused class"),
    (_raw({"$dc": "analysis.windows.Window", "f": {"label": "1d"}}), "fields differ"),
    (_raw({"$nd": 0, "dt": "|O", "sh": [1]}, [b"\x00" * 8]), "refused dtype"),
    (_raw({"$nd": 0, "dt": "<f8", "sh": [2]}, [b"\x00" * 8]), "malformed node"),
    (_raw({"$b": 3}), "malformed node"),
    (_raw({"$f": "1e999"}), "bad special float"),
    (_raw({"$zz": 1}), "unknown tag"),
    (_raw([1, 2]), "untagged list"),
    (_raw(None) + b"extra", "trailing bytes"),
])
def test_bytes_not_written_by_the_codec_are_refused_never_run(data, msg):
    with pytest.raises(CodecError, match=msg):
        loads(data)


# -- cache and single-flight across processes ------------------------------------------------------------

async def test_two_processes_build_one_report_once_and_share_it():
    a, b, _ = two_layers()
    (svc_a, src_a), (svc_b, src_b) = service(a), service(b)
    ra, rb = await asyncio.gather(svc_a.report("BTC", "1d"), svc_b.report("BTC", "1d"))
    assert svc_a.computations + svc_b.computations == 1 and src_a.fetches + src_b.fetches == 1
    assert ra.png == rb.png and ra.summary == rb.summary
    # one process builds the report and, inside it, the merged map (its own shared key, which the
    # reading-only path reads too); the other waits once, for the report
    assert (a.builds, b.builds) in ((2, 0), (0, 2)) and a.waits + b.waits == 1
    # a third process, later: served from Redis, no build
    _, _, server = a, b, None
    c = RedisLayer(client=fakeredis.FakeAsyncRedis(server=_server_of(a)))
    svc_c, src_c = service(c)
    rc = await svc_c.report("BTC", "1d")
    assert svc_c.computations == 0 and src_c.fetches == 0 and rc.png == ra.png and c.hits == 1
    # each process keeps what it got locally: no second trip to Redis
    assert await svc_c.report("BTC", "1d") is rc and c.hits == 1
    # and its skew check's reading-only path finds the merged map there: no fetch, no model run
    got = await svc_c.reading("BTC", "1d")
    assert svc_c.map_computations == 0 and src_c.fetches == 0 and got.imbalance == ra.reading.imbalance
    # another theme is another key
    await asyncio.gather(svc_a.report("BTC", "1d", theme="light"), svc_b.report("BTC", "1d", theme="light"))
    assert svc_a.computations + svc_b.computations == 2


def _server_of(layer):
    return layer.client.connection_pool.connection_kwargs["server"]


async def test_processes_configured_differently_never_share_a_report():
    from analysis.model import ModelParams

    a, b, _ = two_layers()
    svc_a, _ = service(a, delay=0)
    svc_b = ReportService({"binance": CountingSource("binance", delay=0)}, ttl=60, shared=b,
                          params=ModelParams().with_overrides(["holding_days=3"]))
    await svc_a.report("BTC", "1d")
    await svc_b.report("BTC", "1d")
    assert svc_a.computations == svc_b.computations == 1


async def test_the_age_of_a_shared_report_counts_against_the_local_ttl():
    a, b, _ = two_layers()
    svc_a, _ = service(a, delay=0)
    await svc_a.report("BTC", "1d")
    for k in await a.client.keys("liqmap:r:*"):  # the report and the merged map inside it
        raw = await a.client.get(k)
        old = struct.pack(">d", struct.unpack(">d", raw[:8])[0] - 50) + raw[8:]  # built 50 s ago
        await a.client.set(k, old, px=10_000)
    clock = [0.0]
    svc_b = ReportService({"binance": CountingSource("binance", delay=0)}, ttl=60, shared=b, clock=lambda: clock[0])
    await svc_b.report("BTC", "1d")
    assert svc_b.computations == 0
    clock[0] = 11.0  # 50 + 11 > 60: expired here too
    assert svc_b._cached(next(iter(svc_b._cache))) is None


async def test_a_builder_that_fails_lets_a_waiter_build_and_both_see_their_own_outcome():
    from analysis.errors import SourceError

    a, b, _ = two_layers()
    svc_a, _ = service(a, fail=SourceError("binance", "klines", "HTTP 503"))
    svc_b, src_b = service(b, delay=0.05)
    first = asyncio.ensure_future(svc_a.report("BTC", "1d"))
    await asyncio.sleep(0.05)  # a holds the lock
    rb = await svc_b.report("BTC", "1d")
    with pytest.raises(SourceError, match="503"):
        await first
    assert rb.png and svc_b.computations == 1 and b.waits == 1


async def test_a_crashed_builder_s_lock_expires_and_another_builds():
    a, b, _ = two_layers(lock_ttl_s=0.3)
    svc_b, _ = service(b, delay=0)
    key = svc_b._shared_key(("BTCUSDT", "1d", ("binance",), "dark/tier"))
    await a.client.set(f"liqmap:r:{key}:lock", "dead-process", px=300)  # taken, never released
    rep = await asyncio.wait_for(svc_b.report("BTC", "1d"), 5)
    assert rep.png and svc_b.computations == 1 and b.waits == 1


async def test_the_lock_is_released_only_by_its_owner_and_renewed_while_building():
    a, b, _ = two_layers(lock_ttl_s=0.3)
    svc_a, _ = service(a, delay=0.5)  # longer than the lock's TTL: it must be renewed
    svc_b, _ = service(b, delay=0.5)
    await asyncio.gather(svc_a.report("BTC", "1d"), svc_b.report("BTC", "1d"))
    assert svc_a.computations + svc_b.computations == 1
    await a.client.set("liqmap:x:lock", "theirs")
    assert await a._release(keys=["liqmap:x:lock"], args=["mine"]) == 0
    assert await a.client.get("liqmap:x:lock") == b"theirs"


async def test_a_waiter_gives_up_after_its_deadline_and_builds_itself(caplog):
    a, b, _ = two_layers(wait_s=0.3, lock_ttl_s=30)
    svc_b, _ = service(b, delay=0)
    key = svc_b._shared_key(("BTCUSDT", "1d", ("binance",), "dark/tier"))
    await a.client.set(f"liqmap:r:{key}:lock", "slow-process", px=30_000)
    with caplog.at_level(logging.WARNING, logger="analysis.sharing.redis_layer"):
        rep = await asyncio.wait_for(svc_b.report("BTC", "1d"), 5)
    assert rep.png and b.fallbacks == 1 and "was not built by another process within 0.3 s" in caplog.text


async def test_values_over_the_byte_bound_are_not_shared():
    a, b, _ = two_layers()
    svc_a = ReportService({"binance": CountingSource("binance", delay=0)}, ttl=60, shared=a, max_bytes=10_000)
    await svc_a.report("BTC", "1d")
    assert await a.client.keys("liqmap:r:*") == []


async def test_a_ttl_of_zero_shares_nothing():
    a, _, _ = two_layers()
    svc = ReportService({"binance": CountingSource("binance", delay=0)}, ttl=0, shared=a)
    await svc.report("BTC", "1d")
    assert a.healthy is None and await a.client.keys("*") == []


# -- Redis down or silent ------------------------------------------------------------------------------

class Broken:
    """A Redis client whose every command fails as a refused connection does."""

    def __init__(self):
        self.calls = 0

    def register_script(self, _):
        async def run(*_, **__):
            self.calls += 1
            from redis.exceptions import ConnectionError

            raise ConnectionError("Error 111 connecting to redis://:s3cret@10.0.0.1")
        return run

    def __getattr__(self, name):
        return self.register_script(None)


async def test_redis_down_falls_back_in_process_warns_once_and_says_so(caplog):
    clock = [0.0]
    layer = RedisLayer(client=Broken(), retry_s=30, clock=lambda: clock[0])
    svc, src = service(layer, delay=0)
    with caplog.at_level(logging.WARNING):
        await svc.report("BTC", "1d")
        await svc.report("BTC", "1d", theme="light")
        await svc.heatmap("BTC", "1d")
    # two reports, the merged map they share (built once, then local) and the heatmap: 4 built here
    assert svc.computations == 2 and layer.healthy is False and layer.fallbacks == 4
    assert caplog.text.count("is unavailable (ConnectionError)") == 1 and "s3cret" not in caplog.text
    assert "unavailable (ConnectionError)" in layer.status()
    assert layer.client.calls == 1  # while down, no further attempts until retry_s
    clock[0] = 31
    with pytest.raises(SharedUnavailable):
        await layer.bucket("x", "take", 1, 1, 1)
    assert layer.client.calls == 2


async def test_redis_that_never_answers_times_out_and_the_report_is_built_anyway():
    pytest.importorskip("redis")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():  # accepts and never answers; stops with the test
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    layer = RedisLayer(f"redis://:s3cret@127.0.0.1:{port}/0", timeout_s=0.2)
    try:
        svc, _ = service(layer, delay=0)
        rep = await asyncio.wait_for(svc.report("BTC", "1d"), 10)
        assert rep.png and layer.healthy is False and "no answer within 0.2 s" in layer.status()
        assert "s3cret" not in layer.status() and f"127.0.0.1:{port}" in layer.status()
        limiter = RateLimiter(1, 2)
        limiter.share(layer.budget("binance.weight"))
        await asyncio.wait_for(limiter.acquire(1), 5)  # the local bucket serves
    finally:
        await layer.aclose()
        stop.set()
        t.join(2)
        for s in held:
            s.close()
        listener.close()


# -- budgets -----------------------------------------------------------------------------------------

class Sleeps:
    def __init__(self):
        self.waits: list[float] = []

    async def __call__(self, s):
        self.waits.append(s)
        await asyncio.sleep(0.01)


async def test_two_processes_draw_one_budget():
    a, b, _ = two_layers()
    sleeps = Sleeps()
    la, lb = RateLimiter(0.01, 4, sleep=sleeps), RateLimiter(0.01, 4, sleep=sleeps)
    la.share(a.budget("binance.weight"))
    lb.share(b.budget("binance.weight"))
    for lim in (la, lb, la, lb):
        await lim.acquire(1)
    assert sleeps.waits == []  # the burst of 4, spent by both
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(lb.acquire(1), 0.2)  # the fifth waits for the shared refill
    assert sleeps.waits and sleeps.waits[0] > 50  # about 1 / 0.01 s
    # without sharing, each process has its own burst
    solo = RateLimiter(0.01, 4, sleep=sleeps)
    await solo.acquire(4)


async def test_pause_charge_and_observe_reach_the_other_process():
    a, b, _ = two_layers()
    la, lb = RateLimiter(100, 10), RateLimiter(100, 10)
    la.share(a.budget("okx.limiter"))
    lb.share(b.budget("okx.limiter"))
    la.pause(30)
    await asyncio.sleep(0.05)  # applied in the background
    wait = await b.bucket("okx.limiter", "take", 1, 100, 10)
    assert 29 < wait <= 30
    a2, b2, _ = two_layers()
    la.share(a2.budget("okx.limiter"))
    lb.share(b2.budget("okx.limiter"))
    la.charge(10)
    await asyncio.sleep(0.05)
    assert await b2.bucket("okx.limiter", "take", 10, 0.001, 10) > 1000  # emptied by the other's charge
    a3, b3, _ = two_layers()
    la.share(a3.budget("binance.weight"))
    la.observe(1190, 1200)  # the server says the IP is at its limit
    await asyncio.sleep(0.05)
    assert await b3.bucket("binance.weight", "take", 1, 0.001, 10) > 100


def test_share_limiters_finds_every_limiter_of_the_sources():
    from analysis.sources.binance import BinanceSource

    a, _, _ = two_layers()
    src = BinanceSource()
    names = share_limiters({"binance": src}, a)
    assert names == ["binance.oi_budget", "binance.weight"]
    # the open-interest budget (1,000 per 5 min per IP) is spent from one bucket by every process
    assert src.weight.shared is not None and src.oi_budget.limiter.shared.name == "binance.oi_budget"
    assert src.oi_limiter is src.oi_budget.limiter


def test_the_benchmark_skips_cleanly_without_a_redis_server(monkeypatch, capsys, tmp_path):
    import shutil
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:  # bench/ is a folder of the checkout, not an installed package
        sys.path.insert(0, root)
    from bench import shared

    monkeypatch.setattr(shutil, "which", lambda name: None)
    doc = tmp_path / "benchmarks.md"
    monkeypatch.setattr("bench.doc.DOC", doc)
    assert shared.main(["--processes", "2"]) == 0
    assert "skipped: no redis-server binary" in capsys.readouterr().out and not doc.exists()


async def test_a_value_the_codec_refuses_is_built_and_kept_in_process_logged_once(caplog):
    a, b, _ = two_layers()
    n = 0

    async def build():
        nonlocal n
        n += 1
        return NotAllowed()

    with caplog.at_level(logging.INFO, logger="analysis.sharing.redis_layer"):
        v1, _ = await a.flight("k1", build, ttl=60, max_bytes=10**6)
        v2, _ = await a.flight("k2", build, ttl=60, max_bytes=10**6)
    assert isinstance(v1, NotAllowed) and isinstance(v2, NotAllowed) and n == 2
    assert await a.client.keys("liqmap:r:*") == []  # nothing stored, locks released
    assert caplog.text.count("stay in this process (cannot share a NotAllowed)") == 1


async def test_foreign_bytes_under_a_report_key_are_refused_and_the_report_rebuilt(caplog):
    import pickle

    a, _, _ = two_layers()
    svc, src = service(a, delay=0)
    key = svc._shared_key(("BTCUSDT", "1d", ("binance",), "dark/tier"))
    await a.client.set(f"liqmap:r:{key}", struct.pack(">d", 0.0) + pickle.dumps(NotAllowed()), px=60_000)
    with caplog.at_level(logging.WARNING, logger="analysis.sharing.redis_layer"):
        rep = await svc.report("BTC", "1d")
    assert rep.png and svc.computations == 1 and src.fetches == 1 and "unreadable (not a shared report" in caplog.text
    assert (await a.client.get(f"liqmap:r:{key}"))[8:12] == b"LQS1"  # replaced by the rebuilt report


async def test_a_value_of_another_kind_under_a_report_key_is_not_served_and_the_report_is_built(caplog):
    """A well-formed value that is not a report (here the merged map, written under the report's key
    by a foreign or older writer) is never served as one: this process builds the report itself."""
    a, b, _ = two_layers()
    svc_a, _ = service(a, delay=0)
    await svc_a.reading("BTC", "1d")  # stores the merged map under its own key
    keys = [k for k in await a.client.keys("liqmap:r:*") if not k.endswith(b":lock")]
    (map_key,) = keys
    map_bytes = await a.client.get(map_key)
    svc_b, src_b = service(b, delay=0)
    report_key = svc_b._shared_key(("BTCUSDT", "1d", ("binance",), "dark/tier"))
    await b.client.set(f"liqmap:r:{report_key}", map_bytes, px=60_000)
    with caplog.at_level(logging.WARNING, logger="analysis.report"):
        rep = await svc_b.report("BTC", "1d")
    assert rep.png and svc_b.computations == 1 and "is not what that key holds; built here" in caplog.text
