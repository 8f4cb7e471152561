"""What the tracker saw, as one versioned, validated JSON document (``positions.json``).

``{"format": "liqmap.measured-positions", "version": 1, "time": <ms>, "coins": [...],
"asset_ctxs": {coin: {"mark_px", "open_interest"}}, "accounts": {...counts...},
"positions": [{user, coin, szi, entry_px, liquidation_px, position_value, leverage_type,
leverage, margin_used, polled_ms}]}``. :func:`from_json` refuses anything else with one
:class:`~analysis.errors.InputError` naming the first bad field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from .addresses import normalise_address
from .shapes import AssetCtx, Position

__all__ = ["Snapshot", "FORMAT", "VERSION", "MAX_POSITIONS", "from_json"]

FORMAT = "liqmap.measured-positions"
VERSION = 1
MAX_POSITIONS = 1_000_000
_MAX_USD = 1e13
_MAX_MS = 2**53


@dataclass(frozen=True)
class Snapshot:
    """Tracked positions of some coins at ``time_ms`` (each position carries when it was polled)."""

    time_ms: int
    coins: tuple[str, ...]
    asset_ctxs: dict[str, AssetCtx]
    positions: tuple[Position, ...]
    accounts: dict[str, int] = field(default_factory=dict)  # tracked, polled, with_positions, evicted, …

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "time": self.time_ms, "coins": list(self.coins),
            "asset_ctxs": {c: {"mark_px": a.mark_px, "open_interest": a.open_interest} for c, a in self.asset_ctxs.items()},
            "accounts": dict(self.accounts),
            "positions": [p.to_json() for p in self.positions],
        }


def _bad(where: str, why: str) -> InputError:
    return InputError(f"positions file: {where}: {why}")


def _num(obj: dict[str, Any], key: str, where: str, *, lo: float = -_MAX_USD, hi: float = _MAX_USD,
         optional: bool = False) -> float | None:
    if key not in obj:
        raise _bad(where, f"missing {key!r}")
    v = obj[key]
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise _bad(where, f"{key} should be a number in [{lo:g}, {hi:g}], got {str(v)[:30]!r}")
    return float(v)


def _coin(v: Any, where: str) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= 40 or not v.isprintable():
        raise _bad(where, f"coin should be a short name, got {str(v)[:30]!r}")
    return v


def from_json(doc: Any) -> Snapshot:
    """A :class:`Snapshot` from its JSON form; InputError for anything off the format."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"not a liqmap positions file (\"format\" should be {FORMAT!r}); "
                         "write one with liqmap measure track")
    if doc.get("version") != VERSION:
        raise _bad("version", f"{str(doc.get('version'))[:20]!r} is not supported (this liqmap reads {VERSION})")
    t = _num(doc, "time", "time", lo=0, hi=_MAX_MS)
    coins = doc.get("coins")
    if not isinstance(coins, list) or not coins or len(coins) > 100:
        raise _bad("coins", "should be a list of 1..100 coin names")
    coins_t = tuple(_coin(c, "coins") for c in coins)
    raw_ctx = doc.get("asset_ctxs")
    if not isinstance(raw_ctx, dict) or len(raw_ctx) > 10_000:
        raise _bad("asset_ctxs", "should be an object of coin -> {mark_px, open_interest}")
    ctxs: dict[str, AssetCtx] = {}
    for c, v in raw_ctx.items():
        where = f"asset_ctxs.{str(c)[:20]}"
        if not isinstance(v, dict):
            raise _bad(where, "should be an object")
        mark = _num(v, "mark_px", where, lo=0, hi=1e12)
        oi = _num(v, "open_interest", where, lo=0, hi=1e15)
        ctxs[_coin(c, where)] = AssetCtx(c, float(mark or 0), float(oi or 0))
    accounts = doc.get("accounts", {})
    if not isinstance(accounts, dict) or any(not isinstance(v, int) or isinstance(v, bool) for v in accounts.values()):
        raise _bad("accounts", "should be an object of counts")
    rows = doc.get("positions")
    if not isinstance(rows, list) or len(rows) > MAX_POSITIONS:
        raise _bad("positions", f"should be a list of at most {MAX_POSITIONS:,} positions")
    out = []
    for i, r in enumerate(rows):
        where = f"positions[{i}]"
        if not isinstance(r, dict):
            raise _bad(where, "should be an object")
        user = normalise_address(r.get("user"))
        if user is None:
            raise _bad(where, "user should be a 0x address of 40 hex digits")
        lev_type = r.get("leverage_type")
        if lev_type not in ("cross", "isolated"):
            raise _bad(where, "leverage_type should be cross or isolated")
        szi = _num(r, "szi", where, lo=-1e15, hi=1e15)
        if not szi:
            raise _bad(where, "szi is 0 (not an open position)")
        out.append(Position(
            user, _coin(r.get("coin"), where), float(szi), float(_num(r, "entry_px", where, lo=0, hi=1e12) or 0),
            _num(r, "liquidation_px", where, lo=0, hi=1e12, optional=True),
            float(_num(r, "position_value", where, lo=0) or 0), str(lev_type),
            float(_num(r, "leverage", where, lo=0, hi=1000) or 0), float(_num(r, "margin_used", where) or 0),
            int(_num(r, "polled_ms", where, lo=0, hi=_MAX_MS) or 0),
        ))
    return Snapshot(int(t or 0), coins_t, ctxs, tuple(out), {str(k)[:40]: int(v) for k, v in accounts.items()})
