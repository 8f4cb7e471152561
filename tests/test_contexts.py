"""Where the commands can be installed and used (bot/contexts.py), at the dispatch level.

Interactions are gateway-shaped payloads through discord.py's real CommandTree (tests/bot_harness.py):
a server installation (the default payload), a user installation in the DM with the bot and in a
private channel, and a user installation in a server that never added the bot
(:data:`FOREIGN_GUILD_ID`, not in the bot's cache; only ``"1"`` in ``authorizing_integration_owners``).
"""

from __future__ import annotations

import discord
import pytest

from bot.contexts import is_external, reply_ephemeral_if_external, server_only, installable_anywhere, user_installable

from bot_harness import (
    DISCORD_OK, FOREIGN_GUILD_ID, MANAGER_PERMS, MEMBER_PERMS, PINNED, interaction_payload, make_harness,
)

pytestmark = pytest.mark.skipif(not DISCORD_OK, reason=f"harness uses discord.py internals pinned to {PINNED}")

CALLBACK_DEFER = 5
EPHEMERAL = 64
EXTERNAL_OK = MEMBER_PERMS | discord.Permissions(use_external_apps=True)


@pytest.fixture
async def h(tmp_path):
    harness = await make_harness(tmp_path / "bot.db", cooldown_uses=10)
    yield harness
    await harness.stop()


def _flags(call) -> int:
    body = call.body
    return (body.get("data") or {}).get("flags", 0) if call.path.endswith("/callback") else body.get("flags", 0)


async def _liqmap(h, **kw):
    calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "window": "1d"}, **kw))
    defer, *rest = calls
    assert defer.path.endswith("/callback") and defer.body["type"] == CALLBACK_DEFER
    (followup,) = rest
    assert followup.body["embeds"][0]["title"].startswith("BTCUSDT liquidation map"), followup.body
    assert followup.body["allowed_mentions"] == {"parse": []}
    return defer, followup


async def test_server_install_answers_publicly(h):
    defer, followup = await _liqmap(h)
    assert not _flags(defer) & EPHEMERAL and not _flags(followup) & EPHEMERAL


@pytest.mark.parametrize("context", [1, 2], ids=["bot-dm", "private-channel"])
async def test_user_install_in_a_dm_answers_there(h, context):
    defer, followup = await _liqmap(h, guild=False, installs=("user",), context=context)
    assert not _flags(defer) & EPHEMERAL and not _flags(followup) & EPHEMERAL
    assert followup.files and followup.files[0][0] == "liqmap.png"


async def test_user_install_in_a_server_without_external_apps_answers_privately(h):
    defer, followup = await _liqmap(h, guild_id=FOREIGN_GUILD_ID, installs=("user",))
    assert _flags(defer) & EPHEMERAL and _flags(followup) & EPHEMERAL
    # no channel operation: only the interaction's own callback and followup
    assert h.rest.calls == [] and all("/webhooks/" in c.path or "/interactions/" in c.path for c in (defer, followup))


async def test_user_install_where_external_apps_may_post_publicly_is_public(h):
    defer, followup = await _liqmap(h, guild_id=FOREIGN_GUILD_ID, installs=("user",), perms=EXTERNAL_OK)
    assert not _flags(defer) & EPHEMERAL and not _flags(followup) & EPHEMERAL


async def test_a_server_that_added_the_bot_is_not_external_even_with_a_user_install(h):
    # both installations authorize it: the server's rules apply, public as usual
    defer, followup = await _liqmap(h, installs=("guild", "user"))
    assert not _flags(defer) & EPHEMERAL and not _flags(followup) & EPHEMERAL


async def test_the_private_option_still_wins_everywhere(h):
    calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "window": "1d", "private": True},
                                                 guild=False, installs=("user",)))
    assert all(_flags(c) & EPHEMERAL for c in calls)


