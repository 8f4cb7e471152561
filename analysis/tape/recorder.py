"""The recorder: one websocket per venue, normalised events and gaps into a :class:`TapeSink`.

``Recorder(sink, venues, symbols).run(stop)`` keeps one connection per venue until ``stop`` is
set. Per connection: subscribe, keep alive (each venue's own ping), parse frames
(:mod:`analysis.tape.feeds`), drop events already seen (a bounded memory of recent keys), and
queue them for one writer task. Faults never leave ``run``:

* a drop, a refused subscription, a close (Binance's 24 h disconnect included) or silence (no
  frame at all, pongs included, for ``silence_s``) ends the connection; an open :class:`Gap`
  starting at the last healthy moment is written, and closed when the venue is back *and
  subscribed*; reconnects wait a jittered exponential backoff;
* malformed frames are counted and skipped; a frame over ``max_frame_bytes`` ends the
  connection (the websocket library refuses it) and is counted too;
* a failing sink is retried with backoff while events wait in a bounded buffer; beyond
  ``queue_bound`` new events are dropped, counted per venue, and a gap spanning them is written
  once the sink is back, so a loss is never silent.

:meth:`Recorder.status` reports per venue what happened (:class:`FeedStatus`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence

import websockets
from websockets.asyncio.client import ClientConnection, connect

from ..errors import InputError
from ..symbols import parse_symbol
from .events import FEED_SAMPLED, Gap, LiquidationEvent, TapeSink
from .feeds import DEFAULT_URLS, OKX_CONTRACT_VALUES, VENUES, Malformed, VenueFeed, feed_for

__all__ = ["RecorderParams", "Recorder", "FeedStatus", "ContractValues", "okx_contract_values"]

log = logging.getLogger(__name__)

#: loads OKX contract values: instrument ids -> coin per contract (``ctVal``)
ContractValues = Callable[[Sequence[str]], Awaitable[Mapping[str, float]]]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _default_ping() -> dict[str, float]:
    # Bybit: "send the ping heartbeat packet every 20 seconds"; OKX: "ping" when nothing came for
    # N < 30 s; Binance pings us every 3 min (the library answers); our own ping frame every 30 s
    # gives the watchdog a pong to see on a quiet feed.
    return {"bybit": 20.0, "okx": 20.0, "binance": 30.0}


def _default_silence() -> dict[str, float]:
    # more than two ping cadences: a healthy connection always shows a pong (or data) by then
    return {"bybit": 50.0, "okx": 50.0, "binance": 75.0}


@dataclass(frozen=True)
class RecorderParams:
    """Every limit and cadence of the recorder (docs/methodology.md, "Tape recorder")."""

    #: reconnect backoff: ``min(cap, base * 2**attempt)`` times a random factor in ``[1 - jitter, 1]``
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    backoff_jitter: float = 0.5
    #: a connection healthy this long resets the backoff to its base
    stable_s: float = 60.0
    #: seconds between keepalive pings per venue (OKX: after this long idle)
    ping_interval_s: Mapping[str, float] = field(default_factory=_default_ping)
    #: no frame at all (data, pong, ack) for this long forces a reconnect
    silence_s: Mapping[str, float] = field(default_factory=_default_silence)
    #: connect (TCP + TLS + handshake) and subscribe-acknowledgement deadlines
    open_timeout_s: float = 10.0
    subscribe_timeout_s: float = 10.0
    #: the writer sends at most this many events per call, at least every ``flush_interval_s``
    batch_size: int = 500
    flush_interval_s: float = 1.0
    #: a frame larger than this ends the connection (the library refuses it unread)
    max_frame_bytes: int = 1 << 20
    #: events waiting for the sink; beyond it new events are dropped (counted, gap written)
    queue_bound: int = 100_000
    #: gap records waiting for the sink; beyond it the oldest are dropped (counted)
    gap_queue_bound: int = 10_000
    #: recent event keys remembered per venue to drop replays after a reconnect: at most this many,
    #: and none older than ``dedupe_window_s`` of venue time before the newest event
    dedupe_keys: int = 50_000
    dedupe_window_s: float = 600.0
    #: sink retry backoff after a failed write
    sink_retry_base_s: float = 0.5
    sink_retry_cap_s: float = 30.0
    #: on stop, how long the writer may keep flushing what is buffered
    stop_flush_s: float = 5.0
    #: how often a failed OKX instrument list (``ctVal``) is tried again
    contract_refresh_s: float = 600.0

    def __post_init__(self) -> None:
        positive = ("backoff_base_s", "backoff_cap_s", "open_timeout_s", "subscribe_timeout_s", "flush_interval_s",
                    "sink_retry_base_s", "sink_retry_cap_s", "contract_refresh_s", "dedupe_window_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise InputError(f"RecorderParams.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("batch_size", "max_frame_bytes", "queue_bound", "gap_queue_bound", "dedupe_keys"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise InputError(f"RecorderParams.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.backoff_jitter <= 1:
            raise InputError(f"RecorderParams.backoff_jitter must be in [0, 1], got {self.backoff_jitter!r}")
        for venue in VENUES:
            ping, silence = self.ping_for(venue), self.silence_for(venue)
            if not 0 < ping < silence:
                raise InputError(f"RecorderParams: {venue} needs 0 < ping interval ({ping:g} s) < silence ({silence:g} s)")

    def ping_for(self, venue: str) -> float:
        return float(self.ping_interval_s.get(venue, _default_ping().get(venue, 20.0)))

    def silence_for(self, venue: str) -> float:
        return float(self.silence_s.get(venue, _default_silence().get(venue, 50.0)))

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """The wait before reconnect attempt ``attempt`` (0-based)."""
        base = min(self.backoff_cap_s, self.backoff_base_s * 2 ** min(attempt, 30))
        return base * (1.0 - self.backoff_jitter * rng.random())


@dataclass(frozen=True)
class FeedStatus:
    """One venue's recorder state, as :meth:`Recorder.status` reports it."""

    venue: str
    coverage: str  # complete / sampled
    connected: bool  # connected and subscribed
    last_event_ms: int | None  # venue time of the newest event
    events: int  # unique events parsed and queued
    stored: int  # events the sink reported new
    duplicates: int  # replays dropped here or by the sink
    malformed: int  # frames or items skipped as not matching the venue's documented shape
    dropped: int  # events lost because the sink was down and the buffer full
    unconverted: int  # OKX events without a known contract value (not stored; a gap says so)
    gaps: int  # gaps opened
    reconnects: int
    last_error: str | None
    notes: tuple[str, ...] = ()


