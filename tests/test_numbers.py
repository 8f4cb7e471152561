"""One number format: the table of rules, and the chart's drawn strings agreeing with the text."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
from matplotlib.text import Text

from analysis import chart, commentary, numbers
from analysis.metrics import read
from analysis.model import build_map

WEEK = 7 * 86_400_000
M = numbers.MINUS


# -- the rules -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (1.234e9, "$1.23B"), (1.2e9, "$1.2B"), (456e6, "$456M"), (44.32e6, "$44.3M"), (12_345, "$12.3K"),
    (12_000, "$12K"), (850, "$850"), (0, "$0"), (0.4, "$0"), (999.6, "$1K"), (99_949, "$99.9K"),
    (99_951, "$100K"), (999_999, "$1M"), (999.96e6, "$1B"), (5e12, "$5T"), (-2.5e6, f"{M}$2.5M"),
    (-0.2, "$0"), (math.nan, "n/a"), (math.inf, "n/a"), (None, "n/a"),
])
def test_usd(value, text):
    assert numbers.usd(value) == text


@pytest.mark.parametrize("value, text", [
    (104_250.6, "$104,251"), (65_750.2, "$65,750"), (1_000, "$1,000"), (999.996, "$1,000"), (999.4, "$999.40"),
    (145.234, "$145.23"), (145.2, "$145.20"), (2.3456, "$2.346"), (0.41234, "$0.4123"), (0.08, "$0.08"),
    (0.0812345, "$0.08123"), (0.00001234, "$0.00001234"), (0.099996, "$0.10"), (0, "n/a"), (-5, "n/a"),
    (math.nan, "n/a"),
])
def test_price(value, text):
    assert numbers.price(value) == text


@pytest.mark.parametrize("value, decimals, text", [
    (3.0, 1, "+3.0%"), (-4.5, 1, f"{M}4.5%"), (400, 0, "+400%"), (0, 1, "+0.0%"), (math.nan, 1, "n/a"),
])
def test_pct(value, decimals, text):
    assert numbers.pct(value, decimals) == text


@pytest.mark.parametrize("value, text", [(0.05, "5%"), (0.005, "0.5%"), (0.1, "10%"), (0.12, "12%")])
def test_band(value, text):
    assert numbers.band(value) == text


@pytest.mark.parametrize("value, text", [
    (1.0, "1.0×"), (1.89, "1.8×"), (2.9999, "2.9×"), (3.0, "3.0×"), (12.7, "12×"), (1500, "over 1,000×"),
    (math.inf, "over 1,000×"), (math.nan, "n/a"),
])
def test_times_rounds_down(value, text):
    assert numbers.times(value) == text


@pytest.mark.parametrize("short, long, text", [
    (5.29, 1, "5.2× more shorts"), (1, 1.25, "1.2× more longs"), (1.05, 1, "roughly even"), (1, 1, "roughly even"),
])
def test_imbalance(short, long, text):
    assert numbers.imbalance(short, long) == text


@pytest.mark.parametrize("x, step, text", [
    (62_500, 2_500, "$62.5K"), (64_000, 2_000, "$64K"), (0.082, 0.002, "$0.082"), (3_400, 100, "$3,400"),
    (1.25, 0.25, "$1.25"), (0, 20_000, "$0K"),
])
def test_tick(x, step, text):
    assert numbers.tick(x, step) == text


# -- chart and text agree ----------------------------------------------------------------------------

AMOUNT = r"\$\d{1,3}(?:\.\d{1,2})?[KMBT]|\$\d{1,3}"
PRICE = r"\$\d{1,3}(?:,\d{3})+|\$\d+\.\d{2,}|\$\d{1,3}"


@pytest.fixture(scope="module")
def maps(sample_bars):
    btc = build_map(sample_bars.last(WEEK), window="7d", now_ms=int(sample_bars.end_ms))
    b = sample_bars.last(WEEK)
    k = 0.08 / b.price  # the same real price path as a $0.08 coin
    doge = build_map(replace(b, symbol="DOGEUSDT", open=b.open * k, high=b.high * k, low=b.low * k,
                             close=b.close * k, taker_net=None if b.taker_net is None else b.taker_net / k),
                     window="7d")
    return {"BTCUSDT": btc, "DOGEUSDT": doge}


def drawn(fig) -> dict[str, list[str]]:
    """Strings the figure draws (after a draw, so tick labels exist), by gid; ticks under "tick"."""
    fig.canvas.draw()
    out: dict[str, list[str]] = {}
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text():
            out.setdefault(t.get_gid() or "other", []).append(t.get_text())
    for ax in fig.axes:
        out.setdefault("tick", []).extend(
            t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text())
    return out


@pytest.mark.parametrize("symbol", ["BTCUSDT", "DOGEUSDT"])
def test_chart_and_text_say_the_same_numbers(maps, symbol):
    m = maps[symbol]
    r = read(m)
    fig = chart.build_figure(m, r)
    s = drawn(fig)
    text = commentary.summary(r, m)

    # the current price
    (label,) = s["price-label"]
    assert label == numbers.price(m.price)
    assert text.startswith(f"**{symbol}** {label} ·")
    sub = s["subtitle"][0]
    assert sub.startswith(f"Price {label}  ·")

    # band totals and the imbalance, worded the same
    short, long = numbers.usd(r.short_in_band), numbers.usd(r.long_in_band)
    assert f"shorts {short} vs longs {long}" in sub
    skew = text.splitlines()[1]
    assert f"{short} of shorts" in skew and f"{long} of longs" in skew
    ratio = numbers.imbalance(r.short_in_band, r.long_in_band)
    assert f"({ratio})" in sub and ratio in skew

    # every cluster the text names is labelled on the chart with the same two strings
    labels = set(s["cluster-label"])
    assert labels
    lo, hi = chart.display_range(m, r)
    named = re.findall(r"~(\S+) around (\S+) \(", text)
    assert named
    for amount, price in named:
        c = next(c for c in r.clusters if numbers.usd(c.notional) == amount and numbers.price(c.price) == price)
        if lo < c.price < hi:
            assert f"{price} · {amount}" in labels
    for lab in labels:
        price, amount = lab.split(" · ")
        assert re.fullmatch(PRICE, price) and re.fullmatch(AMOUNT, amount), lab

    # axis ticks are written by the same module
    money_ticks = [t for t in s["tick"] if t[-1] in "KMBT" and t.startswith("$")]
    assert money_ticks and all(re.fullmatch(AMOUNT, t) for t in money_ticks)


def test_every_dollar_figure_in_the_text_follows_the_rules(maps):
    for m in maps.values():
        r = read(m)
        for text in (commentary.summary(r, m), commentary.daily(r, m, previous=r)):
            figures = re.findall(r"\$[\d.,]+[KMBT]?", text)
            assert figures
            for f in figures:
                f = f.rstrip(".,")
                assert re.fullmatch(AMOUNT, f) or re.fullmatch(PRICE, f), f


def test_bot_embed_quotes_the_chart_numbers():
    """The /liqmap embed (text) and its attached PNG (chart) of one report read the same figures."""
    from analysis.report import ReportService
    from analysis.sources.registry import make_sources
    from bot.poster import report_embed
    from conftest import run

    rep = run(ReportService(make_sources("sample")).report("BTC", "7d"))
    embed = report_embed(rep)
    s = drawn(chart.build_figure(rep.map, rep.reading))
    desc = embed.description or ""
    assert s["price-label"][0] in desc.splitlines()[0]
    short, long = numbers.usd(rep.reading.short_in_band), numbers.usd(rep.reading.long_in_band)
    assert f"shorts {short} vs longs {long}" in s["subtitle"][0] and f"{short} of shorts" in desc
    quoted = {f"{p} · {a}" for a, p in re.findall(r"~(\S+) around (\S+) \(", desc)}
    assert quoted and quoted <= set(s["cluster-label"])
