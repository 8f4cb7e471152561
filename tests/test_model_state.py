"""The incremental model (analysis/model_state.py): after any appends it is the full rebuild, exactly.

Also the full rebuild's binary lifting against the implementation before its numpy fixes (kept
here as the oracle), and the fallbacks: each says why it rebuilt.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.bars import Bars, bar_fault
from analysis.errors import DataError
from analysis.liqmap import LiquidationMap
from analysis.margin import Bracket, MarginTable
from analysis.model import ModelParams, ModelRun, _first_at_or_below, build_map, map_from_run, run_model
from analysis.model_state import ModelCache, ModelState, _plainly_valid
from analysis.sources import SAMPLE_PATH, read_bars_csv

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance-btcusdt-perp-5m.csv"
T0 = 1_780_000_000_000 - (1_780_000_000_000 % 300_000)

VARIANTS = {
    "default": ModelParams(),
    "grid": ModelParams(levels_per_hour=0),
    "vwap": ModelParams(entry_points=1),
    "range": ModelParams(open_bar_sweep="range"),
    "none": ModelParams(open_bar_sweep="none"),
    "no turnover": ModelParams(holding_days=0),  # bars whose OI falls open nothing: opening bars not contiguous
    "neutral": ModelParams(side_model="neutral"),
    "discrete": ModelParams(leverage_spread=0),
    "usd": ModelParams(oi_units="usd", turnover_activity=0),
}


def random_bars(seed: int, n: int, *, taker: bool = True, wicks: bool = False, symbol: str = "BTCUSDT",
                interval: str = "5m") -> Bars:
    """A random walk of ``n`` 5m bars with open interest that rises and falls."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.004, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1 + rng.exponential(0.002, n))
    low = np.minimum(open_, close) * (1 - rng.exponential(0.002, n))
    if wicks:  # bad prints the model clips
        bad = rng.random(n) < 0.02
        high = np.where(bad, high * 500, high)
    oi = 1e6 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    net = rng.normal(0, 50, n)
    step = {"5m": 300_000, "15m": 900_000, "1h": 3_600_000}[interval]
    t0 = T0 - T0 % step
    return Bars("test", symbol, interval, t0 + step * np.arange(n), open_, high, low, close, oi,
                taker_net=net if taker else None)


def assert_same_run(a: ModelRun, b: ModelRun) -> None:
    for name in ("t_long", "t_short", "log_c"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    for side in ("longs", "shorts"):
        for name in ("t0", "price", "weight", "tier"):
            x, y = getattr(getattr(a, side), name), getattr(getattr(b, side), name)
            assert x.dtype == y.dtype, (side, name)
            np.testing.assert_array_equal(x, y, err_msg=f"{side}.{name}")
    assert (a.info, a.gaps, a.clip_notes, a.params) == (b.info, b.gaps, b.clip_notes, b.params)
    for name in ("time", "open", "high", "low", "close", "oi_usd"):
        np.testing.assert_array_equal(getattr(a.bars, name), getattr(b.bars, name))


def assert_same_map(a: LiquidationMap, b: LiquidationMap) -> None:
    np.testing.assert_array_equal(a.long, b.long)
    np.testing.assert_array_equal(a.short, b.short)
    assert (a.grid_lo, a.bin_width, a.price, a.notes, a.params, a.tiers) == (b.grid_lo, b.bin_width, b.price, b.notes,
                                                                           b.params, b.tiers)
    assert a.swept is not None and b.swept is not None
    for name in ("time", "long", "short", "prior_long", "prior_short"):
        np.testing.assert_array_equal(getattr(a.swept, name), getattr(b.swept, name))


def walk(bars: Bars, params: ModelParams, window: int, steps: list[tuple[int, int]]) -> int:
    """Build a state on ``bars[0:window]``, then for each (drop, add) slide the window and compare the
    incremental run and map with a full rebuild. Returns how many updates were incremental."""
    lo, hi = 0, window
    state = ModelState(bars.slice(lo, hi), params)
    incremental = 0
    for drop, add in steps:
        if hi + add > len(bars):
            break
        new_lo = min(lo + drop, hi + add - params.min_bars)
        window_bars = bars.slice(new_lo, hi + add)
        run, update = state.update(window_bars)
        assert not update.rebuilt, update.reason
        assert (update.appended, update.dropped) == (add, new_lo - lo)
        lo, hi = new_lo, hi + add
        incremental += 1
        assert_same_run(run, run_model(window_bars, params))
        assert_same_map(map_from_run(run, params, window="w", now_ms=0), build_map(window_bars, params, window="w", now_ms=0))
    return incremental


# -- exactness ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(VARIANTS))
def test_sliding_window_matches_full_rebuild(name: str) -> None:
    params = VARIANTS[name]
    bars = random_bars(1, 700, wicks=True)
    steps = [(1, 1)] * 40 + [(0, 2), (3, 1), (2, 5), (0, 0)] * 10 + [(1, 1)] * 100  # past the buffer's capacity
    assert walk(bars, params, 300, steps) >= 150


@pytest.mark.parametrize("interval", ["15m", "1h"])
@pytest.mark.parametrize("name", ["default", "grid", "vwap"])
def test_other_intervals_match_full_rebuild(interval: str, name: str) -> None:
    # 15m: the live 30-day window; 1h: several lattice positions per tier and bar
    bars = random_bars(4, 400, interval=interval)
    assert walk(bars, VARIANTS[name], 200, [(1, 1)] * 30 + [(2, 3)] * 10) == 40


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    window=st.integers(12, 200),
    steps=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), min_size=1, max_size=25),
    variant=st.sampled_from(sorted(VARIANTS)),
    taker=st.booleans(),
    wicks=st.booleans(),
)
def test_property_k_appends_equal_full_rebuild(seed: int, window: int, steps: list[tuple[int, int]], variant: str,
                                               taker: bool, wicks: bool) -> None:
    bars = random_bars(seed, window + 4 * len(steps), taker=taker, wicks=wicks)
    walk(bars, VARIANTS[variant], window, steps)


