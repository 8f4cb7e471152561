"""One venue list (analysis/venues.py): every other list is derived from it."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from analysis import venues
from analysis.sources import http, registry
from bot import store
from bot.cli import build_parser
from bot.choices import exchange_choices

ROOT = Path(__file__).resolve().parent.parent


def _choices(command: str, option: str) -> tuple[str, ...]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if option in a.option_strings)
    return tuple(action.choices)


def test_every_exchange_list_equals_the_venue_module():
    names = tuple(v.name for v in venues.VENUES)
    assert names == ("binance", "bybit", "okx", "hyperliquid", "coinglass")  # the module itself, as shipped
    assert _choices("report", "--exchange") == ("all", *names)
    assert [c.value for c in exchange_choices(names)] == ["all", *names]
    assert [c.name for c in exchange_choices(names)] == ["All exchanges", *(v.display for v in venues.VENUES)]
    assert store.EXCHANGES == ("all", *names)
    estimated = tuple(v.name for v in venues.VENUES if v.kind == "estimated")
    assert _choices("record", "--exchange") == ("all", *estimated)
    assert http.LIVE_VENUES == estimated
    assert tuple(registry.LIVE_VENUES) == estimated
    assert {k: f"{m}:{c}" for k, (m, c) in registry.LIVE_VENUES.items()} == {
        v.name: v.source for v in venues.VENUES if v.kind == "estimated"}


def test_each_venue_factory_names_a_real_class():
    import importlib

    for v in venues.VENUES:
        assert isinstance(getattr(importlib.import_module(v.module), v.cls), type), v.source


def test_recorded_no_longer_imports_the_registry():
    code = ("import json, sys; import analysis.sources.recorded; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('analysis'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert "analysis.sources.recorded" in loaded and "analysis.sources.registry" not in loaded


def test_the_recorder_is_a_response_sink(tmp_path):
    from analysis.sources.recorded import Recorder

    sink: http.ResponseSink = Recorder(tmp_path / "r")
    sink.record("binance", "https://x/y", "/y", {}, 200, b"{}")
    assert (tmp_path / "r" / "manifest.json").is_file()
