"""Parsers of Hyperliquid's documented answers, into small typed records.

Shapes (docs named in tests/fixtures/hyperliquid_measured/SOURCES.md):

* ``clearinghouseState`` → ``{"assetPositions": [{"type": "oneWay", "position": {"coin", "szi",
  "entryPx", "liquidationPx" (null when the account cannot be liquidated at any price), "positionValue",
  "leverage": {"type": "cross"|"isolated", "value", "rawUsd"?}, "marginUsed", …}}], "time", …}``;
  ``szi`` is signed (negative = short), ``positionValue`` is USD at the mark price.
* ``metaAndAssetCtxs`` → ``[{"universe": [{"name", …}]}, [{"markPx", "openInterest", …}]]``, the
  contexts in universe order; ``openInterest`` is in coins.
* trades (websocket channel ``trades``, and ``recentTrades`` over REST) → ``[{"coin", "side", "px",
  "sz", "hash", "time", "tid", "users": [buyer, seller]}]``.
* ``vaultDetails`` → ``{"vaultAddress", "leader", "followers": [{"user", …}], "relationship":
  {"type": "parent", "data": {"childAddresses": [...]}}, …}``.

A REST answer off its shape is a :class:`~analysis.errors.SourceError` naming the field; one bad
position inside a good answer is skipped and counted, never guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import SourceError
from ..sources.validate import expect_dict, expect_list, field, to_float
from .addresses import normalise_address
from .info import VENUE

__all__ = ["Position", "AssetCtx", "Account", "parse_clearinghouse", "parse_asset_ctxs", "trade_users", "resolve_coin",
           "canonical_symbol",
           "parse_vault_addresses"]

_MAX_POSITIONS = 1000  # per account: far above the listed perpetuals


@dataclass(frozen=True)
class Position:
    """One open perpetual position of one account."""

    user: str
    coin: str
    szi: float  # signed size in coins: > 0 long, < 0 short
    entry_px: float
    liquidation_px: float | None
    position_value: float  # USD at the mark price
    leverage_type: str  # cross / isolated
    leverage: float
    margin_used: float
    polled_ms: int = 0  # when the account was read (the answer's time)

    @property
    def side(self) -> str:
        return "long" if self.szi > 0 else "short"

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "coin": self.coin, "szi": self.szi, "entry_px": self.entry_px,
                "liquidation_px": self.liquidation_px, "position_value": self.position_value,
                "leverage_type": self.leverage_type, "leverage": self.leverage, "margin_used": self.margin_used,
                "polled_ms": self.polled_ms}


@dataclass(frozen=True)
class Account:
    """What one clearinghouseState answer said."""

    user: str
    time_ms: int
    positions: tuple[Position, ...]
    skipped: int  # positions off the documented shape


@dataclass(frozen=True)
class AssetCtx:
    coin: str
    mark_px: float
    open_interest: float  # coins

    @property
    def oi_usd(self) -> float:
        return self.mark_px * self.open_interest


def _num(value: Any, what: str, endpoint: str) -> float:
    return to_float(value, VENUE, endpoint, what=what)


def _position(raw: Any, user: str, time_ms: int) -> Position:
    ep = "clearinghouseState"
    pos = field(raw, "position", VENUE, ep, where="assetPositions[]")
    coin = field(pos, "coin", VENUE, ep, where="position")
    if not isinstance(coin, str) or not 0 < len(coin) <= 40:
        raise SourceError(VENUE, ep, f"position coin should be a short string, got {str(coin)[:40]!r}")
    szi = _num(field(pos, "szi", VENUE, ep), "szi", ep)
    entry = _num(field(pos, "entryPx", VENUE, ep), "entryPx", ep)
    liq_raw = field(pos, "liquidationPx", VENUE, ep)
    liq = None if liq_raw is None else _num(liq_raw, "liquidationPx", ep)
    value = _num(field(pos, "positionValue", VENUE, ep), "positionValue", ep)
    lev = field(pos, "leverage", VENUE, ep)
    lev_type = field(lev, "type", VENUE, ep, where="leverage")
    lev_value = _num(field(lev, "value", VENUE, ep, where="leverage"), "leverage.value", ep)
    margin = _num(field(pos, "marginUsed", VENUE, ep), "marginUsed", ep)
    if lev_type not in ("cross", "isolated"):
        raise SourceError(VENUE, ep, f"leverage type should be cross or isolated, got {str(lev_type)[:20]!r}")
    if szi == 0 or value < 0 or entry <= 0 or not lev_value > 0 or (liq is not None and liq < 0):
        raise SourceError(VENUE, ep, f"position of {coin} out of range (szi {szi:g}, value {value:g}, "
                                     f"entry {entry:g}, leverage {lev_value:g})")
    return Position(user, coin, szi, entry, liq, value, str(lev_type), lev_value, margin, time_ms)


def parse_clearinghouse(doc: Any, user: str) -> Account:
    """An account's open positions; a position off the shape is skipped and counted."""
    ep = "clearinghouseState"
    body = expect_dict(doc, VENUE, ep)
    rows = expect_list(field(body, "assetPositions", VENUE, ep), VENUE, ep, what="assetPositions")
    if len(rows) > _MAX_POSITIONS:
        raise SourceError(VENUE, ep, f"{len(rows)} positions in one account; refused (over {_MAX_POSITIONS})")
    t = body.get("time")
    time_ms = int(t) if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) else 0
    out, skipped = [], 0
    for raw in rows:
        try:
            out.append(_position(raw, user, time_ms))
        except SourceError:
            skipped += 1
    return Account(user, time_ms, tuple(out), skipped)


