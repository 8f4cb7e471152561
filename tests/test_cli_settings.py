"""``liqmap report`` reads the bot's settings (.env included) and publishes model overrides."""

from __future__ import annotations

import json

import httpx
import pytest

from analysis.sources import registry
from bot.cli import main
from bot.settings import load_settings


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No settings from the test runner's environment; the default cache dir points somewhere else."""
    for name in ("LIQMAP_CACHE_DIR", "LIQMAP_SOURCE", "LIQMAP_MODEL", "COINGLASS_API_KEY", "CACHE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


def test_cache_dir_from_env_file_reaches_the_live_report(clean_env, monkeypatch, capsys):
    tmp = clean_env
    env = tmp / "my.env"
    env.write_text(f"LIQMAP_CACHE_DIR={tmp / 'from-dotenv'}\n")
    real = registry.live_sources
    monkeypatch.setattr(registry, "live_sources", lambda **kw: real(
        **{**kw, "transport": httpx.MockTransport(lambda r: httpx.Response(503))}))  # offline: every venue is down
    code = main(["report", "--source", "live", "--env-file", str(env), "--out", str(tmp / "out")])
    assert code == 2 and "every venue failed" in capsys.readouterr().err
    assert (tmp / "from-dotenv" / "bars.sqlite3").is_file()
    assert not (tmp / "xdg" / "liqmap" / "bars.sqlite3").exists()


def test_source_comes_from_the_settings_unless_given(clean_env, capsys):
    tmp = clean_env
    env = tmp / "my.env"
    env.write_text("LIQMAP_SOURCE=nasdaq\n")
    assert main(["report", "--env-file", str(env), "--out", str(tmp / "o")]) == 2
    assert "unknown source 'nasdaq'" in capsys.readouterr().err
    assert main(["report", "--env-file", str(env), "--source", "sample", "--window", "1d", "--out", str(tmp / "o")]) == 0


def test_liqmap_model_and_set_reach_the_json_and_the_footer(clean_env, capsys):
    tmp = clean_env
    env = tmp / "my.env"
    env.write_text('LIQMAP_MODEL="holding_days=7, leverage_spread=0.3"\n')
    out = tmp / "out"
    code = main(["report", "--source", "sample", "--window", "1d", "--env-file", str(env), "--set", "oi_scale=2",
                 "--set", "leverage_spread=0.2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "liqmap.json").read_text())
    assert data["params"]["holding_days"] == 7.0 and data["params"]["oi_scale"] == 2.0
    assert data["non_default_params"] == {"holding_days": 7.0, "leverage_spread": 0.2, "oi_scale": 2.0}  # --set wins
    footer = (out / "summary.md").read_text().strip().splitlines()[-1]
    assert "model: leverage_spread=0.2, holding_days=7, oi_scale=2" in footer  # in ModelParams field order


def test_defaults_show_no_model_line(clean_env):
    out = clean_env / "out"
    assert main(["report", "--source", "sample", "--window", "1d", "--env-file", str(clean_env / "none.env"),
                 "--out", str(out)]) == 0
    assert json.loads((out / "liqmap.json").read_text())["non_default_params"] == {}
    assert "model:" not in (out / "summary.md").read_text()


@pytest.mark.parametrize("value, message", [
    ("holding_days=nan", "invalid settings: LIQMAP_MODEL: holding_days: cannot read 'nan'; expected a finite number"),
    ("holding_dayz=7", "invalid settings: LIQMAP_MODEL: cannot set 'holding_dayz=7'"),
    ("entry_points=two", "LIQMAP_MODEL: entry_points: cannot read 'two'; expected an integer"),
])
def test_a_bad_liqmap_model_is_one_error_line(clean_env, capsys, value, message):
    env = clean_env / "my.env"
    env.write_text(f"LIQMAP_MODEL={value}\n")
    assert main(["report", "--source", "sample", "--env-file", str(env), "--out", str(clean_env / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    with pytest.raises(Exception, match="LIQMAP_MODEL"):
        load_settings(env)


def test_the_bot_service_uses_the_same_model_settings(clean_env, monkeypatch):
    from analysis.model import ModelParams
    from bot.app import build_service

    monkeypatch.setenv("LIQMAP_MODEL", "holding_days=7; leverage=5,10, leverage_weights=1,1")
    service = build_service(load_settings(None, source="sample"))
    assert service.params == ModelParams(holding_days=7, leverage=(5.0, 10.0), leverage_weights=(1.0, 1.0))


def test_record_reads_the_settings_too(clean_env, capsys):
    env = clean_env / "my.env"
    env.write_text("LIQMAP_MODEL=holding_days=-3\n")
    assert main(["record", "--env-file", str(env), "--out", str(clean_env / "rec")]) == 2
    assert "LIQMAP_MODEL: holding_days must be a finite number >= 0" in capsys.readouterr().err
    assert not (clean_env / "rec").exists()
