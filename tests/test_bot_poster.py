"""DiscordPoster (the dispatcher's Poster over discord.py) and the dispatcher driving it end to end.

HTTP goes through the recorder in place of ``HTTPClient.request`` (see ``bot_harness``), with
Discord's real error shapes (``{"code", "message"}``) for 403/404.
"""

from __future__ import annotations

from datetime import timedelta

import discord
import pytest

from bot.poster import DiscordPoster, png_file, report_embed
from bot.scheduler import ChannelGone, MissingAccess, default_embed

from bot_harness import (
    BOT_ID,
    DISCORD_OK,
    GUILD_ID,
    LOCKED_CHANNEL_ID,
    MANAGER_PERMS,
    NO_HISTORY_CHANNEL_ID,
    OTHER_CHANNEL_ID,
    PINNED,
    Channel,
    http_error,
    interaction_payload,
    make_harness,
    message_payload,
)

pytestmark = pytest.mark.skipif(not DISCORD_OK, reason=f"harness uses discord.py internals pinned to {PINNED}")

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


@pytest.fixture
async def h(tmp_path):
    harness = await make_harness(tmp_path / "bot.db")
    yield harness
    await harness.stop()


@pytest.fixture
async def report(h):
    return await h.bot.service.report("BTC", "1d")


async def test_post_sends_embed_png_nonce_and_no_mentions(h, report):
    poster = DiscordPoster(h.bot)
    embed = default_embed(report, "Daily BTCUSDT liquidation map · 1d", "text", "liqmap-d1-2026-06-22-BTCUSDT")
    msg_id = await poster.post(OTHER_CHANNEL_ID, content=None, embed=embed, png=report.png, filename="liqmap.png",
                               nonce="lq0123456789abcdef0123456")
    (call,) = h.rest.calls
    assert call.method == "POST" and call.path == f"/channels/{OTHER_CHANNEL_ID}/messages"
    body = call.json
    assert body["nonce"] == "lq0123456789abcdef0123456" and body["enforce_nonce"] is True
    assert body["allowed_mentions"] == {"parse": []}
    assert body["embeds"][0]["image"]["url"] == "attachment://liqmap.png"
    assert body["embeds"][0]["footer"]["text"].endswith("liqmap-d1-2026-06-22-BTCUSDT")
    assert call.files == [("liqmap.png", report.png)]
    assert isinstance(msg_id, int) and msg_id > 0


async def test_every_send_gets_a_fresh_file_over_the_same_bytes(h):
    poster = DiscordPoster(h.bot)
    for channel in (OTHER_CHANNEL_ID, OTHER_CHANNEL_ID, 920000000000000001):
        await poster.post(channel, content="x", embed=None, png=PNG, filename="liqmap.png", nonce="n")
    assert [c.files for c in h.rest.calls] == [[("liqmap.png", PNG)]] * 3
    a, b = png_file(PNG), png_file(PNG)
    assert a.fp is not b.fp


async def test_missing_permissions_are_refused_before_sending(h):
    poster = DiscordPoster(h.bot)
    with pytest.raises(MissingAccess, match="missing Embed Links, Attach Files in #announcements"):
        await poster.post(LOCKED_CHANNEL_ID, content=None, embed=None, png=PNG, filename="liqmap.png", nonce="n")
    assert h.rest.calls == []


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (http_error(discord.NotFound, 404, 10003, "Unknown Channel"), ChannelGone),
        (http_error(discord.Forbidden, 403, 50001, "Missing Access"), ChannelGone),
        (http_error(discord.Forbidden, 403, 50013, "Missing Permissions"), MissingAccess),
    ],
)
async def test_discord_refusals_map_to_channel_gone_or_missing_access(h, error, expected):
    poster = DiscordPoster(h.bot)
    h.rest.fail = lambda call: error
    with pytest.raises(expected):  # an uncached channel: Discord's answer decides
        await poster.post(920000000000000777, content=None, embed=None, png=PNG, filename="liqmap.png", nonce="n")
    with pytest.raises(expected):
        await poster.find_marker(920000000000000777, "liqmap-d1")


async def test_a_send_refused_because_its_nonce_message_was_deleted_is_already_posted(h):
    # discord.py sends enforce_nonce: a nonce whose message was created and then deleted shortly
    # before comes back as 404 Unknown Message (10008). The channel is fine: never pause for it.
    from bot.scheduler import AlreadyPosted

    poster = DiscordPoster(h.bot)
    h.rest.fail = lambda call: http_error(discord.NotFound, 404, 10008, "Unknown Message")
    with pytest.raises(AlreadyPosted, match="10008"):
        await poster.post(OTHER_CHANNEL_ID, content=None, embed=None, png=PNG, filename="liqmap.png", nonce="n")