def test_sample_data_thirty_days_one_bar_at_a_time() -> None:
    sample = read_bars_csv(SAMPLE_PATH, venue="binance", symbol="BTCUSDT")
    n = len(sample)
    assert walk(sample, ModelParams(), n - 60, [(1, 1)] * 60) == 60


@pytest.mark.skipif(not REAL.exists(), reason="../shared/data is not present")
def test_real_data_appends_equal_full_rebuild() -> None:
    real = read_bars_csv(REAL, venue="binance", symbol="BTCUSDT")
    window = len(real) - 40
    assert walk(real, ModelParams(), window, [(1, 1)] * 30 + [(0, 3), (2, 2), (1, 5)]) == 33


# -- the full rebuild's numpy fixes against the implementation before them ----------------------------

def _first_at_or_below_before(series: np.ndarray, start: np.ndarray, thresh: np.ndarray) -> np.ndarray:
    """The binary lifting as it was before the numpy fixes (the oracle)."""
    n = series.size
    out = np.full(start.size, n, dtype=np.int64)
    if n == 0 or start.size == 0:
        return out
    suffix_min = np.minimum.accumulate(series[::-1])[::-1]
    suffix_min = np.append(suffix_min, np.inf)
    live = np.nonzero(suffix_min[np.minimum(start, n)] <= thresh)[0]
    if live.size == 0:
        return out
    pos = start[live].astype(np.int64)
    th = thresh[live]
    levels = max(1, n.bit_length())
    tables = np.full((levels, n + 1), -np.inf)
    tables[0, :n] = series
    for k in range(1, levels):
        half, m = 1 << (k - 1), n - (1 << k) + 1
        np.minimum(tables[k - 1, :m], tables[k - 1, half : half + m], out=tables[k, :m])
    move = np.empty(pos.size, dtype=bool)
    for k in range(levels - 1, -1, -1):
        np.greater(tables[k].take(pos), th, out=move)
        np.add(pos, 1 << k, out=pos, where=move)
    out[live] = pos
    return out


_ODD = (0.0, -0.0, -1.0, 1.0, 100.0, 99.999, 100.001, 100.0000001, float("nan"), float("inf"), 1e-300)
_FIELDS = ("open", "high", "low", "close", "oi_usd", "volume", "quote_volume", "taker_buy", "taker_net")


