"""How a finished report becomes a Discord message: the embed, the PNG attachment, the sender.

:func:`report_embed` builds the ``/liqmap`` map embed, :func:`heatmap_embed` the heatmap embed and
:func:`view_message` the embeds and files of a view (map, heatmap or both: one message, two embeds
and two attachments, within Discord's 6000 characters per message). :class:`DiscordPoster` is the
discord.py implementation of the dispatcher's :class:`~bot.scheduler.Poster`: it sends daily
reports and skew-alert notices to channels. The map is attached as ``liqmap.png`` and the heatmap as
``heatmap.png``, each shown in its embed through ``attachment://<name>``; every send gets a fresh
:class:`discord.File` over the same bytes (a File is consumed by one send). Messages never ping anyone.

Failures the dispatcher acts on: a deleted or invisible channel raises
:class:`~bot.scheduler.ChannelGone`; a missing permission raises
:class:`~bot.scheduler.MissingAccess` naming it; a send refused because its nonce's message was
posted and deleted since (404, code 10008) raises :class:`~bot.scheduler.AlreadyPosted`; a 429 that
discord.py does not wait out itself (:class:`discord.RateLimited`, or Cloudflare's) raises
:class:`~bot.pacer.Throttled`, which pauses the dispatcher's pacer. Both pause the subscriptions of that channel. The
permissions are checked from the cache *before* sending, because without Embed Links Discord
would accept the message and silently drop its embed.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

import discord

from analysis.commentary import heatmap_summary, missing_venues

from .pacer import Throttled

__all__ = [
    "ATTACHMENT",
    "HEATMAP_ATTACHMENT",
    "report_embed",
    "heatmap_embed",
    "view_message",
    "png_file",
    "footer_text",
    "SKEW_COLOURS",
    "REQUIRED_CHANNEL_PERMISSIONS",
    "missing_channel_permissions",
    "DiscordPoster",
]

log = logging.getLogger(__name__)

ATTACHMENT = "liqmap.png"
HEATMAP_ATTACHMENT = "heatmap.png"
EMBED_DESCRIPTION_MAX = 4096
EMBED_FIELD_MAX = 1024
EMBED_TOTAL_MAX = 6000

SKEW_COLOURS = {
    "heavily_short": discord.Colour(0x1ABC9C),
    "short": discord.Colour(0x48C9B0),
    "balanced": discord.Colour(0x95A5A6),
    "long": discord.Colour(0xF0B27A),
    "heavily_long": discord.Colour(0xE67E22),
}


def png_file(png: bytes, filename: str = ATTACHMENT) -> discord.File:
    """A fresh attachment over ``png`` (call once per send)."""
    return discord.File(io.BytesIO(png), filename=filename)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def footer_text(report: Any) -> str:
    """``binance, bybit, okx · data to 2026-06-22 11:40 UTC · Estimated`` (or ``CoinGlass``)."""
    m = report.map
    kind = "Estimated from open-interest flow" if m.is_estimate else "CoinGlass"
    when = datetime.fromtimestamp(m.end_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"Sources: {', '.join(m.venues)} · data to {when} · {kind}"


def report_embed(report: Any, *, title: str | None = None, description: str | None = None) -> discord.Embed:
    """The embed for a :class:`~analysis.report.Report`: summary, chart, footer, missing venues."""
    m = report.map
    skew = getattr(getattr(report, "reading", None), "skew", None)
    embed = discord.Embed(
        title=_clip(title or f"{report.symbol} liquidation map · {report.window.label}", 256),
        description=_clip(description if description is not None else report.summary, EMBED_DESCRIPTION_MAX),
        colour=SKEW_COLOURS.get(getattr(skew, "key", ""), discord.Colour.dark_grey()),
        timestamp=datetime.fromtimestamp(m.end_ms / 1000, tz=timezone.utc),
    )
    embed.set_image(url=f"attachment://{ATTACHMENT}")
    missing = dict(getattr(report, "missing", {}) or {})
    if missing:  # a venue's error text is outside text: escaped like any other
        embed.add_field(name="Missing venues (map built without them)", value=missing_venues(missing, EMBED_FIELD_MAX),
                        inline=False)
    embed.set_footer(text=_clip(footer_text(report), 2048))
    excess = len(embed) - EMBED_TOTAL_MAX  # Discord refuses more than 6000 characters in all
    if excess > 0 and embed.description:
        embed.description = _clip(embed.description, max(1, len(embed.description) - excess))
    return embed


def heatmap_embed(symbol: str, window: str, heat: Any, *, description: str | None = None) -> discord.Embed:
    """The embed for a heatmap ``(png, states, missing)`` of :meth:`ReportService.heatmap`: the
    :func:`~analysis.commentary.heatmap_summary` text, ``attachment://heatmap.png``, missing venues
    (escaped), the footer with sources, data time and "Estimated"."""
    from .scheduler import default_heatmap_embed

    _, states, missing = heat
    text = description if description is not None else heatmap_summary(states)
    data = default_heatmap_embed(states, missing, f"{symbol} liquidation heatmap · {window}", text, "")
    embed = discord.Embed.from_dict(data)
    embed.colour = discord.Colour.dark_grey()
    return embed


def view_message(view: str, report: Any = None, heat: Any = None) -> tuple[list[discord.Embed], list[discord.File]]:
    """Embeds and fresh files of one ``/liqmap`` answer: the map (``map``), the heatmap
    (``heatmap``) or both in one message (``both``), clipped to 6000 characters together."""
    from .scheduler import fit_embeds

    embeds: list[discord.Embed] = []
    files: list[discord.File] = []
    if view in ("map", "both"):
        embeds.append(report_embed(report))
        files.append(png_file(report.png, ATTACHMENT))
    if view in ("heatmap", "both"):
        embeds.append(heatmap_embed(report.symbol if report is not None else heat[1].symbol,
                                    report.window.label if report is not None else heat[1].window, heat))
        files.append(png_file(heat[0], HEATMAP_ATTACHMENT))
    if len(embeds) > 1:
        dicts = [e.to_dict() for e in embeds]
        fit_embeds(dicts)
        for e, d in zip(embeds, dicts):
            e.description = d.get("description")
    return embeds, files


# What the bot needs in a channel it posts reports to, in the order shown to users.
REQUIRED_CHANNEL_PERMISSIONS: tuple[tuple[str, str], ...] = (
    ("view_channel", "View Channel"),
    ("send_messages", "Send Messages"),
    ("embed_links", "Embed Links"),
    ("attach_files", "Attach Files"),
)

# Discord JSON error codes (https://discord.com/developers/docs/topics/opcodes-and-status-codes)
UNKNOWN_CHANNEL = 10003
UNKNOWN_MESSAGE = 10008  # on a send with enforce_nonce: this nonce's message was posted and deleted since
MISSING_ACCESS = 50001
#: how long posts pause after a 429 that is not Discord's own (Cloudflare's edge: no Retry-After to read)
CLOUDFLARE_WAIT_S = 60.0


def missing_channel_permissions(perms: discord.Permissions, *, thread: bool = False) -> list[str]:
    """Human names of the required permissions ``perms`` lacks (threads need Send Messages in Threads)."""
    needed = list(REQUIRED_CHANNEL_PERMISSIONS)
    if thread:
        needed[1] = ("send_messages_in_threads", "Send Messages in Threads")
    return [label for attr, label in needed if not getattr(perms, attr)]


class DiscordPoster:
    """Sends the dispatcher's posts with discord.py (implements :class:`bot.scheduler.Poster`).

    :meth:`find_marker` reads the channel from ``since`` (the post's due time: it cannot have
    been sent earlier) forward, at most ``scan_limit`` messages, so a busy channel cannot bury the
    post; without ``since`` it reads the newest ``history_limit``. Reading needs Read Message
    History, without which an interrupted post cannot be verified and the subscription is paused
    with that reason instead of risking a duplicate.
    """

    def __init__(self, client: discord.Client, *, history_limit: int = 100, scan_limit: int = 1000) -> None:
        self.client = client
        self.history_limit = history_limit
        self.scan_limit = scan_limit

    def _target(self, channel_id: int, *, history: bool = False) -> Any:
        from .scheduler import ChannelGone, MissingAccess

        channel = self.client.get_channel(channel_id)
        if channel is None:
            # Not cached (deleted, hidden, or its guild is unavailable right now): let Discord
            # answer, and act only on its 404/403, never on an empty cache.
            return self.client.get_partial_messageable(channel_id)
        guild = getattr(channel, "guild", None)
        if guild is not None and guild.me is not None:
            perms = channel.permissions_for(guild.me)
            if not perms.view_channel:
                raise ChannelGone(f"I can no longer see #{channel.name}")
            missing = missing_channel_permissions(perms, thread=isinstance(channel, discord.Thread))
            if history and not perms.read_message_history:
                missing.append("Read Message History (needed to check an interrupted post)")
            if missing:
                raise MissingAccess(f"missing {', '.join(missing)} in #{channel.name}")
        return channel

    @staticmethod
    def _translate(exc: discord.HTTPException, channel_id: int) -> Exception:
        from .scheduler import ChannelGone, MissingAccess

        if isinstance(exc, discord.NotFound):
            return ChannelGone(f"channel {channel_id} not found (Discord {exc.code or 404})")
        if exc.code == MISSING_ACCESS:
            return ChannelGone(f"no access to channel {channel_id} (Discord {MISSING_ACCESS})")
        return MissingAccess(f"Discord refused the post in channel {channel_id}: {exc.text or exc.status}"[:200])

    async def post(self, channel_id: int, *, content: str | None, embed: dict | None, png: bytes,
                   filename: str = ATTACHMENT, nonce: str, extra: Sequence[tuple[dict, bytes, str]] = ()) -> int:
        """Send one message (fresh attachments over ``png`` and each of ``extra``'s) and return its id."""
        channel = self._target(channel_id)
        embeds = ([discord.Embed.from_dict(embed)] if embed else []) + [discord.Embed.from_dict(e) for e, _, _ in extra]
        files = [discord.File(io.BytesIO(png), filename=filename)]
        files += [discord.File(io.BytesIO(data), filename=name) for _, data, name in extra]
        more: dict[str, Any] = {"embeds": embeds} if embeds else {}
        try:
            message = await channel.send(
                content=content,
                files=files,
                nonce=nonce,
                allowed_mentions=discord.AllowedMentions.none(),
                **more,
            )
        except discord.RateLimited as exc:  # discord.py would not wait this long itself
            raise Throttled(exc.retry_after, f"Discord rate limited the post for {exc.retry_after:.0f} s") from exc
        except discord.HTTPException as exc:
            if exc.status == 429:  # not Discord's own JSON 429 (discord.py waits those out): Cloudflare's
                raise Throttled(CLOUDFLARE_WAIT_S, "Discord's edge refused the post with HTTP 429") from exc
            if not isinstance(exc, (discord.NotFound, discord.Forbidden)):
                raise
            if isinstance(exc, discord.NotFound) and exc.code == UNKNOWN_MESSAGE:
                from .scheduler import AlreadyPosted

                # discord.py sends the nonce with enforce_nonce: Discord answers 404 "Unknown Message"
                # when a message with this nonce was created shortly before and deleted since.
                raise AlreadyPosted(f"Discord {UNKNOWN_MESSAGE}: message with nonce {nonce} was deleted") from exc
            raise self._translate(exc, channel_id) from exc
        return message.id

    async def find_marker(self, channel_id: int, marker: str, *, since: datetime | None = None) -> int | None:
        """Id of a message of ours whose embed footer (or content) contains ``marker``: among those
        after ``since`` (oldest first, a minute of clock skew allowed), else the newest ones."""
        channel = self._target(channel_id, history=True)
        me = self.client.user.id if self.client.user else None
        if since is not None:
            after = discord.Object(id=discord.utils.time_snowflake(since - timedelta(minutes=1)))
            messages = channel.history(limit=self.scan_limit, after=after, oldest_first=True)
        else:
            messages = channel.history(limit=self.history_limit)
        try:
            async for message in messages:
                if me is not None and message.author.id != me:
                    continue
                texts = [message.content or ""] + [(e.footer.text or "") for e in message.embeds]
                if any(marker in t for t in texts):
                    return message.id
        except (discord.NotFound, discord.Forbidden) as exc:
            raise self._translate(exc, channel_id) from exc
        return None
