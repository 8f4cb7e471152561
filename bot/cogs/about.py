"""``/about``: what the map is and is not, the method, the latest accuracy, the data and the venues now.

Installable by a server and by a user (:mod:`bot.contexts`). The answer is one embed (title, a
description of at most 4,096 characters from ``templates/about.md.j2`` through
:func:`analysis.commentary.about`, a footer), sent without pings. What it gathers, each step
bounded so the answer never waits long:

- the accuracy: :func:`analysis.accuracy.latest_accuracy` (the shipped backtest headline, or the
  live score ``liqmap score`` wrote, ``<data dir>/score-latest.json``, when it covers later data);
- the data: per live venue the newest bar of the bar cache (:meth:`BarCache.newest`), and per
  venue the newest realized liquidation of the tape in the last 24 hours (:meth:`TapeStore.latest`);
- the venues: :class:`bot.venue_health.VenueHealth` (one probe per venue, cached 60 s, at most
  3.5 s of waiting). An offline source (sample, recording, file) asks no exchange;
- the exchange budgets: how many symbols Binance's open-interest budget holds back now and the
  first few (:meth:`analysis.sources.budget.RequestBudget.held`), and the dispatcher's posting
  capacity (:attr:`bot.scheduler.Dispatcher.capacity`: posts per due minute that fit the grace window).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from analysis import commentary
from analysis.accuracy import latest_accuracy
from analysis.errors import LiqmapError

from ..app import NO_MENTIONS
from ..contexts import installable_anywhere, reply_ephemeral_if_external
from ..venue_health import VenueHealth

if TYPE_CHECKING:
    from ..app import LiqmapBot

__all__ = ["AboutCog", "setup", "source_kind", "STEP_TIMEOUT", "TAPE_LOOKBACK_MS"]

log = logging.getLogger(__name__)

STEP_TIMEOUT = 3.0  # seconds for each local read (accuracy files, bar cache, tape)
TAPE_LOOKBACK_MS = 24 * 3_600_000
EMBED_COLOUR = 0x5865F2


def source_kind(spec: str) -> str:
    """``LIQMAP_SOURCE`` as ``live``, ``sample``, ``recorded`` or ``file`` (never its path)."""
    spec = spec.strip()
    if spec in ("live", "sample"):
        return spec
    return "recorded" if spec.startswith("recorded:") else "file"


def _score_path() -> Path | None:
    from analysis.tape.score import latest_score_path

    try:
        return latest_score_path(create=False)
    except LiqmapError:  # no data directory: there is no live score to read
        return None


class AboutCog(commands.Cog):
    """The ``/about`` command."""

    def __init__(self, bot: LiqmapBot, *, health: VenueHealth | None = None) -> None:
        self.bot = bot
        self.source = source_kind(bot.settings.sources.source)
        live = tuple(bot.service.venues) if self.source == "live" else ()
        self.health = health if health is not None else VenueHealth(live)

    async def cog_unload(self) -> None:
        await self.health.close()

    @app_commands.command(name="about", description="What the liquidation map is and is not, its accuracy, "
                                                    "data freshness and which exchanges answer")
    @installable_anywhere
    async def about(self, interaction: discord.Interaction) -> None:
        private = reply_ephemeral_if_external(interaction)
        await interaction.response.defer(ephemeral=private, thinking=True)
        interaction.extras["public_defer"] = not private
        facts = await self.facts()
        embed = discord.Embed(title="About liqmap", description=commentary.about(facts), colour=EMBED_COLOUR)
        embed.set_footer(text="Estimated liquidation maps from public exchange data · not financial advice")
        await interaction.followup.send(embed=embed, ephemeral=private, allowed_mentions=NO_MENTIONS)
        interaction.extras["public_defer"] = False

    async def facts(self) -> commentary.AboutFacts:
        """Everything /about says, gathered concurrently, each part bounded in time."""
        service = self.bot.service
        accuracy, bars, tape, checks = await asyncio.gather(
            self._accuracy(), self._bars(), self._tape(), self.health.check())
        overrides = service.params.non_default()
        return commentary.AboutFacts(
            method_url=self.bot.settings.discord.method_url,
            venues=tuple(service.venues),
            source=self.source,
            accuracy=accuracy[0], accuracy_error=accuracy[1],
            bars=bars,
            tape=tape[0], tape_since_ms=tape[1], tape_error=tape[2],
            checks=None if self.source != "live" else tuple((v, s.state, s.detail) for v, s in checks.items()),
            model_overrides=tuple(overrides.items()),
            deployment=self.bot.deployment(),
            held_back=self._held_back(),
            posting=self._posting(),
        )

    def _held_back(self) -> tuple[tuple[str, int, tuple[str, ...]], ...]:
        """Per exchange budget (Binance's open-interest history): the keys it holds back now."""
        from analysis.sources.budget import RequestBudget

        out = []
        for src in self.bot.service.sources.values():
            budget = getattr(src, "oi_budget", None)
            if isinstance(budget, RequestBudget):
                held = budget.held()
                if held:
                    out.append((budget.params.describe(), len(held), tuple(h.key for h in held[:5])))
        return tuple(out)

    def _posting(self) -> str:
        cap = getattr(self.bot.scheduler, "capacity", None)
        line = getattr(cap, "line", None)
        return line() if callable(line) else ""

    async def _accuracy(self) -> tuple[Any, str]:
        try:
            return await asyncio.wait_for(asyncio.to_thread(lambda: latest_accuracy(_score_path())), STEP_TIMEOUT), ""
        except LiqmapError as exc:
            log.warning("/about: accuracy unavailable: %s", exc)
            return None, str(exc)
        except asyncio.TimeoutError:
            return None, f"the accuracy files did not load within {STEP_TIMEOUT:g} s"

    async def _bars(self) -> tuple[tuple[str, int | None], ...]:
        if self.source != "live":
            return ()
        from analysis.sources.cache import BarCache

        def newest() -> tuple[tuple[str, int | None], ...]:
            out = []
            for venue, src in self.bot.service.sources.items():
                cache = getattr(src, "cache", None)
                if isinstance(cache, BarCache):
                    out.append((venue, cache.newest(venue)))
            return tuple(out)

        try:
            return await asyncio.wait_for(asyncio.to_thread(newest), STEP_TIMEOUT)
        except (asyncio.TimeoutError, LiqmapError, OSError) as exc:
            log.warning("/about: bar cache unreadable: %s", exc or type(exc).__name__)
            return ()
        except Exception as exc:  # sqlite3.Error and the like: the answer goes on without it
            log.warning("/about: bar cache unreadable (%s)", type(exc).__name__)
            return ()

    async def _tape(self) -> tuple[tuple[tuple[str, int], ...] | None, int, str]:
        since = int(time.time() * 1000) - TAPE_LOOKBACK_MS
        engine = getattr(self.bot.store, "engine", None)
        if engine is None:
            return None, since, "no database"
        from ..tape_store import TapeStore

        try:
            latest = await asyncio.wait_for(TapeStore(engine).latest(since), STEP_TIMEOUT)
        except asyncio.TimeoutError:
            return None, since, f"no answer from the database within {STEP_TIMEOUT:g} s"
        except Exception as exc:  # the database's own errors: named by class, never quoted
            log.warning("/about: tape unreadable", exc_info=True)
            return None, since, f"the database refused the query ({type(exc).__name__})"
        return tuple(sorted(latest.items())), since, ""


async def setup(bot: LiqmapBot) -> None:
    await bot.add_cog(AboutCog(bot))
