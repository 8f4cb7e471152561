"""The Discord bot: the ``commands.AutoShardedBot`` subclass, its command tree, error handling and command sync.

Sharding (issue 14): ``LIQMAP_SHARD_COUNT`` and ``LIQMAP_SHARD_IDS`` (:class:`bot.settings.ScaleSettings`)
give this process its shards; unset, discord.py asks Discord for the count and runs them all here.
The dispatcher (daily posts, skew and cluster alerts) and the command sync run in one process only
(``LIQMAP_DISPATCHER``, by default the one holding shard 0): it posts to every channel of every shard
over REST (an uncached channel is a partial messageable, see :class:`bot.poster.DiscordPoster`), and
each daily post still goes through the claim lease in the database, so an overlap of two
dispatchers (a rolling restart) never posts one report twice. The other processes answer the
interactions of their own shards and write their own heartbeat.

``LiqmapBot.setup_hook`` builds the report service, opens the store (running migrations), loads
the cogs (``bot.cogs.*``, each with ``async def setup(bot)``), creates the one dispatcher and the
cluster-alert watcher (``bot.cluster_watch``) and, in ``run`` mode, syncs commands *explicitly* and
starts both once the gateway is READY:

- ``DEV_GUILD_ID`` set: the commands are copied to that guild and synced there (instant);
  global commands are left alone.
- otherwise: a global sync happens only when the SHA-256 of the command definitions differs
  from the one recorded after the last global sync (``liqmap sync-commands`` forces one).

Never in ``on_ready``. The bot asks for no privileged intent: only ``guilds``, which keeps the
guild/channel/role cache needed to check the bot's own permissions in a target channel.
Every error of a command becomes one short ephemeral reply (:func:`send_error`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import signal
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from analysis.errors import InputError, LiqmapError, SourceError, Unavailable

from .contexts import NotInstalledHere, check_install, tree_defaults
from .settings import Settings, redact_url

if TYPE_CHECKING:  # (imported where used: `liqmap --help` and the CLI stay quick to start)
    from analysis.report import ReportService
    from analysis.tape.events import TapeReader

    from analysis.sources.budget import Demand

    from .cluster_watch import ClusterWatcher
    from .pacer import DiscordPacer
    from .scheduler import Dispatcher
    from .store import Store
    from .symbol_index import SymbolIndex

__all__ = [
    "LiqmapBot",
    "LiqmapTree",
    "COGS",
    "NO_MENTIONS",
    "command_definitions",
    "definitions_hash",
    "build_service",
    "send_error",
    "error_message",
    "invite_permissions",
    "invite_url",
    "dry_run",
    "render_sample_report",
    "run",
    "database_error",
    "discord_error",
    "sync_commands",
    "RedactSecrets",
    "install_log_redaction",
]

log = logging.getLogger(__name__)

#: how often the bot looks for a tape in its database while it reads none (seconds)
TAPE_WATCH_S = 900.0
COGS = ("bot.cogs.liqmap", "bot.cogs.about", "bot.cogs.daily", "bot.cogs.skew_alerts", "bot.cogs.clusters")
NO_MENTIONS = discord.AllowedMentions.none()
Mode = Literal["run", "dry-run", "sync"]


def bot_intents() -> discord.Intents:
    """No privileged intents: app commands need none; ``guilds`` keeps channels and roles cached."""
    intents = discord.Intents.none()
    intents.guilds = True
    return intents


def invite_permissions(*, history: bool = True) -> discord.Permissions:
    """View Channel, Send Messages, Embed Links, Attach Files (52224); with ``history`` also Read
    Message History (117760), which lets the dispatcher verify a post interrupted by a crash."""
    perms = discord.Permissions(view_channel=True, send_messages=True, embed_links=True, attach_files=True)
    perms.read_message_history = history
    return perms


def invite_url(client_id: int, *, history: bool = True) -> str:
    """The OAuth2 URL that adds the bot with scopes ``bot applications.commands``."""
    return discord.utils.oauth_url(client_id, permissions=invite_permissions(history=history),
                                   scopes=("bot", "applications.commands"))


def command_definitions(tree: app_commands.CommandTree) -> list[dict[str, Any]]:
    """The JSON Discord receives for the tree's global commands, sorted by name."""
    defs = [cmd.to_dict(tree) for cmd in tree.get_commands()]
    return sorted(defs, key=lambda d: (d.get("type", 1), d["name"]))


