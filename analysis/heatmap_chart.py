"""The liquidation heatmap chart: a PNG of :class:`~analysis.heatmap.HeatmapStates`.

Time runs along x, price along y; a cell's colour is the estimated liquidation notional resting
in that price row at the end of that column (power colour scale, colour bar in USD). The price path
is drawn over it, the current price marked, and the largest bands still active at the end are
labelled with their price and amount. A band ends where price swept it, because the states do.

Like :mod:`analysis.chart`: matplotlib's ``Figure`` + Agg only (no pyplot), 8 inches wide with the
dpi following the pixel width, the same themes, numbers formatted by :mod:`analysis.numbers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap, PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

from . import numbers
from .chart import _THEME, THEMES, Theme, _fit_row, _fmt_width, _merge_factor, _title_venues, _when, png_bytes
from .errors import DataError, InputError
from .heatmap import HeatmapStates

if TYPE_CHECKING:
    from .tape.realized import RealizedTape

__all__ = ["HeatmapParams", "render_heatmap", "build_heatmap_figure", "display_rows", "Rows"]

DAY_MS = 86_400_000


@dataclass(frozen=True)
class HeatmapParams:
    """Layout choices.

    rows_max
        Price bins are merged (by a whole factor) until at most this many rows span the window.
    pad_pct / min_pad_pct / max_range_pct
        The price window is the path's range widened by ``pad_pct`` of it on each side (at least
        ``min_pad_pct`` of the price), and at most ``max_range_pct`` of the price either side.
    gamma
        Exponent of the power colour scale (above 1 keeps the faint levels dark so bands stand out).
    clip_quantile
        The top of the colour scale is this quantile of the non-empty cells (a few huge cells
        would otherwise leave everything else dark).
    labels
        How many of the largest bands still active at the end are labelled.
    """

    rows_max: int = 100
    pad_pct: float = 0.45
    min_pad_pct: float = 0.015
    max_range_pct: float = 0.30
    gamma: float = 1.2
    clip_quantile: float = 0.995
    labels: int = 4
    width_in: float = 8.0


PARAMS = HeatmapParams()

_CMAPS = {  # from the background up: faint bands stay dark, the largest glow
    "dark": ("#12151c", "#2b1a4f", "#4b2a8c", "#1f78b4", "#22b59a", "#9ee04a", "#ffe53b"),
    "light": ("#ffffff", "#fff1bf", "#fdd26e", "#f89b3a", "#e4572e", "#b5193b", "#5c0f4a"),
}


@dataclass(frozen=True, eq=False)
class Rows:
    """The cells to draw: ``z`` (columns, rows) of USD; row ``i`` covers ``lo + i*width`` up."""

    lo: float
    width: float
    z: np.ndarray

    @property
    def edges(self) -> np.ndarray:
        return self.lo + self.width * np.arange(self.z.shape[1] + 1)

    @property
    def centers(self) -> np.ndarray:
        return self.lo + self.width * (np.arange(self.z.shape[1]) + 0.5)


def _validate(s: HeatmapStates) -> None:
    if not (math.isfinite(s.price) and s.price > 0):
        raise DataError(f"cannot chart {s.symbol}: current price {s.price!r} is not a positive number")
    want = (len(s.venues), s.times.size - 1, s.n_bins)
    if s.long.shape != want or s.short.shape != want or s.close.shape != (want[1],):
        raise DataError(f"cannot chart {s.symbol}: state arrays have shape {s.long.shape}/{s.short.shape}, "
                        f"expected {want} (venues, columns, bins)")
    for arr in (s.long, s.short):
        if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 0):
            raise DataError(f"cannot chart {s.symbol}: notional has NaN, infinite or negative values")


def price_window(s: HeatmapStates, params: HeatmapParams = PARAMS) -> tuple[float, float]:
    """``(lo, hi)`` of the price axis: the path's range plus a margin, capped around the price."""
    lo, hi = float(min(s.low.min(), s.price)), float(max(s.high.max(), s.price))
    pad = max((hi - lo) * params.pad_pct, s.price * params.min_pad_pct)
    cap_lo, cap_hi = s.price * (1 - params.max_range_pct), s.price * (1 + params.max_range_pct)
    return max(lo - pad, cap_lo), min(hi + pad, cap_hi)


