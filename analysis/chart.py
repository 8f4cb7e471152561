"""The liquidation-map chart: a CoinGlass-style PNG of a :class:`~analysis.liqmap.LiquidationMap`.

Price runs along the X axis. Bars show liquidation notional per price bin, stacked by leverage
tier (or by exchange); long liquidations sit left of the current price, short liquidations right
of it. Cumulative curves on a second Y axis grow from the price outwards. The major clusters of
the :class:`~analysis.metrics.Reading` are labelled.

Rendering uses matplotlib's object API only (``Figure`` + the Agg canvas into a ``BytesIO``): no
pyplot, no global state, so it is safe to call from worker threads. Sizes are chosen for Discord,
which shows embed images about 400-520 px wide: the figure is always 8 inches wide and its dpi
follows the requested pixel width, so text scales with the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from io import BytesIO
from typing import TYPE_CHECKING, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, MaxNLocator

from . import numbers
from .errors import DataError, InputError
from .liqmap import LiquidationMap
from .metrics import Reading
from .options import STACKS, THEMES

if TYPE_CHECKING:
    from .tape.realized import RealizedTape

__all__ = [
    "THEMES",
    "STACKS",
    "ChartParams",
    "Theme",
    "render",
    "build_figure",
    "display_range",
    "rebin",
    "Rebinned",
    "fmt_money",
    "fmt_price",
    "fmt_tick",
    "theme",
    "fit_row",
    "coverage_text",
    "share_text",
    "png_bytes",
    "PNG_COMPRESS_LEVEL",
]

# THEMES and STACKS live in analysis.options (light, for the CLI's --help) and are re-exported here.


@dataclass(frozen=True)
class ChartParams:
    """Layout choices, all in one place.

    range_pct / max_range_pct / min_range_pct
        Default half-width of the price window as a fraction of price, and the limits when it is
        widened to include significant clusters or narrowed to where the levels are.
    extent_share
        Narrowing keeps the distance that holds this share of all notional.
    bars_max
        Bins are merged until at most this many bars span the window (readable at embed size).
    max_venues
        Venue stacking shows at most this many groups; the smallest venues become "others".
    strip_in
        Height in inches of the realized-liquidations strip under the bars (only with a tape).
    width_in
        Figure width in inches; the dpi is ``width_px / width_in`` so fonts scale with the image.
    """

    range_pct: float = 0.12
    max_range_pct: float = 0.30
    min_range_pct: float = 0.02
    extent_share: float = 0.99
    bars_max: int = 240
    max_venues: int = 7
    width_in: float = 8.0
    strip_in: float = 0.62


PARAMS = ChartParams()

#: zlib level of the PNGs (PIL's default is 6). Level 1 encodes the same pixels about 14 ms faster
#: per 1280x720 chart for about 9% more bytes (measured: docs/benchmarks.md, "Chart render cost").
PNG_COMPRESS_LEVEL = 1


def png_bytes(fig: Figure) -> bytes:
    """Rasterize ``fig`` (an Agg canvas) as PNG bytes at :data:`PNG_COMPRESS_LEVEL`."""
    buf = BytesIO()
    fig.canvas.print_png(buf, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return buf.getvalue()


@dataclass(frozen=True)
class Theme:
    """Colours of one theme. Tier colours run from cool (low leverage) to hot (highest)."""

    bg: str
    grid: str
    text: str
    muted: str
    price: str
    long_curve: str
    short_curve: str
    tiers: tuple[str, ...]
    venues: tuple[str, ...]
    label_bg: str


_THEME: dict[str, Theme] = {
    "dark": Theme(
        bg="#12151c",
        grid="#272c38",
        text="#e8eaf0",
        muted="#8f97aa",
        price="#ffffff",
        long_curve="#ff5c7c",
        short_curve="#2fd67b",
        tiers=("#3b6fd8", "#27b3c4", "#f2d046", "#f5902b", "#e8412f"),
        # Okabe-Ito: distinguishable with the common colour-vision deficiencies
        venues=("#e69f00", "#56b4e9", "#cc79a7", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#bbbbbb"),
        label_bg="#1d2230",
    ),
    "light": Theme(
        bg="#ffffff",
        grid="#e4e7ec",
        text="#151922",
        muted="#5f6777",
        price="#151922",
        long_curve="#d6204a",
        short_curve="#0f9d58",
        tiers=("#2f5fc4", "#1597a8", "#d9ae12", "#ec7a12", "#d12f1f"),
        venues=("#e69f00", "#56b4e9", "#cc79a7", "#009e73", "#c9b800", "#0072b2", "#d55e00", "#888888"),
        label_bg="#f2f4f7",
    ),
}

def theme(name: str) -> Theme:
    """The colours of theme ``name`` (InputError for an unknown one); other charts share them."""
    if name not in _THEME:
        raise InputError(f"unknown theme {name!r}; choose {' or '.join(THEMES)}")
    return _THEME[name]


def fit_row(left: Text, right: Text, gap_px: float = 12.0) -> None:
    """Shrink two texts sharing a row until they no longer touch (see :func:`_fit_row`)."""
    _fit_row(left, right, gap_px)


# Fixed colours per known venue so a venue keeps its colour from chart to chart.
_VENUE_ORDER = ("binance", "bybit", "okx", "hyperliquid", "bitget", "deribit", "gate")  # last colour: "others"
_VENUE_NAMES = {"binance": "Binance", "bybit": "Bybit", "okx": "OKX", "hyperliquid": "Hyperliquid",
                "bitget": "Bitget", "deribit": "Deribit", "gate": "Gate", "coinglass": "CoinGlass",
                "mexc": "MEXC", "kucoin": "KuCoin", "bingx": "BingX", "htx": "HTX", "others": "Others"}


# -- formatting ------------------------------------------------------------------------------------
# Every amount and price on the image reads as it does in the text: see analysis/numbers.py.

fmt_money = numbers.usd
fmt_price = numbers.price
fmt_tick = numbers.tick


def _strip(s: str) -> str:
    return s.rstrip("0").rstrip(".") if "." in s else s


def _sig_decimals(x: float, sig: int) -> int:
    return max(0, sig - 1 - int(math.floor(math.log10(abs(x))))) if x else 0


def _venue_label(v: str) -> str:
    return _VENUE_NAMES.get(v.lower(), v[:1].upper() + v[1:])


def _fmt_width(w: float) -> str:
    return f"${_strip(f'{w:,.{_sig_decimals(w, 3)}f}')}"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# -- data preparation (pure) -----------------------------------------------------------------------

def _validate_map(m: LiquidationMap) -> None:
    if not (math.isfinite(m.price) and m.price > 0):
        raise DataError(f"cannot chart {m.symbol}: current price {m.price!r} is not a positive number")
    if not (math.isfinite(m.bin_width) and m.bin_width > 0 and math.isfinite(m.grid_lo)):
        raise DataError(f"cannot chart {m.symbol}: bad price grid (bin width {m.bin_width!r})")
    want = (len(m.venues), m.n_bins, len(m.tiers))
    if m.long.shape != want or m.short.shape != want:
        raise DataError(f"cannot chart {m.symbol}: notional arrays have shape {m.long.shape}/{m.short.shape}, "
                        f"expected {want} (venues, bins, tiers)")
    for side, arr in (("long", m.long), ("short", m.short)):
        if arr.size and not np.all(np.isfinite(arr)):
            raise DataError(f"cannot chart {m.symbol}: {side} notional has NaN or infinite values")
        if arr.size and arr.min() < 0:
            raise DataError(f"cannot chart {m.symbol}: {side} notional has negative values")


def _extent(m: LiquidationMap, share: float) -> float:
    """Distance from price (fraction) within which ``share`` of all notional lies; 0 when empty."""
    amount = m.long_by_bin() + m.short_by_bin()
    total = amount.sum()
    if total <= 0:
        return 0.0
    dist = np.abs(m.centers / m.price - 1.0) + 0.5 * m.bin_width / m.price
    order = np.argsort(dist, kind="stable")
    cum = np.cumsum(amount[order])
    k = int(np.searchsorted(cum, share * total))
    return float(dist[order][min(k, order.size - 1)])


def display_range(m: LiquidationMap, reading: Reading | None = None, range_pct: float | None = None,
                  params: ChartParams = PARAMS) -> tuple[float, float]:
    """The price window to draw, ``(lo, hi)``, symmetric around the current price.

    ``range_pct`` (a fraction: 0.10 = +-10%) fixes it. Otherwise it starts at
    ``params.range_pct``, widens to include the significant clusters (up to ``max_range_pct``) and
    narrows to where the levels actually are (not below ``min_range_pct``).
    """
    p = m.price
    if range_pct is not None:
        if not (isinstance(range_pct, (int, float)) and math.isfinite(range_pct) and 0.001 <= range_pct <= 0.9):
            raise InputError(f"range_pct must be a fraction of price between 0.001 and 0.9 "
                             f"(0.10 = ±10%), got {range_pct!r}")
        r = float(range_pct)
    else:
        sig = [abs(c.distance_pct) / 100 for c in (reading.clusters if reading else ()) if c.significant]
        need = max(sig) * 1.08 + 0.005 if sig else 0.0
        r = min(max(params.range_pct, need), params.max_range_pct)
        ext = _extent(m, params.extent_share)
        if 0 < ext and ext * 1.15 < 0.75 * r:  # narrow only when the levels sit well inside
            r = max(params.min_range_pct, ext * 1.15, min(need, params.max_range_pct))
    return p * (1 - r), p * (1 + r)


@dataclass(frozen=True, eq=False)
class Rebinned:
    """Bars to draw: ``long``/``short`` have shape ``(groups, n)``; bar ``i`` covers
    ``[lo + i*width, lo + (i+1)*width)``. ``groups`` are tiers or venues."""

    lo: float
    width: float
    groups: tuple[str, ...]
    long: np.ndarray
    short: np.ndarray

    @property
    def n(self) -> int:
        return int(self.long.shape[1])

    @property
    def edges(self) -> np.ndarray:
        return self.lo + self.width * np.arange(self.n + 1)

    @property
    def centers(self) -> np.ndarray:
        return self.lo + self.width * (np.arange(self.n) + 0.5)


def _merge_factor(bins: float, bars_max: int) -> int:
    """The smallest 1/2/4/5 x 10^k number of native bins per bar giving at most ``bars_max`` bars."""
    k = 1
    while True:
        for f in (1, 2, 4, 5):
            if bins / (f * k) <= bars_max:
                return f * k
        k *= 10


def rebin(m: LiquidationMap, lo: float, hi: float, stack: str = "tier", bars_max: int = PARAMS.bars_max,
          max_venues: int = PARAMS.max_venues) -> Rebinned:
    """Sum the map's bins whose centers lie in ``[lo, hi)`` into at most about ``bars_max`` bars,
    grouped by tier (``stack="tier"``) or venue (``stack="venue"``).

    Bars are aligned to multiples of their width, which is a whole number of native bins. With
    more than ``max_venues`` venues, the largest ``max_venues - 1`` keep their own group and the
    rest are summed into ``"others"``.
    """
    if stack not in STACKS:
        raise InputError(f"unknown stack {stack!r}; choose {' or '.join(STACKS)}")
    if not hi > lo:
        raise InputError(f"empty price window {lo!r}..{hi!r}")
    width = m.bin_width * _merge_factor((hi - lo) / m.bin_width, bars_max)
    start = math.floor(lo / width) * width
    n = max(1, int(math.ceil((hi - start) / width - 1e-9)))
    if stack == "tier":
        groups, lg, sg = m.tiers, m.long.sum(axis=0), m.short.sum(axis=0)  # (bins, tiers)
    else:
        groups, lg, sg = m.venues, m.long.sum(axis=2).T, m.short.sum(axis=2).T  # (bins, venues)
        if len(groups) > max_venues:
            totals = lg.sum(axis=0) + sg.sum(axis=0)
            top = sorted(np.argsort(-totals, kind="stable")[: max_venues - 1])
            rest = np.setdiff1d(np.arange(len(groups)), top)
            groups = tuple(groups[i] for i in top) + ("others",)
            lg = np.column_stack([lg[:, top], lg[:, rest].sum(axis=1)])
            sg = np.column_stack([sg[:, top], sg[:, rest].sum(axis=1)])
    centers = m.centers
    idx = np.floor((centers - start) / width).astype(np.int64)
    keep = (centers >= lo) & (centers < hi) & (idx >= 0) & (idx < n)
    out_l = np.zeros((len(groups), n))
    out_s = np.zeros((len(groups), n))
    if np.any(keep):
        np.add.at(out_l.T, idx[keep], lg[keep])
        np.add.at(out_s.T, idx[keep], sg[keep])
    return Rebinned(start, width, tuple(groups), out_l, out_s)


def _cumulative(rb: Rebinned, price: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative curves from price outwards: (x_long, y_long, x_short, y_short)."""
    edges = rb.edges
    lsum, ssum = rb.long.sum(axis=0), rb.short.sum(axis=0)
    li = np.nonzero(edges[:-1] < price)[0][::-1]  # bars starting below price, nearest first
    si = np.nonzero(edges[1:] > price)[0]  # bars ending above price, nearest first
    xl = np.concatenate([[price], np.minimum(edges[li + 1], price)[:1], edges[li]]) if li.size else np.array([price])
    yl = np.concatenate([[0.0], [0.0], np.cumsum(lsum[li])]) if li.size else np.array([0.0])
    xs = np.concatenate([[price], np.maximum(edges[si], price)[:1], edges[si + 1]]) if si.size else np.array([price])
    ys = np.concatenate([[0.0], [0.0], np.cumsum(ssum[si])]) if si.size else np.array([0.0])
    return xl, yl, xs, ys


