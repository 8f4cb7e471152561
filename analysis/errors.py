"""One exception hierarchy for everything the analysis core can refuse.

Front ends (the CLI and the bot) catch :class:`LiqmapError` and show ``str(exc)`` as a one-line
message. Anything that is not a ``LiqmapError`` is a bug and is logged with its traceback.

Each class carries the CLI's exit status (``exit_code``): 2 for a request or configuration that
will not work as given, 75 (``EX_TEMPFAIL``) for :class:`Unavailable`, something needed that is
unreachable right now (a database or Discord at start), so a service manager restarts the bot.
"""

from __future__ import annotations

__all__ = ["LiqmapError", "InputError", "DataError", "SourceError", "Unavailable", "EX_USAGE", "EX_TEMPFAIL"]

EX_USAGE = 2  # bad input or configuration: running it again as is will fail again
EX_TEMPFAIL = 75  # sysexits.h: a temporary failure, try again later


class LiqmapError(Exception):
    """Base class: a clear, user-facing reason why a request could not be served."""

    exit_code: int = EX_USAGE


class Unavailable(LiqmapError):
    """Something the command needs is unreachable right now (database, Discord): try again later."""

    exit_code = EX_TEMPFAIL


class InputError(LiqmapError):
    """The request itself is invalid: unknown symbol, window, exchange, time or option."""


class DataError(LiqmapError):
    """The market data cannot support a map: too short, NaN, gaps, duplicates, bad OI, flat prices."""


class SourceError(LiqmapError):
    """A market-data source failed: network, HTTP status, rate limit or a malformed response.

    ``venue`` and ``endpoint`` name where it happened; ``retry_after`` (seconds) is set when the
    venue told us when to come back.
    """

    def __init__(
        self,
        venue: str,
        endpoint: str,
        reason: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.venue = venue
        self.endpoint = endpoint
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        super().__init__(f"{venue} {endpoint}: {reason}")
