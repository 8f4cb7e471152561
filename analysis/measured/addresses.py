"""A bounded set of Hyperliquid account addresses, with eviction of the least useful.

Addresses come from the public trades stream (each trade names its buyer and seller), the
``recentTrades`` snapshot and documented vault lists (:mod:`.discovery`). At most ``max_addresses``
are kept; beyond, a batch (``evict_batch`` of the cap) is evicted in this order: accounts polled
and found with nothing open in the tracked coins (longest unseen first), then accounts never polled
(longest unseen first), then the smallest open notional. So the accounts that carry the map are the
last to go, and memory stays bounded whatever the stream sends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InputError

__all__ = ["AddressBook", "Entry", "normalise_address", "ADDRESS_RE"]

ADDRESS_RE = re.compile(r"^0x[0-9a-f]{40}$")


def normalise_address(text: object) -> str | None:
    """``0x`` + 40 hex digits, lower case; None for anything else (never raises)."""
    if not isinstance(text, str) or len(text) != 42:
        return None
    low = text.lower()
    return low if ADDRESS_RE.match(low) else None


@dataclass
class Entry:
    """What the book knows of one address."""

    first_seen: float
    last_seen: float
    seen: int = 1
    notional: float | None = None  # USD open in the tracked coins at the last poll; None: never polled
    source: str = "trades"


class AddressBook:
    """At most ``max_addresses`` addresses; :meth:`add` returns what it had to evict."""

    def __init__(self, max_addresses: int = 10_000, *, evict_batch: float = 0.05) -> None:
        if not (isinstance(max_addresses, int) and max_addresses >= 1):
            raise InputError(f"max_addresses must be a positive integer, got {max_addresses!r}")
        if not 0 < evict_batch <= 0.5:
            raise InputError(f"evict_batch must be in (0, 0.5], got {evict_batch!r}")
        self.max_addresses = max_addresses
        self.evict_batch = evict_batch
        self._entries: dict[str, Entry] = {}
        self.evicted = 0
        self.refused = 0  # strings that were not addresses

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, address: object) -> bool:
        return address in self._entries

    def get(self, address: str) -> Entry | None:
        return self._entries.get(address)

    def addresses(self) -> list[str]:
        return list(self._entries)

    def add(self, text: object, now: float, *, source: str = "trades") -> tuple[str | None, list[str]]:
        """Note ``text`` seen at ``now``: ``(address if it is new else None, evicted addresses)``."""
        address = normalise_address(text)
        if address is None:
            self.refused += 1
            return None, []
        entry = self._entries.get(address)
        if entry is not None:
            entry.last_seen = now
            entry.seen += 1
            return None, []
        self._entries[address] = Entry(now, now, source=source)
        evicted = self._evict(keep=address) if len(self._entries) > self.max_addresses else []
        return address, evicted

    def polled(self, address: str, notional: float) -> None:
        """Record what a poll found (USD open in the tracked coins)."""
        entry = self._entries.get(address)
        if entry is not None:
            entry.notional = float(notional)

    def _evict(self, *, keep: str) -> list[str]:
        k = max(1, int(self.max_addresses * self.evict_batch), len(self._entries) - self.max_addresses)

        def rank(item: tuple[str, Entry]) -> tuple[int, float, float]:
            e = item[1]
            if e.notional is None:
                return (1, 0.0, e.last_seen)
            if e.notional <= 0:
                return (0, 0.0, e.last_seen)
            return (2, e.notional, e.last_seen)

        victims = [a for a, _ in sorted((it for it in self._entries.items() if it[0] != keep), key=rank)[:k]]
        for a in victims:
            del self._entries[a]
        self.evicted += len(victims)
        return victims