def test_plain_check_of_new_rows_never_passes_what_bar_fault_refuses() -> None:
    """The update's quick validity check of its new rows is sound: it passes rows only when bar_fault
    finds nothing in them (it may refuse more: then bar_fault decides). Every pair of fields of a
    valid bar set to every pair of odd values, with and without the volume columns, and the times
    of two rows in every order."""
    base = {"open": 100.0, "high": 100.001, "low": 99.999, "close": 100.0, "oi_usd": 1e9, "volume": 5.0,
            "quote_volume": 500.0, "taker_buy": 2.0, "taker_net": -1.0}
    passed = refused = 0

    def check(row: dict[str, float], times: list[int], volumes: bool) -> None:
        nonlocal passed, refused
        cols: dict[str, np.ndarray | None] = {"time": np.array(times, dtype=np.int64)}
        for name in _FIELDS:
            cols[name] = np.full(len(times), row[name]) if volumes or name in _FIELDS[:5] else None
        if _plainly_valid(cols):
            passed += 1
            assert bar_fault(cols) is None, (row, times)
        else:
            refused += 1

    for i, f in enumerate(_FIELDS):
        for g in _FIELDS[i:]:
            for x in _ODD:
                for y in _ODD:
                    row = {**base, f: x}
                    row[g] = y if g != f else x
                    check(row, [T0], volumes=True)
                    check(row, [T0], volumes=False)
    for step in (-300_000, 0, 1, 300_000, 10**14):
        for start in (-1, 0, T0, 10**14 - 1):
            check(base, [start, start + step], volumes=True)
    assert passed and refused  # both ways taken


