"""The HTTP core every live venue uses: a token-bucket limiter, a retrying JSON client, single-flight.

Behaviour of :meth:`VenueClient.get_json` and :meth:`VenueClient.post_json` (the documented contract
the venue modules rely on; a POST sends one JSON body, serialised once before the first attempt, and
follows exactly the same rules as a GET):

* every request first takes ``cost`` tokens from the venue's :class:`RateLimiter`;
* **deadlines**: each attempt (connect, headers and the whole body) must finish within
  ``deadline_s`` (default 10 s), and the whole call (attempts, backoff, server-ordered waits and
  waits for the limiter, in wall time) within ``budget_s`` (default 30 s): a server that drips one
  byte every few seconds, or accepts and never answers, fails with a SourceError at the latest
  when the budget is spent; the abandoned connection is closed;
* **size limits**: the body is streamed and decoded here (``gzip``, ``deflate`` or identity; only
  those are asked for in ``Accept-Encoding``), with zlib never inflating more than the room left,
  and counted *after* decompression against the endpoint's ``max_bytes`` (each venue module
  documents one per endpoint, well above its largest legitimate page; :data:`DEFAULT_MAX_BYTES`
  otherwise). A body beyond it (or a declared ``Content-Length`` beyond it) stops the transfer
  with a SourceError naming the limit, never retried; memory stays within the limit plus one
  network chunk. Error bodies (non-200) are read up to :data:`ERROR_BODY_BYTES` only;
* 5xx, timeouts and transport errors (including a reset in the middle of a body) are retried with
  exponential backoff and jitter, as long as ``max_attempts`` and ``budget_s`` allow (a retry
  needs a quarter of ``deadline_s`` left after its backoff);
* 429 honours ``Retry-After`` (seconds or an HTTP date): the client waits that long, pausing the
  limiter (and the endpoint's own request ``budget``, when the call has one) so that concurrent
  requests wait too. When the wait would exceed the budget it stops
  with a :class:`SourceError` carrying ``retry_after`` and refuses further requests until then;
* 418 (the venue banned this IP for ignoring 429s) is never retried: it raises at once with
  ``retry_after`` (``Retry-After``, else :data:`DEFAULT_BAN_S`) and sends nothing more until then;
* **every wait a server supplies** (``Retry-After`` on 429/418, usage fed to
  :meth:`RateLimiter.observe`, pauses, a venue's reset header) is clamped to
  :data:`MAX_SERVER_WAIT_S` (one hour); a value that is not a finite non-negative number (``1e309``,
  ``nan``, ``-5``, garbage) counts as :data:`DEFAULT_SERVER_WAIT_S` (a minute), see :func:`server_wait`;
* 451 raises a SourceError saying the venue refuses this region, suggesting another venue;
* other 4xx raise a SourceError quoting the venue's own message (``exc.body`` keeps the raw text),
  whitespace collapsed, cut to 160 characters, and every character that is not printable (control
  characters, direction marks, zero-width joiners) escaped as ``\\uXXXX``;
* a 200 whose body is not complete JSON (or whose compressed stream is cut short) raises a
  SourceError (never a ``ValueError``).

:class:`SingleFlight` cancels a shared execution once every caller waiting for it has been
cancelled, so abandoned work frees the venue's page slots and limiter at once instead of running on.

``request_count`` counts HTTP requests actually sent, which is what tests and benchmarks count.
A venue whose cost depends on the answer (Hyperliquid's ``candleSnapshot`` weighs more per 60 candles
returned) takes the extra with :meth:`RateLimiter.charge` once the response is in.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import time
import zlib
from datetime import timezone
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from typing import Any, Protocol, TypeVar

import httpx

from ..errors import SourceError
from ..venues import LIVE_VENUES

__all__ = [
    "RateLimiter", "VenueClient", "ResponseSink", "SingleFlight", "gather_or_cancel", "server_wait", "LIVE_VENUES", "USER_AGENT",
    "DEFAULT_MAX_BYTES", "ERROR_BODY_BYTES", "MAX_SERVER_WAIT_S", "DEFAULT_SERVER_WAIT_S", "DEFAULT_BAN_S",
    "DEFAULT_DEADLINE_S",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# LIVE_VENUES (venues with live sources, in the order they are suggested when one is unavailable)
# comes from analysis.venues, the one venue list.


class ResponseSink(Protocol):
    """What receives the raw body of every successful response (``liqmap record``'s Recorder)."""

    def record(self, venue: str, url: str, path: str, params: Mapping[str, Any], status: int, body: bytes,
               **request: bytes) -> None:
        """``request`` is ``request_body=<bytes>`` for a POST (nothing for a GET)."""
        ...


USER_AGENT = "liqmap/0.1 (+https://github.com/liqmap; public market data)"

#: Largest decoded body of an endpoint whose venue module names no limit of its own.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
#: How much of an error body (any status but 200) is read: plenty for the venue's message.
ERROR_BODY_BYTES = 64 * 1024
#: The longest wait any server-supplied number can impose (Retry-After, usage, reset headers).
MAX_SERVER_WAIT_S = 3600.0
#: The wait assumed when a server's number is unusable (not finite, negative, not a number).
DEFAULT_SERVER_WAIT_S = 60.0
#: A 418 ban without a Retry-After.
DEFAULT_BAN_S = 120.0
#: Per-attempt deadline: connect, headers and the whole body.
DEFAULT_DEADLINE_S = 10.0
_ACCEPT_ENCODING = "gzip, deflate"


def server_wait(value: object, *, default: float = DEFAULT_SERVER_WAIT_S, maximum: float = MAX_SERVER_WAIT_S) -> float:
    """A wait in seconds from a server-supplied value, clamped to ``0..maximum``.

    Accepts a number, a numeric string or an HTTP date (``Retry-After``); anything else, and any
    non-finite or negative number, gives ``default`` (itself at most ``maximum``).
    """
    fallback = min(default, maximum)
    if isinstance(value, bool):
        return fallback
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError, OverflowError):
                return fallback
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            seconds = max(0.0, when.timestamp() - time.time())  # a date already past: come back now
    else:
        return fallback
    if not math.isfinite(seconds) or seconds < 0:
        return fallback
    return min(seconds, maximum)


