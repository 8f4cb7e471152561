"""The one parser of model overrides: ``--set`` (backtest and report) and ``LIQMAP_MODEL``."""

from __future__ import annotations

import math

import pytest

from analysis.backtest import params_with
from analysis.errors import InputError
from analysis.model import ModelParams, non_default_params, parse_overrides, split_overrides


def test_values_are_read_as_each_fields_type():
    got = parse_overrides(["holding_days=7", "leverage=5,10", "leverage_weights=1,1", "entry_points=1",
                           "side_model=neutral", "bin_width=none", "max_wick=inf"])
    assert got == {"holding_days": 7.0, "leverage": (5.0, 10.0), "leverage_weights": (1.0, 1.0), "entry_points": 1,
                   "side_model": "neutral", "bin_width": None, "max_wick": math.inf}
    assert parse_overrides([]) == {}


@pytest.mark.parametrize("item, message", [
    ("holding_days=nan", "holding_days: cannot read 'nan'; expected a finite number"),
    ("holding_days=inf", "holding_days: cannot read 'inf'; expected a finite number"),
    ("oi_scale=-inf", "oi_scale: cannot read '-inf'; expected a finite number"),
    ("max_wick=nan", "max_wick: cannot read 'nan'; expected a finite number or inf"),
    ("bin_pct=none", "bin_pct: cannot read 'none'; expected a finite number"),
    ("holding_days=None", "holding_days: cannot read 'None'"),
    ("leverage=5,nan", "leverage: cannot read '5,nan'; expected comma-separated finite numbers"),
    ("leverage=5,,10", "leverage: cannot read"),
    ("entry_points=1.5", "entry_points: cannot read '1.5'; expected an integer"),
    ("side_model=bullish", "side_model: cannot read 'bullish'; expected one of auto, taker, neutral, price_direction"),
    ("margin_table=x", "cannot set 'margin_table=x'"),
    ("nonsense=1", "cannot set 'nonsense=1'; write key=value with a key among: leverage,"),
    ("holding_days", "cannot set 'holding_days'"),
    ("holding_days=-1", "holding_days must be a finite number >= 0"),
])
def test_bad_overrides_are_refused_naming_the_key_and_what_it_expects(item, message):
    with pytest.raises(InputError) as err:
        parse_overrides([item])
    assert message in str(err.value)


def test_backtest_and_report_share_the_parser():
    items = ["holding_days=7", "leverage_spread=0.3"]
    assert params_with(items) == ModelParams().with_overrides(items) == ModelParams(holding_days=7, leverage_spread=0.3)


def test_a_settings_string_splits_into_items_without_breaking_tuples():
    assert split_overrides("holding_days=7, leverage_spread=0.3") == ["holding_days=7", "leverage_spread=0.3"]
    assert split_overrides("leverage=5,10 , leverage_weights=1,1; oi_units=usd\nentry_points=1") == [
        "leverage=5,10", "leverage_weights=1,1", "oi_units=usd", "entry_points=1"]
    assert split_overrides("  ") == []


def test_non_default_lists_exactly_the_changed_values():
    p = ModelParams().with_overrides(["holding_days=7", "leverage_spread=0.4"])  # 0.4 is the default
    assert p.non_default() == {"holding_days": 7.0}
    assert ModelParams().non_default() == {}
    assert non_default_params({**p.describe(), "not_a_param": 1}) == {"holding_days": 7.0}
