"""The live accuracy score: the map's swept estimate, hour by hour, against liqmap's own tape.

The backtest (:mod:`analysis.backtest`) scores the model against a third party's realized
history; this scores it against what the recorder saw, per venue, after deployment. It uses the
backtest's functions unchanged: :func:`~analysis.backtest.score` (Spearman, Pearson, direction),
:func:`~analysis.backtest.baselines` (the four naive predictors, ``range_sq_oi`` included) and
:func:`~analysis.backtest.bootstrap_diff` (24-hour moving blocks). The headline is map-only.

Per venue (the map of that venue's bars against that venue's tape):

1. the model runs once over the bars (warm-up included) with :func:`~analysis.model.build_map`;
   its swept series (all levels, and map-only) is summed per UTC hour;
2. the bars are merged into hourly bars for the baselines (open, high, low, last close, last OI);
3. an hour is scored when the bars cover it fully, it lies in the scored span, the recorder was
   running for the symbol on that venue the whole hour (its coverage spans; a venue without any
   span, a tape kept before coverage was, falls back to "not before the venue's first recorded
   event in the span"), and no gap of the venue's feed overlaps it (those are excluded and
   counted, as are the hours not recorded);
4. a sampled feed (Binance, OKX) records fewer dollars than were liquidated: its tape total is a
   lower bound on realized, so swept/tape overstates swept/realized.

:func:`read_hourly` turns a :class:`~analysis.tape.events.TapeReader` into hourly totals, a few
hours at a time (memory is bounded by one chunk of events).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..backtest import METRICS, Interval, baselines, bootstrap_diff, score
from ..bars import Bars, iso
from ..errors import InputError
from ..model import ModelParams, build_map
from .events import FEED_SAMPLED, Gap, TapeReader, feed_coverage

__all__ = [
    "ScoreParams", "HourlyTape", "VenueScore", "LiveScore", "hourly_bars", "score_venue", "live_score",
    "read_hourly", "latest_score_path", "write_latest", "LATEST_SCORE_FILE", "HOUR_MS",
]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
LATEST_SCORE_FILE = "score-latest.json"


@dataclass(frozen=True)
class ScoreParams:
    """Choices of the live score.

    warmup_days
        Bars before the scored span that only build positions (as the backtest's ``--warmup``).
    min_hours
        A venue is scored only with at least this many usable hours of tape (two bootstrap blocks).
    block_hours / n_boot / seed
        The moving-block bootstrap of the intervals, as in the backtest.
    chunk_hours
        The tape is read this many hours at a time.
    """

    warmup_days: float = 7.0
    min_hours: int = 48
    block_hours: int = 24
    n_boot: int = 1000
    seed: int = 0
    chunk_hours: int = 6


@dataclass(frozen=True, eq=False)
class HourlyTape:
    """One venue's realized USD per UTC hour from ``start_ms`` (``long``/``short`` of equal length).

    ``first_ms`` is the venue's first event in the span (None: no event at all). ``recorded``, when
    the reader keeps coverage spans, says per hour whether the recorder ran the whole hour (None:
    no span of this venue in the span at all, so whether it ran is judged from ``first_ms``).
    """

    venue: str
    start_ms: int
    long: np.ndarray
    short: np.ndarray
    first_ms: int | None
    events: int = 0
    recorded: np.ndarray | None = None

    @property
    def hours(self) -> np.ndarray:
        return self.start_ms + HOUR_MS * np.arange(self.long.size, dtype=np.int64)


async def read_hourly(
    reader: TapeReader, symbol: str, venues: Sequence[str], start_ms: int, end_ms: int, *, chunk_hours: int = 6,
) -> dict[str, HourlyTape]:
    """Each venue's hourly realized totals over ``[start_ms, end_ms)`` (hour-aligned), read
    ``chunk_hours`` at a time. Events with a non-finite or negative USD value are skipped."""
    start, end = int(start_ms) // HOUR_MS * HOUR_MS, -(-int(end_ms) // HOUR_MS) * HOUR_MS
    n = (end - start) // HOUR_MS
    wanted = tuple(dict.fromkeys(venues))
    acc = {v: (np.zeros(n), np.zeros(n)) for v in wanted}
    first: dict[str, int | None] = {v: None for v in wanted}
    count = {v: 0 for v in wanted}
    step = max(1, int(chunk_hours)) * HOUR_MS
    for lo in range(start, end, step):
        hi = min(lo + step, end)
        for e in await reader.events(symbol, lo, hi, wanted):
            if e.venue not in acc or not (lo <= e.time_ms < hi) or not (math.isfinite(e.usd) and e.usd >= 0):
                continue
            i = (e.time_ms - start) // HOUR_MS
            acc[e.venue][0 if e.side == "long" else 1][i] += e.usd
            count[e.venue] += 1
            f = first[e.venue]
            first[e.venue] = e.time_ms if f is None else min(f, e.time_ms)
    spans: dict[str, list[tuple[int, int]]] = {v: [] for v in wanted}
    for c in await reader.coverage(symbol, start, end, wanted):
        if c.venue in spans and c.symbol == symbol:
            spans[c.venue].append((c.start_ms, c.end_ms))
    hours = start + HOUR_MS * np.arange(n, dtype=np.int64)
    return {v: HourlyTape(v, start, acc[v][0], acc[v][1], first[v], count[v],
                          _covered_hours(hours, spans[v]) if spans[v] else None) for v in wanted}


def _covered_hours(hours: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Per hour starting at ``hours``: whether the union of ``spans`` covers all of it."""
    merged: list[list[int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        elif hi > lo:
            merged.append([lo, hi])
    out = np.zeros(hours.size, dtype=bool)
    for lo, hi in merged:
        out |= (hours >= lo) & (hours + HOUR_MS <= hi)
    return out


def hourly_bars(bars: Bars) -> tuple[Bars, np.ndarray]:
    """Bars merged per UTC hour, and a mask of the hours the bars cover completely."""
    hour = bars.time // HOUR_MS * HOUR_MS
    starts = np.flatnonzero(np.r_[True, hour[1:] != hour[:-1]])
    counts = np.diff(np.r_[starts, hour.size])
    last = np.r_[starts[1:], hour.size] - 1
    per_hour = HOUR_MS // bars.interval_ms if bars.interval_ms <= HOUR_MS else 1
    full = counts >= per_hour
    merged = Bars(
        bars.venue, bars.symbol, "1h", hour[starts], bars.open[starts], np.maximum.reduceat(bars.high, starts),
        np.minimum.reduceat(bars.low, starts), bars.close[last], bars.oi_usd[last],
    )
    return merged, full


def _per_hour(values: np.ndarray, bars: Bars) -> np.ndarray:
    hour = bars.time // HOUR_MS
    starts = np.flatnonzero(np.r_[True, hour[1:] != hour[:-1]])
    return np.add.reduceat(np.asarray(values, float), starts)


def _clean(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def _diffs(intervals: Mapping[str, Interval]) -> dict[str, Any]:
    return {m: {"baseline": iv.baseline, "diff": _clean(iv.diff), "ci95": [_clean(iv.lo), _clean(iv.hi)]}
            for m, iv in intervals.items()}


@dataclass(frozen=True, eq=False)
class VenueScore:
    """The live score of one venue: the backtest's scores on the usable hours."""

    venue: str
    coverage: str
    hours: np.ndarray
    tape_long: np.ndarray
    tape_short: np.ndarray
    swept_long: np.ndarray
    swept_short: np.ndarray
    map_long: np.ndarray
    map_short: np.ndarray
    map_only: dict[str, float]
    model: dict[str, float]
    baselines: dict[str, dict[str, float]]
    map_intervals: dict[str, Interval]
    intervals: dict[str, Interval]
    excluded_gap_hours: int
    before_tape_hours: int
    not_recorded_hours: int = 0

    def to_json(self) -> dict[str, Any]:
        tape = float(self.tape_long.sum() + self.tape_short.sum())
        swept = float(self.swept_long.sum() + self.swept_short.sum())
        mapped = float(self.map_long.sum() + self.map_short.sum())
        return {
            "coverage": self.coverage,
            "hours": int(self.hours.size),
            "first": iso(int(self.hours[0])),
            "last": iso(int(self.hours[-1])),
            "hours_excluded_for_gaps": self.excluded_gap_hours,
            "hours_before_the_tape_starts": self.before_tape_hours,
            "hours_not_recorded": self.not_recorded_hours,
            "map_only": {m: _clean(self.map_only[m]) for m in METRICS},
            "model": {m: _clean(self.model[m]) for m in METRICS},
            "baselines": {k: {m: _clean(v[m]) for m in METRICS} for k, v in self.baselines.items()},
            "map_only_minus_best_baseline": _diffs(self.map_intervals),
            "model_minus_best_baseline": _diffs(self.intervals),
            "calibration": {
                "tape_long_usd": round(float(self.tape_long.sum()), 0),
                "tape_short_usd": round(float(self.tape_short.sum()), 0),
                "swept_long_usd": round(float(self.swept_long.sum()), 0),
                "swept_short_usd": round(float(self.swept_short.sum()), 0),
                "map_only_long_usd": round(float(self.map_long.sum()), 0),
                "map_only_short_usd": round(float(self.map_short.sum()), 0),
                "swept_over_tape": _clean(swept / tape) if tape > 0 else None,
                "map_only_over_tape": _clean(mapped / tape) if tape > 0 else None,
                # a sampled feed under-records: the tape is a lower bound on realized, the ratio an upper bound
                "tape_is_lower_bound_on_realized": self.coverage != "complete",
            },
        }


@dataclass(frozen=True, eq=False)
class LiveScore:
    """The live score of a symbol over ``days``: per venue, and the venues left out with why."""

    symbol: str
    days: int
    start_ms: int
    end_ms: int
    venues: dict[str, VenueScore]
    skipped: dict[str, str]
    params: ScoreParams
    generated_ms: int
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "days": self.days,
            "start": iso(self.start_ms),
            "end": iso(self.end_ms),
            "generated": iso(self.generated_ms),
            "method": "map-only swept notional per UTC hour vs liqmap's own tape, per venue; the backtest's "
                      "metrics, baselines and 24h block bootstrap (docs/methodology.md, 'Live score')",
            "venues": {v: s.to_json() for v, s in self.venues.items()},
            "skipped": dict(self.skipped),
            "params": {"warmup_days": self.params.warmup_days, "min_hours": self.params.min_hours,
                       "block_hours": self.params.block_hours, "n_boot": self.params.n_boot, "seed": self.params.seed},
            "notes": list(self.notes),
        }

    def table(self) -> str:
        """A readable summary: per venue, map-only and the best baseline per metric, with intervals."""
        lines = [f"live score of {self.symbol}: {iso(self.start_ms)} .. {iso(self.end_ms)} ({self.days} d), "
                 "map-only swept notional per hour vs liqmap's tape"]
        for v, s in self.venues.items():
            j = s.to_json()
            cal = j["calibration"]
            lines += ["", f"{v} ({s.coverage} feed): {j['hours']} hours scored, {s.excluded_gap_hours} excluded for "
                          f"gaps, {s.before_tape_hours} before the tape starts, {s.not_recorded_hours} not recorded"]
            lines.append(f"  {'metric':16} {'map-only':>9} {'all levels':>11}   best baseline, map-only minus it [95%]")
            for m in METRICS:
                iv = s.map_intervals[m]
                lines.append(f"  {m:16} {_fmt(s.map_only[m]):>9} {_fmt(s.model[m]):>11}   {iv.baseline:21} "
                             f"{iv.diff:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}]")
            ratio = _fmt(cal["map_only_over_tape"], 2)
            bound = " (sampled feed: the tape is a lower bound on realized, so this ratio is an upper bound)" \
                if cal["tape_is_lower_bound_on_realized"] else ""
            lines.append(f"  map-only swept / tape dollars: {ratio}{bound}")
        for v, why in self.skipped.items():
            lines.append(f"{v}: not scored: {why}")
        return "\n".join(lines)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _gap_mask(hours: np.ndarray, gaps: Sequence[Gap], venue: str, symbol: str, now_ms: int) -> np.ndarray:
    hit = np.zeros(hours.size, dtype=bool)
    for g in gaps:
        if g.venue != venue or g.symbol not in (None, symbol):
            continue
        end = g.end_ms if g.end_ms is not None else now_ms
        hit |= (hours < end) & (hours + HOUR_MS > g.start_ms)
    return hit


def score_venue(
    bars: Bars, tape: HourlyTape, gaps: Sequence[Gap], start_ms: int, end_ms: int, *,
    params: ScoreParams = ScoreParams(), model: ModelParams | None = None,
) -> VenueScore:
    """Score one venue's map against its tape over the hours in ``[start_ms, end_ms)``.

    ``bars`` must reach back ``params.warmup_days`` before ``start_ms``. Raises
    :class:`InputError` "needs at least K hours of tape; have H" when too few hours are usable.
    """
    if bars.time.size == 0 or bars.time[0] > start_ms - params.warmup_days * DAY_MS + bars.interval_ms:
        have = (start_ms - int(bars.time[0])) / DAY_MS if bars.time.size else 0.0
        raise InputError(f"{bars.venue}: the bars start {max(have, 0):.1f} days before the scored span; "
                         f"the warm-up needs {params.warmup_days:g}")
    lmap = build_map(bars, model, window="score", now_ms=int(bars.end_ms))
    assert lmap.swept is not None and lmap.swept.prior_long is not None and lmap.swept.prior_short is not None
    hb, full = hourly_bars(bars)
    sl, ss = _per_hour(lmap.swept.long, bars), _per_hour(lmap.swept.short, bars)
    pl, ps = _per_hour(lmap.swept.prior_long, bars), _per_hour(lmap.swept.prior_short, bars)
    hours = hb.time
    span = full & (hours >= start_ms) & (hours + HOUR_MS <= end_ms)
    tape_hours = tape.hours
    in_tape = np.isin(hours, tape_hours)
    span &= in_tape
    started = tape.first_ms is not None
    if tape.recorded is not None:  # the recorder's own spans say which hours it ran
        ran = np.zeros(hours.size, dtype=bool)
        ran[in_tape] = tape.recorded[np.searchsorted(tape_hours, hours[in_tape])]
        before = np.zeros(hours.size, dtype=bool)
        unrecorded = span & ~ran
    else:
        first_hour = tape.first_ms // HOUR_MS * HOUR_MS if tape.first_ms is not None else end_ms
        before = span & (hours < first_hour)
        unrecorded = np.zeros(hours.size, dtype=bool)
    gap = span & ~before & ~unrecorded & _gap_mask(hours, gaps, tape.venue, bars.symbol, end_ms)
    keep = span & ~before & ~unrecorded & ~gap
    n = int(keep.sum())
    if n < params.min_hours:
        why = ("no event recorded" if not started and tape.recorded is None else
               f"{int(unrecorded.sum())} not recorded, {int(gap.sum())} excluded for gaps")
        raise InputError(f"{tape.venue}: needs at least {params.min_hours} hours of tape; have {n} ({why})")
    idx = np.searchsorted(tape_hours, hours[keep])
    rl, rs = tape.long[idx], tape.short[idx]
    if not np.any(rl + rs > 0):
        raise InputError(f"{tape.venue}: the tape recorded no liquidation in the {n} usable hours")
    base = {k: (v[0][keep], v[1][keep]) for k, v in baselines(hb).items()}
    block = max(1, params.block_hours)
    ml, ms, mpl, mps = sl[keep], ss[keep], pl[keep], ps[keep]
    return VenueScore(
        venue=tape.venue, coverage=feed_coverage(tape.venue), hours=hours[keep], tape_long=rl, tape_short=rs,
        swept_long=ml, swept_short=ms, map_long=mpl, map_short=mps,
        map_only=score(mpl, mps, rl, rs), model=score(ml, ms, rl, rs),
        baselines={k: score(*v, rl, rs) for k, v in base.items()},
        map_intervals=bootstrap_diff((mpl, mps), base, (rl, rs), block=block, n_boot=params.n_boot, seed=params.seed),
        intervals=bootstrap_diff((ml, ms), base, (rl, rs), block=block, n_boot=params.n_boot, seed=params.seed),
        excluded_gap_hours=int(gap.sum()), before_tape_hours=int(before.sum()),
        not_recorded_hours=int(unrecorded.sum()),
    )


def live_score(
    symbol: str, days: int, bars_by_venue: Mapping[str, Bars], tapes: Mapping[str, HourlyTape], gaps: Sequence[Gap],
    start_ms: int, end_ms: int, *, params: ScoreParams = ScoreParams(), model: ModelParams | None = None,
    now_ms: int | None = None,
) -> LiveScore:
    """Every venue with bars and a feed scored (:func:`score_venue`); a venue that cannot be is
    named in ``skipped``; when none can, the first reason is an :class:`InputError`."""
    scored: dict[str, VenueScore] = {}
    skipped: dict[str, str] = {}
    for venue, bars in bars_by_venue.items():
        if venue not in FEED_SAMPLED:
            skipped[venue] = "no liquidation feed is recorded for this venue"
            continue
        tape = tapes.get(venue)
        if tape is None:
            skipped[venue] = "no tape was read for this venue"
            continue
        try:
            scored[venue] = score_venue(bars, tape, gaps, start_ms, end_ms, params=params, model=model)
        except InputError as exc:
            skipped[venue] = str(exc).split(": ", 1)[-1]
    if not scored:
        detail = "; ".join(f"{v}: {why}" for v, why in skipped.items()) or "no venue to score"
        raise InputError(f"cannot score {symbol} over {days} d: {detail}")
    gen = int(now_ms) if now_ms is not None else int(datetime.now(timezone.utc).timestamp() * 1000)
    return LiveScore(symbol, int(days), int(start_ms), int(end_ms), scored, skipped, params, gen)


def latest_score_path(*, env: Mapping[str, str] | None = None, create: bool = True) -> Path:
    """Where the latest ``liqmap score`` is kept for the bot (``<data dir>/score-latest.json``)."""
    from ..paths import data_dir

    return data_dir(env=env, create=create) / LATEST_SCORE_FILE


def write_latest(result: LiveScore, path: Path) -> None:
    """Write the score's JSON atomically (a temporary file renamed over the old one)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(result.to_json(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise InputError(f"cannot write the latest score to {path}: {exc.strerror or exc}") from None
