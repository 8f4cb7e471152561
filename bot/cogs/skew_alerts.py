"""``/skew-alerts subscribe|list|unsubscribe|resume``: notices when a symbol's skew class changes.

For people with Manage Server. The dispatcher recomputes subscribed symbols every
``LIQMAP_WATCH_INTERVAL_MINUTES`` and classifies the skew (short/long notional near price) with
hysteresis: a class is entered at the ``mild``/``heavy`` ratios and left only past the lower exit
ratios, with a cooldown per (channel, symbol). The last announced class is stored, so a restart
does not announce again.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from analysis.commentary import md_safe_text
from analysis.errors import InputError
from analysis.hysteresis import HysteresisParams
from analysis.metrics import SKEW_CLASSES
from analysis.symbols import parse_symbol
from analysis.windows import parse_window

from ..app import LiqmapBot
from ..checks import ManagerGroupCog, check_target_channel, guild_of, history_hint
from ..choices import WINDOW_CHOICES, SubscriptionId, exchange_choices, offer_choices, subscription_id_choices
from ..replies import list_subscriptions, reply_private, resume_subscription
from ..store import SkewAlert, Store
from ..symbol_index import check_listed, symbol_choices

__all__ = ["SkewAlertsCog", "describe_skew_alert", "setup"]

log = logging.getLogger(__name__)

AUTOCOMPLETE_TIMEOUT = 2.0


def describe_skew_alert(w: SkewAlert) -> str:
    """One list line: id, symbol, window, exchange, channel, thresholds, last class or pause."""
    p = w.params
    head = f"`#{w.id}` **{w.symbol}** · {w.window} · {w.exchange} → <#{w.channel_id}>"
    detail = (f"mild {p.mild:g}× (exit {p.exit_mild:.3g}×) · heavy {p.heavy:g}× (exit {p.exit_heavy:.3g}×) · "
              f"cooldown {w.cooldown_s // 60} min")
    if w.paused:
        when = f"<t:{int(w.paused_at.timestamp())}:R>" if w.paused_at else "?"
        return (f"{head}\n  ⏸ paused since {when}: {md_safe_text(w.paused_reason, 300)} — "
                f"`/skew-alerts resume id:{w.id}`\n  {detail}")
    last = SKEW_CLASSES[w.last_class].label if w.last_class in SKEW_CLASSES else "not measured yet"
    ratio = f" (ratio {w.last_ratio:.2f})" if w.last_ratio is not None else ""
    return f"{head}\n  now: {last}{ratio} · {detail}"


Ratio = app_commands.Range[float, 1.01, 100.0]


class SkewAlertsCog(ManagerGroupCog, group_name="skew-alerts",
                 group_description="Notices in a channel when a symbol's liquidation skew changes"):
    """The ``/skew-alerts`` command group."""

    def __init__(self, bot: LiqmapBot) -> None:
        self.bot = bot
        offer_choices(self.subscribe, exchange=exchange_choices(bot.service.venues))

    @property
    def store(self) -> Store:
        store = self.bot.store
        if store is None:
            raise InputError("skew alerts are not available: the bot has no database configured")
        return store

    @app_commands.command(name="subscribe", description="Post a notice in a channel whenever a symbol's skew class changes")
    @app_commands.describe(
        channel="Channel to post the notices in",
        symbol="Perpetual to watch, e.g. BTC or ETHUSDT",
        window="Map window the skew is read from (default 7 days)",
        exchange="Which exchange's data to use (default: all exchanges combined)",
        mild="Short/long ratio that counts as skewed (default 1.5: 1.5x more on one side)",
        heavy="Ratio that counts as heavily skewed (default 3)",
        mild_exit="Ratio below which 'skewed' ends again (default mild / 1.1)",
        heavy_exit="Ratio below which 'heavily skewed' ends again (default heavy / 1.1)",
        cooldown_minutes="Minimum minutes between two notices for this symbol here (default 60)",
    )
    @app_commands.choices(window=WINDOW_CHOICES)
    async def subscribe(
        self,
        interaction: discord.Interaction,
        channel: discord.TextChannel,
        symbol: str,
        window: str = "7d",
        exchange: str = "all",
        mild: Ratio | None = None,
        heavy: Ratio | None = None,
        mild_exit: Ratio | None = None,
        heavy_exit: Ratio | None = None,
        cooldown_minutes: app_commands.Range[int, 1, 7 * 24 * 60] | None = None,
    ) -> None:
        store = self.store
        sym = parse_symbol(symbol).symbol
        win = parse_window(window).label
        check_listed(self.bot.symbols, self.bot.service, [sym], exchange)
        kw: dict[str, float] = {k: v for k, v in (("mild", mild), ("heavy", heavy)) if v is not None}
        HysteresisParams(exit_mild=mild_exit, exit_heavy=heavy_exit, **kw)  # says what is wrong, before storing
        check_target_channel(interaction, channel)
        await interaction.response.defer(ephemeral=True, thinking=True)
        w = await store.add_skew_alert(
            guild_of(interaction), channel.id, symbol=sym, window=win, exchange=exchange, created_by=interaction.user.id,
            mild=mild, heavy=heavy, exit_mild=mild_exit, exit_heavy=heavy_exit,
            cooldown_s=None if cooldown_minutes is None else int(cooldown_minutes) * 60,
        )
        log.info("guild %s added skew alert %s", interaction.guild_id, w.id)
        await reply_private(interaction, "Skew alert set. The first check records the current class; "
                                         f"a notice follows when it changes.\n{describe_skew_alert(w)}"
                                         f"{history_hint(interaction, channel)}")

    @subscribe.autocomplete("symbol")
    async def symbol_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return symbol_choices(self.bot.symbols, self.bot.service, current,
                              getattr(interaction.namespace, "exchange", None))

    @app_commands.command(name="list", description="Show this server's skew alerts, including paused ones")
    async def alerts_list(self, interaction: discord.Interaction) -> None:
        await list_subscriptions(
            interaction, self.store, self.store.list_skew_alerts, title="Skew alerts",
            empty="No skew alerts yet. Create one with `/skew-alerts subscribe`.", describe=describe_skew_alert,
        )

    @app_commands.command(name="unsubscribe", description="Stop and delete a skew alert")
    @app_commands.describe(id="The alert's number, as shown by /skew-alerts list")
    async def unsubscribe(self, interaction: discord.Interaction, id: SubscriptionId) -> None:
        store = self.store
        await interaction.response.defer(ephemeral=True, thinking=True)
        w = await store.remove_skew_alert(guild_of(interaction), id)
        log.info("guild %s removed skew alert %s", interaction.guild_id, w.id)
        await reply_private(interaction, f"Removed skew alert `#{w.id}` ({w.symbol} → <#{w.channel_id}>).")

    @app_commands.command(name="resume", description="Resume a paused skew alert (after fixing the channel or permissions)")
    @app_commands.describe(id="The alert's number, as shown by /skew-alerts list")
    async def resume(self, interaction: discord.Interaction, id: SubscriptionId) -> None:
        await resume_subscription(
            interaction, id, get=self.store.get_skew_alert, resume=self.store.resume_skew_alert,
            describe=describe_skew_alert, noun="skew alert", short="alert", list_command="/skew-alerts list",
            redo="unsubscribe and subscribe again for another channel",
            resumed_note=" The next check records a fresh baseline.",
        )

    @unsubscribe.autocomplete("id")
    @resume.autocomplete("id")
    async def id_autocomplete(self, interaction: discord.Interaction, current: int | str) -> list[app_commands.Choice[int]]:
        fetch = None if self.bot.store is None else self.store.list_skew_alerts
        return await subscription_id_choices(interaction, current, fetch,
                                             lambda w: f"#{w.id} {w.symbol} {w.window} {w.exchange}{' · paused' if w.paused else ''}",
                                             timeout=AUTOCOMPLETE_TIMEOUT)


async def setup(bot: LiqmapBot) -> None:
    await bot.add_cog(SkewAlertsCog(bot))
