"""The tape on the pictures and in the text: the map's realized strip, the heatmap's dots, the
commentary's realized lines, the bounded tape read and the report service's plumbing.

Every tape here is synthetic (tests/fake_tape.py), placed on the bundled sample's own prices.
"""

from __future__ import annotations

import asyncio
from io import BytesIO

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from analysis import chart, commentary
from analysis.errors import SourceError
from analysis.heatmap import build_states
from analysis.heatmap_chart import build_heatmap_figure, render_heatmap
from analysis.metrics import read
from analysis.model import build_map
from analysis.report import ReportService
from analysis.sources import SampleSource
from analysis.tape.events import Coverage, Gap
from analysis.tape.realized import DAY_MS, RealizedParams, RealizedTape, compact, fetch_realized
from tests.fake_tape import FakeTape, event, synthetic_events

HOUR = 3_600_000


@pytest.fixture(scope="module")
def sample_map(sample_bars):
    bars = sample_bars.last(7 * DAY_MS)
    m = build_map(bars, window="7d", now_ms=int(bars.end_ms))
    return bars, m, read(m)


def _tape(bars, events=None, gaps=(), venues=("bybit", "binance", "okx"), covered=None) -> RealizedTape:
    """A tape over the last 24 h of ``bars``; ``covered`` None: the recorder ran the whole window
    for every venue; a list: those spans only (``()``: it never ran)."""
    end = int(bars.end_ms)
    evs = synthetic_events(bars, DAY_MS) if events is None else events
    if covered is None:
        covered = [Coverage(v, "BTCUSDT", end - 2 * DAY_MS, end) for v in venues]
    return RealizedTape("BTCUSDT", end - DAY_MS, end, venues, tuple(sorted(evs, key=lambda e: e.time_ms)), tuple(gaps),
                        covered=tuple(covered))


def _pixels(png: bytes) -> np.ndarray:
    return imread(BytesIO(png), format="png")[..., :3]


def _share_of_colour(img: np.ndarray, colour: str, tol: float = 0.08) -> float:
    return float(np.mean(np.all(np.abs(img - np.array(to_rgb(colour))) < tol, axis=-1)))


# -- the map ---------------------------------------------------------------------------------------

def test_without_a_tape_or_with_one_never_recorded_the_map_is_unchanged(sample_map):
    bars, m, r = sample_map
    plain = chart.render(m, r)
    assert chart.render(m, r, realized=None) == plain
    assert chart.render(m, r, realized=_tape(bars, events=[], covered=())) == plain
    fig = chart.build_figure(m, r, realized=_tape(bars, events=[], covered=()))
    assert not [a for a in fig.axes if a.get_gid() == "realized-strip"]


def _strip_labels(fig) -> list[str]:
    strip = next(a for a in fig.axes if a.get_gid() == "realized-strip")
    return [t.get_text() for t in strip.texts if t.get_gid() == "realized-label"]


def test_a_recorded_window_without_liquidations_is_drawn_as_zero_not_left_out(sample_map):
    bars, m, r = sample_map
    quiet = _tape(bars, events=[])  # the recorder ran all 24 h, nothing was liquidated
    left, right = _strip_labels(chart.build_figure(m, r, realized=quiet))
    assert left == "Realized 24h (tape): longs $0 · shorts $0"
    assert right == "recording: none liquidated"
    assert chart.render(m, r, realized=quiet) != chart.render(m, r)


def test_the_strip_names_venues_not_recorded_and_part_recorded(sample_map):
    bars, m, r = sample_map
    end = int(bars.end_ms)
    tape = _tape(bars, events=[event("bybit", end - HOUR, "long", m.price * 0.99, 1e6)],
                 covered=[Coverage("bybit", "BTCUSDT", end - 6 * HOUR, end)])
    left, right = _strip_labels(chart.build_figure(m, r, realized=tape))
    assert left == "Realized 24h (tape): longs $1M · shorts $0"
    assert right == "Binance, OKX not recorded · Bybit 6.0h of 24h"


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_the_realized_strip_draws_the_tape_under_the_bars_in_the_side_colours(sample_map, theme):
    bars, m, r = sample_map
    tape = _tape(bars)
    fig = chart.build_figure(m, r, theme=theme, realized=tape)
    strip = next(a for a in fig.axes if a.get_gid() == "realized-strip")
    texts = [t.get_text() for t in strip.texts if t.get_gid() == "realized-label"]
    assert texts[0].startswith("Realized 24h (tape): longs ") and commentary.usd(tape.long_usd) in texts[0]
    # the strip sits below the estimate's axes, on the same x range
    main = fig.axes[0]
    assert strip.get_position().y1 < main.get_position().y0
    assert strip.get_xlim() == main.get_xlim()

    with_tape, without = _pixels(chart.render(m, r, theme=theme, realized=tape)), _pixels(chart.render(m, r, theme=theme))
    h, w, _ = with_tape.shape
    fig.canvas.draw()
    box = strip.get_window_extent()
    rows = slice(int(h - box.y1) + 2, int(h - box.y0) - 2)  # image rows run top down
    cols = slice(int(box.x0) + 2, int(box.x1) - 2)
    region, before = with_tape[rows, cols], without[rows, cols]
    assert np.mean(np.any(np.abs(region - before) > 0.05, axis=-1)) > 0.05  # the overlay region changed
    th = chart._THEME[theme]
    assert _share_of_colour(region, th.long_curve) > 0.002  # long bars drawn in the long colour
    assert _share_of_colour(region, th.short_curve) > 0.002
    # the header is the same picture
    assert np.array_equal(with_tape[: int(0.08 * h)], without[: int(0.08 * h)])


