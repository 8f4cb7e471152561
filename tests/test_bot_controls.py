"""Dispatch-level tests of the ``/liqmap`` answer's controls (bot/controls.py).

Each press is a gateway-shaped INTERACTION_CREATE of type 3 carrying the message the bot sent (its
components as the bot sent them), fed to ``ConnectionState.parse_interaction_create``: discord.py's
own ViewStore matches the custom id against the registered DynamicItem templates, rebuilds the
item from the message and runs its callback. HTTP is captured as in ``bot_harness``.
"""

from __future__ import annotations

import asyncio

import pytest

from analysis.errors import InputError
from analysis.sources.registry import make_sources
from bot.controls import controls_of

from bot_harness import (
    COMPONENTS_V2, DISCORD_OK, PINNED, USER_ID, component_media, component_payload, component_text, controls,
    interaction_payload, make_harness, press, walk_components,
)

pytestmark = pytest.mark.skipif(not DISCORD_OK, reason=f"harness uses discord.py internals pinned to {PINNED}")

CALLBACK_MESSAGE, CALLBACK_DEFER, CALLBACK_DEFER_UPDATE = 4, 5, 6
EPHEMERAL = 64
OTHER = 930000000000000077


def cid(kind: str, arg: str = "", symbol: str = "BTCUSDT", window: str = "7d", exchange: str = "all",
        view: str = "map", owner: int = USER_ID) -> str:
    return f"lq:{kind}:{arg}:{symbol}:{window}:{exchange}:{view}:{owner}"


@pytest.fixture
async def h(tmp_path):
    harness = await make_harness(tmp_path / "bot.db", cogs=("bot.cogs.liqmap",), cooldown_uses=20)
    yield harness
    await harness.stop()


async def ask(h, **options):
    """Run ``/liqmap`` and return the body of the answer (the followup) and its files."""
    calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "window": "7d", **options}))
    answer = calls[-1]
    assert answer.files, [c.body for c in calls]
    return answer.body, answer.files


def _edit(calls):
    """The deferred update and the edit of the original message: the only two calls of an owner's press."""
    defer, edit = calls
    assert defer.path.endswith("/callback") and defer.body == {"type": CALLBACK_DEFER_UPDATE}
    assert edit.method == "PATCH" and edit.path.endswith("/messages/@original")
    return edit


def _refusal(calls):
    (call,) = calls
    assert call.path.endswith("/callback") and call.body["type"] == CALLBACK_MESSAGE
    data = call.body["data"]
    assert data["flags"] == EPHEMERAL and data["allowed_mentions"] == {"parse": []}
    return data["content"]


# -- the answer --------------------------------------------------------------------------------------

async def test_the_answer_is_one_components_v2_message_with_the_chart_and_the_controls(h):
    body, files = await ask(h)
    assert body["flags"] & COMPONENTS_V2 and not body.get("embeds") and not body.get("content")
    assert body["allowed_mentions"] == {"parse": []}
    (box,) = body["components"]
    assert box["type"] == 17  # a container
    text = component_text(body)
    assert text.startswith("## BTCUSDT liquidation map · 7d\n**BTCUSDT** $")
    assert "-# Sources: binance · data to 2026-06-22" in text and "Estimated" in text
    assert component_media(body) == ["attachment://liqmap.png"]
    assert [n for n, _ in files] == ["liqmap.png"] and files[0][1].startswith(b"\x89PNG")
    ctl = controls(body)
    assert set(ctl) == {cid("w", "1d"), cid("w", "7d"), cid("w", "30d"), cid("r"), cid("v", "map"),
                        cid("v", "heatmap"), cid("v", "both"), cid("x")}
    assert ctl[cid("w", "7d")]["disabled"] and ctl[cid("w", "7d")]["style"] == 1  # the current window
    assert not ctl[cid("w", "30d")]["disabled"] and ctl[cid("v", "map")]["disabled"]
    options = ctl[cid("x")]["options"]
    assert [(o["value"], o["default"]) for o in options] == [("all", True), ("binance", False)]
    assert all(len(c) <= 100 for c in ctl)


