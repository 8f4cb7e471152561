"""``/liqmap``: an estimated liquidation map for one perpetual, with the chart and its controls.

The command validates its options (pure, microseconds), charges the per-user cooldown
(``LIQMAP_COOLDOWN_USES`` per ``LIQMAP_COOLDOWN_SECONDS``; a refused request does not count; one
charge per command whatever the view), defers, asks the report service for the report and/or the
heatmap (each cached for ``LIQMAP_REPORT_TTL_SECONDS``, shared by concurrent requests) and sends
one followup, a Components V2 message built by :mod:`bot.controls`: ``view`` map (default) shows
``liqmap.png``, heatmap ``heatmap.png``, both the two in one message; its controls (window, view,
exchange, refresh) are registered here and handled by :class:`~bot.controls.AnswerControls`. A heatmap of a
snapshot-only venue (CoinGlass) is refused before the defer. Validation runs
before the defer on purpose: a refusal must be ephemeral, and after a public defer Discord cannot
make the first followup ephemeral.

Installable by a server and by a user (:mod:`bot.contexts`); in a server that has not added the
app and does not let the member post external apps' replies, the answer is private.

Symbol autocomplete reads :class:`SymbolIndex`, which holds the venues' symbol lists in memory and
refreshes them in the background: an autocomplete answer never waits for the network.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from analysis.errors import InputError
from analysis.options import VIEWS
from analysis.symbols import parse_symbol
from analysis.windows import parse_window

from ..app import NO_MENTIONS, LiqmapBot
from ..choices import VIEW_CHOICES, WINDOW_CHOICES, exchange_choices, offer_choices
from ..contexts import installable_anywhere, reply_ephemeral_if_external
from ..controls import CONTROL_ITEMS, AnswerControls, AnswerState, attach
from ..cooldown import UserCooldown
from ..symbol_index import check_listed, symbol_choices

__all__ = ["LiqmapCog", "setup"]

log = logging.getLogger(__name__)


class LiqmapCog(commands.Cog):
    """The ``/liqmap`` command and its symbol autocomplete."""

    def __init__(self, bot: LiqmapBot) -> None:
        self.bot = bot
        self.service = bot.service
        self.index = bot.symbols
        sched = bot.settings.schedule
        self.cooldown = UserCooldown(sched.cooldown_uses, sched.cooldown_seconds)
        self.controls = AnswerControls(self.service, self.cooldown, self.validate)
        offer_choices(self.liqmap, exchange=exchange_choices(self.service.venues))

    @installable_anywhere
    @app_commands.command(name="liqmap", description="Liquidation map of a perpetual: chart, skew and key levels")
    @app_commands.describe(
        symbol="Perpetual to map, e.g. BTC, ETHUSDT or SOL-USDT-SWAP",
        window="How far back open-interest flow is read (default 7 days)",
        exchange="Which exchange's data to use (default: all exchanges combined)",
        private="Only you see the answer (default: everyone in the channel)",
        view="Map now, heatmap over the window, or both (default map)",
    )
    @app_commands.choices(window=WINDOW_CHOICES, view=VIEW_CHOICES)
    async def liqmap(self, interaction: discord.Interaction, symbol: str, window: str = "7d",
                     exchange: str = "all", private: bool = False, view: str = "map") -> None:
        await self.answer(interaction, symbol, window, exchange, private, view)

    @liqmap.autocomplete("symbol")
    async def symbol_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return symbol_choices(self.index, self.service, current, getattr(interaction.namespace, "exchange", None))

    async def cog_load(self) -> None:
        attach(self.bot, self.controls)
        self.bot.add_dynamic_items(*CONTROL_ITEMS)  # the answer's controls, persistent across restarts

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(*CONTROL_ITEMS)

    def validate(self, symbol: str, window: str, exchange: str, view: str = "map") -> tuple[str, str, tuple[str, ...]]:
        """Check the options without I/O; InputError says what would be valid (a heatmap of a
        snapshot-only venue included)."""
        pair = parse_symbol(symbol)
        win = parse_window(window)
        if view not in VIEWS:  # Discord offers only the choices; a hand-made request is refused
            raise InputError(f"unknown view {str(view)[:20]!r}; choose one of {', '.join(VIEWS)}")
        venues = check_listed(self.index, self.service, [pair.symbol], exchange)
        if view != "map":
            self.service.heatmap_venues(exchange)
        return pair.symbol, win.label, venues

    async def answer(self, interaction: discord.Interaction, symbol: str, window: str, exchange: str, private: bool,
                     view: str = "map") -> None:
        sym, win, _ = self.validate(symbol, window, exchange, view)
        private = reply_ephemeral_if_external(interaction, private)  # a server without external apps
        self.cooldown.charge(interaction.user.id)  # once, whatever the view
        self.bot.demand.asked(sym)  # the most asked symbols are refreshed first when a budget is short
        await interaction.response.defer(ephemeral=private, thinking=True)
        interaction.extras["public_defer"] = not private
        state = AnswerState(sym, win, exchange.strip().lower(), view, interaction.user.id)
        layout, files = await self.controls.render(state)
        await interaction.followup.send(view=layout, files=files, ephemeral=private, allowed_mentions=NO_MENTIONS)
        interaction.extras["public_defer"] = False


async def setup(bot: LiqmapBot) -> None:
    await bot.add_cog(LiqmapCog(bot))
