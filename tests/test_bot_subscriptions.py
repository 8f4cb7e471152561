"""Dispatch-level tests of /daily and /skew-alerts: permissions, validation, caps, list/remove/resume.

Gateway-shaped interactions go through discord.py's real CommandTree against a real SQLite store;
the bot's HTTP calls are captured (see ``bot_harness``).
"""

from __future__ import annotations

import pytest

from bot_harness import (
    DISCORD_OK,
    GUILD_ID,
    LOCKED_CHANNEL_ID,
    MANAGER_PERMS,
    MEMBER_PERMS,
    OTHER_CHANNEL_ID,
    PINNED,
    Channel,
    StubSource,
    interaction_payload,
    make_harness,
)

pytestmark = pytest.mark.skipif(not DISCORD_OK, reason=f"harness uses discord.py internals pinned to {PINNED}")

EPHEMERAL = 64
REPORTS = Channel(OTHER_CHANNEL_ID, "market-reports")
LOCKED = Channel(LOCKED_CHANNEL_ID, "announcements")


def _sources():
    from analysis.sources.registry import make_sources

    return {**make_sources("sample"), "bybit": StubSource("bybit", ("BTCUSDT", "ETHUSDT"))}


@pytest.fixture
async def h(tmp_path):
    harness = await make_harness(tmp_path / "bot.db", sources=_sources(), guild_subscription_cap=3)
    yield harness
    await harness.stop()


def daily(sub: str, perms=MANAGER_PERMS, **options):
    return interaction_payload("daily", options, sub=sub, perms=perms)


def alerts(sub: str, perms=MANAGER_PERMS, **options):
    return interaction_payload("skew-alerts", options, sub=sub, perms=perms)


def refusal(calls) -> str:
    """The text of an immediate ephemeral refusal (callback type 4, flags 64)."""
    assert len(calls) == 1, [c.path for c in calls]
    body = calls[0].body
    assert body["type"] == 4 and body["data"]["flags"] == EPHEMERAL, body
    assert body["data"]["allowed_mentions"] == {"parse": []}
    return body["data"]["content"]


def answer(calls) -> str:
    """The text of an ephemeral defer + followup."""
    assert [c.method for c in calls] == ["POST", "POST"], [c.path for c in calls]
    assert calls[0].body == {"type": 5, "data": {"flags": EPHEMERAL}}
    assert calls[1].body["flags"] & EPHEMERAL
    return calls[1].body["content"]


async def test_daily_set_stores_the_schedule_and_confirms(h):
    text = answer(await h.dispatch(daily("set", channel=REPORTS, time="9:30", timezone="europe/london",
                                         symbols="btc, ETHUSDT", window="7d")))
    assert text.startswith("Daily report set.") and "BTCUSDT, ETHUSDT" in text and "09:30 Europe/London" in text
    assert f"<#{OTHER_CHANNEL_ID}>" in text and "next: <t:" in text
    (s,) = await h.bot.store.list_daily(GUILD_ID)
    assert (s.channel_id, s.symbols, s.window, s.local_time, s.timezone) == (
        OTHER_CHANNEL_ID, ("BTCUSDT", "ETHUSDT"), "7d", "09:30", "Europe/London")
    assert s.created_by == 930000000000000001


async def test_member_without_manage_server_is_refused(h):
    text = refusal(await h.dispatch(daily("set", perms=MEMBER_PERMS, channel=REPORTS, time="09:30", timezone="UTC")))
    assert text == "You need the Manage Server permission to use this command."
    assert refusal(await h.dispatch(alerts("list", perms=MEMBER_PERMS))) == text
    assert await h.bot.store.list_daily(GUILD_ID) == []


