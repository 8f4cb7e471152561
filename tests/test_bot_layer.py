"""The shape of the bot layer: cogs are classes with decorated methods, the shared pieces live in
named modules, and a cog's run-time choices stay its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from discord import app_commands

from bot.checks import ManagerGroupCog
from bot.choices import exchange_choices, offer_choices

from bot_harness import DISCORD_OK, PINNED, StubSource, make_harness

ROOT = Path(__file__).resolve().parent.parent


def _exchange_values(defs: list[dict], command: str, sub: str | None = None) -> list[str]:
    cmd = next(d for d in defs if d["name"] == command)
    opts = cmd["options"] if sub is None else next(o for o in cmd["options"] if o["name"] == sub)["options"]
    return [c["value"] for c in next(o for o in opts if o["name"] == "exchange")["choices"]]


def test_the_cogs_package_holds_no_logic():
    tree = ast.parse((ROOT / "bot" / "cogs" / "__init__.py").read_text(encoding="utf-8"))
    assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)  # the docstring, nothing else


def test_no_type_ignore_reaches_the_bots_own_attributes():
    for path in [*(ROOT / "bot" / "cogs").glob("*.py"), ROOT / "bot" / "checks.py", ROOT / "bot" / "choices.py"]:
        assert "type: ignore" not in path.read_text(encoding="utf-8"), path


@pytest.mark.skipif(not DISCORD_OK, reason=f"harness uses discord.py internals pinned to {PINNED}")
async def test_two_bots_with_different_venues_keep_their_own_exchange_choices(tmp_path):
    plain = await make_harness(tmp_path / "a.db", sources={n: StubSource(n, ("BTCUSDT",)) for n in ("binance", "okx")})
    with_cg = await make_harness(tmp_path / "b.db",
                                 sources={n: StubSource(n, ("BTCUSDT",)) for n in ("binance", "okx", "coinglass")})
    try:
        for command, sub in (("liqmap", None), ("daily", "set"), ("skew-alerts", "subscribe"),
                             ("cluster-alerts", "subscribe")):
            assert _exchange_values(plain.bot.definitions(), command, sub) == ["all", "binance", "okx"]
            assert _exchange_values(with_cg.bot.definitions(), command, sub) == ["all", "binance", "okx", "coinglass"]
        cog_class = type(plain.bot.get_cog("LiqmapCog"))
    finally:
        await plain.stop()
        await with_cg.stop()
    declared = cog_class.__cog_app_commands__[0]  # the class's own command is left as declared
    assert not next(p for p in declared.parameters if p.name == "exchange").choices


def test_offer_choices_names_a_missing_parameter():
    @app_commands.command(name="x", description="x")
    async def x(interaction, exchange: str = "all") -> None:  # pragma: no cover - never invoked
        pass

    offer_choices(x, exchange=exchange_choices(["binance"]))
    assert [c.value for c in next(p for p in x.parameters if p.name == "exchange").choices] == ["all", "binance"]
    with pytest.raises(TypeError, match="no parameter 'venue'"):
        offer_choices(x, venue=exchange_choices(["binance"]))


def test_subscription_groups_are_server_only_and_hidden_from_non_managers():
    from bot.cogs.clusters import ClustersCog
    from bot.cogs.daily import DailyCog
    from bot.cogs.skew_alerts import SkewAlertsCog

    for cog in (DailyCog, SkewAlertsCog, ClustersCog):
        assert issubclass(cog, ManagerGroupCog)
        assert cog.__discord_app_commands_guild_only__
        assert cog.__discord_app_commands_default_permissions__.manage_guild
