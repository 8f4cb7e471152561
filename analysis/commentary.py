"""Written commentary: a map's reading as Discord-markdown text, via Jinja2 templates in ``templates/``.

``summary()`` is the /liqmap embed description, ``daily()`` the daily report, ``notice()`` the
skew-change message, ``heatmap_summary()`` the text beside a liquidation heatmap, ``about()`` the
/about text and ``footer()`` the one-line provenance for an embed footer. All logic lives
here: each function builds a view model of ready-to-print strings and the templates only lay it
out. Every string that can come from outside (symbol, venue names, notes, tier labels) passes
through :func:`_md_safe` before it reaches a template, and every output is cut to Discord's limits
at a line boundary.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound

from . import numbers
from .errors import DataError, InputError, LiqmapError
from .change import ChangeParams, compare
from .liqmap import LiquidationMap, PricePath
from .metrics import Cluster, Reading, SkewClass, Threshold
from .model import non_default_params
from .symbols import parse_symbol

if TYPE_CHECKING:
    from .accuracy import Accuracy
    from .heatmap import HeatmapStates
    from .tape.realized import RealizedTape

__all__ = [
    "summary", "daily", "change", "notice", "heatmap_summary", "footer", "usd", "price_str", "skew_sentence", "near_sentence",
    "md_safe", "md_safe_text", "missing_venues", "realized_lines", "about", "AboutFacts",
    "EMBED_LIMIT", "MESSAGE_LIMIT", "TEMPLATES", "TemplatesMissing", "templates_dir",
]


class TemplatesMissing(DataError):
    """The commentary templates are not where this installation should have them (a broken install)."""


def templates_dir() -> Path:
    """Where the Jinja2 templates are: ``analysis/templates`` inside an installed wheel (the top-level
    ``templates/`` folder is mapped there at build time), else the checkout's ``templates/``
    (a source tree or an editable install). May not exist; rendering then raises :class:`TemplatesMissing`."""
    try:
        packaged = resources.files("analysis") / "templates"
        if isinstance(packaged, Path) and packaged.is_dir():
            return packaged
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - exotic importers
        pass
    return Path(__file__).resolve().parent.parent / "templates"


TEMPLATES = templates_dir()
EMBED_LIMIT = 4096  # Discord embed description
MESSAGE_LIMIT = 2000  # Discord message content

MINUS = numbers.MINUS
TRUNCATED = "… (truncated)"

_VENUE_NAMES = {"binance": "Binance", "bybit": "Bybit", "okx": "OKX", "coinglass": "CoinGlass"}
_SUMMARY_LEVELS = 2  # threshold sentences per side in the summary
_DAILY_LEVELS = 4
_MAX_NOTES = 5
_MAX_TABLE_ROWS = 8

_env = Environment(
    loader=FileSystemLoader(str(TEMPLATES)),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # output is Discord markdown; inputs are escaped by _md_safe instead
    keep_trailing_newline=False,
)
# templates that format a number themselves use the same rules as the chart
_env.filters.update(usd=numbers.usd, price=numbers.price, pct=numbers.pct, band=numbers.band, times=numbers.times)


# -- numbers ------------------------------------------------------------------------------------
# One format for the chart and the text: see analysis/numbers.py.

usd = numbers.usd
price_str = numbers.price
_pct = numbers.pct
_band = numbers.band
_times = numbers.times


def _fmt_time(ms: int) -> str:
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _fmt_date(ms: int) -> str:
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


# -- sanitising ---------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]+")
_MENTION = re.compile(r"<(?:@[!&]?\d*|#\d*|/[^<>\s]{0,64}:\d*|t:[^<>\s]{0,32})>")
_EVERYWHERE = re.compile(r"([\\*_~`|\[\]<>])")
_LINE_START = re.compile(r"^(\s*)([#>\-+])")
_NUMBERED = re.compile(r"^(\s*\d+)\.(?=\s)")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _plain_safe(value: object, limit: int = 200) -> str:
    """One line of text with no control characters and no working mentions (no markdown escaping)."""
    text = _MENTION.sub(" ", _CONTROL.sub(" ", str(value)))
    text = _clip(" ".join(text.split()), limit)
    # a zero-width space after every @ stops @everyone, @here and any <@id> left by the clip
    return text.replace("@", "@\u200b").strip()


def _md_safe(value: object, limit: int = 200) -> str:
    """``value`` as inert Discord markdown: one line, markdown escaped, mentions neutralised."""
    text = _plain_safe(value, limit)
    text = _EVERYWHERE.sub(r"\\\1", text)
    text = _LINE_START.sub(r"\1\\\2", text)
    return _NUMBERED.sub(r"\1\\.", text)


md_safe = _md_safe  # public name for front ends that put outside text into markdown themselves

# Kept verbatim by md_safe_text: our own channel links, and bare web addresses (already visible
# as what they are; escaping inside one would break it). Neither can carry a masked link.
_KEEP = re.compile(r"<#\d{1,20}>|https?://[^\s<>\[\]()@`|*~\\]+")


def md_safe_text(value: object, limit: int = 2000) -> str:
    """A whole message line that may quote outside text (an error's reason, a pause reason) as
    inert Discord markdown: :func:`md_safe`, except that channel links ``<#id>`` and bare
    ``https://`` addresses stay usable. Masked links, mentions, ``@everyone``, code and newlines
    are neutralised exactly as in :func:`md_safe`."""
    text = _clip(" ".join(_CONTROL.sub(" ", str(value)).split()), limit)
    out, at = [], 0
    for m in _KEEP.finditer(text):
        out += [_md_safe_part(text[at:m.start()]), m.group()]
        at = m.end()
    out.append(_md_safe_part(text[at:]))
    return "".join(out)


def _md_safe_part(part: str) -> str:
    """md_safe of a piece of a line, keeping the single spaces that join it to its neighbours."""
    core = _md_safe(part, len(part) + 1)
    if not core:
        return " " if part.strip(" ") != part else ""
    return (" " if part.startswith(" ") else "") + core + (" " if part.endswith(" ") else "")


def missing_venues(missing: "dict[str, str] | Iterable[tuple[str, str]]", limit: int = 1024) -> str:
    """The "missing venues" lines of an embed field: ``**venue**: reason``, both escaped with
    :func:`md_safe` (a venue's error text is outside text), cut at a line boundary."""
    items = missing.items() if isinstance(missing, dict) else missing
    lines = [f"**{_md_safe(v, 40)}**: {_md_safe(why, 300)}" for v, why in items]
    return _fit("\n".join(lines), limit)


def _base(symbol: str) -> str:
    """``BTCUSDT`` -> ``BTC``; a symbol that does not parse is shown as it is (sanitised)."""
    try:
        return _md_safe(parse_symbol(symbol).base, 24)
    except LiqmapError:
        return _md_safe(symbol, 24)


def _label(k: SkewClass) -> str:
    return _md_safe(k.label, 40)


def _venue(name: str) -> str:
    return _VENUE_NAMES.get(str(name).lower(), str(name))


# -- view models --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SideView:
    """One side of the book: a title and its ready-to-print sentences."""

    title: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class BodyView:
    """What the summary and the daily report share."""

    skew: str
    near: str
    sides: tuple[SideView, ...]
    table_title: str
    table: tuple[str, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class ChangeView:
    """Change since the previous reading, ready to print."""

    title: str
    lines: tuple[str, ...]


def _check(r: Reading, what: str = "reading") -> None:
    """Refuse a reading whose headline numbers are not real amounts (a NaN must not read as zero)."""
    for name in ("price", "long_in_band", "short_in_band"):
        v = getattr(r, name)
        try:
            ok = math.isfinite(float(v)) and float(v) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok or (name == "price" and float(v) == 0):
            raise DataError(f"cannot describe the {what} of {_plain_safe(r.symbol, 24)}: {name} is {v!r}")


def _finite(x: float) -> float:
    x = float(x)
    return x if math.isfinite(x) and x > 0 else 0.0


def skew_sentence(r: Reading) -> str:
    """The skew in plain words with the band totals and the imbalance a trader would quote."""
    band = _band(r.band)
    s, lo = _finite(r.short_in_band), _finite(r.long_in_band)
    what = {"coinglass": "CoinGlass", "measured": "measured"}.get(r.kind, "estimated")
    if s <= 0 and lo <= 0:
        return f"No {what} liquidation levels within ±{band} of {price_str(r.price)}."
    S, L = usd(s), usd(lo)
    if lo <= 0:
        return f"Only shorts near price: {S} of shorts within +{band}, no long levels within {MINUS}{band}."
    if s <= 0:
        return f"Only longs near price: {L} of longs within {MINUS}{band}, no short levels within +{band}."
    ratio = numbers.imbalance(s, lo)
    key = r.skew.key
    if key == "heavily_short":
        return (f"Shorts heavily stacked above price ({S} within +{band}), thin long exposure below "
                f"({L} within {MINUS}{band}): {ratio}.")
    if key == "short":
        return f"Shorts outweigh longs: {S} of shorts within +{band} vs {L} of longs within {MINUS}{band} ({ratio})."
    if key == "long":
        return f"Longs outweigh shorts: {L} of longs within {MINUS}{band} vs {S} of shorts within +{band} ({ratio})."
    if key == "heavily_long":
        return (f"Longs heavily stacked below price ({L} within {MINUS}{band}), thin short exposure above "
                f"({S} within +{band}): {ratio}.")
    if key == "balanced":
        return f"Balanced: {S} of shorts within +{band} vs {L} of longs within {MINUS}{band} ({ratio})."
    return (f"Skew {_label(r.skew)}: {S} of shorts within +{band} vs {L} of longs "
            f"within {MINUS}{band} ({ratio}).")


def near_sentence(r: Reading, heavy: float = 3.0) -> str | None:
    """A line for when the closest distance is lopsided (>= ``heavy``) in a way the band's class does not say.

    E.g. a balanced ±5% book with $53M of shorts but only $2.9M of longs within ±1%.
    """
    near = [(d, lv, sv) for d, lv, sv in zip(r.distances, r.cum_long, r.cum_short) if d < r.band]
    if not near:
        return None
    d, lv, sv = min(near)
    lv, sv = _finite(lv), _finite(sv)
    if lv <= 0 and sv <= 0:
        return None
    side, big, small = ("short", sv, lv) if sv > lv else ("long", lv, sv)
    if r.skew.key == f"heavily_{side}" or (small > 0 and big / small < heavy):
        return None
    dist = _band(d)
    up, down = f"+{dist}", f"{MINUS}{dist}"
    here, there = (up, down) if side == "short" else (down, up)
    other = "long" if side == "short" else "short"
    if small <= 0:
        return f"Closest to price, only {side}s: {usd(big)} within {here}, no {other}s within {there}."
    return (f"Closest to price, {side}s dominate: {usd(big)} within {here} vs {usd(small)} of {other}s "
            f"within {there} ({_times(big / small)} more {side}s).")


def _usable(x: Cluster | Threshold) -> bool:
    return all(math.isfinite(v) for v in (x.price, x.distance_pct, x.notional)) and x.notional > 0 and x.price > 0


def _cluster_line(c: Cluster, tiers: tuple[str, ...], label: str = "Nearest major cluster") -> str:
    led = f", led by {_md_safe(c.dominant_tier, 16)}" if len(tiers) > 1 and c.dominant_tier else ""
    return f"{label}: ~{usd(c.notional)} around {price_str(c.price)} ({_pct(c.distance_pct)}){led}."


def _threshold_line(t: Threshold, base: str) -> str:
    where = f"{price_str(t.price)} ({_pct(t.distance_pct)})"
    if t.side == "short":
        return f"If {base} breaks {where}, about {usd(t.notional)} of shorts sit in between."
    return f"A drop below {where} would run through about {usd(t.notional)} of longs."


def _side(r: Reading, m: LiquidationMap, side: str, levels: int) -> SideView | None:
    base = _base(r.symbol)
    nearest = r.nearest_short if side == "short" else r.nearest_long
    lines = [_cluster_line(nearest, m.tiers)] if nearest is not None and _usable(nearest) else []
    picked = [t for t in r.thresholds if t.side == side and _usable(t)]
    picked.sort(key=lambda t: abs(t.distance_pct))
    lines += [_threshold_line(t, base) for t in picked[:levels]]
    if not lines:
        return None
    title = "Shorts above price" if side == "short" else "Longs below price"
    return SideView(title, tuple(lines))


def _table(r: Reading) -> tuple[str, ...]:
    rows = list(zip(r.distances, r.cum_long, r.cum_short))[:_MAX_TABLE_ROWS]
    if not any(_finite(lv) > 0 or _finite(sv) > 0 for _, lv, sv in rows):
        return ()
    out = [f"{'within':<7}{'longs below':>12}{'shorts above':>14}"]
    for d, lv, sv in rows:
        out.append(f"{'±' + _band(d):<7}{usd(lv):>12}{usd(sv):>14}")
    return tuple(out)


def _notes(notes: Iterable[str], limit: int = _MAX_NOTES) -> tuple[str, ...]:
    notes = [str(n) for n in notes if str(n).strip()]
    # missing venues first: they change what the numbers mean most
    notes.sort(key=lambda n: 0 if " missing: " in n else 1)
    out = [("ℹ️ " if n.startswith("data:") else "⚠️ ") + _md_safe(n, 180) for n in notes[:limit]]
    if len(notes) > limit:
        out.append(f"… and {len(notes) - limit} more note(s) in the JSON output.")
    return tuple(out)


def _body(r: Reading, m: LiquidationMap, levels: int) -> BodyView:
    sides = tuple(s for s in (_side(r, m, "short", levels), _side(r, m, "long", levels)) if s is not None)
    title = {"coinglass": "Cumulative liquidations (CoinGlass)",
             "measured": "Cumulative measured liquidations (tracked positions)"}.get(r.kind, "Cumulative estimated liquidations")
    return BodyView(skew_sentence(r), near_sentence(r) or "", sides, title, _table(r), _notes(r.notes))


def _names(venues: Iterable[str]) -> str:
    names = [_md_safe(_venue(v), 20) for v in venues]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def _minutes(ms: int) -> str:
    m = ms / 60_000
    return f"{m:.0f} min" if m < 90 else f"{m / 60:.1f} h"


def realized_lines(tape: RealizedTape | None) -> tuple[str, ...]:
    """What the tape recorded: the realized totals per side, which feeds are complete and which
    sampled, which were not recorded (or only for part of the window), and the gaps in it. Empty
    without a tape (the text is then unchanged). "No tape recorded" (the recorder did not run for
    the symbol in the window) is never worded as "$0 realized" (it ran, and nothing happened)."""
    if tape is None or not tape.venues:
        return ()
    hours = (tape.end_ms - tape.start_ms) / 3_600_000
    span = f"{hours:g} h"
    if tape.not_recorded:
        return (f"Realized in the last {span}: no tape recorded for {_base(tape.symbol)} "
                "(the recorder did not run for it in this window), so nothing is known about it.",)
    recorded = {v: tape.recorded(v) for v in tape.venues}
    totals = f"{usd(tape.long_usd)} of longs and {usd(tape.short_usd)} of shorts"
    if tape.empty:
        first = f"Realized in the last {span}: {totals}: the tape was recording and no liquidation came in."
    else:
        first = f"Realized in the last {span}: {totals}."
    cov = tape.coverage()
    live = [v for v in tape.venues if recorded[v] != "none"]
    complete = [v for v in live if cov[v] == "complete"]
    sampled = [v for v in live if cov[v] == "sampled"]
    absent = [v for v in tape.venues if recorded[v] == "none"]
    parts = []
    if complete:
        parts.append(f"{_names(complete)} complete")
    if sampled:
        parts.append(f"{_names(sampled)} sampled (a lower bound)")
    if absent:
        parts.append(f"{_names(absent)} not recorded")
    lines = [first, "Feeds: " + "; ".join(parts) + "."]
    window_ms = tape.end_ms - tape.start_ms
    partial = [v for v in live if tape.covered_ms(v) < window_ms - tape.full_slack_ms]  # gaps: the next line

    def part(v: str) -> str:
        ms = tape.covered_ms(v)
        name = _md_safe(_venue(v), 20)
        return f"{name} {_minutes(ms)} of {span}" if ms > 0 else f"{name} (span not known)"

    if partial:
        lines.append("Recorded for part of the window only: " + ", ".join(part(v) for v in partial)
                     + " (totals are lower bounds).")
    gaps = [(v, tape.gap_ms(v)) for v in live]
    gaps = [(v, ms) for v, ms in gaps if ms > 0]
    if gaps:
        lines.append("Gaps in the window: " + ", ".join(f"{_md_safe(_venue(v), 20)} {_minutes(ms)}" for v, ms in gaps)
                     + " (events then may be missing).")
    return tuple(lines)


def _headline(r: Reading) -> str:
    return f"**{_md_safe(r.symbol, 24)}** {price_str(r.price)} · {_md_safe(r.window, 8)} map · **{_label(r.skew)}**"


def _footer_text(m: LiquidationMap, safe: Callable[[object, int], str]) -> str:
    what = {"coinglass": "CoinGlass", "measured": "Measured from tracked positions"}.get(m.kind, "Estimated from OI flow")
    venues = [v for v in m.venues if not (m.kind == "coinglass" and str(v).lower() == "coinglass")]
    parts = [what]
    if venues:
        parts.append(" + ".join(safe(_venue(v), 20) for v in venues[:8]) + (" + more" if len(venues) > 8 else ""))
    parts.append(f"{safe(m.window, 8)} window")
    if m.end_ms and m.end_ms > 0:
        parts.append(f"data to {_fmt_time(m.end_ms)}")
    changed = model_overrides_text(m)
    if changed:
        parts.append(f"model: {safe(changed, 1000)}")
    return " · ".join(parts)


def _param_value(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_param_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def model_overrides_text(m: LiquidationMap) -> str:
    """The map's non-default model parameters as ``key=value`` items (``--set`` syntax), or ``""``."""
    if m.kind != "estimated":
        return ""
    return ", ".join(f"{k}={_param_value(v)}" for k, v in non_default_params(m.params).items())


def footer(m: LiquidationMap) -> str:
    """One plain-text line for an embed footer (which renders no markdown): kind, venues, data time,
    and every model parameter that differs from its default."""
    return _footer_text(m, _plain_safe)


_MAX_CHANGE_CLUSTERS = 4  # appeared / swept lines each


def _change(prev: Reading, r: Reading, path: PricePath | None, params: ChangeParams | None = None) -> ChangeView:
    """The "since the last report" lines: skew, price, totals within ±5%, clusters that appeared
    and earlier clusters price traded through (:func:`analysis.change.compare`)."""
    ch = compare(prev, r, path, params)
    lines = []
    if ch.skew_before.key == ch.skew_after.key:
        lines.append(f"Skew: unchanged ({_label(r.skew)})")
    else:
        lines.append(f"Skew: {_label(ch.skew_before)} → {_label(ch.skew_after)}")
    if _finite(prev.price) > 0 and _finite(r.price) > 0:
        move = _pct((r.price / prev.price - 1) * 100)
        lines.append(f"Price: {price_str(prev.price)} → {price_str(r.price)} ({move})")
    dist = _band(ch.distance)
    if ch.not_compared is not None:
        # totals are only comparable between maps built the same way from the same venues
        venues = lambda x: " + ".join(_md_safe(_venue(v), 20) for v in x.venues[:8]) or "none"  # noqa: E731
        shown = {
            "band": (f"±{_band(prev.band)}", f"±{_band(r.band)}"),
            "map window": (_md_safe(prev.window, 8), _md_safe(r.window, 8)),
            "map kind": (_md_safe(prev.kind, 12), _md_safe(r.kind, 12)),
            "venues": (venues(prev), venues(r)),
        }
        what = ch.not_compared[0]
        before, after = shown.get(what, ("?", "?"))
        lines.append(f"Totals and clusters not compared: the {what} changed from {before} to {after}.")
    elif ch.totals_missing:
        lines.append(f"Totals not compared: a reading has no ±{dist} point.")
    for t in ch.totals:
        name = f"Shorts within +{dist}" if t.side == "short" else f"Longs within {MINUS}{dist}"
        b, a = t.before, t.after
        if b > 0:
            delta = f" ({_pct((a / b - 1) * 100, 0)})"
        else:
            delta = " (new)" if a > 0 else ""
        lines.append(f"{name}: {usd(b)} → {usd(a)}{delta}")
    tiers: tuple[str, ...] = ()
    for c in [c for c in ch.appeared if _usable(c)][:_MAX_CHANGE_CLUSTERS]:
        lines.append(_cluster_line(c, tiers, f"New {c.side} cluster"))
    for s in [s for s in ch.swept if _usable(s.cluster)][:_MAX_CHANGE_CLUSTERS]:
        c, word = s.cluster, "low" if s.cluster.side == "long" else "high"
        lines.append(f"Swept: the {c.side} cluster of ~{usd(c.notional)} around {price_str(c.price)} "
                     f"(price {word} since then {price_str(s.extreme)}).")
    if ch.sweep_note:
        lines.append(f"Sweeps not checked: {ch.sweep_note}.")
    elif ch.path_from_ms is not None and ch.path_from_ms > ch.since_ms:
        lines.append(f"Sweeps checked only from {_fmt_time(ch.path_from_ms)}: this map's bars start there.")
    title = "Since the last report"
    if prev.end_ms > 0:
        title += f" (data to {_fmt_time(prev.end_ms)})"
    return ChangeView(title, tuple(lines))


# -- output -------------------------------------------------------------------------------------

def _fit(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters at a line boundary, closing an open code block."""
    text = text.strip("\n")
    if len(text) <= limit:
        return text
    budget = limit - len(TRUNCATED) - len("\n```\n")
    cut = text[:budget]
    nl = cut.rfind("\n")
    if nl > 0:
        cut = cut[:nl]
    else:
        # a single huge line: cut hard, but never split an escape pair (an odd run of trailing backslashes)
        if (len(cut) - len(cut.rstrip("\\"))) % 2:
            cut = cut[:-1]
    cut = cut.rstrip()
    if cut.count("```") % 2:
        cut += "\n```"
    return f"{cut}\n{TRUNCATED}"


def _render(name: str, limit: int, **view: object) -> str:
    try:
        text = _env.get_template(name).render(**view)
    except TemplateNotFound as exc:  # also a missing partial ({% include %})
        raise TemplatesMissing(
            f"the commentary template {exc.name!r} is missing from {TEMPLATES}: this liqmap installation "
            "is incomplete (reinstall it; a wheel must contain analysis/templates)"
        ) from None
    return _fit(text, limit)


def summary(reading: Reading, m: LiquidationMap, *, with_footer: bool = False,
            realized: RealizedTape | None = None) -> str:
    """The /liqmap embed description (≤ 4096 chars).

    The embed's own footer carries :func:`footer`; ``with_footer=True`` appends that line in
    italics instead, for places without an embed footer (a file, a plain message). ``realized``
    adds the tape's lines (:func:`realized_lines`).
    """
    _check(reading)
    return _render(
        "summary.md.j2", EMBED_LIMIT,
        headline=_headline(reading), body=_body(reading, m, _SUMMARY_LEVELS), realized=realized_lines(realized),
        footer=_footer_text(m, _md_safe) if with_footer else "",
    )


def daily(reading: Reading, m: LiquidationMap, *, previous: Reading | None = None, with_footer: bool = False,
          change_params: ChangeParams | None = None, realized: RealizedTape | None = None) -> str:
    """The daily report (≤ 4096 chars): headline, the summary content, and the change since ``previous``.

    ``previous`` is the last report's reading of the same symbol (another symbol is an
    :class:`InputError`); the sweeps since it are read from ``m.path``. ``with_footer`` and
    ``realized`` as in :func:`summary`.
    """
    _check(reading)
    if previous is not None:
        _check(previous, "previous reading")
    if previous is not None and previous.symbol != reading.symbol:
        raise InputError(
            f"previous reading is for {_plain_safe(previous.symbol, 24)}, not {_plain_safe(reading.symbol, 24)}"
        )
    date = _fmt_date(m.end_ms) if m.end_ms and m.end_ms > 0 else "date unknown"
    headline = f"**{_md_safe(reading.symbol, 24)} daily liquidation map · {date} (UTC)**"
    sub = f"{price_str(reading.price)} · {_md_safe(reading.window, 8)} map · **{_label(reading.skew)}**"
    return _render(
        "daily.md.j2", EMBED_LIMIT,
        headline=headline, sub=sub, body=_body(reading, m, _DAILY_LEVELS),
        change=_change(previous, reading, m.path, change_params) if previous is not None else None,
        realized=realized_lines(realized),
        footer=_footer_text(m, _md_safe) if with_footer else "",
    )


def change(previous: Reading, reading: Reading, m: LiquidationMap, *, params: ChangeParams | None = None) -> str:
    """The "since the last report" section alone (≤ 4096 chars), as the daily report words it:
    what changed from ``previous`` to ``reading`` (same symbol, else :class:`InputError`), sweeps
    read from ``m.path``."""
    _check(reading)
    _check(previous, "previous reading")
    return _render("change.md.j2", EMBED_LIMIT, change=_change(previous, reading, m.path, params))


def notice(old: SkewClass, reading: Reading, m: LiquidationMap) -> str:
    """The skew-change message (≤ 2000 chars): ``BTCUSDT skew changed: balanced → heavily short-skewed``.

    It is message content, so it ends with the :func:`footer` line itself.
    """
    _check(reading)
    sym = _md_safe(reading.symbol, 24)
    if old.key == reading.skew.key:
        headline = f"**{sym} skew unchanged: {_label(reading.skew)}**"
    else:
        headline = f"**{sym} skew changed: {_label(old)} → {_label(reading.skew)}**"
    base = _base(reading.symbol)
    lines = []
    for side, nearest in (("short", reading.nearest_short), ("long", reading.nearest_long)):
        first = next((t for t in sorted(reading.thresholds, key=lambda t: abs(t.distance_pct))
                      if t.side == side and _usable(t)), None)
        if first is not None:
            lines.append(_threshold_line(first, base))
        elif nearest is not None and _usable(nearest):
            lines.append(_cluster_line(nearest, m.tiers, f"Nearest major {side} cluster"))
    return _render(
        "notice.md.j2", MESSAGE_LIMIT,
        headline=headline, sub=f"{price_str(reading.price)} · {_md_safe(reading.window, 8)} map",
        skew=skew_sentence(reading), lines=tuple(lines),
        # provenance ("data: ...") is in the footer already; a notice keeps only the warnings
        notes=_notes([n for n in reading.notes if not str(n).startswith("data:")], 3),
        footer=_footer_text(m, _md_safe),
    )


def _step_text(ms: int) -> str:
    minutes = int(ms) // 60_000
    if minutes >= 1440 and minutes % 1440 == 0:
        return f"{minutes // 1440} d"
    if minutes >= 60 and minutes % 60 == 0:
        return f"{minutes // 60} h"
    return f"{minutes} min"


def heatmap_summary(states: "HeatmapStates", *, limit: int = EMBED_LIMIT) -> str:
    """The text beside a liquidation heatmap (≤ ``limit`` chars): what the picture shows, what is
    still active at the end per side, the largest active band per side (on the chart's row grid; the
    chart may leave a band unlabelled where its label would cover the price path),
    venues, column step and data time, then the states' notes (missing venues among them).

    It describes where estimated liquidations rest, never where price goes.
    """
    from .heatmap_chart import display_rows, price_window

    price = float(states.price)
    if not (math.isfinite(price) and price > 0):
        raise DataError(f"cannot describe the heatmap of {_plain_safe(states.symbol, 24)}: no valid current price")
    window = _md_safe(states.window, 8) if states.window else "window"
    headline = (f"**{_md_safe(states.symbol, 24)}** {price_str(price)} · {window} liquidation heatmap · "
                "**estimated**")
    what = ("Time runs left to right, price upward; the brighter a cell, the more estimated liquidation "
            "notional rested at that price at that time. A band ends where price swept it.")
    lines: list[str] = []
    if states.n_columns:
        long_now = states.long[:, -1, :].sum(axis=0)
        short_now = states.short[:, -1, :].sum(axis=0)
        total_long, total_short = _finite(float(long_now.sum())), _finite(float(short_now.sum()))
        lines.append(f"Active now: {usd(total_long)} of longs below price · {usd(total_short)} of shorts above.")
        rows = display_rows(states, *price_window(states))
        centers = states.centers
        for side, amounts, label in (("short", short_now, "Largest short band"), ("long", long_now, "Largest long band")):
            best: tuple[float, float, float] | None = None  # (amount, row low, row high)
            for i in range(rows.z.shape[1]):
                lo, hi = float(rows.edges[i]), float(rows.edges[i + 1])
                mid = (lo + hi) / 2
                if (side == "long") != (mid < price):
                    continue
                amount = _finite(float(amounts[(centers >= lo) & (centers < hi)].sum()))
                if amount > 0 and (best is None or amount > best[0]):
                    best = (amount, lo, hi)
            if best is not None:
                amount, lo, hi = best
                lines.append(f"{label}: {usd(amount)} at {price_str(lo)}–{price_str(hi)} "
                             f"({_pct(((lo + hi) / 2 / price - 1) * 100)}).")
    venues = " + ".join(_md_safe(_venue(v), 20) for v in states.venues[:8]) or "no venue"
    parts = [f"Estimated from OI flow · {venues}"]
    if states.step_ms > 0:
        parts.append(f"columns of {_step_text(states.step_ms)}")
    if states.n_columns and states.end_ms > 0:
        parts.append(f"data to {_fmt_time(states.end_ms)}")
    provenance = "*" + " · ".join(parts) + "*"
    # provenance notes ("data: ...", "heatmap: one column per ...") are in the line above already
    notes = _notes([n for n in states.notes if not str(n).startswith(("data:", "heatmap:"))], 3)
    return _render("heatmap.md.j2", limit, headline=headline, what=what, lines=tuple(lines), provenance=provenance,
                   notes=notes)


# -- /about ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AboutFacts:
    """What ``/about`` says, as gathered by the bot; :func:`about` words and escapes it.

    ``source``: ``live``, ``sample``, ``recorded`` or ``file``. ``bars``: per venue, the newest
    cached bar's open time (None: nothing cached yet). ``tape``: per venue, the newest recorded
    realized liquidation since ``tape_since_ms`` (None: the tape could not be read, with
    ``tape_error``). ``checks``: per venue ``(state, detail)`` of the health probe (None: not
    probed, e.g. an offline source). ``accuracy`` None with ``accuracy_error`` when unreadable.
    """

    method_url: str
    venues: tuple[str, ...]
    source: str
    accuracy: "Accuracy | None" = None
    accuracy_error: str = ""
    bars: "tuple[tuple[str, int | None], ...]" = ()
    tape: "tuple[tuple[str, int], ...] | None" = ()
    tape_since_ms: int = 0
    tape_error: str = ""
    checks: "tuple[tuple[str, str, str], ...] | None" = None
    model_overrides: "tuple[tuple[str, object], ...]" = ()  # the bot's non-default model parameters
    notes: tuple[str, ...] = ()
    deployment: str = ""  # this process's shards and the shared layer (bot.app.LiqmapBot.deployment)
    # per exchange budget with keys held back now: (the budget's description, how many, the first few keys)
    held_back: "tuple[tuple[str, int, tuple[str, ...]], ...]" = ()
    posting: str = ""  # the dispatcher's posting capacity (bot.pacer.Capacity.line), "" when unknown


_SOURCE_TEXT = {
    "live": "Live public market data (candles and open interest) of {venues}",
    "sample": "The bundled recorded sample of {venues} (an offline demo, not live data)",
    "recorded": "Recorded venue responses, replayed (not live data)",
    "file": "A file of bars (not live data)",
}
_STATE_TEXT = {"up": "answering", "slow": "answering slowly", "down": "not answering", "unknown": "not checked yet"}


def _signed(x: float) -> str:
    """``+0.032``; a value that would show as ±0.000 keeps a fourth decimal (``+0.0002``)."""
    digits = 4 if 0 < abs(x) < 0.0005 else 3
    return f"{x:+.{digits}f}".replace("-", MINUS)


def _ago(ms: int) -> str:
    """``2026-06-22 11:40 UTC (<t:…:R>)``: the time, and Discord's own "N minutes ago"."""
    return f"{_fmt_time(ms)} (<t:{int(ms) // 1000}:R>)"


def _accuracy_lines(acc: "Accuracy") -> tuple[str, tuple[str, ...]]:
    from .accuracy import METRIC_LABELS

    span = f"{_fmt_date(acc.first_ms)} to {_fmt_date(acc.last_ms)}"
    if acc.kind == "live":
        title = f"Live score against liqmap's own tape ({_md_safe(_base(acc.symbol), 12)}, {span}, map-only)"
    else:
        title = f"Backtest ({_md_safe(_base(acc.symbol), 12)}, {span}, map-only)"
    lines: list[str] = []
    for g in acc.groups[:4]:
        if acc.kind == "live":
            cov = "sampled feed, a lower bound on realized" if g.lower_bound_realized else "complete feed"
            lines.append(f"__{_md_safe(_venue(g.name), 20)}__ ({g.hours:,} hours, {cov}):")
        else:
            lines.append(f"{g.hours:,} hours against realized liquidations ({_md_safe(acc.realized, 80)}):")
        for c in g.cells:
            verdict = {"better": "ahead, interval above zero", "worse": "behind, interval below zero",
                       "not significant": "not significant"}[c.verdict]
            lines.append(f"• {METRIC_LABELS.get(c.metric, _md_safe(c.metric, 30))}: {c.model:.3f} against "
                         f"{c.baseline_value:.3f} ({_md_safe(c.baseline, 24)}), {_signed(c.diff)} "
                         f"[{_signed(c.lo)}, {_signed(c.hi)}]: {verdict}")
        if g.swept_over_realized is not None:
            what = "the tape" if acc.kind == "live" else "realized"
            lines.append(f"• the map's swept dollars are {g.swept_over_realized:.1f}× {what}: read amounts as relative")
    lines.append("A nowcast given each hour's range (how much the map said sat in the path price took), "
                 "not a forecast; 95% block-bootstrap intervals against the best naive baseline.")
    lines.append(f"Published {_fmt_date(acc.generated_ms)}.")
    return title, tuple(lines)


def about(facts: AboutFacts, *, limit: int = EMBED_LIMIT) -> str:
    """The ``/about`` embed description (≤ ``limit``): what the map is and is not, the method link,
    the latest accuracy, the data and its freshness, the venues answering now."""
    names = ", ".join(_md_safe(_venue(v), 20) for v in facts.venues[:8]) or "no venue"
    what = ("An *estimate* of where leveraged positions on perpetual futures would be liquidated if price "
            f"moved there, inferred from the open interest and candles of {names}, with a published, backtested method.")
    what_not = ("Not the exchanges' real orders or positions (no venue publishes them), and not a prediction "
                "of where price goes. Dollar figures are an upper bound: compare levels with each other.")
    method = f"[docs/methodology.md]({facts.method_url}) (every assumption, its default and the backtest)"
    if facts.model_overrides:
        changed = ", ".join(f"{k}={_param_value(v)}" for k, v in facts.model_overrides)
        method += f"; this bot sets {_md_safe(changed, 200)} (LIQMAP\\_MODEL), not the backtested defaults"
    if facts.accuracy is not None:
        accuracy_title, accuracy = _accuracy_lines(facts.accuracy)
    else:
        accuracy_title, accuracy = "Accuracy", (f"Unavailable: {_md_safe(facts.accuracy_error, 300)}",)
    data = [_SOURCE_TEXT.get(facts.source, _SOURCE_TEXT["file"]).format(venues=names) + "."]
    if facts.source == "live":
        for venue, newest in facts.bars:
            name = _md_safe(_venue(venue), 20)
            data.append(f"{name}: bars cached to {_ago(newest)}" if newest is not None
                        else f"{name}: nothing cached yet (fetched on the first map asked for)")
    for budget, count, first in facts.held_back:
        if count <= 0:
            continue
        shown = ", ".join(_md_safe(k, 40) for k in first[:5])
        more = f" and {count - len(first[:5]):,} more" if count > len(first[:5]) else ""
        data.append(f"Held back by {_md_safe(budget, 160)}: {count:,} (" + shown + more + "); they keep their last "
                    "data, marked stale, or are queued until the budget allows")
    if facts.posting:
        data.append(_md_safe(facts.posting[:1].upper() + facts.posting[1:], 400))
    if facts.tape is None:
        data.append(f"Realized-liquidation tape: unavailable ({_md_safe(facts.tape_error, 200)}).")
    elif facts.tape:
        for venue, t in facts.tape:
            data.append(f"Tape, {_md_safe(_venue(venue), 20)}: last liquidation recorded {_ago(t)}")
    else:
        data.append(f"Realized-liquidation tape: nothing recorded since {_fmt_time(facts.tape_since_ms)} "
                    "(`liqmap tape` or LIQMAP\\_TAPE=true records it).")
    if facts.checks is None:
        venues = ["No exchange is asked: this bot does not read live data"]
    else:
        venues = [f"{_md_safe(_venue(v), 20)}: {_STATE_TEXT.get(state, 'unknown')}"
                  + (f" ({_md_safe(detail, 120)})" if detail else "") for v, state, detail in facts.checks]
        if not venues:
            venues = ["No venue of this bot has a public health check"]
    notes = tuple("⚠️ " + _md_safe(n, 300) for n in
                  [*(facts.accuracy.notes if facts.accuracy is not None else ()), *facts.notes][:3])
    return _render("about.md.j2", limit, what=what, what_not=what_not, method=method, accuracy_title=accuracy_title,
                   accuracy=accuracy, data=tuple(data), venues=tuple(venues), notes=notes,
                   deployment=_md_safe(facts.deployment, 200) if facts.deployment else "")
