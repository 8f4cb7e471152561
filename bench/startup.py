"""Startup benchmark (``python -m bench.startup``): wall time of ``liqmap`` as a fresh process.

Times ``liqmap --help`` and ``liqmap report --source sample --symbol BTC --window 7d`` as
subprocesses (median of ``--runs``), next to ``python -c pass`` (the interpreter alone) and a
calibration measured in the same run (bench/calibrate.py), so figures from different days or
machines can be compared by ratio. Each run is one row of the
section's table, kept under its ``--label`` (a later run with the same label replaces it), so the
"before" and "after" rows of a change sit side by side. Also lists the largest imports of the
report (``python -X importtime``, cumulative).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from .calibrate import Calibration
from .doc import DOC, write_section

ROOT = Path(__file__).resolve().parent.parent
NAME = "startup"
TITLE = "Startup: wall time of a fresh `liqmap` process"
COMMAND = "python -m bench.startup"
ROW = re.compile(r"^\| (?P<label>[^|]+?) \|.*\|$")
TABLE_HEAD = (
    "| run | numpy pass | Python loop | `python -c pass` | `liqmap --help` | sample report |\n"
    "|---|---:|---:|---:|---:|---:|"
)


def liqmap_command() -> list[str]:
    """The installed console script next to this interpreter, else the same entry point via ``-c``."""
    script = Path(sys.executable).parent / "liqmap"
    if script.exists():
        return [str(script)]
    found = shutil.which("liqmap")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from bot.cli import main; sys.exit(main())"]


def timed(cmd: list[str], runs: int, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Median wall and CPU (user + system) ms of ``cmd`` as a subprocess, one untimed warm-up run first.

    CPU time is the child's own, so it moves less than wall time when the machine is shared.
    """
    walls, cpus = [], []
    for i in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if i:
            walls.append(wall)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000


def largest_imports(cmd: list[str], env: dict[str, str], n: int = 8) -> list[tuple[str, float]]:
    """The ``n`` largest top-level imports (cumulative ms) of ``cmd`` under ``python -X importtime``."""
    env = dict(env, PYTHONPROFILEIMPORTTIME="1")
    res = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         check=True)
    rows = []
    for line in res.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(2)) <= 1:  # top level: one space after the bar
            rows.append((m.group(3), int(m.group(1)) / 1000))
    return sorted(rows, key=lambda r: -r[1])[:n]


def revision(tree: Path | None = None) -> str:
    """Short commit of the working tree, with ``+changes`` when it differs from that commit."""
    if tree is not None:
        return f"tree {tree}"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!docs/benchmarks.md"],  # this file is what the benches write
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+changes" if dirty else "")


def earlier_rows(label: str, doc: Path = DOC) -> list[str]:
    """Rows of the section's table from earlier runs under other labels."""
    if not doc.exists():
        return []
    text = doc.read_text(encoding="utf-8")
    m = re.search(rf"<!-- bench:{NAME} -->(.*?)<!-- /bench:{NAME} -->", text, re.S)
    if not m:
        return []
    rows = []
    for line in m.group(1).splitlines():
        r = ROW.match(line)
        mine = r is not None and (r.group("label") == label or r.group("label").startswith(label + " ("))
        if r and not mine and not line.startswith(("| run ", "|---")):
            rows.append(line)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.startup")
    ap.add_argument("--runs", type=int, default=9, help="timed runs per command (median reported)")
    ap.add_argument("--label", default="current", help="name of this run's row, e.g. before or after")
    ap.add_argument("--tree", type=Path, default=None,
                    help="run the code of another checkout (e.g. `git archive REV | tar -x -C DIR`) via PYTHONPATH")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = ap.parse_args(argv)

    liqmap = liqmap_command()
    env = dict(os.environ)
    if args.tree is not None:
        env["PYTHONPATH"] = str(args.tree.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        report = liqmap + ["report", "--source", "sample", "--symbol", "BTC", "--window", "7d", "--out", tmp]
        cal = Calibration()
        bare, bare_cpu = timed([sys.executable, "-c", "pass"], args.runs)
        helps, helps_cpu = timed(liqmap + ["--help"], args.runs, env)
        rep, rep_cpu = timed(report, args.runs, env)
        cal.finish()  # again after: a busy machine shows as a spread here
        imports = largest_imports(report, env)

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%MZ")
    start, end = cal.start, cal.end or cal.start
    row = (f"| {args.label} ({revision(args.tree)}, {stamp}) | {start.numpy_ms:.0f} / {end.numpy_ms:.0f} ms "
           f"| {start.loop_ms:.0f} / {end.loop_ms:.0f} ms | {bare:.0f} ms ({bare_cpu:.0f}) | {helps:.0f} ms ({helps_cpu:.0f}) "
           f"| {rep:.0f} ms ({rep_cpu:.0f}) |")
    rows = earlier_rows(args.label) + [row]
    body = "\n".join([
        "Wall time of a fresh process, median of "
        f"{args.runs} runs after one warm-up, output to /dev/null; in brackets the process's own CPU time "
        "(user + system, median), which a shared machine inflates less than wall time. Each row carries its own "
        "run's calibration (bench/calibrate.py), timed before and after the commands (before / after): *numpy pass* "
        "is a cumsum of 1e7 floats, *Python loop* is 1e6 integer adds; compare rows by their ratio to these. *Sample report* is `liqmap report --source sample --symbol BTC --window 7d --out TMP` "
        "(read the bundled CSV, model, chart PNG, text, JSON). Target: sample report <= 1.0 s.",
        "",
        TABLE_HEAD,
        *rows,
        "",
        f"Largest top-level imports of the sample report in the latest run ({args.label}; `-X importtime`, "
        "cumulative, one run): " + ", ".join(f"{name} {ms:.0f} ms" for name, ms in imports) + ".",
    ])
    print(body)
    if not args.no_write:
        write_section(NAME, TITLE, COMMAND, body, cal)
        print("\nwrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