async def test_groups_are_hidden_from_members_and_server_only(h):
    defs = {d["name"]: d for d in h.bot.definitions()}
    for name in ("daily", "skew-alerts", "cluster-alerts"):
        assert int(defs[name]["default_member_permissions"]) == 1 << 5  # MANAGE_GUILD
        assert defs[name]["dm_permission"] is False
        assert defs[name]["contexts"] == [0]  # servers only, also where users install the app (ManagerGroupCog)
    for d in defs.values():  # every option has a description
        for opt in d.get("options", []):
            assert opt["description"]
            for sub in opt.get("options", []):
                assert sub["description"] and sub["description"] != "…"


async def test_commands_used_in_dms_are_refused(h):
    payload = interaction_payload("daily", {}, sub="list", guild=False)
    assert refusal(await h.dispatch(payload)) == "This command works in servers only."


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"time": "25:00", "timezone": "UTC"}, "use 24-hour HH:MM"),
        ({"time": "noon", "timezone": "UTC"}, "use 24-hour HH:MM"),
        ({"time": "09:30", "timezone": "Europe/Londn"}, "did you mean Europe/London"),
        ({"time": "09:30", "timezone": "Mars/Olympus_Mons"}, "use an IANA name"),
        ({"time": "09:30", "timezone": "UTC", "symbols": "BTC, ETH, SOL, XRP, DOGE, ADA"}, "at most 5 symbols"),
        ({"time": "09:30", "timezone": "UTC", "symbols": "B$C"}, "is not a symbol"),
        ({"time": "09:30", "timezone": "UTC", "window": "2d"}, "choose one of 1d, 7d, 30d"),
    ],
)
async def test_daily_set_refuses_invalid_values_saying_what_is_valid(h, options, needle):
    text = refusal(await h.dispatch(daily("set", channel=REPORTS, **options)))
    assert needle in text
    assert await h.bot.store.list_daily(GUILD_ID) == []


async def test_refuses_a_channel_where_the_bot_cannot_post(h):
    text = refusal(await h.dispatch(daily("set", channel=LOCKED, time="09:30", timezone="UTC")))
    assert f"<#{LOCKED_CHANNEL_ID}>" in text and "missing Embed Links, Attach Files" in text
    assert "View Channel" not in text and "Send Messages" not in text
    text = refusal(await h.dispatch(alerts("subscribe", channel=LOCKED, symbol="BTC")))
    assert "missing Embed Links, Attach Files" in text
    assert await h.bot.store.count_subscriptions(GUILD_ID) == 0


async def test_refuses_a_channel_the_bot_cannot_see(h):
    text = refusal(await h.dispatch(daily("set", channel=Channel(920000000000000999, "secret"), time="09:30",
                                          timezone="UTC")))
    assert "View Channel" in text


async def test_per_guild_cap_counts_daily_reports_and_alerts_together(h):
    for t in ("08:00", "09:00"):
        answer(await h.dispatch(daily("set", channel=REPORTS, time=t, timezone="UTC")))
    answer(await h.dispatch(alerts("subscribe", channel=REPORTS, symbol="BTC")))
    text = answer(await h.dispatch(daily("set", channel=REPORTS, time="10:00", timezone="UTC")))
    assert "already has 3 subscriptions" in text and "the limit is 3" in text and "remove one first" in text
    text = answer(await h.dispatch(alerts("subscribe", channel=REPORTS, symbol="BTC", window="1d")))
    assert "the limit is 3" in text
    assert await h.bot.store.count_subscriptions(GUILD_ID) == 3


async def test_list_shows_paused_reason_and_resume_undoes_it(h):
    assert "No daily reports yet" in answer(await h.dispatch(daily("list")))
    answer(await h.dispatch(daily("set", channel=REPORTS, time="21:00", timezone="Asia/Singapore", symbols="BTC")))
    (s,) = await h.bot.store.list_daily(GUILD_ID)
    await h.bot.store.pause("daily", s.id, "missing permissions: missing Attach Files in #market-reports")
    text = answer(await h.dispatch(daily("list")))
    assert "(1/3 subscriptions used" in text
    assert f"`#{s.id}`" in text and "paused since" in text and "missing Attach Files" in text
    assert f"/daily resume id:{s.id}" in text
    text = answer(await h.dispatch(daily("resume", id=s.id)))
    assert text.startswith("Resumed.") and "paused" not in text
    assert not (await h.bot.store.get_daily(s.id)).paused
    assert "is not paused" in answer(await h.dispatch(daily("resume", id=s.id)))


