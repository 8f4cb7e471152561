"""The side-by-side picture: the estimated map above, the measured map below, on one axis.

X is the distance from each map's own price in percent (longs left, shorts right), Y the share of
that map's notional within the compared range per bin, so the two shapes are comparable whatever
the totals (the measured map is a sample; its coverage is in the header and footer). The naive
baseline is drawn as an outline over the estimate. Labels say which panel is measured and which
estimated. Object API only (``Figure`` + Agg), sized like :mod:`analysis.chart`.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from .. import numbers
from ..chart import _venue_label, fit_row, share_text, theme
from ..errors import InputError
from ..liqmap import LiquidationMap
from .compare import Comparison, SideGrid

__all__ = ["render_compare"]


def _shares(g: SideGrid) -> tuple[np.ndarray, np.ndarray]:
    tot = g.in_range
    return (g.long / tot, g.short / tot) if tot > 0 else (g.long * 0, g.short * 0)


def _panel(ax, g: SideGrid, step: float, th, *, outline: SideGrid | None = None, outline_color: str = "") -> float:
    n = g.long.size
    lx = -(np.arange(n) + 0.5) * step * 100
    sx = (np.arange(n) + 0.5) * step * 100
    w = step * 100 * 0.86
    ls, ss = _shares(g)
    ax.bar(lx, ls * 100, width=w, color=th.long_curve, zorder=3, linewidth=0)
    ax.bar(sx, ss * 100, width=w, color=th.short_curve, zorder=3, linewidth=0)
    top = float(max(ls.max(initial=0), ss.max(initial=0))) * 100
    if outline is not None:
        ol, os_ = _shares(outline)
        x = np.concatenate([lx[::-1], sx])
        y = np.concatenate([ol[::-1], os_]) * 100
        ax.step(x, y, where="mid", color=outline_color, lw=1.3, ls=(0, (3, 2)), zorder=4)
        top = max(top, float(y.max(initial=0)))
    ax.axvline(0, color=th.price, lw=1.1, ls=(0, (4, 3)), alpha=0.8, zorder=5)
    ax.set_facecolor(th.bg)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.tick_params(colors=th.muted, labelsize=10, length=0, pad=3)
    ax.grid(axis="y", color=th.grid, lw=0.8, zorder=0)
    ax.set_axisbelow(True)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=3, steps=[1, 2, 2.5, 5, 10]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}%"))
    return top


def render_compare(estimated: LiquidationMap, measured: LiquidationMap, cmp: Comparison, *, theme_name: str = "dark",
                   size_px: tuple[int, int] = (1280, 860)) -> bytes:
    """The comparison chart as PNG bytes."""
    if measured.kind != "measured":
        raise InputError("the lower panel must be a measured map")
    th = theme(theme_name)
    w_px, h_px = (int(v) for v in size_px)
    if not (320 <= w_px <= 3840 and 240 <= h_px <= 2160):
        raise InputError(f"size_px {w_px}x{h_px} is out of range")
    dpi = w_px / 8.0
    fig = Figure(figsize=((w_px + 0.01) / dpi, (h_px + 0.01) / dpi), dpi=dpi, facecolor=th.bg)
    FigureCanvasAgg(fig)
    h_in = h_px / dpi
    top, bottom, gap = 1 - 1.05 / h_in, 0.95 / h_in, 0.42 / h_in
    height = (top - bottom - gap) / 2
    ax_e = fig.add_axes((0.075, bottom + height + gap, 0.9, height))
    ax_m = fig.add_axes((0.075, bottom, 0.9, height), sharex=ax_e)
    p = cmp.params
    g = cmp.grids
    y1 = _panel(ax_e, g["estimated"], p.step_pct, th, outline=g["naive"], outline_color=th.muted)
    y2 = _panel(ax_m, g["measured"], p.step_pct, th)
    ymax = max(y1, y2, 1e-9) * 1.25
    for ax in (ax_e, ax_m):
        ax.set_ylim(0, ymax)
        ax.set_xlim(-p.range_pct * 100, p.range_pct * 100)
    ax_e.tick_params(labelbottom=False)
    ax_m.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:+g}%" if v else "price"))
    venues = " + ".join(_venue_label(v) for v in estimated.venues)
    cov = measured.params.get("coverage")
    cov_s = share_text(cov) if isinstance(cov, (int, float)) else "unknown"
    n = measured.params.get("positions_on_map", 0)
    label = dict(ha="left", va="bottom", fontsize=10, fontweight="bold", color=th.text, zorder=7, parse_math=False)
    _fit(fig.text(0.075, bottom + 2 * height + gap + 0.05 / h_in,
                  f"ESTIMATED · model from {venues} {estimated.window} OI flow · dashed: naive baseline", **label), 0.99)
    _fit(fig.text(0.075, bottom + height + 0.05 / h_in,
                  f"MEASURED · {n:,} tracked Hyperliquid positions at their real liquidation prices · "
                  f"coverage {cov_s} of OI", **label), 0.99)
    for ax in (ax_e, ax_m):
        ax.text(0.006, 0.96, "◀ longs", transform=ax.transAxes, ha="left", va="top", fontsize=9,
                color=th.long_curve, fontweight="bold", zorder=7)
        ax.text(0.994, 0.96, "shorts ▶", transform=ax.transAxes, ha="right", va="top", fontsize=9,
                color=th.short_curve, fontweight="bold", zorder=7)
    ax_m.set_xlabel("distance from price", color=th.muted, fontsize=9)
    fig.text(0.012, 0.5, f"share of each map's notional within ±{p.range_pct:.0%}, per {p.step_pct * 100:g}% bin",
             rotation=90, ha="left", va="center", fontsize=8.5, color=th.muted)
    e2, n2 = cmp.estimated.bands.get("2%", {}), cmp.naive.bands.get("2%", {})
    fit_row(
        fig.text(0.012, 1 - 0.12 / h_in, f"{measured.symbol}: estimated ({venues}) vs measured (Hyperliquid)", ha="left", va="top",
                 fontsize=15, fontweight="bold", color=th.text, parse_math=False, gid="title"),
        fig.text(0.988, 1 - 0.12 / h_in, f"price {numbers.price(measured.price)}", ha="right", va="top",
                 fontsize=11, fontweight="bold", color=th.text, parse_math=False, gid="title"),
    )
    _fit(fig.text(0.012, 1 - 0.5 / h_in,
             f"captured within ±2%: estimate {_p(e2.get('captured'))}, naive {_p(n2.get('captured'))} · "
             f"Spearman per bin: estimate {_r(cmp.estimated.spearman['both'])}, naive {_r(cmp.naive.spearman['both'])}",
             ha="left", va="top", fontsize=9.5, color=th.muted, parse_math=False, gid="subtitle"), 0.99)
    _fit(fig.text(0.012, 0.1 / h_in, "Measured: a sample of real positions, not the whole market · estimated: "
                  "a model, not positions · method: docs/methodology.md", ha="left", va="bottom", fontsize=8.5,
                  color=th.muted, parse_math=False, gid="footer"), 0.99)
    buf = BytesIO()
    fig.canvas.print_png(buf)
    return buf.getvalue()


def _fit(text, right: float) -> None:
    """Shrink ``text`` until it ends left of ``right`` (a figure fraction)."""
    fig = text.get_figure()
    renderer = fig.canvas.get_renderer()
    limit = right * fig.bbox.width
    for _ in range(40):
        if text.get_window_extent(renderer).x1 <= limit or text.get_fontsize() <= 5:
            return
        text.set_fontsize(text.get_fontsize() * 0.95)


def _p(x: object) -> str:
    return f"{100 * float(x):.0f}%" if isinstance(x, (int, float)) else "n/a"


def _r(x: object) -> str:
    return f"{float(x):+.2f}" if isinstance(x, (int, float)) else "n/a"
