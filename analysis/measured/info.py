"""A thin client for Hyperliquid's public ``POST /info`` endpoint.

One request at a time through :meth:`InfoClient.post`: the request's documented weight is taken
from a :class:`~analysis.measured.budget.WeightBudget` first (so the IP's 1200 weight per minute is
never exceeded by us), then the body is streamed under a size limit within a deadline and decoded
as JSON. Every failure is one :class:`~analysis.errors.SourceError` naming ``hyperliquid`` and the
request type: a timeout, a network error, an HTTP status (429 carries the server's Retry-After,
clamped), a body over the limit, or a body that is not JSON.

The weights are those of the docs ("Rate limits and user limits", tests/fixtures/hyperliquid_measured/SOURCES.md).
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import TYPE_CHECKING, Any

import httpx

from ..errors import SourceError
from ..sources.http import USER_AGENT, server_wait

if TYPE_CHECKING:
    from .budget import WeightBudget

__all__ = ["INFO_URL", "WEIGHTS", "InfoClient", "weight_of", "items_weight", "VENUE"]

VENUE = "hyperliquid"
INFO_URL = "https://api.hyperliquid.xyz/info"

#: documented request weights: these are 2, ``userRole`` is 60, every other documented info request 20
WEIGHTS: dict[str, int] = {
    "l2Book": 2, "allMids": 2, "clearinghouseState": 2, "orderStatus": 2, "spotClearinghouseState": 2,
    "exchangeStatus": 2, "userRole": 60,
}
DEFAULT_WEIGHT = 20
#: requests documented to cost one more weight per this many items returned
PER_ITEMS: dict[str, int] = {"recentTrades": 20}

#: largest decoded body per request type (a whale's clearinghouseState with every coin is < 200 KB)
MAX_BYTES: dict[str, int] = {"clearinghouseState": 1 << 20, "metaAndAssetCtxs": 4 << 20,
                             "recentTrades": 1 << 20, "vaultDetails": 4 << 20}
DEFAULT_MAX_BYTES = 1 << 20


def weight_of(kind: str) -> int:
    """The documented base weight of an info request type."""
    return WEIGHTS.get(kind, DEFAULT_WEIGHT)


def items_weight(kind: str, items: int) -> int:
    """The extra weight a response of ``items`` items costs (``recentTrades``: one per 20, rounded up)."""
    per = PER_ITEMS.get(kind)
    return 0 if per is None or items <= 0 else math.ceil(items / per)


class InfoClient:
    """``POST /info`` with a weight budget, a per-request deadline, a size limit and JSON validation.

    ``client`` is the caller's ``httpx.AsyncClient`` (tests pass one over ``httpx.MockTransport``);
    ``budget`` (optional) is charged each request's documented weight before it is sent.
    """

    def __init__(self, client: httpx.AsyncClient, *, url: str = INFO_URL, budget: WeightBudget | None = None,
                 deadline_s: float = 10.0) -> None:
        self.client = client
        self.url = url
        self.budget = budget
        self.deadline_s = float(deadline_s)
        self.requests = 0
        self.weight = 0  # weight charged by this client (base + per-item extras)

    async def post(self, body: dict[str, Any]) -> Any:
        """The decoded JSON answer to ``body`` (its ``type`` names the request)."""
        kind = str(body.get("type", "?"))[:40]
        w = weight_of(kind)
        if self.budget is not None:
            await self.budget.acquire(w)
        self.requests += 1
        self.weight += w
        try:
            return await asyncio.wait_for(self._send(kind, body), self.deadline_s)
        except asyncio.TimeoutError:
            raise SourceError(VENUE, kind, f"no complete answer within {self.deadline_s:g} s") from None

    async def charge_items(self, kind: str, items: int) -> None:
        """Account for the per-item weight a response cost (taken from the budget at once, never waited for)."""
        extra = items_weight(kind, items)
        if extra:
            self.weight += extra
            if self.budget is not None:
                self.budget.charge(extra)

    async def _send(self, kind: str, body: dict[str, Any]) -> Any:
        limit = MAX_BYTES.get(kind, DEFAULT_MAX_BYTES)
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        try:
            async with self.client.stream("POST", self.url, content=json.dumps(body), headers=headers) as resp:
                if resp.status_code != 200:
                    text = (await _read(resp, 4096, kind, cut=True)).decode("utf-8", "replace")
                    detail = " ".join(text.split())[:160] or "(empty body)"
                    retry = resp.headers.get("Retry-After")
                    wait = server_wait(retry) if retry is not None else (60.0 if resp.status_code == 429 else None)
                    if resp.status_code == 429 and self.budget is not None:
                        self.budget.back_off(wait or 60.0)
                    raise SourceError(VENUE, kind, f"HTTP {resp.status_code}: {detail}", status=resp.status_code,
                                      retry_after=wait)
                raw = await _read(resp, limit, kind)
        except httpx.TimeoutException:
            raise SourceError(VENUE, kind, "timed out") from None
        except httpx.HTTPError as exc:
            raise SourceError(VENUE, kind, f"network error: {type(exc).__name__}: {str(exc)[:160]}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise SourceError(VENUE, kind, f"the answer is not JSON: {raw[:60]!r}") from None


async def _read(resp: httpx.Response, limit: int, kind: str, *, cut: bool = False) -> bytes:
    """The decoded body, at most ``limit`` bytes (``cut``: the first ``limit`` bytes; else over it is an error)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            if cut:
                break
            raise SourceError(VENUE, kind, f"the answer is larger than {limit:,} bytes; refused")
    return b"".join(parts)[:limit] if cut else b"".join(parts)
