"""A plain, loop-by-loop reference implementation of the model, for checking the vectorized one.

It walks the bars in time order with a list of active levels, exactly as the model's docstring
describes: consume, open (sweeping at once what is beyond the bar's close), close. It is slow and
obvious on purpose. It shares only the per-bar input formulas (entry prices, side shares, leverage
grid, margin table) with the real model; the sweeping, shrinking and binning are independent.
"""

from __future__ import annotations

import math

import numpy as np

from analysis.bars import Bars
from analysis.margin import table_for
from analysis.model import ModelParams, entry_prices, side_shares


def reference_levels(bars: Bars, params: ModelParams):
    """Return (active levels, swept_long, swept_short); levels are dicts with side/price/notional/tier/t0."""
    n = len(bars)
    oi = bars.oi_usd
    d_oi = np.zeros(n)
    d_oi[1:] = np.diff(oi) * params.oi_scale
    entry, entry_w = entry_prices(bars, params.entry_points)
    long_share, _ = side_shares(bars, d_oi, entry.mean(axis=1), params)
    lev, lev_w, lev_tier = params.leverage_grid()
    table = params.margin_table or table_for(bars.symbol)
    mmr = [table.mmr_for(float(x), params.typical_position_usd) for x in lev]

    active: list[dict] = []
    swept_long = [0.0] * n
    swept_short = [0.0] * n
    for t in range(n):
        # 1. consume
        keep = []
        for lv in active:
            if lv["side"] == "long" and bars.low[t] <= lv["price"]:
                swept_long[t] += lv["notional"]
            elif lv["side"] == "short" and bars.high[t] >= lv["price"]:
                swept_short[t] += lv["notional"]
            else:
                keep.append(lv)
        active = keep
        # 2. open
        if t > 0 and oi[t] > oi[t - 1]:
            for j in range(entry_w.size):
                e = entry[t, j]
                for k in range(lev.size):
                    for side, share in (("long", long_share[t]), ("short", 1.0 - long_share[t])):
                        if side == "long":
                            price = e * (1 - 1 / lev[k]) / (1 - mmr[k])
                        else:
                            price = e * (1 + 1 / lev[k]) / (1 + mmr[k])
                        notional = d_oi[t] * share * entry_w[j] * lev_w[k]
                        beyond = price >= bars.close[t] if side == "long" else price <= bars.close[t]
                        if beyond:
                            (swept_long if side == "long" else swept_short)[t] += notional
                        else:
                            active.append(dict(side=side, price=price, notional=notional, tier=int(lev_tier[k]), t0=t))
        # 3. close
        if t > 0 and oi[t] < oi[t - 1]:
            f = oi[t] / oi[t - 1]
            for lv in active:
                lv["notional"] *= f
    return active, np.array(swept_long), np.array(swept_short)


def reference_grid(active: list[dict], price: float, width: float, n_tiers: int):
    """Bin active levels like the model does: (grid_lo, long[bins, tiers], short[bins, tiers])."""
    prices = [lv["price"] for lv in active] + [price]
    lo = math.floor(min(prices) / width) * width
    n_bins = int(math.floor((max(prices) - lo) / width)) + 1
    long = np.zeros((n_bins, n_tiers))
    short = np.zeros((n_bins, n_tiers))
    for lv in active:
        b = min(max(int(math.floor((lv["price"] - lo) / width)), 0), n_bins - 1)
        (long if lv["side"] == "long" else short)[b, lv["tier"]] += lv["notional"]
    return lo, long, short
