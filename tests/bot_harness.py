"""Offline harness for dispatch-level bot tests: real discord.py objects, no gateway, no network.

A :class:`LiqmapBot` is set up as after login (``async with bot`` + ``setup_hook``), with a fake
ClientUser and a guild fed through the real ``GUILD_CREATE`` parser. Interactions are
gateway-shaped ``INTERACTION_CREATE`` payloads fed to ``ConnectionState.parse_interaction_create``,
so discord.py's real ``CommandTree`` parses options, runs checks, autocomplete and callbacks.

HTTP is captured at the library's two request functions:
- interaction callbacks and followups go through the webhook adapter (``async_context``), replaced
  by :class:`WebhookRecorder`;
- bot REST calls (``channel.send`` ...) go through ``HTTPClient.request``, replaced by
  :class:`RestRecorder`.
Both are private to discord.py, hence :data:`PINNED` (tests skip on other minor versions).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import discord
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

PINNED = ((2, 4), (2, 5), (2, 6), (2, 7))
DISCORD_OK = tuple(discord.version_info[:2]) in PINNED

APP_ID = 900000000000000001
BOT_ID = 900000000000000001
GUILD_ID = 910000000000000001
FOREIGN_GUILD_ID = 910000000000000009  # a server that never added the bot (user installations only)
CHANNEL_ID = 920000000000000001
OTHER_CHANNEL_ID = 920000000000000002
LOCKED_CHANNEL_ID = 920000000000000003
NO_HISTORY_CHANNEL_ID = 920000000000000004
USER_ID = 930000000000000001
EVERYONE_ROLE = GUILD_ID
BOT_ROLE = 940000000000000001

P = discord.Permissions
MEMBER_PERMS = P(view_channel=True, send_messages=True, use_application_commands=True, read_message_history=True)
MANAGER_PERMS = MEMBER_PERMS | P(manage_guild=True)
BOT_PERMS = P(view_channel=True, send_messages=True, embed_links=True, attach_files=True, send_messages_in_threads=True)

_ids = itertools.count(950000000000000001)


def snowflake() -> str:
    return str(next(_ids))


@dataclass
class Call:
    """One captured HTTP call."""

    method: str
    path: str
    json: Any = None
    files: list[tuple[str, bytes]] = field(default_factory=list)
    params: dict[str, Any] | None = None

    @property
    def body(self) -> dict[str, Any]:
        return self.json if isinstance(self.json, dict) else {}


def message_payload(body: dict[str, Any], channel_id: int = CHANNEL_ID, *, flags: int = 0) -> dict[str, Any]:
    """A Discord message object as the API returns it for a created message."""
    return {
        "id": snowflake(), "channel_id": str(channel_id), "type": 0, "content": body.get("content") or "",
        "author": {"id": str(BOT_ID), "username": "liqmap", "discriminator": "0", "avatar": None, "bot": True},
        "attachments": [], "embeds": body.get("embeds") or [], "mentions": [], "mention_roles": [],
        "mention_everyone": False, "pinned": False, "tts": False, "timestamp": "2026-06-22T12:00:00.000000+00:00",
        "edited_timestamp": None, "flags": body.get("flags", flags) or 0, "components": [],
        "webhook_id": str(APP_ID),
    }


def _decode_multipart(multipart: list[dict[str, Any]] | None) -> tuple[Any, list[tuple[str, bytes]]]:
    payload, files = None, []
    for part in multipart or []:
        if part["name"] == "payload_json":
            payload = json.loads(part["value"])
        else:
            fp = part["value"]
            fp.seek(0)
            files.append((part.get("filename", ""), fp.read()))
    return payload, files


class WebhookRecorder(AsyncWebhookAdapter):
    """Records interaction callbacks and followups; answers like Discord does."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.fail: Callable[[Call], BaseException | None] | None = None

    async def request(self, route: Any, session: Any, *, payload: Any = None, multipart: Any = None,
                      files: Any = None, params: Any = None, **_: Any) -> Any:
        body, sent = _decode_multipart(multipart) if multipart else (payload, [])
        call = Call(route.method, _path(route), body, sent, params)
        self.calls.append(call)
        if self.fail is not None:
            exc = self.fail(call)
            if exc is not None:
                raise exc
        if call.path.endswith("/callback"):
            kind = body.get("type")
            flags = (body.get("data") or {}).get("flags", 0) or 0
            return {
                "interaction": {"id": route.webhook_id, "type": 2, "response_message_id": snowflake(),
                                "response_message_loading": kind == 5, "response_message_ephemeral": bool(flags & 64)},
                "resource": {"type": kind, "message": message_payload(body.get("data") or {}, flags=flags)},
            }
        if route.method == "DELETE":
            return None
        return message_payload(body or {})


