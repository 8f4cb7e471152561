"""The HTTP core every live venue uses: a token-bucket limiter, a retrying JSON client, single-flight.

Behaviour of :meth:`VenueClient.get_json` (the documented contract the venue modules rely on):

* every request first takes ``cost`` tokens from the venue's :class:`RateLimiter`;
* 5xx, timeouts and transport errors are retried with exponential backoff and jitter, as long as
  ``max_attempts`` and the total time ``budget_s`` (request time plus waits) allow;
* 429 honours ``Retry-After`` (seconds): the client waits that long, pausing the limiter so that
  concurrent requests wait too. When the wait would exceed the budget it stops with a
  :class:`SourceError` carrying ``retry_after`` and refuses further requests until then;
* 418 (the venue banned this IP for ignoring 429s) is never retried: it raises at once with
  ``retry_after`` and the client sends nothing more until the ban ends;
* 451 raises a SourceError saying the venue refuses this region, suggesting another venue;
* other 4xx raise a SourceError quoting the venue's own message (``exc.body`` keeps the raw text);
* a 200 whose body is not complete JSON raises a SourceError (never a ``ValueError``).

``request_count`` counts HTTP requests actually sent, which is what tests and benchmarks count.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from ..errors import SourceError

if TYPE_CHECKING:  # pragma: no cover
    from .recorded import Recorder

__all__ = ["RateLimiter", "VenueClient", "SingleFlight", "gather_or_cancel", "LIVE_VENUES", "USER_AGENT"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Venues with live sources, in the order they are suggested when one is unavailable.
LIVE_VENUES: tuple[str, ...] = ("binance", "bybit", "okx")
USER_AGENT = "liqmap/0.1 (+https://github.com/liqmap; public market data)"


class RateLimiter:
    """An async token bucket: ``rate_per_s`` tokens refill per second up to ``burst``.

    ``acquire(cost)`` waits until ``cost`` tokens are available and takes them (the balance may be
    driven negative by :meth:`observe`, in which case callers wait for the debt to refill).
    Venues feed server-reported usage through :meth:`observe` (e.g. Binance's used weight) and
    server-ordered pauses through :meth:`pause` (e.g. ``Retry-After``).
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

    def pause(self, seconds: float) -> None:
        """Hold every acquire for ``seconds`` from now (a server said to back off)."""
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, float(seconds)))

    def observe(self, used: float, limit: float, *, headroom: float = 0.9) -> None:
        """Account for usage the server reports: ``used`` of ``limit`` in its current window.

        The bucket never believes it has more than ``headroom * limit - used`` tokens left, so
        traffic from other processes sharing the IP slows us down before the limit is reached.
        """
        self._refill()
        self._tokens = min(self._tokens, headroom * float(limit) - float(used))


class SingleFlight:
    """Concurrent calls for one key share one execution of the work.

    ``await flight.do(key, fn)`` runs ``fn()`` once for all callers that arrive while it is in
    flight; they all get its result or its exception. The work runs as its own task, so one
    caller being cancelled does not cancel it for the others.
    """

    def __init__(self) -> None:
        self._tasks: dict[Hashable, asyncio.Task[Any]] = {}
        self.executions = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._tasks

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> T:
        task = self._tasks.get(key)
        if task is None:
            self.executions += 1
            task = asyncio.ensure_future(fn())
            self._tasks[key] = task
            task.add_done_callback(lambda t, k=key: self._done(k, t))
        return await asyncio.shield(task)

    def _done(self, key: Hashable, task: asyncio.Task[Any]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
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
    raw = resp.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:  # an HTTP date: rarely used by these venues; treat as "a minute"
        return 60.0
    return max(0.0, value)


def _venue_message(resp: httpx.Response) -> str:
    """The venue's own error text (Binance ``msg``, Bybit ``retMsg``, OKX ``msg``), shortened."""
    text = resp.text[:500]
    try:
        body = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:160] or "(empty body)"
    if isinstance(body, dict):
        for key in ("msg", "retMsg", "message", "error"):
            if isinstance(body.get(key), str) and body[key]:
                code = body.get("code", body.get("retCode"))
                return f"{body[key][:160]}" + (f" (code {code})" if code not in (None, "", 0, "0") else "")
    return " ".join(text.split())[:160]


