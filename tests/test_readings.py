"""The reading record: exact round trip of real readings, and hostile input refused with one InputError."""

from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from analysis.errors import InputError
from analysis.metrics import read
from analysis.model import build_map
from analysis.readings import (
    MAX_RECORD_BYTES, RECORD_VERSION, dumps_record, from_record, loads_record, record_of_report, to_record,
)


@pytest.fixture(scope="module")
def reading(sample_bars):
    return read(build_map(sample_bars.last(7 * 86_400_000), window="7d", now_ms=0))


def same(a, b) -> bool:
    """Readings equal field by field (an imbalance of NaN equals NaN)."""
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, float) and math.isnan(x):
            if not (isinstance(y, float) and math.isnan(y)):
                return False
        elif x != y:
            return False
    return True


def test_round_trip_is_exact(reading):
    assert reading.clusters and reading.thresholds and reading.end_ms > 0
    rec = to_record(reading)
    assert rec["version"] == RECORD_VERSION and rec["format"] == "liqmap.reading"
    back = from_record(json.loads(json.dumps(rec)))
    assert same(back, reading)
    assert to_record(back) == rec
    assert same(loads_record(dumps_record(reading)), reading)
    assert len(dumps_record(reading)) < 8_000


def test_derived_fields_are_recomputed_not_trusted(reading):
    rec = to_record(reading)
    rec["long_in_band"], rec["short_in_band"] = 0.0, 0.0
    assert math.isnan(from_record(rec).imbalance)
    rec["short_in_band"] = 5.0
    assert from_record(rec).imbalance == math.inf
    rec["clusters"] = [dict(c, significant=False) for c in rec["clusters"]]
    back = from_record(rec)
    assert back.nearest_long is None and back.nearest_short is None


def test_a_reading_that_cannot_be_read_back_is_not_recorded(reading):
    from dataclasses import replace

    with pytest.raises(InputError, match="cannot record the reading of 'BTCUSDT': long_in_band: not a finite number"):
        to_record(replace(reading, long_in_band=math.nan))


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("symbol"), "symbol: missing"),
    (lambda r: r.update(version=2), "version: 2 is not supported"),
    (lambda r: r.update(version=True), "version"),
    (lambda r: r.update(format="other"), "not a liqmap reading record"),
    (lambda r: r.update(price="64000"), "price: expected a number, got str"),
    (lambda r: r.update(price=0), "price: 0 is outside"),
    (lambda r: r.update(price=10**400), "price: number out of range"),
    (lambda r: r.update(total_long=1e300), "total_long: 1e+300 is outside"),
    (lambda r: r.update(long_in_band=float("nan")), "long_in_band: not a finite number"),
    (lambda r: r.update(end_ms=1.5), "end_ms: expected whole milliseconds"),
    (lambda r: r.update(end_ms=-1), "end_ms"),
    (lambda r: r.update(kind="guess"), "kind: expected one of estimated, coinglass"),
    (lambda r: r.update(skew="sideways"), "skew: expected one of"),
    (lambda r: r.update(cum_long=r["cum_long"][:-1]), "cum_long: has 3 values for 4 distances"),
    (lambda r: r.update(distances=[0.01] * 17), "distances: more than 16 items"),
    (lambda r: r.update(venues="binance"), "venues: expected a list, got str"),
    (lambda r: r.update(notes=["x" * 501]), "notes[0]: longer than 500 characters"),
    (lambda r: r["clusters"][0].update(side="up"), "clusters[0].side: expected 'long' or 'short'"),
    (lambda r: r["clusters"][0].update(significant=1), "clusters[0].significant: expected true or false"),
    (lambda r: r["clusters"][0].pop("lo"), "clusters[0].lo: missing"),
    (lambda r: r["thresholds"].append(7), "thresholds[6]: expected an object, got int"),
])
def test_bad_fields_are_one_clear_input_error(reading, change, message):
    rec = copy.deepcopy(to_record(reading))
    assert len(rec["thresholds"]) == 6
    change(rec)
    with pytest.raises(InputError) as info:
        from_record(rec)
    assert message in str(info.value) and str(info.value).startswith("the reading record is not valid: ")


@pytest.mark.parametrize("text, message", [
    ("", "not valid JSON"),
    ("{", "not valid JSON"),
    ('{"price": NaN}', "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "larger than"),
    ("[" * 30_000 + "]" * 30_000, "not valid"),
    ("[]", "expected an object, got list"),
    ('"x"', "expected an object"),
    ("x" * (MAX_RECORD_BYTES + 1), "larger than 65,536 bytes"),
])
def test_garbage_text_is_an_input_error(text, message):
    with pytest.raises(InputError, match=message):
        loads_record(text)


def test_record_of_report_names_what_is_missing(reading):
    with pytest.raises(InputError, match="has no reading record"):
        record_of_report({"symbol": "BTCUSDT"})
    with pytest.raises(InputError, match="not a liqmap.json report"):
        record_of_report([1, 2])
    assert same(record_of_report({"record": to_record(reading)}), reading)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(["symbol", "end_ms", "price", "venues", "kind", "window", "band", "distances", "cum_long",
                            "cum_short", "long_in_band", "short_in_band", "skew", "clusters", "thresholds",
                            "total_long", "total_short", "notes", "version", "format"]),
       value=json_values)
def test_any_value_in_any_field_is_read_or_refused_never_a_crash(reading, key, value):
    rec = to_record(reading)
    rec[key] = value
    try:
        back = from_record(rec)
    except InputError:
        return
    assert to_record(back)["version"] == RECORD_VERSION  # whatever is accepted is a valid record again


@settings(max_examples=200, deadline=None)
@given(i=st.integers(0, 5), key=st.sampled_from(["side", "price", "lo", "hi", "distance_pct", "notional",
                                                 "dominant_tier", "significant"]), value=json_values)
def test_any_value_in_a_cluster_is_read_or_refused(reading, i, key, value):
    rec = to_record(reading)
    rec["clusters"][i % len(rec["clusters"])][key] = value
    try:
        from_record(rec)
    except InputError:
        pass


@settings(max_examples=200, deadline=None)
@given(doc=json_values)
def test_any_json_document_is_read_or_refused(doc):
    try:
        record_of_report(doc)
    except InputError:
        pass
    try:
        record_of_report({"record": doc})
    except InputError:
        pass