def _path(route: Any) -> str:
    """The request path with its parameters filled in, as sent (``Route.url`` minus the API base)."""
    return route.url[len(route.BASE):] if route.url.startswith(route.BASE) else route.url


class RestRecorder:
    """Stands in for ``HTTPClient.request``: records the route and body, returns a created message.

    ``fail(call)`` may return an exception to raise; ``respond(call)`` may return a JSON answer.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.fail: Callable[[Call], BaseException | None] | None = None
        self.respond: Callable[[Call], Any] | None = None

    async def __call__(self, route: Any, *, files: Any = None, form: Any = None, **kwargs: Any) -> Any:
        body = kwargs.get("json")
        sent: list[tuple[str, bytes]] = []
        if form:
            for part in form:
                if part["name"] == "payload_json":
                    body = json.loads(part["value"])
                else:
                    fp = part["value"]
                    fp.seek(0)
                    sent.append((part.get("filename", ""), fp.read()))
        call = Call(route.method, _path(route), body, sent, kwargs.get("params"))
        self.calls.append(call)
        if self.fail is not None:
            exc = self.fail(call)
            if exc is not None:
                raise exc
        if self.respond is not None:
            answer = self.respond(call)
            if answer is not None:
                return answer
        if route.method == "POST" and "/messages" in call.path:
            return message_payload(body or {}, channel_id=int(route.channel_id))
        return {}


def http_error(cls: type[discord.HTTPException], status: int, code: int, message: str) -> discord.HTTPException:
    """A discord.py HTTP error as raised for a real ``{status, code, message}`` response."""

    class _Resp:
        def __init__(self) -> None:
            self.status = status
            self.reason = message

    return cls(_Resp(), {"code": code, "message": message})  # type: ignore[arg-type]


def guild_create_payload(*, bot_perms: discord.Permissions = BOT_PERMS) -> dict[str, Any]:
    """A GUILD_CREATE as the gateway sends it to a bot without the members intent."""
    deny_locked = P(embed_links=True, attach_files=True)
    return {
        "id": str(GUILD_ID), "name": "Traders", "owner_id": "1", "icon": None, "splash": None,
        "discovery_splash": None, "afk_channel_id": None, "afk_timeout": 300, "verification_level": 0,
        "default_message_notifications": 1, "explicit_content_filter": 0, "features": [], "mfa_level": 0,
        "system_channel_id": None, "system_channel_flags": 0, "rules_channel_id": None, "vanity_url_code": None,
        "description": None, "banner": None, "premium_tier": 0, "preferred_locale": "en-US",
        "public_updates_channel_id": None, "nsfw_level": 0, "premium_progress_bar_enabled": False,
        "large": False, "unavailable": False, "member_count": 3, "joined_at": "2024-01-01T00:00:00+00:00",
        "emojis": [], "stickers": [], "voice_states": [], "presences": [], "threads": [],
        "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
        "roles": [
            {"id": str(EVERYONE_ROLE), "name": "@everyone", "permissions": str(MEMBER_PERMS.value), "position": 0,
             "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0},
            {"id": str(BOT_ROLE), "name": "liqmap", "permissions": str(bot_perms.value), "position": 1,
             "color": 0, "hoist": False, "managed": True, "mentionable": False, "flags": 0,
             "tags": {"bot_id": str(BOT_ID)}},
        ],
        "channels": [
            {"id": str(CHANNEL_ID), "type": 0, "name": "general", "position": 0, "permission_overwrites": [],
             "nsfw": False, "parent_id": None, "topic": None, "last_message_id": None, "rate_limit_per_user": 0},
            {"id": str(OTHER_CHANNEL_ID), "type": 0, "name": "market-reports", "position": 1,
             "permission_overwrites": [], "nsfw": False, "parent_id": None, "topic": None,
             "last_message_id": None, "rate_limit_per_user": 0},
            {"id": str(LOCKED_CHANNEL_ID), "type": 0, "name": "announcements", "position": 2, "nsfw": False,
             "parent_id": None, "topic": None, "last_message_id": None, "rate_limit_per_user": 0,
             "permission_overwrites": [{"id": str(BOT_ROLE), "type": 0, "allow": "0", "deny": str(deny_locked.value)}]},
            {"id": str(NO_HISTORY_CHANNEL_ID), "type": 0, "name": "alerts", "position": 3, "nsfw": False,
             "parent_id": None, "topic": None, "last_message_id": None, "rate_limit_per_user": 0,
             "permission_overwrites": [{"id": str(EVERYONE_ROLE), "type": 0, "allow": "0",
                                        "deny": str(P(read_message_history=True).value)}]},
        ],
        "members": [
            {"user": {"id": str(BOT_ID), "username": "liqmap", "discriminator": "0", "avatar": None, "bot": True},
             "roles": [str(BOT_ROLE)], "joined_at": "2024-01-01T00:00:00+00:00", "deaf": False, "mute": False,
             "flags": 0, "nick": None},
        ],
    }


def _option(name: str, value: Any, *, focused: bool = False) -> dict[str, Any]:
    if isinstance(value, bool):
        kind = 5
    elif isinstance(value, int):
        kind = 4
    elif isinstance(value, float):
        kind = 10
    elif isinstance(value, Channel):
        kind, value = 7, str(value.id)
    else:
        kind = 3
    out = {"name": name, "type": kind, "value": value}
    if focused:
        out["focused"] = True
    return out


@dataclass(frozen=True)
class Channel:
    """A channel option value (type 7), resolved like Discord does."""

    id: int
    name: str = "market-reports"
    type: int = 0


def interaction_payload(
    command: str,
    options: dict[str, Any] | None = None,
    *,
    sub: str | None = None,
    focused: str | None = None,
    perms: discord.Permissions = MEMBER_PERMS,
    user_id: int = USER_ID,
    guild: bool = True,
    guild_id: int = GUILD_ID,
    installs: tuple[str, ...] | None = None,
    context: int | None = None,
) -> dict[str, Any]:
    """An INTERACTION_CREATE payload: type 2 (command) or 4 (autocomplete, when ``focused``).

    ``installs`` names the installations that authorize it (``"guild"``, ``"user"``; default: the
    server's in a server, the user's in a DM), as ``authorizing_integration_owners``; ``guild_id``
    another server (one the bot is not in: :data:`FOREIGN_GUILD_ID`); ``context`` 0 server, 1 the
    bot's DM, 2 a private channel (default 0 or 1)."""
    opts = [_option(k, v, focused=(k == focused)) for k, v in (options or {}).items()]
    resolved: dict[str, Any] = {}
    channels = {str(v.id): {"id": str(v.id), "name": v.name, "type": v.type, "permissions": str(perms.value)}
                for v in (options or {}).values() if isinstance(v, Channel)}
    if channels:
        resolved["channels"] = channels
    if sub:
        opts = [{"name": sub, "type": 1, "options": opts}]
    data: dict[str, Any] = {"id": snowflake(), "name": command, "type": 1, "options": opts}
    if resolved:
        data["resolved"] = resolved
    user = {"id": str(user_id), "username": "trader", "discriminator": "0", "global_name": "Trader", "avatar": None}
    payload: dict[str, Any] = {
        "id": snowflake(), "application_id": str(APP_ID), "type": 4 if focused else 2, "token": f"tok-{snowflake()}",
        "version": 1, "locale": "en-US", "entitlements": [], "attachment_size_limit": 10 * 1024 * 1024,
        "app_permissions": str(BOT_PERMS.value), "data": data,
        "channel_id": str(CHANNEL_ID),
        "channel": {"id": str(CHANNEL_ID), "type": 0, "name": "general", "guild_id": str(GUILD_ID),
                    "permissions": str(perms.value), "nsfw": False, "position": 0, "parent_id": None,
                    "rate_limit_per_user": 0, "last_message_id": None, "topic": None, "flags": 0},
    }
    owners = {"guild": ("0", str(guild_id) if guild else "0"), "user": ("1", str(user_id))}
    authorizing = dict(owners[k] for k in (installs or (("guild",) if guild else ("user",))))
    if guild:
        payload["channel"]["guild_id"] = str(guild_id)
        payload.update({
            "guild_id": str(guild_id), "guild_locale": "en-US", "context": 0 if context is None else context,
            "guild": {"id": str(guild_id), "locale": "en-US", "features": []},
            "authorizing_integration_owners": authorizing,
            "member": {"user": user, "roles": [], "joined_at": "2024-01-01T00:00:00+00:00", "nick": None,
                       "permissions": str(perms.value), "deaf": False, "mute": False, "flags": 0, "avatar": None},
        })
    else:
        payload.update({"user": user, "context": 1 if context is None else context,
                        "authorizing_integration_owners": authorizing})
        payload["channel"] = {"id": str(CHANNEL_ID), "type": 1, "recipients": [user], "flags": 0}
    return payload


