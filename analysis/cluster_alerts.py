"""Cluster alerts: when price comes near a major cluster of the map, or realized liquidations sweep one.

Pure: a :class:`~analysis.metrics.Reading` (and, for ``swept``, realized events and gaps from the
tape) in, a :class:`Decision` out. The bot stores :class:`AlertState` between checks; nothing here
knows about Discord or the database. See docs/methodology.md ("Cluster alerts") for the parameters.

Two kinds:

* ``approaching``: price is within ``within_pct`` % of a *major* cluster (``Cluster.significant``,
  either side). The alert fires once and re-arms only after price is more than
  ``within_pct × rearm_factor`` % away from the level it fired for, so a price hovering at the
  ``within_pct`` edge fires once, not on every check.
* ``swept``: at least ``min_usd`` of realized liquidations of a cluster's side happened in the last
  ``minutes`` within ±``within_pct`` % of a major cluster of the map read *before* that window
  (the clusters the sweep ran into, not the map after it). It re-arms once the realized amount near
  that level over the window falls below ``min_usd / rearm_factor`` with no feed gap in the window
  (a gap could hide the events that would keep it above).

Both: the first check after subscribing (or resuming) records a baseline and announces nothing; an
alert within ``cooldown`` of the previous one is held (the state stays armed, so a condition that
persists is announced when the cooldown ends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable, Literal, Sequence

from . import commentary, numbers
from .errors import InputError
from .metrics import Cluster, Reading
from .tape.events import Gap, LiquidationEvent, feed_coverage

__all__ = [
    "KINDS",
    "Kind",
    "Phase",
    "ClusterAlertParams",
    "AlertState",
    "Decision",
    "major_clusters",
    "realized_near",
    "step_approaching",
    "step_swept",
    "alert_text",
    "DEFAULT_APPROACH_PCT",
    "DEFAULT_SWEEP_TOLERANCE_PCT",
    "DEFAULT_MIN_USD",
    "DEFAULT_MINUTES",
    "REARM_FACTOR",
]

Kind = Literal["approaching", "swept"]
KINDS: tuple[str, ...] = ("approaching", "swept")
Phase = Literal["armed", "near", "swept"]
Outcome = Literal["baseline", "fire", "cooldown", "unchanged", "rearmed", "waiting"]

DEFAULT_APPROACH_PCT = 1.0  # approaching: within 1% of a major cluster
DEFAULT_SWEEP_TOLERANCE_PCT = 0.5  # swept: realized events within ±0.5% of the cluster's price count
DEFAULT_MIN_USD = 1_000_000.0
DEFAULT_MINUTES = 60
REARM_FACTOR = 1.5  # exit threshold = enter threshold × 1.5 (distance) or ÷ 1.5 (realized USD)
WITHIN_PCT_RANGE = (0.1, 10.0)
MIN_USD_RANGE = (10_000.0, 10_000_000_000.0)
MINUTES_RANGE = (5, 240)
REARM_RANGE = (1.05, 5.0)

UTC = timezone.utc


@dataclass(frozen=True)
class ClusterAlertParams:
    """One subscription's thresholds; ``None`` means the kind's default (see the module constants).

    ``within_pct`` is how near counts: the approach distance for ``approaching``, the ± tolerance
    around the cluster's price for ``swept``. ``min_usd`` and ``minutes`` apply to ``swept`` only.
    """

    kind: str
    within_pct: float | None = None
    min_usd: float | None = None
    minutes: int | None = None
    rearm_factor: float = REARM_FACTOR

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown cluster alert kind {str(self.kind)[:20]!r}; choose approaching or swept")
        lo, hi = WITHIN_PCT_RANGE
        if self.within_pct is not None and not _in(self.within_pct, lo, hi):
            raise InputError(f"within_pct must be a number from {lo:g} to {hi:g} (percent of price), "
                             f"not {str(self.within_pct)[:20]!r}")
        if self.kind == "approaching" and (self.min_usd is not None or self.minutes is not None):
            raise InputError("min_usd and minutes apply to swept alerts only; an approaching alert takes within_pct")
        lo, hi = MIN_USD_RANGE
        if self.min_usd is not None and not _in(self.min_usd, lo, hi):
            raise InputError(f"min_usd must be from {numbers.usd(lo)} to {numbers.usd(hi)} (in dollars), "
                             f"not {str(self.min_usd)[:20]!r}")
        lo_m, hi_m = MINUTES_RANGE
        if self.minutes is not None and (isinstance(self.minutes, bool) or not isinstance(self.minutes, int)
                                         or not lo_m <= self.minutes <= hi_m):
            raise InputError(f"minutes must be a whole number from {lo_m} to {hi_m}, not {str(self.minutes)[:20]!r}")
        lo, hi = REARM_RANGE
        if not _in(self.rearm_factor, lo, hi):
            raise InputError(f"rearm_factor must be from {lo:g} to {hi:g}, not {str(self.rearm_factor)[:20]!r}")

    @property
    def near_pct(self) -> float:
        if self.within_pct is not None:
            return float(self.within_pct)
        return DEFAULT_APPROACH_PCT if self.kind == "approaching" else DEFAULT_SWEEP_TOLERANCE_PCT

    @property
    def exit_pct(self) -> float:
        """``approaching``: the distance from the fired level beyond which the alert re-arms."""
        return self.near_pct * self.rearm_factor

    @property
    def usd(self) -> float:
        return float(self.min_usd) if self.min_usd is not None else DEFAULT_MIN_USD

    @property
    def window_minutes(self) -> int:
        return int(self.minutes) if self.minutes is not None else DEFAULT_MINUTES


def _in(v: object, lo: float, hi: float) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi


@dataclass(frozen=True)
class AlertState:
    """What is stored between checks. ``phase`` None: nothing observed yet (the next check is a baseline)."""

    phase: str | None = None
    level: float | None = None  # the cluster price the last alert (or baseline) was about
    side: str | None = None
    last_announced_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    """The new state to store and why. ``fire`` means: announce ``cluster`` now."""

    state: AlertState
    outcome: str
    cluster: Cluster | None = None
    distance_pct: float | None = None  # approaching: |price / cluster - 1| in percent
    realized_usd: float | None = None  # swept: realized USD near the cluster in the window
    gaps: tuple[Gap, ...] = field(default=())
    window: tuple[int, int] | None = None  # swept: [start_ms, end_ms)

    @property
    def fire(self) -> bool:
        return self.outcome == "fire"


def major_clusters(reading: Reading) -> list[Cluster]:
    """The reading's significant clusters with a usable price and notional."""
    return [c for c in reading.clusters if c.significant and math.isfinite(c.price) and c.price > 0
            and math.isfinite(c.notional) and c.notional > 0]


