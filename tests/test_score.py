"""The live accuracy score (analysis/tape/score.py) and ``liqmap score``, on synthetic tapes whose
truth is known: a tape equal to the map's own swept estimate scores ~1, a shuffled one ~0.

The bars are the bundled real sample; every tape here is synthetic (tests/fake_tape.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.backtest import BASELINES, METRICS
from analysis.errors import InputError
from analysis.model import build_map
from analysis.tape.events import Gap
from analysis.tape.score import (
    HOUR_MS, HourlyTape, ScoreParams, hourly_bars, latest_score_path, live_score, read_hourly, score_venue,
)
from bot import cli
from tests.fake_tape import FakeTape, event

DAY = 24 * HOUR_MS
FAST = ScoreParams(n_boot=200)


@pytest.fixture(scope="module")
def truth(sample_bars):
    """The map-only swept estimate per hour of the sample's last 7 days, and the span."""
    bars = sample_bars
    end = int(bars.end_ms) // HOUR_MS * HOUR_MS
    start = end - 7 * DAY
    m = build_map(bars, window="score", now_ms=int(bars.end_ms))
    hb, full = hourly_bars(bars)
    hour = bars.time // HOUR_MS
    starts = np.flatnonzero(np.r_[True, hour[1:] != hour[:-1]])
    pl = np.add.reduceat(m.swept.prior_long, starts)
    ps = np.add.reduceat(m.swept.prior_short, starts)
    sel = (hb.time >= start) & (hb.time < end)
    return bars, start, end, hb.time[sel], pl[sel], ps[sel]


def _tape(venue, start, end, hours, long, short, first_ms=None):
    n = (end - start) // HOUR_MS
    lg, sh = np.zeros(n), np.zeros(n)
    i = (hours - start) // HOUR_MS
    lg[i], sh[i] = long, short
    return HourlyTape(venue, start, lg, sh, start if first_ms is None else first_ms)


def test_a_perfect_tape_scores_one_and_a_shuffled_tape_about_zero(truth):
    bars, start, end, hours, pl, ps = truth
    perfect = score_venue(bars, _tape("bybit", start, end, hours, pl, ps), [], start, end, params=FAST)
    assert perfect.hours.size == 7 * 24
    assert perfect.map_only["pearson_long"] == pytest.approx(1.0) and perfect.map_only["pearson_short"] == pytest.approx(1.0)
    assert perfect.map_only["spearman_total"] > 0.99
    assert perfect.map_intervals["pearson_total"].lo > 0  # beats every baseline, interval above zero
    rng = np.random.default_rng(3)
    order = rng.permutation(hours.size)
    shuffled = score_venue(bars, _tape("bybit", start, end, hours, pl[order], ps[order]), [], start, end, params=FAST)
    assert abs(shuffled.map_only["spearman_total"]) < 0.2 and abs(shuffled.map_only["pearson_total"]) < 0.2
    j = shuffled.to_json()
    assert set(j["baselines"]) == set(BASELINES) and set(j["map_only"]) == set(METRICS) == set(j["model"])
    assert j["coverage"] == "complete" and j["calibration"]["tape_is_lower_bound_on_realized"] is False


def test_hours_overlapping_a_gap_are_excluded_and_counted(truth):
    bars, start, end, hours, pl, ps = truth
    g0 = start + 30 * HOUR_MS
    gaps = [Gap("bybit", None, g0, g0 + 10 * HOUR_MS, "disconnect"),
            Gap("bybit", "BTCUSDT", g0 + 50 * HOUR_MS + 60_000, g0 + 50 * HOUR_MS + 120_000, "reconnect"),
            Gap("okx", None, start, end, "another venue"),
            Gap("bybit", "ETHUSDT", start, end, "another symbol")]
    s = score_venue(bars, _tape("bybit", start, end, hours, pl, ps), gaps, start, end, params=FAST)
    assert s.excluded_gap_hours == 11 and s.hours.size == 7 * 24 - 11
    assert not np.isin(np.arange(g0, g0 + 10 * HOUR_MS, HOUR_MS), s.hours).any()
    still_open = [Gap("bybit", None, end - 5 * HOUR_MS, None, "down")]
    assert score_venue(bars, _tape("bybit", start, end, hours, pl, ps), still_open, start, end,
                       params=FAST).excluded_gap_hours == 5


def test_hours_before_the_tape_starts_are_not_scored(truth):
    bars, start, end, hours, pl, ps = truth
    first = start + 3 * DAY + 1234
    s = score_venue(bars, _tape("bybit", start, end, hours, pl, ps, first_ms=first), [], start, end, params=FAST)
    assert s.before_tape_hours == 72 and s.hours[0] == start + 3 * DAY


