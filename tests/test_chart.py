"""The chart: valid PNGs of the right size and weight, readable labels, and every edge case drawn."""

from __future__ import annotations

import inspect
import math
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from analysis import chart
from analysis import numbers
from analysis.chart import build_figure, display_range, rebin, render
from analysis.errors import DataError, InputError
from analysis.liqmap import LiquidationMap, merge
from analysis.metrics import read
from analysis.model import build_map

ROOT = Path(__file__).resolve().parent.parent
WEEK = 7 * 86_400_000


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (after checking the signature)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def btc(sample_bars) -> LiquidationMap:
    return build_map(sample_bars.last(WEEK), window="7d", now_ms=int(sample_bars.end_ms))


@pytest.fixture(scope="module")
def multi(sample_bars) -> LiquidationMap:
    n = len(sample_bars)
    maps = [
        build_map(replace(sample_bars.slice(n - 2016 - 400 * i, n), venue=v), window="7d")
        for i, v in enumerate(("binance", "bybit", "okx"))
    ]
    return merge(maps).with_notes("hyperliquid missing: HTTP 503 from /info")


@pytest.fixture(scope="module")
def tiny(sample_bars) -> LiquidationMap:
    """The same real price path scaled to an $0.08 coin (OI stays in USD)."""
    b = sample_bars.last(WEEK)
    k = 0.08 / b.price
    scaled = replace(b, symbol="DOGEUSDT", open=b.open * k, high=b.high * k, low=b.low * k, close=b.close * k,
                     taker_net=None if b.taker_net is None else b.taker_net / k)
    return build_map(scaled, window="7d")


def texts(fig, gid: str) -> list[str]:
    return [t.get_text() for t in fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == gid)]


# -- PNG output --------------------------------------------------------------------------------------

@pytest.mark.parametrize("theme", chart.THEMES)
@pytest.mark.parametrize("stack", chart.STACKS)
def test_png_is_valid_sized_and_light(multi, theme, stack):
    png = render(multi, read(multi), theme=theme, stack=stack)
    assert png_size(png) == (1280, 720)
    assert len(png) < 1_000_000
    assert png.endswith(b"IEND\xaeB`\x82")


def test_themes_differ(btc):
    r = read(btc)
    assert render(btc, r, theme="dark") != render(btc, r, theme="light")


@pytest.mark.parametrize("size", [(1200, 675), (520, 293), (1920, 1080), (320, 180), (720, 960)])
def test_exact_pixel_size(btc, size):
    assert png_size(render(btc, read(btc), size_px=size)) == size


# -- content ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tiers", [("all",), ("10x", "25x", "50x", "100x"), tuple(f"{k}x" for k in range(1, 9))])
def test_any_tier_count(btc, tiers):
    n = len(tiers)
    long = np.repeat(btc.long.sum(axis=2, keepdims=True) / n, n, axis=2)
    short = np.repeat(btc.short.sum(axis=2, keepdims=True) / n, n, axis=2)
    m = replace(btc, tiers=tiers, long=long, short=short)
    fig = build_figure(m, read(m))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:n] == list(tiers)
    colors = [h.get_facecolor() for h in fig.legends[0].legend_handles[:n]]
    assert len({tuple(c) for c in colors}) == n


def test_long_header_texts_shrink_instead_of_overlapping(btc):
    m = replace(btc, symbol="1000000BABYDOGECOINUSDT", venues=("hyperliquid-testnet-perps",))
    fig = build_figure(m, read(m), size_px=(640, 360))
    renderer = fig.canvas.get_renderer()
    for gid in ("title", "subtitle"):
        left, right = fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == gid)
        assert left.get_window_extent(renderer).x1 < right.get_window_extent(renderer).x0


def test_title_subtitle_footer(multi):
    r = read(multi)
    fig = build_figure(multi, r)
    title = " ".join(texts(fig, "title"))
    assert "BTCUSDT" in title and "Binance + Bybit + OKX" in title and "7d" in title
    sub = " ".join(texts(fig, "subtitle"))
    assert r.skew.label in sub.lower() and "±5%" in sub and "UTC" in sub
    footer = texts(fig, "footer")[0]
    assert "Estimated from open-interest flow" in footer and "not actual positions" in footer
    assert "Missing: Hyperliquid" in footer
    assert texts(fig, "price-label") == [numbers.price(multi.price)]


def test_coinglass_footer(btc):
    m = replace(btc, kind="coinglass", venues=("coinglass",))
    footer = texts(build_figure(m, read(m)), "footer")[0]
    assert footer.startswith("Source: CoinGlass liquidation map") and "Estimated" not in footer