def test_embeds_stay_within_discords_limits_and_keep_the_marker():
    from types import SimpleNamespace

    m = SimpleNamespace(venues=tuple(f"venue{i:04d}" for i in range(400)), kind="estimated", is_estimate=True,
                        end_ms=1_780_000_000_000)
    rep = SimpleNamespace(symbol="BTCUSDT", window=SimpleNamespace(label="7d"), map=m, summary="s" * 9000,
                          missing={f"venue{i}": "HTTP 503 " * 20 for i in range(50)}, png=PNG)
    marker = "liqmap-d12345-2026-06-22-BTCUSDT"
    d = default_embed(rep, "T" * 400, "d" * 9000, marker)
    total = len(d["title"]) + len(d["description"]) + len(d["footer"]["text"])
    total += sum(len(f["name"]) + len(f["value"]) for f in d["fields"])
    assert total <= 6000 and len(d["title"]) <= 256 and len(d["description"]) <= 4096
    assert len(d["footer"]["text"]) <= 2048 and d["footer"]["text"].endswith(" · " + marker)
    assert all(len(f["value"]) <= 1024 for f in d["fields"])
    assert len(discord.Embed.from_dict(d)) <= 6000
    e = report_embed(rep, title="T" * 400)
    assert len(e) <= 6000 and len(e.title) <= 256 and len(e.description) <= 4096 and len(e.footer.text) <= 2048
    assert all(len(f.value) <= 1024 for f in e.fields) and e.description.endswith("…")


async def test_other_http_errors_propagate_for_the_dispatcher_to_retry(h):
    poster = DiscordPoster(h.bot)
    h.rest.fail = lambda call: http_error(discord.DiscordServerError, 503, 0, "upstream")
    with pytest.raises(discord.DiscordServerError):
        await poster.post(OTHER_CHANNEL_ID, content=None, embed=None, png=PNG, filename="liqmap.png", nonce="n")


async def test_find_marker_reads_recent_messages_of_the_bot(h):
    poster = DiscordPoster(h.bot)

    def with_footer(text: str, author: int) -> dict:
        msg = message_payload({"embeds": [{"type": "rich", "footer": {"text": text}}]}, channel_id=OTHER_CHANNEL_ID)
        msg["author"] = {"id": str(author), "username": "u", "discriminator": "0", "avatar": None}
        return msg

    mine = with_footer("Sources: binance · liqmap-d7-2026-06-22-BTCUSDT", BOT_ID)
    history = [with_footer("liqmap-d7-2026-06-22-BTCUSDT (quoted by someone)", 930000000000000001), mine,
               with_footer("liqmap-d7-2026-06-21-BTCUSDT", BOT_ID)]
    h.rest.respond = lambda call: history if call.method == "GET" else None
    assert await poster.find_marker(OTHER_CHANNEL_ID, "liqmap-d7-2026-06-22-BTCUSDT") == int(mine["id"])
    assert await poster.find_marker(OTHER_CHANNEL_ID, "liqmap-d7-2026-06-23-BTCUSDT") is None
    assert h.rest.calls[0].path == f"/channels/{OTHER_CHANNEL_ID}/messages"
    assert h.rest.calls[0].params["limit"] == 100


async def test_find_marker_reads_forward_from_the_due_time_so_a_busy_channel_cannot_bury_the_post(h):
    from datetime import datetime, timezone

    poster = DiscordPoster(h.bot)
    due = datetime(2026, 6, 22, 9, 0, tzinfo=timezone.utc)
    marker = "liqmap-d7-2026-06-22-BTCUSDT"

    def msg(n: int, footer: str = "chat", author: int = 930000000000000001) -> dict:
        m = message_payload({"embeds": [{"type": "rich", "footer": {"text": footer}}]}, channel_id=OTHER_CHANNEL_ID)
        m["id"] = str(discord.utils.time_snowflake(due) + n)
        m["author"] = {"id": str(author), "username": "u", "discriminator": "0", "avatar": None}
        return m

    # Discord answers `after=` pages newest first; ours is the 150th message after the due time,
    # with hundreds of chat messages after it (the newest 100 would not reach it)
    chat = [msg(n) for n in range(1, 400)]
    chat[149] = mine = msg(150, f"Sources: binance · {marker}", BOT_ID)

    def page(call):
        if call.method != "GET":
            return None
        after, limit = int(call.params["after"]), int(call.params["limit"])
        newer = [m for m in chat if int(m["id"]) > after][:limit]
        return list(reversed(newer))

    h.rest.respond = page
    assert await poster.find_marker(OTHER_CHANNEL_ID, marker, since=due) == int(mine["id"])
    first = h.rest.calls[0].params
    assert int(first["after"]) == discord.utils.time_snowflake(due - timedelta(minutes=1))
    assert len(h.rest.calls) == 2  # two pages of 100, oldest first, then found


