"""The latest published accuracy of the map: the backtest headline, or the live score when newer.

Two sources, both *map-only* (levels on the map when the hour opened, the headline of
docs/methodology.md), both read into one :class:`Accuracy`:

- **the backtest headline** shipped with the package, ``analysis/data/backtest-headline.json``.
  It is written by ``python -m bench.accuracy`` (:func:`headline_from_backtest`) from
  ``liqmap backtest``'s own result (:meth:`analysis.backtest.BacktestResult.to_json`) on the dev
  file: the map-only scores, the best baseline per metric, the map-only minus best baseline with
  its 95% block-bootstrap interval, and the swept/realized dollar ratio. These are the figures of
  docs/methodology.md, "Results on the dev file" (first row of the score table, "Map-only" rows
  of the table against the best baseline, "map-only 4.23×").
- **the live score**, ``score-latest.json`` in the data directory (:func:`analysis.tape.score.latest_score_path`),
  written by ``liqmap score`` against liqmap's own tape, per venue (:meth:`LiveScore.to_json`).

:func:`latest_accuracy` takes the live score when it is there, readable and covers later data
than the backtest; a missing live score is normal, a corrupt one is named in a note and the
backtest is shown. Every file read here is outside input: a regular file of bounded size, UTF-8
JSON, every value checked for type and range, else one :class:`~analysis.errors.DataError`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from .errors import DataError
from .files import read_regular

__all__ = [
    "HEADLINE_METRICS", "METRIC_LABELS", "Cell", "AccuracyGroup", "Accuracy", "PUBLISHED_HEADLINE",
    "MAX_FILE_BYTES", "headline_from_backtest", "load_backtest_headline", "load_live_score", "latest_accuracy",
]

#: The four cells of the goal (docs/methodology.md, "The goal, cell by cell").
HEADLINE_METRICS = ("spearman_long", "spearman_short", "pearson_long", "pearson_short")
METRIC_LABELS = {
    "spearman_long": "ranking hours of long liquidations (Spearman)",
    "spearman_short": "ranking hours of short liquidations (Spearman)",
    "pearson_long": "sizing hours of long liquidations (Pearson)",
    "pearson_short": "sizing hours of short liquidations (Pearson)",
}
PUBLISHED_HEADLINE = Path(__file__).resolve().parent / "data" / "backtest-headline.json"
MAX_FILE_BYTES = 1024 * 1024  # a score file is a few kilobytes
FORMAT = "liqmap.accuracy-headline"
VERSION = 1
BASELINES = ("abs_return", "directional_range", "directional_range_oi", "range_sq_oi")


@dataclass(frozen=True)
class Cell:
    """One metric: the map-only score, the best baseline's, and map-only minus it with its 95% interval."""

    metric: str
    model: float
    baseline: str
    baseline_value: float
    diff: float
    lo: float
    hi: float

    @property
    def verdict(self) -> str:
        """``better`` (interval above zero), ``worse`` (below) or ``not significant``."""
        return "better" if self.lo > 0 else "worse" if self.hi < 0 else "not significant"


@dataclass(frozen=True)
class AccuracyGroup:
    """The cells of one scored series: the backtest's realized total, or one venue's tape."""

    name: str
    hours: int
    cells: tuple[Cell, ...]
    swept_over_realized: float | None
    lower_bound_realized: bool = False  # a sampled feed: its tape under-records realized


@dataclass(frozen=True)
class Accuracy:
    """What /about shows: which score, over what, until when, and its cells."""

    kind: str  # "backtest" | "live"
    symbol: str
    first_ms: int
    last_ms: int  # end of the scored data
    generated_ms: int
    groups: tuple[AccuracyGroup, ...]
    realized: str  # where the realized side comes from
    notes: tuple[str, ...] = field(default=())


# -- reading values ----------------------------------------------------------------------------------

def _bad(where: str, what: str) -> DataError:
    return DataError(f"{where}: {what}")


