"""How a finished report becomes a Discord message: the embed, the PNG attachment, the sender.

:func:`report_embed` is shared by ``/liqmap``, daily posts and skew notices. The PNG is always
attached as ``liqmap.png`` and shown in the embed through ``attachment://liqmap.png``; every send
gets a fresh :class:`discord.File` over the same bytes (a File is consumed by one send).
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from typing import Any

import discord

__all__ = ["ATTACHMENT", "report_embed", "png_file", "footer_text", "SKEW_COLOURS"]

ATTACHMENT = "liqmap.png"
EMBED_DESCRIPTION_MAX = 4096
EMBED_FIELD_MAX = 1024

SKEW_COLOURS = {
    "heavily_short": discord.Colour(0x1ABC9C),
    "short": discord.Colour(0x48C9B0),
    "balanced": discord.Colour(0x95A5A6),
    "long": discord.Colour(0xF0B27A),
    "heavily_long": discord.Colour(0xE67E22),
}


def png_file(png: bytes) -> discord.File:
    """A fresh attachment over ``png`` (call once per send)."""
    return discord.File(io.BytesIO(png), filename=ATTACHMENT)


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
    if missing:
        lines = "\n".join(f"**{venue}**: {why}" for venue, why in missing.items())
        embed.add_field(name="Missing venues (map built without them)", value=_clip(lines, EMBED_FIELD_MAX), inline=False)
    embed.set_footer(text=_clip(footer_text(report), 2048))
    return embed
