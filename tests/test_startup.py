"""Startup weight: ``liqmap --help`` and the sample report import only what they use (no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HEAVY = ("discord", "sqlalchemy", "alembic", "pydantic", "pydantic_settings", "httpx", "scipy", "pandas",
         "matplotlib", "numpy", "jinja2")


def _modules_after(argv: list[str]) -> set[str]:
    """Modules imported by ``liqmap argv`` in a fresh interpreter, with their top-level packages."""
    code = (
        "import contextlib, io, json, sys\n"
        "from bot.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    names = set(json.loads(out.stdout.strip().splitlines()[-1]))
    return names | {n.split(".")[0] for n in names}


def test_help_imports_nothing_heavy():
    loaded = _modules_after(["--help"]) & set(HEAVY)
    assert not loaded, f"liqmap --help imported {sorted(loaded)}"


def test_report_help_imports_nothing_heavy():
    loaded = _modules_after(["report", "--help"]) & set(HEAVY)
    assert not loaded, f"liqmap report --help imported {sorted(loaded)}"


def test_sample_report_imports_only_the_chart_and_text_stack(tmp_path):
    loaded = _modules_after(["report", "--source", "sample", "--symbol", "BTC", "--window", "7d",
                             "--out", str(tmp_path)])
    assert {"numpy", "matplotlib", "jinja2"} <= loaded  # it did run
    # pydantic is expected: the report reads the bot's settings (.env included), like the bot does
    unexpected = loaded & {"discord", "sqlalchemy", "alembic", "httpx", "scipy", "pandas"}
    assert not unexpected, f"the sample report imported {sorted(unexpected)}"
    assert "matplotlib.pyplot" not in loaded
    assert (tmp_path / "liqmap.png").read_bytes()[:4] == b"\x89PNG"