def _distance_pct(price: float, level: float) -> float:
    """How far ``level`` is from ``price``, in percent of price (as ``Cluster.distance_pct``, unsigned)."""
    return abs(level / price - 1.0) * 100.0


def _pct_text(d: float) -> str:
    return f"{d:.2f}%" if d < 0.1 else f"{d:.1f}%"


def _cooling(prev: AlertState, now: datetime, cooldown: timedelta) -> bool:
    return prev.last_announced_at is not None and now - prev.last_announced_at < cooldown


def step_approaching(prev: AlertState, reading: Reading, params: ClusterAlertParams, *, now: datetime,
                     cooldown: timedelta) -> Decision:
    """Advance an ``approaching`` alert by one reading (see the module docstring)."""
    price = float(reading.price)
    majors = major_clusters(reading)
    if not (math.isfinite(price) and price > 0):
        return Decision(prev, "unchanged")
    nearest = min(majors, key=lambda c: _distance_pct(price, c.price), default=None)
    d = _distance_pct(price, nearest.price) if nearest is not None else None
    within = nearest is not None and d is not None and d <= params.near_pct
    if prev.phase is None:
        if within:
            assert nearest is not None
            state = AlertState("near", nearest.price, nearest.side, prev.last_announced_at)
        else:
            state = AlertState("armed", None, None, prev.last_announced_at)
        return Decision(state, "baseline", nearest, d)
    state = prev
    rearmed = False
    if state.phase == "near" and state.level is not None and _distance_pct(price, state.level) > params.exit_pct:
        state = AlertState("armed", None, None, state.last_announced_at)
        rearmed = True
    if state.phase == "armed" and within:
        assert nearest is not None
        if _cooling(state, now, cooldown):
            return Decision(state, "cooldown", nearest, d)
        return Decision(AlertState("near", nearest.price, nearest.side, now), "fire", nearest, d)
    return Decision(state, "rearmed" if rearmed else "unchanged", nearest, d)


