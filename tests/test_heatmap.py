"""Heatmap states (the map over time) and the heatmap chart."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from analysis import numbers
from analysis.errors import InputError
from analysis.heatmap import HeatmapStates, _columns, build_states, column_step, merge_states
from analysis.heatmap_chart import build_heatmap_figure, render_heatmap
from analysis.model import ModelParams, build_map, run_model

from reference_model import reference_levels
from test_model import HAND_ROWS, hand_params, make_bars

DAY = 86_400_000
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def week(sample_bars):
    return sample_bars.last(7 * DAY)


@pytest.fixture(scope="module")
def week_states(week):
    return build_states(week, window="7d")


def snapshot_on_states_grid(m, s: HeatmapStates) -> tuple[np.ndarray, np.ndarray]:
    """The snapshot's per-bin long/short placed on the states' (wider, same-width) grid."""
    assert s.bin_width == m.bin_width
    k = int(round((m.grid_lo - s.grid_lo) / s.bin_width))
    assert 0 <= k and k + m.n_bins <= s.n_bins
    out = []
    for side in (m.long_by_bin(), m.short_by_bin()):
        full = np.zeros(s.n_bins)
        full[k : k + m.n_bins] = side
        out.append(full)
    return out[0], out[1]


@pytest.mark.parametrize("days", [1, 7, 27])
def test_last_column_is_the_snapshot_map(sample_bars, days):
    bars = sample_bars.last(days * DAY)
    m = build_map(bars, window=f"{days}d")
    s = build_states(bars, window=f"{days}d")
    long, short = snapshot_on_states_grid(m, s)
    scale = max(long.max(), short.max())
    np.testing.assert_allclose(s.long[0, -1], long, rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(s.short[0, -1], short, rtol=1e-9, atol=1e-12 * scale)
    # empty bins of the snapshot are exactly empty in the last column
    assert np.all(s.long[0, -1][long == 0] == 0) and np.all(s.short[0, -1][short == 0] == 0)
    assert s.price == m.price and s.times[-1] == bars.end_ms


def brute_force(bars, params, s: HeatmapStates) -> tuple[np.ndarray, np.ndarray]:
    """Every column by the reference loop over the bars up to that column's last bar."""
    last = np.searchsorted(bars.time, s.times[1:], side="left") - 1
    long = np.zeros((s.n_columns, s.n_bins))
    short = np.zeros_like(long)
    for j, t in enumerate(last):
        active, _, _ = reference_levels(bars.slice(0, int(t) + 1), params)
        for lv in active:
            b = min(max(int(np.floor((lv["price"] - s.grid_lo) / s.bin_width)), 0), s.n_bins - 1)
            (long if lv["side"] == "long" else short)[j, b] += lv["notional"]
    return long, short


@pytest.mark.parametrize("step_bars", [1, 3])
def test_states_match_a_brute_force_loop_over_bars(sample_bars, step_bars):
    bars = sample_bars.slice(4000, 4060)
    params = ModelParams(levels_per_hour=12.0, min_bars=12)
    s = build_states(bars, params, step_ms=step_bars * bars.interval_ms)
    long, short = brute_force(bars, params, s)
    assert s.n_columns == (60 if step_bars == 1 else 20) or s.n_columns == 21
    scale = max(long.max(), short.max())
    np.testing.assert_allclose(s.long[0], long, rtol=1e-9, atol=1e-9 * scale)
    np.testing.assert_allclose(s.short[0], short, rtol=1e-9, atol=1e-9 * scale)


def states_by_full_bincount(bars, params, s: HeatmapStates) -> tuple[np.ndarray, np.ndarray]:
    """The states on ``s``'s grid by the first implementation: whole-array bincounts per side (the
    chunked ufunc.at version must give the very same bits)."""
    run = run_model(bars, params)
    n = len(run.bars)
    col, _, last = _columns(run.bars, s.step_ms)
    t_cols, n_bins, cells = s.n_columns, s.n_bins, s.n_columns * s.n_bins
    price = s.price
    lo_bound, hi_bound = price * (1 - params.grid_pct), price * (1 + params.grid_pct)
    log_end = run.log_c[last]
    growth = np.exp(np.diff(log_end))
    out = []
    for lv, t_sw in ((run.longs, run.t_long), (run.shorts, run.t_short)):
        js = col[lv.t0]
        je = np.where(t_sw < n, col[np.minimum(t_sw, n - 1)], t_cols)
        keep = (js < je) & (lv.price >= lo_bound) & (lv.price <= hi_bound)
        t0, p_, w, js, je = lv.t0[keep], lv.price[keep], lv.weight[keep], js[keep], je[keep]
        b = np.clip(np.floor((p_ - s.grid_lo) / s.bin_width), 0, n_bins - 1).astype(np.int64)
        ends = je < t_cols
        at_start = w * np.exp(log_end[js] - run.log_c[t0])
        at_end = w[ends] * np.exp(log_end[je[ends]] - run.log_c[t0[ends]])
        start_idx, end_idx = js * n_bins + b, je[ends] * n_bins + b[ends]
        diff = (np.bincount(start_idx, at_start, cells) - np.bincount(end_idx, at_end, cells)).reshape(t_cols, n_bins)
        count = np.bincount(start_idx, minlength=cells) - np.bincount(end_idx, minlength=cells)
        state, side = np.zeros(n_bins), np.empty((t_cols, n_bins))
        for j in range(t_cols):
            if j:
                state *= growth[j - 1]
            state += diff[j]
            side[j] = state
        side[np.cumsum(count.reshape(t_cols, n_bins), axis=0) == 0] = 0.0
        out.append(np.maximum(side, 0.0))
    return out[0], out[1]


