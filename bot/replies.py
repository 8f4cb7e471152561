"""Private replies and the answers shared by the subscription groups (list, resume)."""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Iterable

import discord

from analysis.errors import InputError

from .checks import check_target_channel, guild_of

__all__ = ["message_chunks", "reply_private", "list_subscriptions", "resume_subscription"]

log = logging.getLogger(__name__)


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
    guild_id = guild_of(interaction)
    await interaction.response.defer(ephemeral=True, thinking=True)
    items = await fetch(guild_id)
    if not items:
        await reply_private(interaction, empty)
        return
    used = await store.count_subscriptions(guild_id)
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
    item = await resume(guild_of(interaction), item_id)
    log.info("guild %s resumed %s %s", interaction.guild_id, noun, item.id)
    await reply_private(interaction, f"Resumed.{resumed_note}\n{describe(item)}")