async def test_both_view_is_one_container_with_both_pictures(h):
    body, files = await ask(h, view="both")
    assert component_media(body) == ["attachment://liqmap.png", "attachment://heatmap.png"]
    assert [n for n, _ in files] == ["liqmap.png", "heatmap.png"]
    text = component_text(body)
    assert "## BTCUSDT liquidation map · 7d" in text and "### BTCUSDT liquidation heatmap · 7d" in text
    assert text.count("-# Sources:") == 1 and len(text) <= 4000
    assert len(walk_components(body["components"])) <= 40  # Discord's limit of components per message


# -- the owner edits the answer ----------------------------------------------------------------------

async def test_window_button_edits_the_same_message_with_the_new_window(h):
    body, files = await ask(h)
    calls = await press(h, component_payload(body, cid("w", "30d")))
    edit = _edit(calls)
    assert component_text(edit.body).startswith("## BTCUSDT liquidation map · 30d")
    assert [n for n, _ in edit.files] == ["liqmap.png"] and edit.files[0][1] != files[0][1]
    assert [a["filename"] for a in edit.body["attachments"]] == ["liqmap.png"]  # the old picture is replaced
    ctl = controls(edit.body)
    assert ctl[cid("w", "30d", window="30d")]["disabled"] and not ctl[cid("w", "7d", window="30d")]["disabled"]
    assert h.bot.service.computations == 2


async def test_view_button_switches_to_the_heatmap(h):
    body, _ = await ask(h)
    edit = _edit(await press(h, component_payload(body, cid("v", "heatmap"))))
    assert component_media(edit.body) == ["attachment://heatmap.png"]
    assert [n for n, _ in edit.files] == ["heatmap.png"]
    assert cid("v", "heatmap", view="heatmap") in controls(edit.body)
    assert h.bot.service.heatmap_computations == 1


async def test_exchange_select_switches_the_exchange(h):
    body, _ = await ask(h)
    edit = _edit(await press(h, component_payload(body, cid("x"), values=["binance"])))
    options = controls(edit.body)[cid("x", exchange="binance")]["options"]
    assert [(o["value"], o["default"]) for o in options] == [("all", False), ("binance", True)]
    assert component_text(edit.body).startswith("## BTCUSDT liquidation map · 7d")


async def test_refresh_within_the_cache_ttl_resends_the_cached_answer(h):
    body, files = await ask(h)
    edit = _edit(await press(h, component_payload(body, cid("r"))))
    assert h.bot.service.computations == 1  # a cache hit: nothing rebuilt
    assert edit.files[0][1] == files[0][1] and controls(edit.body) == controls(body)


async def test_refresh_after_the_ttl_builds_a_new_answer(tmp_path):
    h = await make_harness(tmp_path / "bot.db", cogs=("bot.cogs.liqmap",), cooldown_uses=20, report_ttl_seconds=0)
    try:
        body, _ = await ask(h)
        _edit(await press(h, component_payload(body, cid("r"))))
        assert h.bot.service.computations == 2
    finally:
        await h.stop()


async def test_the_controls_of_a_private_answer_and_in_direct_messages_edit_it_in_place(h):
    calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "private": True}))
    body = calls[-1].body
    assert body["flags"] & EPHEMERAL and cid("r") in controls(body)
    edit = _edit(await press(h, component_payload(body, cid("w", "1d"), ephemeral=True)))
    assert component_text(edit.body).startswith("## BTCUSDT liquidation map · 1d")
    calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC"}, guild=False))
    edit = _edit(await press(h, component_payload(calls[-1].body, cid("v", "both"), guild=False)))
    assert component_media(edit.body) == ["attachment://liqmap.png", "attachment://heatmap.png"]


