"""/about: the accuracy it shows (analysis/accuracy.py), its text (commentary.about) and the command
at the dispatch level (bot/cogs/about.py): the backtest headline or the live score, a missing or
corrupt score file, data freshness, a venue down, escaping and Discord's limits, private replies."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import discord
import httpx
import numpy as np
import pytest

from analysis import commentary
from analysis.accuracy import (
    HEADLINE_METRICS, PUBLISHED_HEADLINE, headline_from_backtest, latest_accuracy, load_backtest_headline,
    load_live_score,
)
from analysis.errors import DataError
from analysis.model import build_map
from analysis.tape.score import HOUR_MS, HourlyTape, ScoreParams, hourly_bars, live_score
from bot.venue_health import PROBES, HealthParams, VenueHealth

from bot_harness import DISCORD_OK, FOREIGN_GUILD_ID, PINNED, StubSource, interaction_payload, make_harness

ROOT = Path(__file__).resolve().parents[1]
EPHEMERAL = 64
SHIPPED = json.loads(PUBLISHED_HEADLINE.read_text(encoding="utf-8"))


# -- the accuracy files ------------------------------------------------------------------------------

@pytest.mark.shared
def test_the_shipped_headline_is_what_the_backtest_measures_now(monkeypatch):
    from conftest import shared_file

    data = shared_file("btc-realized-liquidations-1h-dev.csv")
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ is a folder of the checkout, not an installed package
    from bench.accuracy import build, same_figures

    assert same_figures(build(data), SHIPPED), "rerun `python -m bench.accuracy` and commit the file"


def test_the_shipped_headline_reads_as_the_backtests_map_only_cells():
    acc = load_backtest_headline()
    assert acc.kind == "backtest" and acc.symbol == "BTCUSDT"
    (g,) = acc.groups
    assert g.hours == SHIPPED["bars"] and g.swept_over_realized == SHIPPED["map_only_over_realized"]
    assert [c.metric for c in g.cells] == list(HEADLINE_METRICS)
    for c in g.cells:
        d = SHIPPED["map_only_minus_best_baseline"][c.metric]
        assert c.model == SHIPPED["map_only"][c.metric] and c.baseline == d["baseline"]
        assert c.baseline_value == SHIPPED["baselines"][d["baseline"]][c.metric]
        assert (c.diff, c.lo, c.hi) == (d["diff"], *d["ci95"])
        assert c.verdict == ("better" if c.lo > 0 else "not significant" if c.hi >= 0 else "worse")
    assert SHIPPED["non_default_params"] == {}  # the published figures are the defaults'


def test_headline_from_backtest_refuses_a_result_without_the_figures():
    broken = copy.deepcopy(SHIPPED)
    broken["params"] = {"non_default_params": {}}
    broken["calibration"] = {"map_only_over_realized": 4.2}
    del broken["map_only"]["pearson_short"]
    with pytest.raises(DataError, match="map_only.pearson_short"):
        headline_from_backtest(broken, symbol="BTCUSDT", generated_ms=0, command="x")


def test_a_missing_or_broken_headline_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="installation is incomplete"):
        load_backtest_headline(tmp_path / "nope.json")
    bad = tmp_path / "h.json"
    bad.write_text(json.dumps({**SHIPPED, "version": 9}))
    with pytest.raises(DataError, match="version 1"):
        load_backtest_headline(bad)


@pytest.fixture(scope="module")
def live_json(sample_bars):
    """A real ``liqmap score`` result (LiveScore.to_json) on the bundled sample against a synthetic
    tape (0.3 × the map-only sweep per hour: a sampled feed)."""
    bars = sample_bars
    end = int(bars.end_ms) // HOUR_MS * HOUR_MS
    start = end - 7 * 24 * HOUR_MS
    m = build_map(bars, window="score", now_ms=int(bars.end_ms))
    hb, _ = hourly_bars(bars)
    hour = bars.time // HOUR_MS
    starts = np.flatnonzero(np.r_[True, hour[1:] != hour[:-1]])
    pl, ps = np.add.reduceat(m.swept.prior_long, starts), np.add.reduceat(m.swept.prior_short, starts)
    sel = (hb.time >= start) & (hb.time < end)
    n = (end - start) // HOUR_MS
    lg, sh = np.zeros(n), np.zeros(n)
    i = (hb.time[sel] - start) // HOUR_MS
    lg[i], sh[i] = pl[sel] * 0.3, ps[sel] * 0.3
    res = live_score("BTCUSDT", 7, {"binance": bars}, {"binance": HourlyTape("binance", start, lg, sh, start)}, [],
                     start, end, params=ScoreParams(n_boot=100))
    return res.to_json()


def test_a_newer_live_score_is_preferred(tmp_path, live_json):
    path = tmp_path / "score-latest.json"
    path.write_text(json.dumps(live_json))
    acc = latest_accuracy(path)
    assert acc.kind == "live" and acc.notes == ()
    (g,) = acc.groups
    assert g.name == "binance" and g.lower_bound_realized and g.hours == live_json["venues"]["binance"]["hours"]
    assert [c.model for c in g.cells] == [live_json["venues"]["binance"]["map_only"][m] for m in HEADLINE_METRICS]
    assert g.swept_over_realized == live_json["venues"]["binance"]["calibration"]["map_only_over_tape"]


def test_an_older_live_score_or_none_leaves_the_backtest(tmp_path, live_json):
    old = {**live_json, "start": "2026-01-01T00:00Z", "end": "2026-01-08T00:00Z"}
    path = tmp_path / "score-latest.json"
    path.write_text(json.dumps(old))
    assert latest_accuracy(path).kind == "backtest"
    assert latest_accuracy(tmp_path / "absent.json").kind == "backtest"
    assert load_live_score(tmp_path / "absent.json") is None


def _corrupt(live_json):
    v = live_json["venues"]["binance"]
    cases = {
        "not json": b"{not json",
        "not utf-8": b"\xff\xfe{}",
        "a list": b"[]",
        "nan": json.dumps({**live_json, "venues": {"binance": {**v, "map_only": {**v["map_only"], "spearman_long": float("nan")}}}}).encode(),
        "out of range": json.dumps({**live_json, "venues": {"binance": {**v, "map_only": {**v["map_only"], "pearson_long": 7}}}}).encode(),
        "bad time": json.dumps({**live_json, "end": "yesterday"}).encode(),
        "no venues": json.dumps({**live_json, "venues": {}}).encode(),
        "bad baseline": json.dumps({**live_json, "venues": {"binance": {**v, "map_only_minus_best_baseline": {
            **v["map_only_minus_best_baseline"], "spearman_long": {"baseline": "<@1>", "diff": 0, "ci95": [0, 0]}}}}}).encode(),
        "bool hours": json.dumps({**live_json, "venues": {"binance": {**v, "hours": True}}}).encode(),
        "too big": b" " * (1024 * 1024 + 1),
    }
    return cases


@pytest.mark.parametrize("case", ["not json", "not utf-8", "a list", "nan", "out of range", "bad time", "no venues",
                                  "bad baseline", "bool hours", "too big"])
def test_a_corrupt_live_score_shows_the_backtest_and_says_why(tmp_path, live_json, case):
    path = tmp_path / "score-latest.json"
    path.write_bytes(_corrupt(live_json)[case])
    with pytest.raises(DataError):
        load_live_score(path)
    acc = latest_accuracy(path)
    assert acc.kind == "backtest" and len(acc.notes) == 1 and "showing the backtest instead" in acc.notes[0]


def test_a_directory_or_fifo_where_the_score_goes_is_refused_without_blocking(tmp_path):
    d = tmp_path / "score-latest.json"
    d.mkdir()
    assert "cannot be read" in latest_accuracy(d).notes[0]
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.json"
        os.mkfifo(fifo)
        assert "cannot be read" in latest_accuracy(fifo).notes[0]


# -- the text -------------------------------------------------------------------------------------

def _facts(**kw):
    base = dict(method_url="https://example.org/methodology.md", venues=("binance", "bybit", "okx"), source="live",
                accuracy=load_backtest_headline(), bars=(("binance", 1_780_000_000_000), ("bybit", None)),
                tape=(("bybit", 1_780_000_100_000),), tape_since_ms=1_779_900_000_000,
                checks=(("binance", "up", "answered in 80 ms"), ("okx", "down", "HTTP 503")))
    return commentary.AboutFacts(**{**base, **kw})


def test_the_text_says_what_the_map_is_and_is_not_with_the_method_and_the_cells():
    text = commentary.about(_facts())
    assert "*estimate*" in text and "not a prediction of where price goes" in text
    assert "Not the exchanges' real orders" in text
    assert "+0.021 [+0.0002, +0.043]: ahead" in text  # the lower end the methodology calls "only just"
    assert "[docs/methodology.md](https://example.org/methodology.md)" in text
    for c in load_backtest_headline().groups[0].cells:
        assert f"{c.model:.3f} against {c.baseline_value:.3f}" in text
    assert "Backtest (BTC, 2025-12-11 to 2026-02-28, map-only)" in text and "1,910 hours" in text
    assert "Binance: bars cached to 2026-05-28 20:26 UTC (<t:1780000000:R>)" in text
    assert "Bybit: nothing cached yet" in text and "Tape, Bybit: last liquidation recorded" in text
    assert "Binance: answering (answered in 80 ms)" in text and "OKX: not answering (HTTP 503)" in text
    assert len(text) <= commentary.EMBED_LIMIT


def test_outside_text_is_escaped_and_cannot_ping():
    text = commentary.about(_facts(
        checks=(("binance", "down", "@everyone [click](https://evil.example) <@123> `x`\nline"),),
        tape=None, tape_error="**boom** <#1>", notes=("@here look",), model_overrides=(("holding_days", "7 @everyone"),)))
    assert "@everyone" not in text.replace("@\u200beveryone", "") and "@here" not in text.replace("@\u200bhere", "")
    assert "[click](https://evil.example)" not in text and "<@123>" not in text and "<#1>" not in text
    assert "\\*\\*boom\\*\\*" in text and "\\`x\\`" in text


def test_the_text_fits_an_embed_whatever_comes_in():
    many = tuple((f"venue{i}", "down", "x" * 500) for i in range(200))
    text = commentary.about(_facts(checks=many, notes=tuple("n" * 400 for _ in range(10))))
    assert len(text) <= commentary.EMBED_LIMIT and text.endswith(commentary.TRUNCATED)


def test_offline_sources_and_no_accuracy_are_said_plainly():
    text = commentary.about(_facts(source="sample", checks=None, accuracy=None, accuracy_error="file gone", tape=()))
    assert "bundled recorded sample" in text and "not live data" in text
    assert "No exchange is asked" in text and "Unavailable: file gone" in text
    assert "nothing recorded since" in text


def test_the_live_score_text_names_each_venue_and_the_lower_bound(tmp_path, live_json):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(live_json))
    text = commentary.about(_facts(accuracy=latest_accuracy(path)))
    assert "Live score against liqmap's own tape (BTC" in text
    assert "__Binance__ (168 hours, sampled feed, a lower bound on realized)" in text


# -- the command ------------------------------------------------------------------------------------

pytestmark_discord = pytest.mark.skipif(not DISCORD_OK, reason=f"harness uses discord.py internals pinned to {PINNED}")


def documented(venue: str) -> bytes:
    return (ROOT / "tests" / "fixtures" / venue / "time.json").read_bytes()


@pytest.fixture
async def h(tmp_path, monkeypatch):
    monkeypatch.setenv("LIQMAP_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    harness = await make_harness(tmp_path / "bot.db", method_url="https://docs.example/method.md")
    yield harness
    await harness.stop()


def _about(calls):
    defer, followup = calls
    assert defer.path.endswith("/callback") and defer.body["type"] == 5
    assert followup.body["allowed_mentions"] == {"parse": []}
    (embed,) = followup.body["embeds"]
    assert embed["title"] == "About liqmap"
    assert len(embed["description"]) <= 4096 and len(embed["title"]) + len(embed["description"]) + len(embed["footer"]["text"]) <= 6000
    return defer, followup, embed


@pytestmark_discord
async def test_about_in_a_server_is_public_with_the_backtest_and_the_offline_source(h):
    defer, followup, embed = _about(await h.dispatch(interaction_payload("about")))
    assert not defer.body.get("data", {}).get("flags", 0) & EPHEMERAL and not followup.body.get("flags", 0) & EPHEMERAL
    text = embed["description"]
    assert "[docs/methodology.md](https://docs.example/method.md)" in text
    assert "Backtest (BTC" in text and "bundled recorded sample" in text and "No exchange is asked" in text
    assert "Realized-liquidation tape: nothing recorded since" in text  # the tape tables exist, empty


@pytestmark_discord
async def test_about_as_a_user_app_in_a_dm_and_privately_in_a_server_without_external_apps(h):
    _, followup, _ = _about(await h.dispatch(interaction_payload("about", guild=False, installs=("user",))))
    assert not followup.body.get("flags", 0) & EPHEMERAL
    defer, followup, _ = _about(await h.dispatch(interaction_payload("about", guild_id=FOREIGN_GUILD_ID, installs=("user",))))
    assert defer.body["data"]["flags"] & EPHEMERAL and followup.body["flags"] & EPHEMERAL
    assert h.rest.calls == []


@pytestmark_discord
async def test_about_shows_a_newer_live_score_and_names_a_corrupt_one(h, tmp_path, live_json):
    score = tmp_path / "data" / "score-latest.json"
    score.write_text(json.dumps(live_json))
    _, _, embed = _about(await h.dispatch(interaction_payload("about")))
    assert "Live score against liqmap's own tape" in embed["description"]
    score.write_text("{broken")
    _, _, embed = _about(await h.dispatch(interaction_payload("about")))
    assert "Backtest (BTC" in embed["description"] and "is not JSON text; showing the backtest instead" in embed["description"]


@pytestmark_discord
async def test_about_with_live_venues_one_down_and_the_bar_cache(tmp_path, monkeypatch):
    from analysis.sources.cache import BarCache

    monkeypatch.setenv("LIQMAP_DATA_DIR", str(tmp_path / "data"))

    class Cached(StubSource):
        def __init__(self, name, cache):
            super().__init__(name, ("BTCUSDT",))
            self.cache = cache

    cache = BarCache(None)
    import pandas as pd

    t0 = 1_780_000_000_000
    frame = pd.DataFrame({"time": [t0, t0 + 300_000], "open": [1.0, 1.0], "high": [1.0, 1.0], "low": [1.0, 1.0],
                          "close": [1.0, 1.0], "oi_usd": [5.0, 5.0]})
    cache.store("binance", "BTCUSDT", "5m", frame)
    cache.put_meta("cover:binance:BTCUSDT:5m", t0)
    sources = {v: Cached(v, cache) for v in ("binance", "bybit", "okx")}
    hh = await make_harness(tmp_path / "bot.db", sources=sources)
    try:
        cog = hh.bot.get_cog("AboutCog")
        cog.source = "live"

        def handler(request):
            v = next(v for v in PROBES if request.url.host == httpx.URL(PROBES[v].base_url).host)
            return httpx.Response(503) if v == "okx" else httpx.Response(200, content=documented(v))

        cog.health = VenueHealth(("binance", "bybit", "okx"), params=HealthParams(timeout_s=1, budget_s=5),
                                 transport=httpx.MockTransport(handler))
        _, _, embed = _about(await hh.dispatch(interaction_payload("about")))
        text = embed["description"]
        assert "Live public market data" in text
        assert f"Binance: bars cached to 2026-05-28 20:31 UTC (<t:{(t0 + 300_000) // 1000}:R>)" in text
        assert "Bybit: nothing cached yet" in text
        assert "OKX: not answering (HTTP 503)" in text and "Bybit: answering" in text and "Binance: answering" in text
    finally:
        await hh.stop()


@pytestmark_discord
async def test_about_says_when_the_bot_uses_other_model_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("LIQMAP_DATA_DIR", str(tmp_path / "data"))
    hh = await make_harness(tmp_path / "bot.db")
    try:
        from analysis.model import ModelParams

        hh.bot.service.params = ModelParams().with_overrides(["holding_days=3"])
        _, _, embed = _about(await hh.dispatch(interaction_payload("about")))
        assert "this bot sets holding\\_days=3 (LIQMAP\\_MODEL), not the backtested defaults" in embed["description"]
    finally:
        await hh.stop()


@pytestmark_discord
async def test_about_shows_the_tapes_last_event_per_venue(h):
    import time

    from bot.tape_store import TapeStore
    from fake_tape import event

    now = int(time.time() * 1000)
    tape = TapeStore(h.bot.store.engine)
    await tape.write_events([event("bybit", now - 60_000, "long", 60_000.0, 5_000.0),
                             event("bybit", now - 120_000, "short", 60_100.0, 7_000.0),
                             event("okx", now - 3 * 86_400_000, "long", 59_000.0, 1_000.0)])  # older than 24 h
    assert await tape.latest(now - 86_400_000) == {"bybit": now - 60_000}
    _, _, embed = _about(await h.dispatch(interaction_payload("about")))
    assert "Tape, Bybit: last liquidation recorded " in embed["description"]
    assert f"<t:{(now - 60_000) // 1000}:R>" in embed["description"] and "Tape, OKX" not in embed["description"]


@pytest.mark.parametrize("url", [
    "http://example.org/m", "https://", "javascript:alert(1)", "https://user:pw@example.org/m",
    "https://example.org/a b", "https://example.org/a)[x](https://evil.example", "https://example.org/" + "a" * 600,
    "https://example.org/\u202e", "ftp://example.org/m", "https://example.org:99999/m",
])
def test_the_method_url_must_be_a_plain_https_link(url, monkeypatch):
    from analysis.errors import InputError
    from bot.settings import load_settings

    monkeypatch.setenv("LIQMAP_METHOD_URL", url)
    with pytest.raises(InputError, match="LIQMAP_METHOD_URL") as err:
        load_settings(None)
    assert url not in str(err.value) or url == "https://"


def test_the_method_url_default_and_an_override(monkeypatch):
    from bot.settings import DEFAULT_METHOD_URL, load_settings

    monkeypatch.delenv("LIQMAP_METHOD_URL", raising=False)
    assert load_settings(None).discord.method_url == DEFAULT_METHOD_URL
    assert DEFAULT_METHOD_URL.startswith("https://") and DEFAULT_METHOD_URL.endswith("/docs/methodology.md")
    monkeypatch.setenv("LIQMAP_METHOD_URL", " https://docs.example/liqmap/method ")
    assert load_settings(None).discord.method_url == "https://docs.example/liqmap/method"