async def test_find_marker_without_read_message_history_pauses_instead_of_guessing(h):
    with pytest.raises(MissingAccess, match="Read Message History"):
        await DiscordPoster(h.bot).find_marker(NO_HISTORY_CHANNEL_ID, "liqmap-d1")
    assert h.rest.calls == []


async def test_report_embed_for_liqmap(report):
    e = report_embed(report)
    assert e.image.url == "attachment://liqmap.png"
    assert e.title == "BTCUSDT liquidation map · 1d"
    assert e.description == report.summary[:4096]
    assert e.footer.text.startswith("Sources: binance · data to ") and "Estimated" in e.footer.text
    assert e.timestamp is not None and not e.fields


async def test_dispatcher_posts_a_daily_report_once_and_pauses_a_broken_channel(h):
    """/daily set through the real tree, then the dispatcher posts via DiscordPoster."""
    bot = h.bot
    await h.dispatch(interaction_payload("daily", {"channel": Channel(OTHER_CHANNEL_ID), "time": "09:30",
                                                   "timezone": "UTC", "symbols": "BTC"}, sub="set", perms=MANAGER_PERMS))
    (s,) = await bot.store.list_daily(GUILD_ID)
    # a schedule in a channel whose permissions were removed after it was created
    broken = await bot.store.add_daily(GUILD_ID, LOCKED_CHANNEL_ID, symbols="BTC", window="1d", exchange="all",
                                       time="09:30", timezone="UTC", created_by=1)
    dispatcher = bot.scheduler
    dispatcher.now = lambda: s.next_run_at + timedelta(minutes=1)
    stats = await dispatcher.run_daily()
    assert (stats.due, stats.renders, stats.posted, stats.paused) == (2, 1, 1, 1)
    (post,) = [c for c in h.rest.calls if c.method == "POST"]
    assert post.path == f"/channels/{OTHER_CHANNEL_ID}/messages"
    assert post.files and post.files[0][1].startswith(b"\x89PNG")
    assert f"liqmap-d{s.id}-" in post.json["embeds"][0]["footer"]["text"]
    assert post.json["allowed_mentions"] == {"parse": []} and post.json["enforce_nonce"] is True
    again = await dispatcher.run_daily()
    assert again.posted == 0 and len([c for c in h.rest.calls if c.method == "POST"]) == 1
    paused = await bot.store.get_daily(broken.id)
    assert paused.paused and "Embed Links, Attach Files" in paused.paused_reason
    listing = await h.dispatch(interaction_payload("daily", {}, sub="list", perms=MANAGER_PERMS))
    assert "Embed Links, Attach Files" in listing[1].body["content"] and "paused since" in listing[1].body["content"]


async def test_dispatcher_announces_a_skew_change_through_the_poster(h):
    """/skew-alerts subscribe through the real tree; first check = baseline, a change = one notice."""
    bot = h.bot
    await h.dispatch(interaction_payload("skew-alerts", {"channel": Channel(OTHER_CHANNEL_ID), "symbol": "BTC",
                                                         "window": "1d"}, sub="subscribe", perms=MANAGER_PERMS))
    (w,) = await bot.store.list_skew_alerts(GUILD_ID)
    stats = await bot.scheduler.run_skew()
    assert (stats.baselines, stats.announced) == (1, 0) and not [c for c in h.rest.calls if c.method == "POST"]
    (w,) = await bot.store.list_skew_alerts(GUILD_ID)
    current = w.last_class
    other = "heavily_long" if current != "heavily_long" else "heavily_short"
    assert await bot.store.set_skew_alert_class(w.id, expected=current, new=other, ratio=None, announced_at=None)
    stats = await bot.scheduler.run_skew()
    assert stats.announced == 1
    (post,) = [c for c in h.rest.calls if c.method == "POST"]
    embed = post.json["embeds"][0]
    assert post.path == f"/channels/{OTHER_CHANNEL_ID}/messages" and "BTCUSDT skew:" in embed["title"]
    assert embed["image"]["url"] == "attachment://liqmap.png" and post.files[0][1].startswith(b"\x89PNG")
    assert (await bot.store.get_skew_alert(w.id)).last_class == current  # persisted, so a restart stays quiet
    assert (await bot.scheduler.run_skew()).announced == 0


