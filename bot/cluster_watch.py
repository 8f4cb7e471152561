"""The cluster-alert loop: one map reading per distinct (symbol, window, exchange) per check, then per
subscription one step of :mod:`analysis.cluster_alerts`, and a notice when it fires.

Runs beside the dispatcher (started by ``LiqmapBot`` once the gateway is READY, every
``LIQMAP_WATCH_INTERVAL_MINUTES``). Clock, sleep, poster, reading function and tape are injected,
so tests drive it with a fake clock and a fake Discord.

Readings: ``ReportService.reading`` (the reading-only path: the merged map, cached and
single-flighted with the reports and the skew check, then ``metrics.read``; no chart is rendered). The loop keeps each
key's recent readings in memory (bounded by the longest ``swept`` window plus two checks); a
``swept`` alert compares the tape with the newest reading taken *before* its window, so after a
restart it waits until it has one (outcome ``waiting``).

Tape: a :class:`~analysis.tape.events.TapeReader` from ``bot.tape`` (None while the bot records no
realized liquidations; ``/cluster-alerts`` then refuses ``swept`` subscriptions, and existing ones
are skipped with a log line). Gaps of the window are passed on and named in the notice.

Delivery is **at most once**, like the skew notices: the new state is written (compare-and-set,
so two processes cannot both announce) *before* the notice is sent; a send that fails outright
puts the old state back so the next check retries; a send that timed out keeps the new state (it
may have been posted, and a notice has no marker search); a crash between the write and the
send loses that one notice. A deleted channel or a lost permission pauses every subscription of
that channel (daily, skew and cluster) with the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Protocol, Sequence

import discord

from analysis.cluster_alerts import MINUTES_RANGE, Decision, alert_text, step_approaching, step_swept
from analysis.errors import InputError, LiqmapError
from analysis.metrics import Reading
from analysis.tape.events import Gap, LiquidationEvent, TapeReader, feed_coverage

from .cluster_store import ClusterAlert, ClusterStore
from .poster import UNKNOWN_MESSAGE, DiscordPoster
from .scheduler import AlreadyPosted, ChannelGone, MissingAccess, _pause_reason

__all__ = ["AlertPoster", "DiscordAlertPoster", "MapReading", "WatchParams", "WatchStats", "ClusterWatcher",
           "make_cluster_watch"]

log = logging.getLogger(__name__)

UTC = timezone.utc
Key = tuple[str, str, str]  # (symbol, window, exchange)


class AlertPoster(Protocol):
    """What the watcher needs from Discord: one embed-only message, never a ping."""

    async def send_alert(self, channel_id: int, *, embed: dict, nonce: str) -> int:
        """Send and return the message id; raise ChannelGone / MissingAccess / AlreadyPosted like ``Poster.post``."""
        ...


class DiscordAlertPoster(DiscordPoster):
    """:class:`AlertPoster` over discord.py, with the same permission checks and error mapping as
    the report poster (an alert has no attachment)."""

    async def send_alert(self, channel_id: int, *, embed: dict, nonce: str) -> int:
        channel = self._target(channel_id)
        try:
            message = await channel.send(embed=discord.Embed.from_dict(embed), nonce=nonce,
                                         allowed_mentions=discord.AllowedMentions.none())
        except (discord.NotFound, discord.Forbidden) as exc:
            if isinstance(exc, discord.NotFound) and exc.code == UNKNOWN_MESSAGE:
                raise AlreadyPosted(f"Discord {UNKNOWN_MESSAGE}: message with nonce {nonce} was deleted") from exc
            raise self._translate(exc, channel_id) from exc
        return message.id


@dataclass(frozen=True)
class MapReading:
    """What the reading function returns: the reading, when its data ends, and the venues asked for."""

    reading: Reading
    end_ms: int
    venues: tuple[str, ...]


@dataclass(frozen=True)
class _Snapshot:
    at: datetime
    map: MapReading


ReadingFn = Callable[[str, str, str], Awaitable[MapReading]]


@dataclass(frozen=True)
class WatchParams:
    """Timing: ``interval_s`` between checks, per-reading and per-send timeouts, concurrency."""

    interval_s: float = 900.0
    reading_timeout_s: float = 180.0
    post_timeout_s: float = 120.0
    concurrency: int = 4

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.reading_timeout_s <= 0 or self.post_timeout_s <= 0 or self.concurrency < 1:
            raise ValueError("interval and timeouts must be positive, concurrency at least 1")


@dataclass
class WatchStats:
    """What one check did (for logs and tests)."""

    due: int = 0
    readings: int = 0
    reading_failures: int = 0
    baselines: int = 0
    rearmed: int = 0
    unchanged: int = 0
    cooldown: int = 0
    waiting: int = 0
    no_tape: int = 0
    announced: int = 0
    failed: int = 0
    paused: int = 0
    errors: list[str] = field(default_factory=list)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def alert_embed(alert: ClusterAlert, text: str, marker: str, end_ms: int) -> dict:
    """The notice as an embed dict: the text, and the marker in the footer."""
    title = f"{alert.symbol} cluster alert · {alert.kind}"
    embed: dict[str, Any] = {
        "type": "rich",
        "title": title[:256],
        "description": text[:4096],
        "footer": {"text": f"Alert #{alert.id} · map levels are estimates, not forecasts · {marker}"},
    }
    if end_ms > 0:
        embed["timestamp"] = datetime.fromtimestamp(end_ms / 1000, tz=UTC).isoformat()
    return embed


class ClusterWatcher:
    """Checks every active cluster alert every ``params.interval_s`` (see the module docstring)."""

    def __init__(
        self,
        clusters: ClusterStore,
        poster: AlertPoster,
        reading: ReadingFn,
        *,
        tape: Callable[[], TapeReader | None] = lambda: None,
        params: WatchParams | None = None,
        now: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        pacer: Any = None,
    ) -> None:
        self.clusters = clusters
        self.pacer = pacer  # bot.pacer.DiscordPacer shared with the dispatcher: one global rate for all posts
        self.poster = poster
        self.reading = reading
        self.tape = tape
        self.params = params or WatchParams()
        self.now = now
        self.sleep = sleep
        self.history: dict[Key, deque[_Snapshot]] = {}
        self.last: WatchStats | None = None
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._in_tick = False
        self._warned_no_tape = False

    # -- the loop -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Check until ``stop`` is set; a failing check is logged, never fatal."""
        stop = stop or self._stop
        while not stop.is_set():
            self._in_tick = True
            try:
                self.last = await self.tick()
            except Exception:
                log.exception("cluster alert check failed")
            finally:
                self._in_tick = False
            if stop.is_set():
                break
            await self.sleep(self.params.interval_s)

    def start(self) -> asyncio.Task:
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.create_task(self.run(self._stop), name="liqmap-cluster-watch")
        return self._task

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop: a check in progress gets ``timeout`` seconds to finish, a sleep ends at once."""
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
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    # -- one check ----------------------------------------------------------------------------------

    def _remember(self, key: Key, snap: _Snapshot) -> None:
        keep = timedelta(minutes=MINUTES_RANGE[1]) + timedelta(seconds=2 * self.params.interval_s)
        q = self.history.setdefault(key, deque())
        q.append(snap)
        while q and snap.at - q[0].at > keep:
            q.popleft()

    def _before(self, key: Key, cutoff: datetime) -> _Snapshot | None:
        """The newest remembered reading taken at or before ``cutoff``."""
        for snap in reversed(self.history.get(key, ())):
            if snap.at <= cutoff:
                return snap
        return None

    async def _read_all(self, keys: set[Key], stats: WatchStats) -> dict[Key, MapReading | LiqmapError]:
        sem = asyncio.Semaphore(self.params.concurrency)

        async def one(key: Key) -> MapReading | LiqmapError:
            async with sem:
                stats.readings += 1
                try:
                    return await asyncio.wait_for(self.reading(*key), self.params.reading_timeout_s)
                except LiqmapError as exc:
                    stats.reading_failures += 1
                    log.warning("cluster reading %s %s %s unavailable: %s", *key, exc)
                    return exc
                except asyncio.TimeoutError:
                    stats.reading_failures += 1
                    return LiqmapError(f"reading the map took over {self.params.reading_timeout_s:g} s")

        ordered = sorted(keys)
        results = await asyncio.gather(*(one(k) for k in ordered))
        return dict(zip(ordered, results))

    async def tick(self) -> WatchStats:
        now = self.now()
        stats = WatchStats()
        alerts = await self.clusters.active()
        stats.due = len(alerts)
        if not alerts:
            return stats
        readings = await self._read_all({(a.symbol, a.window, a.exchange) for a in alerts}, stats)
        for key, res in readings.items():
            if isinstance(res, MapReading):
                self._remember(key, _Snapshot(now, res))
        tape = self.tape()
        tape_cache: dict[tuple[str, tuple[str, ...], int], tuple[list[LiquidationEvent], list[Gap]] | None] = {}
        fires: list[tuple[ClusterAlert, Decision, MapReading]] = []
        for a in alerts:
            key = (a.symbol, a.window, a.exchange)
            res = readings[key]
            if isinstance(res, InputError):
                if await self.clusters.pause(a.id, f"cannot read {a.symbol}: {res}", now=now):
                    stats.paused += 1
                continue
            if not isinstance(res, MapReading):
                continue
            if a.kind == "approaching":
                d = step_approaching(a.state, res.reading, a.params, now=now, cooldown=a.cooldown)
                ref = res
            else:
                if tape is None:
                    stats.no_tape += 1
                    if not self._warned_no_tape:
                        log.warning("swept cluster alerts are skipped: no realized-liquidation tape is configured")
                        self._warned_no_tape = True
                    continue
                minutes = a.params.window_minutes
                before = self._before(key, now - timedelta(minutes=minutes))
                window = (int((now - timedelta(minutes=minutes)).timestamp() * 1000), int(now.timestamp() * 1000))
                tape_key = (a.symbol, res.venues, minutes)
                if tape_key not in tape_cache:
                    tape_cache[tape_key] = await self._tape_window(tape, a.symbol, res.venues, window)
                got = tape_cache[tape_key]
                if got is None:
                    stats.reading_failures += 1
                    continue
                events, gaps = got
                d = step_swept(a.state, before.map.reading if before else None, events, gaps, a.params, now=now,
                               cooldown=a.cooldown, window=window)
                ref = before.map if before else res
            if d.outcome == "fire":
                fires.append((a, d, ref))
                continue
            counter = {"baseline": "baselines", "rearmed": "rearmed", "cooldown": "cooldown",
                       "waiting": "waiting"}.get(d.outcome, "unchanged")
            setattr(stats, counter, getattr(stats, counter) + 1)
            if d.state != a.state:
                await self.clusters.set_state(a.id, expected=a.state, new=d.state)
        await self._announce(fires, now, stats)
        return stats

    async def _tape_window(self, tape: TapeReader, symbol: str, venues: Sequence[str],
                           window: tuple[int, int]) -> tuple[list[LiquidationEvent], list[Gap]] | None:
        fed = [v for v in venues if feed_coverage(v) != "unknown"]
        if not fed:  # (an empty venue list must not read as "every venue")
            return [], []
        try:
            events = await tape.events(symbol, window[0], window[1], fed)
            gaps = [g for g in await tape.gaps(window[0], window[1], fed) if g.symbol in (None, symbol)]
        except LiqmapError as exc:
            log.warning("tape unavailable for %s: %s", symbol, exc)
            return None
        return events, gaps

    async def _announce(self, fires: list[tuple[ClusterAlert, Decision, MapReading]], now: datetime,
                        stats: WatchStats) -> None:
        sem = asyncio.Semaphore(self.params.concurrency)
        gone: set[int] = set()

        async def one(a: ClusterAlert, d: Decision, ref: MapReading) -> None:
            async with sem:
                if a.channel_id in gone:
                    return
                if not await self.clusters.set_state(a.id, expected=a.state, new=d.state):
                    return  # another process announced it (or it was paused/removed meanwhile)
                marker = f"liqmap-c{a.id}-{now:%Y%m%dT%H%M%S}"
                nonce = "lq" + hashlib.sha256(marker.encode()).hexdigest()[:23]
                try:
                    feeds = [v for v in ref.venues if feed_coverage(v) != "unknown"]
                    text = alert_text(d, ref.reading, a.params, feeds=feeds, reference_end_ms=ref.end_ms,
                                      data_end_ms=ref.end_ms)
                    if self.pacer is not None:
                        await self.pacer.acquire()
                    await asyncio.wait_for(
                        self.poster.send_alert(a.channel_id, embed=alert_embed(a, text, marker, ref.end_ms),
                                               nonce=nonce),
                        self.params.post_timeout_s,
                    )
                    stats.announced += 1
                except AlreadyPosted:
                    stats.announced += 1
                except (ChannelGone, MissingAccess) as exc:
                    reason = _pause_reason(exc)
                    gone.add(a.channel_id)
                    n = await self.clusters.pause_channel(a.channel_id, reason, now=now)
                    n += await self.clusters.store.pause_channel(a.channel_id, reason, now=now)
                    stats.paused += n
                    log.warning("channel %s: %s; its subscriptions are paused", a.channel_id, reason)
                except asyncio.TimeoutError:
                    stats.failed += 1
                    stats.errors.append("TimeoutError: cluster alert send timed out")
                    log.warning("cluster alert %s to channel %s timed out; not retried (it may have been posted)",
                                a.id, a.channel_id)
                except Exception as exc:
                    stats.failed += 1
                    stats.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    log.warning("cluster alert %s to channel %s failed; will retry", a.id, a.channel_id, exc_info=True)
                    await self.clusters.set_state(a.id, expected=d.state, new=a.state)

        await asyncio.gather(*(one(a, d, ref) for a, d, ref in fires))


def make_cluster_watch(bot: Any) -> ClusterWatcher | None:
    """The watcher the bot runs (None without a store): readings from ``bot.service``, the tape from
    ``bot.tape``, the interval from ``LIQMAP_WATCH_INTERVAL_MINUTES``."""
    from analysis.metrics import read
    from analysis.windows import parse_window

    if getattr(bot, "store", None) is None:
        return None
    service = bot.service
    sched = getattr(bot.settings, "schedule", None)
    params = WatchParams(interval_s=60.0 * float(getattr(sched, "watch_interval_minutes", 15.0)))

    async def reading(symbol: str, window: str, exchange: str) -> MapReading:
        venues = service.resolve_venues(exchange)
        if callable(getattr(service, "reading", None)):  # the shared reading-only path (cached map, no chart)
            r = await service.reading(symbol, window, exchange)
            return MapReading(r, int(r.end_ms or 0), tuple(venues))
        m, _missing = await service.maps(symbol, parse_window(window), venues)
        r = await asyncio.to_thread(read, m, service.metrics)
        return MapReading(r, int(m.end_ms or 0), tuple(venues))

    return ClusterWatcher(ClusterStore(bot.store), DiscordAlertPoster(bot), reading,
                          tape=lambda: getattr(bot, "tape", None), params=params, pacer=getattr(bot, "pacer", None))
