"""Where each command may be installed and used, and how it answers outside a server that added it.

Discord knows two installations of an app (``integration_types``): to a **server** (by a server
manager; the bot joins it) and to a **user** (the app follows that person into DMs, group DMs and
any server, without a bot in them). And three places a command can be used (``contexts``): a
server, the DM with the bot, and other private channels (DMs and group DMs between people).

- :func:`installable_anywhere` (``/liqmap``, ``/about``): both installations, all three places.
- :func:`server_only` (subscriptions: ``/daily``, ``/skew-alerts``, ``/cluster-alerts``): server
  installation, servers only. :func:`tree_defaults` makes this the command tree's default, so a
  command is server-only unless it opts in with ``installable_anywhere``.
- :func:`check_install` (the tree's ``interaction_check``): a server-only command reached through a
  user installation, e.g. a hand-made request in a server that never added the bot, is refused
  before it runs: it would need channel permissions and a server the bot is not in.
- :func:`reply_ephemeral_if_external`: in a server that did not add the app, Discord shows a user
  app's replies only to that user unless the member has Use External Apps (``USE_EXTERNAL_APPS``,
  "allows user-installed apps to send public responses. When disabled, users will still be allowed
  to use their apps but the responses will be ephemeral. This only applies to apps not also
  installed to the server": Discord's permissions documentation). The bot makes the reply private
  itself there, so the "thinking" message, the answer and an error are all private alike.

The decorators work on an ``app_commands.Command`` or ``Group`` object, on a callback before
``@app_commands.command``, and on a ``commands.GroupCog`` class.
"""

from __future__ import annotations

from typing import Any, TypeVar

import discord
from discord import app_commands

__all__ = [
    "installable_anywhere",
    "server_only",
    "tree_defaults",
    "is_external",
    "reply_ephemeral_if_external",
    "user_installable",
    "check_install",
    "NotInstalledHere",
]

T = TypeVar("T")


def installable_anywhere(obj: T) -> T:
    """Installable by a server and by a user; usable in servers, the bot's DM and private channels."""
    obj = app_commands.allowed_installs(guilds=True, users=True)(obj)
    return app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)(obj)


def server_only(obj: T) -> T:
    """Installable by a server only, usable in servers only (``dm_permission`` false as well)."""
    obj = app_commands.allowed_installs(guilds=True, users=False)(obj)
    obj = app_commands.allowed_contexts(guilds=True, dms=False, private_channels=False)(obj)
    return app_commands.guild_only(obj)  # after allowed_contexts, which clears guild_only


def tree_defaults() -> dict[str, Any]:
    """Keyword arguments for ``commands.Bot`` / ``CommandTree``: server-only unless a command opts in."""
    return {
        "allowed_installs": app_commands.AppInstallationType(guild=True, user=False),
        "allowed_contexts": app_commands.AppCommandContext(guild=True, dm_channel=False, private_channel=False),
    }


class NotInstalledHere(app_commands.CheckFailure):
    """A server-only command used where no server installation of the app authorizes it."""

    def __init__(self) -> None:
        super().__init__("This command works only in a server that has added liqmap (as a server app); "
                         "as a user app you can use /liqmap and /about.")


def is_external(interaction: discord.Interaction) -> bool:
    """Used in a server that has not added the app (a user installation, the bot not a member)."""
    return interaction.guild_id is not None and not interaction.is_guild_integration()


def reply_ephemeral_if_external(interaction: discord.Interaction, private: bool = False) -> bool:
    """Whether the reply must be private: the user asked for it, or the app is external here and the
    member may not post public replies of external apps (no Use External Apps)."""
    if private:
        return True
    return is_external(interaction) and not interaction.permissions.use_external_apps


def user_installable(command: Any, tree: app_commands.CommandTree[Any]) -> bool:
    """Whether ``command``'s top-level command is offered to user installations (the tree's default
    merged with the command's own ``allowed_installs``, as discord.py sends it)."""
    root = getattr(command, "root_parent", None) or command
    own = getattr(root, "allowed_installs", None)
    effective = tree.allowed_installs.merge(own) if own is not None else tree.allowed_installs
    return effective.user


async def check_install(tree: app_commands.CommandTree[Any], interaction: discord.Interaction) -> bool:
    """The tree-wide check: refuse a server-only command that no server installation authorizes.

    Raises :class:`app_commands.NoPrivateMessage` outside a server and :class:`NotInstalledHere` in
    a server that has not added the app. Autocomplete is answered with nothing instead (returns False).
    """
    command = interaction.command
    if command is None or user_installable(command, tree):
        return True
    if interaction.guild_id is not None and interaction.is_guild_integration():
        return True
    if interaction.type is discord.InteractionType.autocomplete:
        return False
    if interaction.guild_id is None:
        raise app_commands.NoPrivateMessage()
    raise NotInstalledHere()
