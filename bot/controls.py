"""The controls of a ``/liqmap`` answer: window, view, exchange and refresh, persistent across restarts.

The answer is one Components V2 message (:func:`answer_layout`): a container with the title, the
summary, the chart in a media gallery (the heatmap below it for ``view`` both), missing venues, the
footer, and three rows of controls:

- ``1 day`` ``7 days`` ``30 days`` ``Refresh`` (the current window is highlighted and disabled);
- ``Map`` ``Heatmap`` ``Both`` (the current view likewise; heatmap views are disabled for a
  snapshot-only venue, which has no history);
- the exchange select (``All exchanges`` and each configured venue).

**State in the custom id.** Every control is a :class:`discord.ui.DynamicItem`: its custom id carries
the whole answer, ``lq:<control>:<arg>:<symbol>:<window>:<exchange>:<view>:<owner id>`` (at most
100 characters), so no table and no in-memory view is needed and a control pressed after a restart
works like one pressed before. The templates are registered when the ``/liqmap`` cog loads
(``bot.add_dynamic_items``). A custom id is validated on parse (:meth:`AnswerState.decode`): a
forged or out-of-date one (unknown control, a symbol that is not canonical, an exchange this bot no
longer serves, an owner that is not the message's) gets one private refusal, never a crash and
never a silent "This interaction failed". Any custom id under ``lq:`` that matches no control goes
to :class:`StaleControl`, which refuses the same way.

**Who may press what.** Only the person who asked (the owner, checked against the message's own
interaction metadata, which Discord writes and users cannot forge) edits the public answer. Anyone
else who presses a control gets a private (ephemeral) copy with the new settings, which they own and
can go on changing. A private answer is seen only by its owner.

**Cooldown, cache, double clicks.** A press that starts work charges the same per-user cooldown as
the command (``LIQMAP_COOLDOWN_USES`` per ``LIQMAP_COOLDOWN_SECONDS``; refresh too); a refused press
is not charged. The pictures come from the report service's cache (``LIQMAP_REPORT_TTL_SECONDS``),
so a refresh within the TTL re-sends the cached answer; after it, a new one. While one press renders
a message, a second press on it is told so privately and not charged (no second render).
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Sequence

import discord
from discord import ui

from analysis.errors import InputError, SourceError
from analysis.options import VIEWS
from analysis.symbols import parse_symbol
from analysis.venues import display_name
from analysis.windows import WINDOWS

from .poster import SKEW_COLOURS, view_message

__all__ = [
    "AnswerState",
    "AnswerControls",
    "WindowButton",
    "ViewButton",
    "ExchangeSelect",
    "RefreshButton",
    "StaleControl",
    "CONTROL_ITEMS",
    "answer_layout",
    "attach",
    "controls_of",
    "REPORT_TIMEOUT",
    "TEXT_MAX",
    "NOT_MINE",
]

log = logging.getLogger(__name__)

REPORT_TIMEOUT = 300.0  # well inside the 15 minutes an interaction token stays valid
TEXT_MAX = 4000  # Discord: all text displays of a Components V2 message together
CUSTOM_ID_MAX = 100
NOT_MINE = ("This control is not one this bot made, or it comes from an older version of the bot. "
            "Run /liqmap again for a fresh answer.")

WINDOW_LABELS = {"1d": "1 day", "7d": "7 days", "30d": "30 days"}
VIEW_LABELS = {"map": "Map", "heatmap": "Heatmap", "both": "Both"}
assert tuple(WINDOW_LABELS) == tuple(WINDOWS) and tuple(VIEW_LABELS) == tuple(VIEWS)

_SYMBOL = re.compile(r"[A-Z0-9]{2,30}")
_EXCHANGE = re.compile(r"[a-z0-9]{1,20}")
_OWNER = re.compile(r"[1-9][0-9]{0,19}")
_FIELD = r"[^:]{0,30}"
_STATE_SHAPE = rf"{_FIELD}:{_FIELD}:{_FIELD}:{_FIELD}:{_FIELD}"
_STATE = rf"(?P<state>{_STATE_SHAPE})"


@dataclass(frozen=True)
class AnswerState:
    """Everything a ``/liqmap`` answer shows: what was asked, and by whom (``owner``, a user id)."""

    symbol: str
    window: str
    exchange: str
    view: str
    owner: int

    def encode(self) -> str:
        return f"{self.symbol}:{self.window}:{self.exchange}:{self.view}:{self.owner}"

    @classmethod
    def decode(cls, text: str, venues: Sequence[str]) -> "AnswerState":
        """Parse and check a custom id's state part; :class:`InputError` (:data:`NOT_MINE`, or
        which exchange is gone) for anything this bot would not have written."""
        parts = text.split(":")
        if len(parts) != 5:
            raise InputError(NOT_MINE)
        symbol, window, exchange, view, owner = parts
        if not (_SYMBOL.fullmatch(symbol) and _EXCHANGE.fullmatch(exchange) and _OWNER.fullmatch(owner)
                and window in WINDOWS and view in VIEWS and int(owner) < 2**64):
            raise InputError(NOT_MINE)
        try:
            canonical = parse_symbol(symbol).symbol
        except InputError:
            raise InputError(NOT_MINE) from None
        if canonical != symbol:
            raise InputError(NOT_MINE)
        if exchange != "all" and exchange not in venues:
            raise InputError(f"{exchange} is no longer served by this bot; choose another exchange or run /liqmap again.")
        return cls(symbol, window, exchange, view, int(owner))


# -- the bot's controller (one per bot, found through the interaction's client) ----------------------

_CONTROLLERS: "weakref.WeakKeyDictionary[discord.Client, AnswerControls]" = weakref.WeakKeyDictionary()


def attach(client: discord.Client, controls: "AnswerControls") -> None:
    """Make ``controls`` the controller of ``client``'s dynamic items (the ``/liqmap`` cog does it)."""
    _CONTROLLERS[client] = controls