async def test_subscriptions_are_absent_from_user_installs(h):
    defs = {d["name"]: d for d in h.bot.definitions()}
    for name in ("daily", "skew-alerts", "cluster-alerts"):
        assert defs[name]["integration_types"] == [0] and defs[name]["contexts"] == [0]
        assert not user_installable(h.bot.tree.get_command(name), h.bot.tree)
    for name in ("liqmap", "about"):
        assert defs[name]["integration_types"] == [0, 1] and defs[name]["contexts"] == [0, 1, 2]
        assert user_installable(h.bot.tree.get_command(name), h.bot.tree)


@pytest.mark.parametrize(("command", "sub"), [("daily", "list"), ("skew-alerts", "list"), ("cluster-alerts", "list")])
async def test_a_subscription_reached_through_a_user_install_is_refused_before_it_runs(h, command, sub):
    calls = await h.dispatch(interaction_payload(command, sub=sub, guild_id=FOREIGN_GUILD_ID, installs=("user",),
                                                 perms=MANAGER_PERMS))
    (reply,) = calls
    assert reply.body["type"] == 4 and reply.body["data"]["flags"] & EPHEMERAL
    assert "only in a server that has added liqmap" in reply.body["data"]["content"]
    assert h.rest.calls == []  # no channel, no store lookups that would need the bot in that server


async def test_a_subscription_in_a_dm_says_servers_only(h):
    calls = await h.dispatch(interaction_payload("daily", sub="list", guild=False, installs=("user",)))
    (reply,) = calls
    assert reply.body["data"]["content"] == "This command works in servers only." and reply.body["data"]["flags"] & EPHEMERAL


async def test_the_same_subscription_command_works_with_the_server_install(h):
    calls = await h.dispatch(interaction_payload("daily", sub="list", perms=MANAGER_PERMS))
    assert calls[0].body["type"] == CALLBACK_DEFER and "no daily reports" in calls[-1].body["content"].lower()


async def test_autocomplete_of_a_refused_command_gets_no_answer(h):
    payload = interaction_payload("daily", {"symbols": "BT"}, sub="set", focused="symbols", guild_id=FOREIGN_GUILD_ID,
                                  installs=("user",), perms=MANAGER_PERMS)
    h.bot._connection.parse_interaction_create(payload)
    import asyncio

    for _ in range(20):
        await asyncio.sleep(0)
    assert h.web.calls == []


def test_decorators_on_a_callback_a_command_and_a_group_cog_class():
    from discord import app_commands
    from discord.ext import commands

    async def cb(interaction: discord.Interaction) -> None: ...

    anywhere = app_commands.command(name="x", description="x")(installable_anywhere(cb))
    tree = app_commands.CommandTree(discord.Client(intents=discord.Intents.none()))
    d = anywhere.to_dict(tree)
    assert d["integration_types"] == [0, 1] and d["contexts"] == [0, 1, 2] and d["dm_permission"] is True

    group = server_only(app_commands.Group(name="g", description="g"))
    d = group.to_dict(tree)
    assert d["integration_types"] == [0] and d["contexts"] == [0] and d["dm_permission"] is False

    @server_only
    class Subs(commands.GroupCog, group_name="subs", group_description="s"):
        @app_commands.command(name="list", description="l")
        async def list_(self, interaction: discord.Interaction) -> None: ...

    d = Subs().__cog_app_commands_group__.to_dict(tree)
    assert d["integration_types"] == [0] and d["contexts"] == [0] and d["dm_permission"] is False


def test_is_external_and_the_private_rule():
    class I:
        def __init__(self, guild_id, guild_integration, external_ok):
            self.guild_id = guild_id
            self._gi = guild_integration
            self.permissions = discord.Permissions(use_external_apps=external_ok)

        def is_guild_integration(self):
            return self._gi

    assert not is_external(I(None, False, False))  # a DM
    assert not is_external(I(1, True, False))  # a server that added the app
    assert is_external(I(1, False, False))
    assert reply_ephemeral_if_external(I(1, False, False)) is True
    assert reply_ephemeral_if_external(I(1, False, True)) is False
    assert reply_ephemeral_if_external(I(None, False, False)) is False
    assert reply_ephemeral_if_external(I(None, False, False), True) is True