def test_plain_check_passes_ordinary_bars() -> None:
    bars = read_bars_csv(SAMPLE_PATH, venue="binance", symbol="BTCUSDT")
    cols = {name: getattr(bars, name) for name in ("time", "open", "high", "low", "close", "oi_usd", "volume",
                                                   "quote_volume", "taker_buy", "taker_net")}
    assert bar_fault(cols) is None
    ok = [_plainly_valid({k: (None if v is None else v[i : i + 2]) for k, v in cols.items()}) for i in range(len(bars) - 1)]
    assert np.mean(ok) > 0.99  # the quick path is the usual one; the rest goes to bar_fault


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), q=st.integers(0, 200), seed=st.integers(0, 2**31), ties=st.booleans())
def test_binary_lifting_equals_the_implementation_before_the_fixes(n: int, q: int, seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    series = rng.integers(0, 10, n).astype(float) if ties else rng.normal(size=n)
    start = rng.integers(0, n + 1, q).astype(np.int64)
    thresh = rng.integers(-1, 11, q).astype(float) if ties else rng.normal(size=q) * 1.5
    got = _first_at_or_below(series, start, thresh)
    np.testing.assert_array_equal(got, _first_at_or_below_before(series, start, thresh))
    for i in range(q):  # and the definition itself
        hits = [t for t in range(int(start[i]), n) if series[t] <= thresh[i]]
        assert got[i] == (hits[0] if hits else n)


# -- fallbacks, each with its reason -----------------------------------------------------------------

@pytest.fixture()
def built() -> tuple[Bars, ModelState]:
    bars = random_bars(7, 400)
    return bars, ModelState(bars.slice(0, 300), ModelParams())


def _rebuilt(state: ModelState, bars: Bars, params: ModelParams | None = None) -> str:
    run, update = state.update(bars, params)
    assert update.rebuilt
    assert_same_run(run, run_model(bars, params or ModelParams()))
    return update.reason


def test_revised_bar_rebuilds(built: tuple[Bars, ModelState]) -> None:
    bars, state = built
    nxt = bars.slice(1, 301)
    revised = replace(nxt, close=nxt.close.copy())
    revised.close[-2] *= 1.0001  # the bar before the new one was revised
    assert "revised bar" in _rebuilt(state, revised)


def test_gap_where_new_bars_join_rebuilds(built: tuple[Bars, ModelState]) -> None:
    bars, state = built
    idx = np.r_[0:300, 302:305]  # two bars missing after the cached ones
    cols = {k: getattr(bars, k)[idx] for k in ("time", "open", "high", "low", "close", "oi_usd")}
    assert bars.taker_net is not None
    joined = Bars(bars.venue, bars.symbol, bars.interval, cols.pop("time"), **cols, taker_net=bars.taker_net[idx])
    reason = _rebuilt(state, joined)
    assert "gap" in reason
    assert run_model(joined, ModelParams()).gaps  # and the rebuilt run notes the gap


def test_params_change_rebuilds(built: tuple[Bars, ModelState]) -> None:
    bars, state = built
    assert "parameters changed" in _rebuilt(state, bars.slice(1, 301), ModelParams(holding_days=7))


def test_margin_tiers_that_price_differently_rebuild(built: tuple[Bars, ModelState]) -> None:
    bars, state = built
    other = MarginTable("other", (Bracket(1e18, 125, 0.01),))
    assert "margin tiers" in _rebuilt(state, bars.slice(1, 301), ModelParams(margin_table=other))
    # a table object that prices the same steps extends the state
    same = MarginTable("other again", (Bracket(1e18, 125, 0.01),))
    _, update = state.update(bars.slice(2, 302), ModelParams(margin_table=same))
    assert not update.rebuilt


def test_too_many_new_bars_rebuild(built: tuple[Bars, ModelState]) -> None:
    bars, state = built
    assert "more than 64" in _rebuilt(state, bars.slice(0, 380))
    _, update = state.update(bars.slice(0, 390), max_append=20)
    assert not update.rebuilt and update.appended == 10


def test_window_that_moved_back_or_shrank_rebuilds(built: tuple[Bars, ModelState]) -> None:
    bars, state = built
    state.update(bars.slice(5, 305))
    assert "do not start inside" in _rebuilt(state, bars.slice(2, 305))
    assert "fewer bars" in _rebuilt(state, bars.slice(2, 290))


def test_other_symbol_rebuilds(built: tuple[Bars, ModelState]) -> None:
    _, state = built
    eth = random_bars(7, 301, symbol="ETHUSDT")
    assert "other venue, symbol" in _rebuilt(state, eth)


def test_invalid_new_bar_raises_the_full_rebuilds_error(built: tuple[Bars, ModelState]) -> None:
    bars, state = built
    nxt = bars.slice(1, 301)
    bad = replace(nxt, oi_usd=nxt.oi_usd.copy())
    bad.oi_usd[-1] = -1.0
    with pytest.raises(DataError, match="open interest must be positive"):
        state.update(bad)
    # the failed rebuild left no half-made state behind: the next good bars rebuild and match
    assert "incomplete" in _rebuilt(state, bars.slice(2, 302))


def test_same_bars_again_are_incremental_and_equal(built: tuple[Bars, ModelState]) -> None:
    bars, state = built
    run, update = state.update(bars.slice(0, 300))
    assert not update.rebuilt and (update.appended, update.dropped) == (0, 0)
    assert_same_run(run, run_model(bars.slice(0, 300), ModelParams()))


def test_runs_returned_earlier_are_not_changed_by_later_updates() -> None:
    bars = random_bars(3, 400)
    state = ModelState(bars.slice(0, 100), ModelParams())
    first, _ = state.update(bars.slice(1, 101))
    copies = {k: getattr(first.longs, k).copy() for k in ("price", "weight")} | {"t_long": first.t_long.copy()}
    for i in range(2, 250):  # several buffer moves
        state.update(bars.slice(i, 100 + i))
    for k, v in copies.items():
        now = first.t_long if k == "t_long" else getattr(first.longs, k)
        np.testing.assert_array_equal(now, v)


# -- the cache ---------------------------------------------------------------------------------------

def test_cache_builds_the_same_map_and_counts_incremental_updates() -> None:
    bars = random_bars(11, 400)
    cache = ModelCache()
    p = ModelParams()
    for i in range(20):
        b = bars.slice(i, 300 + i)
        assert_same_map(cache.build_map(("test", "BTCUSDT", "1d"), b, p, window="1d", now_ms=0),
                        build_map(b, p, window="1d", now_ms=0))
    assert (cache.incremental, cache.rebuilds, len(cache)) == (19, 0, 1)
    cache.build_map(("test", "BTCUSDT", "1d"), bars.slice(30, 330), ModelParams(holding_days=3), now_ms=0)
    assert cache.rebuilds == 1 and cache.last_update is not None and "parameters" in cache.last_update.reason


def test_cache_is_bounded_by_count_and_bytes() -> None:
    bars = random_bars(5, 300)
    by_count = ModelCache(max_states=2)
    for key in "abc":
        by_count.run(key, bars, ModelParams())
    assert len(by_count) == 2 and list(by_count._states) == ["b", "c"]
    one = ModelState(bars, ModelParams()).nbytes()
    by_bytes = ModelCache(max_bytes=int(one * 2.5))
    for key in "abcd":
        by_bytes.run(key, bars, ModelParams())
    assert len(by_bytes) == 2 and by_bytes.nbytes <= by_bytes.max_bytes
    assert by_bytes.nbytes == sum(size for _, size in by_bytes._states.values())
    none = ModelCache(max_states=0)
    none.run("a", bars, ModelParams())
    assert len(none) == 0 and none.nbytes == 0


def test_cache_bounds_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_states, max_bytes and max_append must be >= 0"):
        ModelCache(max_states=-1)


def test_cache_keeps_no_state_for_bars_that_fail() -> None:
    bars = random_bars(5, 300)
    cache = ModelCache()
    cache.run("k", bars, ModelParams())
    with pytest.raises(DataError):
        cache.run("k", bars.slice(0, 5), ModelParams())  # too short
    assert len(cache) == 0 and cache.nbytes == 0


def test_cache_serves_threads_at_once_exactly() -> None:
    bars = random_bars(9, 500)
    cache = ModelCache()
    p = ModelParams()
    errors: list[BaseException] = []

    def worker(key: str, offset: int) -> None:
        try:
            for i in range(offset, offset + 15):
                b = bars.slice(i, 300 + i)
                assert_same_run(cache.run(key, b, p), run_model(b, p))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k, o)) for k, o in (("a", 0), ("a", 0), ("b", 5), ("b", 20))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def test_a_bar_that_touches_a_level_exactly_sweeps_it() -> None:
    # 2x, no maintenance margin, entry at the typical price 100: longs at 50.0 and shorts at 150.0 exactly
    params = ModelParams(leverage=(2.0,), leverage_weights=(1.0,), leverage_spread=0, levels_per_hour=0, entry_points=1,
                         side_model="neutral", margin_table=MarginTable("zero", (Bracket(1e18, 200, 0.0),)))
    rows = [(100.0, 101.0, 99.0, 100.0, 1000.0 + 10 * i) for i in range(20)] + [(100.0, 150.0, 50.0, 100.0, 1300.0)]
    a = np.asarray(rows)
    bars = Bars("test", "BTCUSDT", "5m", T0 + 300_000 * np.arange(len(a)), *a.T)
    state = ModelState(bars.slice(0, 20), params)
    run, update = state.update(bars)
    assert not update.rebuilt
    assert np.all(run.longs.price[:-1] == 50.0) and np.all(run.shorts.price[:-1] == 150.0)
    assert np.all(run.t_long[:-1] == 20) and np.all(run.t_short[:-1] == 20)  # low == 50 and high == 150 reach them
    assert_same_run(run, run_model(bars, params))


# -- wired into the report service -------------------------------------------------------------------

class SlidingSource:
    """Random bars whose window moves on by one closed bar on every fetch."""

    def __init__(self) -> None:
        self.all = random_bars(21, 500)
        self.fetches = 0

    async def symbols(self) -> list[str]:
        return ["BTCUSDT"]

    async def bars(self, symbol: str, window: object) -> Bars:
        self.fetches += 1
        return self.all.slice(self.fetches, 288 + self.fetches)


async def test_report_service_extends_the_venue_models_incrementally() -> None:
    from analysis.report import ReportService
    from analysis.windows import parse_window

    src = SlidingSource()
    svc = ReportService({"test": src}, ttl=0, now_ms=lambda: 0)
    win = parse_window("1d")
    for _ in range(4):
        m, missing = await svc.maps("BTCUSDT", win, ("test",))
        assert not missing
        expected = build_map(src.all.slice(src.fetches, 288 + src.fetches), svc.params, window="1d", now_ms=0)
        np.testing.assert_array_equal(m.long, expected.long)
        np.testing.assert_array_equal(m.short, expected.short)
        assert m.notes == expected.notes
    assert (svc.models.incremental, svc.models.rebuilds, len(svc.models)) == (3, 0, 1)
