"""``liqmap measure track / map / compare``: files written, scores printed, every bad input one line."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from bot import cli, measure
from loopback_ws import LoopbackWS, Peer, hold
from measured_helpers import synthetic_snapshot

FIX = Path(__file__).parent / "fixtures" / "hyperliquid_measured"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("LIQMAP_SOURCE", "LIQMAP_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIQMAP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def positions(tmp_path) -> Path:
    path = tmp_path / "positions.json"
    path.write_text(json.dumps(synthetic_snapshot().to_json()))
    return path


def one_error(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def test_map_writes_the_measured_map(positions, tmp_path, capsys):
    assert cli.main(["measure", "map", "--positions", str(positions), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "of open interest" in out and "measured.png" in out
    doc = json.loads((tmp_path / "o" / "measured.json").read_text())
    assert doc["kind"] == "measured" and doc["params"]["coverage"] > 0
    assert (tmp_path / "o" / "measured.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_scores_a_stand_in_estimate_and_names_it(positions, tmp_path, capsys):
    code = cli.main(["measure", "compare", "--positions", str(positions), "--source", "sample", "--exchange", "binance",
                     "--out", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Spearman per bin" in out and "naive baseline" in out and "not Hyperliquid's" in out
    doc = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert doc["estimated_from"] == {"venues": ["binance"], "window": "7d"}
    assert set(doc["estimated"]["bands"]) == {"1%", "2%", "5%"}
    assert {p.name for p in (tmp_path / "c").iterdir()} == {"compare.png", "compare.json", "measured.png", "measured.json"}


def test_compare_without_a_hyperliquid_venue_says_what_to_do(positions, tmp_path, capsys):
    code = cli.main(["measure", "compare", "--positions", str(positions), "--source", "sample", "--out", str(tmp_path / "c")])
    one_error(capsys, code, "--exchange hyperliquid", "it has binance", "--exchange")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("content,fragment", [
    (b"{nope", "not JSON"),
    (b'{"format": "liqmap.reading"}', "not a liqmap positions file"),
    (b'{"format": "liqmap.measured-positions", "version": 1, "time": 1, "coins": ["BTC"], "asset_ctxs": {}, '
     b'"positions": [{"user": "bob"}]}', "positions[0]: user"),
])
def test_a_bad_positions_file_is_one_line(tmp_path, capsys, content, fragment):
    path = tmp_path / "p.json"
    path.write_bytes(content)
    one_error(capsys, cli.main(["measure", "map", "--positions", str(path), "--out", str(tmp_path / "o")]), fragment)


def test_missing_directory_fifo_symbol_and_coin_refusals(positions, tmp_path, capsys):
    one_error(capsys, cli.main(["measure", "map", "--positions", str(tmp_path / "none.json"), "--out", "o"]), "no such file")
    one_error(capsys, cli.main(["measure", "map", "--positions", str(tmp_path), "--out", "o"]), "--positions")
    os.mkfifo(tmp_path / "fifo")
    one_error(capsys, cli.main(["measure", "map", "--positions", str(tmp_path / "fifo"), "--out", "o"]), "--positions")
    one_error(capsys, cli.main(["measure", "map", "--positions", str(positions), "--symbol", "BTC$", "--out", "o"]),
              "is not a symbol")
    one_error(capsys, cli.main(["measure", "map", "--positions", str(positions), "--symbol", "ETH", "--out", "o"]),
              "--symbol ETH: the positions file tracks BTC")
    one_error(capsys, cli.main(["measure", "track", "--duration", "soon", "--out", "o"]), "--duration")
    one_error(capsys, cli.main(["measure", "track", "--budget-share", "2", "--out", "o"]), "--budget-share")
    one_error(capsys, cli.main(["measure", "track", "--ws-url", "http://x", "--out", "o"]), "--ws-url")
    one_error(capsys, cli.main(["measure"]), "SUBCOMMAND")


def venue_transport(calls: list[str]) -> httpx.MockTransport:
    meta = json.loads((FIX / "meta_and_asset_ctxs.json").read_text())
    account = json.loads((FIX / "clearinghouse_state_btc.json").read_text())

    def handler(req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content)
        calls.append(body["type"])
        if body["type"] == "metaAndAssetCtxs":
            return httpx.Response(200, json=meta)
        if body["type"] == "clearinghouseState":
            return httpx.Response(200, json={**account, "time": int(time.time() * 1000)})  # the server's time: now
        return httpx.Response(422, text="Failed to deserialize the JSON body into the target type")

    return httpx.MockTransport(handler)


def test_track_discovers_polls_and_writes_the_snapshot(tmp_path, capsys, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(measure, "TRANSPORT", venue_transport(calls))
    frame = json.loads((FIX / "trades_frame.json").read_text())
    ready = threading.Event()
    url: list[str] = []
    done = threading.Event()

    async def venue(peer: Peer) -> None:
        await peer.wait_for(lambda t: '"trades"' in t)
        await peer.send(json.loads((FIX / "subscription_response.json").read_text()))
        await peer.send(frame)
        await hold(20)

    def serve() -> None:
        async def main() -> None:
            async with LoopbackWS(venue, lifetime_s=30) as server:
                url.append(server.url)
                ready.set()
                await asyncio.get_running_loop().run_in_executor(None, done.wait, 30)

        asyncio.run(main())

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    assert ready.wait(10)
    try:
        code = cli.main(["measure", "track", "--symbol", "BTC", "--duration", "2s", "--ws-url", url[0], "--no-seed",
                         "--status-every", "1", "--out", str(tmp_path / "t")])
    finally:
        done.set()
        th.join(10)
    out = capsys.readouterr().out
    assert code == 0, out
    snap = json.loads((tmp_path / "t" / "positions.json").read_text())
    users = {p["user"] for p in snap["positions"]}
    assert users == {"0xb08ed6f6ad7b22138d4db6d0549efcf1f5e51767", "0x13558be785661958932ceac35ba20de187275a42",
                     "0x31ca8395cf837de08b24da3f660e77761dfb974b"}  # every trader named by the stream, polled
    assert all(p["coin"] == "BTC" for p in snap["positions"])  # only the tracked coin is kept
    assert snap["accounts"]["weight"] == 2 * calls.count("clearinghouseState") + 20 * calls.count("metaAndAssetCtxs")
    assert "recentTrades" not in calls and "vaultDetails" not in calls  # --no-seed
    m = json.loads((tmp_path / "t" / "measured.json").read_text())
    assert m["kind"] == "measured" and m["params"]["positions_on_map"] == 3


def test_a_checkpoint_is_written_atomically_and_reads_back(tmp_path):
    snap = synthetic_snapshot(20)
    path = tmp_path / "run" / "positions.json"
    measure.save_positions(snap, path)
    assert not (tmp_path / "run" / "positions.json.tmp").exists()
    assert measure.read_positions(path).positions == snap.positions
