"""``/daily set|list|remove|resume``: daily liquidation-map reports posted to a channel.

For people with Manage Server (hidden from others by ``default_permissions`` and checked again at
runtime). Options are validated before anything is stored, and refusals say what would be valid.
``view`` picks what each report posts: the map (default), the heatmap over the window, or both;
a heatmap of a snapshot-only venue (CoinGlass) is refused before anything is stored.
Creating a schedule also checks the bot's own permissions in the target channel. The dispatcher
(``bot/scheduler.py``) posts each report once per local day; a schedule whose channel vanished or
whose permissions were removed is paused with the reason, shown by ``/daily list`` and undone by
``/daily resume``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import discord
from discord import app_commands

from analysis.commentary import md_safe_text
from analysis.errors import InputError
from analysis.windows import parse_window

from ..app import LiqmapBot
from ..checks import ManagerGroupCog, check_target_channel, guild_of, history_hint
from ..choices import (
    VIEW_CHOICES,
    WINDOW_CHOICES,
    SubscriptionId,
    exchange_choices,
    offer_choices,
    subscription_id_choices,
    timezone_choices,
)
from ..replies import list_subscriptions, reply_private, resume_subscription
from ..store import DailySchedule, Store, parse_symbols, parse_time, parse_timezone, parse_view
from ..symbol_index import check_listed

__all__ = ["DailyCog", "describe_schedule", "setup"]

log = logging.getLogger(__name__)

AUTOCOMPLETE_TIMEOUT = 2.0  # Discord drops autocomplete answers after 3 s


def _ts(at: datetime | None, style: str = "f") -> str:
    if at is None:
        return "?"
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return f"<t:{int(at.timestamp())}:{style}>"


_VIEW_LABELS = {"map": "map", "heatmap": "heatmap", "both": "map + heatmap"}


def describe_schedule(s: DailySchedule) -> str:
    """One list line: id, symbols, window, exchange, view, local time and zone, channel, next run or pause."""
    head = (f"`#{s.id}` **{', '.join(s.symbols)}** · {s.window} · {s.exchange} · {_VIEW_LABELS.get(s.view, md_safe_text(s.view, 8))} · "
            f"{s.local_time} {s.timezone} → <#{s.channel_id}>")
    if s.paused:  # the reason quotes outside text (a channel name, Discord's or a venue's error)
        return (f"{head}\n  ⏸ paused since {_ts(s.paused_at, 'R')}: {md_safe_text(s.paused_reason, 300)} — "
                f"`/daily resume id:{s.id}`")
    return f"{head}\n  next: {_ts(s.next_run_at)} ({_ts(s.next_run_at, 'R')})"


class DailyCog(ManagerGroupCog, group_name="daily", group_description="Daily liquidation-map reports posted to a channel"):
    """The ``/daily`` command group."""

    def __init__(self, bot: LiqmapBot) -> None:
        self.bot = bot
        offer_choices(self.daily_set, exchange=exchange_choices(bot.service.venues))

    @property
    def store(self) -> Store:
        store = self.bot.store
        if store is None:
            raise InputError("daily reports are not available: the bot has no database configured")
        return store

    @app_commands.command(name="set", description="Post a daily liquidation-map report to a channel at a local time")
    @app_commands.describe(
        channel="Channel to post the report in",
        time="Local time of day, 24-hour HH:MM, e.g. 09:30",
        timezone="Your timezone (IANA name), e.g. Europe/London; start typing to search",
        symbols="Up to 5 perpetuals, comma-separated, e.g. BTC, ETH, SOL (default BTC)",
        window="How far back open-interest flow is read (default 1 day)",
        exchange="Which exchange's data to use (default: all exchanges combined)",
        view="Post the map, the heatmap over the window, or both (default map)",
    )
    @app_commands.choices(window=WINDOW_CHOICES, view=VIEW_CHOICES)
    async def daily_set(self, interaction: discord.Interaction, channel: discord.TextChannel, time: str,
                        timezone: str, symbols: str = "BTC", window: str = "1d", exchange: str = "all",
                        view: str = "map") -> None:
        store = self.store
        hhmm, zone, syms = parse_time(time), parse_timezone(timezone), parse_symbols(symbols)
        win = parse_window(window).label
        shown = parse_view(view)
        service = self.bot.service
        check_listed(self.bot.symbols, service, syms, exchange)
        if shown != "map":
            service.heatmap_venues(exchange)  # a snapshot-only venue has no heatmap: refused now, not at 09:30
        check_target_channel(interaction, channel)
        await interaction.response.defer(ephemeral=True, thinking=True)
        s = await store.add_daily(
            guild_of(interaction), channel.id, symbols=syms, window=win, exchange=exchange, time=hhmm,
            timezone=zone, created_by=interaction.user.id, view=shown,
        )
        log.info("guild %s added daily report %s", interaction.guild_id, s.id)
        await reply_private(interaction, f"Daily report set.\n{describe_schedule(s)}{history_hint(interaction, channel)}")

    @daily_set.autocomplete("timezone")
    async def tz_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return timezone_choices(current)

    @app_commands.command(name="list", description="Show this server's daily reports, including paused ones")
    async def daily_list(self, interaction: discord.Interaction) -> None:
        await list_subscriptions(
            interaction, self.store, self.store.list_daily, title="Daily reports",
            empty="No daily reports yet. Create one with `/daily set`.", describe=describe_schedule,
        )

    @app_commands.command(name="remove", description="Stop and delete a daily report")
    @app_commands.describe(id="The report's number, as shown by /daily list")
    async def daily_remove(self, interaction: discord.Interaction, id: SubscriptionId) -> None:
        store = self.store
        await interaction.response.defer(ephemeral=True, thinking=True)
        s = await store.remove_daily(guild_of(interaction), id)
        log.info("guild %s removed daily report %s", interaction.guild_id, s.id)
        await reply_private(interaction, f"Removed daily report `#{s.id}` ({', '.join(s.symbols)} → <#{s.channel_id}>).")

    @app_commands.command(name="resume", description="Resume a paused daily report (after fixing the channel or permissions)")
    @app_commands.describe(id="The report's number, as shown by /daily list")
    async def daily_resume(self, interaction: discord.Interaction, id: SubscriptionId) -> None:
        await resume_subscription(
            interaction, id, get=self.store.get_daily, resume=self.store.resume_daily,
            describe=describe_schedule, noun="daily report", short="report", list_command="/daily list",
            redo="remove the report and set it again for another channel",
        )

    @daily_remove.autocomplete("id")
    @daily_resume.autocomplete("id")
    async def id_autocomplete(self, interaction: discord.Interaction, current: int | str) -> list[app_commands.Choice[int]]:
        fetch = None if self.bot.store is None else self.store.list_daily
        return await subscription_id_choices(interaction, current, fetch,
                                             lambda s: f"#{s.id} {', '.join(s.symbols)} {s.window} · {'paused' if s.paused else f'{s.local_time} {s.timezone}'}",
                                             timeout=AUTOCOMPLETE_TIMEOUT)


async def setup(bot: LiqmapBot) -> None:
    await bot.add_cog(DailyCog(bot))
