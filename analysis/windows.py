"""Map windows: how far back the open-interest flow is read, and at which bar interval."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

__all__ = ["Window", "WINDOWS", "parse_window"]

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Window:
    """A lookback ``label`` of ``duration_ms``; ``interval`` is the bar size live sources fetch."""

    label: str
    duration_ms: int
    interval: str


WINDOWS: dict[str, Window] = {
    "1d": Window("1d", DAY_MS, "5m"),
    "7d": Window("7d", 7 * DAY_MS, "5m"),
    "30d": Window("30d", 30 * DAY_MS, "15m"),
}


def parse_window(text: str) -> Window:
    """``"7d"`` (or ``"7D"``, ``" 7d "``) -> the 7-day window; anything else is an InputError."""
    key = str(text).strip().lower()
    if key in WINDOWS:
        return WINDOWS[key]
    shown = str(text)[:20]
    raise InputError(f"unknown window {shown!r}; choose one of {', '.join(WINDOWS)}")