class Harness:
    """A set-up bot plus recorders; ``await h.dispatch(payload)`` runs one interaction to completion."""

    def __init__(self, bot: Any, *, bot_perms: discord.Permissions = BOT_PERMS) -> None:
        self.bot = bot
        self.bot_perms = bot_perms
        self.web = WebhookRecorder()
        self.rest = RestRecorder()

    async def start(self) -> "Harness":
        from discord.user import ClientUser

        bot = self.bot
        await bot.__aenter__()
        state = bot._connection
        state.user = ClientUser(state=state, data={"id": str(BOT_ID), "username": "liqmap", "discriminator": "0",
                                                    "avatar": None, "bot": True, "verified": True, "mfa_enabled": False,
                                                    "flags": 0})
        state.application_id = APP_ID
        bot.http.request = self.rest  # type: ignore[method-assign]
        self._token = async_context.set(self.web)
        await bot.setup_hook()
        state.parse_guild_create(guild_create_payload(bot_perms=self.bot_perms))
        return self

    async def stop(self) -> None:
        async_context.reset(self._token)
        await self.bot.close()

    async def dispatch(self, payload: dict[str, Any], *, timeout: float = 30.0) -> list[Call]:
        """Feed one INTERACTION_CREATE and wait for the tree's task; returns the calls it made."""
        before = len(self.web.calls)
        known = set(asyncio.all_tasks())
        self.bot._connection.parse_interaction_create(payload)
        new = [t for t in asyncio.all_tasks() - known if t.get_name() == "CommandTree-invoker"]
        assert new, "the command tree did not pick up the interaction"
        await asyncio.wait_for(asyncio.gather(*new), timeout)
        return self.web.calls[before:]