async def test_remove_and_unknown_ids(h):
    answer(await h.dispatch(daily("set", channel=REPORTS, time="07:15", timezone="UTC")))
    (s,) = await h.bot.store.list_daily(GUILD_ID)
    text = answer(await h.dispatch(daily("remove", id=s.id + 100)))
    assert "no daily report with id" in text and "list" in text
    text = answer(await h.dispatch(daily("remove", id=s.id)))
    assert text.startswith(f"Removed daily report `#{s.id}`")
    assert await h.bot.store.list_daily(GUILD_ID) == []
    assert "no daily report with id" in refusal(await h.dispatch(daily("resume", id=s.id)))


async def test_timezone_and_id_autocomplete(h):
    calls = await h.dispatch(interaction_payload("daily", {"channel": REPORTS, "time": "09:00", "timezone": "lond"},
                                                 sub="set", focused="timezone", perms=MANAGER_PERMS))
    body = calls[0].body
    assert body["type"] == 8
    assert {"name": "Europe/London", "value": "Europe/London"} in body["data"]["choices"]
    calls = await h.dispatch(interaction_payload("daily", {"timezone": ""}, sub="set", focused="timezone",
                                                 perms=MANAGER_PERMS))
    names = [c["value"] for c in calls[0].body["data"]["choices"]]
    assert names[0] == "UTC" and "America/New_York" in names and len(names) <= 25
    answer(await h.dispatch(daily("set", channel=REPORTS, time="07:15", timezone="UTC", symbols="BTC")))
    calls = await h.dispatch(interaction_payload("daily", {"id": ""}, sub="remove", focused="id", perms=MANAGER_PERMS))
    (choice,) = calls[0].body["data"]["choices"]
    assert choice["name"].startswith("#") and "BTCUSDT" in choice["name"] and isinstance(choice["value"], int)
    assert choice["name"] == f"#{choice['value']} BTCUSDT 1d · 07:15 UTC"
    # the skew alerts' ids too, a paused one marked, filtered by the typed prefix
    answer(await h.dispatch(alerts("subscribe", channel=REPORTS, symbol="eth")))
    (w,) = await h.bot.store.list_skew_alerts(GUILD_ID)
    await h.bot.store.pause("skew_alert", w.id, "test")
    for sub in ("unsubscribe", "resume"):
        calls = await h.dispatch(interaction_payload("skew-alerts", {"id": str(w.id)}, sub=sub, focused="id",
                                                     perms=MANAGER_PERMS))
        assert calls[0].body["data"]["choices"] == [{"name": f"#{w.id} ETHUSDT 7d all · paused", "value": w.id}]
    calls = await h.dispatch(interaction_payload("skew-alerts", {"id": f"{w.id}0"}, sub="resume", focused="id",
                                                 perms=MANAGER_PERMS))
    assert calls[0].body["data"]["choices"] == []  # no id starts with that


