"""Dispatch-level tests of /liqmap: gateway-shaped interactions through discord.py's real CommandTree.

The HTTP calls the bot makes are captured (see ``bot_harness``); data comes from the bundled real
Binance sample, so everything is offline.
"""

from __future__ import annotations

import asyncio
import logging

import discord
import pytest

from analysis.errors import SourceError
from analysis.sources.registry import make_sources
from bot.controls import controls_of
from bot.cooldown import UserCooldown
from bot.symbol_index import SymbolIndex

from bot_harness import (
    COMPONENTS_V2, DISCORD_OK, PINNED, StubSource, component_media, component_text, interaction_payload, make_harness,
)

pytestmark = pytest.mark.skipif(not DISCORD_OK, reason=f"harness uses discord.py internals pinned to {PINNED}")

CALLBACK_DEFER = 5
CALLBACK_MESSAGE = 4
CALLBACK_AUTOCOMPLETE = 8
EPHEMERAL = 64


@pytest.fixture
async def h(tmp_path):
    harness = await make_harness(tmp_path / "bot.db", cogs=("bot.cogs.liqmap",), cooldown_uses=5)
    yield harness
    await harness.stop()


def _callback(calls):
    cb = [c for c in calls if c.path.endswith("/callback")]
    assert len(cb) == 1, [c.path for c in calls]
    return cb[0].body


async def test_defer_then_followup_with_the_chart_and_png(h):
    calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "btc", "window": "7d", "exchange": "all"}))
    assert [c.method for c in calls] == ["POST", "POST"]
    defer, followup = calls
    assert defer.path.endswith("/callback") and defer.body == {"type": CALLBACK_DEFER}  # public "thinking"
    assert followup.path == f"/webhooks/{h.bot.application_id}/" + followup.path.split("/")[-1]
    body = followup.body
    assert body["allowed_mentions"] == {"parse": []}
    assert not (body.get("flags", 0) & EPHEMERAL) and body["flags"] & COMPONENTS_V2  # (layout: test_bot_controls)
    assert component_media(body) == ["attachment://liqmap.png"]
    text = component_text(body)
    assert text.startswith("## BTCUSDT liquidation map · 7d\n**BTCUSDT**")
    footer = text.split("\n-# ")[-1]
    assert "binance" in footer and "Estimated" in footer and "data to 2026-06-22" in footer
    assert body["attachments"][0]["filename"] == "liqmap.png"
    ((name, png),) = followup.files
    assert name == "liqmap.png" and png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000


async def test_private_defers_and_answers_ephemerally(h):
    calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTCUSDT", "private": True}))
    defer, followup = calls
    assert defer.body == {"type": CALLBACK_DEFER, "data": {"flags": EPHEMERAL}}
    assert followup.body["flags"] & EPHEMERAL
    assert component_text(followup.body).startswith("## BTCUSDT liquidation map · 7d")  # default window


async def test_same_request_is_served_from_the_cache(h):
    for _ in range(2):
        calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "window": "1d"}))
        assert calls[1].files
    assert h.bot.service.computations == 1
    await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "window": "30d"}))
    assert h.bot.service.computations == 2


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"symbol": "BTC", "window": "2d"}, "choose one of 1d, 7d, 30d"),
        ({"symbol": "BTC$%"}, "is not a symbol"),
        ({"symbol": "BTC", "exchange": "kraken"}, "unknown exchange"),
        ({"symbol": "ETH"}, "ETHUSDT is not listed on any of binance"),
    ],
)
async def test_bad_input_gets_an_ephemeral_refusal_without_deferring(h, options, needle):
    calls = await h.dispatch(interaction_payload("liqmap", options))
    body = _callback(calls)
    assert body["type"] == CALLBACK_MESSAGE
    assert body["data"]["flags"] == EPHEMERAL
    assert needle in body["data"]["content"]
    assert body["data"]["allowed_mentions"] == {"parse": []}
    assert len(calls) == 1 and h.bot.service.computations == 0


async def test_symbol_autocomplete_offers_listed_symbols(h):
    calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "bt"}, focused="symbol"))
    body = _callback(calls)
    assert body["type"] == CALLBACK_AUTOCOMPLETE
    assert body["data"]["choices"] == [{"name": "BTCUSDT · binance", "value": "BTCUSDT"}]
    calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "doge"}, focused="symbol"))
    assert _callback(calls)["data"]["choices"] == []
    assert h.bot.service.computations == 0


