"""Bot settings: sections from env and .env, defaults, refusals, and secrets that never leak."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from analysis.errors import InputError
from bot.settings import default_database_url, load_settings, redact_url

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GhIjKl.very-secret-token-value"
KEY = "cg-0123456789abcdef-secret"

ENV_NAMES = (
    "DISCORD_TOKEN", "DEV_GUILD_ID", "LIQMAP_METHOD_URL", "DATABASE_URL", "LIQMAP_SOURCE", "COINGLASS_API_KEY", "LIQMAP_CACHE_DIR", "LIQMAP_MODEL",
    "LIQMAP_DAILY_GRACE_MINUTES", "LIQMAP_DELIVERY_RETENTION_DAYS", "LIQMAP_WATCH_INTERVAL_MINUTES",
    "LIQMAP_GUILD_SUBSCRIPTION_CAP", "LIQMAP_REPORT_TTL_SECONDS", "LIQMAP_REPORT_CACHE_MB", "LIQMAP_COOLDOWN_USES",
    "LIQMAP_COOLDOWN_SECONDS", "LIQMAP_DISCORD_POSTS_PER_SECOND", "LIQMAP_BINANCE_OI_PER_5M", "LIQMAP_BINANCE_OI_MARGIN",
    "LIQMAP_COOLDOWN_SECONDS", "LIQMAP_RENDER_WORKERS", "LIQMAP_RENDER_QUEUE", "LIQMAP_RENDER_WAIT_SECONDS",
    "LIQMAP_RENDER_TIMEOUT_SECONDS",
    "LIQMAP_TAPE", "LIQMAP_TAPE_VENUES", "LIQMAP_TAPE_SYMBOLS", "LIQMAP_TAPE_RETENTION_DAYS",
    "LIQMAP_TAPE_URL_BYBIT", "LIQMAP_TAPE_URL_BINANCE", "LIQMAP_TAPE_URL_OKX",
    "LIQMAP_SHARD_COUNT", "LIQMAP_SHARD_IDS", "LIQMAP_DISPATCHER", "LIQMAP_REDIS_URL", "LIQMAP_REDIS_PREFIX",
    "LIQMAP_REDIS_TIMEOUT",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ENV_NAMES + ("LIQMAP_DATA_DIR", "STATE_DIRECTORY", "XDG_STATE_HOME", "CACHE_DIRECTORY", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)  # (the directory variables, in case CI runs under systemd)
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's checkout


def test_defaults_without_any_configuration():
    s = load_settings(None)
    assert s.discord.token is None and not s.discord.has_token and s.discord.dev_guild_id is None
    assert s.database.url == default_database_url() and s.database.url.startswith("sqlite+aiosqlite:///")
    assert s.sources.source == "live" and not s.sources.has_coinglass and s.sources.cache_dir is None
    assert s.sources.state_dir == Path.home() / ".cache" / "liqmap"
    sch = s.schedule
    assert (sch.watch_interval_minutes, sch.guild_subscription_cap) == (15.0, 25)
    assert sch.daily_grace_minutes > 0 and sch.report_ttl_seconds > 0 and sch.cooldown_seconds > 0


def test_reads_dotenv_and_environment_wins(tmp_path, monkeypatch):
    env = tmp_path / ".env"
    env.write_text(
        f"DISCORD_TOKEN={TOKEN}\nDEV_GUILD_ID=123456789012345678\nLIQMAP_SOURCE=sample\n"
        "LIQMAP_GUILD_SUBSCRIPTION_CAP=7\nLIQMAP_COOLDOWN_SECONDS=12\n# a comment\nUNRELATED=1\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("LIQMAP_GUILD_SUBSCRIPTION_CAP", "9")
    s = load_settings(env)
    assert s.discord.token.get_secret_value() == TOKEN and s.discord.has_token
    assert s.discord.dev_guild_id == 123456789012345678
    assert s.sources.source == "sample"
    assert s.schedule.guild_subscription_cap == 9  # the environment overrides .env
    assert s.schedule.cooldown_seconds == 12.0
    assert load_settings(".env").discord.dev_guild_id == 123456789012345678  # relative to the working dir


def test_missing_env_file_is_fine():
    assert load_settings("does-not-exist.env").discord.token is None


def test_secrets_never_show_in_repr_str_dicts_or_logs(monkeypatch, caplog):
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("COINGLASS_API_KEY", KEY)
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://liqmap:pg-password-123@db:5432/liqmap")
    s = load_settings(None)
    assert s.sources.has_coinglass and s.sources.coinglass_api_key.get_secret_value() == KEY
    log = logging.getLogger("test.settings")
    with caplog.at_level(logging.DEBUG):
        log.info("settings: %s", s)
        log.info("settings: %r", s.discord)
        log.info("safe: %s", s.safe_dict())
    shown = " ".join([repr(s), str(s), str(s.safe_dict()), caplog.text, repr(s.database), str(s.discord.model_dump())])
    for secret in (TOKEN, KEY, "pg-password-123"):
        assert secret not in shown
    assert s.safe_dict()["discord"]["token"] == "set" and s.safe_dict()["sources"]["coinglass_api_key"] == "set"
    assert s.safe_dict()["database"]["url"] == "postgresql+asyncpg://liqmap:***@db:5432/liqmap"
    assert s.database.url.endswith("pg-password-123@db:5432/liqmap")  # the real value is still usable


def test_bad_values_are_refused_by_name_without_echoing_them(monkeypatch):
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("DEV_GUILD_ID", "my-guild")
    monkeypatch.setenv("LIQMAP_COOLDOWN_USES", "0")
    monkeypatch.setenv("LIQMAP_WATCH_INTERVAL_MINUTES", "soon")
    with pytest.raises(InputError) as err:
        load_settings(None)
    text = str(err.value)
    assert "DEV_GUILD_ID" in text and "LIQMAP_COOLDOWN_USES" in text and "LIQMAP_WATCH_INTERVAL_MINUTES" in text
    assert "my-guild" not in text and TOKEN not in text


def test_unknown_override_is_refused():
    with pytest.raises(InputError, match="unknown setting"):
        load_settings(None, colour="blue")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite+aiosqlite:///liqmap.sqlite3", "sqlite+aiosqlite:///liqmap.sqlite3"),
        ("postgresql+asyncpg://u:p@h/db", "postgresql+asyncpg://u:***@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u:p:q@h@x/db", "postgresql+asyncpg://u:***@x/db"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_env_example_loads_as_is():
    example = Path(__file__).resolve().parent.parent / ".env.example"
    s = load_settings(example)
    assert s.discord.token is None and s.discord.dev_guild_id is None and not s.sources.has_coinglass
    assert s.database.url == default_database_url()
    names = {line.split("=", 1)[0] for line in example.read_text().splitlines() if "=" in line and not line.startswith("#")}
    assert names == set(ENV_NAMES)  # every setting is documented there


def test_build_service_passes_source_settings_through(monkeypatch, tmp_path):
    from analysis.sources import registry
    from analysis.sources.csvfile import SampleSource
    from bot.app import build_service

    seen = {}

    def fake_make_sources(spec, *, cache_dir=None, coinglass_api_key=None):
        seen.update(spec=spec, cache_dir=cache_dir, key=coinglass_api_key)
        return {"binance": SampleSource()}

    monkeypatch.setattr(registry, "make_sources", fake_make_sources)
    monkeypatch.setenv("COINGLASS_API_KEY", KEY)
    monkeypatch.setenv("LIQMAP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LIQMAP_REPORT_TTL_SECONDS", "45")
    monkeypatch.setenv("LIQMAP_REPORT_CACHE_MB", "1.5")
    service = build_service(load_settings(None))
    assert seen == {"spec": "live", "cache_dir": tmp_path / "cache", "key": KEY}
    assert service.venues == ("binance",) and service.ttl == 45.0 and service.max_bytes == 1536 * 1024


def test_report_cache_budget_defaults_and_refusals(monkeypatch):
    assert load_settings(None).schedule.report_cache_mb == 64
    for bad in ("-1", "nan", "inf", "lots"):
        monkeypatch.setenv("LIQMAP_REPORT_CACHE_MB", bad)
        with pytest.raises(InputError, match="LIQMAP_REPORT_CACHE_MB"):
            load_settings(None)


def test_unknown_source_spec_is_a_clear_error(monkeypatch):
    from bot.app import build_service

    monkeypatch.setenv("LIQMAP_SOURCE", "nasdaq")
    with pytest.raises(InputError, match="unknown source"):
        build_service(load_settings(None))


def test_the_exchange_and_discord_budgets_are_settings(monkeypatch):
    from analysis.sources.binance import BinanceSource
    from analysis.sources.cache import BarCache
    from bot.settings import configure_oi_budget

    monkeypatch.setenv("LIQMAP_BINANCE_OI_PER_5M", "500")
    monkeypatch.setenv("LIQMAP_BINANCE_OI_MARGIN", "0.8")
    monkeypatch.setenv("LIQMAP_DISCORD_POSTS_PER_SECOND", "30")
    s = load_settings(None)
    assert s.schedule.discord_posts_per_second == 30
    src = BinanceSource(cache=BarCache(None))
    configure_oi_budget({"binance": src}, s.sources)
    assert (src.oi_budget.params.limit, src.oi_budget.params.steady, src.oi_budget.params.burst) == (500, 400, 100)
    for name, bad in (("LIQMAP_DISCORD_POSTS_PER_SECOND", "60"), ("LIQMAP_BINANCE_OI_MARGIN", "1.5"),
                      ("LIQMAP_BINANCE_OI_PER_5M", "nan")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(InputError, match=name) as ei:
            load_settings(None)
        assert bad not in str(ei.value).replace(name, "")
        monkeypatch.delenv(name)
