"""``/cluster-alerts subscribe|list|remove|resume``: notices when price nears a major cluster, or a
realized sweep hits one.

For people with Manage Server (hidden from others by ``default_permissions``, checked again at
run time), in servers only, never pinging anyone. ``approaching`` works from the map alone;
``swept`` needs the realized-liquidation tape (``bot.tape``) and a venue with a public feed, and is
refused while the bot records none. The loop is :mod:`bot.cluster_watch`; the thresholds and their
hysteresis are :mod:`analysis.cluster_alerts`.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from analysis import numbers
from analysis.cluster_alerts import (
    MIN_USD_RANGE,
    MINUTES_RANGE,
    WITHIN_PCT_RANGE,
    ClusterAlertParams,
)
from analysis.commentary import md_safe_text
from analysis.errors import InputError
from analysis.symbols import parse_symbol
from analysis.tape.events import feed_coverage
from analysis.windows import parse_window

from ..app import LiqmapBot
from ..checks import ManagerGroupCog, check_target_channel, guild_of, history_hint
from ..choices import WINDOW_CHOICES, SubscriptionId, exchange_choices, offer_choices, subscription_id_choices
from ..cluster_store import ClusterAlert, ClusterStore
from ..replies import list_subscriptions, reply_private, resume_subscription
from ..symbol_index import check_listed, symbol_choices

__all__ = ["ClustersCog", "describe_alert", "setup"]

log = logging.getLogger(__name__)

AUTOCOMPLETE_TIMEOUT = 2.0
KIND_CHOICES = [
    app_commands.Choice(name="approaching: price comes within X% of a major cluster", value="approaching"),
    app_commands.Choice(name="swept: $Y realized near a cluster in the last N minutes", value="swept"),
]
NO_TAPE = ("swept alerts need the realized-liquidation tape, and this bot is not recording one; "
           "use kind approaching, or ask the bot's operator to enable the tape recorder")


def describe_alert(a: ClusterAlert) -> str:
    """One list line: id, symbol, kind, window, exchange, channel, thresholds, state or pause."""
    p = a.params
    head = f"`#{a.id}` **{a.symbol}** · {a.kind} · {a.window} · {a.exchange} → <#{a.channel_id}>"
    if a.kind == "approaching":
        detail = f"within {numbers.band(p.near_pct / 100)} (re-arms beyond {numbers.band(p.exit_pct / 100)})"
    else:
        detail = (f"{numbers.usd(p.usd)} within ±{numbers.band(p.near_pct / 100)} in {p.window_minutes} min "
                  f"(re-arms below {numbers.usd(p.usd / p.rearm_factor)})")
    detail += f" · cooldown {a.cooldown_s // 60} min"
    if a.paused:
        when = f"<t:{int(a.paused_at.timestamp())}:R>" if a.paused_at else "?"
        return (f"{head}\n  ⏸ paused since {when}: {md_safe_text(a.paused_reason, 300)} — "
                f"`/cluster-alerts resume id:{a.id}`\n  {detail}")
    if a.phase is None:
        now = "not measured yet"
    elif a.phase == "armed":
        now = "armed"
    else:
        where = numbers.price(a.level) if a.level is not None else "?"
        now = f"{'near' if a.phase == 'near' else 'swept'} {md_safe_text(a.side or '', 8)} cluster at {where}"
    return f"{head}\n  now: {now} · {detail}"


Pct = app_commands.Range[float, WITHIN_PCT_RANGE[0], WITHIN_PCT_RANGE[1]]
Usd = app_commands.Range[float, MIN_USD_RANGE[0], MIN_USD_RANGE[1]]
Minutes = app_commands.Range[int, MINUTES_RANGE[0], MINUTES_RANGE[1]]


class ClustersCog(ManagerGroupCog, group_name="cluster-alerts",
                  group_description="Notices when price nears a major liquidation cluster, or a sweep hits one"):
    """The ``/cluster-alerts`` command group."""

    def __init__(self, bot: LiqmapBot) -> None:
        self.bot = bot
        offer_choices(self.subscribe, exchange=exchange_choices(bot.service.venues))

    @property
    def clusters(self) -> ClusterStore:
        store = self.bot.store
        if store is None:
            raise InputError("cluster alerts are not available: the bot has no database configured")
        return ClusterStore(store)

    @app_commands.command(name="subscribe", description="Post a notice in a channel when price nears or sweeps a cluster")
    @app_commands.describe(
        channel="Channel to post the notices in",
        symbol="Perpetual to watch, e.g. BTC or ETHUSDT",
        kind="approaching (price near a major cluster) or swept (realized liquidations at one)",
        window="Map window the clusters are read from (default 7 days)",
        exchange="Which exchange's data to use (default: all exchanges combined)",
        within_pct="How near counts, in % of price (approaching default 1, swept default ±0.5)",
        min_usd="swept only: realized USD near the cluster that counts (default 1,000,000)",
        minutes="swept only: how many recent minutes of realized liquidations to sum (default 60)",
        cooldown_minutes="Minimum minutes between two notices of this alert (default 60)",
    )
    @app_commands.choices(kind=KIND_CHOICES, window=WINDOW_CHOICES)
    async def subscribe(
        self,
        interaction: discord.Interaction,
        channel: discord.TextChannel,
        symbol: str,
        kind: str,
        window: str = "7d",
        exchange: str = "all",
        within_pct: Pct | None = None,
        min_usd: Usd | None = None,
        minutes: Minutes | None = None,
        cooldown_minutes: app_commands.Range[int, 1, 7 * 24 * 60] | None = None,
    ) -> None:
        clusters = self.clusters
        sym = parse_symbol(symbol).symbol
        win = parse_window(window).label
        venues = check_listed(self.bot.symbols, self.bot.service, [sym], exchange)
        params = ClusterAlertParams(kind, within_pct, min_usd, minutes)  # says what is wrong, before storing
        if params.kind == "swept":
            if self.bot.tape is None:
                raise InputError(NO_TAPE)
            if not any(feed_coverage(v) != "unknown" for v in venues):
                raise InputError(f"swept alerts read realized liquidations, and {exchange} publishes none; "
                                 "choose all, binance, bybit or okx")
        check_target_channel(interaction, channel)
        await interaction.response.defer(ephemeral=True, thinking=True)
        a = await clusters.add(
            guild_of(interaction), channel.id, symbol=sym, window=win, exchange=exchange, kind=params.kind,
            created_by=interaction.user.id, within_pct=within_pct, min_usd=min_usd, minutes=minutes,
            cooldown_s=None if cooldown_minutes is None else int(cooldown_minutes) * 60,
        )
        log.info("guild %s added cluster alert %s", interaction.guild_id, a.id)
        await reply_private(interaction, "Cluster alert set. The first check records where price stands; "
                                         f"a notice follows when the alert fires.\n{describe_alert(a)}"
                                         f"{history_hint(interaction, channel)}")

    @subscribe.autocomplete("symbol")
    async def symbol_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return symbol_choices(self.bot.symbols, self.bot.service, current,
                              getattr(interaction.namespace, "exchange", None))

    @app_commands.command(name="list", description="Show this server's cluster alerts, including paused ones")
    async def alerts_list(self, interaction: discord.Interaction) -> None:
        clusters = self.clusters
        await list_subscriptions(
            interaction, clusters, clusters.list, title="Cluster alerts",
            empty="No cluster alerts yet. Create one with `/cluster-alerts subscribe`.", describe=describe_alert,
        )

    @app_commands.command(name="remove", description="Stop and delete a cluster alert")
    @app_commands.describe(id="The alert's number, as shown by /cluster-alerts list")
    async def remove(self, interaction: discord.Interaction, id: SubscriptionId) -> None:
        clusters = self.clusters
        await interaction.response.defer(ephemeral=True, thinking=True)
        a = await clusters.remove(guild_of(interaction), id)
        log.info("guild %s removed cluster alert %s", interaction.guild_id, a.id)
        await reply_private(interaction, f"Removed cluster alert `#{a.id}` ({a.symbol} {a.kind} → <#{a.channel_id}>).")

    @app_commands.command(name="resume", description="Resume a paused cluster alert (after fixing the channel or permissions)")
    @app_commands.describe(id="The alert's number, as shown by /cluster-alerts list")
    async def resume(self, interaction: discord.Interaction, id: SubscriptionId) -> None:
        clusters = self.clusters
        await resume_subscription(
            interaction, id, get=clusters.get, resume=clusters.resume,
            describe=describe_alert, noun="cluster alert", short="alert", list_command="/cluster-alerts list",
            redo="remove it and subscribe again for another channel",
            resumed_note=" The next check records a fresh baseline.",
        )

    @remove.autocomplete("id")
    @resume.autocomplete("id")
    async def id_autocomplete(self, interaction: discord.Interaction, current: int | str) -> list[app_commands.Choice[int]]:
        fetch = None if self.bot.store is None else self.clusters.list
        return await subscription_id_choices(interaction, current, fetch,
                                             lambda a: f"#{a.id} {a.symbol} {a.kind} {a.window} {a.exchange}{' · paused' if a.paused else ''}",
                                             timeout=AUTOCOMPLETE_TIMEOUT)

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        # the bot's own handler pauses daily and skew subscriptions; this one the cluster alerts
        if self.bot.store is None:
            return
        try:
            n = await self.clusters.pause_channel(channel.id, f"channel #{channel.name} was deleted")
        except Exception:
            log.exception("pausing the cluster alerts of deleted channel %s failed", channel.id)
            return
        if n:
            log.info("channel %s deleted: %d cluster alert(s) paused", channel.id, n)


async def setup(bot: LiqmapBot) -> None:
    await bot.add_cog(ClustersCog(bot))
