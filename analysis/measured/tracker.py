"""The tracker: discovery, polling within the budget, and the tracked positions.

``Tracker(info, coins)`` holds an :class:`~.addresses.AddressBook`, a
:class:`~.budget.PollScheduler` and the latest positions of every account polled. Addresses
arrive through :meth:`Tracker.discovered` (the trades stream's callback) and :meth:`seed`
(documented public lists: ``recentTrades`` of each coin, and ``vaultDetails`` of the vaults in
``TrackerParams.seed_vaults``, whose own and child addresses hold the vault's positions). Polling
(:meth:`poll_one`, run by ``workers`` loops in :meth:`run`) takes the next account from the
scheduler, waits for its turn, reads ``clearinghouseState`` through the budgeted
:class:`~.info.InfoClient` and keeps the account's positions in the tracked coins. Open interest
and mark prices come from ``metaAndAssetCtxs`` every ``ctx_refresh_s``. :meth:`snapshot` is what
the measured map is built from.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Awaitable, Callable, Sequence

from ..errors import InputError, SourceError
from .addresses import AddressBook
from .budget import PollScheduler
from .info import InfoClient
from .shapes import (AssetCtx, Position, parse_asset_ctxs, parse_clearinghouse, parse_vault_addresses, resolve_coin,
                     trade_users)
from .snapshot import Snapshot

__all__ = ["Tracker", "TrackerParams", "HLP_VAULT"]

log = logging.getLogger(__name__)

#: Hyperliquidity Provider (HLP), the protocol vault (docs: "Protocol vaults"; vaultDetails example)
HLP_VAULT = "0xdfc24b077bc1425ad1dea75bcb6f8158e10df303"


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class TrackerParams:
    """Tracker limits and cadences (docs/methodology.md, "Measured positions")."""

    max_addresses: int = 10_000
    #: concurrent polls (each still waits for the budget)
    workers: int = 4
    #: seconds between metaAndAssetCtxs reads (weight 20 each)
    ctx_refresh_s: float = 60.0
    #: a failed poll is retried after this long (a 429: after the server's wait)
    retry_s: float = 120.0
    #: longest single wait of an idle poller before it looks again for new accounts
    idle_s: float = 1.0
    #: vaults whose own and child addresses are added at start (documented public list)
    seed_vaults: tuple[str, ...] = (HLP_VAULT,)
    #: read recentTrades of each coin at start (documented; names buyers and sellers like the stream)
    seed_recent_trades: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.workers, int) and 1 <= self.workers <= 32):
            raise InputError("TrackerParams.workers must be 1..32")
        if not (self.ctx_refresh_s > 0 and self.retry_s > 0 and self.idle_s > 0):
            raise InputError("TrackerParams: ctx_refresh_s, retry_s and idle_s must be positive")


class Tracker:
    """Tracks the positions in ``coins`` (Hyperliquid names: ``BTC``, ``ETH``) of discovered accounts."""

    def __init__(
        self, info: InfoClient, coins: Sequence[str], *, params: TrackerParams | None = None,
        scheduler: PollScheduler | None = None, clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, wall_ms: Callable[[], int] = _now_ms,
    ) -> None:
        if not coins:
            raise InputError("the tracker needs at least one coin")
        self.info = info
        self.coins = tuple(dict.fromkeys(coins))
        self.params = params or TrackerParams()
        self.book = AddressBook(self.params.max_addresses)
        capacity = info.budget.capacity if info.budget is not None else 960
        self.scheduler = scheduler if scheduler is not None else PollScheduler(capacity_per_min=capacity)
        self._clock = clock
        self._sleep = sleep
        self._wall_ms = wall_ms
        self.positions: dict[str, tuple[Position, ...]] = {}
        self.ctxs: dict[str, AssetCtx] = {}
        self.ctx_ms = 0
        self.errors = 0
        self.skipped_positions = 0
        self.last_error: str | None = None
        self._inflight: set[str] = set()
        self._wake = asyncio.Event()

    # -- discovery --------------------------------------------------------------------------
    def discovered(self, users: Sequence[str], source: str = "trades") -> int:
        """Add addresses (the stream's callback); returns how many were new."""
        new = 0
        now = self._clock()
        for u in users:
            address, evicted = self.book.add(u, now, source=source)
            for gone in evicted:
                self.scheduler.remove(gone)
                self.positions.pop(gone, None)
            if address is not None and self.scheduler.add(address):
                new += 1
        if new:
            self._wake.set()
        return new

    async def seed(self) -> list[str]:
        """Addresses from the documented public lists; returns notes on what failed (never raises)."""
        notes = []
        if self.params.seed_recent_trades:
            for coin in self.coins:
                try:
                    doc = await self.info.post({"type": "recentTrades", "coin": coin})
                    await self.info.charge_items("recentTrades", len(doc) if isinstance(doc, list) else 0)
                    users, _ = trade_users(doc)
                    self.discovered(users, "recentTrades")
                except SourceError as exc:
                    notes.append(f"recentTrades {coin}: {exc.reason}")
        for vault in self.params.seed_vaults:
            try:
                doc = await self.info.post({"type": "vaultDetails", "vaultAddress": vault})
                self.discovered(parse_vault_addresses(doc), "vaultDetails")
            except SourceError as exc:
                notes.append(f"vaultDetails {vault[:10]}…: {exc.reason}")
        return notes

    # -- open interest ------------------------------------------------------------------------
    async def refresh_ctxs(self) -> None:
        """Mark price and open interest of every coin (metaAndAssetCtxs)."""
        ctxs = parse_asset_ctxs(await self.info.post({"type": "metaAndAssetCtxs"}))
        resolved = {c: resolve_coin(c, ctxs) for c in self.coins}
        missing = [c for c, r in resolved.items() if r is None]
        if missing:
            raise InputError(f"Hyperliquid lists no perpetual {', '.join(missing)}")
        self.coins = tuple(dict.fromkeys(r for r in resolved.values() if r is not None))  # Hyperliquid's spelling
        self.ctxs = {c: ctxs[c] for c in self.coins}
        self.ctx_ms = self._wall_ms()

    # -- polling ------------------------------------------------------------------------------
    async def poll_one(self) -> str | None:
        """Poll the next account when its turn comes; returns it (None when there is nobody to poll yet)."""
        while True:
            now = self._clock()
            nxt = self.scheduler.next(now)
            if nxt is None:
                return None
            address, due = nxt
            if due <= now:
                break
            self._wake.clear()
            await self._wait_wake(min(due - now, self.params.idle_s))  # a newly discovered account may come first
        self.scheduler.take(address)
        self._inflight.add(address)
        try:
            doc = await self.info.post({"type": "clearinghouseState", "user": address})
            account = parse_clearinghouse(doc, address)
        except SourceError as exc:
            self.errors += 1
            self.last_error = str(exc)
            retry = exc.retry_after if exc.status == 429 and exc.retry_after else self.params.retry_s
            if address in self.book:
                self.scheduler.failed(address, self._clock(), retry)
            return address
        finally:
            self._inflight.discard(address)
        self.skipped_positions += account.skipped
        stamp = account.time_ms or self._wall_ms()
        mine = tuple(p if p.polled_ms else _stamped(p, stamp) for p in account.positions if p.coin in self.coins)
        notional = sum(p.position_value for p in mine)
        if address in self.book:  # evicted while in flight: forget it
            if mine:
                self.positions[address] = mine
            else:
                self.positions.pop(address, None)
            self.book.polled(address, notional)
            self.scheduler.done(address, self._clock(), notional)
        return address

    async def _wait_wake(self, seconds: float) -> None:
        """Sleep ``seconds`` on the injected clock, or less when a new account arrives."""
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleeper, waker):
                t.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    async def run(self, stop: asyncio.Event, *, stream_run: Callable[[asyncio.Event], Awaitable[None]] | None = None) -> None:
        """Seed, then poll (``workers`` loops) and refresh open interest until ``stop`` is set."""
        tasks = []
        if stream_run is not None:
            tasks.append(asyncio.ensure_future(stream_run(stop)))
        tasks.append(asyncio.ensure_future(self._ctx_loop(stop)))
        for note in await self.seed():
            log.warning("measured: seed: %s", note)
        for _ in range(self.params.workers):
            tasks.append(asyncio.ensure_future(self._poll_loop(stop)))
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if await self.poll_one() is None:
                self._wake.clear()
                await self._wait_wake(self.params.idle_s)

    async def _ctx_loop(self, stop: asyncio.Event) -> None:
        if self.ctx_ms:  # read just before run(): the next read is due a full interval later
            await self._sleep(self.params.ctx_refresh_s)
        while not stop.is_set():
            try:
                await self.refresh_ctxs()
            except SourceError as exc:
                self.errors += 1
                self.last_error = str(exc)
            await self._sleep(self.params.ctx_refresh_s)

    # -- result -------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The tracked positions now, with the counts behind their coverage."""
        positions = tuple(p for ps in self.positions.values() for p in ps)
        accounts = {
            "tracked": len(self.book), "polled": self.scheduler.known, "with_positions": len(self.positions),
            "pending": self.scheduler.pending_new, "evicted": self.book.evicted, "polls": self.scheduler.polls,
            "errors": self.errors, "weight": self.info.weight, "skipped_positions": self.skipped_positions,
        }
        return Snapshot(self._wall_ms(), self.coins, dict(self.ctxs), positions, accounts)


def _stamped(p: Position, ms: int) -> Position:
    return replace(p, polled_ms=ms)