# -- drawing ---------------------------------------------------------------------------------------

def _group_colors(stack: str, groups: Sequence[str], th: Theme) -> list[str]:
    if stack == "tier":
        n = len(groups)
        if n <= len(th.tiers):
            # keep the hottest colour for the highest tier whatever the count
            pick = np.round(np.linspace(0, len(th.tiers) - 1, n)).astype(int) if n > 1 else [len(th.tiers) - 1]
            return [th.tiers[i] for i in pick]
        cmap = LinearSegmentedColormap.from_list("tiers", th.tiers)
        return [cmap(i / (n - 1)) for i in range(n)]
    out, used = [], set()
    for v in groups:
        if v == "others":
            out.append(th.venues[-1])
            continue
        k = _VENUE_ORDER.index(v.lower()) if v.lower() in _VENUE_ORDER else None
        if k is None or k in used:
            free = [j for j in range(len(th.venues) - 1) if j not in used]
            k = free[0] if free else len(used) % (len(th.venues) - 1)
        used.add(k)
        out.append(th.venues[k % len(th.venues)])
    return out


def _bars(ax: Axes, x: np.ndarray, h: np.ndarray, bottom: np.ndarray, width: float, color) -> None:
    """Bars as one PolyCollection (``Axes.bar`` makes a patch per bar: several times slower)."""
    x0, x1, y0, y1 = x - width / 2, x + width / 2, bottom, bottom + h
    verts = np.stack([np.column_stack([x0, y0]), np.column_stack([x0, y1]),
                      np.column_stack([x1, y1]), np.column_stack([x1, y0])], axis=1)
    ax.add_collection(PolyCollection(verts, facecolors=color, edgecolors="none", linewidths=0, zorder=3),
                      autolim=False)