@pytest.mark.parametrize("days,step_ms,max_cells", [(1, None, 1_000_000), (7, None, 1_000_000),
                                                     (27, None, 1_000_000), (7, 1_800_000, 30_000)])
def test_states_are_bit_identical_to_whole_array_bincounts(sample_bars, days, step_ms, max_cells):
    bars = sample_bars.last(days * DAY)
    params = ModelParams()
    s = build_states(bars, params, step_ms=step_ms, max_cells=max_cells)
    long, short = states_by_full_bincount(bars, params, s)
    assert s.long[0].any() and s.short[0].any()
    assert np.array_equal(s.long[0], long) and np.array_equal(s.short[0], short)


def test_hand_example_states_bar_by_bar():
    s = build_states(make_bars(HAND_ROWS), hand_params(), step_ms=300_000)
    centers = s.centers
    long_at = lambda j: {float(c): round(float(v), 9) for c, v in zip(centers, s.long[0, j]) if v}  # noqa: E731
    short_at = lambda j: {float(c): round(float(v), 9) for c, v in zip(centers, s.short[0, j]) if v}  # noqa: E731
    assert long_at(0) == {} and short_at(0) == {}
    assert long_at(1) == {90.5: 100.0} and short_at(1) == {110.5: 100.0}
    assert long_at(2) == {90.5: round(100 * 11 / 12, 9)} and short_at(2) == {110.5: round(100 * 11 / 12, 9)}
    # t3: the 110 short is swept (absent from then on), the new levels appear
    assert 110.5 not in short_at(3) and 110.5 not in short_at(4)
    assert 95.5 in long_at(3) and 116.5 in short_at(3)
    # t4: the 95.4 long is swept; the 90 long survives
    assert long_at(4) == {90.5: round(100 * 11 / 12, 9)}


def test_a_swept_band_is_absent_after_its_sweep_column(sample_bars):
    day = sample_bars.last(DAY)
    s = build_states(day, step_ms=day.interval_ms)  # one column per bar
    assert s.n_columns == len(day)
    for j in range(s.n_columns):
        # every level at or beyond the bar's close is gone by its end: older ones were swept by
        # the range (which contains the close), new ones in their own bar
        assert not np.any(s.long[0, j][s.centers - s.bin_width / 2 >= s.close[j]]), j
        assert not np.any(s.short[0, j][s.centers + s.bin_width / 2 <= s.close[j]]), j
    # and not vacuous: bands that were there one bar got swept the next
    swept = (s.long[0, :-1] > 0) & (s.long[0, 1:] == 0)
    assert swept.sum() > 10


def test_column_steps_and_the_column_cap(week, sample_bars):
    assert column_step(300_000, DAY) == 300_000
    assert column_step(300_000, 7 * DAY) == 3_600_000
    assert column_step(300_000, 30 * DAY) == 4 * 3_600_000
    month = build_states(sample_bars)
    assert month.n_columns <= 300 and month.long.shape[1] == month.n_columns
    with pytest.raises(InputError, match="max_columns"):
        build_states(week, step_ms=300_000)  # 2016 columns
    with pytest.raises(InputError, match="multiple"):
        build_states(week, step_ms=100_000)


def test_memory_is_bounded_by_max_cells(week):
    s = build_states(week, max_cells=20_000)
    assert s.n_columns * s.n_bins <= 20_000
    full = build_states(week)
    factor = s.bin_width / full.bin_width
    assert factor == int(factor) and factor > 1
    # the notional is the same, on coarser bins
    assert s.long[0, -1].sum() == pytest.approx(full.long[0, -1].sum(), rel=1e-9)