async def test_cooldown_answers_with_when_to_retry(tmp_path):
    h = await make_harness(tmp_path / "bot.db", cogs=("bot.cogs.liqmap",), cooldown_uses=1, cooldown_seconds=60)
    try:
        first = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC"}))
        assert first[0].body["type"] == CALLBACK_DEFER
        second = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC"}))
        body = _callback(second)
        assert body["type"] == CALLBACK_MESSAGE and body["data"]["flags"] == EPHEMERAL
        text = body["data"]["content"]
        assert "another map in" in text and "<t:" in text
        seconds = int(text.split("another map in ")[1].split(" s")[0])
        assert 55 <= seconds <= 60
        other_user = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC"}, user_id=930000000000000099))
        assert other_user[0].body["type"] == CALLBACK_DEFER  # the cooldown is per user
    finally:
        await h.stop()


async def test_missing_venue_gives_a_degraded_map_naming_it(tmp_path):
    sources = dict(make_sources("sample"))
    sources["okx"] = StubSource("okx", ("BTCUSDT",), SourceError("okx", "/api/v5/rubik/stat/contracts/open-interest-history",
                                                                  "HTTP 503 Service Unavailable", status=503))
    h = await make_harness(tmp_path / "bot.db", sources=sources, cogs=("bot.cogs.liqmap",))
    try:
        calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC"}))
        text = component_text(calls[1].body)
        missing = text.split("**Missing venues (map built without them)**\n")[1]
        assert missing.startswith("**okx**") and "503" in missing.split("\n")[0]
        assert "-# Sources: binance ·" in text
        assert calls[1].files
        # Only the broken venue asked for: a clear, private message. The public "thinking" message
        # is deleted first because the first followup after a public defer cannot be ephemeral.
        calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "exchange": "okx"}))
        assert [c.method for c in calls] == ["POST", "DELETE", "POST"]
        assert calls[1].path.endswith("/messages/@original")
        body = calls[2].body
        assert body["flags"] & EPHEMERAL
        assert body["content"].startswith("Market data is unavailable right now: okx")
        assert "503" in body["content"]
    finally:
        await h.stop()


async def test_unexpected_error_apologises_with_an_id_and_logs_the_traceback(h, caplog, monkeypatch):
    async def broken(*args, **kwargs):
        raise ZeroDivisionError("boom in the report")

    monkeypatch.setattr(h.bot.service, "report", broken)
    with caplog.at_level(logging.ERROR, logger="bot.app"):
        calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "private": True}))
    assert [c.method for c in calls] == ["POST", "POST"]  # ephemeral defer: the followup stays private
    text = calls[1].body["content"]
    assert calls[1].body["flags"] & EPHEMERAL
    assert text.startswith("Sorry, something went wrong") and "boom" not in text
    error_id = text.split("error id `")[1].split("`")[0]
    (record,) = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.exc_info and record.exc_info[0] is ZeroDivisionError
    assert "/liqmap" in record.getMessage()


async def test_a_long_refusal_is_cut_to_discords_message_limit(h, monkeypatch):
    from analysis.errors import InputError

    async def refuses(*args, **kwargs):
        raise InputError("no such market: " + "x" * 3000)

    monkeypatch.setattr(h.bot.service, "report", refuses)
    calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "private": True}))
    body = calls[-1].body
    assert body["flags"] & EPHEMERAL and body["content"].startswith("no such market")
    assert len(body["content"]) <= 2000 and body["allowed_mentions"] == {"parse": []}