class StubSource:
    """A named source that lists ``symbols`` and fails every ``bars()`` with ``error``."""

    def __init__(self, name: str, symbols: tuple[str, ...] = (), error: BaseException | None = None) -> None:
        self.name = name
        self._symbols = list(symbols)
        self.error = error

    async def symbols(self) -> list[str]:
        return list(self._symbols)

    async def bars(self, symbol: str, window: Any) -> Any:
        from analysis.errors import SourceError

        raise self.error or SourceError(self.name, "/bars", "stub source has no data")


async def make_harness(db_path: Any, *, sources: dict[str, Any] | None = None, cogs: tuple[str, ...] | None = None,
                       bot_perms: discord.Permissions = BOT_PERMS, wait_symbols: bool = True,
                       **overrides: Any) -> Harness:
    """A started :class:`Harness` over the bundled sample (or ``sources``) and a SQLite file."""
    from analysis.report import ReportService
    from analysis.sources.registry import make_sources
    from bot.app import COGS, LiqmapBot
    from bot.settings import load_settings

    overrides.setdefault("url", f"sqlite+aiosqlite:///{db_path}")
    settings = load_settings(None, source="sample", **overrides)
    service = ReportService(sources or make_sources("sample"), ttl=settings.schedule.report_ttl_seconds)
    bot = LiqmapBot(settings, mode="dry-run", service=service, cogs=cogs or COGS,
                    sync_state_path=Path(str(db_path)).with_suffix(".sync.json"))
    harness = Harness(bot, bot_perms=bot_perms)
    await harness.start()
    if wait_symbols:
        bot.symbols.ensure_fresh()
        await bot.symbols.wait()
    return harness