def _sourceerror(venue: str, endpoint: str, reason: str, *, body: str | None = None, **kw: Any) -> SourceError:
    exc = SourceError(venue, endpoint, reason, **kw)
    exc.body = body  # type: ignore[attr-defined]
    return exc


class VenueClient:
    """An ``httpx.AsyncClient`` for one venue with a limiter, bounded retries and validation of JSON.

    See the module docstring for the exact behaviour per status. ``sleep`` is injectable so tests
    never wait; ``on_response`` sees every response (e.g. to read usage headers); ``recorder``
    receives the raw body of every successful response (record/replay).
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
        budget_s: float = 30.0,
        max_attempts: int = 4,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        on_response: Callable[[httpx.Response], None] | None = None,
        recorder: "Recorder | None" = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 8.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.venue = venue
        self.base_url = base_url
        self.limiter = limiter
        self.budget_s = float(budget_s)
        self.max_attempts = max(1, int(max_attempts))
        self.on_response = on_response
        self.recorder = recorder
        self.request_count = 0
        self._sleep = sleep
        self._clock = clock
        self._base = backoff_base_s
        self._cap = backoff_cap_s
        self._rng = rng or random.Random()
        self._blocked_until = 0.0  # clock time before which nothing is sent (418 / long 429)
        self._blocked_status: int | None = None
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
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

    async def get_json(self, path: str, params: Mapping[str, Any] | None = None, *, cost: float = 1.0) -> Any:
        """GET ``path`` and return its decoded JSON, or raise :class:`SourceError` (see module doc)."""
        endpoint = path
        params = {k: v for k, v in (params or {}).items() if v is not None}
        spent = 0.0  # request time + waits, counted against the budget
        last_reason = "no attempt made"
        last_status: int | None = None
        for attempt in range(self.max_attempts):
            self._check_blocked(endpoint)
            if self.limiter is not None:
                await self.limiter.acquire(cost)  # throttling, not failure: not charged to the budget
                self._check_blocked(endpoint)  # a ban may have arrived while we waited for tokens
            started = time.monotonic()
            try:
                self.request_count += 1
                resp = await self._client.get(path, params=params)
                body = resp.content
            except httpx.TimeoutException as exc:
                last_reason, last_status = f"timed out ({type(exc).__name__})", None
                resp = None
            except httpx.TransportError as exc:
                last_reason, last_status = f"network error ({type(exc).__name__}: {str(exc)[:100] or 'no detail'})", None
                resp = None
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
                        self.recorder.record(self.venue, str(resp.request.url), path, params, status, body)
                    return payload
                if status == 418:
                    wait = _retry_after(resp)
                    self._block(wait if wait is not None else 120.0, status)
                    raise _sourceerror(
                        self.venue, endpoint,
                        f"the venue has banned this IP for too many requests (HTTP 418); "
                        f"retry after {wait if wait is not None else 120:.0f}s, or use {_alternatives(self.venue)}",
                        status=status, retry_after=wait if wait is not None else 120.0, body=resp.text[:500],
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
                    if spent + delay > self.budget_s or attempt + 1 >= self.max_attempts:
                        self._block(delay, status)
                        raise _sourceerror(
                            self.venue, endpoint,
                            f"rate limited (HTTP 429); the venue asks us to wait {delay:.0f}s, "
                            f"beyond this request's budget ({self.budget_s:.0f}s, {self.max_attempts} attempts)",
                            status=status, retry_after=delay, body=resp.text[:500],
                        )
                    log.info("%s %s: 429, waiting %.1fs", self.venue, endpoint, delay)
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
            if spent + delay > self.budget_s:
                break
            log.info("%s %s: %s; retry %d in %.2fs", self.venue, endpoint, last_reason, attempt + 1, delay)
            await self._sleep(delay)
            spent += delay
        raise _sourceerror(
            self.venue, endpoint,
            f"{last_reason}; gave up after {min(attempt + 1, self.max_attempts)} attempt(s) "
            f"within a {self.budget_s:.0f}s budget",
            status=last_status,
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
        """Refuse to send until ``seconds`` from now (fail fast rather than queue callers for minutes)."""
        until = self._clock() + seconds
        if until > self._blocked_until:
            self._blocked_until, self._blocked_status = until, status