def test_merge_stacks_venues_on_one_grid(week):
    a = build_states(week, window="7d")
    b = build_states(week.slice(len(week) // 2), window="7d", step_ms=a.step_ms)  # a venue starting later
    m = merge_states([a, b])
    assert m.long.shape == (2, a.n_columns, m.n_bins) and m.venues == a.venues + b.venues
    assert m.long[0].sum() == pytest.approx(a.long.sum(), rel=1e-9)
    assert m.long[1].sum() == pytest.approx(b.long.sum(), rel=1e-9)
    assert not m.long[1, : a.n_columns // 3].any()  # before the later venue starts it has nothing
    np.testing.assert_allclose(m.long[1, -1].sum(), b.long[0, -1].sum(), rtol=1e-9)


def merge_by_add_at(states: list[HeatmapStates], m: HeatmapStates) -> tuple[np.ndarray, np.ndarray]:
    """The merge onto ``m``'s grid by the first implementation: ``np.add.at`` of every venue's bins."""
    longs, shorts = [], []
    for s in states:
        k = np.searchsorted(s.times[1:], m.times[1:], side="right") - 1
        idx = np.clip(np.floor((s.centers - m.grid_lo) / m.bin_width).astype(np.int64), 0, m.n_bins - 1)
        for src, dst in ((s.long, longs), (s.short, shorts)):
            out = np.zeros((src.shape[0], m.n_columns, m.n_bins))
            picked = np.where((k >= 0)[None, :, None], src[:, np.maximum(k, 0)], 0.0)
            np.add.at(out, (slice(None), slice(None), idx), picked)
            dst.append(out)
    return np.concatenate(longs), np.concatenate(shorts)


def test_merge_is_bit_identical_to_add_at(week):
    a = build_states(week, window="7d")
    later = build_states(week.slice(len(week) // 2), window="7d", step_ms=a.step_ms)
    coarse = build_states(week, ModelParams(bin_pct=0.0025), window="7d", step_ms=a.step_ms)
    fine = build_states(week, ModelParams(bin_pct=0.0003), window="7d", step_ms=a.step_ms)
    assert len({a.bin_width, coarse.bin_width, fine.bin_width}) == 3  # runs of 1, 2 and 10 bins merge
    for combo in ([a, later], [a, coarse], [fine, a, later, coarse], [later, fine]):
        m = merge_states(combo)
        long, short = merge_by_add_at(combo, m)
        assert m.long.any() and np.array_equal(m.long, long) and np.array_equal(m.short, short)


# -- the chart -------------------------------------------------------------------------------------

@pytest.mark.parametrize("theme", ["dark", "light"])
def test_chart_is_a_png_of_the_requested_size(week_states, theme):
    png = render_heatmap(week_states, theme=theme, size_px=(800, 450))
    assert png.startswith(PNG)
    im = Image.open(BytesIO(png))
    assert im.size == (800, 450)
    colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # a heatmap, not a blank frame


def test_chart_labels_bands_with_numbers_formatting(week_states):
    fig = build_heatmap_figure(week_states)
    labels = [a.get_text() for a in fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == "band-label")]
    assert 1 <= len(labels) <= 4
    for text in labels:
        price, amount = text.split(" · ")
        assert price.startswith("$") and amount.startswith("$")
        assert amount in {numbers.usd(v) for v in _row_amounts(week_states)}
    price_label = fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == "price-label")[0]
    assert price_label.get_text() == numbers.price(week_states.price)
    footer = fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == "footer")[0].get_text()
    assert "Estimated" in footer and "not actual positions" in footer


def _row_amounts(s: HeatmapStates) -> list[float]:
    """Every amount a band label could show: a side's last-column notional summed over 1..10 bins."""
    out = []
    for side in (s.long[0, -1], s.short[0, -1]):
        c = np.concatenate([[0.0], np.cumsum(side)])
        for f in (1, 2, 4, 5, 10):
            for i in range(0, len(side) + 1, 1):
                if i + f <= len(side):
                    out.append(float(c[i + f] - c[i]))
    return out


def test_labels_do_not_overlap(week_states):
    fig = build_heatmap_figure(week_states, size_px=(500, 281))
    r = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(r) for a in fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)()
                                                           in ("band-label", "price-label"))]
    assert len(boxes) >= 2
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_chart_of_empty_states_says_so(week_states, theme):
    from dataclasses import replace

    empty = replace(week_states, long=np.zeros_like(week_states.long), short=np.zeros_like(week_states.short))
    fig = build_heatmap_figure(empty, theme=theme)
    msg = fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == "empty-message")
    assert msg and "No estimated liquidation levels" in msg[0].get_text()
    assert render_heatmap(empty, theme=theme).startswith(PNG)


def test_chart_of_flat_prices_renders(week_states):
    from dataclasses import replace

    flat = replace(week_states, open=np.full(week_states.n_columns, week_states.price),
                   high=np.full(week_states.n_columns, week_states.price),
                   low=np.full(week_states.n_columns, week_states.price),
                   close=np.full(week_states.n_columns, week_states.price))
    assert render_heatmap(flat).startswith(PNG)


def test_bad_options_are_input_errors(week_states):
    with pytest.raises(InputError, match="theme"):
        render_heatmap(week_states, theme="neon")
    with pytest.raises(InputError, match="size_px"):
        render_heatmap(week_states, size_px=(100, 100))