def _fit_row(left: Text, right: Text, gap_px: float = 12.0) -> None:
    """Shrink two texts sharing a row (left- and right-aligned) until they no longer touch."""
    fig = left.get_figure()
    renderer = fig.canvas.get_renderer()
    for _ in range(30):
        lb, rb = left.get_window_extent(renderer), right.get_window_extent(renderer)
        if lb.x1 + gap_px <= rb.x0 or left.get_fontsize() <= 6:
            return
        for t in (left, right):
            t.set_fontsize(t.get_fontsize() * 0.94)


def _legend(fig: Figure, handles: list, y: float, th: Theme) -> None:
    """One legend row above the plot, its font shrunk until it fits the figure's width."""
    size = 10.0
    while True:
        leg = fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, y), ncol=len(handles),
                         frameon=False, fontsize=size, labelcolor=th.text, handlelength=1.1, handleheight=0.8,
                         columnspacing=1.1, handletextpad=0.4, borderaxespad=0.1)
        if size <= 6.0 or leg.get_window_extent(fig.canvas.get_renderer()).width <= 0.97 * fig.bbox.width:
            return
        leg.remove()
        size -= 0.5


def _fit_axes(fig: Figure, ax: Axes, ax2: Axes, margin_px: float) -> None:
    """Widen the plot to the figure edges, leaving just the room its Y tick labels need."""
    r = fig.canvas.get_renderer()
    width = fig.bbox.width
    pos = ax.get_position()
    left_box, right_box = ax.yaxis.get_tightbbox(r), ax2.yaxis.get_tightbbox(r)
    need_l = max(0.0, pos.x0 * width - left_box.x0) if left_box is not None else 0.0
    need_r = max(0.0, right_box.x1 - pos.x1 * width) if right_box is not None else 0.0
    x0 = (need_l + margin_px) / width
    x1 = 1 - (need_r + margin_px) / width
    for a in (ax, ax2):
        a.set_position((x0, pos.y0, x1 - x0, pos.height))