def _evil_report():
    from types import SimpleNamespace

    from discord_safe import EVIL

    m = SimpleNamespace(venues=("binance", "okx"), kind="estimated", is_estimate=True, end_ms=1_780_000_000_000)
    return SimpleNamespace(symbol="BTCUSDT", window=SimpleNamespace(label="7d"), map=m, summary="summary",
                           missing={"bybit": EVIL, "okx": "HTTP 418 <@&1> @here"}, png=PNG)


def test_venue_error_text_is_escaped_in_every_embed():
    from discord_safe import assert_inert

    rep = _evil_report()
    for value in (report_embed(rep).fields[0].value, default_embed(rep, "t", "d", "liqmap-d1-x")["fields"][0]["value"]):
        lines = value.split("\n")
        assert len(lines) == 2 and lines[0].startswith("**bybit**: ")
        for line in lines:
            assert_inert(line)


def test_error_replies_escape_the_outside_text_they_quote():
    from analysis.errors import DataError, InputError, SourceError
    from bot.app import error_message

    from discord_safe import EVIL, assert_inert

    for exc in (SourceError("binance", "/fapi/v1/klines", EVIL), InputError(f"unknown timezone {EVIL!r}"),
                DataError(EVIL)):
        text, bug = error_message(exc)
        assert not bug
        assert_inert(text)
    text, _ = error_message(InputError("I can't see <#920000000000000002>; give me View Channel there"))
    assert "<#920000000000000002>" in text  # our own channel link still works


def test_pause_reasons_in_lists_are_escaped():
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from bot.cogs.daily import describe_schedule
    from bot.cogs.skew_alerts import describe_skew_alert
    from bot.store import SkewAlert

    from discord_safe import EVIL, assert_inert

    at = datetime(2026, 6, 1, tzinfo=timezone.utc)
    s = SimpleNamespace(id=1, symbols=("BTCUSDT",), window="1d", exchange="all", local_time="09:00", timezone="UTC",
                        view="map", channel_id=5, paused=True, paused_at=at, paused_reason=f"missing permissions: {EVIL}")
    w = SkewAlert(2, 3, 5, "BTCUSDT", "7d", "all", None, None, None, None, 3600, None, None, None,
                  f"cannot build BTCUSDT: {EVIL}", at, 7, at)
    for text in (describe_schedule(s), describe_skew_alert(w)):
        reason = text.split("paused since", 1)[1].split(" — ", 1)[0]
        assert_inert(reason)


async def test_dispatcher_posts_a_both_view_as_one_message_with_two_embeds_and_two_files(h):
    """/daily set view:both through the real tree, then one REST send with liqmap.png and heatmap.png."""
    bot = h.bot
    await h.dispatch(interaction_payload("daily", {"channel": Channel(OTHER_CHANNEL_ID), "time": "09:30",
                                                   "timezone": "UTC", "symbols": "BTC", "view": "both"},
                                         sub="set", perms=MANAGER_PERMS))
    (s,) = await bot.store.list_daily(GUILD_ID)
    assert s.view == "both"
    bot.scheduler.now = lambda: s.next_run_at + timedelta(minutes=1)
    stats = await bot.scheduler.run_daily()
    assert stats.posted == 1 and stats.renders == 2
    (post,) = [c for c in h.rest.calls if c.method == "POST"]
    assert post.path == f"/channels/{OTHER_CHANNEL_ID}/messages"
    assert [name for name, _ in post.files] == ["liqmap.png", "heatmap.png"]
    assert all(png.startswith(b"\x89PNG") for _, png in post.files)
    assert [a["filename"] for a in post.json["attachments"]] == ["liqmap.png", "heatmap.png"]
    first, second = post.json["embeds"]
    assert first["image"]["url"] == "attachment://liqmap.png" and second["image"]["url"] == "attachment://heatmap.png"
    assert f"liqmap-d{s.id}-" in first["footer"]["text"] and "liquidation heatmap" in second["description"]
    assert post.json["allowed_mentions"] == {"parse": []} and post.json["enforce_nonce"] is True


def test_heatmap_embed_escapes_venue_errors():
    from types import SimpleNamespace

    from bot.poster import heatmap_embed

    from discord_safe import EVIL, assert_inert

    states = SimpleNamespace(symbol="BTCUSDT", window="1d", venues=("binance",), end_ms=1_780_000_000_000)
    e = heatmap_embed("BTCUSDT", "1d", (PNG, states, {"okx": EVIL}), description="text")
    assert e.image.url == "attachment://heatmap.png" and e.title == "BTCUSDT liquidation heatmap · 1d"
    assert "Estimated" in e.footer.text
    for line in e.fields[0].value.split("\n"):
        assert_inert(line)
