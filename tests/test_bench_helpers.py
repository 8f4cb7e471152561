"""The benchmark helpers: the calibration line and the section writer (no timings are asserted)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is a folder of the checkout, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import calibrate  # noqa: E402
from bench.doc import write_section  # noqa: E402
from bench.heatmap import interleaved_ms  # noqa: E402

LINE = re.compile(r"^calibration: numpy (\S+) cumsum ([\d.]+)( / [\d.]+)? ms, python loop (\S+) adds ([\d.]+)"
                  r"( / [\d.]+)? ms \(median of (\d+)(, start / end of the run)?\)$")


def small() -> calibrate.Calibration:
    return calibrate.Calibration(repeat=3, numpy_n=10_000, loop_n=1_000)


def test_calibration_line_names_sizes_and_medians():
    cal = small()
    m = LINE.match(cal.line())
    assert m, cal.line()
    assert (m.group(1), m.group(4), m.group(7)) == ("1e4", "1e3", "3")
    assert m.group(3) is None and m.group(8) is None  # no end timing yet
    assert float(m.group(2)) == round(cal.start.numpy_ms, 1) and cal.start.loop_ms > 0
    cal.finish()
    m = LINE.match(cal.line())
    assert m and m.group(3) and m.group(6) and m.group(8)
    assert cal.end is not None and m.group(6) == f" / {cal.end.loop_ms:.1f}"


def test_default_sizes_are_the_documented_ones():
    assert (calibrate.NUMPY_N, calibrate.LOOP_N) == (10_000_000, 1_000_000)
    assert calibrate._size(10_000_000) == "1e7" and calibrate._size(1_500) == "1,500"


def test_section_starts_with_its_calibration_and_leaves_the_others(tmp_path):
    doc = tmp_path / "benchmarks.md"
    cal = small().finish()
    write_section("a", "Section A", "python -m bench.a", "| x |\n|---|\n| 1 |", cal, doc=doc)
    write_section("b", "Section B", "python -m bench.b", "body b", cal, doc=doc)
    write_section("a", "Section A", "python -m bench.a", "new a", cal, doc=doc)
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks") and text.count("<!-- bench:a -->") == 1 and "| 1 |" not in text
    for name in ("a", "b"):
        section = text.split(f"<!-- bench:{name} -->\n", 1)[1].split(f"<!-- /bench:{name} -->", 1)[0]
        lines = section.splitlines()
        assert lines[0].startswith("## Section") and lines[1] == "" and lines[2] == cal.line()
        assert lines[4].startswith("Command: `python -m bench.")
    assert text.index("new a") < text.index("body b")  # replaced in place, not appended


def test_interleaved_runs_every_case_each_round():
    calls: list[str] = []
    out = interleaved_ms({"x": lambda: calls.append("x"), "y": lambda: calls.append("y")}, repeat=3, warmup=1)
    assert set(out) == {"x", "y"} and all(v >= 0 for v in out.values())
    assert calls == ["x", "y"] * 4


def test_startup_keeps_other_labels_rows_and_replaces_its_own(tmp_path):
    from bench import startup

    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        "<!-- bench:startup -->\n## Startup\n\n| run | a |\n|---|---:|\n"
        "| before (0527c9c) (tree /tmp/b, 2026-12-02 07:00Z) | 1 |\n| after (abc, 2026-12-02 07:01Z) | 2 |\n"
        "| after-rerun (abc, 2026-12-02 07:02Z) | 3 |\n<!-- /bench:startup -->\n", encoding="utf-8")
    assert startup.earlier_rows("after", doc) == [
        "| before (0527c9c) (tree /tmp/b, 2026-12-02 07:00Z) | 1 |", "| after-rerun (abc, 2026-12-02 07:02Z) | 3 |"]
    assert len(startup.earlier_rows("before (0527c9c)", doc)) == 2
