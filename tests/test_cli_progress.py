"""The CLI's finish: -v on either side of the subcommand, progress only on a terminal."""

from __future__ import annotations

import io

import pytest

from analysis.report import ReportService
from analysis.sources.registry import make_sources
from bot.cli import Progress, build_parser, main


@pytest.mark.parametrize("argv, verbose", [
    (["report", "--out", "o"], False),
    (["-v", "report", "--out", "o"], True),
    (["report", "--out", "o", "-v"], True),
    (["backtest", "--data", "f.csv", "--verbose"], True),
    (["-v", "health", "-v"], True),
])
def test_verbose_before_or_after_the_subcommand(argv, verbose):
    assert build_parser().parse_args(argv).verbose is verbose


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_silent_when_stderr_is_not_a_terminal():
    stream = io.StringIO()
    p = Progress(stream)
    p("fetching binance")
    p.done()
    assert stream.getvalue() == "" and not p.enabled


def test_progress_rewrites_one_line_on_a_terminal_and_clears_it():
    stream = Tty()
    p = Progress(stream)
    p("fetching binance BTCUSDT 7d")
    p("modelling")
    p.done()
    text = stream.getvalue()
    assert "\n" not in text
    assert text.startswith("\rliqmap: fetching binance BTCUSDT 7d …\rliqmap: modelling …")
    assert text.endswith("\r")  # cleared for what comes next


async def test_the_report_service_reports_each_slow_step():
    seen: list[str] = []
    service = ReportService(make_sources("sample"))
    await service.report("BTCUSDT", "1d", progress=seen.append)
    assert seen[0] == "fetching binance BTCUSDT 1d"
    assert seen[1].startswith("modelling binance (") and seen[-1] == "rendering the chart and text"
    seen.clear()
    await service.report("BTCUSDT", "1d", progress=seen.append)  # from the cache: nothing slow happened
    assert seen == []


def test_a_report_to_a_pipe_writes_no_progress(tmp_path, capsys):
    assert main(["report", "--source", "sample", "--window", "1d", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""


def test_backtest_reports_its_slow_steps():
    import asyncio

    import numpy as np

    from analysis.backtest import History, run_backtest
    from analysis.errors import DataError
    from analysis.sources.csvfile import SampleSource
    from analysis.windows import WINDOWS

    bars = asyncio.run(SampleSource().bars("BTCUSDT", WINDOWS["7d"]))
    zeros = np.zeros(len(bars))
    seen: list[str] = []
    # realized liquidations all zero: the run models the bars, then refuses to score them
    with pytest.raises(DataError, match="realized liquidations are zero"):
        run_backtest(History(bars, zeros, zeros.copy(), "zeros"), warmup="1d", progress=seen.append)
    assert seen == [f"modelling {len(bars):,} bars"]
