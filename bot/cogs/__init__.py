"""The bot's cogs, one per feature, each a module with ``async def setup(bot)``.

Shared here: option choices (windows, exchanges, views), the symbol index behind symbol autocomplete,
timezone autocomplete, the Manage Server command group with its runtime check, and the check of
the bot's own permissions in a target channel.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zoneinfo
from collections import deque
from typing import Any, Awaitable, Callable, Iterable

import discord
from discord import app_commands

from analysis.errors import InputError, LiqmapError
from analysis.options import VIEWS
from analysis.symbols import parse_symbol, suggest
from analysis.venues import display_name
from analysis.windows import WINDOWS

from ..poster import REQUIRED_CHANNEL_PERMISSIONS, missing_channel_permissions
from ..store import ITEM_ID_MAX

__all__ = [
    "WINDOW_CHOICES",
    "VIEW_CHOICES",
    "exchange_choices",
    "SymbolIndex",
    "symbol_choices",
    "check_listed",
    "UserCooldown",
    "timezone_choices",
    "ManagerGroup",
    "REQUIRED_CHANNEL_PERMISSIONS",
    "missing_channel_permissions",
    "require_manage_guild",
    "check_target_channel",
    "history_hint",
    "message_chunks",
    "reply_private",
    "list_subscriptions",
    "resume_subscription",
    "SubscriptionId",
    "ITEM_ID_MAX",
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

# Shown first when present in the venues' lists (the most asked-for perpetuals), then A-Z.
_MAJORS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "BNBUSDT", "ADAUSDT", "AVAXUSDT", "LINKUSDT")
_MAJOR_RANK = {s: i for i, s in enumerate(_MAJORS)}


def exchange_choices(venues: Iterable[str]) -> list[app_commands.Choice[str]]:
    """``all`` plus each venue the report service has (CoinGlass appears only with a key)."""
    out = [app_commands.Choice(name=display_name("all"), value="all")]
    out += [app_commands.Choice(name=display_name(v), value=v) for v in venues]
    return out


class SymbolIndex:
    """The venues' symbol lists for autocomplete, refreshed in the background, read instantly.

    ``suggest()`` never awaits: when the lists are stale it schedules a refresh and answers with
    what it has. A venue whose ``symbols()`` fails keeps its previous list.
    """

    def __init__(self, sources: dict[str, Any], *, ttl: float = 3600.0, timeout: float = 20.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sources = sources
        self.ttl = ttl
        self.timeout = timeout
        self._clock = clock
        self._lists: dict[str, frozenset[str]] = {}
        self._loaded_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        return self._loaded_at is not None

    def venues_of(self, symbol: str) -> list[str]:
        return [v for v, syms in self._lists.items() if symbol in syms]

    def known(self, venues: Iterable[str]) -> frozenset[str] | None:
        """Symbols listed on any of ``venues``; None when none of their lists is loaded."""
        lists = [self._lists[v] for v in venues if v in self._lists]
        return frozenset().union(*lists) if lists else None

    async def refresh(self) -> None:
        """Fetch every venue's list (bounded by ``timeout``); keep old lists on failure."""

        async def one(venue: str, src: Any) -> None:
            try:
                syms = await asyncio.wait_for(src.symbols(), self.timeout)
            except (LiqmapError, asyncio.TimeoutError) as exc:
                log.warning("symbol list of %s unavailable: %s", venue, exc or type(exc).__name__)
                return
            except Exception:
                log.exception("symbol list of %s failed", venue)
                return
            self._lists[venue] = frozenset(str(s).upper() for s in syms)

        await asyncio.gather(*(one(v, s) for v, s in self.sources.items()))
        self._loaded_at = self._clock()

    def ensure_fresh(self) -> None:
        """Start a background refresh when the lists are stale and none is running."""
        stale = self._loaded_at is None or self._clock() - self._loaded_at > self.ttl
        if stale and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self.refresh(), name="liqmap-symbol-refresh")

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def suggest(self, current: str, venues: Iterable[str], limit: int = 25) -> list[tuple[str, list[str]]]:
        """Up to ``limit`` (symbol, venues listing it) for what the user typed so far."""
        self.ensure_fresh()
        venues = [v for v in venues if v in self._lists] or list(self._lists)
        pool: dict[str, list[str]] = {}
        for v in venues:
            for s in self._lists[v]:
                pool.setdefault(s, []).append(v)
        typed = current.strip().upper().replace("/", "").replace("-", "").replace("_", "")
        typed = typed.removesuffix("SWAP").removesuffix("PERP").removesuffix(".P")
        try:
            canonical: str | None = parse_symbol(current).symbol if typed else None
        except InputError:
            canonical = None
        if not pool:  # lists not loaded yet: offer the canonical spelling of what they typed
            return [(canonical, [])] if canonical else []
        hits = [s for s in pool if typed in s or s == canonical] if typed else list(pool)

        def rank(s: str) -> tuple[int, int, str]:
            tier = 0 if s in (canonical, typed) else 1 if s.startswith(typed) else 2
            return (tier, _MAJOR_RANK.get(s, len(_MAJORS)), s)

        return [(s, sorted(pool[s])) for s in sorted(hits, key=rank)[:limit]]