def _obj(v: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise _bad(where, "not an object")
    return v


def _num(v: Any, where: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise _bad(where, f"not a number between {lo:g} and {hi:g}")
    return float(v)


def _int(v: Any, where: str, lo: int = 0, hi: int = 10**9) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(where, f"not a whole number between {lo} and {hi}")
    return v


def _time(v: Any, where: str) -> int:
    """``YYYY-MM-DDTHH:MMZ`` (what :func:`analysis.bars.iso` writes) as epoch ms, 2015..2100."""
    if not isinstance(v, str) or len(v) > 32:
        raise _bad(where, "not a UTC time")
    try:
        at = datetime.strptime(v, "%Y-%m-%dT%H:%MZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise _bad(where, "not a UTC time like 2026-02-28T23:00Z") from None
    if not 2015 <= at.year <= 2100:
        raise _bad(where, "a time outside 2015..2100")
    return int(at.timestamp() * 1000)


def _text(v: Any, where: str, limit: int = 80) -> str:
    if not isinstance(v, str) or not v or len(v) > limit or not v.isprintable():
        raise _bad(where, f"not a short line of text (at most {limit} characters)")
    return v


def _cells(obj: Mapping[str, Any], where: str) -> tuple[Cell, ...]:
    """The headline cells of a backtest or live-score object (``map_only``, ``baselines``,
    ``map_only_minus_best_baseline``)."""
    model = _obj(obj.get("map_only"), f"{where} map_only")
    bases = _obj(obj.get("baselines"), f"{where} baselines")
    diffs = _obj(obj.get("map_only_minus_best_baseline"), f"{where} map_only_minus_best_baseline")
    out = []
    for m in HEADLINE_METRICS:
        d = _obj(diffs.get(m), f"{where} map_only_minus_best_baseline.{m}")
        base = d.get("baseline")
        if base not in BASELINES:
            raise _bad(f"{where} map_only_minus_best_baseline.{m}.baseline", f"not one of {', '.join(BASELINES)}")
        ci = d.get("ci95")
        if not isinstance(ci, list) or len(ci) != 2:
            raise _bad(f"{where} map_only_minus_best_baseline.{m}.ci95", "not a pair of numbers")
        lo = _num(ci[0], f"{where} {m} ci95[0]", -2, 2)
        hi = _num(ci[1], f"{where} {m} ci95[1]", -2, 2)
        diff = _num(d.get("diff"), f"{where} {m} diff", -2, 2)
        if not lo <= hi:
            raise _bad(f"{where} {m} ci95", "the lower end is above the upper end")
        out.append(Cell(m, _num(model.get(m), f"{where} map_only.{m}", -1, 1), base,
                        _num(_obj(bases.get(base), f"{where} baselines.{base}").get(m), f"{where} baselines.{base}.{m}", -1, 1),
                        diff, lo, hi))
    return tuple(out)


def _ratio(v: Any, where: str) -> float | None:
    return None if v is None else _num(v, where, 0, 1e6)


def _load(path: Path, what: str) -> Mapping[str, Any]:
    try:
        data = read_regular(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise DataError(f"{what} {path.name} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"{what} {path.name} is not JSON text") from None
    return _obj(obj, f"{what} {path.name}")


# -- the backtest headline -------------------------------------------------------------------------

def headline_from_backtest(result: Mapping[str, Any], *, symbol: str, generated_ms: int, command: str) -> dict[str, Any]:
    """The shipped headline document from :meth:`BacktestResult.to_json` (``liqmap backtest --json``).

    Only figures the backtest printed are copied; nothing is computed here but the selection.
    Raises :class:`DataError` if ``result`` lacks them (the cells are checked as when read).
    """
    doc = {
        "format": FORMAT, "version": VERSION, "kind": "backtest", "symbol": symbol,
        "generated": datetime.fromtimestamp(generated_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "command": command,
        "source": result.get("source"),
        "realized": "CoinGlass, summed over Binance, Bybit and OKX",
        "bars": result.get("bars"), "first": result.get("first"), "last": result.get("last"),
        "warmup_bars": result.get("warmup_bars"),
        "non_default_params": _obj(result.get("params"), "params").get("non_default_params", {}),
        "map_only": result.get("map_only"),
        "baselines": result.get("baselines"),
        "map_only_minus_best_baseline": result.get("map_only_minus_best_baseline"),
        "map_only_over_realized": _obj(result.get("calibration"), "calibration").get("map_only_over_realized"),
    }
    _parse_headline(doc, "backtest result")
    return doc


def _parse_headline(obj: Mapping[str, Any], where: str) -> Accuracy:
    if obj.get("format") != FORMAT or obj.get("version") != VERSION:
        raise _bad(where, f"not a {FORMAT} version {VERSION} document")
    first, last = _time(obj.get("first"), f"{where} first"), _time(obj.get("last"), f"{where} last")
    if first > last:
        raise _bad(where, "first is after last")
    group = AccuracyGroup("all", _int(obj.get("bars"), f"{where} bars", 1), _cells(obj, where),
                          _ratio(obj.get("map_only_over_realized"), f"{where} map_only_over_realized"))
    return Accuracy("backtest", _text(obj.get("symbol"), f"{where} symbol", 20), first, last,
                    _time(obj.get("generated"), f"{where} generated"), (group,),
                    _text(obj.get("realized"), f"{where} realized"))


def load_backtest_headline(path: Path = PUBLISHED_HEADLINE) -> Accuracy:
    """The shipped backtest headline; DataError if it is missing or broken (an incomplete install)."""
    try:
        obj = _load(path, "the backtest headline")
    except FileNotFoundError:
        raise DataError(f"the backtest headline {path.name} is missing from {path.parent}: "
                        "this liqmap installation is incomplete") from None
    return _parse_headline(obj, f"the backtest headline {path.name}")


# -- the live score --------------------------------------------------------------------------------

MAX_VENUES = 8


def load_live_score(path: Path) -> Accuracy | None:
    """The live score written by ``liqmap score``, None when there is none, DataError when it is corrupt."""
    try:
        obj = _load(path, "the live score")
    except FileNotFoundError:
        return None
    where = f"the live score {path.name}"
    venues = _obj(obj.get("venues"), f"{where} venues")
    if not venues or len(venues) > MAX_VENUES:
        raise _bad(f"{where} venues", f"between 1 and {MAX_VENUES} venues expected")
    groups = []
    for name, v in venues.items():
        vw = f"{where} venues.{_text(name, f'{where} venue name', 16)}"
        v = _obj(v, vw)
        coverage = v.get("coverage")
        if coverage not in ("complete", "sampled"):
            raise _bad(f"{vw}.coverage", "not complete or sampled")
        cal = _obj(v.get("calibration"), f"{vw}.calibration")
        groups.append(AccuracyGroup(name, _int(v.get("hours"), f"{vw}.hours", 1), _cells(v, vw),
                                    _ratio(cal.get("map_only_over_tape"), f"{vw}.calibration.map_only_over_tape"),
                                    lower_bound_realized=coverage == "sampled"))
    start, end = _time(obj.get("start"), f"{where} start"), _time(obj.get("end"), f"{where} end")
    if start > end:
        raise _bad(where, "start is after end")
    return Accuracy("live", _text(obj.get("symbol"), f"{where} symbol", 20), start, end,
                    _time(obj.get("generated"), f"{where} generated"), tuple(groups),
                    "liqmap's own liquidation tape, per venue")


def latest_accuracy(score_path: Path | None, headline_path: Path = PUBLISHED_HEADLINE) -> Accuracy:
    """The live score when present, readable and newer (its data ends later) than the backtest, else
    the backtest headline; a live score that cannot be read is named in the result's notes."""
    backtest = load_backtest_headline(headline_path)
    if score_path is None:
        return backtest
    try:
        live = load_live_score(score_path)
    except DataError as exc:
        return replace(backtest, notes=(f"{exc}; showing the backtest instead",))
    if live is None or live.last_ms <= backtest.last_ms:
        return backtest
    return live
