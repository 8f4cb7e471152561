"""Where liqmap keeps its files: the data dir (the bot's SQLite database, the heartbeat) and the cache.

The one place that decides, so the CLI, the bot, a systemd service and a container agree. Nothing
depends on the working directory, and ``$HOME`` is used only when it is writable:

- data: ``LIQMAP_DATA_DIR`` → systemd's ``$STATE_DIRECTORY`` → ``$XDG_STATE_HOME/liqmap`` →
  ``~/.local/state/liqmap`` (when writable) → :class:`~analysis.errors.InputError` asking for
  ``LIQMAP_DATA_DIR``.
- cache: ``LIQMAP_CACHE_DIR`` → ``$CACHE_DIRECTORY`` → ``$XDG_CACHE_HOME/liqmap`` →
  ``~/.cache/liqmap`` (when writable) → ``<data dir>/cache``.

A variable that is set is used as given (its directory is created when needed; failing that is an
error, not a silent fallback). ``XDG_*`` values that are not absolute are ignored, as the XDG spec
says. systemd may list several directories in ``$STATE_DIRECTORY``; the first is used. This module is
in ``analysis/`` because the bar cache (``analysis.sources.cache``) needs it and ``analysis`` never
imports ``bot``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .errors import InputError

__all__ = ["data_dir", "cache_dir", "default_database_url", "heartbeat_path", "DATABASE_FILE", "HEARTBEAT_FILE"]

DATABASE_FILE = "liqmap.sqlite3"
HEARTBEAT_FILE = "heartbeat.json"


def _env(env: Mapping[str, str] | None, name: str) -> str | None:
    value = (os.environ if env is None else env).get(name, "").strip()
    return value or None


def _first(value: str) -> Path:
    """The first entry of a systemd directory list (``/var/lib/a:/var/lib/b``)."""
    return Path(value.split(":", 1)[0])


def _xdg(env: Mapping[str, str] | None, name: str) -> Path | None:
    value = _env(env, name)
    return Path(value) / "liqmap" if value and Path(value).is_absolute() else None


def _home(env: Mapping[str, str] | None) -> Path | None:
    home = _env(env, "HOME")
    if home is None:
        try:
            return Path.home()
        except RuntimeError:  # no HOME and no passwd entry (a bare container user)
            return None
    return Path(home)


def _writable(path: Path) -> bool:
    """Whether ``path`` exists as a writable directory or could be created (nearest existing parent)."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def _ready(path: Path, origin: str, create: bool) -> Path:
    path = path.expanduser().absolute()
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the directory {path} ({origin}): {exc.strerror or exc}") from None
    return path


def data_dir(*, env: Mapping[str, str] | None = None, create: bool = True) -> Path:
    """The data directory (absolute), created unless ``create=False``; ``env`` defaults to ``os.environ``."""
    if (value := _env(env, "LIQMAP_DATA_DIR")) is not None:
        return _ready(Path(value), "LIQMAP_DATA_DIR", create)
    if (value := _env(env, "STATE_DIRECTORY")) is not None:
        return _ready(_first(value), "STATE_DIRECTORY", create)
    if (xdg := _xdg(env, "XDG_STATE_HOME")) is not None:
        return _ready(xdg, "XDG_STATE_HOME", create)
    home = _home(env)
    if home is not None and home.is_absolute():
        default = home / ".local" / "state" / "liqmap"
        if _writable(default):
            return _ready(default, "the default data directory", create)
    raise InputError(
        "no writable data directory: $HOME is not writable and none of LIQMAP_DATA_DIR, STATE_DIRECTORY "
        "or XDG_STATE_HOME is set; set LIQMAP_DATA_DIR to a writable directory"
    )


def cache_dir(explicit: str | Path | None = None, *, env: Mapping[str, str] | None = None,
              create: bool = False) -> Path:
    """The cache directory (absolute): ``explicit`` (a configured ``LIQMAP_CACHE_DIR``) or the chain above."""
    if explicit is not None and str(explicit).strip():
        return _ready(Path(explicit), "LIQMAP_CACHE_DIR", create)
    if (value := _env(env, "LIQMAP_CACHE_DIR")) is not None:
        return _ready(Path(value), "LIQMAP_CACHE_DIR", create)
    if (value := _env(env, "CACHE_DIRECTORY")) is not None:
        return _ready(_first(value), "CACHE_DIRECTORY", create)
    if (xdg := _xdg(env, "XDG_CACHE_HOME")) is not None:
        return _ready(xdg, "XDG_CACHE_HOME", create)
    home = _home(env)
    if home is not None and home.is_absolute():
        default = home / ".cache" / "liqmap"
        if _writable(default):
            return _ready(default, "the default cache directory", create)
    return _ready(data_dir(env=env, create=create) / "cache", "the data directory's cache", create)


def default_database_url(*, env: Mapping[str, str] | None = None) -> str:
    """``sqlite+aiosqlite:///<data dir>/liqmap.sqlite3`` (absolute; the data dir is created)."""
    return f"sqlite+aiosqlite:///{data_dir(env=env) / DATABASE_FILE}"


def heartbeat_path(*, env: Mapping[str, str] | None = None, create: bool = True) -> Path:
    """The dispatcher's heartbeat file in the data dir (read by ``liqmap health``)."""
    return data_dir(env=env, create=create) / HEARTBEAT_FILE
