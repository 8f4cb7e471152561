"""Logging for the ``liqmap`` command: level, text or JSON lines, quiet third-party loggers.

- ``LIQMAP_LOG_LEVEL`` (DEBUG, INFO, WARNING, ERROR, CRITICAL): default INFO for the bot (a
  long-running service), WARNING for one-shot commands; ``-v`` means DEBUG.
- ``LIQMAP_LOG_FORMAT``: ``text`` (default) or ``json`` (one JSON object per line with ``time``,
  ``level``, ``logger``, ``message`` and, for an exception, ``exc``).
- Times are ISO 8601 in UTC with their offset (``2026-12-01T23:00:00.123+00:00``).
- Below DEBUG detail, the chatty libraries (discord, httpx, httpcore, sqlalchemy, alembic, asyncio,
  matplotlib) log WARNING and up only.

Secrets are masked by :class:`bot.app.RedactSecrets`, a filter on the handler installed here; it
rewrites the record (message and traceback text) before either formatter sees it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import IO, Mapping

__all__ = ["configure", "LiqmapHandler", "JsonFormatter", "TextFormatter", "QUIET_LOGGERS", "LEVELS", "FORMATS", "resolve"]

QUIET_LOGGERS = ("discord", "httpx", "httpcore", "sqlalchemy", "alembic", "asyncio", "matplotlib")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """``<ISO time with offset> LEVEL logger: message`` (and the traceback below it)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _iso(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message`` and ``exc`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, str] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # already masked when the redaction filter ran
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False)


class LiqmapHandler(logging.StreamHandler):
    """liqmap's handler: on ``stream``, or on whatever ``sys.stderr`` is at each record (None)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(stream or sys.stderr)
        self._follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:  # called under the handler's lock
            self.stream = sys.stderr
        super().emit(record)


def resolve(*, verbose: bool = False, service: bool = False,
            env: Mapping[str, str] | None = None) -> tuple[int, str, list[str]]:
    """The level, the format and warnings about ignored values, from ``-v``, the command and the environment."""
    env = os.environ if env is None else env
    problems = []
    level = logging.INFO if service else logging.WARNING
    wanted = env.get("LIQMAP_LOG_LEVEL", "").strip().upper()
    if wanted in LEVELS:
        level = logging.getLevelName(wanted)
    elif wanted:
        problems.append(f"LIQMAP_LOG_LEVEL must be one of {', '.join(LEVELS)}; using {logging.getLevelName(level)}")
    if verbose:
        level = logging.DEBUG
    fmt = env.get("LIQMAP_LOG_FORMAT", "").strip().lower() or "text"
    if fmt not in FORMATS:
        problems.append("LIQMAP_LOG_FORMAT must be text or json; using text")
        fmt = "text"
    return level, fmt, problems


def configure(*, verbose: bool = False, service: bool = False, env: Mapping[str, str] | None = None,
              stream: IO[str] | None = None, force: bool = False) -> logging.Handler | None:
    """Install liqmap's stderr handler (or one on ``stream``) on the root logger and set the levels.

    Like :func:`logging.basicConfig`, nothing changes when the root logger already has handlers of
    someone else (a host application, pytest) unless ``force``; a previous liqmap handler is replaced.
    Returns the handler, or None when logging was left alone.
    """
    root = logging.getLogger()
    foreign = [h for h in root.handlers if not isinstance(h, LiqmapHandler)]
    if foreign and not force:
        return None
    level, fmt, problems = resolve(verbose=verbose, service=service, env=env)
    for old in [h for h in root.handlers if isinstance(h, LiqmapHandler)]:
        root.removeHandler(old)
    handler = LiqmapHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if level <= logging.DEBUG else max(level, logging.WARNING))
    for problem in problems:
        logging.getLogger("liqmap").warning(problem)
    return handler
