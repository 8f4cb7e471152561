"""The HTTP core's POST: same limiter, retries, size limits and validation as GET; recorded and replayed."""

from __future__ import annotations

import gzip
import json

import httpx
import pytest

from analysis.errors import SourceError
from analysis.sources.http import RateLimiter, VenueClient, printable
from analysis.sources.recorded import Recorder, ReplayTransport, load_manifest
from test_sources_http import FakeTime, scripted


def post_client(handler, ft: FakeTime | None = None, **kw) -> VenueClient:
    ft = ft or FakeTime()
    return VenueClient("hyperliquid", "https://api.example", transport=httpx.MockTransport(handler),
                       sleep=ft.sleep, clock=ft.clock, **kw)


async def test_post_sends_json_body_and_content_type():
    h = scripted(httpx.Response(200, json=[{"t": 1}]))
    c = post_client(h)
    body = {"type": "candleSnapshot", "req": {"coin": "BTC", "interval": "1h", "startTime": 1, "endTime": 2}}
    assert await c.post_json("/info", body, endpoint="/info candleSnapshot") == [{"t": 1}]
    req = h.calls[0]
    assert req.method == "POST" and req.url.path == "/info" and not req.url.query
    assert req.headers["content-type"] == "application/json"
    assert json.loads(req.content) == body
    assert c.request_count == 1
    await c.aclose()


async def test_post_retries_5xx_resending_the_same_body():
    ft = FakeTime()
    h = scripted(httpx.Response(502, text="bad gateway"), httpx.Response(200, json={"ok": True}))
    c = post_client(h, ft)
    assert await c.post_json("/info", {"type": "metaAndAssetCtxs"}) == {"ok": True}
    assert [json.loads(r.content) for r in h.calls] == [{"type": "metaAndAssetCtxs"}] * 2
    assert len(ft.sleeps) == 1


async def test_post_429_without_body_honours_retry_after_then_succeeds():
    ft = FakeTime()
    h = scripted(httpx.Response(429, headers={"Retry-After": "3"}), httpx.Response(200, json=[]))
    lim = RateLimiter(20, 1200, clock=ft.clock, sleep=ft.sleep)
    c = post_client(h, ft, limiter=lim)
    assert await c.post_json("/info", {"type": "metaAndAssetCtxs"}, cost=20) == []
    assert ft.now - 1000.0 >= 3.0
    assert c.request_count == 2


async def test_post_429_with_body_beyond_budget_names_the_endpoint_and_blocks():
    h = scripted(httpx.Response(429, text="rate limited, slow down", headers={"Retry-After": "120"}))
    c = post_client(h, budget_s=30)
    with pytest.raises(SourceError) as ei:
        await c.post_json("/info", {"type": "candleSnapshot"}, endpoint="/info candleSnapshot")
    assert ei.value.endpoint == "/info candleSnapshot" and ei.value.status == 429
    assert ei.value.retry_after == pytest.approx(120)
    with pytest.raises(SourceError, match="not sending"):
        await c.post_json("/info", {"type": "metaAndAssetCtxs"})
    assert c.request_count == 1


async def test_post_4xx_quotes_the_venue_text_escaped():
    evil = "Failed to deserialize the JSON body\u202e\u200d\x1b[31m @everyone"
    h = scripted(httpx.Response(422, text=evil))
    c = post_client(h)
    with pytest.raises(SourceError) as ei:
        await c.post_json("/info", {"type": "candleSnapshot"}, endpoint="/info candleSnapshot")
    msg = str(ei.value)
    assert "HTTP 422" in msg and "Failed to deserialize the JSON body" in msg
    assert "\u202e" not in msg and "\u200d" not in msg and "\x1b" not in msg
    assert "\\u202e" in msg and "\\u001b" in msg
    assert c.request_count == 1  # a 4xx is never retried


async def test_post_garbage_200_is_a_sourceerror():
    c = post_client(scripted(httpx.Response(200, content=b"[{\"t\": 1, ")))
    with pytest.raises(SourceError, match="not valid JSON"):
        await c.post_json("/info", {"type": "metaAndAssetCtxs"})


