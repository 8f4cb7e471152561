"""How numbers read, in one place: the chart, the commentary and the bot all format through here.

The same amount must read the same on the image and in the text beside it, so every USD amount,
price, percentage and ratio a user sees comes from these functions:

- :func:`usd` -- an amount: 3 significant digits with a unit (K, M, B, T), trailing zeros dropped,
  whole dollars below $1,000; a value that would round to 1000 of a unit moves up ($1M, not
  $1000K). ``$1.23B``, ``$456M``, ``$12.3K``, ``$1.2B``, ``$5M``, ``$850``, ``$0``.
- :func:`price` -- from $1,000 whole dollars with separators, below that 4 significant digits and
  at least 2 decimals. ``$65,750``, ``$145.23``, ``$999.40``, ``$2.346``, ``$0.4123``, ``$0.00001234``.
- :func:`pct` -- a signed percentage, 1 decimal by default: ``+3.0%``, ``−4.5%``, ``+400%``.
- :func:`band` -- an unsigned fraction of price: ``5%``, ``0.5%``.
- :func:`times` -- a ratio >= 1, rounded *down* so it never shows a threshold it did not reach:
  ``1.8×``, ``12×``, ``over 1,000×``; :func:`imbalance` words it: ``5.2× more shorts``, ``roughly even``.
- :func:`tick` -- a price-axis tick, with just enough decimals to tell ticks apart, K from $10,000:
  ``$62.5K``, ``$64K``, ``$3,400``, ``$0.082``.

Negative numbers carry a real minus sign (U+2212); anything that is not a finite number reads ``n/a``.
This module imports only the standard library.
"""

from __future__ import annotations

import math

__all__ = ["MINUS", "NA", "usd", "price", "pct", "band", "times", "imbalance", "tick"]

MINUS = "\u2212"
NA = "n/a"

_UNITS = (("", 1.0), ("K", 1e3), ("M", 1e6), ("B", 1e9), ("T", 1e12))


def _number(x: float | None) -> float | None:
    """``x`` as a finite float, or None (for None, NaN, infinity or anything float() refuses)."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _strip(text: str, keep: int = 0) -> str:
    """Drop trailing zeros after the decimal point, keeping at least ``keep`` decimals."""
    if "." not in text:
        return text
    whole, frac = text.split(".")
    frac = frac.rstrip("0").ljust(keep, "0")
    return f"{whole}.{frac}" if frac else whole


def usd(x: float | None) -> str:
    """A USD amount: ``$1.23B``, ``$456M``, ``$12.3K``, ``$850``, ``$0``; ``n/a`` when not a number."""
    v = _number(x)
    if v is None:
        return NA
    a = abs(v)
    text, unit = "0", ""
    for i, (unit, scale) in enumerate(_UNITS):
        n = a / scale
        digits = 0 if (not unit or n >= 99.95) else 1 if n >= 9.995 else 2
        text = f"{n:.{digits}f}"
        if float(text) < 1000 or i == len(_UNITS) - 1:
            break
    text = _strip(text)
    sign = MINUS if v < 0 and text != "0" else ""
    return f"{sign}${text}{unit}"


def price(x: float | None) -> str:
    """A price: ``$65,750``, ``$145.23``, ``$2.346``, ``$0.4123``, ``$0.00001234``; ``n/a`` unless > 0."""
    v = _number(x)
    if v is None or v <= 0:
        return NA
    if v >= 999.995:
        return f"${v:,.0f}"
    decimals = max(2, 3 - math.floor(math.log10(v)))
    return f"${_strip(f'{v:.{decimals}f}', keep=2)}"


def pct(x: float | None, decimals: int = 1) -> str:
    """A signed percentage (``x`` in percent): ``+3.0%``, ``−4.5%``; ``n/a`` when not a number."""
    v = _number(x)
    if v is None:
        return NA
    return f"{v:+.{decimals}f}%".replace("-", MINUS)


def band(fraction: float | None) -> str:
    """An unsigned fraction of price as a percentage: 0.05 -> ``5%``, 0.005 -> ``0.5%``."""
    v = _number(fraction)
    if v is None:
        return NA
    return f"{abs(v) * 100:.4g}%"


def times(x: float) -> str:
    """A ratio >= 1 as ``5.3×``, rounded down so it never crosses a skew threshold it did not reach."""
    v = float(x)
    if math.isnan(v):
        return NA
    if v >= 1000:
        return "over 1,000×"
    if v >= 10:
        return f"{math.floor(v + 1e-9):,}×"
    return f"{math.floor(v * 10 + 1e-9) / 10:.1f}×"


def imbalance(short: float, long: float) -> str:
    """Short vs long notional as the text and the chart word it: ``5.2× more shorts``, ``roughly even``.

    Both must be > 0 (a one-sided book is worded by the caller). Within 10% of even reads ``roughly even``.
    """
    if short >= long:
        return f"{times(short / long)} more shorts" if short / long >= 1.1 else "roughly even"
    return f"{times(long / short)} more longs" if long / short >= 1.1 else "roughly even"


def _step_decimals(step: float) -> int:
    """Fewest decimals that show multiples of ``step`` exactly (0.25 -> 2, 5 -> 0, 0.002 -> 3)."""
    for d in range(0, 10):
        v = step * 10**d
        if abs(v - round(v)) < 1e-6 * max(1.0, v):
            return d
    return 10


def tick(x: float, step: float) -> str:
    """A price-axis tick: ``$62.5K``, ``$64K``, ``$3,400``, ``$0.082`` (ticks are ``step`` apart)."""
    if not (math.isfinite(x) and math.isfinite(step) and step > 0):
        return price(x)
    sign = MINUS if x < 0 else ""
    a = abs(x)
    if a >= 10_000 or (a == 0 and step >= 10_000):
        return f"{sign}${a / 1000:,.{_step_decimals(step / 1000)}f}K"
    return f"{sign}${a:,.{_step_decimals(step)}f}"