def test_long_realized_bars_sit_at_their_price_on_the_bar_grid(sample_map):
    bars, m, r = sample_map
    below = m.price * 0.97
    tape = _tape(bars, events=[event("bybit", int(bars.end_ms) - HOUR, "long", below, 5e6)])
    fig = chart.build_figure(m, r, realized=tape)
    strip = next(a for a in fig.axes if a.get_gid() == "realized-strip")
    polys = [c for c in strip.collections if c.get_paths()]
    xs = np.concatenate([p.vertices[:, 0] for c in polys for p in c.get_paths()])
    assert xs.min() <= below <= xs.max() and xs.max() < m.price  # one bar, left of the price


def test_the_strip_stays_readable_at_embed_size(sample_map):
    bars, m, r = sample_map
    png = chart.render(m, r, size_px=(480, 300), realized=_tape(bars))
    assert _pixels(png).shape[:2] == (300, 480)


# -- the heatmap -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def day_states(sample_bars):
    return build_states(sample_bars.last(DAY_MS), window="1d")


def test_the_heatmap_is_unchanged_without_a_tape(sample_bars, day_states):
    plain = render_heatmap(day_states)
    assert render_heatmap(day_states, realized=None) == plain
    assert render_heatmap(day_states, realized=_tape(sample_bars, events=[], covered=())) == plain


def test_the_heatmap_says_zero_for_a_recorded_window_without_liquidations(sample_bars, day_states):
    from analysis.heatmap_chart import display_rows, price_window, realized_overlay

    fig = build_heatmap_figure(day_states)
    ax = fig.axes[0]
    rows = display_rows(day_states, *price_window(day_states))
    end = int(sample_bars.end_ms)
    part = _tape(sample_bars, events=[], covered=[Coverage("bybit", "BTCUSDT", end - 6 * HOUR, end)])
    assert realized_overlay(fig, ax, day_states, rows, part, chart._THEME["dark"]) == 0
    note = [t.get_text() for t in ax.texts if t.get_gid() == "realized-legend"]
    assert note == ["Realized 24h (tape): $0, recording: none liquidated\n"
                    "Binance, OKX not recorded · Bybit 6.0h of 24h"]
    plain = render_heatmap(day_states)
    assert render_heatmap(day_states, realized=_tape(sample_bars, events=[])) != plain


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_the_heatmap_shows_the_tape_as_dots_at_their_time_and_price(sample_bars, day_states, theme):
    tape = _tape(sample_bars)
    with_tape, without = _pixels(render_heatmap(day_states, theme=theme, realized=tape)), _pixels(
        render_heatmap(day_states, theme=theme))
    fig = build_heatmap_figure(day_states, theme=theme)
    fig.canvas.draw()
    box = fig.axes[0].get_window_extent()
    h = with_tape.shape[0]
    rows, cols = slice(int(h - box.y1) + 2, int(h - box.y0) - 2), slice(int(box.x0) + 2, int(box.x1) - 2)
    changed = np.any(np.abs(with_tape[rows, cols] - without[rows, cols]) > 0.05, axis=-1)
    assert changed.mean() > 0.01
    th = chart._THEME[theme]
    assert _share_of_colour(with_tape[rows, cols], th.long_curve) > _share_of_colour(without[rows, cols], th.long_curve)


def test_heatmap_dots_aggregate_per_cell_and_carry_a_legend(sample_bars, day_states):
    from analysis.heatmap_chart import display_rows, price_window, realized_overlay

    fig = build_heatmap_figure(day_states)
    ax = fig.axes[0]
    rows = display_rows(day_states, *price_window(day_states))
    t = int(day_states.times[-3])
    p = float(day_states.close[-3])
    evs = [event("bybit", t + k, "long", p, 1e5) for k in range(50)] + [event("okx", t, "short", p * 1.001, 3e5)]
    n = realized_overlay(fig, ax, day_states, rows, _tape(sample_bars, events=evs), chart._THEME["dark"])
    assert n == 2  # fifty longs in one cell are one dot
    dots = [c for c in ax.collections if c.get_gid() == "realized-dots"]
    assert len(dots) == 2 and sum(len(d.get_offsets()) for d in dots) == 2
    legend = ax.get_legend()
    assert legend.get_gid() == "realized-legend" and "Realized 24h (tape)" in legend.get_title().get_text()
    assert "$5M" in legend.get_title().get_text()


