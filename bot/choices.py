"""Option choices and option types shared by the commands: windows, exchanges, views, timezones
and the id of a subscription.

The exchange choices depend on the venues the report service has (CoinGlass appears only with a
key), so a cog gives its commands those choices when it is created (:func:`offer_choices`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import zoneinfo
from typing import Any, Awaitable, Callable, Iterable, Sequence

import discord
from discord import app_commands

from analysis.options import VIEWS
from analysis.venues import display_name
from analysis.windows import WINDOWS

from .store import ITEM_ID_MAX

__all__ = [
    "WINDOW_CHOICES",
    "VIEW_CHOICES",
    "COMMON_TIMEZONES",
    "SubscriptionId",
    "exchange_choices",
    "offer_choices",
    "timezone_choices",
    "subscription_id_choices",
]

log = logging.getLogger(__name__)

# The id option of list/remove/resume: Discord's picker enforces the range (discord.py does not
# re-check it, so the store validates again).
SubscriptionId = app_commands.Range[int, 1, ITEM_ID_MAX]

WINDOW_CHOICES = [
    app_commands.Choice(name="1 day", value="1d"),
    app_commands.Choice(name="7 days", value="7d"),
    app_commands.Choice(name="30 days", value="30d"),
]
assert [c.value for c in WINDOW_CHOICES] == list(WINDOWS)

VIEW_CHOICES = [
    app_commands.Choice(name="Map (where liquidations sit now)", value="map"),
    app_commands.Choice(name="Heatmap (liquidation levels over the window)", value="heatmap"),
    app_commands.Choice(name="Both (map and heatmap in one message)", value="both"),
]
assert [c.value for c in VIEW_CHOICES] == list(VIEWS)


def exchange_choices(venues: Iterable[str]) -> list[app_commands.Choice[str]]:
    """``all`` plus each venue the report service has (CoinGlass appears only with a key)."""
    out = [app_commands.Choice(name=display_name("all"), value="all")]
    out += [app_commands.Choice(name=display_name(v), value=v) for v in venues]
    return out


def offer_choices(command: app_commands.Command[Any, ..., Any], **choices: list[app_commands.Choice[str]]) -> None:
    """Give one cog instance's ``command`` the choices known only at run time (the venues).

    A cog's commands are copies of the ones its class declares, but the copies share their
    parameter objects; each named parameter is replaced by its own copy first, so the class's
    command (and any other bot's cog) keeps what it had. ``app_commands.choices`` then checks the
    choices as the decorator would.
    """
    params = command._params  # discord.py's parameter table of this copy (what to_dict() reads)
    for name in choices:
        if name not in params:
            raise TypeError(f"/{command.qualified_name} has no parameter {name!r}")
        params[name] = dataclasses.replace(params[name])
    app_commands.choices(**choices)(command)


# Offered first in timezone autocomplete; any IANA name can be typed.
COMMON_TIMEZONES = (
    "UTC", "Europe/London", "Europe/Berlin", "Europe/Paris", "Europe/Istanbul", "Europe/Moscow",
    "America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles", "America/Sao_Paulo",
    "America/Toronto", "Asia/Dubai", "Asia/Kolkata", "Asia/Singapore", "Asia/Hong_Kong", "Asia/Shanghai",
    "Asia/Seoul", "Asia/Tokyo", "Asia/Ho_Chi_Minh", "Asia/Jakarta", "Australia/Sydney", "Africa/Lagos",
    "Africa/Johannesburg", "Pacific/Auckland",
)
_ALL_TZ: tuple[str, ...] | None = None


def timezone_choices(current: str, limit: int = 25) -> list[app_commands.Choice[str]]:
    """IANA timezones matching what was typed (common ones first; all of them searchable)."""
    global _ALL_TZ
    if _ALL_TZ is None:
        _ALL_TZ = tuple(sorted(n for n in zoneinfo.available_timezones() if "/" in n or n == "UTC"))
    typed = current.strip().lower().replace(" ", "_")
    if not typed:
        names = list(COMMON_TIMEZONES)
    else:
        common = [n for n in COMMON_TIMEZONES if typed in n.lower()]
        starts = [n for n in _ALL_TZ if n.lower().split("/")[-1].startswith(typed) and n not in common]
        contains = [n for n in _ALL_TZ if typed in n.lower() and n not in common and n not in starts]
        names = common + starts + contains
    return [app_commands.Choice(name=n.replace("_", " "), value=n) for n in names[:limit]]


async def subscription_id_choices(
    interaction: discord.Interaction,
    current: int | str,
    fetch: Callable[[int], Awaitable[Sequence[Any]]] | None,
    label: Callable[[Any], str],
    *,
    timeout: float = 2.0,
) -> list[app_commands.Choice[int]]:
    """Autocomplete of a subscription id: this server's items whose id starts with what was typed.

    Best effort and quick (Discord drops answers after 3 s): nothing outside a server, without a
    store (``fetch`` None), for a member without Manage Server (autocomplete skips the group's
    check), or when the store does not answer within ``timeout``.
    """
    if interaction.guild_id is None or fetch is None or not interaction.permissions.manage_guild:
        return []
    try:
        items = await asyncio.wait_for(fetch(interaction.guild_id), timeout)
    except Exception as exc:
        log.warning("subscription id autocomplete failed: %s", exc)
        return []
    typed = str(current or "").strip()
    return [app_commands.Choice(name=label(item)[:100], value=item.id)
            for item in items if not typed or str(item.id).startswith(typed)][:25]
