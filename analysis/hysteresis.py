"""Skew classification with hysteresis, so a ratio hovering at a boundary does not flap.

The skew ratio is short notional over long notional near price (see :mod:`analysis.metrics`).
:func:`analysis.metrics.classify` cuts it into five classes at ``mild`` and ``heavy`` (and their
inverses on the long side). Here each boundary has two values:

* an **enter** threshold (``mild``/``heavy``): a ratio must reach it to move *into* a more skewed
  class (or into a class on the other side), and
* an **exit** threshold (``exit_mild``/``exit_heavy``, closer to 1): a class is kept until the ratio
  falls back *past* it.

With the defaults (enter 1.5 and 3.0, exit 1.5/1.1 = 1.364 and 3.0/1.1 = 2.727) a ratio that went to 1.52 ("short")
stays "short" at 1.40 and becomes "balanced" only below 1.364. The rule is one line: the new class
is the class under the exit thresholds, clamped between the previous class and the class under the
enter thresholds. A NaN ratio (an empty map) keeps the previous class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InputError
from .metrics import SKEW_CLASSES, SKEW_ORDER, MetricsParams, SkewClass, classify

__all__ = ["HysteresisParams", "step", "class_index"]

_DEFAULTS = MetricsParams()
DEFAULT_MARGIN = 1.1


@dataclass(frozen=True)
class HysteresisParams:
    """Enter and exit thresholds on the short/long ratio (all > 1; the long side uses 1/ratio).

    ``exit_mild``/``exit_heavy`` default to the enter threshold divided by ``DEFAULT_MARGIN`` (1.1).
    Requires ``1 < exit_mild < mild < heavy``, ``exit_heavy < heavy`` and ``exit_mild < exit_heavy``.
    """

    mild: float = _DEFAULTS.mild
    heavy: float = _DEFAULTS.heavy
    exit_mild: float | None = None
    exit_heavy: float | None = None

    def __post_init__(self) -> None:
        for name in ("mild", "heavy", "exit_mild", "exit_heavy"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise InputError(f"{name} threshold must be a finite number, not {v!r}")
        if self.exit_mild is None:
            object.__setattr__(self, "exit_mild", self.mild / DEFAULT_MARGIN)
        if self.exit_heavy is None:
            object.__setattr__(self, "exit_heavy", self.heavy / DEFAULT_MARGIN)
        if not (1.0 < self.mild < self.heavy):
            raise InputError(
                f"skew thresholds need 1 < mild < heavy (got mild {self.mild:g}, heavy {self.heavy:g}); "
                "e.g. mild 1.5 and heavy 3 mean 1.5x and 3x more shorts than longs"
            )
        em, eh = float(self.exit_mild), float(self.exit_heavy)  # type: ignore[arg-type]
        if not (1.0 < em < self.mild):
            raise InputError(f"exit threshold for mild skew must be between 1 and {self.mild:g} (got {em:g})")
        if not (em < eh < self.heavy):
            raise InputError(
                f"exit threshold for heavy skew must be between {em:g} and {self.heavy:g} (got {eh:g})"
            )


def class_index(c: SkewClass | str) -> int:
    """-2 (heavily long) .. 0 (balanced) .. +2 (heavily short)."""
    key = c.key if isinstance(c, SkewClass) else c
    if key not in SKEW_CLASSES:
        raise InputError(f"unknown skew class {key!r}; one of {', '.join(SKEW_ORDER)}")
    return SKEW_ORDER.index(key) - 2


def step(previous: SkewClass | str | None, ratio: float, p: HysteresisParams | None = None) -> SkewClass:
    """The skew class for ``ratio`` given the ``previous`` class (None: no history, plain enter thresholds)."""
    p = p or HysteresisParams()
    if isinstance(ratio, float) and math.isnan(ratio):
        return SKEW_CLASSES["balanced"] if previous is None else SKEW_CLASSES[_key(previous)]
    enter = classify(ratio, p.heavy, p.mild)
    if previous is None:
        return enter
    prev_i = class_index(previous)
    enter_i = class_index(enter)
    exit_i = class_index(classify(ratio, float(p.exit_heavy), float(p.exit_mild)))  # type: ignore[arg-type]
    new_i = min(max(exit_i, min(prev_i, enter_i)), max(prev_i, enter_i))
    return SKEW_CLASSES[SKEW_ORDER[new_i + 2]]


def _key(c: SkewClass | str) -> str:
    key = c.key if isinstance(c, SkewClass) else c
    class_index(key)
    return key