def test_significant_clusters_labelled_without_overlap(btc):
    r = read(btc)
    fig = build_figure(btc, r)
    labels = texts(fig, "cluster-label")
    lo, hi = display_range(btc, r)
    for c in r.clusters:
        if c.significant and lo < c.price < hi:
            assert f"{numbers.price(c.price)} · {numbers.usd(c.notional)}" in labels
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    axbox = ax.get_window_extent(renderer)
    artists = fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() in ("cluster-label", "price-label"))
    boxes = [a.get_window_extent(renderer) for a in artists]
    assert len(boxes) >= 2
    for i, b in enumerate(boxes):
        assert axbox.x0 - 1 <= b.x0 and b.x1 <= axbox.x1 + 1 and b.y1 <= axbox.y1 + 1
        for other in boxes[i + 1:]:
            assert not b.overlaps(other)


def label_boxes(fig):
    renderer = fig.canvas.get_renderer()
    artists = fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() in ("cluster-label", "price-label"))
    return [a.get_window_extent(renderer) for a in artists]


def test_crowded_clusters_do_not_overlap(btc):
    """Clusters a few bins apart would collide where they are drawn; the labels must stack instead."""
    r = read(btc)
    base = max(r.clusters_of("short"), key=lambda c: c.notional)
    crowded = tuple(
        replace(base, price=base.price + k * 2 * btc.bin_width, notional=base.notional * (1 - 0.1 * k))
        for k in range(4)
    )
    fig = build_figure(btc, replace(r, clusters=crowded))
    labels = texts(fig, "cluster-label")
    assert len(labels) >= 3
    boxes = label_boxes(fig)
    for i, b in enumerate(boxes):
        for other in boxes[i + 1:]:
            assert not b.overlaps(other)


def test_empty_map_shows_message(btc):
    z = np.zeros_like(btc.long)
    m = replace(btc, long=z, short=z.copy())
    r = read(m)
    fig = build_figure(m, r)
    msg = texts(fig, "empty-message")
    assert msg and "No estimated liquidation levels" in msg[0]
    assert texts(fig, "cluster-label") == []
    assert png_size(render(m, r)) == (1280, 720)


def test_levels_only_outside_window_says_so(btc):
    far = (np.abs(btc.centers / btc.price - 1) > 0.05)[None, :, None]
    m = replace(btc, long=btc.long * far, short=btc.short * far)
    assert m.total_long > 0 and m.total_short > 0
    fig = build_figure(m, read(m), range_pct=0.03)
    assert texts(fig, "empty-message") == ["No estimated liquidation levels\nwithin ±3% of price"]


@pytest.mark.parametrize("side", ["long", "short"])
def test_one_sided_maps(btc, side):
    m = replace(btc, **{side: np.zeros_like(btc.long)})
    r = read(m)
    assert png_size(render(m, r, theme="light")) == (1280, 720)
    other = "short" if side == "long" else "long"
    assert all(c.side == other for c in r.clusters)


def test_tiny_price_formatting(tiny):
    r = read(tiny)
    fig = build_figure(tiny, r)
    ax = fig.axes[0]
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert ticks and all(t.startswith("$0.0") for t in ticks)
    assert len(set(ticks)) == len(ticks)  # distinct: enough decimals
    assert texts(fig, "price-label") == ["$0.08"]
    assert any(lbl.startswith("$0.0") for lbl in texts(fig, "cluster-label"))
    assert png_size(render(tiny, r)) == (1280, 720)


def test_huge_notional_and_many_venues(sample_bars):
    n = len(sample_bars)
    names = ("binance", "bybit", "okx", "hyperliquid", "bitget", "deribit", "gate", "mexc", "kraken")
    maps = [build_map(replace(sample_bars.slice(n - 2016 - 200 * i, n), venue=v,
                              oi_usd=sample_bars.oi_usd[n - 2016 - 200 * i:] * 1e4), window="7d")
            for i, v in enumerate(names)]
    m = merge(maps)
    r = read(m)
    assert m.total_long > 1e12
    fig = build_figure(m, r, stack="venue")
    assert "9 exchanges" in " ".join(texts(fig, "title"))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "Others" in legend and len(legend) == 7 + 2
    assert fig.legends[0].get_window_extent(fig.canvas.get_renderer()).width <= fig.bbox.width
    assert png_size(render(m, r, stack="venue")) == (1280, 720)


# -- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"theme": "neon"}, {"stack": "side"}, {"size_px": (10, 10)}, {"size_px": (5000, 720)},
    {"size_px": "big"}, {"range_pct": 0.0}, {"range_pct": 12}, {"range_pct": float("nan")},
])
def test_bad_options_raise_input_error(btc, kwargs):
    with pytest.raises(InputError):
        render(btc, read(btc), **kwargs)


