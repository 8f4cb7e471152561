"""Synthetic measured positions for the measured-layer tests (SYNTHETIC: made up, not recorded)."""

from __future__ import annotations

import random

from analysis.measured.shapes import AssetCtx, Position
from analysis.measured.snapshot import Snapshot

T0 = 1_764_000_000_000


def address(i: int) -> str:
    return "0x" + f"{i:040x}"


def synthetic_snapshot(n: int = 400, *, price: float = 90_000.0, oi_coins: float = 30_000.0, seed: int = 7,
                       coin: str = "BTC", time_ms: int = T0) -> Snapshot:
    """``n`` made-up positions: leverage 2..50x, isolated-style liquidation prices, sizes log-uniform."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lev = rng.choice([2, 3, 5, 10, 20, 25, 40, 50])
        long = rng.random() < 0.55
        entry = price * (1 + rng.gauss(0, 0.03))
        value = 10 ** rng.uniform(3, 6.5)
        szi = value / price * (1 if long else -1)
        liq = entry * (1 - 1 / lev) / (1 - 0.005) if long else entry * (1 + 1 / lev) / (1 + 0.005)
        if i % 25 == 0:
            liq = None  # enough margin: no liquidation price
        out.append(Position(address(i + 1), coin, szi, entry, liq, value, "cross" if i % 3 else "isolated", float(lev),
                            value / lev, time_ms - rng.randint(0, 1_800_000)))
    return Snapshot(time_ms, (coin,), {coin: AssetCtx(coin, price, oi_coins)}, tuple(out),
                    {"tracked": n, "polled": n, "with_positions": n})
