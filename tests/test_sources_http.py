"""The HTTP core: limiter, retries, status handling, JSON validation and single-flight (offline)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from analysis.errors import SourceError
from analysis.sources.http import RateLimiter, SingleFlight, VenueClient
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
