"""Dispatch-level tests of /cluster-alerts (permissions, validation, swept without a tape, list/remove/resume,
no pings) and of the Discord poster of the alerts, through the offline harness (``bot_harness``)."""

from __future__ import annotations

from datetime import datetime, timezone

import discord
import pytest

from bot_harness import (
    CHANNEL_ID,
    DISCORD_OK,
    GUILD_ID,
    LOCKED_CHANNEL_ID,
    MANAGER_PERMS,
    MEMBER_PERMS,
    OTHER_CHANNEL_ID,
    PINNED,
    Channel,
    StubSource,
    http_error,
    interaction_payload,
    make_harness,
)

pytestmark = pytest.mark.skipif(not DISCORD_OK, reason=f"harness uses discord.py internals pinned to {PINNED}")

EPHEMERAL = 64
REPORTS = Channel(OTHER_CHANNEL_ID, "market-reports")


def _sources():
    from analysis.sources.registry import make_sources

    return {**make_sources("sample"), "bybit": StubSource("bybit", ("BTCUSDT", "ETHUSDT"))}


@pytest.fixture
async def h(tmp_path):
    harness = await make_harness(tmp_path / "bot.db", sources=_sources(), guild_subscription_cap=3)
    yield harness
    await harness.stop()


def alerts(sub: str, perms=MANAGER_PERMS, **options):
    return interaction_payload("cluster-alerts", options, sub=sub, perms=perms)


def refusal(calls) -> str:
    assert len(calls) == 1, [c.path for c in calls]
    body = calls[0].body
    assert body["type"] == 4 and body["data"]["flags"] == EPHEMERAL, body
    assert body["data"]["allowed_mentions"] == {"parse": []}
    return body["data"]["content"]


def answer(calls) -> str:
    assert [c.method for c in calls] == ["POST", "POST"], [c.path for c in calls]
    assert calls[0].body == {"type": 5, "data": {"flags": EPHEMERAL}}
    assert calls[1].body["flags"] & EPHEMERAL and calls[1].body["allowed_mentions"] == {"parse": []}
    return calls[1].body["content"]


class NoTape:
    async def events(self, symbol, start_ms, end_ms, venues=None):
        return []

    async def gaps(self, start_ms, end_ms, venues=None):
        return []


async def test_subscribe_list_remove(h):
    text = answer(await h.dispatch(alerts("subscribe", channel=REPORTS, symbol="btc", kind="approaching",
                                          within_pct=2.0, cooldown_minutes=30)))
    assert text.startswith("Cluster alert set.") and "**BTCUSDT** · approaching" in text
    assert "within 2% (re-arms beyond 3%) · cooldown 30 min" in text
    store = h.bot.store
    (a,) = await h.bot.cluster_watch.clusters.list(GUILD_ID)
    assert (a.symbol, a.kind, a.within_pct, a.cooldown_s, a.channel_id) == ("BTCUSDT", "approaching", 2.0, 1800,
                                                                             OTHER_CHANNEL_ID)
    text = answer(await h.dispatch(alerts("list")))
    assert "not measured yet" in text and f"`#{a.id}`" in text and "(1/3 subscriptions used" in text
    text = answer(await h.dispatch(alerts("subscribe", channel=REPORTS, symbol="BTC", kind="approaching")))
    assert f"already exists in this channel (id {a.id})" in text
    text = answer(await h.dispatch(alerts("remove", id=a.id)))
    assert text.startswith(f"Removed cluster alert `#{a.id}` (BTCUSDT approaching")
    assert await store.count_subscriptions(GUILD_ID) == 0


async def test_member_without_manage_server_is_refused_and_the_group_is_hidden(h):
    text = refusal(await h.dispatch(alerts("subscribe", perms=MEMBER_PERMS, channel=REPORTS, symbol="BTC",
                                           kind="approaching")))
    assert text == "You need the Manage Server permission to use this command."
    assert await h.bot.cluster_watch.clusters.list(GUILD_ID) == []
    d = next(d for d in h.bot.definitions() if d["name"] == "cluster-alerts")
    assert d["default_member_permissions"] == 1 << 5 and d["dm_permission"] is False


async def test_used_in_a_dm_it_is_refused(h):
    payload = interaction_payload("cluster-alerts", {}, sub="list", guild=False)
    assert refusal(await h.dispatch(payload)) == "This command works in servers only."


async def test_swept_is_refused_without_a_tape_and_accepted_with_one(h):
    opts = dict(channel=REPORTS, symbol="BTC", kind="swept", min_usd=5e6, minutes=30)
    text = refusal(await h.dispatch(alerts("subscribe", **opts)))
    assert text.startswith("swept alerts need the realized-liquidation tape")
    h.bot.tape = NoTape()
    text = answer(await h.dispatch(alerts("subscribe", **opts)))
    assert "**BTCUSDT** · swept" in text and "$5M within ±0.5% in 30 min (re-arms below $3.33M)" in text


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"kind": "approaching", "min_usd": 1e6}, "min\\_usd and minutes apply to swept alerts only"),
        ({"kind": "approaching", "symbol": "DOGE"}, "DOGEUSDT is not listed on any of binance, bybit"),
        ({"kind": "sideways"}, "choose approaching or swept"),
    ],
)
async def test_bad_values_are_refused_saying_what_is_valid(h, options, needle):
    text = refusal(await h.dispatch(alerts("subscribe", **{"channel": REPORTS, "symbol": "BTC", **options})))
    assert needle in text
    assert await h.bot.cluster_watch.clusters.list(GUILD_ID) == []


