"""Screenshot-like mock-ups of the ``/liqmap`` answer as Discord draws it (dark theme), with matplotlib.

    .venv/bin/python docs/render_discord.py [--view map|heatmap|both] [--style v2|embed|all] [--out DIR]

The message is drawn from what the bot really sends: the Components V2 layout of
:class:`bot.controls.AnswerControls` (``--style v2``), or the same answer as embeds
(:func:`bot.poster.view_message`) with the same controls as action rows under them (``--style
embed``), over the bundled sample and the real chart PNGs. Markdown is drawn as Discord does for
the parts liqmap uses: headings, ``-#`` small text, bold, bullets and code blocks. Writes
``discord-<style>-<view>.png`` into ``--out`` (default ``out/``); docs/example-discord.png is the V2
map answer.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Rectangle  # noqa: E402
from matplotlib.textpath import TextToPath  # noqa: E402

BG, CARD, TEXT, MUTED, HEAD = "#313338", "#2b2d31", "#dbdee1", "#949ba4", "#f2f3f5"
CODE_BG, SELECT_BG, BLURPLE, GREY = "#1e1f22", "#1e1f22", "#5865f2", "#4e5058"
SANS = FontProperties(family="DejaVu Sans")
BOLD = FontProperties(family="DejaVu Sans", weight="bold")
MONO = FontProperties(family="DejaVu Sans Mono")
_T2P = TextToPath()
_EMOJI = re.compile("[\ufe0f\U0001f300-\U0001faff]")  # colour emoji: no glyphs in DejaVu


def width(text: str, size: float, font: FontProperties = SANS) -> float:
    if not text:
        return 0.0
    w, _, _ = _T2P.get_text_width_height_descent(text, _sized(font, size), ismath=False)
    return float(w)


def _sized(font: FontProperties, size: float) -> FontProperties:
    f = font.copy()
    f.set_size(size)
    return f


class Canvas:
    """Pixel coordinates, y down; everything drawn at 1 px = 1 pt (dpi 72)."""

    def __init__(self, w: int, h: int) -> None:
        self.fig = plt.figure(figsize=(w / 72, h / 72), dpi=72)
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, w)
        self.ax.set_ylim(h, 0)
        self.ax.axis("off")
        self.ax.add_patch(Rectangle((0, 0), w, h, color=BG))
        self.w, self.h = w, h

    def box(self, x: float, y: float, w: float, h: float, colour: str, r: float = 0, alpha: float = 1, edge: str | None = None) -> None:
        self.ax.add_patch(FancyBboxPatch((x + r, y + r), max(w - 2 * r, 0.1), max(h - 2 * r, 0.1),
                                         boxstyle=f"round,pad={r}", fc=colour, ec=edge or "none", lw=1, alpha=alpha))

    def text(self, x: float, y: float, s: str, size: float, colour: str = TEXT, font: FontProperties = SANS,
             alpha: float = 1, ha: str = "left") -> None:
        self.ax.text(x, y, s, fontproperties=_sized(font, size), color=colour, va="top", ha=ha, alpha=alpha, parse_math=False)

    def image(self, png: bytes, x: float, y: float, w: float) -> float:
        img = mpimg.imread(io.BytesIO(png), format="png")
        h = w * img.shape[0] / img.shape[1]
        self.ax.imshow(img, extent=(x, x + w, y + h, y), interpolation="lanczos", zorder=3)
        self.ax.set_xlim(0, self.w)
        self.ax.set_ylim(self.h, 0)
        return h


def _spans(line: str) -> list[tuple[str, bool]]:
    parts = line.split("**")
    return [(p.replace("*", ""), i % 2 == 1) for i, p in enumerate(parts) if p]


def markdown(c: Canvas | None, x: float, y: float, w: float, text: str) -> float:
    """Draw (or only measure, ``c`` None) Discord markdown; returns the height used."""
    y0 = y
    code: list[str] | None = None
    for raw in _EMOJI.sub("", text.replace("\u2139\ufe0f", "\u2139")).split("\n"):
        if raw.startswith("```"):
            if code is None:
                code = []
                continue
            h = 8 + 17 * len(code)
            if c:
                c.box(x, y + 2, w, h, CODE_BG, r=4)
                for i, ln in enumerate(code):
                    c.text(x + 8, y + 6 + 17 * i, ln, 12.5, TEXT, MONO)
            y += h + 6
            code = None
            continue
        if code is not None:
            code.append(raw)
            continue
        size, colour, bold, lh = 14.0, TEXT, False, 19.0
        line = raw
        if line.startswith("## "):
            size, colour, bold, lh, line = 20.0, HEAD, True, 27.0, line[3:]
        elif line.startswith("### "):
            size, colour, bold, lh, line = 16.0, HEAD, True, 22.0, line[4:]
        elif line.startswith("-# "):
            size, colour, lh, line = 11.5, MUTED, 16.0, line[3:]
        if not line.strip():
            y += 8
            continue
        # word-wrap the spans
        cx = x
        for seg, strong in _spans(line):
            font = BOLD if (strong or bold) else SANS
            for word in re.split(r"(\s+)", seg):
                if not word:
                    continue
                ww = width(word, size, font)
                if cx + ww > x + w and word.strip() and cx > x:
                    y += lh
                    cx = x
                    if not word.strip():
                        continue
                if c:
                    c.text(cx, y, word, size, HEAD if (strong and colour == TEXT) else colour, font)
                cx += ww
        y += lh
    return y - y0


def button(c: Canvas | None, x: float, y: float, comp: dict[str, Any]) -> float:
    label = comp.get("label", "")
    emoji = (comp.get("emoji") or {}).get("name")
    text = ("↻ " if emoji else "") + label
    w = width(text, 13.5, SANS) + 32
    if c:
        colour = BLURPLE if comp.get("style") == 1 else GREY
        alpha = 0.5 if comp.get("disabled") else 1.0
        c.box(x, y, w, 32, colour, r=4, alpha=alpha)
        c.text(x + w / 2, y + 8, text, 13.5, "#ffffff", SANS, alpha=alpha, ha="center")
    return w


def select(c: Canvas | None, x: float, y: float, w: float, comp: dict[str, Any]) -> None:
    if not c:
        return
    chosen = next((o["label"] for o in comp["options"] if o.get("default")), comp.get("placeholder", ""))
    c.box(x, y, w, 40, SELECT_BG, r=4, edge="#1e1f22")
    c.text(x + 12, y + 11, chosen, 14, TEXT)
    c.text(x + w - 24, y + 9, "⌄", 16, TEXT)


def rows(c: Canvas | None, x: float, y: float, w: float, comps: list[dict[str, Any]]) -> float:
    y0 = y
    for row in comps:
        items = row["components"]
        if items and items[0]["type"] == 3:
            select(c, x, y, min(w, 400), items[0])
            y += 48
            continue
        cx = x
        for b in items:
            cx += button(c, cx, y, b) + 8
        y += 40
    return y - y0


def header(c: Canvas, x: float, y: float) -> float:
    c.text(x + 56, y, "╭─", 12, MUTED)
    c.ax.add_patch(matplotlib.patches.Circle((x + 82, y + 8), 8, color="#e67e22"))
    c.text(x + 94, y, "Trader", 12.5, MUTED, BOLD)
    c.text(x + 94 + width("Trader ", 12.5, BOLD), y, "used", 12.5, MUTED)
    c.text(x + 94 + width("Trader used ", 12.5, BOLD), y, "/liqmap", 12.5, "#00a8fc")
    y += 22
    c.ax.add_patch(matplotlib.patches.Circle((x + 36, y + 20), 20, color=BLURPLE))
    c.text(x + 36, y + 8, "L", 20, "#ffffff", BOLD, ha="center")
    c.text(x + 72, y, "liqmap", 15, HEAD, BOLD)
    bx = x + 72 + width("liqmap", 15, BOLD) + 6
    c.box(bx, y + 2, 30, 16, BLURPLE, r=3)
    c.text(bx + 15, y + 3, "APP", 10, "#ffffff", BOLD, ha="center")
    c.text(bx + 38, y + 2, "Today at 11:46", 11.5, MUTED)
    return 24 + 22


def draw_v2(c: Canvas | None, x: float, y: float, comps: list[dict[str, Any]], files: dict[str, bytes], w: float) -> float:
    """A container: accent bar, its texts, galleries, separators and rows."""
    (box,) = comps
    inner_x, inner_w = x + 16, w - 32
    cy = y + 16
    for comp in box["components"]:
        t = comp["type"]
        if t == 10:
            cy += markdown(c, inner_x, cy, inner_w, comp["content"]) + 6
        elif t == 12:
            for item in comp["items"]:
                png = files[item["media"]["url"].removeprefix("attachment://")]
                cy += (c.image(png, inner_x, cy, inner_w) if c else inner_w * _aspect(png)) + 8
        elif t == 14:
            if c:
                c.box(inner_x, cy + 6, inner_w, 1, "#3f4147")
            cy += 14
        elif t == 1:
            cy += rows(c, inner_x, cy, inner_w, [comp])
    return cy - y + 8


def draw_embeds(c: Canvas | None, x: float, y: float, embeds: list[dict[str, Any]], comps: list[dict[str, Any]],
                files: dict[str, bytes], w: float, colour: str) -> float:
    cy = y
    for e in embeds:
        h = _embed(None, x, cy, e, files, w, colour)
        if c:
            c.box(x, cy, w, h, CARD, r=4)
            c.box(x, cy, 4, h, colour, r=0)
            _embed(c, x, cy, e, files, w, colour)
        cy += h + 8
    cy += rows(c, x, cy, w, comps)
    return cy - y


def _embed(c: Canvas | None, x: float, y: float, e: dict[str, Any], files: dict[str, bytes], w: float, colour: str) -> float:
    ix, iw = x + 16, w - 32
    cy = y + 10
    cy += markdown(c, ix, cy, iw, "### " + e["title"]) + 4
    cy += markdown(c, ix, cy, iw, e.get("description", "")) + 4
    for f in e.get("fields", []):
        cy += markdown(c, ix, cy, iw, f"**{f['name']}**\n{f['value']}") + 4
    url = (e.get("image") or {}).get("url")
    if url:
        png = files[url.removeprefix("attachment://")]
        cy += (c.image(png, ix, cy, iw) if c else iw * _aspect(png)) + 8
    foot = e["footer"]["text"] + " • 22/06/2026 11:45"
    cy += markdown(c, ix, cy, iw, "-# " + foot) + 6
    return cy - y


def _aspect(png: bytes) -> float:
    img = mpimg.imread(io.BytesIO(png), format="png")
    return img.shape[0] / img.shape[1]


async def answer(view: str) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]], dict[str, bytes], str]:
    """The real answer of ``/liqmap BTC 7d all <view>`` over the bundled sample: V2 components,
    embeds, the controls as action rows, the files and the accent colour."""
    from analysis.report import ReportService
    from analysis.sources.registry import make_sources
    from bot.controls import AnswerControls, AnswerState, control_rows
    from bot.poster import view_message

    service = ReportService(make_sources("sample"))
    controls = AnswerControls(service, None, lambda *a: None)  # render only: no press, no cooldown
    state = AnswerState("BTCUSDT", "7d", "all", view, 930000000000000001)
    layout, files = await controls.render(state)
    report = await service.report("BTCUSDT", "7d", "all") if view != "heatmap" else None
    heat = await service.heatmap("BTCUSDT", "7d", "all") if view != "map" else None
    embeds, _ = view_message(view, report, heat)
    import discord

    classic = discord.ui.View(timeout=None)
    for r, row in enumerate(control_rows(state, True, service.venues)):
        for item in row.children:
            item.row = r
            classic.add_item(item)
    data = {f.filename: f.fp.read() for f in files}
    colour = f"#{layout.to_components()[0].get('accent_color', 0x95A5A6):06x}"
    return layout.to_components(), [e.to_dict() for e in embeds], classic.to_components(), data, colour


def render(style: str, view: str, out: Path) -> Path:
    v2, embeds, classic, files, colour = asyncio.run(answer(view))
    w_msg, x0 = 520, 16
    if style == "v2":
        body = lambda c, y: draw_v2(c, x0 + 72, y, v2, files, w_msg)  # noqa: E731
    else:
        body = lambda c, y: draw_embeds(c, x0 + 72, y, embeds, classic, files, w_msg, colour)  # noqa: E731
    height = int(16 + 46 + body(None, 0) + 24)
    c = Canvas(x0 + 72 + w_msg + 24, height)
    y = 16 + header(c, x0, 16)
    if style == "v2":
        h = draw_v2(None, x0 + 72, y, v2, files, w_msg)
        c.box(x0 + 72, y, w_msg, h, CARD, r=6)
        c.box(x0 + 72, y, 4, h, colour)
    body(c, y)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"discord-{style}-{view}.png"
    c.fig.savefig(path, dpi=108, facecolor=BG)  # 1.5x
    plt.close(c.fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--view", default="map", choices=("map", "heatmap", "both"))
    ap.add_argument("--style", default="all", choices=("v2", "embed", "all"))
    ap.add_argument("--out", type=Path, default=Path("out"))
    args = ap.parse_args()
    for style in ("v2", "embed") if args.style == "all" else (args.style,):
        print(render(style, args.view, args.out))


if __name__ == "__main__":
    main()