# -- anyone else gets a private copy ------------------------------------------------------------------

async def test_another_user_gets_a_private_copy_they_own_and_the_public_answer_is_untouched(h):
    body, _ = await ask(h)
    calls = await press(h, component_payload(body, cid("w", "1d"), user_id=OTHER))
    assert [c.method for c in calls] == ["POST", "POST"]  # no PATCH of the public message
    defer, copy = calls
    assert defer.body == {"type": CALLBACK_DEFER, "data": {"flags": EPHEMERAL}}
    assert copy.body["flags"] & EPHEMERAL and copy.body["flags"] & COMPONENTS_V2
    assert component_text(copy.body).startswith("## BTCUSDT liquidation map · 1d")
    assert set(controls(copy.body)) >= {cid("r", window="1d", owner=OTHER), cid("x", window="1d", owner=OTHER)}
    # on their own copy, their presses edit it in place
    calls = await press(h, component_payload(copy.body, cid("v", "heatmap", window="1d", owner=OTHER),
                                             user_id=OTHER, asked_by=OTHER, ephemeral=True))
    edit = _edit(calls)
    assert component_media(edit.body) == ["attachment://heatmap.png"]


async def test_refresh_by_another_user_is_a_private_copy_too(h):
    body, _ = await ask(h)
    calls = await press(h, component_payload(body, cid("r"), user_id=OTHER))
    assert calls[0].body["type"] == CALLBACK_DEFER and calls[1].body["flags"] & EPHEMERAL
    assert h.bot.service.computations == 1  # the same settings: from the cache


# -- persistence ---------------------------------------------------------------------------------------

async def test_a_new_bot_instance_handles_the_controls_of_an_old_message(tmp_path):
    first = await make_harness(tmp_path / "bot.db", cogs=("bot.cogs.liqmap",))
    try:
        body, _ = await ask(first)
    finally:
        await first.stop()
    second = await make_harness(tmp_path / "bot.db", cogs=("bot.cogs.liqmap",))  # "after a restart"
    try:
        assert second.bot is not first.bot and second.bot._connection._view_store.persistent_views == []
        edit = _edit(await press(second, component_payload(body, cid("w", "1d"))))
        assert component_text(edit.body).startswith("## BTCUSDT liquidation map · 1d")
    finally:
        await second.stop()


# -- forged, garbage, out of date ----------------------------------------------------------------------

NOT_MINE = "This control is not one this bot made"


@pytest.mark.parametrize("custom_id", [
    cid("w", "2d"),                                  # no such window
    cid("v", "candles"),                             # no such view
    cid("w", "1d", symbol="btcusdt"),                # not the canonical spelling the bot writes
    cid("w", "1d", symbol="BTCEUR"),                 # not a symbol at all
    cid("w", "1d", window="9d"),                     # a state the bot never writes
    cid("w", "1d", owner=0),                         # no such user id
    cid("w", "1d", owner=2**64),
    "lq:w:1d:BTCUSDT:7d:all:map",                    # a field missing
    "lq:zz:1d:BTCUSDT:7d:all:map:1",                 # no such control
    "lq:r:x:BTCUSDT:7d:all:map:930000000000000001",  # refresh takes no argument
    "lq:",
    "lq:" + "x" * 97,
    "lq:w:1d:BTCUSDT:7d:all:map:930000000000000001\n",  # a trailing newline
])
async def test_a_forged_or_garbage_custom_id_gets_one_clean_private_refusal(h, custom_id):
    body, _ = await ask(h)
    sent = {"flags": body["flags"], "components": [{"type": 1, "components": [
        {"type": 2, "style": 2, "label": "x", "custom_id": custom_id}]}]}
    text = _refusal(await press(h, component_payload(sent, custom_id)))
    assert text.startswith(NOT_MINE)
    assert h.bot.service.computations == 1  # only the command's own answer