def controls_of(client: discord.Client) -> "AnswerControls | None":
    return _CONTROLLERS.get(client)


Validate = Callable[[str, str, str, str], Any]


class AnswerControls:
    """Renders ``/liqmap`` answers and handles their controls' presses.

    ``validate(symbol, window, exchange, view)`` is the command's own option check (raises
    :class:`InputError`); ``cooldown`` is the command's :class:`~bot.cogs.UserCooldown`.
    """

    def __init__(self, service: Any, cooldown: Any, validate: Validate, *, timeout: float = REPORT_TIMEOUT) -> None:
        self.service = service
        self.cooldown = cooldown
        self.validate = validate
        self.timeout = timeout
        self._busy: set[tuple[int, int]] = set()  # (message id, 0 for an edit | user id for a copy)

    # -- rendering -------------------------------------------------------------------------------
    async def render(self, state: AnswerState) -> tuple[ui.LayoutView, list[discord.File]]:
        """The answer's layout and fresh files, from the report service (cached and shared)."""
        work: list[Awaitable[Any]] = []
        if state.view in ("map", "both"):
            work.append(self.service.report(state.symbol, state.window, state.exchange))
        if state.view in ("heatmap", "both"):
            work.append(self.service.heatmap(state.symbol, state.window, state.exchange))
        # shielded: giving up on this answer must not cancel a computation others may share
        shielded = [asyncio.shield(w) for w in work]
        try:
            results = await asyncio.wait_for(asyncio.gather(*shielded), self.timeout)
        except asyncio.TimeoutError:
            raise SourceError("liqmap", "report", f"no answer from the exchanges within {self.timeout:.0f} s") from None
        report = results[0] if state.view in ("map", "both") else None
        heat = results[-1] if state.view in ("heatmap", "both") else None
        embeds, files = view_message(state.view, report, heat)
        skew = getattr(getattr(report, "reading", None), "skew", None)
        colour = SKEW_COLOURS.get(getattr(skew, "key", ""), discord.Colour.dark_grey())
        rows = control_rows(state, self.heatmap_ok(state.exchange), self.service.venues)
        return answer_layout([e.to_dict() for e in embeds], rows, colour), files

    def heatmap_ok(self, exchange: str) -> bool:
        try:
            self.service.heatmap_venues(exchange)
        except InputError:
            return False
        return True

    # -- presses ---------------------------------------------------------------------------------
    async def press(self, interaction: discord.Interaction, state: AnswerState | None, refusal: str | None) -> None:
        """Answer one press: edit the message (its owner) or send a private copy (anyone else)."""
        from .app import send_error

        try:
            if refusal is not None or state is None:
                raise InputError(refusal or NOT_MINE)
            await self._press(interaction, state)
        except Exception as exc:  # discord.py would only log it: every failure gets its one reply
            await send_error(interaction, exc)

    async def _press(self, interaction: discord.Interaction, state: AnswerState) -> None:
        from .app import NO_MENTIONS

        message = interaction.message
        if message is None:  # Discord always sends the message of a component interaction
            raise InputError(NOT_MINE)
        meta = message.interaction_metadata
        if meta is not None and meta.user.id != state.owner:
            raise InputError(NOT_MINE)  # the custom id names someone other than who asked
        self.validate(state.symbol, state.window, state.exchange, state.view)
        user = interaction.user.id
        in_place = user == state.owner
        key = (message.id, 0 if in_place else user)
        if key in self._busy:
            await interaction.response.send_message(
                "Already updating this answer; it will change in a moment." if in_place
                else "Already making your copy; it will appear in a moment.",
                ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        self.cooldown.charge(user)
        self._busy.add(key)  # no await between the check and here: a double click cannot pass both
        try:
            if in_place:
                await interaction.response.defer()  # "deferred update": the message itself changes
                layout, files = await self.render(state)
                await interaction.edit_original_response(view=layout, attachments=files, allowed_mentions=NO_MENTIONS)
            else:
                await interaction.response.defer(ephemeral=True, thinking=True)
                layout, files = await self.render(replace(state, owner=user))
                await interaction.followup.send(view=layout, files=files, ephemeral=True, allowed_mentions=NO_MENTIONS)
        finally:
            self._busy.discard(key)


def _parse(interaction: discord.Interaction, text: str) -> tuple[AnswerState | None, str | None]:
    """The state of a custom id, or the refusal to send (never raises: discord.py would only log it)."""
    controls = controls_of(interaction.client)
    if controls is None:
        return None, "The map is not available on this bot right now; please try again shortly."
    try:
        return AnswerState.decode(text, controls.service.venues), None
    except InputError as exc:
        return None, str(exc)


async def _dispatch(interaction: discord.Interaction, state: AnswerState | None, refusal: str | None) -> None:
    controls = controls_of(interaction.client)
    if controls is None:
        from .app import NO_MENTIONS

        await interaction.response.send_message(refusal or NOT_MINE, ephemeral=True, allowed_mentions=NO_MENTIONS)
        return
    await controls.press(interaction, state, refusal)


_PLACEHOLDER = AnswerState("BTCUSDT", "7d", "all", "map", 1)  # what a refusing item is built around


def _custom_id(control: str, arg: str, state: AnswerState) -> str:
    out = f"lq:{control}:{arg}:{state.encode()}"
    if len(out) > CUSTOM_ID_MAX:  # cannot happen with validated fields; say so loudly if it ever does
        raise ValueError(f"custom id of {len(out)} characters: {out[:40]}…")
    return out


class WindowButton(ui.DynamicItem[ui.Button[Any]], template=rf"lq:w:(?P<arg>[^:]{{0,8}}):{_STATE}"):
    """Shows the answer over another window (``arg``: 1d, 7d or 30d)."""

    def __init__(self, state: AnswerState, arg: str, *, custom_id: str | None = None, refusal: str | None = None) -> None:
        current = arg == state.window and refusal is None
        super().__init__(ui.Button(label=WINDOW_LABELS.get(arg, arg), disabled=current,
                                   style=discord.ButtonStyle.primary if current else discord.ButtonStyle.secondary,
                                   custom_id=custom_id or _custom_id("w", arg, state)))
        self.state, self.arg, self.refusal = state, arg, refusal

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: re.Match[str], /) -> "WindowButton":
        state, refusal = _parse(interaction, match["state"])
        if refusal is None and match["arg"] not in WINDOWS:
            refusal = NOT_MINE
        return cls(state or _PLACEHOLDER, match["arg"], custom_id=match.string, refusal=refusal)

    async def callback(self, interaction: discord.Interaction) -> None:
        await _dispatch(interaction, replace(self.state, window=self.arg), self.refusal)