class RateLimiter:
    """An async token bucket: ``rate_per_s`` tokens refill per second up to ``burst``.

    ``acquire(cost)`` waits until ``cost`` tokens are available and takes them (the balance may be
    driven negative by :meth:`observe`, in which case callers wait for the debt to refill).
    Venues feed server-reported usage through :meth:`observe` (e.g. Binance's used weight) and
    server-ordered pauses through :meth:`pause` (e.g. ``Retry-After``).

    :meth:`share` puts the bucket in a shared layer (:mod:`analysis.sharing`, Redis): ``acquire``
    then takes from the one bucket of every process on the host, and ``charge``/``pause``/``observe``
    apply to it too (in the background) as well as here. While the layer is unavailable the local
    bucket serves alone, as without one.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("rate_per_s and burst must be positive")
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._stamp = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self.waited_s = 0.0  # total time callers were asked to wait (for tests and benchmarks)
        self.shared: Any = None  # an analysis.sharing.SharedBudget, see share()

    def share(self, budget: Any) -> None:
        """Take tokens from ``budget`` (an :class:`analysis.sharing.SharedBudget`) while it answers."""
        self.shared = budget

    async def _take_shared(self, cost: float) -> float | None:
        """The shared bucket's answer (0: taken, else the wait), None when there is none or it is down."""
        if self.shared is None:
            return None
        from ..sharing import SharedUnavailable

        try:
            return await self.shared.take(cost, self.rate, self.burst)
        except SharedUnavailable:
            return None

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    async def acquire(self, cost: float = 1.0) -> None:
        """Wait until ``cost`` tokens are available, then take them. FIFO among waiters."""
        cost = min(float(cost), self.burst)
        async with self._lock:
            while True:
                shared = await self._take_shared(cost)
                if shared is not None:
                    if shared <= 0:
                        return
                    wait = min(shared, MAX_SERVER_WAIT_S)
                    self.waited_s += wait
                    await self._sleep(wait)
                    continue
                self._refill()
                now = self._clock()
                wait = max(0.0, self._paused_until - now)
                if not wait and self._tokens >= cost - 1e-9:  # tolerance: float refill can land just short
                    self._tokens -= cost
                    return
                if not wait:
                    wait = max(1e-3, (cost - self._tokens) / self.rate)
                self.waited_s += wait
                await self._sleep(wait)

    def wait_s(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens could be taken, from now (a pause included); takes nothing.

        An estimate for callers that decide whether to wait (e.g. a request budget's ETA).
        """
        self._refill()
        cost = min(float(cost), self.burst)
        pause = max(0.0, self._paused_until - self._clock())
        return max(pause, max(0.0, cost - self._tokens) / self.rate)

    def charge(self, cost: float) -> None:
        """Take ``cost`` tokens now without waiting (a cost known only from the response).

        The balance may go negative (at most one ``burst`` of debt): the next callers wait for it to refill.
        """
        cost = float(cost)
        if not math.isfinite(cost) or cost <= 0:
            return
        self._refill()
        self._tokens = max(-self.burst, self._tokens - min(cost, self.burst))
        if self.shared is not None:
            self.shared.apply("charge", cost, self.rate, self.burst)

    def pause(self, seconds: float) -> None:
        """Hold every acquire for ``seconds`` from now (a server said to back off); clamped by :func:`server_wait`."""
        wait = server_wait(seconds)
        self._paused_until = max(self._paused_until, self._clock() + wait)
        if self.shared is not None:
            self.shared.apply("pause", wait, self.rate, self.burst)

    def observe(self, used: float, limit: float, *, headroom: float = 0.9) -> None:
        """Account for usage the server reports: ``used`` of ``limit`` in its current window.

        The bucket never believes it has more than ``headroom * limit - used`` tokens left, so
        traffic from other processes sharing the IP slows us down before the limit is reached.
        ``used`` is clamped to ``0..limit`` (a venue answers 429 beyond its limit), so a wild header
        costs at most ``(1 - headroom) * limit`` tokens of debt; a non-finite value is ignored.
        """
        used, limit = float(used), float(limit)
        if not (math.isfinite(used) and math.isfinite(limit)) or limit <= 0:
            return
        self._refill()
        cap = headroom * limit - min(max(used, 0.0), limit)
        self._tokens = min(self._tokens, cap)
        if self.shared is not None:
            self.shared.apply("cap", cap, self.rate, self.burst)


class SingleFlight:
    """Concurrent calls for one key share one execution of the work.

    ``await flight.do(key, fn)`` runs ``fn()`` once for all callers that arrive while it is in
    flight; they all get its result or its exception. The work runs as its own task, so one
    caller being cancelled does not cancel it for the others. When the *last* waiting caller is
    cancelled the work is cancelled too: nobody can use its result, and it would otherwise keep
    holding the venue's page slots and rate-limit tokens (a later caller starts afresh).
    """

    def __init__(self) -> None:
        self._tasks: dict[Hashable, asyncio.Task[Any]] = {}
        self._waiting: dict[asyncio.Task[Any], int] = {}
        self.executions = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._tasks

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> T:
        task = self._tasks.get(key)
        if task is None:
            self.executions += 1
            task = asyncio.ensure_future(fn())
            self._tasks[key] = task
            self._waiting[task] = 0
            task.add_done_callback(lambda t, k=key: self._done(k, t))
        self._waiting[task] = self._waiting.get(task, 0) + 1
        try:
            return await asyncio.shield(task)
        finally:
            left = self._waiting.get(task, 1) - 1
            self._waiting[task] = left
            if left <= 0 and not task.done():
                if self._tasks.get(key) is task:
                    del self._tasks[key]  # a caller arriving now starts a new execution, not a cancelled one
                task.cancel()

    def _done(self, key: Hashable, task: asyncio.Task[Any]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        self._waiting.pop(task, None)
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter re-raises it itself


async def gather_or_cancel(*aws: Awaitable[T]) -> list[T]:
    """Like ``asyncio.gather`` but, when one fails, the others are cancelled (no stray requests)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _alternatives(venue: str) -> str:
    others = [v for v in LIVE_VENUES if v != venue]
    return " or ".join(f"--exchange {v}" for v in others) if others else "another venue"


def _retry_after(resp: httpx.Response) -> float | None:
    """``Retry-After`` in seconds, clamped by :func:`server_wait`; None when absent."""
    raw = resp.headers.get("Retry-After")
    return None if raw is None else server_wait(raw)


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


class _Inflater:
    """Decodes a body (gzip, deflate or identity) without ever producing more than the room left.

    zlib's ``max_length`` bounds each step, so a gzip bomb costs at most ``limit + 1`` bytes.
    """

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._z: Any = None
        self._raw_deflate_tried = False
        if encoding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._z = zlib.decompressobj(zlib.MAX_WBITS)
        elif encoding not in ("", "identity"):
            raise ValueError(encoding)
        self._started = False

    def feed(self, data: bytes, room: int) -> list[bytes]:
        """Decoded pieces of ``data``, stopping once more than ``room`` bytes came out."""
        if self._z is None:
            return [data[: room + 1]]
        out: list[bytes] = []
        made = 0
        while data and made <= room:
            try:
                piece = self._z.decompress(data, room - made + 1)
            except zlib.error:
                if self.encoding == "deflate" and not self._started and not self._raw_deflate_tried:
                    self._raw_deflate_tried = True  # some servers send raw deflate without the zlib header
                    self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise
            self._started = True
            out.append(piece)
            made += len(piece)
            data = self._z.unconsumed_tail
            if self._z.eof:
                rest = self._z.unused_data
                if self.encoding != "deflate" and rest[:2] == b"\x1f\x8b":
                    self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)  # another gzip member
                    data = rest
                else:
                    break
        return out

    def finish(self, room: int) -> list[bytes]:
        """What is still buffered at the end of the body; ValueError when the stream was cut short."""
        if self._z is None:
            return []
        out = [self._z.decompress(b"", room + 1)] if not self._z.eof else []
        if not self._z.eof:
            raise ValueError("the compressed body ends before the end of its stream (truncated)")
        return out


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _without_encoding(headers: httpx.Headers) -> list[tuple[str, str]]:
    drop = ("content-encoding", "content-length", "transfer-encoding")
    return [(k, v) for k, v in headers.multi_items() if k.lower() not in drop]


def printable(text: str, n: int = 160) -> str:
    """Outside text made safe for a one-line message: whitespace collapsed, cut to ``n`` characters,
    and every character that is not printable (controls, direction marks, zero-width) escaped."""
    short = " ".join(str(text).split())[:n]
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in short)


