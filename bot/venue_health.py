"""Which venues answer right now: one cheap public request per venue, a short timeout, a cached result.

Each probe is the venue's documented server-time endpoint (no key, the lightest request each
venue has; tests/fixtures/<venue>/SOURCES.md names the documented examples):

| venue | request | a healthy answer |
| --- | --- | --- |
| Binance USDⓈ-M | ``GET /fapi/v1/time`` (weight 1) | ``{"serverTime": <ms>}`` |
| Bybit v5 | ``GET /v5/market/time`` | ``{"retCode": 0, "result": {"timeSecond": "<s>", ...}, ...}`` |
| OKX v5 | ``GET /api/v5/public/time`` | ``{"code": "0", "data": [{"ts": "<ms>"}], ...}`` |

A venue is ``up`` when it answers 200 with that shape within ``timeout_s``; ``slow`` when it
answers but took longer than ``slow_s``; ``down`` with a short reason otherwise (HTTP status,
no answer, not the documented shape). CoinGlass needs a key and has no free probe: it is not asked.

:meth:`VenueHealth.check` never waits longer than its ``budget_s``: the probes run as one shared
task (concurrent callers join it), their result is kept for ``ttl_s``, and a caller that runs out
of budget gets the previous result (or ``unknown``) while the task finishes in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import httpx

__all__ = ["VenueStatus", "Probe", "PROBES", "VenueHealth", "HealthParams"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VenueStatus:
    """One venue's last probe: ``up``, ``slow``, ``down`` or ``unknown`` (not probed yet)."""

    venue: str
    state: str
    detail: str = ""
    latency_ms: float | None = None
    checked_at: float | None = None  # epoch seconds


def _digits(v: Any) -> bool:
    return isinstance(v, str) and v.isdigit() and 0 < len(v) < 25


def _binance(body: Any) -> bool:
    t = body.get("serverTime") if isinstance(body, dict) else None
    return isinstance(t, int) and not isinstance(t, bool) and t > 0


def _bybit(body: Any) -> bool:
    if not isinstance(body, dict) or body.get("retCode") != 0 or isinstance(body.get("retCode"), bool):
        return False
    result = body.get("result")
    return isinstance(result, dict) and _digits(result.get("timeSecond"))


def _okx(body: Any) -> bool:
    if not isinstance(body, dict) or body.get("code") != "0":
        return False
    data = body.get("data")
    return isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict) and _digits(data[0].get("ts"))


@dataclass(frozen=True)
class Probe:
    """A venue's health request: base URL, path, and the check of a healthy JSON body."""

    base_url: str
    path: str
    healthy: Callable[[Any], bool]


def _probes() -> dict[str, Probe]:
    from analysis.sources import binance, bybit, okx

    return {
        "binance": Probe(binance.BASE_URL, "/fapi/v1/time", _binance),
        "bybit": Probe(bybit.BASE_URL, "/v5/market/time", _bybit),
        "okx": Probe(okx.BASE_URL, "/api/v5/public/time", _okx),
    }


PROBES: Mapping[str, Probe] = _probes()


@dataclass(frozen=True)
class HealthParams:
    """``timeout_s`` per probe (connect + answer); ``slow_s`` above which an answer is "slow";
    ``ttl_s`` how long a result is reused; ``budget_s`` the longest a caller waits; ``max_bytes``
    the largest body read (a server-time answer is under 200 bytes)."""

    timeout_s: float = 3.0
    slow_s: float = 1.5
    ttl_s: float = 60.0
    budget_s: float = 3.5
    max_bytes: int = 16_384


class VenueHealth:
    """Probes ``venues`` (those with a :data:`PROBES` entry) and keeps the result ``ttl_s``."""

    def __init__(self, venues: tuple[str, ...], *, params: HealthParams = HealthParams(),
                 transport: httpx.AsyncBaseTransport | None = None, probes: Mapping[str, Probe] = PROBES,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.venues = tuple(v for v in venues if v in probes)
        self.params = params
        self._probes = probes
        self._transport = transport
        self._clock = clock
        self._wall = wall
        self._last: dict[str, VenueStatus] = {}
        self._at: float | None = None
        self._task: asyncio.Task[dict[str, VenueStatus]] | None = None
        self.probes_run = 0  # rounds of probes actually made (tests)

    async def check(self) -> dict[str, VenueStatus]:
        """Every probed venue's status, fresh within ``ttl_s``; waits at most ``budget_s``."""
        if not self.venues:
            return {}
        fresh = self._at is not None and self._clock() - self._at < self.params.ttl_s
        if fresh:
            return dict(self._last)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._round(), name="liqmap-venue-health")
        try:
            return dict(await asyncio.wait_for(asyncio.shield(self._task), self.params.budget_s))
        except asyncio.TimeoutError:
            return {v: self._last.get(v, VenueStatus(v, "unknown", "still checking")) for v in self.venues}

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _round(self) -> dict[str, VenueStatus]:
        self.probes_run += 1
        timeout = httpx.Timeout(self.params.timeout_s)
        from analysis.sources.http import USER_AGENT

        async with httpx.AsyncClient(transport=self._transport, timeout=timeout, follow_redirects=False,
                                     headers={"User-Agent": USER_AGENT}) as client:
            results = await asyncio.gather(*(self._one(client, v) for v in self.venues))
        self._last = {s.venue: s for s in results}
        self._at = self._clock()
        return dict(self._last)

    async def _one(self, client: httpx.AsyncClient, venue: str) -> VenueStatus:
        probe = self._probes[venue]
        start = self._clock()
        try:
            body = await asyncio.wait_for(self._get(client, probe), self.params.timeout_s)
        except asyncio.TimeoutError:
            return self._status(venue, "down", f"no answer within {self.params.timeout_s:g} s", None)
        except httpx.HTTPError as exc:
            return self._status(venue, "down", f"cannot connect ({type(exc).__name__})", None)
        except _Refused as exc:
            return self._status(venue, "down", str(exc), None)
        except Exception:  # a bug: say "down", log it, never fail the caller
            log.exception("health probe of %s failed", venue)
            return self._status(venue, "down", "probe failed", None)
        latency = (self._clock() - start) * 1000
        if not probe.healthy(body):
            return self._status(venue, "down", "answer not in the documented shape", latency)
        state = "slow" if latency > self.params.slow_s * 1000 else "up"
        return self._status(venue, state, f"answered in {latency:.0f} ms", latency)

    async def _get(self, client: httpx.AsyncClient, probe: Probe) -> Any:
        import json

        async with client.stream("GET", probe.base_url + probe.path) as resp:
            if resp.status_code != 200:
                raise _Refused(f"HTTP {resp.status_code}")
            chunks, size = [], 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > self.params.max_bytes:
                    raise _Refused("answer larger than a server-time reply")
                chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _Refused("answer is not JSON") from None

    def _status(self, venue: str, state: str, detail: str, latency: float | None) -> VenueStatus:
        return VenueStatus(venue, state, detail, latency, self._wall())


class _Refused(Exception):
    """A probe answer that is not a healthy one (status, size, not JSON)."""