class ViewButton(ui.DynamicItem[ui.Button[Any]], template=rf"lq:v:(?P<arg>[^:]{{0,8}}):{_STATE}"):
    """Shows another view of the answer (``arg``: map, heatmap or both)."""

    def __init__(self, state: AnswerState, arg: str, *, heatmap_ok: bool = True, custom_id: str | None = None,
                 refusal: str | None = None) -> None:
        current = arg == state.view and refusal is None
        super().__init__(ui.Button(label=VIEW_LABELS.get(arg, arg), disabled=current or (arg != "map" and not heatmap_ok),
                                   style=discord.ButtonStyle.primary if current else discord.ButtonStyle.secondary,
                                   custom_id=custom_id or _custom_id("v", arg, state)))
        self.state, self.arg, self.refusal = state, arg, refusal

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: re.Match[str], /) -> "ViewButton":
        state, refusal = _parse(interaction, match["state"])
        if refusal is None and match["arg"] not in VIEWS:
            refusal = NOT_MINE
        return cls(state or _PLACEHOLDER, match["arg"], custom_id=match.string, refusal=refusal)

    async def callback(self, interaction: discord.Interaction) -> None:
        await _dispatch(interaction, replace(self.state, view=self.arg), self.refusal)


class RefreshButton(ui.DynamicItem[ui.Button[Any]], template=rf"lq:r:(?P<arg>):{_STATE}"):
    """Shows the same answer again: from the cache within its TTL, freshly built after it."""

    def __init__(self, state: AnswerState, *, custom_id: str | None = None, refusal: str | None = None) -> None:
        super().__init__(ui.Button(label="Refresh", emoji="🔄", style=discord.ButtonStyle.secondary,
                                   custom_id=custom_id or _custom_id("r", "", state)))
        self.state, self.refusal = state, refusal

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: re.Match[str], /) -> "RefreshButton":
        state, refusal = _parse(interaction, match["state"])
        return cls(state or _PLACEHOLDER, custom_id=match.string, refusal=refusal)

    async def callback(self, interaction: discord.Interaction) -> None:
        await _dispatch(interaction, self.state, self.refusal)