def parse_asset_ctxs(doc: Any) -> dict[str, AssetCtx]:
    """coin -> mark price and open interest from ``metaAndAssetCtxs`` (universe and contexts pair up)."""
    ep = "metaAndAssetCtxs"
    pair = expect_list(doc, VENUE, ep)
    if len(pair) != 2:
        raise SourceError(VENUE, ep, f"expected [meta, contexts], got a list of {len(pair)}")
    universe = expect_list(field(expect_dict(pair[0], VENUE, ep, what="meta"), "universe", VENUE, ep), VENUE, ep,
                           what="universe")
    ctxs = expect_list(pair[1], VENUE, ep, what="asset contexts")
    if len(universe) != len(ctxs):
        raise SourceError(VENUE, ep, f"{len(universe)} assets in the universe but {len(ctxs)} contexts")
    out: dict[str, AssetCtx] = {}
    for asset, ctx in zip(universe, ctxs):
        name = field(asset, "name", VENUE, ep, where="universe[]")
        if not isinstance(name, str):
            raise SourceError(VENUE, ep, "an asset name is not a string")
        mark = field(ctx, "markPx", VENUE, ep, where=f"context of {name[:20]}")
        oi = field(ctx, "openInterest", VENUE, ep, where=f"context of {name[:20]}")
        if mark is None:  # delisted assets carry no mark
            continue
        out[name] = AssetCtx(name, _num(mark, f"markPx of {name[:20]}", ep), _num(oi, f"openInterest of {name[:20]}", ep))
    return out


def resolve_coin(name: str, known: Any) -> str | None:
    """Hyperliquid's own spelling of ``name`` among ``known`` coin names: exact, then ignoring case,
    then ``1000PEPE`` as Hyperliquid's ``kPEPE`` (its thousand-unit coins); None when absent."""
    names = list(known)
    if name in names:
        return name
    folded = {n.upper(): n for n in names}
    up = name.upper()
    if up in folded:
        return folded[up]
    if up.startswith("1000") and ("K" + up[4:]) in folded:
        return folded["K" + up[4:]]
    return None


def canonical_symbol(coin: str) -> str:
    """liqmap's pair for a Hyperliquid coin (its perpetuals are USDC-margined; liqmap names pairs as
    the other venues do): ``BTC`` -> ``BTCUSDT``, ``kPEPE`` (thousands) -> ``1000PEPEUSDT``."""
    if len(coin) > 1 and coin[0] == "k" and coin[1:].isupper():
        return f"1000{coin[1:]}USDT"
    return f"{coin.upper()}USDT"


def trade_users(trades: Any) -> tuple[list[str], int]:
    """The addresses named by a list of trades (``users``: [buyer, seller]) and how many items were malformed."""
    if not isinstance(trades, list):
        return [], 1
    users: list[str] = []
    bad = 0
    for t in trades:
        pair = t.get("users") if isinstance(t, dict) else None
        if not (isinstance(pair, list) and len(pair) == 2):
            bad += 1
            continue
        ok = [a for a in (normalise_address(u) for u in pair) if a is not None]
        if len(ok) != 2:
            bad += 1
        users.extend(ok)
    return users, bad


def parse_vault_addresses(doc: Any) -> list[str]:
    """The vault's own address and its child vaults' (the accounts that hold its positions)."""
    ep = "vaultDetails"
    if doc is None:
        raise SourceError(VENUE, ep, "no such vault (the answer is null)")
    body = expect_dict(doc, VENUE, ep)
    found = [normalise_address(body.get("vaultAddress"))]
    rel = body.get("relationship")
    if isinstance(rel, dict) and isinstance(rel.get("data"), dict):
        children = rel["data"].get("childAddresses")
        if isinstance(children, list):
            found += [normalise_address(c) for c in children[:1000]]
    return [a for a in dict.fromkeys(found) if a is not None]