# -- the text --------------------------------------------------------------------------------------

def test_commentary_says_what_was_realized_which_feeds_are_sampled_and_the_gaps(sample_map):
    bars, m, r = sample_map
    end = int(bars.end_ms)
    evs = [event("bybit", end - HOUR, "long", m.price * 0.99, 2_500_000),
           event("binance", end - 2 * HOUR, "long", m.price * 0.99, 1_000_000),
           event("okx", end - 3 * HOUR, "short", m.price * 1.01, 400_000)]
    gaps = [Gap("binance", None, end - 5 * HOUR, end - 5 * HOUR + 12 * 60_000, "reconnect"),
            Gap("okx", "ETHUSDT", end - 5 * HOUR, end - 4 * HOUR, "other symbol")]
    tape = _tape(bars, events=evs, gaps=gaps)
    lines = commentary.realized_lines(tape)
    assert lines[0] == "Realized in the last 24 h: $3.5M of longs and $400K of shorts."
    assert lines[1] == "Feeds: Bybit complete; Binance and OKX sampled (a lower bound)."
    assert lines[2] == "Gaps in the window: Binance 12 min (events then may be missing)."
    text = commentary.summary(r, m, realized=tape)
    assert "**Realized (tape)**" in text and f"• {lines[0]}" in text
    assert lines[1] in commentary.daily(r, m, realized=tape)


def test_no_tape_leaves_the_text_unchanged(sample_map):
    bars, m, r = sample_map
    assert commentary.summary(r, m, realized=None) == commentary.summary(r, m)
    assert commentary.realized_lines(None) == ()


def test_a_tape_never_recorded_is_not_worded_as_zero_realized(sample_map):
    bars, m, r = sample_map
    end = int(bars.end_ms)
    never = commentary.realized_lines(_tape(bars, events=[], venues=("bybit",), covered=()))
    assert never == ("Realized in the last 24 h: no tape recorded for BTC (the recorder did not run for it in this "
                     "window), so nothing is known about it.",)
    # spans of another symbol or ended before the window do not count
    elsewhere = [Coverage("bybit", "ETHUSDT", end - DAY_MS, end), Coverage("bybit", "BTCUSDT", end - 3 * DAY_MS,
                                                                             end - DAY_MS)]
    assert commentary.realized_lines(_tape(bars, events=[], venues=("bybit",), covered=elsewhere)) == never
    quiet = commentary.realized_lines(_tape(bars, events=[], venues=("bybit",)))
    assert quiet == ("Realized in the last 24 h: $0 of longs and $0 of shorts: the tape was recording and no "
                     "liquidation came in.", "Feeds: Bybit complete.")
    assert "$0" not in " ".join(never) and "no tape recorded" not in " ".join(quiet)


def test_venues_not_recorded_or_recorded_for_part_of_the_window_are_named(sample_map):
    bars, m, r = sample_map
    end = int(bars.end_ms)
    tape = _tape(bars, events=[event("bybit", end - HOUR, "long", m.price * 0.99, 2e6)],
                 covered=[Coverage("bybit", "BTCUSDT", end - 10 * HOUR, end),
                          Coverage("binance", "BTCUSDT", end - 2 * DAY_MS, end)],
                 gaps=[Gap("binance", None, end - 5 * HOUR, end - 4 * HOUR, "reconnect")])
    assert [tape.recorded(v) for v in tape.venues] == ["partial", "partial", "none"]
    assert tape.recorded() == "partial" and tape.recorded_ms("binance") == DAY_MS - HOUR
    assert commentary.realized_lines(tape) == (
        "Realized in the last 24 h: $2M of longs and $0 of shorts.",
        "Feeds: Bybit complete; Binance sampled (a lower bound); OKX not recorded.",
        "Recorded for part of the window only: Bybit 10.0 h of 24 h (totals are lower bounds).",
        "Gaps in the window: Binance 60 min (events then may be missing).",
    )
    doc = tape.to_json()
    assert doc["recorded"] == "partial"
    assert doc["venues"]["okx"] == {"coverage": "sampled", "recorded": "none", "recorded_minutes": 0.0,
                                    "long_usd": 0.0, "short_usd": 0.0, "events": 0, "gap_minutes": 0.0}
    assert doc["venues"]["bybit"]["recorded_minutes"] == 600.0
    assert doc["venues"]["binance"]["recorded_minutes"] == 1380.0
    never = _tape(bars, events=[], covered=()).to_json()
    quiet = _tape(bars, events=[]).to_json()
    assert never["recorded"] == "none" and quiet["recorded"] == "full"
    assert {v["recorded"] for v in never["venues"].values()} == {"none"}


