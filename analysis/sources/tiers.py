"""Each symbol's real margin tiers and maximum leverage, read from the venues' public endpoints.

A :class:`TierBook` belongs to one venue source. It keeps the venue's tiers per symbol, in memory
and in the bar cache's ``meta`` table (key ``tiers:<venue>``, one JSON value written in one SQLite
transaction, so a reader never sees half a write), and answers :meth:`TierBook.table` with the
:class:`~analysis.margin.MarginTable` to price levels with, which says where it came from
(``origin``), when it was fetched (``as_of_ms``), whether it is a stale copy and why a fallback was
needed (``stale``, ``why``).

* Tiers younger than ``refresh_s`` (a day) are used as they are.
* Older ones are refreshed; when the refresh fails the last good copy keeps serving (its age is in
  the notes), and a failed refresh is retried only after ``retry_s`` (10 minutes), so a venue that
  is down is not asked again for every map.
* With no copy at all (never fetched, the venue lists the symbol but publishes no tiers for it,
  the tiers do not parse) the shipped table of :mod:`analysis.margin` is used, and the notes say why.

Per-venue parsers live with their venue (``bybit.parse_risk_limits``, ``okx.parse_position_tiers``);
Hyperliquid's ``meta`` margin tables are parsed here (:func:`parse_hyperliquid_meta`), fed by
whatever POST the Hyperliquid source sends (:func:`hyperliquid_tier_book`). Binance publishes its brackets only behind a signed key
(``GET /fapi/v1/leverageBracket``), so Binance maps always use the shipped tables.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from ..errors import LiqmapError, SourceError
from ..margin import OPEN_CAP, Bracket, MarginTable, brackets_fault, shipped_table
from .http import SingleFlight
from .validate import expect_dict, expect_list, field, to_float, to_int

__all__ = [
    "TierBook", "TierLoader", "shipped_table", "parse_hyperliquid_meta", "hyperliquid_tier_book", "REFRESH_S", "RETRY_S",
    "table_from_rows",
]

log = logging.getLogger(__name__)

REFRESH_S = 86_400.0  # tiers are refreshed daily
RETRY_S = 600.0  # a failed refresh is tried again after 10 minutes
_FORMAT = 1

#: load(symbol) -> {canonical symbol: table}; may cover more symbols than asked for (a bulk endpoint)
TierLoader = Callable[[str], Awaitable[Mapping[str, MarginTable]]]


def table_from_rows(venue: str, endpoint: str, name: str, brackets: list[Bracket], *, as_of_ms: int | None = None,
                    cap_unit: str = "usd") -> MarginTable:
    """A venue table from parsed tiers, sorted by cap; SourceError naming the fault when they cannot price levels.
    (:class:`TierBook` stamps ``as_of_ms`` with its own clock when it keeps the table.)"""
    rows = tuple(sorted(brackets, key=lambda b: b.cap_usd))
    fault = brackets_fault(rows)
    if fault is not None:
        raise SourceError(venue, endpoint, f"{name}: {fault}")
    return MarginTable(name, rows, origin="venue", as_of_ms=as_of_ms, cap_unit="coin" if cap_unit == "coin" else "usd")


class TierBook:
    """One venue's tiers per symbol: daily refresh, the last good copy on failure, shipped tables when none.

    ``load`` fetches (see :data:`TierLoader`); ``cache`` is the shared :class:`BarCache` (None keeps
    tiers in memory only); ``now`` is wall time in seconds (tiers' age survives restarts).
    """

    def __init__(
        self, venue: str, load: TierLoader | None, *, cache: Any = None, refresh_s: float = REFRESH_S,
        retry_s: float = RETRY_S, now: Callable[[], float] = time.time, bulk: bool = False,
        unavailable: str | None = None,
    ) -> None:
        self.venue = venue
        self._load = load
        self.cache = cache
        self.refresh_s = float(refresh_s)
        self.retry_s = float(retry_s)
        self._now = now
        self.bulk = bulk  # one load answers every symbol (Hyperliquid meta)
        self.unavailable = unavailable  # why this venue never has tiers (Binance)
        self._tables: dict[str, MarginTable] = {}
        self._failed: dict[str, tuple[float, str]] = {}  # key -> (when, why) of the last failed refresh
        self._missing: dict[str, float] = {}  # symbol -> when a good answer had no tiers for it
        self._bulk_at = -math.inf  # when a bulk answer last arrived (it holds every symbol there is)
        self._loaded_store = False
        self._flight = SingleFlight()
        self.loads = 0  # refreshes attempted (for tests)

    @property
    def _key(self) -> str:
        return f"tiers:{self.venue}"

    # -- persistence -------------------------------------------------------------------------------
    def _read_store(self) -> None:
        self._loaded_store = True
        if self.cache is None:
            return
        stored = self.cache.get_meta(self._key)
        if stored is None:
            return
        try:
            value = stored[0]
            if not isinstance(value, dict) or value.get("format") != _FORMAT:
                raise ValueError("unknown format")
            for sym, entry in value["symbols"].items():
                rows = tuple(Bracket(float(c), float(lv), float(m)) for c, lv, m in entry["brackets"])
                if brackets_fault(rows) is None:
                    self._tables[str(sym)] = MarginTable(
                        str(entry["name"]), rows, origin="venue", as_of_ms=int(entry["as_of_ms"]),
                        cap_unit="coin" if entry.get("cap_unit") == "coin" else "usd")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("%s: stored margin tiers unreadable (%s); refetching", self.venue, exc)

    def _write_store(self) -> None:
        if self.cache is None:
            return
        value = {"format": _FORMAT, "symbols": {
            sym: {"name": t.name, "as_of_ms": t.as_of_ms, "cap_unit": t.cap_unit,
                  "brackets": [[b.cap_usd, b.max_leverage, b.mmr] for b in t.brackets]}
            for sym, t in self._tables.items()}}
        try:
            self.cache.put_meta(self._key, value)
        except Exception as exc:  # a cache that cannot be written costs a refetch, never a map
            log.warning("%s: cannot store margin tiers (%s)", self.venue, exc)

    # -- lookups ------------------------------------------------------------------------------------
    def _fresh(self, table: MarginTable | None) -> bool:
        return table is not None and table.as_of_ms is not None and \
            self._now() * 1000 - table.as_of_ms < self.refresh_s * 1000

    async def table(self, symbol: str) -> MarginTable:
        """The table to price ``symbol`` with; never raises for the venue's faults (see the module doc)."""
        if self._load is None:
            return shipped_table(symbol, self.unavailable)
        if not self._loaded_store:
            self._read_store()
        held = self._tables.get(symbol)
        if self._fresh(held):
            assert held is not None
            return held
        key = "*" if self.bulk else symbol
        failed = self._failed.get(key)
        none_why = f"{self.venue} lists {symbol} but publishes no margin tiers for it"
        if held is None and (self._now() - self._missing.get(symbol, -math.inf) < self.retry_s
                             or self._now() - self._bulk_at < self.refresh_s):
            why = none_why
        elif failed is not None and self._now() - failed[0] < self.retry_s:
            why = failed[1]
        else:
            why = await self._refresh(symbol, key)
            if why is None:
                got = self._tables.get(symbol)
                if got is not None and self._fresh(got):
                    return got
                why = none_why
                self._missing[symbol] = self._now()
        if held is not None:
            return replace(held, stale=True, why=why)
        return shipped_table(symbol, f"no venue tiers ({why})")

    async def _refresh(self, symbol: str, key: str) -> str | None:
        """Load and keep the venue's tiers; None when done, else why not (logged)."""
        assert self._load is not None
        load = self._load
        try:
            self.loads += 1
            got = await self._flight.do(key, lambda: load(symbol))
        except LiqmapError as exc:
            why = str(exc)[:200]
            log.warning("%s: margin tiers for %s unavailable: %s", self.venue, symbol, why)
            self._failed[key] = (self._now(), why)
            return why
        self._failed.pop(key, None)
        if self.bulk:
            self._bulk_at = self._now()
        stamp = int(self._now() * 1000)
        self._tables.update({str(k): replace(t, as_of_ms=stamp) for k, t in got.items()})
        self._write_store()
        return None


# -- Hyperliquid ------------------------------------------------------------------------------------

_HL = "hyperliquid"
_HL_META = "/info meta"


def _hl_table(name: str, tiers: list[tuple[float, float]], as_of_ms: int | None) -> MarginTable:
    """Margin tiers ``[(lower bound USD, max leverage)]`` -> brackets; Hyperliquid's maintenance margin
    rate is half the initial margin rate at the tier's maximum leverage: ``1 / (2 * max leverage)``."""
    tiers = sorted(tiers)
    rows = []
    for i, (_, lev) in enumerate(tiers):
        cap = tiers[i + 1][0] if i + 1 < len(tiers) else OPEN_CAP
        rows.append(Bracket(cap, lev, 1.0 / (2.0 * lev)))
    return table_from_rows(_HL, _HL_META, name, rows, as_of_ms=as_of_ms)


def parse_hyperliquid_meta(payload: Any, *, as_of_ms: int | None = None) -> dict[str, MarginTable]:
    """``{coin: table}`` from a ``{"type": "meta"}`` answer of ``POST /info``.

    Each ``universe`` entry names its ``marginTableId``; ``marginTables`` is a list of
    ``[id, {"description", "marginTiers": [{"lowerBound", "maxLeverage"}]}]``. An id below 50 is a
    single tier whose maximum leverage is the id itself (documented), whether listed or not. The
    asset's ``maxLeverage`` caps every tier. Delisted assets are skipped; an asset whose table is
    missing is left out (its maps fall back to the shipped table, saying so).
    """
    body = expect_dict(payload, _HL, _HL_META)
    universe = expect_list(field(body, "universe", _HL, _HL_META), _HL, _HL_META, what="universe")
    tables: dict[int, tuple[str, list[tuple[float, float]]]] = {}
    for i, entry in enumerate(expect_list(body.get("marginTables", []), _HL, _HL_META, what="marginTables")):
        if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], dict):
            raise SourceError(_HL, _HL_META, f"marginTables[{i}] should be [id, table], got {str(entry)[:60]}")
        tid = to_int(entry[0], _HL, _HL_META, what=f"marginTables[{i}] id")
        tiers = expect_list(field(entry[1], "marginTiers", _HL, _HL_META, where=f"margin table {tid}"), _HL, _HL_META,
                            what=f"marginTiers of table {tid}")
        rows = [(to_float(field(t, "lowerBound", _HL, _HL_META, where=f"table {tid}"), _HL, _HL_META,
                          what=f"lowerBound in table {tid}"),
                 to_float(field(t, "maxLeverage", _HL, _HL_META, where=f"table {tid}"), _HL, _HL_META,
                          what=f"maxLeverage in table {tid}")) for t in tiers]
        desc = entry[1].get("description")
        tables[tid] = (desc if isinstance(desc, str) and desc else f"table {tid}", rows)
    out: dict[str, MarginTable] = {}
    for i, asset in enumerate(universe):
        where = f"universe[{i}]"
        name = field(asset, "name", _HL, _HL_META, where=where)
        if not isinstance(name, str) or not name:
            raise SourceError(_HL, _HL_META, f"{where}: name should be a non-empty string")
        if asset.get("isDelisted") is True:
            continue
        max_lev = to_float(field(asset, "maxLeverage", _HL, _HL_META, where=where), _HL, _HL_META,
                           what=f"maxLeverage of {name}")
        tid_raw = asset.get("marginTableId")
        tid = to_int(tid_raw, _HL, _HL_META, what=f"marginTableId of {name}") if tid_raw is not None else None
        if tid is not None and tid in tables:
            desc, rows = tables[tid]
        elif tid is not None and 0 < tid < 50:
            desc, rows = f"{tid}x flat", [(0.0, float(tid))]
        elif tid is None:
            desc, rows = f"{max_lev:g}x flat", [(0.0, max_lev)]
        else:
            continue  # names a table the answer does not hold: no tiers for this coin
        if not math.isfinite(max_lev) or max_lev < 1:
            raise SourceError(_HL, _HL_META, f"maxLeverage of {name} must be at least 1, got {max_lev:g}")
        capped = [(lb, min(lev, max_lev)) for lb, lev in rows]
        out[name] = _hl_table(f"Hyperliquid {name} ({desc})", capped, as_of_ms)
    return out


def hyperliquid_tier_book(post_meta: Callable[[], Awaitable[Any]], canonical: Callable[[str], str], *, cache: Any = None,
                          now: Callable[[], float] = time.time) -> TierBook:
    """Hyperliquid's tiers as a bulk :class:`TierBook`: one ``meta`` answer serves every coin.

    ``post_meta()`` sends ``POST /info {"type": "meta"}`` through the Hyperliquid source's client and
    returns the decoded answer; ``canonical(coin)`` is the symbol the source calls that coin.
    """
    async def load(_symbol: str) -> dict[str, MarginTable]:
        return {canonical(coin): t for coin, t in parse_hyperliquid_meta(await post_meta()).items()}

    return TierBook(_HL, load, cache=cache, now=now, bulk=True)
