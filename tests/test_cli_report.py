"""``liqmap report`` end to end on the bundled sample, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bot.cli import main


def test_report_writes_three_files(tmp_path, capsys):
    assert main(["report", "--source", "sample", "--symbol", "BTCUSDT", "--window", "7d", "--out", str(tmp_path)]) == 0
    png = (tmp_path / "liqmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 1_000_000
    summary = (tmp_path / "summary.md").read_text()
    assert "BTCUSDT" in summary or "BTC" in summary
    data = json.loads((tmp_path / "liqmap.json").read_text())
    assert data["symbol"] == "BTCUSDT" and data["kind"] == "estimated" and data["window"] == "7d"
    assert data["levels"] and data["reading"]["skew"] in {"heavily_short", "short", "balanced", "long", "heavily_long"}
    assert all(lv["price_hi"] <= data["price"] or lv["long_usd"] == 0 for lv in data["levels"])
    assert all(lv["price_lo"] >= data["price"] or lv["short_usd"] == 0 for lv in data["levels"])
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--window", "2w"], "argument --window: invalid choice: '2w' (choose from '1d', '7d', '30d')"),
        (["--symbol", "ETH"], "only holds BTCUSDT"),
        (["--symbol", "<@1234>"], "is not a symbol"),
        (["--exchange", "kraken"], "argument --exchange: invalid choice: 'kraken' (choose from 'all', 'binance', "),
        (["--theme", "neon"], "argument --theme: invalid choice: 'neon' (choose from 'dark', 'light')"),
        (["--stack", "pile"], "argument --stack: invalid choice: 'pile'"),
        (["--exchange", "coinglass"], "coinglass is not available here: CoinGlass's own map; needs a CoinGlass API key"),
        (["--set", "holding_days=nan"], "holding_days: cannot read 'nan'; expected a finite number"),
        (["--set", "nonsense=1"], "cannot set 'nonsense=1'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--source", "nowhere"], "unknown source"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    code = main(["report", "--source", "sample", "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "content, message",
    [
        ("timestamp,open,high,low,close\n0,1,2,0.5,1\n300000,1,2,0.5,1\n", "missing column(s) oi_usd"),
        ("timestamp,open,high,low,close,oi_usd\n" + "".join(f"{i*300000},100,100,100,100,{1000+i}\n" for i in range(40)),
         "price never moves"),
        ("timestamp,open,high,low,close,oi_usd\n" + "".join(f"{i*300000},100,101,99,100,{1000+i}\n" for i in range(5)),
         "too short"),
        ("timestamp,open,high,low,close,oi_usd\n" + "".join(f"{i*300000},100,101,99,100,{0 if i == 7 else 1000+i}\n" for i in range(40)),
         "open interest must be positive"),
        ("timestamp,open,high,low,close,oi_usd\n" + "".join(f"{i*300000},100,101,99,100,{'' if i == 7 else 1000+i}\n" for i in range(40)),
         "oi_usd is missing or not a number"),
    ],
    ids=["missing-column", "flat", "too-short", "zero-oi", "nan"],
)
def test_bad_csv_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "bars.csv"
    path.write_text(content)
    code = main(["report", "--source", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_console_script_runs_as_a_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "report", "--source", "sample", "--window", "1d", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "liqmap.png").exists()


def test_a_closed_pipe_is_not_an_internal_error(monkeypatch, capsys):
    import bot.cli as cli

    def broken(args):
        raise BrokenPipeError

    add, _ = cli.COMMANDS["report"]
    monkeypatch.setitem(cli.COMMANDS, "report", (add, broken))
    assert main(["report", "--out", "x"]) == 0
    assert "internal error" not in capsys.readouterr().err


def test_an_unexpected_exception_gets_an_error_id_not_a_traceback(monkeypatch, capsys):
    import bot.cli as cli

    def bug(args):
        raise ZeroDivisionError("boom")

    add, _ = cli.COMMANDS["report"]
    monkeypatch.setitem(cli.COMMANDS, "report", (add, bug))
    assert main(["report", "--out", "x"]) == 1
    err = capsys.readouterr().err
    assert "unexpected internal error (id " in err and "Traceback" not in err.splitlines()[-1]


PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("view, files", [("map", {"liqmap.png"}), ("heatmap", {"heatmap.png"}),
                                         ("both", {"liqmap.png", "heatmap.png"})])
def test_view_chooses_which_pictures_are_written(tmp_path, capsys, view, files):
    out = tmp_path / "o"
    assert main(["report", "--source", "sample", "--window", "1d", "--view", view, "--out", str(out)]) == 0
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == files
    assert all((out / name).read_bytes().startswith(PNG) for name in files)
    assert (out / "summary.md").exists() and (out / "liqmap.json").exists()


def test_unknown_view_is_one_usage_error(tmp_path, capsys):
    assert main(["report", "--source", "sample", "--view", "table", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "table" in err