async def test_skew_alert_subscribe_with_thresholds_list_and_unsubscribe(h):
    text = answer(await h.dispatch(alerts("subscribe", channel=REPORTS, symbol="btc", mild=1.8, heavy=4.0,
                                          cooldown_minutes=30)))
    assert text.startswith("Skew alert set.") and "**BTCUSDT**" in text
    assert "mild 1.8×" in text and "heavy 4×" in text and "cooldown 30 min" in text
    (w,) = await h.bot.store.list_skew_alerts(GUILD_ID)
    assert (w.symbol, w.mild, w.heavy, w.cooldown_s, w.channel_id) == ("BTCUSDT", 1.8, 4.0, 1800, OTHER_CHANNEL_ID)
    text = answer(await h.dispatch(alerts("list")))
    assert "not measured yet" in text and f"`#{w.id}`" in text
    text = answer(await h.dispatch(alerts("subscribe", channel=REPORTS, symbol="BTC")))
    assert f"that skew alert for BTCUSDT 7d on all already exists in this channel (id {w.id})" in text
    text = answer(await h.dispatch(alerts("unsubscribe", id=w.id)))
    assert text.startswith(f"Removed skew alert `#{w.id}`")
    assert await h.bot.store.list_skew_alerts(GUILD_ID) == []


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"mild": 3.0, "heavy": 2.0}, r"1 \< mild \< heavy"),  # escaped: renders as 1 < mild < heavy
        ({"mild": 1.5, "mild_exit": 1.6}, "exit"),
        ({"symbol": "DOGE"}, "DOGEUSDT is not listed on any of binance, bybit"),
        ({"symbol": "ETH", "exchange": "binance"}, "ETHUSDT is not listed on binance."),
    ],
)
async def test_skew_alert_refuses_bad_thresholds_and_unlisted_symbols(h, options, needle):
    opts = {"channel": REPORTS, "symbol": "BTC", **options}
    text = refusal(await h.dispatch(alerts("subscribe", **opts)))
    assert needle in text
    assert await h.bot.store.list_skew_alerts(GUILD_ID) == []


async def test_skew_alert_symbol_autocomplete(h):
    calls = await h.dispatch(interaction_payload("skew-alerts", {"channel": REPORTS, "symbol": "b"}, sub="subscribe",
                                                 focused="symbol", perms=MANAGER_PERMS))
    assert calls[0].body["data"]["choices"] == [{"name": "BTCUSDT · binance, bybit", "value": "BTCUSDT"}]


async def test_confirmation_suggests_read_message_history_only_where_it_is_missing(h):
    from bot_harness import NO_HISTORY_CHANNEL_ID

    text = answer(await h.dispatch(daily("set", channel=Channel(NO_HISTORY_CHANNEL_ID, "alerts"), time="09:30",
                                         timezone="UTC")))
    assert text.startswith("Daily report set.") and "Read Message History" in text
    text = answer(await h.dispatch(daily("set", channel=REPORTS, time="09:30", timezone="UTC")))
    assert "Read Message History" not in text


async def test_deleting_a_channel_pauses_its_subscriptions(h):
    import asyncio

    answer(await h.dispatch(daily("set", channel=REPORTS, time="09:30", timezone="UTC")))
    answer(await h.dispatch(alerts("subscribe", channel=REPORTS, symbol="BTC")))
    answer(await h.dispatch(daily("set", channel=Channel(920000000000000001, "general"), time="09:30",
                                  timezone="UTC")))
    # the gateway's CHANNEL_DELETE, through discord.py's parser and event dispatch
    h.bot._connection.parse_channel_delete({"id": str(OTHER_CHANNEL_ID), "type": 0, "guild_id": str(GUILD_ID),
                                            "name": "market-reports", "position": 1, "permission_overwrites": []})
    for _ in range(50):
        if (await h.bot.store.list_skew_alerts(GUILD_ID))[0].paused:
            break
        await asyncio.sleep(0.02)
    daily_items = await h.bot.store.list_daily(GUILD_ID)
    assert [s.paused for s in daily_items] == [True, False]
    assert daily_items[0].paused_reason == "channel #market-reports was deleted"
    assert (await h.bot.store.list_skew_alerts(GUILD_ID))[0].paused


async def test_daily_set_refuses_a_symbol_no_venue_lists(h):
    text = refusal(await h.dispatch(daily("set", channel=REPORTS, time="09:30", timezone="UTC", symbols="BTC, DOGE")))
    assert text.startswith("DOGEUSDT is not listed on any of binance, bybit")
    assert await h.bot.store.list_daily(GUILD_ID) == []