async def test_an_exchange_no_longer_served_is_refused_by_name(h):
    body, _ = await ask(h)
    forged = cid("w", "1d", exchange="kraken")
    sent = {"flags": body["flags"], "components": [{"type": 1, "components": [
        {"type": 2, "style": 2, "label": "x", "custom_id": forged}]}]}
    assert _refusal(await press(h, component_payload(sent, forged))).startswith("kraken is no longer served")


async def test_a_forged_select_value_is_refused(h):
    body, _ = await ask(h)
    assert _refusal(await press(h, component_payload(body, cid("x"), values=["kraken"]))).startswith(NOT_MINE)
    assert _refusal(await press(h, component_payload(body, cid("x"), values=[]))).startswith(NOT_MINE)


async def test_an_owner_id_rewritten_to_the_presser_does_not_edit_someone_elses_answer(h):
    body, _ = await ask(h)  # asked by USER_ID; OTHER forges a custom id that names themself
    forged = cid("w", "1d", owner=OTHER)
    sent = {"flags": body["flags"], "components": [{"type": 1, "components": [
        {"type": 2, "style": 2, "label": "x", "custom_id": forged}]}]}
    text = _refusal(await press(h, component_payload(sent, forged, user_id=OTHER, asked_by=USER_ID)))
    assert text.startswith(NOT_MINE) and h.bot.service.computations == 1


async def test_a_foreign_custom_id_is_left_to_whoever_owns_it(h):
    body, _ = await ask(h)
    sent = {"flags": body["flags"], "components": [{"type": 1, "components": [
        {"type": 2, "style": 2, "label": "x", "custom_id": "other-app:1"}]}]}
    assert await press(h, component_payload(sent, "other-app:1")) == []


# -- cooldown, double clicks, errors -------------------------------------------------------------------

async def test_a_press_charges_the_users_cooldown_and_refresh_does_not_bypass_it(tmp_path):
    h = await make_harness(tmp_path / "bot.db", cogs=("bot.cogs.liqmap",), cooldown_uses=2, cooldown_seconds=60)
    try:
        body, _ = await ask(h)                                          # charge 1
        _edit(await press(h, component_payload(body, cid("w", "1d"))))  # charge 2
        text = _refusal(await press(h, component_payload(body, cid("r"))))
        assert "another map in" in text and "<t:" in text
        refused = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC"}))  # the command shares it
        assert "another map in" in refused[0].body["data"]["content"]
        other = await press(h, component_payload(body, cid("r"), user_id=OTHER))  # per user
        assert other[0].body["type"] == CALLBACK_DEFER
    finally:
        await h.stop()


async def test_a_refused_press_is_not_charged(tmp_path):
    h = await make_harness(tmp_path / "bot.db", cogs=("bot.cogs.liqmap",), cooldown_uses=2, cooldown_seconds=60)
    try:
        body, _ = await ask(h)
        _refusal(await press(h, component_payload(body, cid("x"), values=["kraken"])))
        _edit(await press(h, component_payload(body, cid("w", "1d"))))
    finally:
        await h.stop()


async def test_a_double_click_starts_one_render(h, monkeypatch):
    body, _ = await ask(h)
    service = h.bot.service
    real, gate = service.report, asyncio.Event()
    started = []

    async def held(*args, **kwargs):
        started.append(args)
        await gate.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(service, "report", held)
    msg = 950000000000099999  # both clicks on the same message
    first = asyncio.create_task(press(h, component_payload(body, cid("w", "30d"), message_id=msg)))
    while not started:
        await asyncio.sleep(0.01)
    second = await press(h, component_payload(body, cid("w", "30d"), message_id=msg))
    assert _refusal(second).startswith("Already updating this answer")
    gate.set()
    _edit([c for c in await first if c.body.get("type") != CALLBACK_MESSAGE])  # (the slices interleave)
    assert len(started) == 1 and service.computations == 2
    _edit(await press(h, component_payload(body, cid("w", "1d"))))  # and the message is free again


