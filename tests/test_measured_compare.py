"""Model against measurement: the shape scores, the naive baseline and the side-by-side chart."""

from __future__ import annotations

import asyncio
import dataclasses
import functools

import numpy as np
import pytest
from scipy.stats import spearmanr

from analysis.errors import DataError, InputError
from analysis.measured.compare import CompareParams, compare_maps, naive_map, on_grid, score_shape, spearman
from analysis.measured.compare_chart import render_compare
from analysis.measured.measured_map import build_measured
from analysis.model import build_map
from analysis.sources.csvfile import SampleSource
from analysis.windows import WINDOWS
from measured_helpers import synthetic_snapshot

P = CompareParams()


def test_spearman_matches_scipy_with_ties_and_is_nan_when_constant():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 5, 60).astype(float)
    b = a + rng.integers(0, 3, 60)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert np.isnan(spearman(np.ones(10), b[:10]))


def test_a_map_against_itself_scores_perfectly_and_a_shifted_one_worse():
    m = build_measured(synthetic_snapshot(), "BTC")
    g = on_grid(m, P)
    same = score_shape(g, g, P)
    assert all(b["captured"] == 1.0 for b in same.bands.values())
    assert same.spearman["both"] == 1.0 and same.overlap == 1.0
    assert same.bands["5%"]["measured_share"] == same.bands["5%"]["estimated_share"]
    shifted = dataclasses.replace(g, long=np.roll(g.long, 6), short=np.roll(g.short, 6))
    worse = score_shape(shifted, g, P)
    assert worse.overlap < 0.9 and worse.spearman["both"] < 1.0
    assert worse.bands["2%"]["captured"] < 1.0


def test_the_band_numbers_are_exact_on_a_hand_made_grid():
    # measured: all longs within 1% (bin 0..3 of 0.25%), estimate: half there, half at 4-5% (bins 16..19)
    meas = dataclasses.replace(on_grid(build_measured(synthetic_snapshot(), "BTC"), P))
    z = np.zeros(P.n)
    meas = type(meas)(z.copy(), z.copy(), 0.0)
    meas.long[1] = 100.0
    est = type(meas)(z.copy(), z.copy(), 0.0)
    est.long[1], est.long[17] = 50.0, 50.0
    s = score_shape(est, meas, P)
    assert s.bands["1%"] == {"measured_share": 1.0, "estimated_share": 0.5, "captured": 0.5}
    assert s.bands["5%"] == {"measured_share": 1.0, "estimated_share": 1.0, "captured": 0.5}
    assert s.overlap == 0.5


def test_naive_baseline_is_oi_at_price_by_the_model_leverage_distribution():
    n = naive_map(90_000.0, 1e9, "BTCUSDT")
    assert n.total_long == pytest.approx(5e8) and n.total_short == pytest.approx(5e8)
    assert np.all(n.centers[n.long_by_bin() > 0] < 90_000.0) and np.all(n.centers[n.short_by_bin() > 0] > 90_000.0)
    with pytest.raises(DataError):
        naive_map(90_000.0, 0.0, "BTCUSDT")


@functools.lru_cache(maxsize=1)
def sample_estimate():
    bars = asyncio.run(SampleSource().bars("BTCUSDT", WINDOWS["7d"]))
    return build_map(bars, window="7d")


def test_compare_scores_the_estimate_and_the_baseline_and_renders():
    est = sample_estimate()
    m = build_measured(synthetic_snapshot(), "BTC")
    c = compare_maps(est, m)
    doc = c.to_json()
    assert set(doc["estimated"]["bands"]) == {"1%", "2%", "5%"} and "naive_baseline" in doc
    assert doc["measured_coverage"] == m.params["coverage"]
    for s in (c.estimated, c.naive):
        for b in s.bands.values():
            assert 0 <= b["captured"] <= 1 and 0 <= b["estimated_share"] <= 1
    assert c.naive.spearman["both"] != c.estimated.spearman["both"]
    assert any("naive baseline in brackets" in line for line in c.lines())
    png = render_compare(est, m, c)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert render_compare(est, m, c, size_px=(400, 269))[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_refuses_what_it_cannot_score():
    est = sample_estimate()
    with pytest.raises(InputError, match="must be a measured map"):
        compare_maps(est, est)
    far = synthetic_snapshot(5)
    m = build_measured(far, "BTC")
    empty = dataclasses.replace(m, long=m.long * 0, short=m.short * 0)
    with pytest.raises(DataError, match="no notional within"):
        compare_maps(est, empty)
    for bad in (dict(step_pct=0), dict(step_pct=0.003), dict(bands_pct=(0.2,))):
        with pytest.raises(InputError):
            CompareParams(**bad)