async def test_hours_the_recorder_did_not_run_are_not_scored_and_counted(truth):
    from dataclasses import replace

    from analysis.tape.events import Coverage

    bars, start, end, hours, pl, ps = truth
    # the recorder ran from day 1 to day 3 and again from day 4 (half an hour late) to the end
    spans = [Coverage("bybit", "BTCUSDT", start + DAY, start + 3 * DAY), Coverage("bybit", "BTCUSDT",
                                                                              start + 4 * DAY + 1_800_000, end),
             Coverage("bybit", "ETHUSDT", start, end), Coverage("okx", "BTCUSDT", start, end)]
    tapes = await read_hourly(FakeTape([], covered=spans), "BTCUSDT", ("bybit", "okx"), start, end)
    assert tapes["bybit"].recorded is not None and int(tapes["bybit"].recorded.sum()) == 2 * 24 + 3 * 24 - 1
    assert bool(tapes["okx"].recorded.all())
    never = await read_hourly(FakeTape([], covered=[]), "BTCUSDT", ("bybit",), start, end)
    assert never["bybit"].recorded is None  # no span at all: judged by the first event, as before
    tape = replace(_tape("bybit", start, end, hours, pl, ps), recorded=tapes["bybit"].recorded)
    s = score_venue(bars, tape, [], start, end, params=FAST)
    assert s.not_recorded_hours == 7 * 24 - (5 * 24 - 1) and s.hours.size == 5 * 24 - 1
    assert not np.isin(np.arange(start, start + DAY, HOUR_MS), s.hours).any()
    assert s.to_json()["hours_not_recorded"] == s.not_recorded_hours and "not recorded" in live_score(
        "BTCUSDT", 7, {"bybit": bars}, {"bybit": tape}, [], start, end, params=FAST).table()
    with pytest.raises(InputError, match=r"have 0 \(168 not recorded, 0 excluded for gaps\)"):
        score_venue(bars, replace(tape, recorded=np.zeros(168, dtype=bool)), [], start, end, params=FAST)


def test_too_little_tape_is_a_clear_input_error(truth):
    bars, start, end, hours, pl, ps = truth
    day = end - DAY
    with pytest.raises(InputError, match=r"bybit: needs at least 48 hours of tape; have 24"):
        score_venue(bars, _tape("bybit", day, end, hours[hours >= day], pl[hours >= day], ps[hours >= day]),
                    [], day, end, params=FAST)
    empty = HourlyTape("bybit", start, np.zeros(168), np.zeros(168), None)
    with pytest.raises(InputError, match="have 0 .no event recorded"):
        score_venue(bars, empty, [], start, end, params=FAST)
    with pytest.raises(InputError, match="cannot score BTCUSDT over 7 d: bybit: needs at least 48 hours"):
        live_score("BTCUSDT", 7, {"bybit": bars}, {"bybit": empty}, [], start, end, params=FAST)
    with pytest.raises(InputError, match="warm-up needs 7"):
        score_venue(bars.last(9 * DAY), _tape("bybit", start, end, hours, pl, ps), [], start, end, params=FAST)


def test_sampled_venues_say_the_tape_is_a_lower_bound(truth):
    bars, start, end, hours, pl, ps = truth
    res = live_score("BTCUSDT", 7, {"binance": bars, "sample": bars},
                     {"binance": _tape("binance", start, end, hours, pl * 0.3, ps * 0.3)}, [], start, end, params=FAST)
    j = res.to_json()
    assert j["venues"]["binance"]["coverage"] == "sampled"
    assert j["venues"]["binance"]["calibration"]["tape_is_lower_bound_on_realized"] is True
    assert j["skipped"] == {"sample": "no liquidation feed is recorded for this venue"}
    assert "lower bound on realized" in res.table()


async def test_read_hourly_sums_events_per_hour_and_venue_in_chunks(truth):
    _, start, end, *_ = truth
    evs = [event("bybit", start + 5, "long", 60_000.0, 100.0), event("bybit", start + 10, "short", 60_000.0, 50.0),
           event("okx", start + 7 * HOUR_MS + 1, "long", 60_000.0, 30.0),
           event("bybit", end, "long", 60_000.0, 1e9)]  # at the end: outside
    reader = FakeTape(evs)
    tapes = await read_hourly(reader, "BTCUSDT", ("bybit", "okx"), start, end, chunk_hours=6)
    assert reader.calls == 7 * 4
    assert tapes["bybit"].long[0] == 100.0 and tapes["bybit"].short[0] == 50.0 and tapes["bybit"].long.sum() == 100.0
    assert tapes["okx"].long[7] == 30.0 and tapes["okx"].first_ms == start + 7 * HOUR_MS + 1