async def test_a_failing_press_after_the_defer_gets_a_private_message(h, monkeypatch):
    body, _ = await ask(h)

    async def refuses(*args, **kwargs):
        raise InputError("no such market: <@&1> @everyone")

    monkeypatch.setattr(h.bot.service, "report", refuses)
    calls = await press(h, component_payload(body, cid("w", "1d")))
    assert [c.method for c in calls] == ["POST", "POST"]
    assert calls[0].body == {"type": CALLBACK_DEFER_UPDATE}
    assert calls[1].body["flags"] & EPHEMERAL and calls[1].body["content"].startswith("no such market")
    assert calls[1].body["allowed_mentions"] == {"parse": []}


async def test_heatmap_views_are_disabled_for_a_snapshot_only_exchange(tmp_path):
    from test_bot_liqmap import SnapshotOnly

    sources = dict(make_sources("sample"))
    sources["coinglass"] = SnapshotOnly()
    h = await make_harness(tmp_path / "bot.db", sources=sources, cogs=("bot.cogs.liqmap",))
    try:
        controls_ = controls_of(h.bot)
        assert controls_.heatmap_ok("all") and not controls_.heatmap_ok("coinglass")
        from bot.controls import AnswerState, control_rows

        rows = control_rows(AnswerState("BTCUSDT", "7d", "coinglass", "map", USER_ID), False, h.bot.service.venues)
        buttons = {i.custom_id: i.item.disabled for i in rows[1].children}
        assert buttons == {cid("v", v, exchange="coinglass"): True for v in ("map", "heatmap", "both")}
    finally:
        await h.stop()


# -- the layout's limits ---------------------------------------------------------------------------------

def test_custom_ids_fit_discords_100_characters_for_the_longest_state():
    from bot.controls import AnswerState, control_rows

    state = AnswerState("1000000BABYDOGEUSDT", "30d", "coinglass", "heatmap", 2**64 - 1)
    ids = [i.custom_id for row in control_rows(state, True, ("binance", "bybit", "okx", "coinglass"))
           for i in row.children]
    assert len(ids) == 8 and max(len(i) for i in ids) <= 100
    for i in ids:  # and each is read back as the same state
        assert AnswerState.decode(i.split(":", 3)[3], ("coinglass",)) == state


async def test_long_texts_are_clipped_to_the_components_v2_limit():  # (a view needs a running loop on 2.6.0)
    import discord

    from bot.controls import TEXT_MAX, AnswerState, answer_layout, control_rows
    from bot_harness import component_text as texts

    embeds = [{"title": "T" * 200, "description": "a" * 3900, "image": {"url": "attachment://liqmap.png"},
               "footer": {"text": "f" * 300}, "fields": [{"name": "Missing venues", "value": "okx: 503"}]},
              {"title": "H", "description": "b" * 3000, "image": {"url": "attachment://heatmap.png"},
               "footer": {"text": "f" * 300}}]
    state = AnswerState("BTCUSDT", "7d", "all", "both", USER_ID)
    layout = answer_layout(embeds, control_rows(state, True, ("binance", "bybit", "okx")), discord.Colour.dark_grey())
    body = {"components": layout.to_components()}
    text = texts(body)
    everything = [c.get(k) or "" for c in walk_components(body["components"]) for k in ("label", "placeholder")]
    everything += [o["label"] for c in walk_components(body["components"]) for o in c.get("options", [])]
    everything += [i.get("description") or "" for c in walk_components(body["components"]) for i in c.get("items", [])]
    total = sum(len(c["content"]) for c in walk_components(body["components"]) if c["type"] == 10)
    total += sum(map(len, everything))
    assert TEXT_MAX - 10 <= total <= TEXT_MAX  # clipped to the limit, not far below it
    assert "okx: 503" in text and "## " + "T" * 200 in text
    assert component_media(body) == ["attachment://liqmap.png", "attachment://heatmap.png"]