@dataclass
class _Stats:
    venue: str
    connected: bool = False
    last_event_ms: int | None = None
    events: int = 0
    stored: int = 0
    duplicates: int = 0
    malformed: int = 0
    dropped: int = 0
    unconverted: int = 0
    gaps: int = 0
    reconnects: int = 0
    last_error: str | None = None
    notes: list[str] = field(default_factory=list)
    drop_span: list[int] | None = None  # [first, last] venue time of events dropped while the sink was down

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            del self.notes[:-5]


class _Recent:
    """A bounded memory of recent keys: at most ``size``, and none older than ``window_ms`` of venue time."""

    def __init__(self, size: int, window_ms: int) -> None:
        self.size = size
        self.window_ms = window_ms
        self._keys: OrderedDict[str, int] = OrderedDict()
        self._newest = 0

    def __len__(self) -> int:
        return len(self._keys)

    def seen(self, key: str, time_ms: int) -> bool:
        """True if ``key`` was seen; remembers it either way (forgetting the oldest)."""
        if key in self._keys:
            return True
        self._keys[key] = time_ms
        self._newest = max(self._newest, time_ms)
        keys = self._keys
        while len(keys) > self.size:
            keys.popitem(last=False)
        horizon = self._newest - self.window_ms
        while keys and next(iter(keys.values())) < horizon:  # insertion order is about time order
            keys.popitem(last=False)
        return False


