"""Write one benchmark's section into docs/benchmarks.md, leaving the other sections alone."""

from __future__ import annotations

import platform
import re
from datetime import datetime, timezone
from pathlib import Path

from .calibrate import Calibration

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Every figure below was measured by the command shown in its section, on the machine named there.
They are medians over repeated runs; machines are noisy, so treat them as orders of magnitude and
compare ratios within one run. Re-run the command to refresh a section (it rewrites only its own).
Each section starts with its run's calibration line (bench/calibrate.py): one fixed numpy pass and
one fixed pure-Python loop, timed in the same process at the start and at the end of the run, so
sections from different days or machines compare by their ratio to these. The machine these were
measured on has 2 CPUs shared with other jobs; a start/end spread in a calibration line shows a
busy spell during that run.
"""


def machine() -> str:
    """A one-line description of where the figures were measured."""
    import os

    return f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPU(s), {platform.machine()}"


def write_section(name: str, title: str, command: str, body: str, calibration: Calibration,
                  doc: Path = DOC) -> None:
    """Replace (or append) the section delimited by ``<!-- bench:name -->`` markers; it starts with
    the run's calibration line (timed at the start of the run and, when finished, at its end)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%MZ")
    block = (
        f"<!-- bench:{name} -->\n## {title}\n\n{calibration.line()}\n\n"
        f"Command: `{command}` · measured {stamp} on {machine()}\n\n"
        f"{body.strip()}\n<!-- /bench:{name} -->"
    )
    text = doc.read_text(encoding="utf-8") if doc.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")