async def test_a_long_list_is_split_over_messages_without_losing_an_entry(tmp_path):
    h = await make_harness(tmp_path / "bot.db", sources=_sources())
    try:
        ids = []
        for i in range(25):  # the default cap
            s = await h.bot.store.add_daily(GUILD_ID, OTHER_CHANNEL_ID, symbols="BTC, ETH", window="7d",
                                            exchange="all", time=f"{i % 24:02d}:{i:02d}",
                                            timezone="America/Argentina/ComodRivadavia", created_by=1)
            ids.append(s.id)
        calls = await h.dispatch(daily("list"))
        assert calls[0].body == {"type": 5, "data": {"flags": EPHEMERAL}}
        texts = [c.body["content"] for c in calls[1:]]
        assert len(texts) >= 2 and all(len(t) <= 2000 for t in texts)
        assert all(c.body["flags"] & EPHEMERAL for c in calls[1:])
        joined = "\n".join(texts)
        assert "(25/25 subscriptions used" in texts[0]
        assert all(f"`#{i}`" in joined for i in ids)
    finally:
        await h.stop()


def test_message_chunks():
    from bot.replies import message_chunks

    assert message_chunks("H", ["a", "b"]) == ["H\na\nb"]
    assert message_chunks("H", ["x" * 6, "y" * 6], limit=10) == ["H\nxxxxxx", "yyyyyy"]
    assert message_chunks("H", ["z" * 30], limit=10) == ["H", "z" * 9 + "…"]


async def test_id_autocomplete_shows_nothing_to_members_without_manage_server(h):
    answer(await h.dispatch(daily("set", channel=REPORTS, time="07:15", timezone="UTC")))
    answer(await h.dispatch(alerts("subscribe", channel=REPORTS, symbol="BTC")))
    for group, sub in (("daily", "remove"), ("skew-alerts", "unsubscribe")):
        calls = await h.dispatch(interaction_payload(group, {"id": ""}, sub=sub, focused="id", perms=MEMBER_PERMS))
        assert calls[0].body == {"type": 8, "data": {"choices": []}}
        calls = await h.dispatch(interaction_payload(group, {"id": ""}, sub=sub, focused="id", perms=MANAGER_PERMS))
        assert len(calls[0].body["data"]["choices"]) == 1


async def _dispatch_together(h, *payloads):
    """Feed several INTERACTION_CREATEs before any of them runs (a double click), wait for all."""
    import asyncio

    before = len(h.web.calls)
    known = set(asyncio.all_tasks())
    for p in payloads:
        h.bot._connection.parse_interaction_create(p)
    new = [t for t in asyncio.all_tasks() - known if t.get_name() == "CommandTree-invoker"]
    assert len(new) == len(payloads)
    await asyncio.wait_for(asyncio.gather(*new), 30)
    calls = h.web.calls[before:]
    # each interaction answers on its own token: group the calls per interaction
    by_token: dict[str, list] = {}
    for c in calls:
        token = c.path.split("/")[3]  # /interactions/{id}/{token}/callback, /webhooks/{app}/{token}
        by_token.setdefault(token, []).append(c)
    return list(by_token.values())


@pytest.mark.parametrize("group", ["daily", "skew-alerts"])
async def test_a_double_click_stores_one_subscription_and_refuses_the_other(h, group):
    if group == "daily":
        make = lambda: daily("set", channel=REPORTS, time="09:30", timezone="UTC", symbols="BTC")  # noqa: E731
        listed, noun = h.bot.store.list_daily, "daily report"
    else:
        make = lambda: alerts("subscribe", channel=REPORTS, symbol="BTC")  # noqa: E731
        listed, noun = h.bot.store.list_skew_alerts, "skew alert for BTCUSDT 7d on all"
    answers = sorted(answer(calls) for calls in await _dispatch_together(h, make(), make()))
    (row,) = await listed(GUILD_ID)
    refused = [a for a in answers if "already exists" in a]
    assert len(refused) == 1 and len(answers) == 2
    assert refused[0] == f"that {noun} already exists in this channel (id {row.id})"