class _Silence(Exception):
    pass


class _Refused(Exception):
    pass


async def okx_contract_values(inst_ids: Sequence[str], *, transport: Any = None) -> dict[str, float]:
    """``ctVal`` of each OKX swap from OKX's public instrument list (through the OKX source)."""
    from ..sources.okx import OkxSource

    source = OkxSource(transport=transport)
    try:
        out: dict[str, float] = {}
        for inst_id in inst_ids:
            try:
                inst = await source.resolve(inst_id)
            except InputError:  # not listed or not live: left out, its events are counted as unconverted
                continue
            out[inst.venue_id] = inst.contract_value
        return out
    finally:
        await source.aclose()


class Recorder:
    """Records the liquidation feeds of ``venues`` for ``symbols`` (canonical, e.g. ``BTCUSDT``)."""

    def __init__(
        self,
        sink: TapeSink,
        venues: Sequence[str],
        symbols: Sequence[str],
        *,
        urls: Mapping[str, str] | None = None,
        params: RecorderParams | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = _now_ms,
        contract_values: ContractValues | None = None,
        rng: random.Random | None = None,
    ) -> None:
        unknown = [v for v in venues if v not in VENUES]
        if unknown or not venues:
            raise InputError(f"no liquidation feed for {', '.join(map(repr, unknown)) or 'no venue'}; "
                             f"the tape records {', '.join(VENUES)}")
        if not symbols:
            raise InputError("the tape needs at least one symbol")
        self.sink = sink
        self.venues = tuple(dict.fromkeys(venues))
        self.symbols = tuple(dict.fromkeys(parse_symbol(s).symbol for s in symbols))
        self.params = params or RecorderParams()
        self.urls = {v: (urls or {}).get(v, DEFAULT_URLS[v]) for v in self.venues}
        self._clock = clock
        self._wall_ms = wall_ms
        self._load_ct = contract_values or okx_contract_values
        self._rng = rng or random.Random()
        self._ct: dict[str, float] = {}
        self._ct_tried = -float("inf")
        self._stats = {v: _Stats(v) for v in self.venues}
        self._recent = {v: _Recent(self.params.dedupe_keys, int(self.params.dedupe_window_s * 1000)) for v in self.venues}
        self._events: deque[LiquidationEvent] = deque()
        self._gaps: deque[Gap] = deque()
        self._wake = asyncio.Event()
        self._state = {v: _VenueState() for v in self.venues}
        self._okx_inst = {parse_symbol(s).okx_swap: s for s in self.symbols}
        self._unconverted_since: dict[str, int] = {}
        self._started_ms = self._wall_ms()

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, FeedStatus]:
        """Per venue: connected, newest event, counts, reconnects, gaps and the last error."""
        out = {}
        for v, s in self._stats.items():
            out[v] = FeedStatus(
                v, "sampled" if FEED_SAMPLED[v] else "complete", s.connected, s.last_event_ms, s.events, s.stored,
                s.duplicates, s.malformed, s.dropped, s.unconverted, s.gaps, s.reconnects, s.last_error, tuple(s.notes),
            )
        return out

    # -- run ---------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Record until ``stop`` is set, then flush what is buffered (within ``stop_flush_s``)."""
        self._started_ms = self._wall_ms()
        writer_stop = asyncio.Event()
        writer = asyncio.create_task(self._writer(writer_stop), name="tape-writer")
        feeds = [asyncio.create_task(self._feed_loop(v, stop), name=f"tape-{v}") for v in self.venues]
        try:
            await stop.wait()
        finally:
            for t in feeds:
                t.cancel()
            await asyncio.gather(*feeds, return_exceptions=True)
            now = self._wall_ms()
            for v, s in self._stats.items():
                s.connected = False
                self._close_unconverted(v, now)
                state = self._state[v]
                if state.gap_written and state.gap_start is not None:  # closed at stop: our own downtime is no gap
                    self._put_gap(Gap(v, None, state.gap_start, now, state.gap_reason))
                    state.gap_start, state.gap_written = None, False
            writer_stop.set()
            self._wake.set()
            try:
                await asyncio.wait_for(writer, self.params.stop_flush_s)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            left = len(self._events)
            if left:
                log.warning("tape: stopped with %d events not written (sink unavailable)", left)
                for ev in self._events:
                    self._stats[ev.venue].dropped += 1
                self._events.clear()

    # -- one venue ---------------------------------------------------------------------------
    async def _feed_loop(self, venue: str, stop: asyncio.Event) -> None:
        st = self._stats[venue]
        state = self._state[venue]
        p = self.params
        attempt = 0
        while not stop.is_set():
            session = _Session()
            reason = "connection closed"
            try:
                if venue == "okx":
                    await self._refresh_contract_values()
                feed = feed_for(venue, self.symbols, lambda: self._ct)
                async with connect(
                    self.urls[venue], open_timeout=p.open_timeout_s, ping_interval=None, ping_timeout=None,
                    close_timeout=2.0, max_size=p.max_frame_bytes, max_queue=64,
                ) as ws:
                    await self._session(ws, feed, session, st)
            except asyncio.CancelledError:
                raise
            except (_Silence, _Refused) as exc:
                reason = str(exc)
            except websockets.exceptions.ConnectionClosed as exc:
                too_big = exc.sent is not None and exc.sent.code == 1009  # we refused a frame: "message too big"
                if too_big or isinstance(exc.__cause__, websockets.exceptions.PayloadTooBig):
                    st.malformed += 1
                    reason = f"a frame over {p.max_frame_bytes} bytes was refused"
                elif exc.rcvd is not None:
                    reason = f"closed by the venue ({exc.rcvd.code}{' ' + exc.rcvd.reason[:100] if exc.rcvd.reason else ''})"
                else:
                    reason = "connection lost (no close frame)"
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
                reason = f"{type(exc).__name__}: {str(exc)[:200]}" if str(exc) else type(exc).__name__
            except Exception as exc:  # noqa: BLE001 - a venue fault must never stop the other feeds
                log.exception("tape: %s feed failed unexpectedly", venue)
                reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            finally:
                st.connected = False
            if stop.is_set():
                break
            st.last_error = reason
            if session.subscribed_at is not None:  # a healthy session ended: the gap starts at its last frame
                if self._clock() - session.subscribed_at >= p.stable_s:
                    attempt = 0
                state.gap_start = session.last_healthy_ms
                state.gap_written = False
            elif state.gap_start is None:  # never healthy since start
                state.gap_start = self._started_ms
            if not state.gap_written and state.gap_start is not None:
                state.gap_reason = reason[:200]
                self._put_gap(Gap(venue, None, state.gap_start, None, state.gap_reason))
                st.gaps += 1
                state.gap_written = True
            st.reconnects += 1
            delay = p.backoff(attempt, self._rng)
            attempt += 1
            log.info("tape: %s %s; reconnecting in %.1f s", venue, reason, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _session(self, ws: ClientConnection, feed: VenueFeed, session: _Session, st: _Stats) -> None:
        venue = feed.name
        p = self.params
        ping_iv, silence = p.ping_for(venue), p.silence_for(venue)
        for msg in feed.subscribe_messages():
            await ws.send(msg)
        opened = self._clock()
        last_frame = opened
        last_ping = opened
        session.last_healthy_ms = self._wall_ms()
        if not feed.acknowledges:
            self._on_subscribed(venue, session)

        def alive(_: object = None) -> None:
            nonlocal last_frame
            last_frame = self._clock()
            session.last_healthy_ms = self._wall_ms()

        while True:
            now = self._clock()
            if session.subscribed_at is None and now - opened >= p.subscribe_timeout_s:
                raise _Refused(f"no acknowledgement within {p.subscribe_timeout_s:g} s")
            if now - last_frame >= silence:
                raise _Silence(f"silence watchdog: no frame for {now - last_frame:.0f} s")
            next_ping = (max(last_ping, last_frame) if feed.ping_when_idle else last_ping) + ping_iv
            deadline = min(next_ping, last_frame + silence)
            if session.subscribed_at is None:
                deadline = min(deadline, opened + p.subscribe_timeout_s)
            try:
                raw = await asyncio.wait_for(ws.recv(), max(0.0, deadline - now))
            except asyncio.TimeoutError:
                if self._clock() >= next_ping:
                    text = feed.ping_message()
                    if text is None:
                        waiter = await ws.ping()
                        waiter.add_done_callback(lambda f: None if f.cancelled() or f.exception() else alive())
                    else:
                        await ws.send(text)
                    last_ping = self._clock()
                continue
            alive()
            try:
                frame = feed.parse(raw)
            except Malformed as exc:
                st.malformed += 1
                st.note(f"malformed frame skipped: {exc}")
                continue
            st.malformed += frame.bad_items
            if frame.error is not None:
                st.last_error = f"{venue} says: {frame.error}"
                if session.subscribed_at is None:
                    raise _Refused(frame.error)
                continue
            if frame.notice is not None:
                st.note(f"{venue} notice: {frame.notice}")
            if frame.subscribed and session.subscribed_at is None:
                self._on_subscribed(venue, session)
            if frame.unconverted:
                self._count_unconverted(venue, frame.unconverted)
            if frame.events:
                self._accept(venue, frame.events)

    def _on_subscribed(self, venue: str, session: _Session) -> None:
        st = self._stats[venue]
        session.subscribed_at = self._clock()
        st.connected = True
        st.last_error = None
        state = self._state[venue]
        if state.gap_written and state.gap_start is not None:
            self._put_gap(Gap(venue, None, state.gap_start, self._wall_ms(), state.gap_reason))
        state.gap_start, state.gap_written = None, False

    def _accept(self, venue: str, events: list[LiquidationEvent]) -> None:
        st = self._stats[venue]
        recent = self._recent[venue]
        bound = self.params.queue_bound
        for ev in events:
            if recent.seen(ev.key, ev.time_ms):
                st.duplicates += 1
                continue
            st.events += 1
            if st.last_event_ms is None or ev.time_ms > st.last_event_ms:
                st.last_event_ms = ev.time_ms
            if len(self._events) >= bound:
                st.dropped += 1
                span = st.drop_span
                st.drop_span = [min(span[0], ev.time_ms), max(span[1], ev.time_ms)] if span else [ev.time_ms, ev.time_ms]
                continue
            self._events.append(ev)
        if len(self._events) >= self.params.batch_size:
            self._wake.set()

    # -- OKX contract values -----------------------------------------------------------------
    async def _refresh_contract_values(self) -> None:
        wanted = list(self._okx_inst)
        if all(i in self._ct for i in wanted):
            return
        if self._clock() - self._ct_tried < self.params.contract_refresh_s:
            return
        self._ct_tried = self._clock()
        st = self._stats["okx"]
        try:
            loaded = await asyncio.wait_for(self._load_ct(wanted), self.params.open_timeout_s * 3)
            self._ct.update({k: float(v) for k, v in loaded.items() if isinstance(v, (int, float)) and v > 0})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure falls back to the published table
            reason = str(exc)[:200] or type(exc).__name__
            fallback = {i: OKX_CONTRACT_VALUES[i] for i in wanted if i in OKX_CONTRACT_VALUES and i not in self._ct}
            self._ct.update(fallback)
            if fallback:
                st.note(f"okx ctVal of {', '.join(sorted(fallback))} from the built-in table (instrument list: {reason})")
            st.last_error = f"okx instrument list unavailable: {reason}"
        self._close_unconverted("okx", self._wall_ms(), only_known=True)
        missing = [i for i in wanted if i not in self._ct]
        if missing:
            st.note(f"okx ctVal unknown for {', '.join(missing)}: their events are counted as unconverted, not stored")

    def _count_unconverted(self, venue: str, counts: dict[str, int]) -> None:
        st = self._stats[venue]
        now = self._wall_ms()
        for inst_id, n in counts.items():
            st.unconverted += n
            if inst_id not in self._unconverted_since:  # an open gap for that symbol says events are missing
                self._unconverted_since[inst_id] = now
                self._put_gap(Gap("okx", self._okx_inst.get(inst_id), now, None, f"contract value of {inst_id} unknown"))
                st.gaps += 1

    def _close_unconverted(self, venue: str, now: int, *, only_known: bool = False) -> None:
        if venue != "okx":
            return
        for inst_id, since in list(self._unconverted_since.items()):
            if only_known and inst_id not in self._ct:
                continue
            self._put_gap(Gap("okx", self._okx_inst.get(inst_id), since, now, f"contract value of {inst_id} unknown"))
            del self._unconverted_since[inst_id]

    # -- writer ------------------------------------------------------------------------------
    def _put_gap(self, gap: Gap) -> None:
        if len(self._gaps) >= self.params.gap_queue_bound:
            self._gaps.popleft()
            log.warning("tape: gap queue full; the oldest gap record was dropped")
        self._gaps.append(gap)
        self._wake.set()

    async def _writer(self, stop: asyncio.Event) -> None:
        p = self.params
        failures = 0
        while True:
            if not stop.is_set() and len(self._events) < p.batch_size and not self._gaps:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), p.flush_interval_s)
                except asyncio.TimeoutError:
                    pass
            try:
                await self._flush_once()
                if failures:
                    for s in self._stats.values():
                        if s.last_error and s.last_error.startswith("sink failed"):
                            s.last_error = None
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a sink fault is retried, never raised
                failures += 1
                msg = f"sink failed ({type(exc).__name__}: {str(exc)[:200]}); retry {failures}"
                for s in self._stats.values():
                    s.last_error = msg
                log.warning("tape: %s", msg)
                delay = min(p.sink_retry_cap_s, p.sink_retry_base_s * 2 ** min(failures - 1, 30))
                if stop.is_set():
                    return  # run() counts what is left as dropped
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                continue
            if stop.is_set() and not self._events and not self._gaps:
                return

    async def _flush_once(self) -> None:
        """Write pending gaps, then up to one batch of events; a failure leaves them queued."""
        while self._gaps:
            await self.sink.write_gap(self._gaps[0])
            self._gaps.popleft()
        for st in self._stats.values():  # events lost while the sink was down: say so with a gap
            if st.drop_span is not None and len(self._events) < self.params.queue_bound:
                a, b = st.drop_span
                st.drop_span = None
                st.gaps += 1
                self._put_gap(Gap(st.venue, None, a, b + 1, "events dropped: the tape's buffer was full (sink down)"))
        n = min(len(self._events), self.params.batch_size)
        if n == 0:
            return
        by_venue: dict[str, list[LiquidationEvent]] = {}
        for _ in range(n):
            ev = self._events.popleft()
            by_venue.setdefault(ev.venue, []).append(ev)
        groups = list(by_venue.items())
        for i, (venue, evs) in enumerate(groups):
            try:
                new = await self.sink.write_events(evs)
            except BaseException:
                for _, rest in reversed(groups[i:]):  # back to the front, in order: nothing is lost
                    self._events.extendleft(reversed(rest))
                raise
            st = self._stats[venue]
            st.stored += new
            st.duplicates += max(0, len(evs) - new)


@dataclass
class _Session:
    last_healthy_ms: int = 0
    subscribed_at: float | None = None


@dataclass
class _VenueState:
    gap_start: int | None = None  # the start of the venue's current gap (open or about to be)
    gap_written: bool = False  # its open record was queued
    gap_reason: str = ""
