"""Record and replay: raw responses + manifest, sha256-checked offline replay, CLI round trip."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

import httpx
import numpy as np
import pytest

from pathlib import Path

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
    rec.save()
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

    with pytest.raises(SourceError, match="every venue failed.*binance.*nothing was kept"):
        await record("BTCUSDT", "1d", "binance", tmp_path / "r", transport=httpx.MockTransport(down))
    assert not (tmp_path / "r").exists()  # nothing left behind that would block a retry


async def test_a_failed_recording_does_not_block_the_retry(fake, tmp_path):
    out = tmp_path / "rec"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    fake.inject("/futures/data/openInterestHist", httpx.Response(451, json={"msg": "restricted"}))
    with pytest.raises(SourceError, match="every venue failed"):
        await record("btc", "1d", "binance", out, transport=fake.transport, now_ms=fake.now_ms())
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # its own files removed, nothing else
    lines = await record("btc", "1d", "binance", out, transport=fake.transport, now_ms=fake.now_ms())
    assert "recorded" in lines[-1] and load_manifest(out).venues == ["binance"]


async def test_a_recording_cut_short_by_an_exception_leaves_nothing(fake, tmp_path):
    def handle(request):
        if request.url.path == "/futures/data/openInterestHist":
            raise asyncio.CancelledError  # what Ctrl-C does to the running task
        return fake.handle(request)

    with pytest.raises(asyncio.CancelledError):
        await record("btc", "1d", "binance", tmp_path / "r", transport=httpx.MockTransport(handle), now_ms=fake.now_ms())
    assert not (tmp_path / "r").exists()


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
    assert "argument --exchange: invalid choice: 'kraken' (choose from 'all', 'binance', 'bybit', 'okx', 'hyperliquid')" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# -- a manifest is outside input: confined, bounded, checked field by field ---------------------------

URL = "https://fapi.binance.com/fapi/v1/klines?symbol=X&interval=5m"


def write_recording(d, body=b"[]", **entry):
    """A one-response recording in ``d``; ``entry`` overrides fields of the response (None deletes one)."""
    d.mkdir(exist_ok=True)
    (d / "0001-binance-klines.json").write_bytes(body)
    r = {"file": "0001-binance-klines.json", "venue": "binance", "url": URL, "path": "/fapi/v1/klines",
         "params": {"symbol": "X", "interval": "5m"}, "status": 200, "sha256": hashlib.sha256(body).hexdigest()}
    r.update(entry)
    r = {k: v for k, v in r.items() if v is not None}
    (d / MANIFEST).write_text(json.dumps({"format": 1, "now_ms": 123, "responses": [r]}))
    return d


def test_a_well_formed_manifest_loads(tmp_path):
    m = load_manifest(write_recording(tmp_path / "rec"))
    assert m.venues == ["binance"] and m.read(m.responses[0]) == b"[]"


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "../secret.json", "sub/../../x.json", "./0001-binance-klines.json", "a/b.json", "..", "",
     "manifest.json", "x\x00y", 7, None],
    ids=["absolute", "dotdot", "nested-dotdot", "dot-slash", "subdir", "parent", "empty", "itself", "nul", "int", "null"],
)
def test_file_names_are_confined_to_the_directory(tmp_path, name):
    (tmp_path / "secret.json").write_text('{"password": "hunter2"}')
    d = write_recording(tmp_path / "rec", file=name if name is not None else 0)
    with pytest.raises(InputError, match="response 1 file .* not a plain file name") as err:
        load_manifest(d)
    assert "hunter2" not in str(err.value)


def test_a_symlink_out_of_the_directory_is_refused(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text('{"password": "hunter2"}')
    d = write_recording(tmp_path / "rec")
    (d / "link.json").symlink_to(outside)
    (d / MANIFEST).write_text((d / MANIFEST).read_text().replace("0001-binance-klines.json", "link.json"))
    with pytest.raises(InputError, match="leads outside the recording directory"):
        load_manifest(d)


def test_a_symlink_inside_the_directory_is_fine(tmp_path):
    d = write_recording(tmp_path / "rec")
    (d / "link.json").symlink_to(d / "0001-binance-klines.json")
    (d / MANIFEST).write_text((d / MANIFEST).read_text().replace("0001-binance-klines.json", "link.json"))
    assert load_manifest(d).responses[0]["file"] == "link.json"


def test_a_manifest_that_is_a_symlink_out_is_refused(tmp_path):
    real = write_recording(tmp_path / "real")
    d = tmp_path / "rec"
    d.mkdir()
    (d / "0001-binance-klines.json").write_bytes(b"[]")
    (d / MANIFEST).symlink_to(real / MANIFEST)
    with pytest.raises(InputError, match="not a readable recording manifest.*outside"):
        load_manifest(d)


def test_a_device_is_refused_before_it_is_read(tmp_path):
    d = write_recording(tmp_path / "rec")
    (d / "zero.json").symlink_to("/dev/zero")  # leads outside, and is not a regular file either
    (d / MANIFEST).write_text((d / MANIFEST).read_text().replace("0001-binance-klines.json", "zero.json"))
    with pytest.raises(InputError, match="leads outside"):
        load_manifest(d)
    from analysis.files import read_regular

    with pytest.raises(ValueError, match="not a regular file"):
        read_regular(Path("/dev/zero"), 1024)


def refused_without_blocking(d) -> str:
    """load_manifest(d)'s InputError text, run in a daemon thread so a blocking open fails the test, not hangs it."""
    import threading

    out: list[BaseException] = []
    worker = threading.Thread(target=lambda: out.append(pytest.raises(InputError, load_manifest, d).value), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "load_manifest blocked"
    return str(out[0])


def test_a_fifo_never_blocks(tmp_path):
    d = write_recording(tmp_path / "rec")
    os.mkfifo(d / "fifo.json")  # nobody writes: opening it for reading would block forever
    (d / MANIFEST).write_text((d / MANIFEST).read_text().replace("0001-binance-klines.json", "fifo.json"))
    assert "fifo.json is not a regular file" in refused_without_blocking(d)
    os.unlink(d / MANIFEST)
    os.mkfifo(d / MANIFEST)
    assert "not a readable recording manifest (not a regular file)" in refused_without_blocking(d)


async def test_a_file_swapped_for_a_fifo_after_loading_does_not_block_replay(tmp_path):
    d = write_recording(tmp_path / "rec")
    t = ReplayTransport(load_manifest(d))
    os.unlink(d / "0001-binance-klines.json")
    os.mkfifo(d / "0001-binance-klines.json")
    async with httpx.AsyncClient(transport=t) as c:
        with pytest.raises(SourceError, match="unreadable: not a regular file"):
            await c.get(URL)


def test_oversized_files_are_refused(tmp_path, monkeypatch):
    from analysis.sources import recorded

    monkeypatch.setattr(recorded, "MAX_RESPONSE_BYTES", 1000)
    d = write_recording(tmp_path / "rec", body=b"[" + b"0," * 600 + b"0]")
    with pytest.raises(InputError, match="holds 1203 bytes, over the limit of 1000"):
        load_manifest(d)
    monkeypatch.setattr(recorded, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(InputError, match="not a readable recording manifest .*over the limit of 100"):
        load_manifest(d)


async def test_a_file_that_grows_after_loading_is_refused_at_replay(tmp_path, monkeypatch):
    from analysis.sources import recorded

    d = write_recording(tmp_path / "rec")
    t = ReplayTransport(load_manifest(d))
    monkeypatch.setattr(recorded, "MAX_RESPONSE_BYTES", 1000)
    (d / "0001-binance-klines.json").write_bytes(b" " * 5000)
    async with httpx.AsyncClient(transport=t) as c:
        with pytest.raises(SourceError, match="unreadable: 5000 bytes is over the limit of 1000"):
            await c.get(URL)


@pytest.mark.parametrize(
    "entry, message",
    [
        (dict(sha256="abc"), "sha256 is not 64 lower-case hex digits"),
        (dict(sha256="Z" * 64), "sha256 is not 64"),
        (dict(sha256=None), "lacks sha256"),
        (dict(venue="kraken"), "venue 'kraken' is not a known venue"),
        (dict(venue=["binance"]), "is not a known venue"),
        (dict(url="http://fapi.binance.com/fapi/v1/klines"), "is not an https URL"),
        (dict(url="https://[::1"), "is not an https URL"),
        (dict(url="https://user:pw@fapi.binance.com/fapi/v1/klines", path="/fapi/v1/klines"), "is not an https URL"),
        (dict(url="file:///etc/passwd"), "is not an https URL"),
        (dict(url=12), "url is not an https URL"),
        (dict(path="/other"), "path '/other' is not the path of its url"),
        (dict(params={"a": 1}), "params is not an object of strings"),
        (dict(status=500), "status '500' is not a successful"),
        (dict(status="200"), "status '200' is not a successful"),
    ],
)
def test_every_field_is_checked(tmp_path, entry, message):
    with pytest.raises(InputError, match=message):
        load_manifest(write_recording(tmp_path / "rec", **entry))


@pytest.mark.parametrize(
    "text, message",
    [
        (b"{not json", "not a readable recording manifest"),
        (b"\xff\xfe garbage", "not a readable recording manifest \\(UnicodeDecodeError\\)"),
        (b"[" * 100_000 + b"]" * 100_000, "not a readable recording manifest"),
        (b'{"format": 1, "now_ms": 1' + b"0" * 5000 + b', "responses": []}', "not a readable recording manifest"),
        (b'{"format": 1, "now_ms": true, "responses": []}', "not a liqmap recording manifest"),
        (b'{"format": 1, "now_ms": -5, "responses": []}', "not a liqmap recording manifest"),
        (b'{"format": 1, "now_ms": 5, "responses": [7]}', "response 1 is not an object"),
        (b'{"format": 1, "now_ms": 5, "responses": [], "meta": {"symbol": "<@everyone>"}}', "meta.symbol is not a short name"),
        (b'{"format": 1, "now_ms": 5, "responses": [], "meta": []}', "meta is not an object"),
        (b"[]", "not a liqmap recording manifest"),
    ],
    ids=["syntax", "not-utf8", "deep", "huge-int", "bool-now", "negative-now", "entry-type", "meta-symbol", "meta-type",
         "list"],
)
def test_garbage_manifests_are_input_errors(tmp_path, text, message):
    (tmp_path / MANIFEST).write_bytes(text)
    with pytest.raises(InputError, match=message):
        load_manifest(tmp_path)


def test_too_many_responses_are_refused(tmp_path, monkeypatch):
    from analysis.sources import recorded

    monkeypatch.setattr(recorded, "MAX_RESPONSES", 2)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": 1, "now_ms": 5, "responses": [{}] * 3}))
    with pytest.raises(InputError, match="lists 3 responses, over the limit of 2"):
        load_manifest(tmp_path)


def test_cli_report_from_a_bad_recording_is_one_line(tmp_path, capsys):
    d = write_recording(tmp_path / "rec", venue="kraken")
    code = main(["report", "--source", f"recorded:{d}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "kraken" in err
