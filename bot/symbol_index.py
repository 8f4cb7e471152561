"""The venues' symbol lists behind symbol autocomplete, and the check that a symbol is listed.

:class:`SymbolIndex` is refreshed in the background and read instantly (autocomplete answers
must come within 3 s); :func:`symbol_choices` turns it into choices, :func:`check_listed` refuses a
symbol none of the chosen venues lists, with close spellings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Iterable

from discord import app_commands

from analysis.errors import InputError, LiqmapError
from analysis.symbols import parse_symbol, suggest

__all__ = ["SymbolIndex", "symbol_choices", "check_listed"]

log = logging.getLogger(__name__)

# Shown first when present in the venues' lists (the most asked-for perpetuals), then A-Z.
_MAJORS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "BNBUSDT", "ADAUSDT", "AVAXUSDT", "LINKUSDT")
_MAJOR_RANK = {s: i for i, s in enumerate(_MAJORS)}


class SymbolIndex:
    """The venues' symbol lists for autocomplete, refreshed in the background, read instantly.

    ``suggest()`` never awaits: when the lists are stale it schedules a refresh and answers with
    what it has. A venue whose ``symbols()`` fails keeps its previous list.
    """

    def __init__(self, sources: dict[str, Any], *, ttl: float = 3600.0, timeout: float = 20.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sources = sources
        self.ttl = ttl
        self.timeout = timeout
        self._clock = clock
        self._lists: dict[str, frozenset[str]] = {}
        self._loaded_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        return self._loaded_at is not None

    def venues_of(self, symbol: str) -> list[str]:
        return [v for v, syms in self._lists.items() if symbol in syms]

    def known(self, venues: Iterable[str]) -> frozenset[str] | None:
        """Symbols listed on any of ``venues``; None when none of their lists is loaded."""
        lists = [self._lists[v] for v in venues if v in self._lists]
        return frozenset().union(*lists) if lists else None

    async def refresh(self) -> None:
        """Fetch every venue's list (bounded by ``timeout``); keep old lists on failure."""

        async def one(venue: str, src: Any) -> None:
            try:
                syms = await asyncio.wait_for(src.symbols(), self.timeout)
            except (LiqmapError, asyncio.TimeoutError) as exc:
                log.warning("symbol list of %s unavailable: %s", venue, exc or type(exc).__name__)
                return
            except Exception:
                log.exception("symbol list of %s failed", venue)
                return
            self._lists[venue] = frozenset(str(s).upper() for s in syms)

        await asyncio.gather(*(one(v, s) for v, s in self.sources.items()))
        self._loaded_at = self._clock()

    def ensure_fresh(self) -> None:
        """Start a background refresh when the lists are stale and none is running."""
        stale = self._loaded_at is None or self._clock() - self._loaded_at > self.ttl
        if stale and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self.refresh(), name="liqmap-symbol-refresh")

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def suggest(self, current: str, venues: Iterable[str], limit: int = 25) -> list[tuple[str, list[str]]]:
        """Up to ``limit`` (symbol, venues listing it) for what the user typed so far."""
        self.ensure_fresh()
        venues = [v for v in venues if v in self._lists] or list(self._lists)
        pool: dict[str, list[str]] = {}
        for v in venues:
            for s in self._lists[v]:
                pool.setdefault(s, []).append(v)
        typed = current.strip().upper().replace("/", "").replace("-", "").replace("_", "")
        typed = typed.removesuffix("SWAP").removesuffix("PERP").removesuffix(".P")
        try:
            canonical: str | None = parse_symbol(current).symbol if typed else None
        except InputError:
            canonical = None
        if not pool:  # lists not loaded yet: offer the canonical spelling of what they typed
            return [(canonical, [])] if canonical else []
        hits = [s for s in pool if typed in s or s == canonical] if typed else list(pool)

        def rank(s: str) -> tuple[int, int, str]:
            tier = 0 if s in (canonical, typed) else 1 if s.startswith(typed) else 2
            return (tier, _MAJOR_RANK.get(s, len(_MAJORS)), s)

        return [(s, sorted(pool[s])) for s in sorted(hits, key=rank)[:limit]]


def check_listed(index: SymbolIndex, service: Any, symbols: Iterable[str], exchange: str) -> tuple[str, ...]:
    """The venues for ``exchange``; InputError (with close spellings) for a symbol none of them lists.

    Symbols pass unchecked while the venues' lists are not loaded yet: the source then decides.
    """
    venues = service.resolve_venues(exchange)
    known = index.known(venues)
    if known is None:
        return venues
    for sym in symbols:
        if sym not in known:
            where = exchange if exchange != "all" else "any of " + ", ".join(venues)
            close = suggest(sym, known)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise InputError(f"{sym} is not listed on {where}.{hint}")
    return venues


def symbol_choices(index: SymbolIndex, service: Any, current: str, exchange: str | None) -> list[app_commands.Choice[str]]:
    """Autocomplete choices for a symbol option, limited to the chosen exchange when there is one."""
    try:
        venues = service.resolve_venues(exchange or "all")
    except InputError:
        venues = service.venues
    out = []
    for sym, listed in index.suggest(current, venues):
        label = f"{sym} · {', '.join(listed)}" if listed else sym
        out.append(app_commands.Choice(name=label[:100], value=sym))
    return out