def _overlaps(box, placed) -> bool:
    return any(box.overlaps(p) for p in placed)


def _label_clusters(fig: Figure, ax: Axes, reading: Reading, rb: Rebinned, th: Theme, placed: list) -> None:
    """Label significant clusters (then the others, when room is left) without overlaps."""
    renderer = fig.canvas.get_renderer()
    lo, hi = rb.edges[0], rb.edges[-1]
    xlo, xhi = ax.get_xlim()
    ytop = ax.get_ylim()[1]
    totals = rb.long.sum(axis=0) + rb.short.sum(axis=0)
    axbox = ax.get_window_extent(renderer)
    clusters = sorted(reading.clusters, key=lambda c: (not c.significant, -c.notional))
    for c in clusters:
        if not (max(lo, xlo) < c.price < min(hi, xhi)):
            continue
        sel = (rb.edges[1:] > c.lo) & (rb.edges[:-1] < c.hi)
        top = float(totals[sel].max()) if np.any(sel) else 0.0
        color = th.long_curve if c.side == "long" else th.short_curve
        text = f"{numbers.price(c.price)} · {numbers.usd(c.notional)}"
        size = 10 if c.significant else 9
        y = top + 0.03 * ytop
        t = ax.text(c.price, y, text, ha="center", va="bottom", fontsize=size, color=th.text, parse_math=False,
                    gid="cluster-label",
                    fontweight="bold" if c.significant else "normal", zorder=6,
                    bbox=dict(boxstyle="round,pad=0.25", fc=th.label_bg, ec=color, lw=1.0))
        ok = False
        for _ in range(12):
            box = t.get_window_extent(renderer).expanded(1.04, 1.15)
            # keep the label inside the plot horizontally
            if box.x0 < axbox.x0 or box.x1 > axbox.x1:
                shift = (axbox.x0 - box.x0 + 2) if box.x0 < axbox.x0 else (axbox.x1 - box.x1 - 2)
                px, py = ax.transData.transform((c.price, y))
                t.set_x(ax.transData.inverted().transform((px + shift, py))[0])
                t.set_ha("center")
                box = t.get_window_extent(renderer).expanded(1.04, 1.15)
            if box.y1 > axbox.y1:
                break
            if not _overlaps(box, placed):
                ok = True
                break
            # move above whatever it overlaps
            blocker = max((p.y1 for p in placed if box.overlaps(p)), default=box.y1)
            _, py = ax.transData.transform((c.price, y))
            y = ax.transData.inverted().transform((0, py + (blocker - box.y0) + 2))[1]
            t.set_y(y)
        if not ok:
            t.remove()
            continue
        placed.append(box)
        ax.plot([c.price, c.price], [top, y], color=color, lw=1.0, zorder=5, alpha=0.9)


