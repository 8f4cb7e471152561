"""The shared layer on Redis (redis-py's asyncio client): cache, cross-process single-flight, budgets.

* **cache**: a finished report is stored under ``<prefix>:r:<key>`` for the report TTL (``SET PX``),
  encoded by :mod:`analysis.sharing.codec` (JSON plus raw array and PNG bytes, never pickle) after an
  8-byte creation time; values over the byte bound are not stored, and Redis's own ``maxmemory``
  with ``allkeys-lru`` bounds the whole (docker-compose.yml's sharded profile sets both).
* **single-flight**: the first process takes ``<key>:lock`` with ``SET NX PX`` and a random token,
  renews it while it builds (every third of :attr:`RedisLayer.lock_ttl_s`) and releases it with an
  owner-checked Lua script; the others poll for the value (50 ms growing to 250 ms) until it is there,
  until the lock is gone without a value (the builder failed or crashed: the lock expires after
  ``lock_ttl_s``; they then take it themselves) or until ``wait_s``, after which they build it
  themselves (logged).
* **budgets**: one token bucket per venue limiter in a Redis hash, refilled and taken by one Lua
  script on Redis's own clock (``TIME``), so every process on the host draws from one budget.

Every call is bounded by ``timeout_s``; an error or a timeout marks the layer down for ``retry_s``
(:class:`~analysis.sharing.SharedUnavailable` at once meanwhile, no waiting), logs one warning per
outage and one line when it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import SharedUnavailable
from .codec import CodecError, dumps, loads

__all__ = ["RedisLayer", "RedisBudget"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS[1] the bucket; ARGV: op (take|charge|pause|cap), value, rate per s, burst. Returns the wait (s) as text.
_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local op, x, rate, burst = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'tokens', 'stamp', 'paused')
local tokens = tonumber(h[1]) or burst
local stamp = tonumber(h[2]) or now
local paused = tonumber(h[3]) or 0
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if op == 'take' then
  local cost = math.min(x, burst)
  if paused > now then wait = paused - now
  elseif tokens >= cost - 1e-9 then tokens = tokens - cost
  else wait = math.max(0.001, (cost - tokens) / rate) end
elseif op == 'charge' then tokens = math.max(-burst, tokens - math.min(x, burst))
elseif op == 'pause' then paused = math.max(paused, now + x)
elseif op == 'cap' then tokens = math.min(tokens, x)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now), 'paused', tostring(paused))
local idle = math.max(paused - now, 0) + 2 * burst / rate + 60
redis.call('PEXPIRE', KEYS[1], math.floor(idle * 1000))
return tostring(wait)
"""
_TIME = struct.Struct(">d")


