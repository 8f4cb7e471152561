"""The venue health probes of /about (bot/venue_health.py), offline through httpx.MockTransport.

The healthy answers are the venues' documented server-time examples (tests/fixtures/<venue>/time.json,
see each SOURCES.md). Slowness is measured on an injected clock, so no test depends on timing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from bot.venue_health import PROBES, HealthParams, VenueHealth

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VENUES = ("binance", "bybit", "okx")
PATH_OF = {v: PROBES[v].path for v in VENUES}


def documented(venue: str) -> bytes:
    return (FIXTURES / venue / "time.json").read_bytes()


def venue_of(request: httpx.Request) -> str:
    return next(v for v in VENUES if request.url.host == httpx.URL(PROBES[v].base_url).host)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def health(handler, *, clock: Clock | None = None, **params) -> VenueHealth:
    kw = {"timeout_s": 0.5, "slow_s": 1.5, "ttl_s": 60.0, "budget_s": 5.0, **params}
    return VenueHealth(VENUES, params=HealthParams(**kw), transport=httpx.MockTransport(handler),
                       clock=clock or Clock())


async def test_every_venue_up_on_its_documented_answer():
    seen = []

    def handler(request):
        v = venue_of(request)
        seen.append((v, request.url.path, request.headers["user-agent"]))
        return httpx.Response(200, content=documented(v))

    status = await health(handler).check()
    assert {v: s.state for v, s in status.items()} == {"binance": "up", "bybit": "up", "okx": "up"}
    assert sorted((v, p) for v, p, _ in seen) == sorted(PATH_OF.items())
    assert all(ua.startswith("liqmap/") for _, _, ua in seen)


async def test_down_on_an_error_status_and_the_others_still_up():
    def handler(request):
        v = venue_of(request)
        return httpx.Response(503, text="maintenance") if v == "okx" else httpx.Response(200, content=documented(v))

    status = await health(handler).check()
    assert status["okx"].state == "down" and status["okx"].detail == "HTTP 503"
    assert status["binance"].state == status["bybit"].state == "up"


@pytest.mark.parametrize("body", [
    b"<html>cloudflare</html>", b"\xff\xfe", b'{"serverTime": "soon"}', b'{"retCode": 10006, "retMsg": "Too many visits!"}',
    b'{"code": "50011", "data": []}', b"[]", b"null", b'{"serverTime": true}',
], ids=["html", "not-utf8", "string-time", "bybit-error", "okx-error", "list", "null", "bool"])
async def test_garbage_is_down_and_named(body):
    status = await health(lambda request: httpx.Response(200, content=body)).check()
    assert {s.state for s in status.values()} == {"down"}
    assert {s.detail for s in status.values()} <= {"answer is not JSON", "answer not in the documented shape"}


async def test_a_huge_answer_is_not_read_to_the_end():
    status = await health(lambda request: httpx.Response(200, content=b"{" + b" " * 100_000 + b"}")).check()
    assert {s.detail for s in status.values()} == {"answer larger than a server-time reply"}


async def test_no_answer_within_the_timeout_is_down():
    async def handler(request):
        if venue_of(request) == "bybit":
            await asyncio.sleep(30)  # cancelled by the probe's timeout
        return httpx.Response(200, content=documented(venue_of(request)))

    status = await health(handler, timeout_s=0.05).check()
    assert status["bybit"].state == "down" and status["bybit"].detail == "no answer within 0.05 s"
    assert status["okx"].state == "up"


async def test_a_connection_error_is_down():
    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    status = await health(handler).check()
    assert {s.detail for s in status.values()} == {"cannot connect (ConnectError)"}


async def test_slow_on_the_injected_clock():
    clock = Clock()

    def handler(request):
        if venue_of(request) == "binance":
            clock.t += 2.0  # the answer "took" two seconds
        return httpx.Response(200, content=documented(venue_of(request)))

    hh = VenueHealth(("binance",), params=HealthParams(slow_s=1.5), transport=httpx.MockTransport(handler), clock=clock)
    status = await hh.check()
    assert status["binance"].state == "slow" and status["binance"].latency_ms == pytest.approx(2000)
    assert status["binance"].detail == "answered in 2000 ms"


async def test_the_result_is_cached_and_concurrent_callers_share_one_round():
    clock, calls = Clock(), []

    def handler(request):
        calls.append(venue_of(request))
        return httpx.Response(200, content=documented(venue_of(request)))

    hh = health(handler, clock=clock)
    await asyncio.gather(hh.check(), hh.check(), hh.check())
    assert hh.probes_run == 1 and sorted(calls) == sorted(VENUES)
    await hh.check()
    assert hh.probes_run == 1  # within ttl
    clock.t += 61
    await hh.check()
    assert hh.probes_run == 2 and len(calls) == 6


async def test_a_caller_out_of_budget_gets_the_last_result_and_the_round_finishes_anyway():
    release = asyncio.Event()

    async def handler(request):
        await release.wait()
        return httpx.Response(200, content=documented(venue_of(request)))

    hh = health(handler, timeout_s=60, budget_s=0.01)
    first = await hh.check()
    assert {s.state for s in first.values()} == {"unknown"}
    release.set()
    await asyncio.wait_for(hh._task, 5)
    assert {s.state for s in (await hh.check()).values()} == {"up"}
    await hh.close()


def test_only_venues_with_a_probe_are_asked():
    assert VenueHealth(("binance", "coinglass")).venues == ("binance",)


async def test_no_venue_no_request():
    def handler(request):  # pragma: no cover - must not be called
        raise AssertionError("asked")

    assert await VenueHealth((), transport=httpx.MockTransport(handler)).check() == {}


def test_the_documented_examples_are_what_the_probes_accept():
    for v in VENUES:
        assert PROBES[v].healthy(json.loads(documented(v))), v