def _ratio(short: float, long: float) -> str:
    """The band imbalance, worded as in the text."""
    if long <= 0:
        return "shorts only"
    if short <= 0:
        return "longs only"
    return numbers.imbalance(short, long)


def _subtitle(m: LiquidationMap, reading: Reading) -> str:
    band = f"±{numbers.band(reading.band)}"
    lb, sb = reading.long_in_band, reading.short_in_band
    if lb <= 0 and sb <= 0:
        skew = f"no levels within {band}"
    else:
        skew = (f"{reading.skew.label[:1].upper()}{reading.skew.label[1:]}: within {band} shorts {numbers.usd(sb)}"
                f" vs longs {numbers.usd(lb)} ({_ratio(sb, lb)})")
    return f"Price {numbers.price(m.price)}  ·  {skew}"


def coverage_text(m: LiquidationMap) -> str:
    """A measured map's coverage in a few words: ``tracked $1.2B = 38% of OI`` ("" for other kinds)."""
    cov, tracked = m.params.get("coverage"), m.params.get("tracked_usd")
    if m.kind != "measured" or not isinstance(cov, (int, float)) or not isinstance(tracked, (int, float)):
        return ""
    return f"tracked {numbers.usd(tracked)} = {share_text(cov)} of OI"


def share_text(fraction: float) -> str:
    """A share as a percentage with sensible digits: 0.38 -> ``38%``, 0.0123 -> ``1.2%``, 0.0004 -> ``0.04%``."""
    v = 100.0 * float(fraction)
    return f"{v:.0f}%" if v >= 10 else f"{v:.2g}%"


def _footer(m: LiquidationMap) -> str:
    if m.kind == "coinglass":
        parts = ["Source: CoinGlass liquidation map"]
    elif m.kind == "measured":
        n = m.params.get("positions_on_map")
        parts = [f"Measured: real liquidation prices of {n:,} tracked positions" if isinstance(n, int)
                 else "Measured: real liquidation prices of tracked positions",
                 (coverage_text(m) or "coverage unknown") + " (not the whole market)"]
    else:
        parts = ["Estimated from open-interest flow — not actual positions. Method: docs/methodology.md"]
    missing = [n.split(" missing:", 1)[0].strip() for n in m.notes if " missing:" in n]
    if missing:
        parts.append("Missing: " + ", ".join(_venue_label(v) for v in missing[:4]) + (" …" if len(missing) > 4 else ""))
    return "  ·  ".join(parts)


