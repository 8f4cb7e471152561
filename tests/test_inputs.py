"""User input and files: symbols, windows, CSV reading and the bundled sample source."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.errors import DataError, InputError, LiqmapError
from analysis.model import ModelParams
from analysis.sources import SAMPLE_PATH, CsvSource, SampleSource, read_bars_csv
from analysis.sources.registry import make_sources
from analysis.symbols import parse_symbol, suggest
from analysis.windows import WINDOWS, parse_window

from conftest import run


@pytest.mark.parametrize("text", ["BTC", "btc", "BTCUSDT", "BTC/USDT", "BTC-USDT-SWAP", "btc-usdt", " BTCUSDT.P "])
def test_symbol_spellings_resolve_to_one_pair(text):
    p = parse_symbol(text)
    assert (p.base, p.quote, p.symbol, p.okx_swap) == ("BTC", "USDT", "BTCUSDT", "BTC-USDT-SWAP")


@pytest.mark.parametrize("text", ["", "BTC USDT", "<@123>", "@everyone", "BTC;DROP TABLE", "../etc", "a" * 40, "BTC/EUR"])
def test_bad_symbols_are_refused(text):
    with pytest.raises(InputError):
        parse_symbol(text)


def test_suggestions_are_close():
    assert suggest("BTCUSTD", ["BTCUSDT", "ETHUSDT", "BTCDOMUSDT"])[0] == "BTCUSDT"


@pytest.mark.parametrize("text", ["1d", "7D", " 30d "])
def test_windows(text):
    assert parse_window(text) is WINDOWS[text.strip().lower()]


@pytest.mark.parametrize("text", ["2d", "7", "", "1y"])
def test_unknown_window(text):
    with pytest.raises(InputError, match="choose one of 1d, 7d, 30d"):
        parse_window(text)


def test_sample_is_the_real_binance_data(sample_bars, shared_5m):
    assert len(sample_bars) == len(shared_5m) == 8014
    np.testing.assert_array_equal(sample_bars.time, shared_5m.time)
    np.testing.assert_array_equal(sample_bars.oi_usd, shared_5m.oi_usd)
    np.testing.assert_array_equal(sample_bars.taker_net, shared_5m.taker_net)


def test_sample_source_windows():
    src = SampleSource()
    day = run(src.bars("btc", WINDOWS["1d"]))
    assert len(day) == 288 and day.venue == "binance" and day.symbol == "BTCUSDT"
    month = run(src.bars("BTCUSDT", WINDOWS["30d"]))
    assert len(month) == 8014 and any("covers 27.8" in n for n in month.notes)
    with pytest.raises(InputError, match="only holds BTCUSDT"):
        run(src.bars("ETH", WINDOWS["1d"]))


def write_csv(path, text):
    path.write_text(text)
    return path


HEADER = "timestamp,open,high,low,close,oi_usd\n"


def test_csv_with_missing_column(tmp_path):
    p = write_csv(tmp_path / "x.csv", "timestamp,open,high,low,close\n1,1,1,1,1\n2,1,1,1,1\n")
    with pytest.raises(DataError, match="missing column\\(s\\) oi_usd"):
        read_bars_csv(p)


def test_csv_not_numbers_and_empty(tmp_path):
    with pytest.raises(DataError, match="holds no numbers"):
        read_bars_csv(write_csv(tmp_path / "a.csv", HEADER + "0,a,b,c,d,e\n300000,a,b,c,d,e\n"))
    with pytest.raises(DataError, match="not a readable CSV"):
        read_bars_csv(write_csv(tmp_path / "b.csv", ""))
    with pytest.raises(InputError, match="no such file"):
        read_bars_csv(tmp_path / "missing.csv")


def test_csv_duplicates_are_reported_by_validation(tmp_path):
    rows = "".join(f"{i * 300000},{100 + i},{101 + i},{99 + i},{100 + i},{1000 + i}\n" for i in range(20))
    rows += f"{19 * 300000},1,2,0.5,1,1000\n"
    bars = read_bars_csv(write_csv(tmp_path / "d.csv", HEADER + rows))
    with pytest.raises(DataError, match="duplicate timestamp"):
        bars.validate()


def test_csv_source_cuts_the_window_and_checks_the_symbol(tmp_path):
    with gzip.open(SAMPLE_PATH, "rt") as f:
        lines = f.read().splitlines()[:400]
    p = write_csv(tmp_path / "btc.csv", "\n".join(lines) + "\n")
    src = CsvSource(p, symbol="BTCUSDT")
    bars = run(src.bars("BTC", WINDOWS["1d"]))
    assert len(bars) == 288 and bars.interval == "5m" and bars.taker_net is not None
    with pytest.raises(InputError):
        run(src.bars("ETHUSDT", WINDOWS["1d"]))


def test_source_registry(tmp_path):
    assert list(make_sources("sample")) == ["binance"]
    with pytest.raises(InputError, match="unknown source"):
        make_sources("nowhere")
    with pytest.raises(InputError, match="no such file"):
        make_sources(str(tmp_path / "absent.csv"))


def _sample_lines(n: int) -> list[str]:
    with gzip.open(SAMPLE_PATH, "rt") as f:
        return f.read().splitlines()[: n + 1]


def test_csv_with_one_bar_high_of_1e11_maps_with_a_note(tmp_path):
    from analysis.report import ReportService

    lines = _sample_lines(400)
    header = lines[0].split(",")
    cells = lines[200].split(",")
    cells[header.index("high")] = "1e11"
    lines[200] = ",".join(cells)
    p = write_csv(tmp_path / "spike.csv", "\n".join(lines) + "\n")
    svc = ReportService(make_sources(str(p)))
    m, missing = run(svc.maps("BTCUSDT", WINDOWS["1d"], svc.venues))
    assert not missing and m.n_bins < 5_000
    assert any("1 bar(s) with a high more than 100x" in n and "1e+11" in n for n in m.notes)


# -- CSV cells that are not numbers: one clear line naming row and column --------------------------------

ROWS_OK = [f"{i * 300000},{100 + i % 3},{103 + i % 3},{98 + i % 3},{101 + i % 2},{1000 + 7 * i}" for i in range(20)]


@pytest.mark.parametrize("column, cell, message", [
    ("high", "9" * 400, "row 6: high is missing or not a number"),
    ("oi_usd", "1e999", "row 6: oi_usd is missing or not a number (oi_usd = inf)"),
    ("low", "inf", "row 6: low is missing or not a number (low = inf)"),
    ("close", "", "row 6: close is missing or not a number (close = empty or NaN)"),
    ("open", "abc", "row 6: open is missing or not a number (open = 'abc')"),
    ("open", "-0", "row 6: non-positive price (open)"),
    ("oi_usd", "-0", "row 6: open interest must be positive"),
    ("timestamp", "9" * 400, "row 6: timestamp is missing or not a number (timestamp = 999999999999... (a 400-digit number))"),
    ("timestamp", "1e300", "row 6: timestamp is not an epoch-ms timestamp"),
    ("timestamp", "1500000.5", "row 6: timestamp is not an epoch-ms timestamp"),
])
def test_a_bad_cell_is_one_data_error_naming_row_and_column(tmp_path, column, cell, message):
    rows = [r.split(",") for r in ROWS_OK]
    rows[5][HEADER.strip().split(",").index(column)] = cell
    p = write_csv(tmp_path / "bad.csv", HEADER + "".join(",".join(r) + "\n" for r in rows))
    with pytest.raises(DataError) as ei:
        read_bars_csv(p)
    assert str(ei.value).startswith("bad.csv: ") and message in str(ei.value) and "\n" not in str(ei.value)


_CELLS = st.one_of(
    st.sampled_from(["", "nan", "inf", "-inf", "1e999", "-0", "0", "9" * 400, "-" + "9" * 30, "abc", "1e-320",
                     "1e308", "1.7976931348623157e308", "0x10", " 7 ", "1,5", '"', "\u00e9", "NaN", "None"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(1e-3, 1e6).map(lambda x: f"{x:.6g}"),
)


@st.composite
def csv_text(draw):
    columns = draw(st.lists(st.sampled_from(["timestamp", "open", "high", "low", "close", "oi_usd", "volume",
                                             "taker_net_vol_btc", "x"]), min_size=1, max_size=9, unique=True))
    n = draw(st.integers(0, 16))
    base = [{"timestamp": str(i * 300000), "open": "100", "high": "102", "low": "99", "close": "101",
             "oi_usd": str(1000 + i), "volume": "5", "taker_net_vol_btc": "1", "x": "a"} for i in range(n)]
    for row in base:
        for c in columns:
            if draw(st.integers(0, 9)) == 0:
                row[c] = draw(_CELLS)
    return ",".join(columns) + "\n" + "".join(",".join(r[c] for c in columns) + "\n" for r in base)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=csv_text())
def test_fuzzed_csv_either_maps_or_is_one_liqmap_error(tmp_path, text):
    from analysis.metrics import read
    from analysis.model import build_map

    p = tmp_path / "fuzz.csv"
    p.write_text(text, encoding="utf-8")
    try:
        m = build_map(read_bars_csv(p), ModelParams(min_bars=3), now_ms=0)
        read(m)
        m.to_json()
    except LiqmapError as exc:
        assert str(exc) and "\n" not in str(exc)


@pytest.mark.parametrize(
    "text, symbol",
    [
        ("\u212aAS", "KASUSDT"),  # Kelvin sign, a look-alike of K
        ("\uff22\uff34\uff23", "BTCUSDT"),  # fullwidth BTC
        ("\uff42\uff54\uff43/\uff55\uff53\uff44\uff54", "BTCUSDT"),
        ("BTC\u00a0", "BTCUSDT"),  # no-break space is whitespace after NFKC
    ],
)
def test_look_alike_letters_normalise_to_ascii(text, symbol):
    p = parse_symbol(text)
    assert p.symbol == symbol and p.symbol.isascii() and p.base.isascii() and p.quote.isascii()


@pytest.mark.parametrize(
    "text",
    ["BT\u200dC", "\u200bBTC", "BTC\u200c", "\u200fBTC", "\u202eBTC", "BTC\u2066", "\u0392TC", "\u0411TC", "BTC\ufeff"],
    ids=["zwj", "zwsp", "zwnj", "rlm", "rlo", "lri", "greek-beta", "cyrillic", "bom"],
)
def test_invisible_and_foreign_characters_are_refused_and_shown_escaped(text):
    with pytest.raises(InputError, match="is not a symbol") as err:
        parse_symbol(text)
    assert str(err.value).isascii()  # escaped: a direction mark cannot reorder the message
