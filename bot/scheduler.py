"""The one dispatcher: daily reports (each exactly once per schedule and local day) and skew alerts.

One loop serves every guild (:meth:`Dispatcher.run`): every ``tick_s`` it posts the daily reports
that are due, and every ``skew_interval_s`` it re-reads the symbols of the skew alerts. Clock, sleep, poster
and report function are injected, so tests drive it with a fake clock and a fake Discord.

Rendering: within a tick each distinct (symbol, window, exchange) is rendered once and the same
PNG bytes are fanned out to every channel (the poster wraps a fresh ``discord.File`` per send).
A schedule's ``view`` picks what is posted: ``map`` (the map embed with ``liqmap.png``),
``heatmap`` (the heatmap embed with ``heatmap.png``) or ``both`` (one message, two embeds, both
files). Maps and heatmaps are rendered once per distinct key each, whatever views share them; a
``both`` post needs both (either failing counts as the report failing). The view changes only what
is rendered and posted: claims, markers (in the first embed's footer) and records are the same.

Exactly-once order for a daily post (schedule x local date x symbol):

1. **claim** - insert a ``deliveries`` row (unique on schedule, local date, symbol) in state
   ``claimed``, with a deterministic marker and nonce, and commit. Only the inserter proceeds.
2. **send** - ``poster.post(..., nonce=...)``; the marker is in the embed footer. discord.py 2.7
   sends ``nonce`` with ``enforce_nonce``, so Discord itself drops a repeat within its nonce window.
3. **record** - mark the row ``sent`` with the message id (batched per tick), then advance
   ``next_run_at`` once every symbol of the run is final (``sent`` or ``skipped``).

A crash between 2 and 3 leaves a ``claimed`` row. Once its lease (``claim_lease``) has expired,
the next dispatcher takes it over and asks ``poster.find_marker(channel, marker, since=due)`` first (the
channel read forward from the due time, so chatter after the post cannot hide it): if the
message is there it is recorded as sent, and only if not is it sent again (same nonce). A send
that raised (timeout, 5xx after discord.py's own retries) is recorded ``failed`` and goes through
the same check on the next tick. So a post is never made twice, and a claim is never lost.

Two dispatchers on one database: the claim is stamped when it is made (after rendering), a send
that starts past half the lease renews the claim first (compare-and-set on the attempt number; if
another dispatcher took it over, this one does not send), and an outcome is recorded only while
the record is still this claim, so a late writer never overwrites the one that took over. A send
that Discord refuses because the nonce's message was posted and deleted since
(:class:`AlreadyPosted`) is recorded as sent, never resent and never a reason to pause. The lease
compares the processes' wall clocks: keep their clocks in sync (NTP).

Blind retries: a resend without a marker search (discord.py's own retries of one send) happens
only within :data:`BLIND_RETRY_WINDOW` of the first attempt, inside Discord's nonce window; every
later retry searches for the marker first (``post_timeout_s`` may not exceed the window).

What changed since the last report: every report this dispatcher posts has its reading record
(:mod:`analysis.readings`) kept in ``daily_readings`` in the same transaction as its ``sent``
outcome (:meth:`Store.finish_many`), the latest few per (schedule, symbol). At the next run the
latest ones of all posts being made are loaded in one query and passed to the text as
``previous`` (each distinct (key, previous) rendered once). A post recovered by marker or refused
as :class:`AlreadyPosted` keeps no reading (what it said is not known for sure): the next report
then compares with the one before. A kept record that does not parse, or one of another symbol,
is ignored with a log line; a reading that cannot be recorded is not kept; neither stops a post.

Retention: once a day (:data:`PRUNE_EVERY`) final delivery records due more than ``retention`` ago
are pruned in bounded batches; see :meth:`Store.prune_deliveries` for why this can never let a
post be made twice.

Downtime: a run whose time is more than ``grace`` in the past is not posted; it is recorded
``skipped`` (detail "missed ...") with a log line, and the next run is computed. A run that is
late but within ``grace`` is posted once, late. Several missed days are each recorded skipped.

Exchange down: if some venues fail, the report names them (a degraded map) and is posted. If the
report cannot be built at all, nothing is claimed and the run is retried on every tick until
``grace`` runs out; then it is recorded ``skipped`` with the reason. A request the report service
refuses outright (:class:`~analysis.errors.InputError`, e.g. an exchange that is no longer
configured) will not fix itself: that subscription is paused with the reason instead.

Channel deleted or permissions lost (:class:`ChannelGone` / :class:`MissingAccess` from the poster):
every subscription posting to that channel is paused with the reason (never deleted), and the
delivery is recorded ``skipped``. Any other error is confined to its own post.

DST (see :func:`bot.schedule_time.local_occurrence`): a local time that does not exist on a spring-forward
day is posted the same amount after the jump (02:30 -> 03:30 in New York); an ambiguous local time
on a fall-back day is posted at its first occurrence. Either way exactly once that local day.

Skew alerts: one reading per distinct (symbol, window, exchange) through the reading-only path
(``reading``, e.g. ``ReportService.reading``: no chart, no text; without one, full reports), then per
subscription the class is advanced with hysteresis (:mod:`analysis.hysteresis`, the subscription's own thresholds). The
first observation after subscribing (or resuming) records a baseline and announces nothing. A
change is announced unless the subscription announced within its cooldown; during the cooldown
the last announced class is kept, so a change that persists is announced when the cooldown ends.
The new class is written (compare-and-set) *before* the notice is sent, so a restart never
re-announces; if the send fails the class is put back and the next check retries, except when it
timed out (it may have been posted; a retry 15 minutes later would be blind): then it is kept. A crash between
the write and the send loses that one notice (at most once, by design). Only the keys that
announce are rendered as full reports (once each, after the readings); a key whose report then
fails announces nothing and keeps its class, so the next check tries again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Iterable, Protocol, Sequence

from analysis.errors import InputError, LiqmapError
from analysis.hysteresis import step
from analysis.metrics import SKEW_CLASSES
from analysis.options import VIEWS

from .pacer import DEFAULT_POSTS_PER_S, Capacity, DiscordPacer, Throttled, posting_capacity
from .schedule_time import local_date_of, next_occurrence
from .store import Claim, DailySchedule, Outcome, ReadingIn, SkewAlert, Store

__all__ = [
    "Poster",
    "ChannelGone",
    "MissingAccess",
    "AlreadyPosted",
    "DispatcherParams",
    "TickStats",
    "Dispatcher",
    "make_dispatcher",
    "ATTACHMENT",
    "HEATMAP_ATTACHMENT",
    "default_heatmap_embed",
    "BLIND_RETRY_WINDOW",
]

log = logging.getLogger(__name__)

UTC = timezone.utc
ATTACHMENT = "liqmap.png"
HEATMAP_ATTACHMENT = "heatmap.png"
Key = tuple[str, str, str]  # (symbol, window, exchange)
ViewKey = tuple[str, str, str, str]  # (symbol, window, exchange, view)
EMBED_TOTAL_MAX = 6000  # Discord's limit on an embed's title, description, fields and footer together
MAX_MISSED_RECORDED = 31  # after a longer outage the older missed days are not recorded one by one
PRUNE_EVERY = timedelta(days=1)  # how often old final delivery records are pruned
# Discord drops a send whose nonce it saw "in the past few minutes" (enforce_nonce; the exact window
# is not documented). A resend without a marker check (discord.py's own retries of one send, 5xx or
# 429) must stay within this bound of the first attempt; every later retry searches for the marker
# first. Enforced through post_timeout_s <= BLIND_RETRY_WINDOW (see DispatcherParams).
BLIND_RETRY_WINDOW = timedelta(minutes=2)
# the slowest usual latency of a Discord send with an attachment: the sends kept in flight are the
# pacer's rate times this, so latency never caps the posting rate below the pacer's
SEND_LATENCY_S = 0.7


class ChannelGone(Exception):
    """The channel no longer exists (or the bot can no longer see it at all)."""


class MissingAccess(Exception):
    """The bot lost a permission it needs in the channel (View Channel, Send Messages, Embed Links, Attach Files)."""


class AlreadyPosted(Exception):
    """Discord refused a send because a message with the same nonce was posted shortly before and has
    been deleted since (``enforce_nonce``): the post went out once already; do not pause, do not resend."""


class Poster(Protocol):
    """What the dispatcher needs from Discord (``bot/poster.py`` implements it with discord.py)."""

    async def post(self, channel_id: int, *, content: str | None, embed: dict | None, png: bytes,
                   filename: str, nonce: str, extra: Sequence[tuple[dict, bytes, str]] = ()) -> int:
        """Send one message with ``png`` attached as ``filename`` (and, after ``embed``, each
        ``(embed, png, filename)`` of ``extra``: one message, distinct file names); return its id.

        Raises :class:`ChannelGone` / :class:`MissingAccess` when the channel is gone / not allowed,
        :class:`AlreadyPosted` when Discord reports the nonce's message as posted and deleted since.
        """
        ...

    async def find_marker(self, channel_id: int, marker: str, *, since: datetime | None = None) -> int | None:
        """Id of a message of the bot's in the channel whose embed footer contains ``marker``, looking
        at the messages after ``since`` (the post's due time; it cannot be older)."""
        ...


ReportFn = Callable[[str, str, str], Awaitable[Any]]  # ReportService.report(symbol, window, exchange)
HeatmapFn = Callable[[str, str, str], Awaitable[Any]]  # ReportService.heatmap -> (png, states, missing)
ReadingFn = Callable[[str, str, str], Awaitable[Any]]  # ReportService.reading(symbol, window, exchange) -> Reading
EmbedFn = Callable[[Any, str, str, str], dict]  # (report, title, description, marker) -> embed dict
HeatmapEmbedFn = Callable[[Any, Any, str, str, str], dict]  # (states, missing, title, description, marker)


@dataclass(frozen=True)
class DispatcherParams:
    """Timing of the dispatcher.

    tick_s
        How often due daily reports are looked for (seconds).
    skew_interval_s
        How often the symbols of skew alerts are re-read (default 15 minutes).
    grace
        How late a daily report may still be posted after downtime (default 2 h).
    claim_lease
        How long a claim made by a dispatcher that may still be sending is left alone before
        another dispatcher verifies it with ``find_marker`` (default 10 minutes).
    render_timeout_s, post_timeout_s
        A report or a send that takes longer is abandoned for this tick (a send then counts as
        ``failed``: verified before any retry). ``post_timeout_s`` bounds discord.py's own blind
        retries of a send, so it may not exceed :data:`BLIND_RETRY_WINDOW`; and the claim lease
        must exceed four of it (a send starting at half the lease, after a marker search of up to
        ``post_timeout_s``, ends before another dispatcher may take the claim over).
    render_concurrency, post_concurrency
        How many reports are built, and messages sent, at once.
    retention
        How long final (``sent``/``skipped``) delivery records are kept, counted from their due
        time (default 30 days; at least the grace window plus the lease plus a day). Pruned once
        per :data:`PRUNE_EVERY`, at most ``prune_batch`` rows per transaction.
    """

    tick_s: float = 30.0
    skew_interval_s: float = 900.0
    grace: timedelta = timedelta(hours=2)
    claim_lease: timedelta = timedelta(minutes=10)
    render_timeout_s: float = 180.0
    post_timeout_s: float = 120.0
    render_concurrency: int = 4
    post_concurrency: int = 8
    retention: timedelta = timedelta(days=30)
    prune_batch: int = 5000

    def __post_init__(self) -> None:
        if self.tick_s <= 0 or self.skew_interval_s <= 0:
            raise ValueError("tick_s and skew_interval_s must be positive")
        if self.grace < timedelta(0) or self.claim_lease <= timedelta(0):
            raise ValueError("grace must be >= 0 and claim_lease > 0")
        if self.render_concurrency < 1 or self.post_concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 0 < self.post_timeout_s <= BLIND_RETRY_WINDOW.total_seconds():
            raise ValueError(f"post_timeout_s must be positive and at most {BLIND_RETRY_WINDOW.total_seconds():g} s "
                             "(blind resends must stay inside Discord's nonce window)")
        if self.claim_lease <= timedelta(seconds=4 * self.post_timeout_s):
            raise ValueError("claim_lease must exceed four times post_timeout_s")
        if self.retention < self.grace + self.claim_lease + timedelta(days=1):
            raise ValueError("retention must be at least the grace window plus the claim lease plus one day")
        if self.prune_batch < 1:
            raise ValueError("prune_batch must be at least 1")


@dataclass
class TickStats:
    """What one tick did (for logs, tests and the benchmark)."""

    due: int = 0
    renders: int = 0
    readings: int = 0  # reading-only builds (skew checks: no chart)
    render_failures: int = 0
    posted: int = 0
    recovered: int = 0
    skipped: int = 0
    deferred: int = 0
    failed: int = 0
    paused: int = 0
    baselines: int = 0
    unchanged: int = 0
    cooldown: int = 0
    announced: int = 0
    errors: list[str] = field(default_factory=list)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def default_embed(report: Any, title: str, description: str, marker: str) -> dict:
    """A Discord embed as a dict: text, the chart via ``attachment://``, missing venues, footer + marker."""
    m = report.map
    kind = "Estimated from open-interest flow" if getattr(m, "kind", "estimated") == "estimated" else "CoinGlass"
    when = datetime.fromtimestamp(m.end_ms / 1000, tz=UTC)
    # the marker must survive any clipping: find_marker looks for it after a crash
    tail = f" · {marker}"
    footer = _clip(f"Sources: {', '.join(m.venues)} · data to {when:%Y-%m-%d %H:%M} UTC · {kind}", 2048 - len(tail)) + tail
    embed: dict[str, Any] = {
        "type": "rich",
        "title": _clip(title, 256),
        "timestamp": when.isoformat(),
        "image": {"url": f"attachment://{ATTACHMENT}"},
        "footer": {"text": footer},
    }
    missing = dict(getattr(report, "missing", {}) or {})
    if missing:  # a venue's error text is outside text: escaped like any other
        from analysis.commentary import missing_venues

        embed["fields"] = [{"name": "Missing venues (map built without them)", "value": missing_venues(missing, 1024),
                            "inline": False}]
    # Discord refuses an embed over 6000 characters in all; the description gives way
    used = len(embed["title"]) + len(footer) + sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", ()))
    embed["description"] = _clip(description, min(4096, EMBED_TOTAL_MAX - used))
    return embed


def default_heatmap_embed(states: Any, missing: Any, title: str, description: str, marker: str) -> dict:
    """The heatmap as an embed dict: text, ``attachment://heatmap.png``, missing venues, footer (+ marker)."""
    when = datetime.fromtimestamp(int(states.end_ms) / 1000, tz=UTC)
    tail = f" · {marker}" if marker else ""
    footer = _clip(f"Sources: {', '.join(states.venues)} · data to {when:%Y-%m-%d %H:%M} UTC · "
                   "Estimated from open-interest flow", 2048 - len(tail)) + tail
    embed: dict[str, Any] = {
        "type": "rich",
        "title": _clip(title, 256),
        "timestamp": when.isoformat(),
        "image": {"url": f"attachment://{HEATMAP_ATTACHMENT}"},
        "footer": {"text": footer},
    }
    if missing:  # a venue's error text is outside text: escaped like any other
        from analysis.commentary import missing_venues

        embed["fields"] = [{"name": "Missing venues (heatmap built without them)",
                            "value": missing_venues(dict(missing), 1024), "inline": False}]
    embed["description"] = _clip(description, min(4096, EMBED_TOTAL_MAX - embed_length(embed)))
    return embed


def embed_length(embed: dict) -> int:
    """What Discord counts towards its 6000-character limit: title, description, fields, footer, author."""
    return (len(embed.get("title") or "") + len(embed.get("description") or "")
            + len((embed.get("footer") or {}).get("text") or "") + len((embed.get("author") or {}).get("name") or "")
            + sum(len(f.get("name") or "") + len(f.get("value") or "") for f in embed.get("fields") or ()))


def fit_embeds(embeds: Sequence[dict]) -> None:
    """Clip descriptions, the first embed's first, until all of ``embeds`` together stay within
    Discord's 6000 characters per message (the limit counts every embed of a message)."""
    for e in embeds:
        excess = sum(embed_length(x) for x in embeds) - EMBED_TOTAL_MAX
        if excess <= 0:
            return
        if e.get("description"):
            e["description"] = _clip(e["description"], max(1, len(e["description"]) - excess))


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _daily_text(report: Any, previous: Any = None) -> str:
    """The daily report's text; with ``previous`` (the last posted reading) it says what changed since.
    A report built with the tape (``report.realized``) carries the realized-24h lines, as /liqmap does."""
    from analysis import commentary

    realized = getattr(report, "realized", None)
    if previous is not None:
        try:
            return commentary.daily(report.reading, report.map, previous=previous, realized=realized)
        except LiqmapError as exc:  # a previous reading that cannot be compared must not stop the report
            log.warning("daily %s: not compared with the previous report: %s", report.reading.symbol, exc)
    return commentary.daily(report.reading, report.map, realized=realized)


def _heatmap_text(states: Any) -> str:
    from analysis import commentary

    return commentary.heatmap_summary(states)


async def _no_heatmap(symbol: str, window: str, exchange: str) -> Any:
    raise InputError("this bot has no heatmap renderer configured; choose the map view")


@dataclass(frozen=True)
class _Rendered:
    """What a (symbol, window, exchange, view) key posts: the map report, the heatmap, or both."""

    view: str
    report: Any = None  # the map report (map and both)
    heat: Any = None  # (png, states, missing) (heatmap and both)


def _reading_record(report: Any) -> str:
    """The JSON record of the reading behind a posted report (kept for the next report to compare with)."""
    from analysis.readings import dumps_record

    return dumps_record(report.reading)


def _previous_reading(stored: Any, symbol: str) -> Any:
    """The Reading a kept record describes, or None (logged) if it cannot be read or is another symbol's."""
    from analysis.readings import loads_record

    try:
        reading = loads_record(stored.record, "kept reading record")
    except LiqmapError as exc:
        log.warning("daily %s %s: the kept reading %s is not used: %s", stored.schedule_id, symbol, stored.id, exc)
        return None
    return reading if reading.symbol == symbol else None


def _notice_text(old: Any, reading: Any, m: Any) -> str:
    from analysis import commentary

    return commentary.notice(old, reading, m)


@dataclass
class _Run:
    occ: datetime  # the scheduled instant (UTC)
    day: date  # its local date
    symbols: list[str]  # symbols with no final record yet


@dataclass
class _Plan:
    sched: DailySchedule
    late: _Run | None = None  # the first run beyond the grace window (verify or skip, never send)
    current: _Run | None = None  # the run due now, within the grace window
    upcoming: datetime | None = None  # the first run not beyond the grace window

    def runs(self) -> list[_Run]:
        return [r for r in (self.late, self.current) if r is not None]


def _final(d: Any) -> bool:
    return d is not None and d.final


def _missed(occ: datetime, grace: timedelta) -> str:
    return f"missed: not posted within the {_td(grace)} grace window after {occ:%Y-%m-%d %H:%M} UTC"


class Dispatcher:
    """Posts due daily reports and skew-alert notices for every guild from one loop."""

    def __init__(
        self,
        store: Store,
        poster: Poster,
        report: ReportFn,
        *,
        params: DispatcherParams | None = None,
        now: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        embed: EmbedFn = default_embed,
        daily_text: Callable[[Any, Any], str] = _daily_text,
        reading_record: Callable[[Any], str] = _reading_record,
        notice_text: Callable[[Any, Any, Any], str] = _notice_text,
        heartbeat: Callable[[datetime], None] | None = None,
        heatmap: HeatmapFn | None = None,
        heatmap_embed: HeatmapEmbedFn = default_heatmap_embed,
        heatmap_text: Callable[[Any], str] = _heatmap_text,
        pacer: DiscordPacer | None = None,
        reading: ReadingFn | None = None,
    ) -> None:
        self.store = store
        self.pacer = pacer  # Discord's global rate: every post and marker search waits its turn
        self.poster = poster
        self.report = report
        self.reading = reading  # the skew check's reading-only path; None: it reads full reports
        self.heatmap: HeatmapFn = heatmap or _no_heatmap
        self.heatmap_embed = heatmap_embed
        self.heatmap_text = heatmap_text
        self.params = params or DispatcherParams()
        self.now = now
        self.sleep = sleep
        self.embed = embed
        self.daily_text = daily_text  # (report, previous reading or None) -> text
        self.reading_record = reading_record
        self.notice_text = notice_text
        self.heartbeat = heartbeat  # called with now() after every loop iteration (bot.health.Heartbeat)
        self._task: asyncio.Task | None = None
        self._in_tick = False
        self._stop = asyncio.Event()
        self._next_skew: datetime | None = None
        self._next_prune: datetime | None = None
        self.last_pruned: int | None = None
        self.last_daily: TickStats | None = None
        self.last_skew: TickStats | None = None
        self.capacity: Capacity | None = None  # the last posting-capacity check (with a pacer)

    # -- the loop -----------------------------------------------------------------------------------

    async def check_capacity(self) -> Capacity | None:
        """Whether the daily posts due at each minute fit the grace window at the pacer's rate
        (:func:`bot.pacer.posting_capacity`); logged (a warning when they do not), kept in
        :attr:`capacity` for ``/about``. None without a pacer."""
        if self.pacer is None:
            return None
        cap = posting_capacity(await self.store.due_load(), self.pacer.rate_per_s, self.params.grace)
        self.capacity = cap
        (log.info if cap.fits else log.warning)("%s", cap.line())
        return cap

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Tick until ``stop`` (or :meth:`stop`) is set. A failing tick is logged, never fatal.
        With a pacer, the posting capacity is checked (and logged) at the start and with every skew check."""
        stop = stop or self._stop
        while not stop.is_set():
            self._in_tick = True
            try:
                await self.tick()
            finally:
                self._in_tick = False
            if self.heartbeat is not None:
                self.heartbeat(self.now())
            if stop.is_set():
                break
            await self.sleep(self.params.tick_s)

    async def tick(self) -> None:
        """One pass: daily reports, then the skew check when its interval has elapsed."""
        try:
            self.last_daily = await self.run_daily()
        except Exception:
            log.exception("daily dispatch tick failed")
        now = self.now()
        interval = timedelta(seconds=self.params.skew_interval_s)
        # (a next check more than one interval ahead means the clock was set back: check now)
        if self._next_skew is None or now >= self._next_skew or self._next_skew - now > interval:
            self._next_skew = now + interval
            try:
                await self.check_capacity()
            except Exception:
                log.exception("checking the posting capacity failed")
            try:
                self.last_skew = await self.run_skew()
            except Exception:
                log.exception("skew check failed")
        now = self.now()
        if self._next_prune is None or now >= self._next_prune or self._next_prune - now > PRUNE_EVERY:
            self._next_prune = now + PRUNE_EVERY
            try:
                self.last_pruned = await self.prune(now)
            except Exception:
                log.exception("pruning old delivery records failed")

    async def prune(self, now: datetime | None = None) -> int:
        """Delete final delivery records due more than ``retention`` ago (see :meth:`Store.prune_deliveries`)."""
        now = now or self.now()
        n = await self.store.prune_deliveries(now - self.params.retention, batch=self.params.prune_batch)
        if n:
            log.info("pruned %d delivery records due before %s", n, f"{now - self.params.retention:%Y-%m-%d %H:%M} UTC")
        return n

    def start(self) -> asyncio.Task:
        """Run the loop as a background task (idempotent)."""
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.create_task(self.run(self._stop), name="liqmap-dispatcher")
        return self._task

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the background loop: a tick in progress gets ``timeout`` seconds to finish, then is
        cancelled (a send cut short leaves a claim that is verified before any resend)."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None or task.done():
            return
        if self._in_tick:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
                return
            except asyncio.TimeoutError:
                pass
            except Exception:
                log.exception("dispatcher stopped with an error")
                return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    # -- rendering ----------------------------------------------------------------------------------

    async def _render_all(self, keys: Iterable[Key], stats: TickStats, *, build: ReportFn | None = None,
                          what: str = "report") -> dict[Key, Any]:
        """Each distinct key rendered once (by ``build``, default the report function); value is the
        result or the LiqmapError that stopped it. A ``what`` of ``"reading"`` counts in
        ``stats.readings``, anything else in ``stats.renders``."""
        build = build or self.report
        sem = asyncio.Semaphore(self.params.render_concurrency)
        keys = sorted(set(keys))

        async def one(key: Key) -> Any:
            async with sem:
                if what == "reading":
                    stats.readings += 1
                else:
                    stats.renders += 1
                try:
                    return await asyncio.wait_for(build(*key), self.params.render_timeout_s)
                except LiqmapError as exc:
                    stats.render_failures += 1
                    log.warning("%s %s %s %s unavailable: %s", what, *key, exc)
                    return exc
                except asyncio.TimeoutError:
                    stats.render_failures += 1
                    log.warning("%s %s %s %s timed out", what, *key)
                    return LiqmapError(f"building the {what} took over {self.params.render_timeout_s:g} s")
                except Exception as exc:  # a bug in the report path: keep the traceback, spare the others
                    stats.render_failures += 1
                    log.exception("%s %s %s %s failed unexpectedly", what, *key)
                    return LiqmapError(f"internal error ({type(exc).__name__})")

        results = await asyncio.gather(*(one(k) for k in keys))
        return dict(zip(keys, results))

    async def _render_views(self, keys: Iterable[ViewKey], stats: TickStats) -> dict[ViewKey, Any]:
        """Per (symbol, window, exchange, view): a :class:`_Rendered`, or the error that stopped it.
        Each map and each heatmap is built once, however many views share it."""
        keys = set(keys)
        maps = await self._render_all({k[:3] for k in keys if k[3] in ("map", "both")}, stats)
        heats = await self._render_all({k[:3] for k in keys if k[3] in ("heatmap", "both")}, stats,
                                       build=self.heatmap, what="heatmap")
        out: dict[ViewKey, Any] = {}
        for k in keys:
            if k[3] not in VIEWS:  # only a hand-edited row can hold one: pause it with the reason
                out[k] = InputError(f"unknown view {k[3][:20]!r}; choose one of {', '.join(VIEWS)}")
                continue
            rep = maps[k[:3]] if k[3] in ("map", "both") else None
            heat = heats[k[:3]] if k[3] in ("heatmap", "both") else None
            failed = next((x for x in (rep, heat) if isinstance(x, BaseException)), None)
            out[k] = failed if failed is not None else _Rendered(k[3], rep, heat)
        return out

    def _daily_message(self, rendered: _Rendered, symbol: str, window: str, marker: str,
                       texts: dict[tuple[ViewKey, str, int | None], str], key: ViewKey,
                       prev: Any = None, prev_id: int | None = None) -> tuple[dict, bytes, str, list]:
        """The post of one view: (first embed with the marker, its PNG, its file name, extra embeds).

        ``prev`` is the reading of the schedule's last posted report (``prev_id`` its kept record's
        id, part of the text cache key), compared with in the map text.
        """
        embeds: list[tuple[dict, bytes, str]] = []
        if rendered.report is not None:
            tkey = (key, "map", prev_id)
            if tkey not in texts:
                texts[tkey] = self.daily_text(rendered.report, prev)
            embeds.append((self.embed(rendered.report, f"Daily {symbol} liquidation map · {window}",
                                      texts[tkey], marker), rendered.report.png, ATTACHMENT))
        if rendered.heat is not None:
            png, states, missing = rendered.heat
            hkey = (key, "heatmap", None)
            if hkey not in texts:
                texts[hkey] = self.heatmap_text(states)
            title = f"Daily {symbol} liquidation heatmap · {window}"
            embeds.append((self.heatmap_embed(states, missing, title, texts[hkey],
                                              "" if embeds else marker), png, HEATMAP_ATTACHMENT))
        fit_embeds([e for e, _, _ in embeds])
        (embed, png, filename), *extra = embeds
        return embed, png, filename, extra

    # -- daily reports ------------------------------------------------------------------------------

    async def run_daily(self) -> TickStats:
        """Post every due daily report once; record skips, pauses and failures. Returns what it did."""
        now = self.now()
        stats = TickStats()
        due = await self.store.due_daily(now)
        stats.due = len(due)
        if not due:
            return stats
        grace = self.params.grace
        plans: list[_Plan] = []
        missed: list[Claim] = []
        for sched in due:
            plan = _Plan(sched)
            occ = sched.next_run_at
            # Runs more than `grace` ago are never sent. Only the first can have a record (a crash
            # mid-send: verified below); the ones after it never started and are recorded skipped.
            n_missed = 0
            while now - occ > grace:
                day = local_date_of(occ, sched.timezone)
                if plan.late is None:
                    plan.late = _Run(occ, day, list(sched.symbols))
                else:
                    missed += [Claim(sched, day, s, occ) for s in sched.symbols]
                n_missed += 1
                if n_missed >= MAX_MISSED_RECORDED:  # a long outage: jump, record only the first days
                    log.warning("daily %s: more than %d runs missed; resuming at the next run", sched.id, n_missed)
                    occ = next_occurrence(sched.local_time, sched.timezone, now - grace)
                    break
                occ = next_occurrence(sched.local_time, sched.timezone, occ)
            plan.upcoming = occ
            if occ <= now:
                plan.current = _Run(occ, local_date_of(occ, sched.timezone), list(sched.symbols))
            plans.append(plan)

        existing = await self.store.deliveries_for((p.sched.id, r.day) for p in plans for r in p.runs())
        for p in plans:
            for r in p.runs():
                r.symbols = [s for s in r.symbols if not _final(existing.get((p.sched.id, r.day, s)))]

        keys = {(s, p.sched.window, p.sched.exchange, p.sched.view) for p in plans if p.current for s in p.current.symbols}
        reports = await self._render_views(keys, stats)

        claims: list[Claim] = []
        skips: list[tuple[Claim, str]] = list((c, _missed(c.due_at, grace)) for c in missed)
        for p in plans:
            if p.late:
                for s in p.late.symbols:
                    c = Claim(p.sched, p.late.day, s, p.late.occ)
                    if (p.sched.id, p.late.day, s) in existing:
                        claims.append(c)  # a crash left it unfinished: verify with find_marker, never resend
                    else:
                        skips.append((c, _missed(p.late.occ, grace)))
            if p.current:
                for s in p.current.symbols:
                    c = Claim(p.sched, p.current.day, s, p.current.occ)
                    rep = reports[(s, p.sched.window, p.sched.exchange, p.sched.view)]
                    if not isinstance(rep, BaseException):
                        claims.append(c)
                    elif isinstance(rep, InputError):  # will not fix itself (e.g. an exchange no longer configured)
                        reason = f"cannot build {s}: {rep}"
                        skips.append((c, reason))
                        if await self.store.pause("daily", p.sched.id, reason, now=now):
                            stats.paused += 1
                            log.warning("daily %s paused: %s", p.sched.id, reason)
                    elif now + timedelta(seconds=self.params.tick_s) - p.current.occ > grace:
                        skips.append((c, f"no report within the grace window: {rep}"))
                    else:
                        stats.deferred += 1  # retried next tick
        if skips:
            n = await self.store.skip_many([c for c, _ in skips], now=now, detail=[w for _, w in skips])
            stats.skipped += n
            for c, why in skips[:20]:
                log.warning("daily %s %s %s skipped: %s", c.schedule.id, c.local_date, c.symbol, why)
            if len(skips) > 20:
                log.warning("... and %d more daily posts skipped", len(skips) - 20)

        late_days = {(p.sched.id, p.late.day) for p in plans if p.late}
        scheds = {p.sched.id: p.sched for p in plans}
        texts: dict[tuple[ViewKey, str, int | None], str] = {}
        records: dict[ViewKey, str | None] = {}
        sem = asyncio.Semaphore(self.params.post_concurrency)
        gone: dict[int, str] = {}
        queued_late = 0  # posts whose grace window ran out while they waited for the posting rate

        async def deliver(d: Any, recovering: bool) -> Outcome | None:
            nonlocal queued_late
            sched = scheds[d.schedule_id]
            async with sem:
                if d.channel_id in gone:
                    return Outcome(d.id, "skipped", detail=f"subscription paused: {gone[d.channel_id]}",
                                   attempts=d.attempts)
                # Waiting for the semaphore can take long (a slow Discord, thousands of channels): a
                # claim past half its lease is renewed before sending, or left alone if another
                # dispatcher has taken it over meanwhile (that one verifies and sends).
                if self.now() - claimed_at > self.params.claim_lease / 2:
                    if not await self.store.renew_claim(d.id, d.attempts, now=self.now()):
                        log.info("daily %s %s %s: claim taken over by another dispatcher; not sent here",
                                 sched.id, d.local_date, d.symbol)
                        return None
                try:
                    if recovering:
                        await self._turn()
                        found = await asyncio.wait_for(self.poster.find_marker(d.channel_id, d.marker, since=d.due_at),
                                                       self.params.post_timeout_s)
                        if found is not None:
                            stats.recovered += 1
                            log.info("daily %s %s %s was sent before a crash (message %s); recorded",
                                     sched.id, d.local_date, d.symbol, found)
                            return Outcome(d.id, "sent", message_id=int(found), detail="recovered: found in channel",
                                           attempts=d.attempts)
                    if (sched.id, d.local_date) in late_days:
                        stats.skipped += 1
                        return Outcome(d.id, "skipped", detail=_missed(d.due_at, self.params.grace), attempts=d.attempts)
                    # queued behind the posting rate past the grace window: checked before taking a
                    # turn (a missed post takes none) and again once the turn comes
                    for take_turn in (True, False):
                        if self.now() - d.due_at > self.params.grace:
                            queued_late += 1
                            stats.skipped += 1
                            return Outcome(d.id, "skipped", detail=_missed(d.due_at, self.params.grace) +
                                           " (queued behind Discord's rate limit)", attempts=d.attempts)
                        if take_turn:
                            await self._turn()
                    key = (d.symbol, sched.window, sched.exchange, sched.view)
                    rendered = reports[key]
                    prev = previous.get((sched.id, d.symbol))
                    prev_id = kept[(sched.id, d.symbol)].id if prev is not None else None
                    embed, png, filename, extra = self._daily_message(rendered, d.symbol, sched.window,
                                                                      d.marker, texts, key, prev, prev_id)
                    msg_id = await asyncio.wait_for(
                        self.poster.post(d.channel_id, content=None, embed=embed, png=png, filename=filename,
                                         nonce=d.nonce, extra=extra),
                        self.params.post_timeout_s,
                    )
                    stats.posted += 1
                    # a heatmap-only post has no map reading to keep for the next comparison
                    if key not in records:
                        records[key] = self._record(rendered.report) if rendered.report is not None else None
                    if records[key] is not None:
                        posted.append(ReadingIn(sched.id, d.symbol, d.local_date, records[key]))
                    return Outcome(d.id, "sent", message_id=int(msg_id), attempts=d.attempts)
                except AlreadyPosted as exc:
                    stats.recovered += 1
                    log.info("daily %s %s %s was posted before and deleted since (%s); recorded, not resent",
                             sched.id, d.local_date, d.symbol, exc)
                    return Outcome(d.id, "sent", detail=f"posted before, deleted since: {exc}", attempts=d.attempts)
                except (ChannelGone, MissingAccess) as exc:
                    reason = _pause_reason(exc)
                    gone[d.channel_id] = reason
                    n_paused = await self.store.pause_channel(d.channel_id, reason, now=now)
                    stats.paused += n_paused
                    log.warning("channel %s: %s; its subscriptions are paused", d.channel_id, reason)
                    return Outcome(d.id, "skipped", detail=f"subscription paused: {reason}", attempts=d.attempts)
                except Exception as exc:  # includes TimeoutError: outcome unknown, verified before a retry
                    self._throttled(exc)
                    stats.failed += 1
                    stats.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    log.warning("daily %s %s %s to channel %s failed (%s); will verify and retry", sched.id,
                                d.local_date, d.symbol, d.channel_id, type(exc).__name__, exc_info=True)
                    return Outcome(d.id, "failed", detail=f"{type(exc).__name__}: {exc}", attempts=d.attempts)

        # Earliest due first, claimed in chunks the posting rate sends within a quarter of the lease
        # (so no claim needs renewing, a crash leaves at most one chunk to verify, and outcomes are
        # recorded as the chunks finish); the heartbeat is written between chunks.
        claims.sort(key=lambda c: (c.due_at, c.schedule.id, c.symbol))
        chunk = self._claim_chunk(len(claims))
        for first in range(0, len(claims), chunk):
            # The claim is stamped with the time it is made (rendering may have taken minutes), so its
            # lease really covers the sends that follow; a send that starts late renews it first.
            claimed_at = self.now()
            won = await self.store.claim_many(claims[first:first + chunk], now=claimed_at, lease=self.params.claim_lease)
            won.sort(key=lambda w: (w[0].due_at, w[0].schedule_id, w[0].symbol))
            # the reading behind each schedule's last posted report: one query per chunk
            kept = await self.store.latest_readings({(d.schedule_id, d.symbol) for d, _ in won})
            previous = {k: _previous_reading(v, k[1]) for k, v in kept.items()}
            posted: list[ReadingIn] = []
            outcomes = await asyncio.gather(*(deliver(d, rec) for d, rec in won))
            # written only where the claim is still ours (see Store.finish_many); the readings of the
            # reports posted in this chunk go in the same transaction
            await self.store.finish_many([o for o in outcomes if o is not None], now=self.now(), readings=posted)
            if self.heartbeat is not None and first + chunk < len(claims):
                self.heartbeat(self.now())
        if queued_late:
            log.warning("%d daily posts passed their %s grace window while queued behind the posting rate "
                        "(%s); recorded missed", queued_late, _td(grace),
                        f"{self.pacer.rate_per_s:g}/s" if self.pacer is not None else "unpaced")

        # move next_run_at: hold it on a run that is not final yet, else past the current run
        final = await self.store.deliveries_for((p.sched.id, r.day) for p in plans for r in p.runs())
        moves = []
        for p in plans:
            def done(r: _Run) -> bool:
                return all(_final(final.get((p.sched.id, r.day, s))) for s in p.sched.symbols)

            if p.late and not done(p.late):
                target = p.late.occ
            elif p.current and not done(p.current):
                target = p.current.occ
            elif p.current:
                target = next_occurrence(p.sched.local_time, p.sched.timezone, p.current.occ)
            else:
                target = p.upcoming
            if target != p.sched.next_run_at:
                moves.append((p.sched.id, p.sched.next_run_at, target))
        await self.store.advance_many(moves)
        return stats

    async def _turn(self) -> None:
        """Wait for the pacer's next request (outside a send's timeout); nothing without a pacer."""
        if self.pacer is not None:
            await self.pacer.acquire()

    def _throttled(self, exc: BaseException) -> None:
        """A send Discord refused with a 429 discord.py did not wait out: every post pauses."""
        if isinstance(exc, Throttled) and self.pacer is not None:
            self.pacer.pause(exc.retry_after, str(exc))

    def _claim_chunk(self, n: int) -> int:
        """How many posts to claim at once: what the pacer sends in a quarter of the claim lease."""
        if self.pacer is None:
            return max(1, n)
        return max(1, int(self.pacer.rate_per_s * self.params.claim_lease.total_seconds() / 4))

    def _record(self, rep: Any) -> str | None:
        """The reading record to keep for a posted report, or None (logged) if it cannot be made."""
        try:
            return self.reading_record(rep)
        except LiqmapError as exc:
            log.warning("the reading of %s is not kept (the next report will not compare with it): %s",
                        getattr(rep, "symbol", "?"), exc)
            return None

    # -- skew alerts --------------------------------------------------------------------------------

    async def run_skew(self) -> TickStats:
        """Re-read every skew alert's symbol once and announce class changes (see the module docstring)."""
        now = self.now()
        stats = TickStats()
        alerts = await self.store.active_skew_alerts()
        stats.due = len(alerts)
        if not alerts:
            return stats
        keys = {(w.symbol, w.window, w.exchange) for w in alerts}
        full: dict[Key, Any] = {}  # full reports already built (all of them without a reading path)
        if self.reading is not None:
            readings = await self._render_all(keys, stats, build=self.reading, what="reading")
        else:
            full = await self._render_all(keys, stats)
            readings = {k: (r if isinstance(r, BaseException) else r.reading) for k, r in full.items()}
        baselines: list[tuple[int, str, float | None]] = []
        changes: list[tuple[SkewAlert, Any, Any]] = []
        for w in alerts:
            rep = readings[(w.symbol, w.window, w.exchange)]
            if isinstance(rep, InputError):
                if await self.store.pause("skew_alert", w.id, f"cannot build {w.symbol}: {rep}", now=now):
                    stats.paused += 1
                    log.warning("skew alert %s paused: cannot build %s: %s", w.id, w.symbol, rep)
                continue
            if isinstance(rep, BaseException):
                continue
            ratio = rep.imbalance
            new = step(w.last_class, ratio, w.params)
            if w.last_class is None:
                baselines.append((w.id, new.key, ratio))
            elif new.key == w.last_class:
                stats.unchanged += 1
            elif w.last_announced_at is not None and now - w.last_announced_at < timedelta(seconds=w.cooldown_s):
                stats.cooldown += 1
            else:
                changes.append((w, new, rep))
        await self.store.record_baselines(baselines)
        stats.baselines = len(baselines)
        # full reports (chart and text) only for the keys that announce, each once
        announcing = {(w.symbol, w.window, w.exchange) for w, _, _ in changes}
        reports = full or await self._render_all(announcing, stats)
        changes = [(w, new, reports[(w.symbol, w.window, w.exchange)]) for w, new, _ in changes]
        stats.deferred += sum(isinstance(rep, BaseException) for _, _, rep in changes)
        changes = [c for c in changes if not isinstance(c[2], BaseException)]

        sem = asyncio.Semaphore(self.params.post_concurrency)
        gone: dict[int, str] = {}

        async def announce(w: SkewAlert, new: Any, rep: Any) -> None:
            async with sem:
                if w.channel_id in gone:
                    return
                ratio = readings[(w.symbol, w.window, w.exchange)].imbalance  # the ratio the class was stepped on
                if not await self.store.set_skew_alert_class(w.id, expected=w.last_class, new=new.key, ratio=ratio,
                                                        announced_at=now):
                    return  # another dispatcher got there first
                try:
                    old = SKEW_CLASSES[w.last_class]  # type: ignore[index]
                    reading = dataclasses.replace(rep.reading, skew=new)
                    text = self.notice_text(old, reading, rep.map)
                    marker = f"liqmap-w{w.id}-{now:%Y%m%dT%H%M%S}"
                    nonce = "lq" + hashlib.sha256(marker.encode()).hexdigest()[:23]
                    title = f"{w.symbol} skew: {old.label} → {new.label}"
                    await self._turn()
                    await asyncio.wait_for(
                        self.poster.post(w.channel_id, content=None, embed=self.embed(rep, title, text, marker),
                                         png=rep.png, filename=ATTACHMENT, nonce=nonce),
                        self.params.post_timeout_s,
                    )
                    stats.announced += 1
                except AlreadyPosted:
                    stats.announced += 1  # the notice went out before (and was deleted since): keep the class
                except (ChannelGone, MissingAccess) as exc:
                    reason = _pause_reason(exc)
                    gone[w.channel_id] = reason
                    n_paused = await self.store.pause_channel(w.channel_id, reason, now=now)
                    stats.paused += n_paused
                    log.warning("channel %s: %s; its subscriptions are paused", w.channel_id, reason)
                except asyncio.TimeoutError:
                    # Outcome unknown (Discord may have created it) and a notice has no marker search:
                    # a retry at the next check would be a blind resend with a new nonce, long after
                    # the nonce window. Keep the class: at most once.
                    stats.failed += 1
                    stats.errors.append("TimeoutError: notice send timed out")
                    log.warning("notice of skew alert %s to channel %s timed out; not retried (it may have been posted)",
                                w.id, w.channel_id)
                except Exception as exc:
                    self._throttled(exc)
                    stats.failed += 1
                    stats.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    log.warning("notice of skew alert %s to channel %s failed; will retry", w.id, w.channel_id, exc_info=True)
                    await self.store.set_skew_alert_class(w.id, expected=new.key, new=w.last_class, ratio=w.last_ratio,
                                                     announced_at=None, previous_announced_at=w.last_announced_at,
                                                     restore=True)

        await asyncio.gather(*(announce(w, new, rep) for w, new, rep in changes))
        return stats