def _title_venues(venues: Sequence[str]) -> str:
    names = [_venue_label(v) for v in venues]
    if len(names) > 4:
        return f"{len(names)} exchanges"
    return " + ".join(names)


def _realized_strip(fig: Figure, ax: Axes, tape: RealizedTape, rb: Rebinned, th: Theme,
                    box: tuple[float, float], price: float) -> Axes:
    """The realized liquidations of the tape, summed on the bars' own price bins, as bars hanging
    from the top of a thin strip under the chart (longs and shorts in the side colours). The x tick
    labels move to the strip; its labels say it is the tape, not the estimate."""
    t, p, usd, is_long = tape.arrays()
    idx = np.floor((p - rb.lo) / rb.width).astype(np.int64)
    inside = (idx >= 0) & (idx < rb.n)
    rl = np.bincount(idx[inside & is_long], weights=usd[inside & is_long], minlength=rb.n)[: rb.n]
    rs = np.bincount(idx[inside & ~is_long], weights=usd[inside & ~is_long], minlength=rb.n)[: rb.n]
    pos = ax.get_position()
    sa = fig.add_axes((pos.x0, box[0], pos.width, box[1]), sharex=ax)
    sa.set_gid("realized-strip")
    sa.set_facecolor(th.label_bg)
    peak = float((rl + rs).max())
    x = rb.centers
    w = rb.width * (0.82 if rb.n > 60 else 0.9)
    for h, bottom, color in ((rl, np.zeros(rb.n), th.long_curve), (rs, rl, th.short_curve)):
        nz = h > 0
        if np.any(nz):
            _bars(sa, x[nz], h[nz], bottom[nz], w, color)
    sa.set_ylim(max(peak, 1.0) * 1.65, 0)  # hanging from the top edge, the labels below them
    sa.set_yticks([])
    for s in sa.spines.values():
        s.set_visible(False)
    sa.tick_params(colors=th.muted, labelsize=10.5, length=0, pad=4)
    ax.tick_params(labelbottom=False)
    ax.spines["bottom"].set_visible(False)
    sa.axvline(price, color=th.price, lw=1.0, ls=(0, (4, 3)), alpha=0.6, zorder=5)
    outside = float(usd[~inside].sum())
    left = (f"Realized 24h (tape): longs {numbers.usd(tape.long_usd)} · shorts {numbers.usd(tape.short_usd)}")
    if tape.empty:  # recorded, and nothing happened: said as such, never left blank
        right = "recording: none liquidated"
    else:
        right = f"peak {numbers.usd(peak)} per bar" + (f" · {numbers.usd(outside)} off-range" if outside > 0 else "")
    note = tape.recorded_note()
    if note:  # what was not recorded comes before the peak: at embed size there is room for one
        right = f"{note} · none liquidated" if tape.empty else note
    _fit_row(
        sa.text(0.005, 0.08, left, transform=sa.transAxes, ha="left", va="bottom", fontsize=8.5, color=th.text,
                fontweight="bold", zorder=7, parse_math=False, gid="realized-label"),
        sa.text(0.995, 0.08, right, transform=sa.transAxes, ha="right", va="bottom", fontsize=8.5, color=th.muted,
                zorder=7, parse_math=False, gid="realized-label"),
    )
    return sa


def render(m: LiquidationMap, reading: Reading, *, theme: str = "dark", stack: str = "tier",
           range_pct: float | None = None, size_px: tuple[int, int] = (1280, 720),
           realized: RealizedTape | None = None) -> bytes:
    """Draw the map as a PNG and return its bytes.

    ``stack`` is ``"tier"`` (bars by leverage tier) or ``"venue"`` (by exchange); ``range_pct``
    fixes the half-width of the price window as a fraction of price (default: chosen from the
    map, about ±12%); ``size_px`` is the image size in pixels. ``realized``, a tape that was
    recorded in the window (events, or the recorder's spans), adds a strip of the realized
    liquidations on the same price bins under the bars, with what was not recorded named; a
    recorded window without events reads "$0 … none liquidated". Without a tape, or with one
    not recorded at all, the chart is unchanged. Bad options raise :class:`InputError`, a malformed map
    :class:`DataError`.
    """
    fig = build_figure(m, reading, theme=theme, stack=stack, range_pct=range_pct, size_px=size_px,
                       realized=realized)
    return png_bytes(fig)