# -- reading the tape ------------------------------------------------------------------------------

async def test_the_tape_is_read_hour_by_hour_and_merged_beyond_the_cap(sample_bars):
    evs = synthetic_events(sample_bars, DAY_MS, per_bar=3)
    end = int(sample_bars.end_ms)
    reader = FakeTape(evs)
    full = await fetch_realized(reader, "BTCUSDT", ("bybit", "binance", "okx"), end)
    assert reader.calls == 24 and len(full.events) == len(evs) and not full.merged
    # a burst: 2,000 liquidations within two minutes and 0.01% of price
    burst = evs + [event("bybit", end - HOUR + 60 * k, "long", 60_000.0 + (k % 5), 1e4, key=f"b{k}") for k in range(2000)]
    full = await fetch_realized(FakeTape(burst), "BTCUSDT", ("bybit", "binance", "okx"), end)
    capped = await fetch_realized(FakeTape(burst), "BTCUSDT", ("bybit", "binance", "okx"), end,
                                  RealizedParams(max_events=1000))
    assert capped.merged and len(capped.events) < len(evs) + 10
    assert capped.long_usd == pytest.approx(full.long_usd) and capped.short_usd == pytest.approx(full.short_usd)
    assert len(compact(list(capped.events))) == len(capped.events)  # merging again changes nothing


async def test_unusable_events_other_symbols_and_unknown_venues_are_left_out(sample_bars):
    end = int(sample_bars.end_ms)
    good = event("bybit", end - HOUR, "long", 60_000.0, 1e6)
    bad = event("bybit", end - HOUR, "long", 60_000.0, 1e6, key="nan")
    bad = type(bad)(**{**{f: getattr(bad, f) for f in bad.__slots__}, "usd": float("nan")})
    other = event("bybit", end - HOUR, "short", 3_000.0, 1e6, symbol="ETHUSDT")
    tape = await fetch_realized(FakeTape([good, bad, other]), "BTCUSDT", ("bybit", "sample", "bybit"), end)
    assert tape.venues == ("bybit",) and tape.events == (good,)
    assert tape.notes == ("tape: 1 unusable event(s) left out",)
    none = await fetch_realized(FakeTape([good]), "BTCUSDT", ("sample",), end)
    assert none.venues == () and none.empty


# -- the report service ----------------------------------------------------------------------------

async def test_the_report_carries_the_tape_into_chart_text_and_json(sample_bars):
    reader = FakeTape(synthetic_events(sample_bars, DAY_MS, venues=("binance",)))
    svc = ReportService({"binance": SampleSource()}, tape=reader)
    rep = await svc.report("BTC", "7d")
    assert rep.realized is not None and rep.realized.venues == ("binance",) and not rep.realized.empty
    assert "Realized in the last 24 h:" in rep.summary and "Binance sampled" in rep.summary
    assert rep.to_json()["realized"]["venues"]["binance"]["coverage"] == "sampled"
    plain = await ReportService({"binance": SampleSource()}).report("BTC", "7d")
    assert rep.png != plain.png and "realized" not in plain.to_json()
    again = await svc.report("BTC", "7d")
    assert again is rep and svc.computations == 1 and reader.calls == 24  # cached with the report, TTL as before


@pytest.mark.parametrize("fault, note", [
    (SourceError("tape", "db", "database is locked"), "tape unavailable (database is locked)"),
    (RuntimeError("postgresql://user:secret@host/db refused"), "tape unavailable (RuntimeError)"),
])
async def test_a_failing_tape_is_a_note_never_a_failed_report(fault, note):
    svc = ReportService({"binance": SampleSource()}, tape=FakeTape(fail=fault))
    rep = await svc.report("BTC", "1d")
    assert rep.realized is None and any(note in n for n in rep.map.notes)
    assert "secret" not in rep.summary and "Realized in the last" not in rep.summary


async def test_a_slow_tape_times_out_into_a_note():
    svc = ReportService({"binance": SampleSource()}, tape=FakeTape(delay=5.0),
                        tape_params=RealizedParams(timeout_s=0.05))
    rep = await asyncio.wait_for(svc.report("BTC", "1d"), 10)
    assert rep.realized is None and any("tape: no answer within 0.05 s" in n for n in rep.map.notes)


async def test_the_service_heatmap_overlays_the_tape(sample_bars):
    svc = ReportService({"binance": SampleSource()}, tape=FakeTape(synthetic_events(sample_bars, DAY_MS)))
    png, states, _ = await svc.heatmap("BTC", "1d")
    plain, _, _ = await ReportService({"binance": SampleSource()}).heatmap("BTC", "1d")
    assert png != plain