def display_rows(s: HeatmapStates, lo: float, hi: float, rows_max: int = PARAMS.rows_max) -> Rows:
    """Sum the bins whose centers lie in ``[lo, hi)`` into at most about ``rows_max`` rows."""
    width = s.bin_width * _merge_factor((hi - lo) / s.bin_width, rows_max)
    start = math.floor(lo / width) * width
    n = max(1, int(math.ceil((hi - start) / width - 1e-9)))
    centers = s.centers
    idx = np.floor((centers - start) / width).astype(np.int64)
    keep = (centers >= lo) & (centers < hi) & (idx >= 0) & (idx < n)
    z = np.zeros((s.n_columns, n))
    if np.any(keep):
        np.add.at(z.T, idx[keep], s.total()[:, keep].T)
    return Rows(start, width, z)


def _dates(ms: np.ndarray) -> np.ndarray:
    return np.asarray(ms, dtype=float) / DAY_MS  # matplotlib's default date epoch is 1970-01-01


def _time_axis(ax: Axes, t0: float, t1: float) -> None:
    span_h = (t1 - t0) / 3_600_000
    if span_h <= 36:
        step_h, fmt = next((h for h in (1, 2, 3, 4, 6, 12) if span_h / h <= 7), 12), "%H:%M"
    else:
        step_h, fmt = next((d * 24 for d in (1, 2, 3, 5, 7, 14) if span_h / (d * 24) <= 6), 14 * 24), "%b %d"
    step = step_h * 3_600_000
    ticks = np.arange(math.ceil(t0 / step) * step, t1 + 1, step)
    ax.xaxis.set_major_locator(FixedLocator(_dates(ticks)))
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda v, _p: datetime.fromtimestamp(v * 86_400, tz=timezone.utc).strftime(fmt)))


_LABEL_DX = (-8, -70, -140, -210)  # points left of the last column
_LABEL_DY = (-14, 14, -26, 26)  # points down/up, for bands at the edges


def _label_bands(fig: Figure, ax: Axes, s: HeatmapStates, rows: Rows, th: Theme, params: HeatmapParams,
                 placed: list) -> int:
    """Label the largest rows still active in the last column, largest first, without overlaps.

    A label sits at the right edge, on its band; when that would cover something already placed
    (another label, the price label, the recent price path) it moves left along the band, a leader
    line keeping it on the band's end.
    """
    last = rows.z[-1]
    if not np.any(last > 0):
        return 0
    renderer = fig.canvas.get_renderer()
    axbox = ax.get_window_extent(renderer)
    x = _dates(np.array([s.times[-1]]))[0]
    long_amt, short_amt = s.long.sum(axis=0)[-1], s.short.sum(axis=0)[-1]
    done, labelled = 0, []
    order = [int(i) for i in np.argsort(-last, kind="stable")]
    # the largest band of each side first (a trader reads both sides), then the rest by size
    below = rows.centers < s.price
    firsts = [next((i for i in order if below[i] == side), None) for side in (True, False)]
    firsts = sorted((i for i in firsts if i is not None), key=lambda i: -last[i])
    for i in firsts + [i for i in order if i not in firsts]:
        if done >= params.labels:
            break
        if last[i] <= 0 or last[i] < 0.15 * last.max():
            continue
        if any(abs(int(i) - j) <= 2 for j in labelled):  # one label per band, not per row
            continue
        y = float(rows.centers[i])
        long_side = y < s.price
        # the leader ends on the visible part of the row: an edge row may be partly off the axis
        y0, y1 = ax.get_ylim()
        vis = (max(float(rows.edges[i]), y0), min(float(rows.edges[i + 1]), y1))
        if vis[0] >= vis[1]:
            continue
        y_at = (vis[0] + vis[1]) / 2
        color = th.long_curve if long_side else th.short_curve
        sel = (s.centers >= rows.edges[i]) & (s.centers < rows.edges[i + 1])
        amount = float((long_amt if long_side else short_amt)[sel].sum())
        if amount <= 0:
            continue
        # beside the band first; a band at the top or bottom edge gets its label nudged inside,
        # the leader line still ending on the band
        for dx, dy in [(dx, 0) for dx in _LABEL_DX] + [(dx, dy) for dy in _LABEL_DY for dx in _LABEL_DX]:
            t = ax.annotate(f"{numbers.price(y)} · {numbers.usd(amount)}", xy=(x, y_at), xytext=(dx, dy),
                            textcoords="offset points", ha="right", va="center", fontsize=9.5, fontweight="bold",
                            color=th.text, zorder=8, annotation_clip=False, gid="band-label", parse_math=False,
                            bbox=dict(boxstyle="round,pad=0.25", fc=th.label_bg, ec=color, lw=1.0, alpha=0.92),
                            arrowprops=dict(arrowstyle="-", color=color, lw=1.2, shrinkA=0, shrinkB=0))
            raw = t.get_window_extent(renderer)
            box = raw.expanded(1.02, 1.5)  # the margin keeps labels apart; inside the axis is checked unpadded
            if raw.y0 >= axbox.y0 and raw.y1 <= axbox.y1 and not any(box.overlaps(p) for p in placed):
                break
            t.remove()
            t = None
        if t is None:
            continue
        placed.append(box)
        labelled.append(int(i))
        done += 1
    return done


