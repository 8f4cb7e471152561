"""The HTTP core: limiter, retries, status handling, JSON validation and single-flight (offline)."""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import time
import tracemalloc
import zlib

import httpx
import pandas as pd
import pytest

from analysis.errors import SourceError
from analysis.sources.http import (
    DEFAULT_SERVER_WAIT_S, MAX_SERVER_WAIT_S, RateLimiter, SingleFlight, VenueClient, server_wait,
)
from analysis.sources.validate import dict_columns, expect_dict, expect_list, field, numeric_columns, to_float, to_int


class FakeTime:
    """A clock and a sleep that advances it, so nothing really waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s
        await asyncio.sleep(0)


def client(handler, ft: FakeTime | None = None, **kw) -> VenueClient:
    ft = ft or FakeTime()
    return VenueClient("binance", "https://fapi.example", transport=httpx.MockTransport(handler),
                       sleep=ft.sleep, clock=ft.clock, **kw)


def scripted(*responses):
    """A handler that returns (or raises) the given responses in order, then repeats the last."""
    calls = []

    def handler(request: httpx.Request):
        calls.append(request)
        r = responses[min(len(calls), len(responses)) - 1]
        if isinstance(r, Exception):
            raise r
        return r

    handler.calls = calls
    return handler


# -- limiter -------------------------------------------------------------------------------------

async def test_limiter_spaces_requests_at_the_rate():
    ft = FakeTime()
    lim = RateLimiter(10, 5, clock=ft.clock, sleep=ft.sleep)
    for _ in range(15):
        await lim.acquire()
    # 5 from the burst, then 10 more at 10/s = 1 s of waiting
    assert ft.now - 1000.0 == pytest.approx(1.0)


async def test_limiter_observe_and_pause_slow_down():
    ft = FakeTime()
    lim = RateLimiter(40, 2400, clock=ft.clock, sleep=ft.sleep)
    lim.observe(used=2300, limit=2400)  # 90% headroom -> 2160 - 2300 = -140 tokens
    await lim.acquire(10)
    assert ft.now - 1000.0 == pytest.approx(150 / 40)
    lim.pause(7)
    t0 = ft.now
    await lim.acquire(1)
    assert ft.now - t0 >= 7


# -- statuses --------------------------------------------------------------------------------------

async def test_200_json_and_request_count():
    h = scripted(httpx.Response(200, json=[1, 2]))
    c = client(h)
    assert await c.get_json("/x", {"a": 1, "b": None}) == [1, 2]
    assert c.request_count == 1
    assert "b=" not in str(h.calls[0].url)
    await c.aclose()
    assert c.closed


async def test_500_then_ok_retries_with_backoff():
    ft = FakeTime()
    h = scripted(httpx.Response(500, text="oops"), httpx.Response(502), httpx.Response(200, json={"ok": 1}))
    c = client(h, ft)
    assert await c.get_json("/x") == {"ok": 1}
    assert c.request_count == 3
    assert len(ft.sleeps) == 2 and ft.sleeps[1] > ft.sleeps[0] * 0.99  # exponential (with jitter)


async def test_persistent_500_gives_up_with_sourceerror():
    h = scripted(httpx.Response(503, json={"msg": "busy"}))
    c = client(h, max_attempts=4)
    with pytest.raises(SourceError) as ei:
        await c.get_json("/fapi/v1/klines")
    e = ei.value
    assert e.venue == "binance" and e.endpoint == "/fapi/v1/klines" and e.status == 503
    assert "503" in e.reason and "4 attempt" in e.reason
    assert c.request_count == 4


async def test_retry_budget_bounds_total_time():
    ft = FakeTime()
    h = scripted(httpx.Response(500))
    c = client(h, ft, max_attempts=50, budget_s=3.0, backoff_base_s=1.0)
    with pytest.raises(SourceError):
        await c.get_json("/x")
    assert sum(ft.sleeps) <= 3.0
    assert c.request_count < 50


async def test_timeout_and_transport_errors_are_retried():
    h = scripted(httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), httpx.Response(200, json=[]))
    c = client(h)
    assert await c.get_json("/x") == []
    assert c.request_count == 3


async def test_timeout_forever_is_a_sourceerror():
    h = scripted(httpx.ReadTimeout("slow"))
    c = client(h, max_attempts=3)
    with pytest.raises(SourceError, match="timed out"):
        await c.get_json("/x")


async def test_429_honours_retry_after_then_succeeds():
    ft = FakeTime()
    h = scripted(httpx.Response(429, headers={"Retry-After": "7"}, json={"code": -1003, "msg": "Too many"}),
                 httpx.Response(200, json=[]))
    lim = RateLimiter(100, 100, clock=ft.clock, sleep=ft.sleep)
    c = client(h, ft, limiter=lim)
    assert await c.get_json("/x") == []
    assert ft.now - 1000.0 >= 7  # waited as told, via the limiter (so concurrent requests wait too)
    assert c.request_count == 2


async def test_429_beyond_budget_stops_and_does_not_hammer():
    ft = FakeTime()
    h = scripted(httpx.Response(429, headers={"Retry-After": "120"}))
    c = client(h, ft, budget_s=30)
    with pytest.raises(SourceError) as ei:
        await c.get_json("/x")
    assert ei.value.status == 429 and ei.value.retry_after == 120
    assert c.request_count == 1 and ft.sleeps == []
    with pytest.raises(SourceError, match="stay away"):  # refuses to send while told to wait
        await c.get_json("/x")
    assert c.request_count == 1


async def test_418_is_never_retried_and_blocks_further_requests():
    ft = FakeTime()
    h = scripted(httpx.Response(418, headers={"Retry-After": "300"}, json={"code": -1003, "msg": "banned"}))
    c = client(h, ft)
    with pytest.raises(SourceError) as ei:
        await c.get_json("/x")
    assert ei.value.status == 418 and ei.value.retry_after == 300 and "banned" in ei.value.reason
    with pytest.raises(SourceError):
        await c.get_json("/y")
    assert c.request_count == 1
    ft.now += 301
    h2_ok = await asyncio.gather(c.get_json("/z"), return_exceptions=True)
    assert c.request_count == 2 and isinstance(h2_ok[0], SourceError)  # sends again after the ban


async def test_ban_fails_queued_requests_fast_instead_of_sleeping():
    ft = FakeTime()
    lim = RateLimiter(1, 1, clock=ft.clock, sleep=ft.sleep)
    h = scripted(httpx.Response(418, headers={"Retry-After": "600"}))
    c = client(h, ft, limiter=lim)
    results = await asyncio.gather(c.get_json("/a"), c.get_json("/b"), c.get_json("/c"), return_exceptions=True)
    assert all(isinstance(r, SourceError) for r in results)
    assert c.request_count == 1  # the queued two never went out
    assert sum(ft.sleeps) < 5  # they waited for a token (1/s), not for the 600 s ban


async def test_451_says_region_and_suggests_another_venue():
    c = client(scripted(httpx.Response(451, json={"code": 0, "msg": "Service unavailable from a restricted location"})))
    with pytest.raises(SourceError) as ei:
        await c.get_json("/x")
    assert ei.value.status == 451
    assert "region" in ei.value.reason and "--exchange bybit" in ei.value.reason
    assert c.request_count == 1


async def test_400_quotes_the_venue_message():
    c = client(scripted(httpx.Response(400, json={"code": -1121, "msg": "Invalid symbol."})))
    with pytest.raises(SourceError) as ei:
        await c.get_json("/x")
    assert ei.value.status == 400 and "Invalid symbol." in ei.value.reason and "-1121" in ei.value.reason
    assert ei.value.body.startswith("{")


@pytest.mark.parametrize("body", [b'[[1,"2",', b"<html>gateway</html>", b""])
async def test_truncated_or_non_json_body(body):
    c = client(scripted(httpx.Response(200, content=body)))
    with pytest.raises(SourceError, match="not valid JSON"):
        await c.get_json("/x")


async def test_on_response_sees_headers():
    seen = []
    c = client(scripted(httpx.Response(200, json=[], headers={"X-MBX-USED-WEIGHT-1M": "42"})),
               on_response=lambda r: seen.append(r.headers["X-MBX-USED-WEIGHT-1M"]))
    await c.get_json("/x")
    assert seen == ["42"]


# -- single-flight ---------------------------------------------------------------------------------

async def test_single_flight_shares_one_execution():
    sf = SingleFlight()
    runs = 0

    async def work():
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.01)
        return runs

    results = await asyncio.gather(*(sf.do("k", work) for _ in range(100)))
    assert runs == 1 and set(results) == {1} and sf.executions == 1
    assert await sf.do("k", work) == 2  # a later call runs again


async def test_single_flight_propagates_errors_to_all_and_survives_cancel():
    sf = SingleFlight()

    async def bad():
        await asyncio.sleep(0.01)
        raise SourceError("x", "/y", "down")

    res = await asyncio.gather(*(sf.do("k", bad) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, SourceError) for r in res) and sf.executions == 1

    async def slow():
        await asyncio.sleep(0.02)
        return "done"

    t1 = asyncio.ensure_future(sf.do("s", slow))
    t2 = asyncio.ensure_future(sf.do("s", slow))
    await asyncio.sleep(0)
    t1.cancel()
    assert await t2 == "done"


# -- validation ------------------------------------------------------------------------------------

def test_validators_raise_sourceerror_only():
    with pytest.raises(SourceError, match="should be a list, got dict"):
        expect_list({"a": 1}, "v", "/e")
    with pytest.raises(SourceError, match="should be an object"):
        expect_dict([], "v", "/e")
    with pytest.raises(SourceError, match="missing field 'x'"):
        field({}, "x", "v", "/e")
    with pytest.raises(SourceError, match="should be a number"):
        to_float("abc", "v", "/e")
    with pytest.raises(SourceError, match="should be a number, got null"):
        to_float(None, "v", "/e")
    with pytest.raises(SourceError, match="not finite"):
        to_float("nan", "v", "/e")
    with pytest.raises(SourceError, match="integer"):
        to_int("1.5", "v", "/e")
    assert to_int("1616338800000", "v", "/e") == 1616338800000
    arr = numeric_columns([[1, "2.5", "x"], [3, "4", None]], [0, 1], "v", "/e")
    assert arr.tolist() == [[1, 2.5], [3, 4]]
    with pytest.raises(SourceError, match="row 1 has 1 fields"):
        numeric_columns([[1, 2], [1]], [0, 1], "v", "/e")
    with pytest.raises(SourceError, match="row 0 should be a list"):
        numeric_columns([{"a": 1}], [0], "v", "/e")
    with pytest.raises(SourceError, match="missing field 'b' in row 0"):
        dict_columns([{"a": "1"}], ["a", "b"], "v", "/e")
    assert json.dumps(dict_columns([{"a": "1", "b": 2}], ["a", "b"], "v", "/e").tolist()) == "[[1.0, 2.0]]"


async def test_gather_or_cancel_cancels_the_rest_on_failure():
    from analysis.sources.http import gather_or_cancel

    finished = []

    async def slow(i):
        await asyncio.sleep(0.05)
        finished.append(i)
        return i

    async def bad():
        await asyncio.sleep(0)
        raise SourceError("v", "/e", "down")

    assert await gather_or_cancel(slow(1), slow(2)) == [1, 2]
    with pytest.raises(SourceError):
        await gather_or_cancel(slow(3), bad(), slow(4))
    await asyncio.sleep(0.1)
    assert finished == [1, 2]  # 3 and 4 were cancelled, not left running


# -- deadlines, size limits and clamped server waits (issue 8) --------------------------------------

class Drip(httpx.AsyncByteStream):
    """A body that sends one byte every ``interval`` seconds (real time), forever."""

    def __init__(self, interval: float) -> None:
        self.interval = interval

    async def __aiter__(self):
        yield b"["
        while True:
            await asyncio.sleep(self.interval)
            yield b" "


class Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks) -> None:
        self.chunks = chunks
        self.sent = 0

    async def __aiter__(self):
        for c in self.chunks:
            self.sent += len(c)
            yield c


def gzip_zeros(total: int, chunk: int = 1 << 20):
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    for _ in range(total // chunk):
        out = comp.compress(bytes(chunk))
        if out:
            yield out
    yield comp.flush()


#: memory a refused oversized or bomb response may cost (tracemalloc peak), far below its size
MEMORY_CEILING = 64 * 1024 * 1024


async def test_slow_drip_fails_within_the_deadline_and_the_budget():
    c = client(lambda r: httpx.Response(200, stream=Drip(0.05)), deadline_s=0.3, budget_s=1.0, max_attempts=10,
               backoff_base_s=0.01)
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"timed out \(no complete response within") as ei:
        await c.get_json("/fapi/v1/klines")
    assert time.monotonic() - t0 < 1.0 + 1.5  # the budget bounds the whole call, in wall time
    assert ei.value.venue == "binance" and c.request_count >= 2


async def test_budget_counts_waiting_for_the_limiter_in_wall_time():
    lim = RateLimiter(1, 1)  # real clock: the second request would wait 1 s for its token
    c = VenueClient("okx", "https://x.example", transport=httpx.MockTransport(lambda r: httpx.Response(200, json=[])),
                    limiter=lim, budget_s=0.3)
    await c.get_json("/a")
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="rate limiter"):
        await c.get_json("/b")
    assert time.monotonic() - t0 < 0.3 + 1.5
    await asyncio.sleep(1.0)
    assert await c.get_json("/c") == []  # the cancelled wait took no token


async def test_gzip_bomb_is_refused_at_the_limit_after_decompression():
    stream = Chunks(gzip_zeros(1 << 30))  # ~1 MB of gzip, 1 GiB of zeros
    c = client(scripted(httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=stream)))
    tracemalloc.start()
    try:
        with pytest.raises(SourceError, match=r"too large.*limit of 2\.0 MB \(decoded\)") as ei:
            await c.get_json("/fapi/v1/klines", max_bytes=2 * 1024 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ei.value.venue == "binance" and ei.value.endpoint == "/fapi/v1/klines"
    assert peak < MEMORY_CEILING
    assert stream.sent < 64 * 1024  # stopped reading: a few KB of gzip, not the megabyte
    assert c.request_count == 1  # never retried


async def test_identity_body_beyond_the_limit_stops_reading():
    stream = Chunks(b"[" + b"1," * 32768 for _ in range(10_000))  # 650 MB if read to the end
    c = client(scripted(httpx.Response(200, stream=stream)))
    with pytest.raises(SourceError, match="too large"):
        await c.get_json("/x", max_bytes=1024 * 1024)
    assert stream.sent < 2 * 1024 * 1024


async def test_declared_length_beyond_the_limit_is_refused_before_reading():
    stream = Chunks([b"[]"])
    c = client(scripted(httpx.Response(200, headers={"Content-Length": str(300 * 1024 * 1024)}, stream=stream)))
    with pytest.raises(SourceError, match="declares 300.0 MB"):
        await c.get_json("/x", max_bytes=1024 * 1024)
    assert stream.sent == 0


@pytest.mark.parametrize("encoding, encode", [
    ("gzip", lambda b: gzip.compress(b)),
    ("gzip", lambda b: gzip.compress(b[:10]) + gzip.compress(b[10:])),  # two members
    ("deflate", lambda b: zlib.compress(b)),
    ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate without the zlib wrapper
    ("identity", lambda b: b),
])
async def test_compressed_bodies_are_decoded(encoding, encode):
    payload = [[1616338800000, "58000.1", "58010", "57990", "58005"]] * 50
    raw = encode(json.dumps(payload).encode())
    c = client(scripted(httpx.Response(200, headers={"Content-Encoding": encoding}, stream=Chunks([raw[:7], raw[7:]]))))
    assert await c.get_json("/x") == payload


async def test_truncated_gzip_is_a_sourceerror():
    raw = gzip.compress(json.dumps(list(range(1000))).encode())
    c = client(scripted(httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=Chunks([raw[: len(raw) // 2]]))))
    with pytest.raises(SourceError, match="cannot be decoded.*truncated"):
        await c.get_json("/x")


async def test_huge_error_body_is_cut_not_buffered():
    stream = Chunks(b"x" * 65536 for _ in range(2000))  # 130 MB of error page
    c = client(lambda r: httpx.Response(502, stream=stream), max_attempts=1)
    with pytest.raises(SourceError, match="HTTP 502"):
        await c.get_json("/x")
    assert stream.sent < 1024 * 1024


@pytest.mark.parametrize("raw, expected", [
    ("7", 7.0), (" 2.5 ", 2.5), ("0", 0.0), (12, 12.0),
    ("1e309", DEFAULT_SERVER_WAIT_S), ("inf", DEFAULT_SERVER_WAIT_S), ("nan", DEFAULT_SERVER_WAIT_S),
    ("-5", DEFAULT_SERVER_WAIT_S), ("soon", DEFAULT_SERVER_WAIT_S), ("", DEFAULT_SERVER_WAIT_S), (None, DEFAULT_SERVER_WAIT_S),
    (True, DEFAULT_SERVER_WAIT_S), ("99999999", MAX_SERVER_WAIT_S), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
])
def test_server_wait_is_clamped(raw, expected):
    assert server_wait(raw) == expected


def test_server_wait_reads_an_http_date():
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 100 < server_wait(when) <= 120


@pytest.mark.parametrize("header, expected", [("1e309", DEFAULT_SERVER_WAIT_S), ("99999999", MAX_SERVER_WAIT_S), ("nan", DEFAULT_SERVER_WAIT_S)])
async def test_429_retry_after_is_clamped(header, expected):
    ft = FakeTime()
    c = client(scripted(httpx.Response(429, headers={"Retry-After": header})), ft)
    with pytest.raises(SourceError) as ei:
        await c.get_json("/x")
    assert ei.value.retry_after == expected and "inf" not in str(ei.value)
    ft.now += expected + 1
    with pytest.raises(SourceError, match="HTTP 429"):  # the block ended: it sends again
        await c.get_json("/x")
    assert c.request_count == 2


async def test_418_retry_after_is_clamped():
    ft = FakeTime()
    c = client(scripted(httpx.Response(418, headers={"Retry-After": "1e309"})), ft)
    with pytest.raises(SourceError) as ei:
        await c.get_json("/x")
    assert ei.value.retry_after == DEFAULT_SERVER_WAIT_S
    with pytest.raises(SourceError, match=r"another 60s"):
        await c.get_json("/x")


async def test_limiter_clamps_reported_usage_and_pauses():
    ft = FakeTime()
    lim = RateLimiter(40, 1200, clock=ft.clock, sleep=ft.sleep)
    lim.observe(99_999_999, 2400)  # counts as the limit: 240 tokens of debt at most
    lim.observe(float("nan"), 2400)
    await lim.acquire(10)
    assert ft.now - 1000.0 == pytest.approx(250 / 40)
    lim.pause(float("inf"))
    t0 = ft.now
    await lim.acquire(1)
    assert ft.now - t0 == pytest.approx(DEFAULT_SERVER_WAIT_S, abs=0.1)


async def test_binance_used_weight_header_cannot_stall_the_source():
    from fake_binance import FakeBinance

    from analysis.sources.binance import WEIGHT_LIMIT_1M, BinanceSource

    ft = FakeTime()
    frame = pd.DataFrame({"time": [0], "open": [1.0], "high": [1.0], "low": [1.0], "close": [1.0], "oi_usd": [1.0]})
    fake = FakeBinance(frame, lambda: 10**12)
    fake.used_weight = 99_999_999
    src = BinanceSource(transport=fake.transport, sleep=ft.sleep, clock=ft.clock)
    await src.symbols()
    assert src.used_weight == WEIGHT_LIMIT_1M
    fake.exchange_info = {"symbols": []}
    src._symbols_at = -1e9  # force a refresh: one more request through the weight bucket
    await src.symbols()
    assert sum(ft.sleeps) < 10  # at most the 10% headroom to refill, not 28.9 days


async def test_bybit_reset_header_cannot_stall_or_crash_the_source():
    from analysis.sources.bybit import MAX_RESET_WAIT_S, BybitSource

    busy = {"retCode": 10006, "retMsg": "Too many visits!", "result": {}, "retExtInfo": {}, "time": 1}
    for header in ("9" * 400, str(int(time.time() * 1000) + 10**12)):
        ft = FakeTime()
        src = BybitSource(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=busy, headers={
            "X-Bapi-Limit-Reset-Timestamp": header})), sleep=ft.sleep, clock=ft.clock)
        with pytest.raises(SourceError, match="10006") as ei:
            await src.symbols()
        assert ei.value.retry_after is not None and ei.value.retry_after <= MAX_RESET_WAIT_S
        assert sum(ft.sleeps) <= 2 * MAX_RESET_WAIT_S + 1


async def test_single_flight_cancels_the_work_when_every_waiter_has_gone():
    sf = SingleFlight()
    slots = asyncio.Semaphore(1)
    cancelled = asyncio.Event()

    async def hang():
        async with slots:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    waiters = [asyncio.ensure_future(sf.do("k", hang)) for _ in range(3)]
    await asyncio.sleep(0.01)
    waiters[0].cancel()
    await asyncio.sleep(0.01)
    assert not cancelled.is_set() and "k" in sf  # others still wait: the work goes on
    for w in waiters[1:]:
        w.cancel()
    await asyncio.wait_for(cancelled.wait(), 1)
    await asyncio.sleep(0)
    assert not slots.locked() and "k" not in sf  # the slot is free again

    async def ok():
        return 5

    assert await sf.do("k", ok) == 5  # a later caller runs afresh


async def test_abandoned_binance_fetch_frees_its_page_slots():
    from fake_binance import FakeBinance

    from analysis.sources.binance import BinanceSource
    from analysis.sources.cache import BarCache
    from analysis.sources import SAMPLE_PATH, read_bars_csv
    from analysis.windows import WINDOWS

    frame = read_bars_csv(SAMPLE_PATH, venue="binance", symbol="BTCUSDT").to_frame()
    now = int(frame["time"].iloc[-1]) + 330_000
    fake = FakeBinance(frame, lambda: now)
    hanging = {"on": True}

    async def handler(request):
        if hanging["on"] and request.url.path != "/fapi/v1/exchangeInfo":
            await asyncio.sleep(3600)  # the venue stalls
        return fake.handle(request)

    src = BinanceSource(transport=httpx.MockTransport(handler), cache=BarCache(None), now_ms=lambda: now, max_concurrency=2)
    task = asyncio.ensure_future(src.bars("BTCUSDT", WINDOWS["1d"]))
    await asyncio.sleep(0.2)
    assert src._pages.locked()  # both slots held by the stalled pages
    task.cancel()  # the only caller gives up
    await asyncio.sleep(0.05)
    assert not src._pages.locked()
    hanging["on"] = False  # the venue recovers: served at once, not after the stalled fetch
    bars = await asyncio.wait_for(src.bars("BTCUSDT", WINDOWS["1d"]), 5)
    assert len(bars) == 288
    await src.aclose()


async def test_a_rate_limit_wait_and_a_retry_are_told_to_the_progress_callback():
    ft = FakeTime()
    h = scripted(httpx.Response(429, headers={"Retry-After": "7"}, json={"code": -1003, "msg": "Too many"}),
                 httpx.Response(503), httpx.Response(200, json=[]))
    c = client(h, ft, limiter=RateLimiter(100, 100, clock=ft.clock, sleep=ft.sleep))
    seen: list[str] = []
    c.progress = seen.append
    assert await c.get_json("/x") == []
    assert seen[0] == f"{c.venue}: rate limited, waiting 7s"
    assert len(seen) == 2 and seen[1].startswith(f"{c.venue}: server error HTTP 503") and "retrying in" in seen[1]
