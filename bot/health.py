"""The bot's health signal: a heartbeat file the dispatcher rewrites after every loop iteration.

The file (``heartbeat.json`` in the data dir, see :mod:`analysis.paths`) holds one JSON object,
``{"time": "<ISO 8601 UTC>", "pid": <int>, "shards": "shards 0-1 of 4"}`` (``shards`` when known), written atomically (a temporary file in the same
directory, then ``os.replace``), so a reader never sees half a file. ``liqmap health`` reads it:
fresh (younger than ``--max-age``) is exit 0, stale, missing or unreadable is exit 1, each with a
one-line reason. The age is measured from the time *inside* the file, not its mtime.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["Heartbeat", "Health", "check", "read_time", "DEFAULT_MAX_AGE_S"]

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE_S = 600.0  # the dispatcher ticks every 30 s; a tick that renders many maps can take minutes


@dataclass(frozen=True)
class Health:
    """The outcome of :func:`check`: ``ok`` and a one-line ``reason``."""

    ok: bool
    reason: str


class Heartbeat:
    """Writes the heartbeat file; call it with the dispatcher's (UTC) clock reading."""

    def __init__(self, path: Path, *, shards: str | None = None) -> None:
        self.path = Path(path)
        self.shards = shards  # this process's shards (bot.app.LiqmapBot.shard_summary), kept in the file
        self._warned = False

    def __call__(self, now: datetime) -> None:
        """Write ``now`` atomically; a failure is logged once (the bot keeps running, health goes stale)."""
        stamp = (now if now.tzinfo else now.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
        data: dict[str, object] = {"time": stamp.isoformat(), "pid": os.getpid()}
        if self.shards:
            data["shards"] = self.shards
        body = json.dumps(data)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(body + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot write the heartbeat %s: %s", self.path, exc.strerror or exc)
                self._warned = True
            return
        self._warned = False


def read_time(path: Path) -> datetime:
    """The UTC time in a heartbeat file; raises OSError or ValueError when there is none."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("time"), str):
        raise ValueError("no time in it")
    stamp = datetime.fromisoformat(data["time"])
    if stamp.tzinfo is None:
        raise ValueError("its time has no zone")
    return stamp.astimezone(timezone.utc)


def check(path: Path, now: datetime, max_age_s: float = DEFAULT_MAX_AGE_S) -> Health:
    """Whether the heartbeat at ``path`` is younger than ``max_age_s`` at ``now`` (aware UTC)."""
    try:
        stamp = read_time(path)
    except FileNotFoundError:
        return Health(False, f"unhealthy: no heartbeat at {path} (is the bot's dispatcher running?)")
    except (OSError, ValueError) as exc:
        return Health(False, f"unhealthy: unreadable heartbeat {path}: {getattr(exc, 'strerror', None) or exc}")
    age = (now - stamp).total_seconds()
    when = stamp.isoformat(timespec="seconds")
    if age > max_age_s:
        return Health(False, f"unhealthy: last heartbeat {age:.0f} s ago ({when}), older than {max_age_s:g} s")
    if age < -max_age_s:  # from the future: a clock jump or a copied file; don't call it fresh
        return Health(False, f"unhealthy: heartbeat time {when} is {-age:.0f} s in the future (clock changed?)")
    return Health(True, f"ok: last heartbeat {max(age, 0.0):.0f} s ago ({when}){_shards(path)}")


def _shards(path: Path) -> str:
    """``", shards 0-1 of 4"`` when the heartbeat names its process's shards, else ``""``."""
    try:
        shards = json.loads(Path(path).read_text(encoding="utf-8")).get("shards")
    except (OSError, ValueError, AttributeError):
        return ""
    return f", {shards[:80]}" if isinstance(shards, str) and shards.isprintable() else ""