def require_manage_guild(interaction: discord.Interaction) -> None:
    """Raise the library's own errors unless the member may manage the server (runtime check).

    ``default_permissions`` only hides a command; server admins can override it per role or
    channel, so the callback checks again.
    """
    if interaction.guild is None:
        raise app_commands.NoPrivateMessage()
    if not interaction.permissions.manage_guild:
        raise app_commands.MissingPermissions(["manage_guild"])


def check_target_channel(interaction: discord.Interaction, channel: discord.abc.GuildChannel | discord.Thread) -> None:
    """Refuse (InputError) a channel the bot cannot post reports to, naming what is missing."""
    guild = interaction.guild
    if guild is None:
        raise app_commands.NoPrivateMessage()
    real = guild.get_channel_or_thread(channel.id)
    if real is None:
        raise InputError(f"I can't see <#{channel.id}>; give me View Channel there or pick another channel.")
    if not isinstance(real, (discord.TextChannel, discord.Thread)):
        raise InputError(f"<#{real.id}> is not a text channel or thread; pick a text channel.")
    me = guild.me
    if me is None:
        raise InputError("I can't check my permissions in this server yet; please try again in a minute.")
    missing = missing_channel_permissions(real.permissions_for(me), thread=isinstance(real, discord.Thread))
    if missing:
        raise InputError(
            f"I can't post reports in <#{real.id}>: I'm missing {', '.join(missing)} there. "
            "Grant them to my role (or in the channel's settings) and try again."
        )


def check_listed(index: SymbolIndex, service: Any, symbols: Iterable[str], exchange: str) -> tuple[str, ...]:
    """The venues for ``exchange``; InputError (with close spellings) for a symbol none of them lists.

    Symbols pass unchecked while the venues' lists are not loaded yet: the source then decides.
    """
    venues = service.resolve_venues(exchange)
    known = index.known(venues)
    if known is None:
        return venues
    for sym in symbols:
        if sym not in known:
            where = exchange if exchange != "all" else "any of " + ", ".join(venues)
            close = suggest(sym, known)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise InputError(f"{sym} is not listed on {where}.{hint}")
    return venues


