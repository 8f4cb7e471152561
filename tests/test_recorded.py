"""Record and replay: raw responses + manifest, sha256-checked offline replay, CLI round trip."""

from __future__ import annotations

import hashlib
import json

import httpx
import numpy as np
import pytest

from analysis.errors import InputError, SourceError
from analysis.sources.binance import KLINES
from analysis.sources.recorded import MANIFEST, Recorder, ReplayTransport, load_manifest, request_key
from analysis.sources.cache import BarCache
from analysis.sources.registry import aclose_sources, live_sources, make_sources, record
from analysis.windows import WINDOWS
from bot.cli import main
from fake_binance import FakeBinance

STEP = 300_000


@pytest.fixture
def fake(sample_bars):
    frame = sample_bars.to_frame()
    now = int(frame["time"].iloc[-1]) + STEP + 30_000
    return FakeBinance(frame, lambda: now)


async def make_recording(fake, tmp_path, window="1d"):
    out = tmp_path / "rec"
    lines = await record("btc", window, "binance", out, transport=fake.transport, now_ms=fake.now_ms())
    return out, lines


async def test_record_writes_bodies_and_manifest(fake, tmp_path):
    out, lines = await make_recording(fake, tmp_path)
    m = json.loads((out / MANIFEST).read_text())
    assert m["format"] == 1 and m["meta"]["symbol"] == "BTCUSDT" and m["meta"]["venues"] == ["binance"]
    assert len(m["responses"]) == fake.count() == 3  # exchangeInfo, one klines page, one OI page
    for r in m["responses"]:
        body = (out / r["file"]).read_bytes()
        assert hashlib.sha256(body).hexdigest() == r["sha256"]
        assert r["url"].startswith("https://fapi.binance.com/") and r["status"] == 200 and r["time"].endswith("Z")
    kl = next(r for r in m["responses"] if r["path"] == KLINES)
    assert kl["params"]["symbol"] == "BTCUSDT" and kl["params"]["interval"] == "5m"
    assert any("288 5m bars" in line for line in lines)
    assert "liqmap report --source recorded:" in lines[-1]


async def test_replay_round_trip_gives_identical_bars(fake, tmp_path):
    out, _ = await make_recording(fake, tmp_path)
    live = live_sources(transport=fake.transport, cache=BarCache(tmp_path / "c.sqlite3"), now_ms=fake.now_ms, venues=("binance",))
    expected = await live["binance"].bars("BTCUSDT", WINDOWS["1d"])
    await aclose_sources(live)
    replay = make_sources(f"recorded:{out}")
    assert list(replay) == ["binance"]
    got = await replay["binance"].bars("BTCUSDT", WINDOWS["1d"])
    await aclose_sources(replay)
    np.testing.assert_array_equal(got.time, expected.time)
    np.testing.assert_array_equal(got.close, expected.close)
    np.testing.assert_array_equal(got.oi_usd, expected.oi_usd)
    np.testing.assert_array_equal(got.taker_buy, expected.taker_buy)


async def test_replay_refuses_a_modified_file(fake, tmp_path):
    out, _ = await make_recording(fake, tmp_path)
    m = load_manifest(out)
    kl = next(r for r in m.responses if r["path"] == KLINES)
    path = out / kl["file"]
    path.write_bytes(path.read_bytes().replace(b'"', b"'", 1))
    src = make_sources(f"recorded:{out}")["binance"]
    with pytest.raises(SourceError, match="does not match its sha256"):
        await src.bars("BTCUSDT", WINDOWS["1d"])
    await src.aclose()


async def test_replay_of_something_not_recorded_says_so(fake, tmp_path):
    out, _ = await make_recording(fake, tmp_path, window="1d")
    src = make_sources(f"recorded:{out}")["binance"]
    with pytest.raises(SourceError, match="not in the recording .*BTCUSDT 1d"):
        await src.bars("BTCUSDT", WINDOWS["7d"])
    await src.aclose()


def test_bad_recording_dirs(tmp_path):
    with pytest.raises(InputError, match="no recording in"):
        make_sources(f"recorded:{tmp_path}")
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match="not a readable recording manifest"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": 1, "responses": []}))
    with pytest.raises(InputError, match="not a liqmap recording manifest"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": 1, "now_ms": 1, "responses": []}))
    with pytest.raises(InputError, match="holds no responses of a replayable venue"):
        make_sources(f"recorded:{tmp_path}")
    with pytest.raises(InputError, match="needs a directory"):
        make_sources("recorded:")


def test_recorder_refuses_to_overwrite(tmp_path):
    r = Recorder(tmp_path)
    r.save()
    with pytest.raises(InputError, match="already holds a recording"):
        Recorder(tmp_path)


async def test_replay_transport_matches_on_sorted_query(tmp_path):
    rec = Recorder(tmp_path, now_ms=123)
    rec.record("binance", "https://fapi.binance.com/fapi/v1/klines?symbol=X&interval=5m", "/fapi/v1/klines",
               {"symbol": "X", "interval": "5m"}, 200, b"[]")
    t = ReplayTransport(load_manifest(tmp_path))
    async with httpx.AsyncClient(transport=t) as c:
        r = await c.get("https://fapi.binance.com/fapi/v1/klines", params={"interval": "5m", "symbol": "X"})
        assert r.status_code == 200 and r.json() == []
        r = await c.get("https://fapi.binance.com/fapi/v1/klines", params={"interval": "15m", "symbol": "X"})
        assert r.status_code == 404
    assert request_key("https://h/p?b=2&a=1") == request_key("https://h/p?a=1&b=2")


async def test_record_with_every_venue_failing_is_an_error(tmp_path):
    def down(request):
        return httpx.Response(451, json={"msg": "restricted location"})

    with pytest.raises(SourceError, match="every venue failed"):
        await record("BTCUSDT", "1d", "binance", tmp_path / "r", transport=httpx.MockTransport(down))
    m = load_manifest(tmp_path / "r")  # the manifest still says what happened
    assert "binance" in m.meta["failed"] and m.meta["venues"] == []


def test_cli_report_from_a_recording(fake, tmp_path, capsys):
    import asyncio

    out, _ = asyncio.run(make_recording(fake, tmp_path))
    code = main(["report", "--source", f"recorded:{out}", "--symbol", "BTCUSDT", "--window", "1d", "--out", str(tmp_path / "o")])
    assert code == 0
    data = json.loads((tmp_path / "o" / "liqmap.json").read_text())
    assert data["price"] == pytest.approx(float(fake.frame("5m")["close"].iloc[-1]))
    assert (tmp_path / "o" / "liqmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_record_rejects_unknown_exchange(tmp_path, capsys):
    assert main(["record", "--exchange", "kraken", "--out", str(tmp_path / "r")]) == 2
    assert "argument --exchange: invalid choice: 'kraken' (choose from 'all', 'binance', 'bybit', 'okx')" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
