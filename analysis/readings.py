"""A reading's record: the versioned, validated JSON form of a :class:`~analysis.metrics.Reading`.

What a later report compares itself with ("what changed since the last one", :mod:`analysis.change`)
must outlive the process: the bot keeps the record of every posted daily report in its database,
and ``liqmap report`` writes it into ``liqmap.json`` (key ``"record"``) so ``--since`` can read it
back. :func:`to_record` and :func:`from_record` are exact inverses for every reading :func:`read`
produces; :func:`from_record` refuses anything else -- wrong types, missing keys, NaN, infinities,
amounts beyond :data:`MAX_USD`, oversized lists or strings, an unknown version -- with one
:class:`~analysis.errors.InputError`, never another exception.

Derived fields are not stored but recomputed: the imbalance (short over long within the band) and
the nearest significant cluster per side, so a record cannot contradict itself.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping

from .errors import InputError
from .metrics import SKEW_CLASSES, Cluster, Reading, Side, Threshold

__all__ = [
    "RECORD_FORMAT", "RECORD_VERSION", "MAX_RECORD_BYTES", "MAX_USD", "to_record", "from_record", "loads_record",
    "dumps_record", "record_of_report", "loads_json",
]

RECORD_FORMAT = "liqmap.reading"
RECORD_VERSION = 1
#: the largest record (serialised) accepted; a real one is about 3 KB
MAX_RECORD_BYTES = 64 * 1024
#: no amount in a record may exceed this (USD); a larger one is garbage, not a market
MAX_USD = 1e15
MAX_PRICE = 1e12
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_KINDS = ("estimated", "coinglass", "measured")
_LIMITS = {"distances": 16, "venues": 16, "clusters": 32, "thresholds": 32, "notes": 32}
_TEXT = {"symbol": 32, "venue": 32, "window": 8, "tier": 32, "note": 500}


class _Bad(Exception):
    """One field of a record is not valid (``where``: its path, ``why``: what is wrong)."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")


# -- writing --------------------------------------------------------------------------------------

def _cluster(c: Cluster) -> dict[str, Any]:
    return {"side": c.side, "price": float(c.price), "lo": float(c.lo), "hi": float(c.hi),
            "distance_pct": float(c.distance_pct), "notional": float(c.notional),
            "dominant_tier": str(c.dominant_tier), "significant": bool(c.significant)}


def to_record(r: Reading) -> dict[str, Any]:
    """The record of ``r`` (plain JSON types). A reading that could not be read back (a NaN
    amount, say) is an :class:`InputError`: a record is only ever written valid."""
    rec = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "symbol": str(r.symbol),
        "end_ms": int(r.end_ms),
        "price": float(r.price),
        "venues": [str(v) for v in r.venues],
        "kind": str(r.kind),
        "window": str(r.window),
        "band": float(r.band),
        "distances": [float(d) for d in r.distances],
        "cum_long": [float(v) for v in r.cum_long],
        "cum_short": [float(v) for v in r.cum_short],
        "long_in_band": float(r.long_in_band),
        "short_in_band": float(r.short_in_band),
        "skew": r.skew.key,
        "clusters": [_cluster(c) for c in r.clusters],
        "thresholds": [{"side": t.side, "price": float(t.price), "distance_pct": float(t.distance_pct),
                        "notional": float(t.notional)} for t in r.thresholds],
        "total_long": float(r.total_long),
        "total_short": float(r.total_short),
        "notes": [str(n) for n in r.notes],
    }
    try:
        _parse(rec)
    except _Bad as exc:
        raise InputError(f"cannot record the reading of {str(r.symbol)[:32]!r}: {exc}") from None
    return rec


def dumps_record(r: Reading) -> str:
    """:func:`to_record` as compact JSON text (floats round-trip exactly)."""
    return json.dumps(to_record(r), separators=(",", ":"), allow_nan=False)


# -- reading --------------------------------------------------------------------------------------

def _get(obj: Mapping[str, Any], key: str, where: str = "") -> Any:
    if key not in obj:
        raise _Bad(f"{where}{key}", "missing")
    return obj[key]