def realized_near(events: Iterable[LiquidationEvent], cluster: Cluster | None, tolerance_pct: float, *,
                  side: str | None = None, level: float | None = None) -> float:
    """USD of realized liquidations of the cluster's side within ±``tolerance_pct`` % of its price
    (or of ``level``/``side`` when given instead). Non-finite or non-positive events are ignored."""
    p = level if level is not None else (cluster.price if cluster is not None else None)
    s = side if side is not None else (cluster.side if cluster is not None else None)
    if p is None or s is None or not (math.isfinite(p) and p > 0):
        return 0.0
    total = 0.0
    for e in events:
        if e.side != s or not (math.isfinite(e.price) and math.isfinite(e.usd)) or e.price <= 0 or e.usd <= 0:
            continue
        if abs(e.price / p - 1.0) * 100.0 <= tolerance_pct:
            total += e.usd
    return total


def step_swept(prev: AlertState, reference: Reading | None, events: Sequence[LiquidationEvent],
               gaps: Sequence[Gap], params: ClusterAlertParams, *, now: datetime, cooldown: timedelta,
               window: tuple[int, int] | None = None) -> Decision:
    """Advance a ``swept`` alert: ``reference`` is the map reading from before the window (None: not
    taken yet, nothing is decided), ``events``/``gaps`` those of the window."""
    gaps = tuple(gaps)
    if reference is None:
        return Decision(prev, "waiting", gaps=gaps, window=window)
    tol = params.near_pct
    scored = [(realized_near(events, c, tol), c) for c in major_clusters(reference)]
    state = prev
    rearmed = False
    if state.phase == "swept" and state.level is not None:
        still = realized_near(events, None, tol, side=state.side, level=state.level)
        if still < params.usd / params.rearm_factor and not gaps:
            state = AlertState("armed", None, None, state.last_announced_at)
            rearmed = True
    hits = [(usd, c) for usd, c in scored if usd >= params.usd
            and not (state.phase == "swept" and state.level is not None and c.side == state.side
                     and abs(c.price / state.level - 1.0) * 100.0 <= 2 * tol)]
    best = max(hits, key=lambda x: x[0], default=None)
    if prev.phase is None:
        if best is not None:
            return Decision(AlertState("swept", best[1].price, best[1].side, prev.last_announced_at), "baseline",
                            best[1], realized_usd=best[0], gaps=gaps, window=window)
        return Decision(AlertState("armed", None, None, prev.last_announced_at), "baseline", gaps=gaps, window=window)
    if best is None:
        return Decision(state, "rearmed" if rearmed else "unchanged", gaps=gaps, window=window)
    usd, c = best
    if _cooling(state, now, cooldown):
        return Decision(state, "cooldown", c, realized_usd=usd, gaps=gaps, window=window)
    return Decision(AlertState("swept", c.price, c.side, now), "fire", c, realized_usd=usd, gaps=gaps, window=window)


# -- text -----------------------------------------------------------------------------------------

def _hhmm(ms: int) -> str:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC).strftime("%H:%M UTC")


def _cluster_words(c: Cluster, kind: str) -> str:
    what = "CoinGlass" if kind == "coinglass" else "estimated"
    where = "above" if c.side == "short" else "below"
    return f"{what} {c.side} cluster {where} price: ~{numbers.usd(c.notional)} around {numbers.price(c.price)}"