def definitions_hash(defs: list[dict[str, Any]]) -> str:
    """A stable SHA-256 over the definitions (key order does not matter)."""
    blob = json.dumps(defs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def build_service(settings: Settings) -> ReportService:
    """The report service over the configured sources (``LIQMAP_SOURCE``, ``LIQMAP_CACHE_DIR``, the
    CoinGlass key) and model (``LIQMAP_MODEL``), built as ``liqmap report`` builds its own."""
    from analysis.render_pool import make_renderer
    from analysis.report import ReportService

    from .settings import build_shared, build_sources, model_params

    sch = settings.schedule
    renderer = make_renderer(sch.render_workers, queue=sch.render_queue, wait_s=sch.render_wait_seconds,
                             timeout_s=sch.render_timeout_seconds)
    sources = build_sources(settings)
    shared = build_shared(settings)
    if shared is not None:
        from analysis.sharing import share_limiters

        names = share_limiters(sources, shared)
        log.info("shared layer: %s; reports, single-flight and the budgets %s shared", shared.status(),
                 ", ".join(names) or "(none)")
    return ReportService(sources, params=model_params(settings.sources), shared=shared,
                         ttl=sch.report_ttl_seconds, max_bytes=int(sch.report_cache_mb * 1024 * 1024),
                         renderer=renderer)


# -- logging -------------------------------------------------------------------------------------

class RedactSecrets(logging.Filter):
    """Masks secrets in a log record's message and traceback: the given values (bot token,
    CoinGlass key) and interaction tokens, which discord.py's own debug log (``liqmap -v bot``)
    prints in every interaction's webhook URL and in every received INTERACTION_CREATE payload."""

    _URL_TOKENS = re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_\-.]+")
    _FIELD_TOKENS = re.compile(r"""(['"]token['"]\s*:\s*['"])[^'"]+""")

    def __init__(self, secrets: tuple[str | None, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(x for x in secrets if x and len(x) >= 8)

    def redact(self, text: str) -> str:
        text = self._URL_TOKENS.sub(r"\1***", text)
        text = self._FIELD_TOKENS.sub(r"\1***", text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler's own error path
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def install_log_redaction(settings: Settings, logger: logging.Logger | None = None) -> RedactSecrets:
    """Add :class:`RedactSecrets` (with this deployment's token and key) to every handler of
    ``logger`` (default: the root logger, which every module's records propagate to)."""
    secrets = []
    if settings.discord.token is not None:
        secrets.append(settings.discord.token.get_secret_value().strip())
    if settings.sources.coinglass_api_key is not None:
        secrets.append(settings.sources.coinglass_api_key.get_secret_value().strip())
    flt = RedactSecrets(tuple(secrets))
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(flt)
    return flt


# -- errors --------------------------------------------------------------------------------------

def error_message(error: BaseException) -> tuple[str, bool]:
    """The short text a user sees for ``error`` and whether it is a bug (to be logged with an id).

    An error's text can quote outside text (a venue's error message, what the user typed): it
    goes through the same Discord-safe escaping as every outside string (``md_safe_text``).
    """
    from analysis.commentary import md_safe_text
    from analysis.sources.budget import HeldBack

    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, app_commands.TransformerError) and isinstance(error.__cause__, LiqmapError):
        error = error.__cause__
    if isinstance(error, HeldBack):  # queued behind an exchange budget: say when, not "try again shortly"
        wait = max(1, math.ceil(error.retry_after or 0))
        when = int(discord.utils.utcnow().timestamp()) + wait
        return f"{md_safe_text(error.reason, 1800)} (<t:{when}:R>). Please ask again then.", False
    if isinstance(error, SourceError):
        hint = f" (the venue asks us to wait {error.retry_after:.0f} s)" if error.retry_after else ""
        return f"Market data is unavailable right now: {md_safe_text(error, 1800)}{hint}. Please try again shortly.", False
    if isinstance(error, LiqmapError):
        return md_safe_text(error), False
    if isinstance(error, app_commands.CommandOnCooldown):
        wait = max(1, math.ceil(error.retry_after))
        when = int(discord.utils.utcnow().timestamp()) + wait
        return f"Easy there: you can ask for another map in {wait} s (<t:{when}:R>).", False
    if isinstance(error, app_commands.MissingPermissions):
        names = ", ".join(p.replace("_", " ").replace("guild", "server").title() for p in error.missing_permissions)
        return f"You need the {names} permission to use this command.", False
    if isinstance(error, app_commands.BotMissingPermissions):
        names = ", ".join(p.replace("_", " ").title() for p in error.missing_permissions)
        return f"I am missing the {names} permission here.", False
    if isinstance(error, app_commands.TransformerError):
        if error.type is discord.AppCommandOptionType.channel:
            return "I can't use that channel: I need to see it (View Channel), and it must be a text channel.", False
        return f"{md_safe_text(repr(str(error.value)[:40]))} is not a valid {error.type.name} here.", False
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command works in servers only.", False
    if isinstance(error, NotInstalledHere):
        return str(error), False
    if isinstance(error, app_commands.CheckFailure):
        return "You can't use this command here.", False
    if isinstance(error, (app_commands.CommandNotFound, app_commands.CommandSignatureMismatch)):
        return "This command is out of date on Discord's side; please try again in a minute.", False
    return "", True


async def send_error(interaction: discord.Interaction, error: BaseException) -> str | None:
    """Answer ``error`` with a short ephemeral message; log bugs with a traceback and an error id.

    Returns the error id for a bug, else None. Never raises (the interaction may have expired).
    """
    text, is_bug = error_message(error)
    text = text if len(text) <= 2000 else text[:1999] + "…"  # Discord refuses longer content
    error_id = None
    if is_bug:
        error_id = uuid.uuid4().hex[:8]
        cmd = interaction.command.qualified_name if interaction.command else "?"
        original = getattr(error, "original", error)
        log.error(
            "unexpected error %s in /%s (guild %s, user %s)", error_id, cmd, interaction.guild_id,
            interaction.user.id if interaction.user else "?", exc_info=(type(original), original, original.__traceback__),
        )
        text = f"Sorry, something went wrong on our side (error id `{error_id}`). It has been logged."
    else:
        log.info("refused /%s: %s", interaction.command.qualified_name if interaction.command else "?", text)
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
        elif interaction.extras.get("public_defer"):
            # The first followup after a public defer replaces the "thinking" message and cannot be
            # ephemeral; delete that message so the error stays private.
            interaction.extras["public_defer"] = False
            try:
                await interaction.delete_original_response()
            except discord.HTTPException:
                pass
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
        else:
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
    except discord.HTTPException as exc:
        log.warning("could not deliver an error message for interaction %s: %s", interaction.id, exc)
    return error_id


class LiqmapTree(app_commands.CommandTree):
    """The command tree: every command error becomes one short ephemeral reply; a server-only
    command reached through a user installation is refused first (:func:`bot.contexts.check_install`)."""

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        return await check_install(self, interaction)

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError, /) -> None:
        await send_error(interaction, error)


# -- the bot -------------------------------------------------------------------------------------

#: how often a process without the dispatcher rewrites its heartbeat (seconds; the dispatcher's own tick is 30 s)
HEARTBEAT_S = 30.0


def shard_options(settings: Settings) -> dict[str, Any]:
    """``shard_count``/``shard_ids`` for ``AutoShardedBot`` from the settings (empty: discord.py decides)."""
    scale = settings.scale
    out: dict[str, Any] = {}
    if scale.shard_count is not None:
        out["shard_count"] = scale.shard_count
    if scale.shard_id_list:
        out["shard_ids"] = list(scale.shard_id_list)
    return out


class LiqmapBot(commands.AutoShardedBot):
    """liqmap's Discord bot.

    ``mode``: ``"run"`` (start the dispatcher, sync commands), ``"dry-run"`` (everything but the
    gateway and Discord HTTP), ``"sync"`` (load commands only, for ``liqmap sync-commands``).
    ``service`` and ``store`` may be injected (tests); otherwise they are built from ``settings``.
    ``service`` and ``symbols`` exist from ``setup_hook`` on, before any cog loads; ``store`` is
    None only in ``"sync"`` mode.
    """

    settings: Settings
    mode: Mode
    store: Store | None
    scheduler: Dispatcher | None
    cluster_watch: ClusterWatcher | None
    tape: TapeReader | None  # realized liquidations, once they are recorded
    tape_task: asyncio.Task[None] | None  # the realized-liquidation recorder (LIQMAP_TAPE)
    cog_modules: tuple[str, ...]
    sync_state_path: Path

    def __init__(
        self,
        settings: Settings,
        *,
        mode: Mode = "run",
        service: ReportService | None = None,
        store: Store | None = None,
        cogs: tuple[str, ...] = COGS,
        sync_state_path: Path | None = None,
    ) -> None:
        for flag in ("warn_nacl", "warn_dave"):  # the bot uses no voice: skip those start-up warnings
            if hasattr(discord.VoiceClient, flag):
                setattr(discord.VoiceClient, flag, False)
        super().__init__(
            command_prefix=commands.when_mentioned,
            help_command=None,
            intents=bot_intents(),
            allowed_mentions=NO_MENTIONS,
            tree_cls=LiqmapTree,
            **tree_defaults(),  # server-only unless a command opts in (bot.contexts)
            **shard_options(settings),
        )
        self.settings = settings
        self.mode = mode
        self._service = service
        self._symbols: SymbolIndex | None = None
        self.store = store
        self.scheduler = None
        self.cluster_watch = None
        self.tape = None
        self.cog_modules = cogs
        self._owns_store = store is None
        self.tape_task = None
        self._tape_stop = asyncio.Event()
        self._tape_watch: asyncio.Task[None] | None = None
        self.hl_oi_task: asyncio.Task[Any] | None = None  # the Hyperliquid OI poller (LIQMAP_HL_OI)
        self._hl_oi_stop = asyncio.Event()
        self.sync_state_path = sync_state_path or settings.sources.state_dir / "command-sync.json"
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.pacer: DiscordPacer | None = None  # Discord's global rate for the dispatcher's posts
        self._pacer_watch: logging.Handler | None = None
        from analysis.sources.budget import Demand

        self.demand: Demand = Demand()  # which symbols the exchange budgets serve first (subscribed, most asked)
        self._demand_task: asyncio.Task[None] | None = None

    @property
    def runs_dispatcher(self) -> bool:
        """Whether this process posts (``LIQMAP_DISPATCHER``; by default the process holding shard 0)."""
        return self.settings.scale.runs_dispatcher

    def deployment(self) -> str:
        """One line for /about: this process's shards and the shared layer's state."""
        shared = getattr(self._service, "shared", None)
        where = shared.status() if shared is not None else "work shared by no other process"
        return f"This process: {self.shard_summary()}; {where}"

    def shard_summary(self) -> str:
        """``"shards 0-1 of 4"`` / ``"shards: automatic"`` / the shards discord.py runs once connected."""
        count = self.shard_count or self.settings.scale.shard_count
        ids = list(self.shard_ids or self.settings.scale.shard_id_list or (range(count) if count else ()))
        if not count:
            return "shards: automatic (discord.py asks Discord for the count)"
        return f"shard{'s' if len(ids) != 1 else ''} {_ranges(ids)} of {count}"

    @property
    def service(self) -> ReportService:
        """The report service (injected, or built by ``setup_hook``)."""
        if self._service is None:
            raise RuntimeError("the report service is built by setup_hook")
        return self._service

    @property
    def symbols(self) -> SymbolIndex:
        """The venues' symbol lists behind autocomplete (built by ``setup_hook``)."""
        if self._symbols is None:
            raise RuntimeError("the symbol index is built by setup_hook")
        return self._symbols

    # -- lifecycle -------------------------------------------------------------------------------
    async def setup_hook(self) -> None:
        from .symbol_index import SymbolIndex

        if self._service is None:
            self._service = build_service(self.settings)
        for src in self._service.sources.values():  # one demand for every source that orders its budget by it
            if isinstance(getattr(src, "demand", None), type(self.demand)):
                src.demand = self.demand
        self._symbols = SymbolIndex(self._service.sources)
        if self.store is None and self.mode != "sync":
            self.store = await self._open_store()
        if self.mode != "sync":
            await self.install_tape_reader()
        for module in self.cog_modules:
            await self.load_extension(module)
        if self.mode == "sync":
            return
        if self.runs_dispatcher:
            self.scheduler = self._make_scheduler()
            from .cluster_watch import make_cluster_watch

            self.cluster_watch = make_cluster_watch(self)
        if self.mode == "run":
            self.symbols.ensure_fresh()  # symbol lists for autocomplete, loaded in the background
            log.info("%s; dispatcher %s", self.shard_summary(),
                     "here" if self.runs_dispatcher else "in another process (LIQMAP_DISPATCHER)")
            if self.runs_dispatcher:  # one process syncs the commands (they are the application's, not a shard's)
                await self.sync_commands()
            if self.scheduler is not None:
                self.loop.create_task(self._start_dispatcher(), name="liqmap-start-dispatcher")
            else:
                self._heartbeat_task = self.loop.create_task(self._beat(), name="liqmap-heartbeat")
            self.start_tape()
            self.start_hl_oi()
            self._demand_task = self.loop.create_task(self.watch_demand(), name="liqmap-demand")
            if self.tape is None:  # a standalone `liqmap tape` may start recording into the database later
                self._tape_watch = self.loop.create_task(self.watch_for_tape(), name="liqmap-tape-watch")

    async def install_tape_reader(self) -> bool:
        """Set :attr:`tape` to a :class:`~bot.tape_store.TapeStore` reader over the store's engine
        when the bot records the tape (``LIQMAP_TAPE``) or its database already holds one (a
        standalone ``liqmap tape`` writes into the same ``DATABASE_URL``), and give it to the report
        service, so maps, heatmaps, texts and daily reports carry the realized overlays and swept
        cluster alerts can be served. Returns whether a reader is installed."""
        if self.tape is not None:
            return True
        engine = getattr(self.store, "engine", None)
        if engine is None:
            return False
        from .tape_store import TapeStore

        reader = TapeStore(engine)
        if not self.settings.tape.tape_enabled:
            try:
                if not await reader.has_tape():
                    return False
            except Exception:  # the overlays are optional: the bot runs without them
                log.warning("could not check the database for a realized-liquidation tape", exc_info=True)
                return False
        self.tape = reader
        if self.service is not None and getattr(self.service, "tape", False) is None:
            self.service.tape = reader
        log.info("realized liquidations: reading the tape in the database (%s)",
                 "recorded by this bot" if self.settings.tape.tape_enabled else "recorded by liqmap tape")
        return True

    async def watch_for_tape(self, interval_s: float = TAPE_WATCH_S) -> None:
        """Until a tape reader is installed: look for a tape in the database every ``interval_s``
        (a standalone ``liqmap tape`` started after the bot), then install it."""
        while self.tape is None:
            await asyncio.sleep(interval_s)
            await self.install_tape_reader()

    async def refresh_demand(self) -> int:
        """Read the symbols of active subscriptions (daily reports, skew and cluster alerts) into
        :attr:`demand`, so the exchange budgets refresh them first; returns how many."""
        engine = getattr(self.store, "engine", None)
        if engine is None:
            return 0
        from .demand import subscribed_symbols

        symbols = await subscribed_symbols(engine)
        self.demand.set_subscribed(symbols)
        return len(symbols)

    async def watch_demand(self, interval_s: float = TAPE_WATCH_S) -> None:
        """:meth:`refresh_demand` now and every ``interval_s``; a failure is logged and retried."""
        while True:
            try:
                await self.refresh_demand()
            except Exception:
                log.warning("reading the subscribed symbols failed; keeping the last set", exc_info=True)
            await asyncio.sleep(interval_s)

    def start_hl_oi(self, source: Any = None, **kw: Any) -> bool:
        """Start the Hyperliquid OI poller when ``LIQMAP_HL_OI`` is on, on the store's engine; it
        polls the report service's Hyperliquid source (one limiter for both) unless ``source`` is
        given; ``kw`` goes to :func:`bot.hl_oi_store.run_poller` (tests pass fake clocks)."""
        cfg = self.settings.tape
        if not cfg.hl_oi_enabled or self.store is None or self.hl_oi_task is not None:
            return False
        source = source or self.service.sources.get("hyperliquid")
        if source is None or not callable(getattr(source, "snapshot", None)):
            log.warning("LIQMAP_HL_OI is on but the sources (LIQMAP_SOURCE) have no live Hyperliquid; not polling")
            return False
        from .hl_oi_store import HlOiStore, run_poller

        self._hl_oi_stop = asyncio.Event()  # a fresh one: a stopped poller may be started again
        self.hl_oi_task = asyncio.get_running_loop().create_task(run_poller(
            source, HlOiStore(self.store.engine), self._hl_oi_stop, cfg.hl_oi_params, **kw), name="liqmap-hl-oi")
        return True

    async def stop_hl_oi(self) -> None:
        """Stop the OI poller before the store's engine closes."""
        task, self.hl_oi_task = self.hl_oi_task, None
        if task is None:
            return
        self._hl_oi_stop.set()
        done, _ = await asyncio.wait({task}, timeout=15.0)
        if not done:
            log.warning("the Hyperliquid OI poller did not stop within 15 s; cancelled")
            task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
        if results and isinstance(results[0], Exception):
            log.error("the Hyperliquid OI poller failed", exc_info=results[0])

    def start_tape(self, **kw: Any) -> bool:
        """Start the tape recorder task when ``LIQMAP_TAPE`` is on (it shares the store's engine);
        ``kw`` goes to :func:`bot.tape_store.supervise` (tests pass a fake recorder)."""
        tape_cfg = self.settings.tape
        if not tape_cfg.tape_enabled or self.store is None or self.tape_task is not None:
            return False
        from .tape_store import TapeStore, supervise

        tape = self.tape if isinstance(self.tape, TapeStore) else TapeStore(self.store.engine)
        self.tape_task = asyncio.get_running_loop().create_task(supervise(
            tape, self._tape_stop, venues=tape_cfg.venue_list, symbols=tape_cfg.symbol_list, urls=tape_cfg.urls,
            retention_days=tape_cfg.tape_retention_days, **kw), name="liqmap-tape-supervisor")
        return True

    async def stop_tape(self) -> None:
        """Stop the recorder (its stop gaps written) before the store's engine closes."""
        task, self.tape_task = self.tape_task, None
        if task is None:
            return
        self._tape_stop.set()
        done, _ = await asyncio.wait({task}, timeout=15.0)
        if not done:
            log.warning("the tape recorder did not stop within 15 s; cancelled")
            task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
        if isinstance(results[0], Exception):
            log.error("the tape recorder failed", exc_info=results[0])

    async def on_ready(self) -> None:
        # Logging only: command sync never happens here (see the module docstring).
        log.info("connected as %s to %d server(s); invite: %s", self.user, len(self.guilds),
                 invite_url(self.application_id or 0))

    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        # Pause (never delete) what posted there, so managers see why in the list commands.
        if self.store is None:
            return
        try:
            n = await self.store.pause_channel(channel.id, f"channel #{channel.name} was deleted")
        except Exception:
            log.exception("pausing the subscriptions of deleted channel %s failed", channel.id)
            return
        if n:
            log.info("channel %s deleted in guild %s: %d subscription(s) paused", channel.id, channel.guild.id, n)

    async def _beat(self, interval_s: float = HEARTBEAT_S) -> None:
        """The heartbeat of a process without the dispatcher: rewritten while its gateway is connected."""
        from datetime import datetime, timezone

        from analysis.paths import heartbeat_path

        from .health import Heartbeat

        beat = Heartbeat(heartbeat_path(), shards=self.shard_summary())
        await self.wait_until_ready()
        while not self.is_closed():
            beat(datetime.now(timezone.utc))
            await asyncio.sleep(interval_s)

    async def _start_dispatcher(self) -> None:
        # After READY the channel cache is complete, so the poster can check permissions first.
        await self.wait_until_ready()
        if self.scheduler is not None:
            self.scheduler.start()
        if self.cluster_watch is not None:
            self.cluster_watch.start()
        log.info("dispatcher started")

    async def _open_store(self) -> Store:
        """Open the database and run its migrations (exchanges limited to the configured venues).

        Start-up failures become one clear error (see :func:`database_error`), never a traceback.
        """
        from .store import Store

        try:
            store = await Store.open(
                self.settings.database.url,
                max_per_guild=self.settings.schedule.guild_subscription_cap,
                exchanges=("all", *self.service.venues),
            )
        except LiqmapError:
            raise
        except Exception as exc:
            mapped = database_error(exc, self.settings.database.url)
            if mapped is None and type(exc).__module__.startswith("alembic"):  # e.g. a revision it cannot locate
                from .schema import newer_database_error

                mapped = await newer_database_error(self.settings.database.url)
            if mapped is None:
                raise
            raise mapped from exc
        log.info("database: %s (migrated)", store.location)
        return store

    def _make_scheduler(self) -> Dispatcher:
        from .poster import DiscordPoster
        from .scheduler import make_dispatcher

        assert self.store is not None, "setup_hook opens the store before it makes the dispatcher"

        extra: dict[str, Any] = {}
        if self.mode == "run":  # the health signal read by `liqmap health` (bot.health)
            from analysis.paths import heartbeat_path

            from .health import Heartbeat

            extra["heartbeat"] = Heartbeat(heartbeat_path(), shards=self.shard_summary())
        from .pacer import DiscordPacer, watch_discord_http

        self.pacer = DiscordPacer(self.settings.schedule.discord_posts_per_second)
        if self.mode == "run":  # a global 429 discord.py waits out pauses the pacer too
            self._pacer_watch = watch_discord_http(self.pacer)
        return make_dispatcher(self.store, self.service, DiscordPoster(self), self.settings, pacer=self.pacer, **extra)

    async def close(self) -> None:
        if self._symbols is not None:
            self._symbols.stop()
        self._heartbeat_task = await _cancelled(self._heartbeat_task)
        await self.stop_tape()
        self._tape_watch = await _cancelled(self._tape_watch)
        await self.stop_hl_oi()
        self._demand_task = await _cancelled(self._demand_task)
        if self._pacer_watch is not None:
            logging.getLogger("discord.http").removeHandler(self._pacer_watch)
            self._pacer_watch = None
        for loop_ in (self.scheduler, self.cluster_watch):
            if loop_ is not None:
                try:
                    await loop_.stop()
                except Exception:
                    log.exception("stopping %s failed", type(loop_).__name__)
        if self.store is not None and self._owns_store:
            try:
                await self.store.close()
            except Exception:
                log.exception("closing the store failed")
        await _close_sources(self._service)
        await super().close()

    # -- command sync ----------------------------------------------------------------------------
    def definitions(self) -> list[dict[str, Any]]:
        return command_definitions(self.tree)

    def _recorded_hash(self) -> str | None:
        try:
            data = json.loads(self.sync_state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        return data.get(str(self.application_id or 0))

    def _record_hash(self, digest: str) -> None:
        try:
            data = json.loads(self.sync_state_path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        data[str(self.application_id or 0)] = digest
        try:
            self.sync_state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.sync_state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            tmp.replace(self.sync_state_path)
        except OSError as exc:
            log.warning("could not record the command hash in %s: %s", self.sync_state_path, exc)

    async def sync_guild(self, guild_id: int) -> str:
        """Copy the global commands to one guild and sync them there (instant; for development)."""
        guild = discord.Object(id=guild_id)
        self.tree.copy_global_to(guild=guild)
        synced = await self.tree.sync(guild=guild)
        return f"synced {len(synced)} command(s) to guild {guild_id}"

    async def sync_global(self, *, force: bool = False) -> str:
        """Sync the global commands if their definitions changed since the last global sync (or ``force``)."""
        digest = definitions_hash(self.definitions())
        if not force and self._recorded_hash() == digest:
            return f"global commands unchanged (definitions {digest[:12]}); not synced"
        synced = await self.tree.sync()
        self._record_hash(digest)
        return f"synced {len(synced)} global command(s) (definitions {digest[:12]})"

    async def sync_commands(self) -> list[str]:
        """The start-up policy from the module docstring; returns what was done, one line each."""
        gid = self.settings.discord.dev_guild_id
        done = [await self.sync_guild(gid)] if gid else [await self.sync_global()]
        for line in done:
            log.info(line)
        return done


_DRIVERS = {"asyncpg": "pip install 'liqmap[postgres]'", "aiosqlite": "pip install aiosqlite"}


def _ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    out: list[str] = []
    for i in sorted(ids):
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ",".join(out)


def database_error(exc: BaseException, url: str) -> LiqmapError | None:
    """The one-line error for a database that cannot be opened at start, or None for a bug.

    A bad ``DATABASE_URL`` or a missing driver is :class:`InputError` (exit 2); a server that
    cannot be reached now is :class:`Unavailable` (exit 75: a service manager retries). The URL is
    shown without its password and the driver's message is not quoted (it may echo credentials).
    """
    from sqlalchemy import exc as sa

    shown = redact_url(url)
    scheme = url.partition("://")[0] or url[:20]
    if isinstance(exc, ImportError):  # create_async_engine imports the driver named in the URL
        name = (getattr(exc, "name", None) or "").split(".")[0]
        hint = _DRIVERS.get(name, f"install the {name or 'database'} driver")
        return InputError(f"DATABASE_URL {scheme}:// needs the {name or 'missing'} driver, which is not installed: {hint}")
    if isinstance(exc, sa.NoSuchModuleError):
        return InputError(f"DATABASE_URL names an unknown database kind {scheme[:30]!r}; use "
                          "sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER:PASSWORD@HOST/DB")
    if isinstance(exc, sa.ArgumentError):
        return InputError("DATABASE_URL is not a database URL; write sqlite+aiosqlite:///FILE or "
                          "postgresql+asyncpg://USER:PASSWORD@HOST/DB")
    if isinstance(exc, sa.InvalidRequestError) and "async" in str(exc):
        return InputError(f"DATABASE_URL {scheme}:// is not an asyncio driver; use sqlite+aiosqlite or postgresql+asyncpg")
    cause = exc.orig if isinstance(exc, sa.DBAPIError) and exc.orig is not None else exc
    if scheme.startswith("sqlite"):
        if isinstance(exc, (sa.OperationalError, OSError)) and "locked" not in str(cause) and "busy" not in str(cause):
            return InputError(f"cannot open the SQLite database of DATABASE_URL {shown} "
                              f"({str(cause).splitlines()[0][:80] if str(cause) else type(cause).__name__}); "
                              "check that its directory exists and is writable")
        if isinstance(exc, (sa.OperationalError, OSError)):
            return Unavailable(f"the SQLite database of DATABASE_URL {shown} is locked by another process; try again later")
        return None
    if isinstance(exc, (OSError, asyncio.TimeoutError, sa.OperationalError, sa.InterfaceError)) or isinstance(
        cause, (OSError, asyncio.TimeoutError)
    ) or type(cause).__module__.startswith("asyncpg"):
        return Unavailable(f"the database at {shown} is unreachable right now ({type(cause).__name__}); "
                           "will be retried when the service restarts")
    return None


def discord_error(exc: BaseException) -> LiqmapError | None:
    """The one-line error for Discord failing at start, or None for a bug.

    Network failures, timeouts and Discord's 5xx are :class:`Unavailable` (exit 75); a refused
    token or missing access is :class:`InputError`. The token never appears: only the class and
    the HTTP status are shown.
    """
    import aiohttp

    if isinstance(exc, discord.LoginFailure):
        return InputError("Discord rejected DISCORD_TOKEN (invalid or reset); copy a fresh token from the "
                          "Developer Portal (Bot -> Reset Token)")
    if isinstance(exc, discord.PrivilegedIntentsRequired):  # pragma: no cover - we request none
        return InputError("Discord says a privileged intent is required; liqmap requests none")
    if isinstance(exc, discord.Forbidden):
        return InputError("Discord refused the request (HTTP 403): invite the bot with the applications.commands "
                          "scope, or check the guild id")
    if isinstance(exc, (discord.DiscordServerError, discord.GatewayNotFound)):
        return Unavailable(f"Discord is unavailable right now ({type(exc).__name__}); try again later")
    if isinstance(exc, discord.HTTPException) and exc.status in (408, 429):
        return Unavailable(f"Discord is unavailable right now (HTTP {exc.status}); try again later")
    if isinstance(exc, (aiohttp.ClientError, OSError, asyncio.TimeoutError, discord.ConnectionClosed)):
        return Unavailable(f"cannot reach Discord right now ({type(exc).__name__}); try again later")
    return None


def _token(settings: Settings) -> str:
    if not settings.discord.has_token:
        raise InputError(
            "DISCORD_TOKEN is not set; put it in .env or the environment (see .env.example), "
            "or check a deployment without it using `liqmap bot --dry-run`"
        )
    return settings.discord.token.get_secret_value().strip()  # type: ignore[union-attr]


async def dry_run(settings: Settings, **kw: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Start everything but the gateway: settings, database + migrations, report service, cogs,
    dispatcher and command tree. Returns the command definitions and a few status lines."""
    bot = LiqmapBot(settings, mode="dry-run", **kw)
    async with bot:
        await bot.setup_hook()
        defs = bot.definitions()
        status = [
            f"settings: {json.dumps(settings.safe_dict(), default=str)}",
            f"database: {bot.store.location if hasattr(bot.store, 'location') else redact_url(settings.database.url)} migrated; "
            f"{type(bot.store).__name__} with a cap of {bot.store.max_per_guild} subscriptions per server",
            f"report service: venues {', '.join(bot.service.venues)}, cache {bot.service.ttl:g} s, "
            f"up to {getattr(bot.service, 'max_bytes', 0) / 2**20:g} MB",
            *([f"dispatcher: {type(bot.scheduler).__name__} ready (not started)",
               f"cluster alerts: {type(bot.cluster_watch).__name__} ready (not started); swept alerts "
               + ("read the realized-liquidation tape" if bot.tape is not None else "unavailable: no realized-liquidation tape")]
              if bot.runs_dispatcher else ["dispatcher and cluster alerts: in another process (LIQMAP_DISPATCHER)"]),
            f"processes: {bot.deployment().removeprefix('This process: ')}",
            f"commands: {len(defs)} ({', '.join('/' + d['name'] for d in defs)}), definitions {definitions_hash(defs)[:12]}",
            await _tape_status(bot),
        ]
    status.append(await render_sample_report())
    return defs, status


async def _tape_status(bot: LiqmapBot) -> str:
    tape_cfg = bot.settings.tape
    if not tape_cfg.tape_enabled:
        if bot.tape is not None:
            return ("tape: not recorded by the bot (LIQMAP_TAPE=false); maps and reports read the tape "
                    "`liqmap tape` records in this database")
        return "tape: off (LIQMAP_TAPE=false; `liqmap tape` records standalone)"
    from .tape_store import needed_symbols

    symbols = tape_cfg.symbol_list or await needed_symbols(bot.store.engine)
    return f"tape: would record {', '.join(symbols)} from {', '.join(tape_cfg.venue_list)} (not started)"


async def render_sample_report(symbol: str = "BTCUSDT", window: str = "7d") -> str:
    """Build one report from the bundled sample (chart, summary, daily text, footer), as the real bot
    would, so a broken installation (no templates, no sample, no chart backend) fails the dry run.
    Returns a status line; raises the :class:`LiqmapError` that stopped it."""
    from analysis import commentary
    from analysis.report import ReportService
    from analysis.sources.registry import aclose_sources, make_sources

    sources = make_sources("sample")
    try:
        rep = await ReportService(sources).report(symbol, window, "all")
    finally:
        await aclose_sources(sources)
    if not rep.png.startswith(b"\x89PNG"):
        raise LiqmapError(f"the sample chart did not render as a PNG ({len(rep.png)} bytes)")
    text = commentary.daily(rep.reading, rep.map, with_footer=True)
    return (f"sample report: {rep.symbol} {window} rendered from the bundled sample: chart {len(rep.png):,} bytes, "
            f"summary {len(rep.summary):,} chars, daily report {len(text):,} chars")


async def run(settings: Settings) -> None:
    """Run the bot until it is stopped."""
    token = _token(settings)
    install_log_redaction(settings)
    bot = LiqmapBot(settings, mode="run")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:  # close cleanly on docker stop / Ctrl-C: dispatcher, store and sources
            loop.add_signal_handler(sig, lambda: loop.create_task(bot.close()))
        except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
            pass
    async with bot:
        try:
            await bot.start(token)
        except LiqmapError:
            raise
        except Exception as exc:
            mapped = discord_error(exc)
            if mapped is None:
                raise
            raise mapped from None


async def sync_commands(settings: Settings, *, guild_id: int | None = None) -> list[str]:
    """``liqmap sync-commands``: log in over HTTP only (no gateway) and sync now.

    Without ``guild_id`` the global commands are synced unconditionally; with it, only that guild.
    """
    token = _token(settings)
    install_log_redaction(settings)
    bot = LiqmapBot(settings, mode="sync")
    async with bot:
        try:
            await bot.login(token)  # runs setup_hook in "sync" mode: store and cogs only
            line = await (bot.sync_guild(guild_id) if guild_id else bot.sync_global(force=True))
        except LiqmapError:
            raise
        except Exception as exc:
            mapped = discord_error(exc)
            if mapped is None:
                raise
            raise mapped from None
    return [line]


async def _cancelled(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait for it to end; returns None for the attribute that held it."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return None


async def _close_sources(service: Any) -> None:
    """Close the service's renderer (its worker processes exit), its shared layer, then its sources."""
    """Close the service's renderer (its worker processes exit), then its sources."""
    closer = getattr(service, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except Exception:
            log.exception("closing the renderer failed")
    shared = getattr(service, "shared", None)
    if shared is not None:
        try:
            await shared.aclose()
        except Exception:
            log.exception("closing the shared layer failed")
    for src in getattr(service, "sources", {}).values():
        closer = getattr(src, "aclose", None) or getattr(src, "close", None)
        if closer is None:
            continue
        try:
            res = closer()
            if asyncio.iscoroutine(res):
                await res
        except Exception:
            log.exception("closing source %s failed", getattr(src, "name", "?"))