def _venue_message(resp: httpx.Response) -> str:
    """The venue's own error text (Binance ``msg``, Bybit ``retMsg``, OKX ``msg``), shortened and escaped."""
    text = resp.text[:500]
    try:
        body = json.loads(text)
    except ValueError:
        return printable(text) or "(empty body)"
    if isinstance(body, dict):
        for key in ("msg", "retMsg", "message", "error"):
            if isinstance(body.get(key), str) and body[key]:
                code = body.get("code", body.get("retCode"))
                shown = f" (code {printable(str(code), 20)})" if code not in (None, "", 0, "0") else ""
                return printable(body[key]) + shown
    return printable(text) or "(empty body)"


def _sourceerror(venue: str, endpoint: str, reason: str, *, body: str | None = None, **kw: Any) -> SourceError:
    exc = SourceError(venue, endpoint, reason, **kw)
    exc.body = body  # type: ignore[attr-defined]
    return exc


class VenueClient:
    """An ``httpx.AsyncClient`` for one venue with a limiter, bounded retries and validation of JSON.

    See the module docstring for the exact behaviour per status. ``sleep`` is injectable so tests
    never wait; ``on_response`` sees every response (e.g. to read usage headers); ``recorder``
    receives the raw body of every successful response (record/replay). ``timeout`` is httpx's
    per-phase timeout (connect, each read); ``deadline_s`` bounds one attempt as a whole.
    """

    def __init__(
        self,
        venue: str,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: dict[str, str] | None = None,
        limiter: RateLimiter | None = None,
        timeout: float = 10.0,
        deadline_s: float = DEFAULT_DEADLINE_S,
        budget_s: float = 30.0,
        max_attempts: int = 4,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        on_response: Callable[[httpx.Response], None] | None = None,
        recorder: ResponseSink | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 8.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.venue = venue
        self.base_url = base_url
        self.limiter = limiter
        self.budget_s = float(budget_s)
        self.deadline_s = float(deadline_s)
        self.max_attempts = max(1, int(max_attempts))
        self.on_response = on_response
        self.recorder = recorder
        #: optional callback told of long waits (rate limits, backoff), one short line each
        self.progress: Callable[[str], None] | None = None
        self.request_count = 0
        self._sleep = sleep
        self._clock = clock
        self._base = backoff_base_s
        self._cap = backoff_cap_s
        self._rng = rng or random.Random()
        self._blocked_until = 0.0  # clock time before which nothing is sent (418 / long 429)
        self._blocked_status: int | None = None
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json", "Accept-Encoding": _ACCEPT_ENCODING}
        all_headers.update(headers or {})
        self._client = httpx.AsyncClient(
            base_url=base_url, transport=transport, headers=all_headers, timeout=timeout, follow_redirects=False,
        )

    async def __aenter__(self) -> "VenueClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._client.is_closed

    async def aclose(self) -> None:
        """Close the underlying connection pool (idempotent)."""
        await self._client.aclose()

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with 'equal jitter': half fixed, half random, capped."""
        full = min(self._cap, self._base * (2 ** attempt))
        return full / 2 + self._rng.uniform(0, full / 2)

    async def get_json(
        self, path: str, params: Mapping[str, Any] | None = None, *, cost: float = 1.0, max_bytes: int = DEFAULT_MAX_BYTES,
        budget: RateLimiter | None = None, budget_paid: bool = False,
    ) -> Any:
        """GET ``path`` and return its decoded JSON, or raise :class:`SourceError` (see module doc).

        ``max_bytes`` is the endpoint's limit on the decoded body. ``budget`` is an endpoint's own
        request budget besides the venue's limiter (Binance's openInterestHist: 1,000 requests per
        5 minutes): every attempt takes one request from it, the first too unless ``budget_paid``
        (a priority queue already took it), and a 429 or 418 pauses it for the server's wait.
        """
        params = {k: v for k, v in (params or {}).items() if v is not None}
        return await self._request_json("GET", path, params, None, path, cost, max_bytes, budget, budget_paid)

    async def post_json(
        self, path: str, body: Mapping[str, Any], *, cost: float = 1.0, max_bytes: int = DEFAULT_MAX_BYTES,
        endpoint: str | None = None,
    ) -> Any:
        """POST the JSON ``body`` to ``path`` and return the decoded JSON answer, or raise :class:`SourceError`.

        Same limiter, deadlines, retries, size limits and validation as :meth:`get_json`. ``endpoint``
        names the call in messages (default ``path``; Hyperliquid's single ``/info`` is told apart by
        its ``type``, e.g. ``/info candleSnapshot``). A body that cannot be sent as JSON (NaN, a
        non-JSON type) is refused before anything is sent.
        """
        name = endpoint or path
        try:
            content = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise _sourceerror(self.venue, name, f"request body is not JSON ({str(exc)[:80]}); nothing was sent") from None
        return await self._request_json("POST", path, {}, content, name, cost, max_bytes)

    async def _request_json(
        self, method: str, path: str, params: Mapping[str, Any], content: bytes | None, endpoint: str,
        cost: float, max_bytes: int, budget: RateLimiter | None = None, budget_paid: bool = False,
    ) -> Any:
        """The shared attempt loop of :meth:`get_json` and :meth:`post_json` (see the module doc)."""
        began = time.monotonic()
        spent = 0.0  # request time + waits as scheduled (an injected sleep may take no real time)
        last_reason = "no attempt made"
        last_status: int | None = None

        def used() -> float:
            return max(spent, time.monotonic() - began)

        for attempt in range(self.max_attempts):
            self._check_blocked(endpoint)
            takes = [(self.limiter, cost)] if self.limiter is not None else []
            if budget is not None and (attempt or not budget_paid):
                takes.append((budget, 1.0))  # every attempt is one request of the endpoint's own budget
            for lim, lim_cost in takes:
                try:
                    async with asyncio.timeout(max(0.0, self.budget_s - used())):
                        await lim.acquire(lim_cost)
                except TimeoutError:
                    raise _sourceerror(
                        self.venue, endpoint,
                        f"still waiting for the rate limiter when this request's {self.budget_s:g}s budget ran out",
                    ) from None
                self._check_blocked(endpoint)  # a ban may have arrived while we waited for tokens
            deadline = min(self.deadline_s, self.budget_s - used())
            if deadline <= 0:
                break
            started = time.monotonic()
            resp: httpx.Response | None = None
            body = b""
            try:
                self.request_count += 1
                async with asyncio.timeout(deadline):
                    resp, body = await self._attempt(method, path, params, content, endpoint, max_bytes)
            except TimeoutError:
                last_reason, last_status = f"timed out (no complete response within {deadline:.3g}s)", None
            except httpx.TimeoutException as exc:
                last_reason, last_status = f"timed out ({type(exc).__name__})", None
            except httpx.TransportError as exc:
                last_reason, last_status = f"network error ({type(exc).__name__}: {str(exc)[:100] or 'no detail'})", None
            spent += time.monotonic() - started
            if resp is not None:
                if self.on_response is not None:
                    self.on_response(resp)
                status = resp.status_code
                if status == 200:
                    try:
                        payload = json.loads(body)
                    except (ValueError, UnicodeDecodeError) as exc:
                        raise _sourceerror(
                            self.venue, endpoint,
                            f"response is not valid JSON (truncated or garbled body of {len(body)} bytes: {str(exc)[:80]})",
                            status=status, body=body[:500].decode("utf-8", "replace"),
                        ) from None
                    if self.recorder is not None:
                        if content is None:
                            self.recorder.record(self.venue, str(resp.request.url), path, params, status, body)
                        else:
                            self.recorder.record(self.venue, str(resp.request.url), path, params, status, body,
                                                 request_body=content)
                    return payload
                if status == 418:
                    wait = _retry_after(resp)
                    ban = wait if wait is not None else DEFAULT_BAN_S
                    self._block(ban, status)
                    if budget is not None:
                        budget.pause(ban)
                    raise _sourceerror(
                        self.venue, endpoint,
                        f"the venue has banned this IP for too many requests (HTTP 418); "
                        f"retry after {ban:.0f}s, or use {_alternatives(self.venue)}",
                        status=status, retry_after=ban, body=resp.text[:500],
                    )
                if status == 451:
                    raise _sourceerror(
                        self.venue, endpoint,
                        f"{self.venue} refuses service from this region (HTTP 451, legal restriction); "
                        f"use another venue: {_alternatives(self.venue)}",
                        status=status, body=resp.text[:500],
                    )
                if status == 429:
                    wait = _retry_after(resp)
                    delay = wait if wait is not None else self._backoff(attempt)
                    last_reason, last_status = f"rate limited (HTTP 429: {_venue_message(resp)})", status
                    if budget is not None:
                        budget.pause(delay)  # the endpoint's own budget waits too, for every caller
                    if used() + delay > self.budget_s or attempt + 1 >= self.max_attempts:
                        self._block(delay, status)
                        raise _sourceerror(
                            self.venue, endpoint,
                            f"rate limited (HTTP 429); the venue asks us to wait {delay:.0f}s, "
                            f"beyond this request's budget ({self.budget_s:g}s, {self.max_attempts} attempts)",
                            status=status, retry_after=delay, body=resp.text[:500],
                        )
                    log.info("%s %s: 429, waiting %.1fs", self.venue, endpoint, delay)
                    if self.progress is not None:
                        self.progress(f"{self.venue}: rate limited, waiting {delay:.0f}s")
                    if self.limiter is not None:
                        self.limiter.pause(delay)  # concurrent requests wait too; our acquire waits it out
                    else:
                        await self._sleep(delay)
                    spent += delay
                    continue
                if status >= 500:
                    last_reason, last_status = f"server error HTTP {status} ({_venue_message(resp)})", status
                else:
                    raise _sourceerror(
                        self.venue, endpoint, f"HTTP {status}: {_venue_message(resp)}",
                        status=status, body=resp.text[:500],
                    )
            # retryable failure: 5xx, timeout or transport error
            if attempt + 1 >= self.max_attempts:
                break
            delay = self._backoff(attempt)
            if self.budget_s - (used() + delay) < self.deadline_s / 4:
                break  # too little left for a real attempt: its timeout would hide the actual failure
            log.info("%s %s: %s; retry %d in %.2fs", self.venue, endpoint, last_reason, attempt + 1, delay)
            if self.progress is not None:
                self.progress(f"{self.venue}: {last_reason}; retrying in {delay:.0f}s")
            await self._sleep(delay)
            spent += delay
        raise _sourceerror(
            self.venue, endpoint,
            f"{last_reason}; gave up after {min(attempt + 1, self.max_attempts)} attempt(s) "
            f"within a {self.budget_s:g}s budget",
            status=last_status,
        )

    async def _attempt(
        self, method: str, path: str, params: Mapping[str, Any], content: bytes | None, endpoint: str, max_bytes: int,
    ) -> tuple[httpx.Response, bytes]:
        """One request, its body streamed and decoded within the limit; a buffered response to inspect.

        Non-200 bodies are cut at :data:`ERROR_BODY_BYTES` (only their message matters); a 200
        beyond ``max_bytes`` raises. Leaving the stream early closes the connection.
        """
        extra = {"Content-Type": "application/json"} if content is not None else None
        async with self._client.stream(method, path, params=params, content=content, headers=extra) as resp:
            ok = resp.status_code == 200
            limit = max_bytes if ok else ERROR_BODY_BYTES
            encoding = resp.headers.get("Content-Encoding", "").strip().lower()
            if resp.is_stream_consumed:  # built in memory (httpx.MockTransport): already decoded by httpx
                encoding = ""
            try:
                inflater = _Inflater(encoding)
            except ValueError:
                raise _sourceerror(self.venue, endpoint, f"unsupported Content-Encoding {encoding[:20]!r} "
                                   f"(asked for {_ACCEPT_ENCODING})", status=resp.status_code) from None
            declared = resp.headers.get("Content-Length", "")
            if ok and inflater.encoding in ("", "identity") and declared.isascii() and declared.isdigit() \
                    and int(declared) > max_bytes:
                raise self._too_large(endpoint, max_bytes, f"it declares {_size(int(declared))}")
            parts: list[bytes] = []
            size = 0
            try:
                async for raw in (_once(resp.content) if resp.is_stream_consumed else resp.aiter_raw()):
                    for piece in inflater.feed(raw, limit - size):
                        parts.append(piece)
                        size += len(piece)
                    if size > limit:
                        break
                else:
                    for piece in inflater.finish(limit - size):
                        parts.append(piece)
                        size += len(piece)
            except (zlib.error, ValueError) as exc:
                if ok:
                    raise _sourceerror(self.venue, endpoint, f"the {encoding} body cannot be decoded ({str(exc)[:80]})",
                                       status=resp.status_code) from None
            if size > limit:
                if ok:
                    raise self._too_large(endpoint, max_bytes, "the decoded body is larger")
                parts, size = [b"".join(parts)[:limit]], limit
            body = b"".join(parts)
            done = httpx.Response(resp.status_code, headers=_without_encoding(resp.headers), content=body,
                                  request=resp.request)
        return done, body

    def _too_large(self, endpoint: str, limit: int, what: str) -> SourceError:
        return _sourceerror(
            self.venue, endpoint,
            f"response too large: {what} than this endpoint's limit of {_size(limit)} (decoded); "
            f"refused without reading further",
        )

    def _check_blocked(self, endpoint: str) -> None:
        remaining = self._blocked_until - self._clock()
        if remaining > 0:
            raise _sourceerror(
                self.venue, endpoint,
                f"not sending: the venue asked us to stay away for another {remaining:.0f}s (HTTP {self._blocked_status})",
                status=self._blocked_status, retry_after=remaining,
            )

    def _block(self, seconds: float, status: int) -> None:
        """Refuse to send until ``seconds`` from now (clamped; fail fast rather than queue callers for minutes)."""
        until = self._clock() + server_wait(seconds)
        if until > self._blocked_until:
            self._blocked_until, self._blocked_status = until, status