async def test_post_body_beyond_max_bytes_is_refused_once():
    big = gzip.compress(b"[" + b"0," * 600_000 + b"0]")
    h = scripted(httpx.Response(200, content=big, headers={"Content-Encoding": "gzip"}))
    c = post_client(h)
    with pytest.raises(SourceError, match="too large"):
        await c.post_json("/info", {"type": "metaAndAssetCtxs"}, max_bytes=64 * 1024)
    assert c.request_count == 1


async def test_post_body_that_is_not_json_sends_nothing():
    h = scripted(httpx.Response(200, json=[]))
    c = post_client(h)
    with pytest.raises(SourceError, match="not JSON"):
        await c.post_json("/info", {"x": float("nan")})
    with pytest.raises(SourceError, match="not JSON"):
        await c.post_json("/info", {"x": object()})
    assert c.request_count == 0 and not h.calls


async def test_limiter_charge_takes_tokens_after_the_fact_with_bounded_debt():
    ft = FakeTime()
    lim = RateLimiter(20, 100, clock=ft.clock, sleep=ft.sleep)
    lim.charge(150)  # more than a burst: capped at one burst of cost
    assert lim.tokens == pytest.approx(0)
    lim.charge(1e9)
    assert lim.tokens == pytest.approx(-100)  # at most one burst of debt
    lim.charge(float("nan"))
    lim.charge(-5)
    assert lim.tokens == pytest.approx(-100)
    await lim.acquire(20)  # waits for the debt to refill: 120 tokens at 20/s
    assert ft.now - 1000.0 == pytest.approx(6.0)


def test_printable_escapes_invisibles_and_collapses_whitespace():
    assert printable("a\n\tb") == "a b"
    assert printable("x\u200by") == "x\\u200by"
    assert printable("é ok") == "é ok"
    assert len(printable("z" * 500)) == 160


async def test_post_is_recorded_and_replayed_by_body(tmp_path):
    bodies = {"metaAndAssetCtxs": [{"universe": []}, []], "candleSnapshot": [{"t": 5}]}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=bodies[json.loads(request.content)["type"]])

    rec = Recorder(tmp_path / "rec", now_ms=1_700_000_000_000)
    c = VenueClient("binance", "https://api.hyperliquid.xyz", transport=httpx.MockTransport(handler), recorder=rec)
    await c.post_json("/info", {"type": "metaAndAssetCtxs"})
    await c.post_json("/info", {"type": "candleSnapshot", "req": {"coin": "BTC", "interval": "1h"}})
    await c.aclose()
    manifest = load_manifest(tmp_path / "rec")
    assert [r["method"] for r in manifest.responses] == ["POST", "POST"]
    replay = VenueClient("binance", "https://api.hyperliquid.xyz", transport=ReplayTransport(manifest))
    # key order of the JSON body does not matter; a body never recorded is a 404 naming the recording
    assert await replay.post_json("/info", {"req": {"interval": "1h", "coin": "BTC"}, "type": "candleSnapshot"}) == [{"t": 5}]
    assert await replay.post_json("/info", {"type": "metaAndAssetCtxs"}) == [{"universe": []}, []]
    with pytest.raises(SourceError, match="not in the recording"):
        await replay.post_json("/info", {"type": "candleSnapshot", "req": {"coin": "ETH", "interval": "1h"}})
    await replay.aclose()


def test_manifest_post_entries_are_checked(tmp_path):
    from analysis.errors import InputError

    d = tmp_path / "rec"
    rec = Recorder(d, now_ms=1_700_000_000_000)
    rec.record("binance", "https://api.hyperliquid.xyz/info", "/info", {}, 200, b"[]", request_body=b'{"type":"meta"}')
    data = json.loads((d / "manifest.json").read_text())
    for bad, why in (({"method": "DELETE"}, "not GET or POST"), ({"request": "{not json"}, "not JSON"),
                     ({"request": None}, "missing or too long"), ({"method": "GET"}, "set on a GET")):
        broken = json.loads(json.dumps(data))
        broken["responses"][0].update(bad)
        (d / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(InputError, match=why):
            load_manifest(d)