async def test_the_cap_counts_cluster_alerts_with_the_others(h):
    await h.bot.store.add_skew_alert(GUILD_ID, OTHER_CHANNEL_ID, symbol="BTC", window="7d", exchange="all", created_by=1)
    await h.bot.store.add_daily(GUILD_ID, OTHER_CHANNEL_ID, symbols="BTC", window="7d", exchange="all",
                                time="09:00", timezone="UTC", created_by=1)
    answer(await h.dispatch(alerts("subscribe", channel=REPORTS, symbol="BTC", kind="approaching")))
    text = answer(await h.dispatch(alerts("subscribe", channel=REPORTS, symbol="ETH", kind="approaching")))
    assert "already has 3 subscriptions (daily reports, skew and cluster alerts together; the limit is 3)" in text


async def test_a_channel_the_bot_cannot_post_in_is_refused(h):
    text = refusal(await h.dispatch(alerts("subscribe", channel=Channel(LOCKED_CHANNEL_ID, "announcements"),
                                           symbol="BTC", kind="approaching")))
    assert "I'm missing Embed Links, Attach Files there" in text


async def test_resume_checks_the_channel_and_records_a_fresh_baseline(h):
    answer(await h.dispatch(alerts("subscribe", channel=REPORTS, symbol="BTC", kind="approaching")))
    clusters = h.bot.cluster_watch.clusters
    (a,) = await clusters.list(GUILD_ID)
    text = answer(await h.dispatch(alerts("resume", id=a.id)))
    assert f"Cluster alert `#{a.id}` is not paused." in text
    await clusters.pause(a.id, "missing permissions: <@&1> **x**")
    text = answer(await h.dispatch(alerts("list")))
    assert "⏸ paused since" in text and "<@&1>" not in text and "\\*\\*x\\*\\*" in text
    text = answer(await h.dispatch(alerts("resume", id=a.id)))
    assert text.startswith("Resumed. The next check records a fresh baseline.")
    assert not (await clusters.get(a.id)).paused
    calls = await h.dispatch(alerts("resume", id=a.id + 50))
    assert "this server has no cluster alert with id" in calls[-1].body["data"]["content"]


async def test_id_autocomplete_is_empty_for_members(h):
    answer(await h.dispatch(alerts("subscribe", channel=REPORTS, symbol="BTC", kind="approaching")))
    calls = await h.dispatch(interaction_payload("cluster-alerts", {"id": ""}, sub="remove", focused="id",
                                                 perms=MEMBER_PERMS))
    assert calls[0].body == {"type": 8, "data": {"choices": []}}
    calls = await h.dispatch(interaction_payload("cluster-alerts", {"id": ""}, sub="remove", focused="id",
                                                 perms=MANAGER_PERMS))
    (choice,) = calls[0].body["data"]["choices"]
    assert "BTCUSDT approaching" in choice["name"]


async def test_deleting_the_channel_pauses_its_cluster_alerts(h):
    import asyncio

    answer(await h.dispatch(alerts("subscribe", channel=REPORTS, symbol="BTC", kind="approaching")))
    h.bot._connection.parse_channel_delete({"id": str(OTHER_CHANNEL_ID), "type": 0, "guild_id": str(GUILD_ID),
                                            "name": "market-reports", "position": 1, "permission_overwrites": []})
    clusters = h.bot.cluster_watch.clusters
    for _ in range(50):
        if (await clusters.list(GUILD_ID))[0].paused:
            break
        await asyncio.sleep(0.02)
    (a,) = await clusters.list(GUILD_ID)
    assert a.paused_reason == "channel #market-reports was deleted"


# -- the Discord poster of the alerts -----------------------------------------------------------------

async def test_the_alert_poster_sends_one_embed_without_pings_or_files(h):
    poster = h.bot.cluster_watch.poster
    embed = {"type": "rich", "title": "BTCUSDT cluster alert · approaching", "description": "@everyone hi",
             "footer": {"text": "liqmap-c1-x"}}
    mid = await poster.send_alert(CHANNEL_ID, embed=embed, nonce="lq123")
    (call,) = [c for c in h.rest.calls if c.method == "POST"]
    assert call.path == f"/channels/{CHANNEL_ID}/messages" and isinstance(mid, int)
    assert call.body["allowed_mentions"] == {"parse": []} and call.files == []
    assert call.body["nonce"] == "lq123" and call.body["embeds"][0]["title"] == embed["title"]


async def test_the_alert_poster_maps_discord_errors_like_the_report_poster(h):
    from bot.scheduler import AlreadyPosted, ChannelGone, MissingAccess

    poster = h.bot.cluster_watch.poster
    with pytest.raises(MissingAccess, match="Embed Links"):
        await poster.send_alert(LOCKED_CHANNEL_ID, embed={"title": "x"}, nonce="n")
    for exc, want in ((http_error(discord.NotFound, 404, 10003, "Unknown Channel"), ChannelGone),
                      (http_error(discord.NotFound, 404, 10008, "Unknown Message"), AlreadyPosted),
                      (http_error(discord.Forbidden, 403, 50013, "Missing Permissions"), MissingAccess)):
        h.rest.fail = lambda call, exc=exc: exc if call.method == "POST" else None
        with pytest.raises(want):
            await poster.send_alert(CHANNEL_ID, embed={"title": "x"}, nonce="n")


async def test_the_bot_reads_the_map_without_rendering_a_chart(h):
    got = await h.bot.cluster_watch.reading("BTCUSDT", "7d", "binance")
    assert got.reading.symbol == "BTCUSDT" and got.reading.price > 0 and got.venues == ("binance",)
    assert got.end_ms > datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp() * 1000
    assert h.bot.service.computations == 0  # no report (chart) was built