# -- the command line ------------------------------------------------------------------------------

def _cli_tape(sample_bars, hours=7 * 24):
    """A synthetic Binance tape over the sample's last hours: one event per hour at the bar's low."""
    end = int(sample_bars.end_ms) // HOUR_MS * HOUR_MS
    evs = []
    for h in range(hours):
        t = end - (h + 1) * HOUR_MS + 600_000
        i = int(np.searchsorted(sample_bars.time, t)) - 1
        rng = float(sample_bars.high[i] - sample_bars.low[i])
        evs.append(event("binance", t, "long", float(sample_bars.low[i]), 1e5 + 1e3 * rng))
        evs.append(event("binance", t + 1, "short", float(sample_bars.high[i]), 5e4 + 5e2 * rng))
    from analysis.tape.events import Coverage

    # the recorder ran for exactly the hours with tape (it started ``hours`` ago)
    return FakeTape(evs, covered=[Coverage("binance", "BTCUSDT", end - hours * HOUR_MS, end + HOUR_MS)])


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LIQMAP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data"


def test_cli_score_json_shape_and_the_latest_file(sample_bars, data_dir, monkeypatch, capsys):
    tape = _cli_tape(sample_bars)
    seen = []

    async def fake_open(url):
        seen.append(url)
        return tape

    monkeypatch.setattr(cli, "_open_tape", fake_open)
    code = cli.main(["score", "--days", "5", "--source", "sample", "--db", "sqlite+aiosqlite:///x.db", "--json",
                     "--boot", "100"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert seen == ["sqlite+aiosqlite:///x.db"]
    assert data["symbol"] == "BTCUSDT" and data["days"] == 5 and set(data["venues"]) == {"binance"}
    v = data["venues"]["binance"]
    assert v["hours"] == 5 * 24 and v["coverage"] == "sampled"
    assert set(v["map_only"]) == set(METRICS) and set(v["baselines"]) == set(BASELINES)
    assert set(v["map_only_minus_best_baseline"]["spearman_total"]) == {"baseline", "diff", "ci95"}
    saved = latest_score_path(create=False)
    assert saved.parent == data_dir and json.loads(saved.read_text()) == data
    assert f"wrote {saved}" in err


def test_cli_score_table_and_too_little_tape(sample_bars, data_dir, monkeypatch, capsys):
    async def fake_open(url):
        return _cli_tape(sample_bars, hours=30)

    monkeypatch.setattr(cli, "_open_tape", fake_open)
    assert cli.main(["score", "--days", "7", "--source", "sample", "--boot", "50"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot score BTCUSDT over 7 d: binance: needs at least 48 hours of tape; have 30")
    assert err.count("\n") == 1

    async def enough(url):
        return _cli_tape(sample_bars)

    monkeypatch.setattr(cli, "_open_tape", enough)
    assert cli.main(["score", "--days", "3", "--source", "sample", "--boot", "50"]) == 0
    out = capsys.readouterr().out
    assert "binance (sampled feed): 72 hours scored" in out and "spearman_total" in out


@pytest.mark.parametrize("args, message", [
    (["--days", "0"], "--days must be between 1 and 23"),
    (["--days", "24"], "--days must be between 1 and 23"),
    (["--boot", "0"], "--boot must be between 1 and 100000"),
    (["--exchange", "kraken"], "argument --exchange: invalid choice"),
])
def test_cli_score_bad_input_is_one_line(data_dir, capsys, args, message):
    assert cli.main(["score", "--source", "sample", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_without_the_tape_reader_the_score_says_what_is_missing(data_dir, monkeypatch, capsys):
    import importlib

    real = importlib.import_module

    def no_store(name, *a, **k):
        if name == "bot.tape_store":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_store)
    assert cli.main(["score", "--days", "3", "--source", "sample", "--boot", "10"]) == 2
    assert "no tape database reader (bot.tape_store)" in capsys.readouterr().err


def test_a_latest_file_that_cannot_be_written_is_a_warning_not_a_lost_score(sample_bars, data_dir, monkeypatch,
                                                                             capsys):
    (data_dir / "score-latest.json").mkdir(parents=True)  # a directory where the file goes

    async def fake_open(url):
        return _cli_tape(sample_bars)

    monkeypatch.setattr(cli, "_open_tape", fake_open)
    assert cli.main(["score", "--days", "3", "--source", "sample", "--boot", "20", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["venues"]["binance"]["hours"] == 72
    assert err.startswith("warning: cannot write the latest score to ") and err.count("\n") == 1
    assert not list(data_dir.glob("*.tmp"))