def _num(v: Any, where: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad(where, f"expected a number, got {type(v).__name__}")
    try:
        x = float(v)
    except OverflowError:
        raise _Bad(where, "number out of range") from None
    if not math.isfinite(x):
        raise _Bad(where, "not a finite number")
    if not lo <= x <= hi:
        raise _Bad(where, f"{x:.6g} is outside {lo:g}..{hi:g}")
    return x


def _usd(v: Any, where: str) -> float:
    return _num(v, where, 0.0, MAX_USD)


def _text(v: Any, where: str, limit: int) -> str:
    if not isinstance(v, str):
        raise _Bad(where, f"expected text, got {type(v).__name__}")
    if len(v) > limit:
        raise _Bad(where, f"longer than {limit} characters")
    return v


def _list(v: Any, where: str, limit: int) -> list[Any]:
    if not isinstance(v, list):
        raise _Bad(where, f"expected a list, got {type(v).__name__}")
    if len(v) > limit:
        raise _Bad(where, f"more than {limit} items")
    return v


def _obj(v: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise _Bad(where, f"expected an object, got {type(v).__name__}")
    return v


def _side(v: Any, where: str) -> Side:
    if v == "long":
        return "long"
    if v == "short":
        return "short"
    raise _Bad(where, "expected 'long' or 'short'")


def _each(items: list[Any], where: str, one: Callable[[Mapping[str, Any], str], Any]) -> tuple[Any, ...]:
    return tuple(one(_obj(x, f"{where}[{i}]"), f"{where}[{i}].") for i, x in enumerate(items))


def _parse_cluster(c: Mapping[str, Any], w: str) -> Cluster:
    lo = _num(_get(c, "lo", w), f"{w}lo", 0.0, MAX_PRICE)
    hi = _num(_get(c, "hi", w), f"{w}hi", lo, MAX_PRICE)
    sig = _get(c, "significant", w)
    if not isinstance(sig, bool):
        raise _Bad(f"{w}significant", "expected true or false")
    return Cluster(
        side=_side(_get(c, "side", w), f"{w}side"),
        price=_num(_get(c, "price", w), f"{w}price", 0.0, MAX_PRICE),
        lo=lo, hi=hi,
        distance_pct=_num(_get(c, "distance_pct", w), f"{w}distance_pct", -100.0, 1e6),
        notional=_usd(_get(c, "notional", w), f"{w}notional"),
        dominant_tier=_text(_get(c, "dominant_tier", w), f"{w}dominant_tier", _TEXT["tier"]),
        significant=sig,
    )


def _parse_threshold(t: Mapping[str, Any], w: str) -> Threshold:
    return Threshold(
        side=_side(_get(t, "side", w), f"{w}side"),
        price=_num(_get(t, "price", w), f"{w}price", 0.0, MAX_PRICE),
        distance_pct=_num(_get(t, "distance_pct", w), f"{w}distance_pct", -100.0, 1e6),
        notional=_usd(_get(t, "notional", w), f"{w}notional"),
    )


def _parse(rec: Any) -> Reading:
    rec = _obj(rec, "record")
    if rec.get("format") != RECORD_FORMAT:
        raise _Bad("format", f"not a liqmap reading record (expected {RECORD_FORMAT!r})")
    version = rec.get("version")
    if version != RECORD_VERSION or isinstance(version, bool):
        raise _Bad("version", f"{str(version)[:12]} is not supported (this liqmap reads version {RECORD_VERSION})")
    end_ms = _get(rec, "end_ms")
    if isinstance(end_ms, bool) or not isinstance(end_ms, int) or not 0 <= end_ms <= MAX_MS:
        raise _Bad("end_ms", "expected whole milliseconds since 1970 before the year 10000")
    kind = _get(rec, "kind")
    if kind not in _KINDS:
        raise _Bad("kind", f"expected one of {', '.join(_KINDS)}")
    distances = tuple(_num(d, f"distances[{i}]", 1e-9, 0.5)
                      for i, d in enumerate(_list(_get(rec, "distances"), "distances", _LIMITS["distances"])))
    cums = []
    for name in ("cum_long", "cum_short"):
        values = _list(_get(rec, name), name, _LIMITS["distances"])
        if len(values) != len(distances):
            raise _Bad(name, f"has {len(values)} values for {len(distances)} distances")
        cums.append(tuple(_usd(v, f"{name}[{i}]") for i, v in enumerate(values)))
    long_band = _usd(_get(rec, "long_in_band"), "long_in_band")
    short_band = _usd(_get(rec, "short_in_band"), "short_in_band")
    skew = _get(rec, "skew")
    if not isinstance(skew, str) or skew not in SKEW_CLASSES:
        raise _Bad("skew", f"expected one of {', '.join(SKEW_CLASSES)}")
    clusters = _each(_list(_get(rec, "clusters"), "clusters", _LIMITS["clusters"]), "clusters", _parse_cluster)
    thresholds = _each(_list(_get(rec, "thresholds"), "thresholds", _LIMITS["thresholds"]), "thresholds",
                       _parse_threshold)
    if long_band > 0:
        ratio = short_band / long_band
    else:
        ratio = math.inf if short_band > 0 else math.nan

    def nearest(side: str) -> Cluster | None:
        sig = [c for c in clusters if c.side == side and c.significant]
        return min(sig, key=lambda c: abs(c.distance_pct)) if sig else None

    return Reading(
        symbol=_text(_get(rec, "symbol"), "symbol", _TEXT["symbol"]),
        price=_num(_get(rec, "price"), "price", 1e-12, MAX_PRICE),
        venues=tuple(_text(v, f"venues[{i}]", _TEXT["venue"])
                     for i, v in enumerate(_list(_get(rec, "venues"), "venues", _LIMITS["venues"]))),
        kind=kind,
        window=_text(_get(rec, "window"), "window", _TEXT["window"]),
        band=_num(_get(rec, "band"), "band", 1e-9, 0.5),
        distances=distances,
        cum_long=cums[0],
        cum_short=cums[1],
        long_in_band=long_band,
        short_in_band=short_band,
        imbalance=ratio,
        skew=SKEW_CLASSES[skew],
        clusters=clusters,
        nearest_long=nearest("long"),
        nearest_short=nearest("short"),
        thresholds=thresholds,
        total_long=_usd(_get(rec, "total_long"), "total_long"),
        total_short=_usd(_get(rec, "total_short"), "total_short"),
        notes=tuple(_text(n, f"notes[{i}]", _TEXT["note"])
                    for i, n in enumerate(_list(_get(rec, "notes"), "notes", _LIMITS["notes"]))),
        end_ms=end_ms,
    )


def from_record(rec: Any, what: str = "reading record") -> Reading:
    """The :class:`Reading` a record describes; anything not a valid record is an :class:`InputError`
    naming the first bad field (``what`` names the record in that message)."""
    try:
        return _parse(rec)
    except _Bad as exc:
        raise InputError(f"the {what} is not valid: {exc}") from None
    except RecursionError:
        raise InputError(f"the {what} is not valid: nested too deeply") from None


def loads_record(text: str | bytes, what: str = "reading record") -> Reading:
    """:func:`from_record` of JSON text of at most :data:`MAX_RECORD_BYTES`."""
    return from_record(loads_json(text, what, MAX_RECORD_BYTES), what)


def record_of_report(doc: Any, what: str = "report") -> Reading:
    """The reading of an earlier ``liqmap.json`` (``liqmap report`` writes its record under ``"record"``)."""
    if not isinstance(doc, dict):
        raise InputError(f"the {what} is not a liqmap.json report (its top level is not an object)")
    if "record" not in doc:
        raise InputError(f"the {what} has no reading record (\"record\"); it was not written by liqmap report "
                         "of this version or later")
    return from_record(doc["record"], f"reading record in the {what}")


def loads_json(text: str | bytes, what: str, limit: int) -> Any:
    """JSON text of at most ``limit`` bytes (no NaN/Infinity constants); else an :class:`InputError` about ``what``."""
    if len(text) > limit:
        raise InputError(f"the {what} is larger than {limit:,} bytes")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, NaN, too deep
        raise InputError(f"the {what} is not valid JSON: {str(exc)[:120]}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")
