"""Logging: levels per command, JSON lines with zoned times, quiet libraries, secrets masked in both formats."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import datetime

import pytest

from bot import cli, logs
from bot.app import install_log_redaction
from bot.settings import load_settings

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GhIjKl.json-log-secret-token"
ISO_WITH_ZONE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in logs.QUIET_LOGGERS}
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)


@pytest.mark.parametrize(
    "verbose, service, env, level, fmt",
    [
        (False, True, {}, logging.INFO, "text"),  # the bot: an INFO log
        (False, False, {}, logging.WARNING, "text"),  # one-shot commands
        (True, False, {}, logging.DEBUG, "text"),
        (False, False, {"LIQMAP_LOG_LEVEL": "info", "LIQMAP_LOG_FORMAT": "JSON"}, logging.INFO, "json"),
        (False, True, {"LIQMAP_LOG_LEVEL": "ERROR"}, logging.ERROR, "text"),
        (True, True, {"LIQMAP_LOG_LEVEL": "ERROR"}, logging.DEBUG, "text"),  # -v wins
    ],
)
def test_level_and_format(verbose, service, env, level, fmt):
    assert logs.resolve(verbose=verbose, service=service, env=env) == (level, fmt, [])


def test_bad_values_fall_back_with_a_warning():
    level, fmt, problems = logs.resolve(service=True, env={"LIQMAP_LOG_LEVEL": "loud", "LIQMAP_LOG_FORMAT": "xml"})
    assert (level, fmt) == (logging.INFO, "text") and len(problems) == 2
    assert "LIQMAP_LOG_LEVEL" in problems[0] and "LIQMAP_LOG_FORMAT" in problems[1]


def test_json_lines_with_zone_and_exception(restore_logging):
    buf = io.StringIO()
    logs.configure(service=True, env={"LIQMAP_LOG_FORMAT": "json"}, stream=buf, force=True)
    log = logging.getLogger("bot.test")
    log.info("hello %s", "world")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("it failed")
    log.debug("not shown at INFO")
    first, second = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert first == {"time": first["time"], "level": "INFO", "logger": "bot.test", "message": "hello world"}
    assert ISO_WITH_ZONE.match(first["time"]) and datetime.fromisoformat(first["time"]).utcoffset() is not None
    assert second["level"] == "ERROR" and "RuntimeError: boom" in second["exc"] and "Traceback" in second["exc"]


def test_text_lines_carry_the_zone(restore_logging):
    buf = io.StringIO()
    logs.configure(service=True, env={}, stream=buf, force=True)
    logging.getLogger("liqmap").warning("careful")
    stamp, rest = buf.getvalue().split(" ", 1)
    assert ISO_WITH_ZONE.match(stamp) and rest == "WARNING liqmap: careful\n"


def test_third_party_loggers_stay_quiet_at_info_but_not_at_debug(restore_logging):
    logs.configure(service=True, env={}, stream=io.StringIO(), force=True)
    for name in ("discord.gateway", "httpx", "httpcore.connection", "sqlalchemy.engine", "alembic.runtime",
                 "asyncio", "matplotlib.font_manager"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
    assert logging.getLogger("bot.scheduler").isEnabledFor(logging.INFO)
    logs.configure(verbose=True, env={}, stream=io.StringIO(), force=True)
    assert logging.getLogger("discord.gateway").isEnabledFor(logging.DEBUG)


def test_configure_leaves_a_host_applications_logging_alone(restore_logging):
    # pytest's own capture handlers are on the root logger here, like a host application's
    assert logs.configure(env={}, stream=io.StringIO()) is None


def test_a_token_never_appears_in_json_logs(restore_logging):
    buf = io.StringIO()
    logs.configure(service=True, env={"LIQMAP_LOG_FORMAT": "json"}, stream=buf, force=True)
    settings = load_settings(None, token=TOKEN, url="sqlite+aiosqlite:///:memory:")
    install_log_redaction(settings)
    log = logging.getLogger("discord.http")
    log.warning("login with %s", TOKEN)
    try:
        raise ValueError(f"bad token {TOKEN}")
    except ValueError:
        logging.getLogger("bot.app").exception("while using %r", TOKEN)
    logging.getLogger("discord.webhook").warning("POST /webhooks/123/%s", "interaction-token-abcdefgh")
    out = buf.getvalue()
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3 and "exc" in lines[1]
    assert TOKEN not in out and "interaction-token-abcdefgh" not in out and "***" in lines[0]["message"]


def test_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"liqmap {version('liqmap')}"
