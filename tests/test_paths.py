"""Data and cache directories: service managers, containers, XDG, and a HOME that cannot be written."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis import paths
from analysis.errors import InputError
from analysis.sources.cache import default_cache_path
from bot.settings import load_settings

NAMES = ("LIQMAP_DATA_DIR", "STATE_DIRECTORY", "XDG_STATE_HOME", "LIQMAP_CACHE_DIR", "CACHE_DIRECTORY",
         "XDG_CACHE_HOME", "DATABASE_URL")


@pytest.fixture(autouse=True)
def env(monkeypatch, tmp_path):
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def unwritable_home(monkeypatch, tmp_path) -> Path:
    """A HOME below a regular file: nothing can be created there, even by root (CI runs as root)."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("HOME", str(blocker / "home"))
    return blocker / "home"


def test_data_dir_order(env, tmp_path):
    assert paths.data_dir() == tmp_path / "home" / ".local" / "state" / "liqmap"
    assert paths.data_dir().is_dir()  # created
    env.setenv("XDG_STATE_HOME", "relative/state")  # not absolute: ignored, as the XDG spec says
    assert paths.data_dir() == tmp_path / "home" / ".local" / "state" / "liqmap"
    env.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert paths.data_dir() == tmp_path / "xdg" / "liqmap"
    env.setenv("STATE_DIRECTORY", f"{tmp_path / 'svc'}:{tmp_path / 'other'}")  # systemd may list several
    assert paths.data_dir() == tmp_path / "svc"
    env.setenv("LIQMAP_DATA_DIR", str(tmp_path / "data"))
    assert paths.data_dir() == tmp_path / "data" and (tmp_path / "data").is_dir()


def test_relative_data_dir_is_made_absolute(env, tmp_path):
    env.setenv("LIQMAP_DATA_DIR", "rel")
    assert paths.data_dir() == tmp_path / "rel"


def test_unwritable_home_without_configuration_is_a_clear_error(env, tmp_path):
    unwritable_home(env, tmp_path)
    with pytest.raises(InputError, match="LIQMAP_DATA_DIR"):
        paths.data_dir()
    env.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    assert paths.data_dir() == tmp_path / "state"


def test_an_explicit_directory_that_cannot_be_created_is_an_error_not_a_fallback(env, tmp_path):
    home = unwritable_home(env, tmp_path)
    env.setenv("LIQMAP_DATA_DIR", str(home / "data"))
    with pytest.raises(InputError, match=r"cannot create the directory .* \(LIQMAP_DATA_DIR\)"):
        paths.data_dir()


def test_cache_dir_order(env, tmp_path):
    assert paths.cache_dir() == tmp_path / "home" / ".cache" / "liqmap"
    env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdgc"))
    assert paths.cache_dir() == tmp_path / "xdgc" / "liqmap"
    env.setenv("CACHE_DIRECTORY", str(tmp_path / "svc-cache"))
    assert paths.cache_dir() == tmp_path / "svc-cache"
    assert default_cache_path() == tmp_path / "svc-cache" / "bars.sqlite3"
    env.setenv("LIQMAP_CACHE_DIR", str(tmp_path / "mine"))
    assert paths.cache_dir() == tmp_path / "mine"
    assert paths.cache_dir(tmp_path / "configured") == tmp_path / "configured"  # LIQMAP_CACHE_DIR from .env


def test_cache_falls_back_to_the_data_dir_when_home_is_unwritable(env, tmp_path):
    unwritable_home(env, tmp_path)
    env.setenv("LIQMAP_DATA_DIR", str(tmp_path / "data"))
    assert paths.cache_dir() == tmp_path / "data" / "cache"
    assert default_cache_path() == tmp_path / "data" / "cache" / "bars.sqlite3"


def test_default_database_is_an_absolute_file_in_the_data_dir_whatever_the_cwd(env, tmp_path):
    env.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    first = load_settings(None).database.url
    (tmp_path / "elsewhere").mkdir()
    env.chdir(tmp_path / "elsewhere")
    assert load_settings(None).database.url == first == f"sqlite+aiosqlite:///{tmp_path / 'state' / 'liqmap.sqlite3'}"


def test_settings_under_a_service_manager_with_unwritable_home(env, tmp_path):
    unwritable_home(env, tmp_path)
    env.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    env.setenv("CACHE_DIRECTORY", str(tmp_path / "cache"))
    s = load_settings(None)
    assert s.database.url == f"sqlite+aiosqlite:///{tmp_path / 'state' / 'liqmap.sqlite3'}"
    assert s.sources.state_dir == tmp_path / "cache"


def test_settings_with_unwritable_home_and_nothing_set_say_what_to_set(env, tmp_path):
    unwritable_home(env, tmp_path)
    with pytest.raises(InputError, match="LIQMAP_DATA_DIR"):
        load_settings(None)
    env.setenv("DATABASE_URL", "postgresql+asyncpg://u:p@db/liqmap")  # no data dir needed for the database
    assert load_settings(None).database.url.startswith("postgresql")