def _where(url: str) -> str:
    """``redis://:secret@host:6379/0`` -> ``host:6379/0`` (what the logs may show)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return f"{parts.hostname or parts.path}:{parts.port or 6379}{parts.path if parts.hostname else ''}"
    except ValueError:
        return "the configured Redis"


class RedisLayer:
    """:class:`~analysis.sharing.SharedLayer` on Redis at ``url`` (or an injected ``client``: tests
    pass fakeredis). ``prefix`` names this deployment's keys (one per host: the budgets are one IP's)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        prefix: str = "liqmap",
        timeout_s: float = 0.5,
        lock_ttl_s: float = 30.0,
        wait_s: float = 120.0,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if client is None:
            if url is None:
                raise ValueError("a Redis layer needs a URL or a client")
            import redis.asyncio as aioredis

            client = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                       retry_on_timeout=False)
        self.client = client
        self.where = _where(url) if url else "an injected Redis client"
        self.prefix = prefix
        self.timeout_s = float(timeout_s)
        self.lock_ttl_s = float(lock_ttl_s)
        self.wait_s = float(wait_s)
        self.retry_s = float(retry_s)
        self._clock = clock
        self._healthy: bool | None = None
        self._down_until = 0.0
        self._last_error = ""
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._bucket = client.register_script(_BUCKET)
        self._background: set[asyncio.Task[Any]] = set()
        self._unshared: set[str] = set()
        # what happened (for tests, /about and benchmarks)
        self.hits = self.builds = self.waits = self.fallbacks = 0

    # -- health ---------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool | None:
        return self._healthy

    def status(self) -> str:
        if self._healthy is None:
            return f"Redis at {self.where} (not used yet)"
        if self._healthy:
            return f"Redis at {self.where}: ok"
        return f"Redis at {self.where}: unavailable ({self._last_error}); each process works alone meanwhile"

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        """``await make()`` within ``timeout_s``; any failure marks the layer down (SharedUnavailable)."""
        from redis.exceptions import RedisError

        if self._healthy is False and self._clock() < self._down_until:
            raise SharedUnavailable(self._last_error)
        try:
            async with asyncio.timeout(self.timeout_s):  # (wait_for may swallow a cancel that races the answer)
                result = await make()
        except (RedisError, OSError, asyncio.TimeoutError, EOFError) as exc:
            why = "no answer within %g s" % self.timeout_s if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
            if self._healthy is not False:
                log.warning("shared layer: Redis at %s is unavailable (%s); falling back to in-process cache, "
                            "single-flight and rate limits, retrying every %g s", self.where, why, self.retry_s)
            self._healthy, self._last_error = False, why
            self._down_until = self._clock() + self.retry_s
            raise SharedUnavailable(why) from None
        if self._healthy is False:
            log.info("shared layer: Redis at %s answers again", self.where)
        self._healthy = True
        return result

    # -- cache and single-flight -------------------------------------------------------------------
    def _decode(self, data: Any) -> tuple[Any, float] | None:
        if not isinstance(data, (bytes, bytearray)) or len(data) < _TIME.size:
            return None
        try:
            value = loads(bytes(data[_TIME.size:]))
        except CodecError as exc:
            log.warning("shared layer: a cached value is unreadable (%s); building it again", exc)
            return None
        (created,) = _TIME.unpack_from(data)
        return value, max(0.0, time.time() - created)

    async def flight(self, key: str, build: Callable[[], Awaitable[T]], *, ttl: float,
                     max_bytes: int) -> tuple[T, float]:
        full = f"{self.prefix}:r:{key}"
        lock = f"{full}:lock"
        try:
            hit = self._decode(await self._call(lambda: self.client.get(full)))
        except SharedUnavailable:
            self.fallbacks += 1
            return await build(), 0.0
        if hit is not None:
            self.hits += 1
            return hit
        token = uuid.uuid4().hex
        deadline = self._clock() + self.wait_s
        waited = False
        while True:
            try:
                mine = await self._call(lambda: self.client.set(lock, token, nx=True, px=int(self.lock_ttl_s * 1000)))
            except SharedUnavailable:
                self.fallbacks += 1
                return await build(), 0.0
            if mine:
                return await self._build_and_store(full, lock, token, build, ttl, max_bytes), 0.0
            if not waited:
                self.waits += 1
                waited = True
            found = await self._wait(full, lock, deadline)
            if found is not None:
                self.hits += 1
                return found
            if self._clock() >= deadline:
                log.warning("shared layer: %s was not built by another process within %g s; building it here",
                            key[:80], self.wait_s)
                self.fallbacks += 1
                return await build(), 0.0
            # the lock is gone without a value: its builder failed or crashed; try to take it

    async def _wait(self, full: str, lock: str, deadline: float) -> tuple[Any, float] | None:
        """Poll for the value while the lock is held; None when the lock is gone or the deadline passed."""
        pause = 0.05
        while self._clock() < deadline:
            await asyncio.sleep(pause)
            pause = min(0.25, pause * 1.5)
            try:
                data, held = await self._call(lambda: self._get_and_exists(full, lock))
            except SharedUnavailable:
                return None
            hit = self._decode(data)
            if hit is not None:
                return hit
            if not held:
                return None
        return None

    async def _get_and_exists(self, full: str, lock: str) -> tuple[Any, int]:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(full)
            pipe.exists(lock)
            data, held = await pipe.execute()
        return data, int(held)

    async def _build_and_store(self, full: str, lock: str, token: str, build: Callable[[], Awaitable[T]],
                               ttl: float, max_bytes: int) -> T:
        self.builds += 1
        renew = asyncio.ensure_future(self._keep_lock(lock, token))
        try:
            value = await build()
            try:
                payload = _TIME.pack(time.time()) + dumps(value)
            except CodecError as exc:
                if str(exc) not in self._unshared:  # once per reason: a value of a new type stays local
                    self._unshared.add(str(exc))
                    log.info("shared layer: values like %s stay in this process (%s)", full[:80], exc)
                payload = b""
            if payload and len(payload) <= max_bytes and ttl > 0:
                try:
                    await self._call(lambda: self.client.set(full, payload, px=max(1, int(ttl * 1000))))
                except SharedUnavailable:
                    pass
            return value
        finally:
            renew.cancel()
            await asyncio.gather(renew, return_exceptions=True)
            try:
                await self._call(lambda: self._release(keys=[lock], args=[token]))
            except SharedUnavailable:
                pass  # it expires after lock_ttl_s

    async def _keep_lock(self, lock: str, token: str) -> None:
        while True:
            await asyncio.sleep(self.lock_ttl_s / 3)
            try:
                if not await self._call(lambda: self._renew(keys=[lock], args=[token, int(self.lock_ttl_s * 1000)])):
                    return  # no longer ours (expired and taken): the other builder stores it too
            except SharedUnavailable:
                pass

    # -- budgets ----------------------------------------------------------------------------------
    def budget(self, name: str) -> RedisBudget:
        return RedisBudget(self, name)

    async def bucket(self, name: str, op: str, value: float, rate: float, burst: float) -> float:
        """Run the bucket script on ``<prefix>:rl:<name>``; the wait it returns (seconds)."""
        out = await self._call(lambda: self._bucket(keys=[f"{self.prefix}:rl:{name}"],
                                                   args=[op, repr(float(value)), repr(float(rate)), repr(float(burst))]))
        return float(out)

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` in the background (kept referenced until done; its failure is already logged)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        try:
            close = getattr(self.client, "aclose", None) or self.client.close  # aclose: redis 5.0.1
            await asyncio.wait_for(close(), self.timeout_s * 4)
        except Exception:  # closing a broken connection: nothing more to do
            log.debug("closing the Redis client failed", exc_info=True)


class RedisBudget:
    """One venue limiter's bucket in Redis (:class:`~analysis.sharing.SharedBudget`)."""

    def __init__(self, layer: RedisLayer, name: str) -> None:
        self.layer = layer
        self.name = name

    async def take(self, cost: float, rate: float, burst: float) -> float:
        return await self.layer.bucket(self.name, "take", cost, rate, burst)

    def apply(self, op: str, value: float, rate: float, burst: float) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): the local bucket alone holds it
            return

        async def run() -> None:
            try:
                await self.layer.bucket(self.name, op, value, rate, burst)
            except SharedUnavailable:
                pass

        self.layer.spawn(run())
