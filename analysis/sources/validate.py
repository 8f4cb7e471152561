"""Payload validation shared by the venue parsers.

Every helper raises :class:`~analysis.errors.SourceError` naming the venue and endpoint, so a
missing field, a wrong type or a non-number in a response never escapes as ``KeyError``,
``ValueError`` or ``TypeError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import SourceError

__all__ = ["expect_list", "expect_dict", "field", "to_float", "to_int", "numeric_columns", "dict_columns"]


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def expect_list(payload: Any, venue: str, endpoint: str, *, what: str = "response") -> list[Any]:
    """``payload`` if it is a JSON array, else a SourceError."""
    if not isinstance(payload, list):
        raise SourceError(venue, endpoint, f"{what} should be a list, got {_kind(payload)}")
    return payload


def expect_dict(payload: Any, venue: str, endpoint: str, *, what: str = "response") -> dict[str, Any]:
    """``payload`` if it is a JSON object, else a SourceError."""
    if not isinstance(payload, dict):
        raise SourceError(venue, endpoint, f"{what} should be an object, got {_kind(payload)}")
    return payload


def field(obj: Any, key: str, venue: str, endpoint: str, *, where: str = "") -> Any:
    """``obj[key]`` of a JSON object, or a SourceError naming the missing field."""
    if not isinstance(obj, dict):
        raise SourceError(venue, endpoint, f"expected an object{where and ' in ' + where}, got {_kind(obj)}")
    if key not in obj:
        raise SourceError(venue, endpoint, f"missing field {key!r}{where and ' in ' + where}")
    return obj[key]


def to_float(value: Any, venue: str, endpoint: str, *, what: str = "value") -> float:
    """A finite float from a JSON number or numeric string, else a SourceError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SourceError(venue, endpoint, f"{what} should be a number, got {_kind(value)}")
    try:
        out = float(value)
    except ValueError:
        raise SourceError(venue, endpoint, f"{what} should be a number, got {str(value)[:30]!r}") from None
    if not math.isfinite(out):
        raise SourceError(venue, endpoint, f"{what} is not finite ({str(value)[:30]!r})")
    return out


def to_int(value: Any, venue: str, endpoint: str, *, what: str = "value") -> int:
    """An integer (e.g. epoch ms) from a JSON number or numeric string, else a SourceError."""
    f = to_float(value, venue, endpoint, what=what)
    if f != int(f):
        raise SourceError(venue, endpoint, f"{what} should be an integer, got {value!r}")
    return int(f)


def numeric_columns(
    rows: Sequence[Any], columns: Sequence[int], venue: str, endpoint: str, *, names: Sequence[str] | None = None,
) -> np.ndarray:
    """An ``(n, len(columns))`` float array from array-shaped rows (e.g. klines), validated.

    Each row must be a list long enough to hold every requested index, and every cell a finite
    number or numeric string; otherwise a SourceError names the row and the column.
    """
    names = list(names) if names is not None else [f"[{c}]" for c in columns]
    need = max(columns) + 1 if columns else 0
    out = np.empty((len(rows), len(columns)), dtype=np.float64)
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)):
            raise SourceError(venue, endpoint, f"row {i} should be a list, got {_kind(row)}")
        if len(row) < need:
            raise SourceError(venue, endpoint, f"row {i} has {len(row)} fields, expected at least {need}")
        for j, c in enumerate(columns):
            out[i, j] = to_float(row[c], venue, endpoint, what=f"{names[j]} in row {i}")
    return out


def dict_columns(
    rows: Sequence[Any], keys: Sequence[str], venue: str, endpoint: str,
) -> np.ndarray:
    """An ``(n, len(keys))`` float array from object-shaped rows (e.g. open-interest points), validated."""
    out = np.empty((len(rows), len(keys)), dtype=np.float64)
    for i, row in enumerate(rows):
        for j, k in enumerate(keys):
            out[i, j] = to_float(field(row, k, venue, endpoint, where=f"row {i}"), venue, endpoint, what=f"{k} in row {i}")
    return out