class ExchangeSelect(ui.DynamicItem[ui.Select[Any]], template=rf"lq:x:(?P<arg>):{_STATE}"):
    """Shows the answer from another exchange (the selected value: all or a configured venue)."""

    def __init__(self, state: AnswerState, venues: Sequence[str] = (), *, custom_id: str | None = None,
                 refusal: str | None = None) -> None:
        choices = ["all", *venues] if venues else [state.exchange]
        options = [discord.SelectOption(label=display_name(v), value=v, default=v == state.exchange) for v in choices]
        super().__init__(ui.Select(custom_id=custom_id or _custom_id("x", "", state), options=options,
                                   placeholder="Exchange", min_values=1, max_values=1))
        self.state, self.refusal = state, refusal

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: re.Match[str], /) -> "ExchangeSelect":
        state, refusal = _parse(interaction, match["state"])
        return cls(state or _PLACEHOLDER, custom_id=match.string, refusal=refusal)

    async def callback(self, interaction: discord.Interaction) -> None:
        controls = controls_of(interaction.client)
        values = self.item.values
        chosen = values[0] if len(values) == 1 else None
        allowed = ("all", *controls.service.venues) if controls is not None else ()
        refusal = self.refusal
        if refusal is None and chosen not in allowed:  # Discord sends only the options; anything else is forged
            refusal = NOT_MINE
        await _dispatch(interaction, replace(self.state, exchange=chosen or self.state.exchange), refusal)