def build_figure(m: LiquidationMap, reading: Reading, *, theme: str = "dark", stack: str = "tier",
                 range_pct: float | None = None, size_px: tuple[int, int] = (1280, 720),
                 realized: RealizedTape | None = None) -> Figure:
    """The chart as a matplotlib ``Figure`` with an Agg canvas (what :func:`render` rasterizes).

    Named artists carry a ``gid``: ``title``, ``subtitle``, ``footer``, ``price-label``,
    ``cluster-label``, ``empty-message``; with a tape also ``realized-strip`` (its axes) and
    ``realized-label``.
    """
    if theme not in THEMES:
        raise InputError(f"unknown theme {theme!r}; choose {' or '.join(THEMES)}")
    if stack not in STACKS:
        raise InputError(f"unknown stack {stack!r}; choose {' or '.join(STACKS)}")
    try:
        w_px, h_px = (int(v) for v in size_px)
    except (TypeError, ValueError):
        raise InputError(f"size_px must be (width, height) in pixels, got {size_px!r}") from None
    if not (320 <= w_px <= 3840 and 180 <= h_px <= 2160 and 0.75 <= w_px / h_px <= 3.0):
        raise InputError(f"size_px {w_px}x{h_px} is out of range (320-3840 x 180-2160, aspect 0.75-3)")
    _validate_map(m)
    th = _THEME[theme]
    params = PARAMS
    lo, hi = display_range(m, reading, range_pct, params)
    rb = rebin(m, lo, hi, stack, params.bars_max, params.max_venues)

    dpi = w_px / params.width_in
    # a hair over the target so Agg's int() truncation lands exactly on the requested pixels
    fig = Figure(figsize=((w_px + 0.01) / dpi, (h_px + 0.01) / dpi), dpi=dpi, facecolor=th.bg)
    FigureCanvasAgg(fig)
    h_in = h_px / dpi
    # header/footer heights in inches, turned into figure fractions for any aspect
    top = 1 - 0.98 / h_in
    bottom = 0.62 / h_in
    tape = realized if realized is not None and not realized.not_recorded else None
    strip_h = params.strip_in / h_in if tape is not None else 0.0
    gap_h = 0.07 / h_in if tape is not None else 0.0
    ax = fig.add_axes((0.085, bottom + strip_h + gap_h, 0.83, top - bottom - strip_h - gap_h))
    ax.set_facecolor(th.bg)
    ax2 = ax.twinx()

    colors = _group_colors(stack, rb.groups, th)
    x = rb.centers
    bar_w = rb.width * (0.82 if rb.n > 60 else 0.9)
    empty = not (rb.long.any() or rb.short.any())
    # longs first; shorts stack on top of them in the one bar that may straddle the price
    bottom_h = np.zeros(rb.n)
    for side in (rb.long, rb.short):
        for g in range(len(rb.groups)):
            h = side[g]
            nz = h > 0
            if np.any(nz):
                _bars(ax, x[nz], h[nz], bottom_h[nz], bar_w, colors[g])
            bottom_h = bottom_h + h
    per_bar = bottom_h
    ymax = float(per_bar.max()) if not empty else 1.0
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, ymax * 1.42)

    # The curves are drawn on the bar axes, rescaled, so they sit above the bars and below the
    # labels; the twin axis only carries their scale (a twin's artists cannot interleave).
    xl, yl, xs, ys = _cumulative(rb, m.price)
    cmax = max(float(yl.max()), float(ys.max()))
    scale = cmax * 1.3 / (ymax * 1.42) if cmax > 0 else 1.0
    for cx, cy, color in ((xl, yl, th.long_curve), (xs, ys, th.short_curve)):
        if cy.max() > 0:
            ax.plot(cx, cy / scale, color=color, lw=2.2, zorder=4, solid_joinstyle="round", solid_capstyle="round")
    ax2.set_ylim(0, ymax * 1.42 * scale)
    ax2.patch.set_visible(False)

    # axes styling
    money = FuncFormatter(lambda v, _pos: numbers.usd(v) if v > 0 else "0")
    for a in (ax, ax2):
        for s in a.spines.values():
            s.set_visible(False)
        a.tick_params(colors=th.muted, labelsize=10.5, length=0, pad=4)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    ax2.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    ax.yaxis.set_major_formatter(money)
    ax2.yaxis.set_major_formatter(money)
    if empty:
        ax.set_yticks([])
        ax2.set_yticks([])
    ax.xaxis.set_major_locator(MaxNLocator(nbins=12, steps=[1, 2, 5, 10]))
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    step = float(np.min(np.diff(ticks))) if len(ticks) > 1 else (hi - lo)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: numbers.tick(v, step)))
    ax.grid(axis="y", color=th.grid, lw=0.8, zorder=0)
    ax.grid(axis="x", color=th.grid, lw=0.5, alpha=0.6, zorder=0)
    ax.set_axisbelow(True)
    ax.spines["bottom"].set_visible(True)
    ax.spines["bottom"].set_color(th.grid)
    ax.set_ylabel(f"per {_fmt_width(rb.width)} bin", color=th.muted, fontsize=8.5, labelpad=4)
    ax2.set_ylabel("cumulative", color=th.muted, fontsize=8.5, labelpad=6)

    # current price
    ax.axvline(m.price, color=th.price, lw=1.3, ls=(0, (4, 3)), zorder=5, alpha=0.9)
    pl = ax.text(m.price, 0.985, numbers.price(m.price), transform=ax.get_xaxis_transform(), parse_math=False,
                 ha="center", va="top", fontsize=10.5, fontweight="bold", color=th.bg, zorder=7,
                 bbox=dict(boxstyle="round,pad=0.3", fc=th.price, ec="none"), gid="price-label")
    lt = ax.text(0.01, 0.985, "◀ Long liquidations", transform=ax.transAxes, ha="left", va="top",
                 fontsize=9, color=th.long_curve, fontweight="bold", zorder=7)
    st = ax.text(0.99, 0.985, "Short liquidations ▶", transform=ax.transAxes, ha="right", va="top",
                 fontsize=9, color=th.short_curve, fontweight="bold", zorder=7)

    # header, legend and footer
    venues = _title_venues(m.venues)
    _fit_row(
        fig.text(0.012, 1 - 0.12 / h_in, f"{m.symbol} {'measured ' if m.kind == 'measured' else ''}liquidation map",
                 ha="left", va="top", fontsize=15,
                 fontweight="bold", color=th.text, gid="title", parse_math=False),
        fig.text(0.988, 1 - 0.12 / h_in, f"{venues} · {coverage_text(m) or m.window}", ha="right", va="top", fontsize=11,
                 fontweight="bold", color=th.text, gid="title", parse_math=False),
    )
    _fit_row(
        fig.text(0.012, 1 - 0.45 / h_in, _subtitle(m, reading), ha="left", va="top", fontsize=9.5,
                 color=th.muted, parse_math=False, gid="subtitle"),
        fig.text(0.988, 1 - 0.45 / h_in, _when(m.end_ms), ha="right", va="top", fontsize=9.5, color=th.muted,
                 gid="subtitle"),
    )
    handles: list = [Patch(color=c, label=(g if stack == "tier" else _venue_label(g)))
                     for c, g in zip(colors, rb.groups)]
    handles += [Line2D([], [], color=th.long_curve, lw=2.2, label="Cum. longs"),
                Line2D([], [], color=th.short_curve, lw=2.2, label="Cum. shorts")]
    _legend(fig, handles, top, th)
    fig.text(0.012, 0.1 / h_in, _footer(m), ha="left", va="bottom", fontsize=8.5, color=th.muted, parse_math=False,
             gid="footer")
    fig.text(0.988, 0.1 / h_in, "liqmap", ha="right", va="bottom", fontsize=8, color=th.muted,
             fontweight="bold")

    strip = _realized_strip(fig, ax, tape, rb, th, (bottom, strip_h), m.price) if tape is not None else None
    _fit_axes(fig, ax, ax2, margin_px=0.1 * dpi)
    if strip is not None:
        pos = ax.get_position()
        strip.set_position((pos.x0, bottom, pos.width, strip_h))
    if empty:
        what = {"coinglass": "liquidation levels", "measured": "measured liquidation levels"}.get(
            m.kind, "estimated liquidation levels")
        where = (f"within ±{numbers.band(round(hi / m.price - 1, 3))} of price" if m.total_long + m.total_short > 0
                 else f"for {m.symbol} in this {m.window} window")
        ax.text(0.5, 0.55, f"No {what}\n{where}", transform=ax.transAxes, ha="center", va="center",
                fontsize=13, color=th.text, fontweight="bold", zorder=7, linespacing=1.5,
                bbox=dict(boxstyle="round,pad=0.6", fc=th.label_bg, ec=th.grid, lw=1.0), gid="empty-message")
    else:
        renderer = fig.canvas.get_renderer()
        placed = [t.get_window_extent(renderer).expanded(1.05, 1.2) for t in (pl, lt, st)]
        _label_clusters(fig, ax, reading, rb, th, placed)
    return fig
