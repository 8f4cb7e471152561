"""Reading maps: cumulative sums, imbalance, skew classes, clusters and thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.errors import InputError
from analysis.liqmap import LiquidationMap, merge, nice_width
from analysis.metrics import SKEW_CLASSES, MetricsParams, classify, read
from analysis.model import build_map


def hand_map(long_levels: dict[float, float], short_levels: dict[float, float], price=100.0, width=0.1,
             tiers=("5x", "10x"), tier_of=lambda p: 0, venue="binance") -> LiquidationMap:
    """A map with notional placed at given prices (bin = floor(p / width))."""
    lo = 50.0
    n = int((150 - lo) / width)
    long = np.zeros((1, n, len(tiers)))
    short = np.zeros((1, n, len(tiers)))
    for levels, arr in ((long_levels, long), (short_levels, short)):
        for p, v in levels.items():
            arr[0, int(math.floor((p - lo) / width + 1e-9)), tier_of(p)] += v
    return LiquidationMap("BTCUSDT", (venue,), "estimated", price, width, lo, tiers, long, short, "7d", 0, 1, 1)


def test_cumulative_at_distances_and_band():
    m = hand_map({99.5: 10, 98.5: 20, 96.0: 40, 91.0: 80, 80.0: 1000}, {100.5: 5, 101.5: 7, 104.0: 11, 109.0: 13})
    r = read(m)
    assert r.distances == (0.01, 0.02, 0.05, 0.10)
    assert r.cum_long == pytest.approx((10, 30, 70, 150))
    assert r.cum_short == pytest.approx((5, 12, 23, 36))
    assert r.long_in_band == pytest.approx(70) and r.short_in_band == pytest.approx(23)
    assert r.imbalance == pytest.approx(23 / 70)
    assert r.skew.key == "heavily_long"
    assert r.total_long == pytest.approx(1150)


@pytest.mark.parametrize(
    "ratio, key",
    [(5.0, "heavily_short"), (3.0, "heavily_short"), (2.0, "short"), (1.5, "short"), (1.0, "balanced"),
     (0.7, "balanced"), (1 / 1.5, "long"), (0.5, "long"), (1 / 3, "heavily_long"), (0.1, "heavily_long"),
     (math.inf, "heavily_short"), (0.0, "heavily_long"), (math.nan, "balanced")],
)
def test_classify_thresholds(ratio, key):
    assert classify(ratio).key == key


def test_classes_run_from_heavily_short_to_heavily_long():
    assert [SKEW_CLASSES[k].label for k in ("heavily_short", "short", "balanced", "long", "heavily_long")] == [
        "heavily short-skewed", "short-skewed", "balanced", "long-skewed", "heavily long-skewed"]


def test_band_is_configurable():
    m = hand_map({99.0: 10, 96.0: 100}, {101.0: 30})
    assert read(m).imbalance == pytest.approx(30 / 110)
    assert read(m, MetricsParams(band=0.02)).imbalance == pytest.approx(3.0)
    assert read(m, MetricsParams(band=0.02)).skew.key == "heavily_short"


def test_one_sided_and_empty_maps():
    only_short = read(hand_map({}, {101.0: 30}))
    assert only_short.imbalance == math.inf and only_short.skew.key == "heavily_short"
    empty = read(hand_map({}, {}))
    assert empty.empty and math.isnan(empty.imbalance) and empty.clusters == ()
    assert empty.to_json()["imbalance_short_over_long"] is None


def test_clusters_find_the_peaks_with_dominant_tier():
    tier_of = lambda p: 1 if p < 95 else 0  # noqa: E731
    m = hand_map({99.0: 5, 96.0: 50, 92.0: 200, 80.0: 3}, {103.0: 80, 107.0: 10}, tier_of=tier_of)
    r = read(m)
    longs = r.clusters_of("long")
    assert [round(c.price) for c in longs][:2] == [92, 96]
    top = longs[0]
    assert top.notional == pytest.approx(200) and top.dominant_tier == "10x" and top.significant
    assert top.distance_pct == pytest.approx(-8.0, abs=0.1)
    assert not any(round(c.price) == 80 for c in longs)  # beyond cluster_range (15%)
    # nearest significant: 96 holds 25% of the top (below the 40% bar), so 92 is the nearest
    assert round(r.nearest_long.price) == 92
    assert round(r.nearest_short.price) == 103
    # thresholds: breaking the far edge of a cluster counts everything between price and there
    t = [t for t in r.thresholds if t.side == "long"][0]
    assert t.price < 92 and t.notional == pytest.approx(255)


def test_cluster_separation_and_count():
    m = hand_map({}, {101.0 + 0.5 * i: 10.0 + i for i in range(16)})
    r = read(m, MetricsParams(clusters=3, min_separation_pct=0.02))
    prices = sorted(c.price for c in r.clusters_of("short"))
    assert len(prices) == 3
    assert all(b - a >= 2.0 - 0.2 for a, b in zip(prices, prices[1:]))


@pytest.mark.parametrize("kw", [dict(band=0), dict(mild=4.0, heavy=3.0), dict(distances=(0.9,))])
def test_bad_metric_params(kw):
    with pytest.raises(InputError):
        MetricsParams(**kw)


def test_real_map_reading_is_consistent(sample_bars):
    m = build_map(sample_bars.last(7 * 86_400_000), window="7d")
    r = read(m)
    assert list(r.cum_long) == sorted(r.cum_long) and list(r.cum_short) == sorted(r.cum_short)
    assert r.long_in_band == pytest.approx(r.cum_long[2]) and r.short_in_band == pytest.approx(r.cum_short[2])
    assert all(c.price < m.price for c in r.clusters_of("long"))
    assert all(c.price > m.price for c in r.clusters_of("short"))
    assert r.nearest_long is not None and r.nearest_short is not None


def test_merge_sums_venues_on_one_grid(sample_bars):
    a = build_map(sample_bars.last(86_400_000), window="1d")
    b = hand_map({}, {}, price=a.price, width=a.bin_width / 2)
    b = LiquidationMap("BTCUSDT", ("okx",), "estimated", a.price, a.bin_width, a.grid_lo + 10 * a.bin_width,
                       a.tiers, a.long[:, :50] * 2, a.short[:, :50] * 0, "1d", a.start_ms, a.end_ms, a.generated_ms)
    merged = merge([a, b])
    assert merged.venues == ("binance", "okx")
    assert merged.long.shape[0] == 2
    assert merged.total_long == pytest.approx(a.total_long + b.total_long)
    assert merged.long[1].sum(axis=1)[10:60].sum() == pytest.approx(b.total_long)
    assert merged.to_json()["by_venue"]["okx"]["long_usd"] == pytest.approx(b.total_long, rel=1e-6)


@pytest.mark.parametrize("target, width", [(64.59, 50.0), (0.0812, 0.05), (3.1, 2.5), (1.0, 1.0), (2.2, 2.0)])
def test_nice_width(target, width):
    assert nice_width(target) == pytest.approx(width)
