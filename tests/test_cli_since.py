"""``liqmap report --since``: what changed since an earlier report, and its one-line refusals."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from analysis.sources import SAMPLE_PATH
from bot.cli import main


@pytest.fixture(scope="module")
def two_days(tmp_path_factory):
    """Two CSV files of the bundled real data: ending a day apart (the second has 288 more 5m bars)."""
    lines = gzip.decompress(SAMPLE_PATH.read_bytes()).decode().splitlines()
    d = tmp_path_factory.mktemp("csv")
    (d / "yesterday").mkdir()
    (d / "today").mkdir()
    # the same file name: a CSV source's venue is named after its file, and the venues must match
    (d / "yesterday" / "binance.csv").write_text("\n".join(lines[:-288]) + "\n")
    (d / "today" / "binance.csv").write_text("\n".join(lines) + "\n")
    return d / "yesterday" / "binance.csv", d / "today" / "binance.csv"


def report(src, out, *extra):
    return main(["report", "--source", str(src), "--window", "7d", "--out", str(out), *extra])


def test_since_a_day_earlier_report_says_what_changed(tmp_path, capsys, two_days):
    yesterday, today = two_days
    assert report(yesterday, tmp_path / "y") == 0
    before = json.loads((tmp_path / "y" / "liqmap.json").read_text())
    assert before["record"]["format"] == "liqmap.reading" and "change" not in before
    assert report(today, tmp_path / "t", "--since", str(tmp_path / "y" / "liqmap.json")) == 0
    summary = (tmp_path / "t" / "summary.md").read_text()
    assert "**Since the last report (data to 2026-06-21 11:45 UTC)**" in summary
    assert "• Shorts within +5%:" in summary and "• Longs within −5%:" in summary and "• Skew:" in summary
    change = json.loads((tmp_path / "t" / "liqmap.json").read_text())["change"]
    assert change["since"] == "2026-06-21T11:45Z" and change["until"] == "2026-06-22T11:45Z"
    assert change["sweeps_checked_from"] == "2026-06-21T11:45Z" and change["sweep_note"] is None
    prev = before["reading"]
    assert change["totals"]["short"]["before_usd"] == prev["cumulative"]["0.05"]["short_usd"]
    # every swept cluster really was traded through by the day's bars (the 288 bars after yesterday's end)
    lines = today.read_text().splitlines()[-288:]
    low = min(float(x.split(",")[4]) for x in lines)
    high = max(float(x.split(",")[3]) for x in lines)
    for s in change["swept"]:
        assert (s["side"] == "long" and s["extreme"] == low <= s["price"]) or \
               (s["side"] == "short" and s["extreme"] == high >= s["price"])
    for c in prev["clusters"]:
        if c["significant"] and (c["side"] == "long" and low <= c["price"] or c["side"] == "short" and high >= c["price"]):
            assert any(s["price"] == round(c["price"], 8) for s in change["swept"])
            assert f"around ${c['price']:,.0f} (price" in summary
    # the directory works as well as the file
    assert report(today, tmp_path / "t2", "--since", str(tmp_path / "y")) == 0
    assert json.loads((tmp_path / "t2" / "liqmap.json").read_text())["change"] == change
    capsys.readouterr()


def test_since_last_reads_the_report_in_the_output_directory_before_replacing_it(tmp_path, capsys, two_days):
    yesterday, today = two_days
    out = tmp_path / "daily"
    assert report(yesterday, out) == 0
    assert report(today, out, "--since", "last") == 0
    assert json.loads((out / "liqmap.json").read_text())["change"]["since"] == "2026-06-21T11:45Z"
    assert report(today, tmp_path / "empty", "--since", "last") == 2
    assert "no such file" in capsys.readouterr().err


def err_of(capsys, code):
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("content, message", [
    (b"not json at all", "is not valid JSON"),
    (b"", "is not valid JSON"),
    (b"\xff\xfe\x00", "is not valid JSON"),
    (b"[1, 2]", "is not a liqmap.json report"),
    (b'{"symbol": "BTCUSDT", "levels": []}', "has no reading record"),
    (b'{"record": {"format": "liqmap.reading", "version": 9}}', "version: 9 is not supported"),
    (b'{"record": 5}', "record: expected an object, got int"),
])
def test_garbage_since_file_is_one_input_error(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    line = err_of(capsys, main(["report", "--source", "sample", "--out", str(tmp_path / "o"), "--since", str(bad)]))
    assert message in line and str(bad) in line
    assert not (tmp_path / "o").exists()  # refused before anything was built or written


def test_since_a_report_of_another_symbol_or_with_a_broken_record(tmp_path, capsys):
    assert main(["report", "--source", "sample", "--window", "1d", "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    doc = json.loads((tmp_path / "a" / "liqmap.json").read_text())
    doc["record"]["symbol"] = "ETHUSDT"
    (tmp_path / "eth.json").write_text(json.dumps(doc))
    line = err_of(capsys, main(["report", "--source", "sample", "--out", str(tmp_path / "o"),
                                "--since", str(tmp_path / "eth.json")]))
    assert "is a report for 'ETHUSDT', not BTCUSDT" in line
    doc["record"]["symbol"] = "BTCUSDT"
    doc["record"]["cum_short"][0] = 1e300
    (tmp_path / "huge.json").write_text(json.dumps(doc))
    line = err_of(capsys, main(["report", "--source", "sample", "--out", str(tmp_path / "o"),
                                "--since", str(tmp_path / "huge.json")]))
    assert "cum_short[0]: 1e+300 is outside" in line


def test_since_a_too_big_file_a_fifo_or_nothing(tmp_path, capsys, monkeypatch):
    import bot.cli as cli

    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2048)
    monkeypatch.setattr(cli, "MAX_SINCE_BYTES", 1024)
    line = err_of(capsys, main(["report", "--source", "sample", "--out", str(tmp_path / "o"), "--since", str(big)]))
    assert "over the limit of 1024" in line
    os.mkfifo(tmp_path / "fifo.json")
    line = err_of(capsys, main(["report", "--source", "sample", "--out", str(tmp_path / "o"),
                                "--since", str(tmp_path / "fifo.json")]))
    assert "not a regular file" in line
    line = err_of(capsys, main(["report", "--source", "sample", "--out", str(tmp_path / "o"),
                                "--since", str(tmp_path / "nothing.json")]))
    assert "no such file" in line
