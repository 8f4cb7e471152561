"""The SQLite bar cache: round trip, upsert, atomicity, persistence, meta values."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from analysis.errors import DataError
from analysis.sources.cache import BarCache, default_cache_path


def frame(times, *, oi=1e9, with_volume=True):
    t = np.asarray(times, dtype=np.int64)
    f = pd.DataFrame({"time": t, "open": 100.0 + t % 7, "high": 110.0 + t % 7, "low": 90.0, "close": 101.0, "oi_usd": oi})
    if with_volume:
        f["volume"] = 5.0
        f["taker_buy"] = 2.0
    return f


def test_roundtrip_and_last_time(tmp_path):
    c = BarCache(tmp_path / "c.sqlite3")
    assert c.last_time("binance", "BTCUSDT", "5m") is None
    assert c.load("binance", "BTCUSDT", "5m", 0).empty
    f = frame(range(0, 3_000_000, 300_000))
    assert c.store("binance", "BTCUSDT", "5m", f) == 10
    got = c.load("binance", "BTCUSDT", "5m", 0)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), f[got.columns].reset_index(drop=True), check_dtype=False)
    assert list(got.columns) == ["time", "open", "high", "low", "close", "oi_usd", "volume", "taker_buy"]
    assert got["time"].dtype == np.int64
    assert c.last_time("binance", "BTCUSDT", "5m") == 2_700_000
    assert c.first_time("binance", "BTCUSDT", "5m") == 0
    assert len(c.load("binance", "BTCUSDT", "5m", 1_500_000)) == 5
    assert len(c.load("binance", "BTCUSDT", "5m", 0, until_ms=600_000)) == 2
    # keys are separate
    assert c.last_time("binance", "BTCUSDT", "15m") is None and c.last_time("okx", "BTCUSDT", "5m") is None


def test_upsert_replaces_revised_bar(tmp_path):
    c = BarCache(None)
    c.store("b", "S", "5m", frame([0, 300_000]))
    revised = frame([300_000, 600_000])
    revised["close"] = 105.0
    c.store("b", "S", "5m", revised)
    got = c.load("b", "S", "5m")
    assert got["time"].tolist() == [0, 300_000, 600_000]
    assert got["close"].tolist() == [101.0, 105.0, 105.0]


@pytest.mark.parametrize("mutate, msg", [
    (lambda f: f.drop(columns=["oi_usd"]), "without column"),
    (lambda f: f.assign(close=[101.0, np.nan, 101.0]), "close is missing or not a number"),
    (lambda f: f.assign(oi_usd=[1.0, 0.0, 1.0]), "must be positive"),
    (lambda f: f.assign(oi_usd=[1.0, -1.0, 1.0]), "must be positive"),
    (lambda f: f.assign(time=[0, 0, 600_000]), "duplicate"),
    (lambda f: f.assign(time=[0, 600_000, 300_000]), "not sorted"),
    (lambda f: f.assign(time=[0.5, 300_000, 600_000]), "integer"),
    (lambda f: f.assign(volume=["1", "x", "2"]), "volume is missing or not a number"),
    (lambda f: f.assign(volume=[1.0, -2.0, 1.0]), "volume is negative"),
    (lambda f: f.assign(high=[110.0, 80.0, 110.0]), "high < low"),
    (lambda f: f.assign(close=[101.0, 120.0, 101.0]), "high below the open or close"),
    (lambda f: f.assign(open=[100.0, 89.0, 100.0]), "low above the open or close"),
    (lambda f: f.assign(low=[90.0, -1.0, 90.0]), "non-positive price"),
    (lambda f: f.assign(high=[110.0, np.inf, 110.0]), "high is missing or not a number"),
])
def test_bad_frame_writes_nothing(mutate, msg):
    c = BarCache(None)
    c.store("b", "S", "5m", frame([0, 300_000]))
    before = c.load("b", "S", "5m")
    with pytest.raises(DataError, match=msg):
        c.store("b", "S", "5m", mutate(frame([0, 300_000, 600_000])))
    pd.testing.assert_frame_equal(c.load("b", "S", "5m"), before)


def test_persists_across_instances_and_optional_columns(tmp_path):
    p = tmp_path / "sub" / "c.sqlite3"
    c = BarCache(p)
    c.store("b", "S", "5m", frame([0, 300_000], with_volume=False))
    c.close()
    c2 = BarCache(p)
    got = c2.load("b", "S", "5m")
    assert len(got) == 2 and "volume" not in got.columns
    c2.put_meta("symbols:b", ["BTCUSDT"], updated=123.0)
    c2.close()
    assert BarCache(p).get_meta("symbols:b") == (["BTCUSDT"], 123.0)
    assert BarCache(p).get_meta("nope") is None


def test_prune_and_count():
    c = BarCache(None)
    c.store("b", "S", "5m", frame(range(0, 3_000_000, 300_000)))
    assert c.prune("b", "S", "5m", 1_500_000) == 5
    assert c.count("b", "S", "5m") == 5


def test_concurrent_writers_from_threads(tmp_path):
    c = BarCache(tmp_path / "c.sqlite3")
    errors = []

    def work(k):
        try:
            c.store("b", f"S{k}", "5m", frame(range(0, 300_000 * 200, 300_000)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and all(c.count("b", f"S{k}", "5m") == 200 for k in range(8))


def test_unopenable_path_is_dataerror(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot open the bar cache"):
        BarCache(blocker / "c.sqlite3")


def test_default_path_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LIQMAP_CACHE_DIR", str(tmp_path))
    assert default_cache_path() == tmp_path / "bars.sqlite3"
