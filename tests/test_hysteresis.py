"""analysis.hysteresis: enter/exit thresholds stop a boundary-hugging ratio from flapping."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analysis.errors import InputError
from analysis.hysteresis import HysteresisParams, class_index, step
from analysis.metrics import classify

P = HysteresisParams()  # enter 1.5 / 3.0, exit 1.5/1.1 and 3.0/1.1


def keys(prev, ratios, p=P):
    out = []
    for r in ratios:
        prev = step(prev, r, p).key
        out.append(prev)
    return out


def test_defaults_follow_metrics_params():
    assert (P.mild, P.heavy) == (1.5, 3.0)
    assert P.exit_mild == pytest.approx(1.5 / 1.1) and P.exit_heavy == pytest.approx(3.0 / 1.1)


def test_no_history_is_plain_classification():
    for r in (0.1, 0.5, 0.9, 1.0, 1.6, 3.2, math.inf, 0.0):
        assert step(None, r) == classify(r, 3.0, 1.5)


def test_hovering_at_the_mild_boundary_does_not_flap():
    # without hysteresis this sequence would flip balanced/short five times
    seq = [1.45, 1.52, 1.48, 1.51, 1.40, 1.49, 1.53]
    plain = [classify(r, 3.0, 1.5).key for r in seq]
    assert sum(a != b for a, b in zip(plain, plain[1:])) == 5
    assert keys("balanced", seq) == ["balanced"] + ["short"] * 6
    assert keys("short", [1.37, 1.36])[-1] == "balanced"  # below 1.5/1.1 = 1.3636 it exits


def test_heavy_boundary_and_way_down():
    assert keys("short", [2.9, 3.0, 2.8, 2.75, 2.7]) == ["short", "heavily_short", "heavily_short", "heavily_short",
                                                         "short"]
    # falling from heavily short straight to 1.4 lands in short (still above its exit), then balanced
    assert keys("heavily_short", [1.4, 1.2]) == ["short", "balanced"]
    # entering heavy from balanced needs the heavy enter threshold, one jump is fine
    assert keys("balanced", [2.9]) == ["short"]
    assert keys("balanced", [3.1]) == ["heavily_short"]


def test_long_side_is_the_mirror_image():
    assert keys("balanced", [1 / 1.45, 1 / 1.52, 1 / 1.48, 1 / 1.40, 1 / 1.3]) == [
        "balanced", "long", "long", "long", "balanced"]
    assert keys("long", [1 / 3.5, 1 / 2.8, 1 / 2.6]) == ["heavily_long", "heavily_long", "long"]


def test_crossing_sides_uses_enter_thresholds():
    # from short to a long reading of 1/2.9: enters "long", not "heavily_long" (needs 1/3)
    assert step("short", 1 / 2.9).key == "long"
    assert step("heavily_short", 1 / 1.45).key == "balanced"


def test_nan_keeps_previous():
    assert step("short", math.nan).key == "short"
    assert step(None, math.nan).key == "balanced"


def test_custom_and_invalid_params():
    p = HysteresisParams(mild=2.0, heavy=4.0, exit_mild=1.8, exit_heavy=3.5)
    assert keys("balanced", [1.9, 2.0, 1.85, 1.79], p) == ["balanced", "short", "short", "balanced"]
    for kw, msg in [
        ({"mild": 3, "heavy": 2}, "1 < mild < heavy"),
        ({"mild": 1.0}, "1 < mild < heavy"),
        ({"exit_mild": 1.6}, "between 1 and 1.5"),
        ({"exit_mild": 1.4, "exit_heavy": 1.3}, "between 1.4 and 3"),
        ({"heavy": math.inf}, "finite"),
        ({"mild": "2"}, "finite"),
    ]:
        with pytest.raises(InputError, match=msg):
            HysteresisParams(**kw)
    with pytest.raises(InputError, match="unknown skew class"):
        step("sideways", 1.0)


def test_class_index_order():
    assert [class_index(k) for k in ("heavily_long", "long", "balanced", "short", "heavily_short")] == [-2, -1, 0, 1, 2]


ratios = st.floats(min_value=0.01, max_value=100, allow_nan=False)
classes = st.sampled_from(["heavily_long", "long", "balanced", "short", "heavily_short"])


@given(classes, ratios)
def test_step_lies_between_previous_and_plain_class(prev, r):
    new = class_index(step(prev, r))
    plain = class_index(classify(r, 3.0, 1.5))
    lo, hi = sorted((class_index(prev), plain))
    assert lo <= new <= hi


@given(classes, ratios)
def test_step_is_stable(prev, r):
    once = step(prev, r)
    assert step(once, r) == once  # same ratio again never changes the class


@given(classes, ratios)
def test_exit_band_only_ever_holds_a_class_never_invents_one(prev, r):
    new = step(prev, r)
    if new.key != prev:
        # any change must agree in direction with the plain reading relative to the previous class
        assert (class_index(new) - class_index(prev)) * (class_index(classify(r, 3.0, 1.5)) - class_index(prev)) > 0