@pytest.mark.parametrize("change", [
    lambda m: replace(m, price=float("nan")),
    lambda m: replace(m, price=-1.0),
    lambda m: replace(m, long=np.full_like(m.long, np.nan)),
    lambda m: replace(m, short=-m.short - 1.0),
    lambda m: replace(m, long=m.long[:, :-1]),
])
def test_malformed_map_raises_data_error(btc, change):
    r = read(btc)
    with pytest.raises(DataError):
        render(change(btc), r)


# -- no pyplot ----------------------------------------------------------------------------------------

def test_no_pyplot_in_source():
    src = inspect.getsource(chart)
    for pattern in ("import matplotlib.pyplot", "from matplotlib import pyplot", "plt.", "matplotlib.use("):
        assert pattern not in src


def test_render_does_not_import_pyplot():
    code = (
        "import sys\n"
        "from analysis.sources import read_bars_csv, SAMPLE_PATH\n"
        "from analysis.model import build_map\n"
        "from analysis.metrics import read\n"
        "from analysis.chart import render\n"
        "b = read_bars_csv(SAMPLE_PATH, venue='binance', symbol='BTCUSDT').last(86_400_000)\n"
        "m = build_map(b, window='1d')\n"
        "png = render(m, read(m))\n"
        "assert png[:4] == b'\\x89PNG'\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# -- pure helpers -------------------------------------------------------------------------------------

def test_chart_formatters_are_the_shared_ones():
    assert chart.fmt_money is numbers.usd and chart.fmt_price is numbers.price and chart.fmt_tick is numbers.tick


@pytest.mark.parametrize("stack", chart.STACKS)
def test_rebin_conserves_notional_in_window(multi, stack):
    lo, hi = multi.price * 0.9, multi.price * 1.1
    rb = rebin(multi, lo, hi, stack)
    c = multi.centers
    inside = (c >= lo) & (c < hi)
    assert rb.long.sum() == pytest.approx(multi.long_by_bin()[inside].sum(), rel=1e-12)
    assert rb.short.sum() == pytest.approx(multi.short_by_bin()[inside].sum(), rel=1e-12)
    assert rb.n <= chart.PARAMS.bars_max + 1
    assert rb.width % multi.bin_width == pytest.approx(0, abs=1e-9)
    assert rb.groups == (multi.tiers if stack == "tier" else multi.venues)
    # every native bin lands in the bar that contains its center
    i = int(np.argmax(multi.long_by_bin() * inside))
    j = int((c[i] - rb.lo) // rb.width)
    assert rb.edges[j] <= c[i] < rb.edges[j + 1] and rb.long[:, j].sum() >= multi.long_by_bin()[i]


def test_rebin_groups_small_venues_as_others(multi):
    rb = rebin(multi, multi.price * 0.9, multi.price * 1.1, "venue", max_venues=2)
    full = rebin(multi, multi.price * 0.9, multi.price * 1.1, "venue")
    assert rb.groups[-1] == "others" and len(rb.groups) == 2
    np.testing.assert_allclose(rb.long.sum(axis=0), full.long.sum(axis=0))
    biggest = int(np.argmax(full.long.sum(axis=1) + full.short.sum(axis=1)))
    assert rb.groups[0] == full.groups[biggest]


def test_cumulative_curves_reach_side_totals(btc):
    lo, hi = display_range(btc, read(btc))
    rb = rebin(btc, lo, hi)
    xl, yl, xs, ys = chart._cumulative(rb, btc.price)
    assert yl[0] == 0 and ys[0] == 0 and xl[0] == xs[0] == btc.price
    assert np.all(np.diff(yl) >= 0) and np.all(np.diff(ys) >= 0)
    assert np.all(np.diff(xl) <= 0) and np.all(np.diff(xs) >= 0)
    assert yl[-1] == pytest.approx(rb.long.sum()) and ys[-1] == pytest.approx(rb.short.sum())


def test_display_range(btc):
    r = read(btc)
    lo, hi = display_range(btc, r)
    p = btc.price
    assert hi / p - 1 == pytest.approx(1 - lo / p)
    assert 0.02 <= hi / p - 1 <= chart.PARAMS.max_range_pct
    for c in r.clusters:
        if c.significant:
            assert lo < c.price < hi
    assert display_range(btc, r, 0.05) == pytest.approx((p * 0.95, p * 1.05))


def test_display_range_narrows_to_close_levels(btc):
    p, c = btc.price, btc.centers
    keep = (np.abs(c / p - 1) < 0.03)[None, :, None]
    m = replace(btc, long=btc.long * keep, short=btc.short * keep)
    lo, hi = display_range(m, read(m))
    assert hi / p - 1 < 0.06  # not the default ±12%
    assert (c[m.long_by_bin() + m.short_by_bin() > 0] >= lo).all()