def test_log_redaction_hides_tokens_keys_and_interaction_urls():
    from bot.app import RedactSecrets, install_log_redaction
    from bot.settings import load_settings

    settings = load_settings(None, token="MTAx.bot-token.secret", coinglass_api_key="cg-key-0123456789")
    logger = logging.getLogger("test.redaction")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(self.format(record))

    handler = Keep()
    logger.addHandler(handler)
    try:
        flt = install_log_redaction(settings, logger)
        assert isinstance(flt, RedactSecrets) and flt in handler.filters
        url = "https://discord.com/api/v10/webhooks/900000000000000001/aW50ZXJhY3Rpb246tok.en-_x/messages/@original"
        logger.debug("Webhook ID %s with %s %s has returned status code %s", 1, "PATCH", url, 200)
        event = {"t": "INTERACTION_CREATE", "d": {"id": "95", "token": "aW50ZXJhY3Rpb246event-tok", "type": 2}}
        logger.debug("For Shard ID %s: WebSocket Event: %s", None, event)
        logger.debug('{"token": "aW50ZXJhY3Rpb246json-tok"}')
        try:
            raise RuntimeError("POST /interactions/95/aW50-tok.en/callback with key cg-key-0123456789")
        except RuntimeError:
            logger.exception("unexpected error abc123 using MTAx.bot-token.secret")
    finally:
        logger.removeHandler(handler)
    text = "\n".join(seen)
    assert "/webhooks/900000000000000001/***/messages/@original" in text and "/interactions/95/***/callback" in text
    assert "'token': '***'" in text and "WebSocket Event" in text
    for secret in ("aW50ZXJhY3Rpb246tok", "aW50-tok", "event-tok", "json-tok", "cg-key-0123456789", "MTAx.bot-token.secret"):
        assert secret not in text
    assert "Traceback" in text and "unexpected error abc123" in text


async def test_bot_sends_no_pings_and_uses_no_privileged_intents(h):
    bot = h.bot
    assert bot.allowed_mentions.to_dict() == {"parse": []}
    privileged = discord.Intents(members=True, presences=True, message_content=True)
    assert not (bot.intents.value & privileged.value)
    assert bot.intents == discord.Intents(guilds=True)


class SlowSymbols:
    """A venue whose symbol list arrives only when ``release`` is set (or fails when ``fail``)."""

    def __init__(self, name: str, symbols: list[str]) -> None:
        self.name = name
        self.symbols_list = symbols
        self.release = asyncio.Event()
        self.calls = 0
        self.fail = False

    async def symbols(self) -> list[str]:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            raise SourceError(self.name, "/exchangeInfo", "HTTP 503")
        return list(self.symbols_list)

    async def bars(self, symbol, window):
        raise SourceError(self.name, "/klines", "not in this test")


async def test_symbol_index_answers_at_once_while_lists_load_and_keeps_them_on_failure():
    now = [0.0]
    src = SlowSymbols("binance", ["XRPUSDT", "BTCDOMUSDT", "ETHUSDT", "BTCUSDT", "WBTCUSDT"])
    index = SymbolIndex({"binance": src}, ttl=60, clock=lambda: now[0])
    # suggest() is synchronous and the venue's list is still blocked on ``release``: these answers
    # cannot have waited for it
    assert index.suggest("eth", ["binance"]) == [("ETHUSDT", [])]  # the canonical spelling, instantly
    assert index.suggest("b$", ["binance"]) == []
    for _ in range(5):
        await asyncio.sleep(0)
    index.suggest("e", ["binance"])
    assert src.calls == 1 and not index.loaded  # one background refresh, not one per keystroke
    src.release.set()
    await index.wait()
    assert [s for s, _ in index.suggest("", ["binance"])] == ["BTCUSDT", "ETHUSDT", "XRPUSDT", "BTCDOMUSDT", "WBTCUSDT"]
    assert [s for s, _ in index.suggest("btc", ["binance"])] == ["BTCUSDT", "BTCDOMUSDT", "WBTCUSDT"]
    assert index.suggest("BTC-USDT-SWAP", ["binance"])[0] == ("BTCUSDT", ["binance"])
    assert index.known(["binance"]) >= {"BTCUSDT"} and index.known(["okx"]) is None
    now[0] = 61.0  # stale: the next suggestion triggers a refresh, which fails
    src.fail = True
    index.suggest("", ["binance"])
    await index.wait()
    assert src.calls == 2 and "ETHUSDT" in index.known(["binance"])  # the previous list is kept


async def test_autocomplete_never_waits_for_a_slow_venue(tmp_path):
    slow = SlowSymbols("binance", ["BTCUSDT"])
    h = await make_harness(tmp_path / "bot.db", sources={"binance": slow}, cogs=("bot.cogs.liqmap",),
                           wait_symbols=False)
    try:
        # the venue's list stays blocked until ``release``: an autocomplete that waited for it would
        # hang here and the harness would raise TimeoutError
        calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "eth"}, focused="symbol"), timeout=10)
        assert _callback(calls)["data"]["choices"] == [{"name": "ETHUSDT", "value": "ETHUSDT"}]
        slow.release.set()
        await h.bot.symbols.wait()
    finally:
        await h.stop()


