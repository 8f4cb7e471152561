"""Checks before a command does anything: who may manage subscriptions, and whether the bot can
post in the channel it is asked to post in.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from analysis.errors import InputError

from .poster import missing_channel_permissions

__all__ = ["require_manage_guild", "guild_of", "check_target_channel", "history_hint", "ManagerGroupCog"]


def require_manage_guild(interaction: discord.Interaction) -> None:
    """Raise the library's own errors unless the member may manage the server (runtime check).

    ``default_permissions`` only hides a command; server admins can override it per role or
    channel, so the callback checks again.
    """
    if interaction.guild is None:
        raise app_commands.NoPrivateMessage()
    if not interaction.permissions.manage_guild:
        raise app_commands.MissingPermissions(["manage_guild"])


def guild_of(interaction: discord.Interaction) -> int:
    """The id of the server the command runs in; :class:`app_commands.NoPrivateMessage` outside one."""
    if interaction.guild_id is None:
        raise app_commands.NoPrivateMessage()
    return interaction.guild_id


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


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class ManagerGroupCog(commands.GroupCog):
    """The base of a server-only command group for people with Manage Server (a subclass names
    the group: ``class DailyCog(ManagerGroupCog, group_name="daily", group_description=...)``).

    ``default_permissions`` hides it from everyone else in the picker; :meth:`interaction_check`
    enforces it at run time, because server admins can override the default per role or channel.
    Autocomplete skips the check: an autocomplete callback checks ``manage_guild`` itself.
    """

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
