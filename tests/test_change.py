"""What changed since the last report: analysis.change.compare, the price path behind a map, and
the daily report's lines for totals within ±5%, the skew class, new clusters and swept clusters."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from analysis.change import ChangeParams, compare, total_at
from analysis.commentary import daily
from analysis.errors import InputError
from analysis.liqmap import PricePath, merge, merge_paths
from analysis.metrics import read
from analysis.model import build_map
from test_commentary import END_MS, PRICE, cluster, make_map, make_reading

H = 3_600_000
PREV_MS = END_MS - 24 * H


def path(lows, highs, start=PREV_MS - 2 * H, step=H) -> PricePath:
    t = start + step * np.arange(len(lows), dtype=np.int64)
    return PricePath(t, np.asarray(highs, float), np.asarray(lows, float), step)


def with_path(p: PricePath | None):
    return replace(make_map(), path=p)


FLAT = path([PRICE - 50] * 30, [PRICE + 50] * 30)


def test_totals_compare_the_5pct_point_not_the_band():
    # band 2%: the ±5% column (index 2) is what is compared, not the band totals
    prev = replace(make_reading(1e8, 1e8), band=0.02, end_ms=PREV_MS)
    now = replace(make_reading(3e8, 0.5e8), band=0.02, long_in_band=1.0, short_in_band=2.0, end_ms=END_MS)
    d = daily(now, with_path(FLAT), previous=prev)
    assert "• Shorts within +5%: $100M → $300M (+200%)" in d
    assert "• Longs within −5%: $100M → $50M (−50%)" in d
    assert total_at(now, 0.05) == (0.5e8, 3e8)
    # no ±5% point in a reading: said, not guessed from another distance
    odd = replace(now, distances=(0.01, 0.02, 0.03, 0.10))
    d = daily(odd, with_path(FLAT), previous=prev)
    assert "Totals not compared: a reading has no ±5% point." in d and "Shorts within" not in d
    # ChangeParams.distance picks another point
    ch = compare(prev, now, FLAT, ChangeParams(distance=0.10))
    assert [(t.side, t.before, t.after) for t in ch.totals] == [("short", 1.5e8, 4.5e8), ("long", 1.5e8, 0.75e8)]


def test_skew_class_line():
    prev = replace(make_reading(1e8, 1e8), end_ms=PREV_MS)
    now = replace(make_reading(5e8, 1e8), end_ms=END_MS)
    assert "• Skew: balanced → heavily short-skewed" in daily(now, with_path(FLAT), previous=prev)
    assert "• Skew: unchanged (heavily short-skewed)" in daily(now, with_path(FLAT), previous=now)


def test_new_clusters_are_matched_by_side_and_price_within_the_tolerance():
    old = (cluster("short", 65_500, 3e8), cluster("long", 63_500, 2e8))
    prev = replace(make_reading(1e8, 1e8, clusters=old), end_ms=PREV_MS)
    new = (cluster("short", 65_700, 4e8),  # 0.31% from the old short one: the same cluster
           cluster("short", 66_800, 2.5e8),  # new
           cluster("long", 65_500 - 2_000, 1e8),  # same side, same price as before: not new
           cluster("long", 62_000, 1.5e8))  # new
    now = replace(make_reading(2e8, 1e8, clusters=new), end_ms=END_MS)
    d = daily(now, with_path(FLAT), previous=prev)
    assert "• New short cluster: ~$250M around $66,800 (+3.4%)." in d
    assert "• New long cluster: ~$150M around $62,000 (−4.0%)." in d
    assert d.count("New ") == 2
    # a long cluster where a short one was is new (sides never match each other)
    flipped = replace(now, clusters=(cluster("long", 63_500 + 0.0, 1e8),), nearest_long=None)
    assert compare(replace(prev, clusters=(cluster("short", 63_500, 1e8),)), flipped, FLAT).appeared
    # tolerance 0: only an exact price is the same cluster
    assert len(compare(prev, now, FLAT, ChangeParams(match_pct=0.0)).appeared) == 3
    # insignificant clusters now are not announced
    quiet = replace(now, clusters=tuple(replace(c, significant=False) for c in new))
    assert compare(prev, quiet, FLAT).appeared == ()


def test_swept_clusters_use_the_real_high_and_low_since_the_previous_reading():
    old = (cluster("short", 65_500, 3e8), cluster("long", 63_500, 2e8), cluster("long", 62_000, 1e8))
    prev = replace(make_reading(1e8, 1e8, clusters=old, price=64_000.0), end_ms=PREV_MS)
    now = replace(make_reading(1e8, 1e8), end_ms=END_MS)
    lows = [64_000.0] * 30
    highs = [64_200.0] * 30
    lows[1] = 61_000.0  # before the previous reading: does not count
    highs[1] = 70_000.0
    lows[10] = 63_400.0  # after it: through the 63,500 long cluster, not the 62,000 one
    highs[20] = 65_499.0  # just short of the 65,500 short cluster
    p = path(lows, highs)
    ch = compare(prev, now, p)
    assert [(s.cluster.price, s.extreme) for s in ch.swept] == [(63_500, 63_400.0)]
    d = daily(now, with_path(p), previous=prev)
    assert "• Swept: the long cluster of ~$200M around $63,500 (price low since then $63,400)." in d
    assert "65,500 (price" not in d and "62,000 (price" not in d
    highs[20] = 65_500.0  # touching the price is trading through it
    ch = compare(prev, now, path(lows, highs))
    assert {s.cluster.side for s in ch.swept} == {"long", "short"}
    # a price path that starts after the previous reading: checked from where it starts, and said
    late = path(lows[5:], highs[5:], start=PREV_MS + 3 * H)
    d = daily(now, with_path(late), previous=prev)
    assert "Sweeps checked only from 2026-06-21 14:45 UTC: this map's bars start there." in d
    assert "Swept: the long cluster" in d


def test_sweeps_not_checked_are_said_not_guessed():
    prev = replace(make_reading(1e8, 1e8, clusters=(cluster("long", 64_000, 2e8),)), end_ms=PREV_MS)
    now = replace(make_reading(1e8, 1e8, price=63_000.0), end_ms=END_MS)  # price alone is below it now
    d = daily(now, with_path(None), previous=prev)
    assert "Sweeps not checked: this map has no price path (a finished snapshot)." in d and "Swept:" not in d
    d = daily(now, with_path(FLAT), previous=replace(prev, end_ms=0))
    assert "Sweeps not checked: the previous reading has no time." in d
    d = daily(replace(now, end_ms=PREV_MS - 1), with_path(FLAT), previous=prev)
    assert "Sweeps not checked: the previous reading is newer than this one." in d
    # nothing traded since the previous reading (same data time): nothing swept, nothing to say
    ch = compare(prev, replace(now, end_ms=PREV_MS + 40 * H), FLAT)
    assert ch.swept == () and ch.sweep_note is None


def test_a_different_build_compares_neither_totals_nor_new_clusters_but_still_sweeps():
    prev = replace(make_reading(1e8, 1e8, clusters=(cluster("long", 64_000, 2e8),)), end_ms=PREV_MS,
                   venues=("binance", "okx"))
    now = replace(make_reading(2e8, 1e8, clusters=(cluster("short", 66_000, 2e8),)), end_ms=END_MS)
    p = path([63_900.0] * 30, [64_700.0] * 30)
    ch = compare(prev, now, p)
    assert ch.not_compared == ("venues", "binance+okx", "binance") and ch.totals == () and ch.appeared == ()
    assert [s.cluster.price for s in ch.swept] == [64_000]
    d = daily(now, with_path(p), previous=prev)
    assert "Totals and clusters not compared: the venues changed from Binance + OKX to Binance." in d
    assert "New short" not in d and "Swept: the long cluster" in d
    with pytest.raises(InputError, match="ETHUSDT"):
        compare(replace(prev, symbol="ETHUSDT"), now, p)


def test_change_json_is_plain_json():
    import json

    prev = replace(make_reading(1e8, 1e8, clusters=(cluster("long", 64_000, 2e8),)), end_ms=PREV_MS)
    now = replace(make_reading(2e8, 1e8, clusters=(cluster("short", 66_000, 2e8),)), end_ms=END_MS)
    out = json.loads(json.dumps(compare(prev, now, path([63_000.0] * 30, [64_700.0] * 30)).to_json(), allow_nan=False))
    assert out["skew"] == {"before": "balanced", "after": "short", "changed": True}
    assert out["totals"]["short"] == {"before_usd": 1e8, "after_usd": 2e8} and out["within"] == 0.05
    assert [c["price"] for c in out["appeared"]] == [66_000] and out["swept"][0]["extreme"] == 63_000.0
    assert out["since"] == "2026-06-21T11:45Z" and out["not_compared"] is None


def test_change_params_are_validated():
    with pytest.raises(InputError):
        ChangeParams(distance=0.0)
    with pytest.raises(InputError):
        ChangeParams(match_pct=-0.1)


# -- the price path behind a map --------------------------------------------------------------------

def test_model_map_carries_the_clipped_bar_range_and_merge_takes_the_envelope(sample_bars):
    bars = sample_bars.last(86_400_000)
    m = build_map(bars, window="1d", now_ms=0)
    assert m.path is not None and np.array_equal(m.path.time, bars.time)
    assert np.all(m.path.low <= bars.close) and np.all(m.path.high >= bars.close)
    assert read(m).end_ms == m.end_ms == bars.end_ms
    t0 = int(bars.time[100])
    low, high, n = m.path.since(t0)
    assert n == len(bars) - 100 and low == float(bars.low[100:].min()) and high == float(bars.high[100:].max())
    assert m.path.since(bars.end_ms) is None
    other = replace(m, venues=("bybit",), path=PricePath(m.path.time[50:], m.path.high[50:] + 10, m.path.low[50:] - 10,
                                                         m.path.interval_ms))
    merged = merge([m, other])
    assert merged.path is not None and merged.path.time.size == len(bars)
    assert merged.path.low[60] == m.path.low[60] - 10 and merged.path.high[10] == m.path.high[10]
    assert merge_paths([None, None]) is None and merge_paths([m.path, None]) is m.path