def _path_boxes(ax: Axes, px: np.ndarray, py: np.ndarray, renderer) -> list:
    """Display boxes around the price path in short runs (obstacles for the band labels)."""
    from matplotlib.transforms import Bbox

    pts = ax.transData.transform(np.column_stack([px, py]))
    pad = 4.0
    out = []
    for k in range(0, len(pts), 4):
        chunk = pts[k : k + 5]
        out.append(Bbox.from_extents(chunk[:, 0].min() - pad, chunk[:, 1].min() - pad,
                                     chunk[:, 0].max() + pad, chunk[:, 1].max() + pad))
    return out


def _span(tape: RealizedTape) -> str:
    h = (tape.end_ms - tape.start_ms) / 3_600_000
    return f"{h:g}h" if h <= 48 else f"{h / 24:g}d"


def realized_overlay(fig: Figure, ax: Axes, s: HeatmapStates, rows: Rows, tape: RealizedTape, th: Theme) -> int:
    """The tape's liquidations at their time and price: one dot per (column, price row, side) with
    the cell's USD (area proportional to it), in the side colours, with a legend entry. Returns
    how many dots were drawn (0: no dots and no legend; a recorded tape without events gets a "$0" note)."""
    from matplotlib.lines import Line2D

    t, p, usd, is_long = tape.arrays()
    col = np.searchsorted(s.times, t, side="right") - 1
    row = np.floor((p - rows.lo) / rows.width).astype(np.int64)
    n_rows = rows.z.shape[1]
    ok = (col >= 0) & (col < s.n_columns) & (row >= 0) & (row < n_rows) & (usd > 0)
    note = tape.recorded_note()
    if not np.any(ok):
        if tape.empty:  # recorded, nothing happened: say so (a tape never recorded draws nothing at all)
            text = f"Realized {_span(tape)} (tape): $0, recording: none liquidated" + (f"\n{note}" if note else "")
            ax.text(0.01, 0.02, text, transform=ax.transAxes, ha="left", va="bottom", fontsize=8.5, color=th.text,
                    zorder=9, parse_math=False, gid="realized-legend",
                    bbox={"boxstyle": "round,pad=0.4", "facecolor": th.label_bg, "edgecolor": th.grid, "alpha": 0.9})
        return 0
    cell = (col[ok] * n_rows + row[ok]) * 2 + (~is_long[ok]).astype(np.int64)
    keys, inv = np.unique(cell, return_inverse=True)
    amount = np.bincount(inv, weights=usd[ok])
    when = np.bincount(inv, weights=usd[ok] * (t[ok] - t[ok].min())) / amount + t[ok].min()
    where = np.bincount(inv, weights=usd[ok] * p[ok]) / amount
    long_side = keys % 2 == 0
    size = 14.0 + 260.0 * amount / amount.max()  # points^2: the largest dot about 17 pt across
    for side, color in ((True, th.long_curve), (False, th.short_curve)):
        k = long_side == side
        if np.any(k):
            ax.scatter(_dates(when[k]), where[k], s=size[k], c=color, alpha=0.85, edgecolors=th.bg, linewidths=0.7,
                       zorder=6, gid="realized-dots")
    handles = [Line2D([], [], ls="none", marker="o", ms=7, mfc=c, mec=th.bg, label=lab)
               for c, lab in ((th.long_curve, "longs"), (th.short_curve, "shorts"))]
    leg = ax.legend(handles=handles, loc="lower left", fontsize=8.5, frameon=True, ncol=2, labelcolor=th.text,
                    title=f"Realized {_span(tape)} (tape), dot area ∝ USD, max {numbers.usd(float(amount.max()))}"
                          + (f"\n{note}" if note else ""),
                    title_fontsize=8.5, facecolor=th.label_bg, edgecolor=th.grid, framealpha=0.9,
                    handletextpad=0.2, columnspacing=0.8, borderpad=0.4)
    leg.get_title().set_color(th.text)
    leg.set_gid("realized-legend")
    leg.set_zorder(9)
    return int(keys.size)