class StaleControl(ui.DynamicItem[ui.Button[Any]], template=rf"lq:(?!(?:[wv]:[^:]{{0,8}}|[rx]:):{_STATE_SHAPE}\Z)(?s:.*)"):
    """Any other custom id under ``lq:`` (an older version's, or forged): one private refusal."""

    def __init__(self, custom_id: str) -> None:
        super().__init__(ui.Button(label="?", custom_id=custom_id))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: re.Match[str], /) -> "StaleControl":
        return cls(match.string)

    async def callback(self, interaction: discord.Interaction) -> None:
        await _dispatch(interaction, None, NOT_MINE)


CONTROL_ITEMS: tuple[type[ui.DynamicItem[Any]], ...] = (WindowButton, ViewButton, RefreshButton, ExchangeSelect, StaleControl)


def control_rows(state: AnswerState, heatmap_ok: bool, venues: Sequence[str]) -> list[ui.ActionRow[Any]]:
    """The three rows of controls of an answer in ``state`` (``venues``: the exchanges offered besides all)."""
    return [
        ui.ActionRow(*(WindowButton(state, w) for w in WINDOWS), RefreshButton(state)),
        ui.ActionRow(*(ViewButton(state, v, heatmap_ok=heatmap_ok) for v in VIEWS)),
        ui.ActionRow(ExchangeSelect(state, venues)),
    ]


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(0, n - 1)].rstrip() + "…"


def _label_chars(component: dict[str, Any]) -> int:
    """Characters of a component's labels, placeholder, options and children."""
    n = sum(len(str(component.get(k) or "")) for k in ("label", "placeholder", "description"))
    n += sum(len(o.get("label", "")) + len(o.get("description") or "") for o in component.get("options", []))
    return n + sum(_label_chars(c) for c in component.get("components", []))


def answer_layout(embeds: Sequence[dict[str, Any]], rows: Sequence[ui.ActionRow[Any]],
                  colour: discord.Colour | None = None) -> ui.LayoutView:
    """One Components V2 message from the answer's embed dicts (as :func:`~bot.poster.view_message`
    builds them): per embed its title and text, its picture in a media gallery, its fields; then the
    footer and the controls, all in one container. Texts are clipped (descriptions first) to
    :data:`TEXT_MAX` characters together."""
    parts: list[tuple[str, str, str | None, str]] = []  # (heading, description, image url, fields)
    for e in embeds:
        fields = "\n".join(f"**{f['name']}**\n{f['value']}" for f in e.get("fields", []))
        parts.append((e.get("title", ""), e.get("description", "") or "", (e.get("image") or {}).get("url"), fields))
    footer = "-# " + " · ".join(dict.fromkeys((e.get("footer") or {}).get("text", "") for e in embeds if e.get("footer")))
    texts = [[f"## {t}" if i == 0 else f"### {t}", d, f] for i, (t, d, _, f) in enumerate(parts)]
    # Discord counts all text of the message: the controls' labels and the pictures' descriptions too
    other = sum(_label_chars(row.to_component_dict()) for row in rows) + sum(len(_clip(t, 1024)) for t, *_ in parts)
    excess = sum(len(x) + 1 for group in texts for x in group) + len(footer) + other - TEXT_MAX  # +1: a newline
    for group in texts:  # clip descriptions, the first one first, as the embeds are
        if excess <= 0:
            break
        cut = min(excess, max(0, len(group[1]) - 1))
        group[1] = _clip(group[1], len(group[1]) - cut)
        excess -= cut
    view = ui.LayoutView(timeout=None)
    box = ui.Container(accent_colour=colour)
    for (heading, description, fields), (_, _, url, _) in zip(texts, parts):
        box.add_item(ui.TextDisplay(f"{heading}\n{description}".rstrip()))
        if url:
            alt = _clip(heading.split(" ", 1)[1], 1024)
            box.add_item(ui.MediaGallery(discord.MediaGalleryItem(url, description=alt)))
        if fields:
            box.add_item(ui.TextDisplay(fields))
    box.add_item(ui.TextDisplay(footer))
    box.add_item(ui.Separator())
    for row in rows:
        box.add_item(row)
    view.add_item(box)
    return view