class UserCooldown:
    """At most ``uses`` charges per user in any ``per`` seconds (a sliding window).

    Charged only when work is actually started, so a refused typo does not count.
    """

    def __init__(self, uses: int, per: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.uses = uses
        self.per = per
        self._clock = clock
        self._hits: dict[int, deque[float]] = {}
        self.cooldown = app_commands.Cooldown(uses, per)  # carried by the error, for handlers

    def charge(self, user_id: int) -> None:
        """Record one use, or raise :class:`app_commands.CommandOnCooldown` with the wait."""
        if self.per <= 0:
            return
        now = self._clock()
        if len(self._hits) > 10_000:  # forget users whose window has passed
            self._hits = {u: q for u, q in self._hits.items() if q and now - q[-1] < self.per}
        hits = self._hits.setdefault(user_id, deque())
        while hits and now - hits[0] >= self.per:
            hits.popleft()
        if len(hits) >= self.uses:
            raise app_commands.CommandOnCooldown(self.cooldown, self.per - (now - hits[0]))
        hits.append(now)


def symbol_choices(index: SymbolIndex, service: Any, current: str, exchange: str | None) -> list[app_commands.Choice[str]]:
    """Autocomplete choices for a symbol option, limited to the chosen exchange when there is one."""
    try:
        venues = service.resolve_venues(exchange or "all")
    except InputError:
        venues = service.venues
    out = []
    for sym, listed in index.suggest(current, venues):
        label = f"{sym} · {', '.join(listed)}" if listed else sym
        out.append(app_commands.Choice(name=label[:100], value=sym))
    return out


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


class ManagerGroup(app_commands.Group):
    """A server-only command group for people with Manage Server.

    ``default_permissions`` hides it from everyone else in the picker; ``interaction_check``
    enforces it at runtime, because server admins can override the default per role or channel.
    """

    def __init__(self, *, name: str, description: str) -> None:
        super().__init__(name=name, description=description, guild_only=True,
                         default_permissions=discord.Permissions(manage_guild=True))

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        require_manage_guild(interaction)
        return True


def history_hint(interaction: discord.Interaction, channel: discord.abc.GuildChannel | discord.Thread) -> str:
    """A tip when the bot cannot read history in ``channel`` (used to verify an interrupted post)."""
    guild = interaction.guild
    real = guild.get_channel_or_thread(channel.id) if guild else None
    if real is None or guild is None or guild.me is None or real.permissions_for(guild.me).read_message_history:
        return ""
    return ("\nTip: also give me Read Message History there. If a post is ever interrupted by a restart, I use it "
            "to check whether the post went out; without it the subscription pauses instead of risking a duplicate.")


def message_chunks(header: str, items: Iterable[str], limit: int = 2000) -> list[str]:
    """``header`` then ``items`` packed into as few messages of at most ``limit`` characters as
    possible, never splitting an item (an item longer than ``limit`` is cut)."""
    out: list[str] = []
    current = header
    for item in items:
        item = item if len(item) <= limit else item[: limit - 1] + "…"
        if current and len(current) + 1 + len(item) > limit:
            out.append(current)
            current = item
        else:
            current = f"{current}\n{item}" if current else item
    if current:
        out.append(current)
    return out


async def reply_private(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral followup that never pings, cut to Discord's 2,000-character message limit."""
    await interaction.followup.send(text[:2000], ephemeral=True, allowed_mentions=discord.AllowedMentions.none())


async def list_subscriptions(
    interaction: discord.Interaction,
    store: Any,
    fetch: Callable[[int], Awaitable[list[Any]]],
    *,
    title: str,
    empty: str,
    describe: Callable[[Any], str],
) -> None:
    """Answer a ``list`` command: the server's subscriptions of one kind with the cap in use."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    items = await fetch(interaction.guild_id)
    if not items:
        await reply_private(interaction, empty)
        return
    used = await store.count_subscriptions(interaction.guild_id)
    header = f"**{title}** ({used}/{store.max_per_guild} subscriptions used in this server)"
    for text in message_chunks(header, (describe(item) for item in items)):
        await reply_private(interaction, text)


async def resume_subscription(
    interaction: discord.Interaction,
    item_id: int,
    *,
    get: Callable[[int], Awaitable[Any]],
    resume: Callable[[int, int], Awaitable[Any]],
    describe: Callable[[Any], str],
    noun: str,
    short: str,
    list_command: str,
    redo: str,
    resumed_note: str = "",
) -> None:
    """Answer a ``resume`` command: check the id belongs to this server and its channel is still
    usable (with the bot's permissions), then unpause it."""
    current = await get(item_id)
    if current is None or current.guild_id != interaction.guild_id:
        raise InputError(f"this server has no {noun} with id {item_id}; {list_command} shows the ids")
    channel = interaction.guild.get_channel_or_thread(current.channel_id) if interaction.guild else None
    if channel is None:
        raise InputError(f"the channel of {short} #{item_id} no longer exists or I can't see it; {redo}")
    check_target_channel(interaction, channel)
    await interaction.response.defer(ephemeral=True, thinking=True)
    if not current.paused:
        await reply_private(interaction, f"{noun[0].upper()}{noun[1:]} `#{item_id}` is not paused.\n{describe(current)}")
        return
    item = await resume(interaction.guild_id, item_id)
    log.info("guild %s resumed %s %s", interaction.guild_id, noun, item.id)
    await reply_private(interaction, f"Resumed.{resumed_note}\n{describe(item)}")