def render_heatmap(states: HeatmapStates, *, theme: str = "dark", size_px: tuple[int, int] = (1280, 720),
                   params: HeatmapParams = PARAMS, realized: RealizedTape | None = None) -> bytes:
    """Draw the heatmap as a PNG and return its bytes (bad options: InputError; bad states: DataError).

    ``realized``, a tape recorded in the window, adds its events as dots at their time and price
    (see :func:`realized_overlay`; recorded without events: a "$0" note); without one, or with one
    never recorded in the window, the chart is unchanged.
    """
    fig = build_heatmap_figure(states, theme=theme, size_px=size_px, params=params)
    if realized is not None and not realized.not_recorded:
        ax = fig.axes[0]  # the heatmap's own axes, added first
        lo, hi = price_window(states, params)  # the window build_heatmap_figure drew
        realized_overlay(fig, ax, states, display_rows(states, lo, hi, params.rows_max), realized, _THEME[theme])
    return png_bytes(fig)


def build_heatmap_figure(s: HeatmapStates, *, theme: str = "dark", size_px: tuple[int, int] = (1280, 720),
                         params: HeatmapParams = PARAMS) -> Figure:
    """The heatmap as a ``Figure`` with an Agg canvas. Named artists carry a ``gid``: ``title``,
    ``subtitle``, ``footer``, ``price-label``, ``band-label``, ``colorbar``, ``empty-message``."""
    if theme not in THEMES:
        raise InputError(f"unknown theme {theme!r}; choose {' or '.join(THEMES)}")
    try:
        w_px, h_px = (int(v) for v in size_px)
    except (TypeError, ValueError):
        raise InputError(f"size_px must be (width, height) in pixels, got {size_px!r}") from None
    if not (320 <= w_px <= 3840 and 180 <= h_px <= 2160 and 0.75 <= w_px / h_px <= 3.0):
        raise InputError(f"size_px {w_px}x{h_px} is out of range (320-3840 x 180-2160, aspect 0.75-3)")
    _validate(s)
    th = _THEME[theme]
    lo, hi = price_window(s, params)
    rows = display_rows(s, lo, hi, params.rows_max)
    z = rows.z
    positive = z[z > 0]
    empty = positive.size == 0
    vmax = float(np.quantile(positive, params.clip_quantile)) if not empty else 1.0
    norm = PowerNorm(gamma=params.gamma, vmin=0.0, vmax=max(vmax, 1e-12), clip=True)
    cmap = LinearSegmentedColormap.from_list(f"heat-{theme}", _CMAPS[theme])

    dpi = w_px / params.width_in
    fig = Figure(figsize=((w_px + 0.01) / dpi, (h_px + 0.01) / dpi), dpi=dpi, facecolor=th.bg)
    FigureCanvasAgg(fig)
    h_in = h_px / dpi
    top, bottom = 1 - 0.98 / h_in, 0.62 / h_in
    ax = fig.add_axes((0.02, bottom, 0.86, top - bottom))
    ax.set_facecolor(th.bg)

    x = _dates(s.times)
    ax.pcolormesh(x, rows.edges, z.T, cmap=cmap, norm=norm, shading="flat", rasterized=True, zorder=1)
    # the price path: the close at each column's end, from the first open
    px = np.append(x[0], x[1:])
    py = np.append(s.open[0], s.close)
    stroke = [patheffects.withStroke(linewidth=3.6, foreground=th.bg)]
    ax.plot(px, py, color=th.price, lw=1.6, zorder=5, solid_joinstyle="round", path_effects=stroke)
    ax.axhline(s.price, color=th.price, lw=1.0, ls=(0, (4, 3)), alpha=0.8, zorder=4)
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(lo, hi)

    for sp in ax.spines.values():
        sp.set_visible(False)
    ax.yaxis.tick_right()
    ax.tick_params(colors=th.muted, labelsize=10.5, length=0, pad=4)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=7, steps=[1, 2, 2.5, 5, 10]))
    ticks = [t for t in ax.get_yticks() if lo <= t <= hi]
    ystep = float(np.min(np.diff(ticks))) if len(ticks) > 1 else (hi - lo)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: numbers.tick(v, ystep)))
    _time_axis(ax, float(s.times[0]), float(s.times[-1]))
    ax.grid(color=th.grid, lw=0.5, alpha=0.5, zorder=2)

    pl = ax.annotate(numbers.price(s.price), xy=(1.0, s.price), xycoords=("axes fraction", "data"),
                     xytext=(3, 0), textcoords="offset points", ha="left", va="center", fontsize=10.5,
                     fontweight="bold", color=th.bg, zorder=9, annotation_clip=False, gid="price-label",
                     bbox=dict(boxstyle="round,pad=0.3", fc=th.price, ec="none"))

    # header: title row, subtitle row with the colour bar at its right
    venues = _title_venues(s.venues)
    _fit_row(
        fig.text(0.012, 1 - 0.12 / h_in, f"{s.symbol} liquidation heatmap (estimated)", ha="left", va="top",
                 fontsize=15, fontweight="bold", color=th.text, gid="title", parse_math=False),
        fig.text(0.988, 1 - 0.12 / h_in, f"{venues} · {s.window}", ha="right", va="top", fontsize=11,
                 fontweight="bold", color=th.text, gid="title", parse_math=False),
    )
    fig.text(0.012, 1 - 0.47 / h_in, f"Price {numbers.price(s.price)}  ·  {_when(s.end_ms)}", ha="left",
             va="top", fontsize=9.5, color=th.muted, parse_math=False, gid="subtitle")
    cax = fig.add_axes((0.60, 1 - 0.66 / h_in, 0.30, 0.11 / h_in))
    cb = fig.colorbar(ax.collections[0], cax=cax, orientation="horizontal")
    cb.outline.set_visible(False)
    cax.set_gid("colorbar")
    cax.tick_params(colors=th.muted, labelsize=8.5, length=2, pad=2)
    if empty:
        cax.set_xticks([])
    else:
        cb.set_ticks([v for v in MaxNLocator(nbins=3, steps=[1, 2, 2.5, 5, 10]).tick_values(0.0, vmax)
                      if 0 <= v <= vmax * 0.93])  # the last one clear of the bar's end
        cax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: numbers.usd(v) if v > 0 else "0"))
        cax.set_xlim(0.0, vmax)
    fig.text(0.59, 1 - 0.605 / h_in, f"per {_fmt_width(rows.width)}", ha="right", va="center", fontsize=8.5,
             color=th.muted, parse_math=False)
    fig.text(0.012, 0.1 / h_in,
             "Estimated from open-interest flow — not actual positions. Bands end where price swept them. "
             "Method: docs/methodology.md", ha="left", va="bottom", fontsize=8, color=th.muted, parse_math=False,
             gid="footer")

    if empty:
        ax.text(0.5, 0.55, f"No estimated liquidation levels\nfor {s.symbol} in this {s.window or 'window'}",
                transform=ax.transAxes, ha="center", va="center", fontsize=13, color=th.text,
                fontweight="bold", zorder=9, linespacing=1.5, gid="empty-message",
                bbox=dict(boxstyle="round,pad=0.6", fc=th.label_bg, ec=th.grid, lw=1.0))
    else:
        renderer = fig.canvas.get_renderer()
        obstacles = [pl.get_window_extent(renderer).expanded(1.05, 1.3)] + _path_boxes(ax, px, py, renderer)
        _label_bands(fig, ax, s, rows, th, params, obstacles)
    return fig