def _feeds_line(venues: Sequence[str]) -> str:
    complete = [commentary.md_safe(commentary._venue(v), 20) for v in venues if feed_coverage(v) == "complete"]
    sampled = [commentary.md_safe(commentary._venue(v), 20) for v in venues if feed_coverage(v) == "sampled"]
    none = [commentary.md_safe(commentary._venue(v), 20) for v in venues if feed_coverage(v) == "unknown"]
    parts = []
    if complete:
        parts.append(f"{', '.join(complete)} complete")
    if sampled:
        parts.append(f"{', '.join(sampled)} sampled (some liquidations are not published)")
    if none:
        parts.append(f"{', '.join(none)} without a realized feed")
    tail = " Realized totals from sampled feeds are a lower bound." if sampled else ""
    return f"Feeds: {'; '.join(parts) or 'none'}.{tail}"


def _gap_line(gaps: Sequence[Gap], window: tuple[int, int] | None) -> str:
    if not gaps:
        return ""
    items = []
    for g in list(gaps)[:4]:
        start = max(g.start_ms, window[0]) if window else g.start_ms
        end = "still down" if g.end_ms is None else _hhmm(g.end_ms)
        items.append(f"{commentary.md_safe(commentary._venue(g.venue), 20)} {_hhmm(start)}–{end}")
    more = f" and {len(gaps) - 4} more" if len(gaps) > 4 else ""
    return f"⚠️ Feed gaps in this window ({'; '.join(items)}{more}): events may be missing, the total is a lower bound."


def alert_text(decision: Decision, reading: Reading, params: ClusterAlertParams, *,
               feeds: Sequence[str] = (), reference_end_ms: int | None = None, data_end_ms: int | None = None) -> str:
    """The alert's message (≤ 2000 chars, Discord markdown, every outside string escaped).

    ``reading`` is the current one (``approaching``) or the reference from before the window
    (``swept``); ``feeds`` the venues whose realized feeds were read; ``reference_end_ms`` when that
    map's data ended. Positioning language only: where the levels are and what was realized.
    """
    c = decision.cluster
    if c is None:
        raise InputError("an alert needs the cluster it is about")
    sym = commentary.md_safe(reading.symbol, 24)
    win = commentary.md_safe(reading.window, 8)
    lines: list[str] = []
    if params.kind == "approaching":
        d = decision.distance_pct if decision.distance_pct is not None else _distance_pct(reading.price, c.price)
        headline = f"**{sym} is within {_pct_text(d)} of a major liquidation cluster**"
        lines.append(f"Price {numbers.price(reading.price)}; {_cluster_words(c, reading.kind)} "
                     f"({numbers.pct((c.price / reading.price - 1) * 100)}), from the {win} map.")
        lines.append(f"Alert level: within {numbers.band(params.near_pct / 100)}. It re-arms once price is more "
                     f"than {numbers.band(params.exit_pct / 100)} from {numbers.price(c.price)}.")
    else:
        usd = decision.realized_usd or 0.0
        headline = (f"**{sym}: {numbers.usd(usd)} of {c.side} liquidations realized near "
                    f"{numbers.price(c.price)} in the last {params.window_minutes} min**")
        when = f" (data to {_hhmm(reference_end_ms)})" if reference_end_ms else ""
        lines.append(f"Realized within ±{numbers.band(params.near_pct / 100)} of {numbers.price(c.price)}, where the "
                     f"{win} map read before this window{when} had an {_cluster_words(c, reading.kind)}.")
        lines.append(_feeds_line(feeds))
        gap = _gap_line(decision.gaps, decision.window)
        if gap:
            lines.append(gap)
    venues = " + ".join(commentary.md_safe(commentary._venue(v), 20) for v in reading.venues[:8]) or "no venue"
    what = "CoinGlass" if reading.kind == "coinglass" else "Estimated from OI flow"
    footer = f"{what} · {venues} · {win} window"
    if data_end_ms:
        footer += f" · data to {_hhmm(data_end_ms)}"
    return commentary._render("cluster_alert.md.j2", commentary.MESSAGE_LIMIT, headline=headline,
                              lines=tuple(lines), footer=footer)