@pytest.mark.parametrize("bad", [0, -1, 2**31, 2**63, 2**64])
async def test_out_of_range_ids_get_a_clear_refusal_from_every_id_command(h, bad):
    # Discord's picker enforces min/max; a crafted interaction is not re-checked by discord.py
    answer(await h.dispatch(daily("set", channel=REPORTS, time="07:15", timezone="UTC")))
    answer(await h.dispatch(alerts("subscribe", channel=REPORTS, symbol="BTC")))
    for payload, noun in ((daily("remove", id=bad), "daily report"), (daily("resume", id=bad), "daily report"),
                          (alerts("unsubscribe", id=bad), "skew alert"), (alerts("resume", id=bad), "skew alert")):
        calls = await h.dispatch(payload)
        text = calls[-1].body.get("content") or calls[-1].body["data"]["content"]
        assert f"no {noun} with id {bad}" in text, text
        assert "went wrong" not in text
    assert len(await h.bot.store.list_daily(GUILD_ID)) == 1 and len(await h.bot.store.list_skew_alerts(GUILD_ID)) == 1


def test_id_options_carry_the_range_discord_enforces():
    import json
    from pathlib import Path

    defs = json.loads((Path(__file__).parent / "fixtures" / "commands.json").read_text(encoding="utf-8"))
    ids = [o for d in defs for sub in d.get("options", []) for o in sub.get("options", []) if o["name"] == "id"]
    assert len(ids) == 6 and all((o["min_value"], o["max_value"]) == (1, 2**31 - 1) for o in ids)


# -- the daily view --------------------------------------------------------------------------------

async def test_daily_set_with_a_view_stores_it_and_lists_it(h):
    text = answer(await h.dispatch(daily("set", channel=REPORTS, time="09:30", timezone="UTC", view="both")))
    assert "· map + heatmap ·" in text
    answer(await h.dispatch(daily("set", channel=REPORTS, time="10:30", timezone="UTC", view="heatmap")))
    answer(await h.dispatch(daily("set", channel=REPORTS, time="11:30", timezone="UTC")))
    assert [s.view for s in await h.bot.store.list_daily(GUILD_ID)] == ["both", "heatmap", "map"]
    listing = answer(await h.dispatch(daily("list")))
    lines = [ln for ln in listing.splitlines() if ln.startswith("`#")]
    assert ["· map + heatmap ·" in lines[0], "· heatmap ·" in lines[1], "· map ·" in lines[2]] == [True] * 3


async def test_daily_heatmap_of_a_snapshot_only_venue_or_an_unknown_view_is_refused_before_storing(tmp_path):
    class SnapshotOnly:
        async def symbols(self):
            return ["BTCUSDT"]

        async def map(self, symbol, window):  # pragma: no cover - never fetched
            raise AssertionError

    sources = {**_sources(), "coinglass": SnapshotOnly()}
    h = await make_harness(tmp_path / "bot.db", sources=sources)
    try:
        text = refusal(await h.dispatch(daily("set", channel=REPORTS, time="09:30", timezone="UTC",
                                              exchange="coinglass", view="heatmap")))
        assert "coinglass serves only a snapshot map; the heatmap needs an estimating venue" in text
        text = refusal(await h.dispatch(daily("set", channel=REPORTS, time="09:30", timezone="UTC", view="candles")))
        assert text == "unknown view 'candles'; choose one of map, heatmap, both"
        assert await h.bot.store.list_daily(GUILD_ID) == []
        # the map of the same venue is still allowed
        answer(await h.dispatch(daily("set", channel=REPORTS, time="09:30", timezone="UTC", exchange="coinglass")))
    finally:
        await h.stop()