async def test_liqmap_works_in_direct_messages(h):
    calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "window": "1d"}, guild=False))
    assert calls[0].body["type"] == CALLBACK_DEFER and calls[1].files


async def test_a_report_that_takes_too_long_gets_a_clear_private_message(h, monkeypatch):
    async def slow(*args, **kwargs):
        await asyncio.sleep(1)

    monkeypatch.setattr(controls_of(h.bot), "timeout", 0.05)
    monkeypatch.setattr(h.bot.service, "report", slow)
    calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC"}))
    assert [c.method for c in calls] == ["POST", "DELETE", "POST"]
    assert calls[2].body["flags"] & EPHEMERAL
    assert "no answer from the exchanges within" in calls[2].body["content"]


async def test_a_refused_request_does_not_use_up_the_cooldown(tmp_path):
    h = await make_harness(tmp_path / "bot.db", cogs=("bot.cogs.liqmap",), cooldown_uses=1, cooldown_seconds=60)
    try:
        typo = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "window": "2d"}))
        assert "choose one of" in _callback(typo)["data"]["content"]
        ok = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC"}))
        assert ok[0].body["type"] == CALLBACK_DEFER
    finally:
        await h.stop()


def test_user_cooldown_is_a_sliding_window_per_user():
    now = [0.0]
    cd = UserCooldown(2, 30, clock=lambda: now[0])
    cd.charge(1)
    now[0] = 10
    cd.charge(1)
    cd.charge(2)
    now[0] = 20
    with pytest.raises(discord.app_commands.CommandOnCooldown) as err:
        cd.charge(1)
    assert err.value.retry_after == pytest.approx(10.0)  # the first use leaves the window at t=30
    now[0] = 30
    cd.charge(1)
    with pytest.raises(discord.app_commands.CommandOnCooldown):
        cd.charge(1)
    off = UserCooldown(1, 0)
    off.charge(1)
    off.charge(1)  # 0 s disables it


# -- view: map, heatmap or both ----------------------------------------------------------------------

async def test_heatmap_view_answers_with_the_heatmap_and_png(h):
    calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "window": "1d", "view": "heatmap"}))
    assert [c.method for c in calls] == ["POST", "POST"]
    defer, followup = calls
    assert defer.body == {"type": CALLBACK_DEFER}
    body = followup.body
    assert body["allowed_mentions"] == {"parse": []} and not (body.get("flags", 0) & EPHEMERAL)
    assert component_media(body) == ["attachment://heatmap.png"]
    text = component_text(body)
    assert text.startswith("## BTCUSDT liquidation heatmap · 1d\n")
    assert "1d liquidation heatmap" in text and "**estimated**" in text and "Largest long band" in text
    assert "Time runs left to right" in text and "Binance" in text
    footer = text.split("\n-# ")[-1]
    assert "Estimated" in footer and "Sources: binance" in footer
    ((name, png),) = followup.files
    assert name == "heatmap.png" and png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    assert [a["filename"] for a in body["attachments"]] == ["heatmap.png"]
    assert h.bot.service.computations == 0 and h.bot.service.heatmap_computations == 1


async def test_both_view_sends_both_pictures_and_two_attachments_in_one_message_and_charges_once(tmp_path):
    h = await make_harness(tmp_path / "bot.db", cogs=("bot.cogs.liqmap",), cooldown_uses=1, cooldown_seconds=60)
    try:
        calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "window": "7d", "view": "both"}))
        assert [c.method for c in calls] == ["POST", "POST"]
        body = calls[1].body
        assert body["allowed_mentions"] == {"parse": []}
        assert component_media(body) == ["attachment://liqmap.png", "attachment://heatmap.png"]
        text = component_text(body)
        assert "## BTCUSDT liquidation map · 7d" in text and "### BTCUSDT liquidation heatmap · 7d" in text
        assert len(text) <= 4000  # Discord's limit for the text of a Components V2 message
        assert [n for n, _ in calls[1].files] == ["liqmap.png", "heatmap.png"]
        assert [a["filename"] for a in body["attachments"]] == ["liqmap.png", "heatmap.png"]
        (a, b) = [png for _, png in calls[1].files]
        assert a.startswith(b"\x89PNG") and b.startswith(b"\x89PNG") and a != b
        svc = h.bot.service
        assert (svc.computations, svc.heatmap_computations) == (1, 1)
        # one command, one charge: the second use within the minute is refused
        again = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "view": "map"}))
        assert "another map in" in _callback(again)["data"]["content"]
    finally:
        await h.stop()