def _pause_reason(exc: BaseException) -> str:
    base = "channel deleted or not visible" if isinstance(exc, ChannelGone) else "missing permissions"
    detail = str(exc).strip()
    return f"{base}: {detail}"[:300] if detail else base


def _td(d: timedelta) -> str:
    minutes = int(d.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def make_dispatcher(store: Store, service: Any, poster: Poster, settings: Any = None, **kw: Any) -> Dispatcher:
    """The dispatcher the bot runs: reports from ``service.report``, timing from ``settings.schedule``."""
    sched = getattr(settings, "schedule", None)
    rate = float(getattr(sched, "discord_posts_per_second", DEFAULT_POSTS_PER_S))
    params = DispatcherParams(
        # enough sends in flight that the pacer, not Discord's latency, sets the rate (bench/budgets.py)
        post_concurrency=max(8, math.ceil(rate * SEND_LATENCY_S)),
        grace=timedelta(minutes=float(getattr(sched, "daily_grace_minutes", 120.0))),
        skew_interval_s=60.0 * float(getattr(sched, "watch_interval_minutes", 15.0)),
        retention=timedelta(days=float(getattr(sched, "delivery_retention_days", 30.0))),
    )

    async def report(symbol: str, window: str, exchange: str) -> Any:
        return await service.report(symbol, window, exchange)

    async def heatmap(symbol: str, window: str, exchange: str) -> Any:
        return await service.heatmap(symbol, window, exchange)

    async def reading(symbol: str, window: str, exchange: str) -> Any:
        return await service.reading(symbol, window, exchange)

    kw.setdefault("heatmap", heatmap if callable(getattr(service, "heatmap", None)) else None)
    if "pacer" not in kw:  # Discord's global rate limit (LIQMAP_DISCORD_POSTS_PER_SECOND)
        kw["pacer"] = DiscordPacer(rate)
    kw.setdefault("reading", reading if callable(getattr(service, "reading", None)) else None)
    return Dispatcher(store, poster, report, params=params, **kw)