async def test_identical_heatmap_requests_at_once_share_one_computation(h):
    payloads = [interaction_payload("liqmap", {"symbol": "BTC", "window": "1d", "view": "heatmap"},
                                    user_id=930000000000000100 + i) for i in range(3)]
    await asyncio.gather(*(h.dispatch(p) for p in payloads))  # (the harness's per-call slices interleave here)
    followups = [c for c in h.web.calls if c.files]
    assert len(followups) == 3 and all(c.files[0][0] == "heatmap.png" for c in followups)
    assert h.bot.service.heatmap_computations == 1
    assert len({c.files[0][1] for c in followups}) == 1  # the same picture for all three


class SnapshotOnly:
    """A source of finished maps only, as CoinGlass is (no bars, no history)."""

    name = "coinglass"

    async def symbols(self):
        return ["BTCUSDT"]

    async def map(self, symbol, window):  # pragma: no cover - refused before any fetch
        raise AssertionError("must not be fetched")


@pytest.mark.parametrize("view", ["heatmap", "both"])
async def test_heatmap_of_a_snapshot_only_venue_is_refused_privately_before_deferring(tmp_path, view):
    sources = dict(make_sources("sample"))
    sources["coinglass"] = SnapshotOnly()
    h = await make_harness(tmp_path / "bot.db", sources=sources, cogs=("bot.cogs.liqmap",), cooldown_uses=1)
    try:
        calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "exchange": "coinglass", "view": view}))
        body = _callback(calls)
        assert len(calls) == 1 and body["type"] == CALLBACK_MESSAGE and body["data"]["flags"] == EPHEMERAL
        assert "coinglass serves only a snapshot map; the heatmap needs an estimating venue" in body["data"]["content"]
        assert body["data"]["allowed_mentions"] == {"parse": []}
        svc = h.bot.service
        assert (svc.computations, svc.heatmap_computations) == (0, 0)
        ok = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "view": "heatmap"}))  # cooldown unspent
        assert ok[0].body["type"] == CALLBACK_DEFER and ok[1].files[0][0] == "heatmap.png"
    finally:
        await h.stop()


async def test_a_venue_failing_for_the_heatmap_is_named_and_escaped(tmp_path):
    from discord_safe import assert_inert

    sources = dict(make_sources("sample"))
    sources["okx"] = StubSource("okx", ("BTCUSDT",), SourceError("okx", "/api/v5/market/candles",
                                                                  "HTTP 503 <@&1> @everyone", status=503))
    h = await make_harness(tmp_path / "bot.db", sources=sources, cogs=("bot.cogs.liqmap",))
    try:
        calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "window": "1d", "view": "heatmap"}))
        text = component_text(calls[1].body)
        missing = text.split("**Missing venues (heatmap built without them)**\n")[1].split("\n-# ")[0]
        assert missing.startswith("**okx**: HTTP 503")
        assert_inert(missing)
        assert "-# Sources: binance ·" in text and calls[1].files[0][0] == "heatmap.png"
        # only the broken venue: the heatmap cannot be built, a clear private message after the defer
        calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "exchange": "okx", "view": "heatmap"}))
        assert [c.method for c in calls] == ["POST", "DELETE", "POST"]
        body = calls[2].body
        assert body["flags"] & EPHEMERAL and body["content"].startswith("Market data is unavailable right now: okx")
        assert body["allowed_mentions"] == {"parse": []}
    finally:
        await h.stop()


async def test_a_hand_made_unknown_view_is_refused_privately(h):
    calls = await h.dispatch(interaction_payload("liqmap", {"symbol": "BTC", "view": "candles"}))
    body = _callback(calls)
    assert body["type"] == CALLBACK_MESSAGE and body["data"]["flags"] == EPHEMERAL
    assert body["data"]["content"] == "unknown view 'candles'; choose one of map, heatmap, both"
    assert h.bot.service.computations == 0 and h.bot.service.heatmap_computations == 0
