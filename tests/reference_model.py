"""A plain, loop-by-loop reference implementation of the model, for checking the vectorized one.

It walks the bars in time order with a list of active levels, exactly as the model's docstring
describes: consume, close (older positions shrink), open (sweeping at once what is beyond the
bar's close). It is slow and obvious on purpose. It shares only the per-bar input formulas (level
slots: entry prices, leverages and tiers; side shares; the margin table) with the real model; the
OI flow, turnover, sweeping, shrinking and binning are independent.
"""

from __future__ import annotations

import math

import numpy as np

from analysis.bars import Bars
from analysis.model import ModelParams, fit_leverage, level_inputs, margin_table_of, side_shares


def reference_activity(bars: Bars, params: ModelParams) -> list[float]:
    """Turnover multiplier per bar: range^p over the weighted mean of range^p of the bars before, capped."""
    n = len(bars)
    out = [1.0] * n
    if params.turnover_activity == 0 or params.holding_days <= 0:
        return out
    decay = math.exp(-bars.interval_ms / (params.holding_days * 86_400_000.0))
    num = den = 0.0  # weighted sum of the earlier bars' range^p, and of their weights
    for t in range(n):
        x = ((bars.high[t] - bars.low[t]) / bars.close[t]) ** params.turnover_activity
        if den > 0 and num > 0:
            out[t] = min(x / (num / den), params.max_activity)
        num = num * decay + x
        den = den * decay + 1.0
    return out


def reference_levels(bars: Bars, params: ModelParams):
    """Return (active levels, swept_long, swept_short); levels are dicts with side/price/notional/tier/t0."""
    n = len(bars)
    params = fit_leverage(params, margin_table_of(params, bars.symbol, bars.price))  # the symbol's tiers and cap
    coin = params.oi_units == "coin"
    q = [bars.oi_usd[t] / bars.close[t] if coin else bars.oi_usd[t] for t in range(n)]
    opened = np.zeros(n)  # USD notional opened in each bar
    shrink = np.ones(n)  # factor on positions that were already open
    act = reference_activity(bars, params)
    for t in range(1, n):
        tau = 0.0
        if params.holding_days > 0:
            rate = (bars.time[t] - bars.time[t - 1]) / (params.holding_days * 86_400_000.0) * act[t]
            tau = 1.0 - math.exp(-rate)
        dq = q[t] - q[t - 1]
        opened[t] = (max(dq, 0.0) + tau * q[t - 1]) * (bars.close[t] if coin else 1.0) * params.oi_scale
        shrink[t] = max(((1.0 - tau) * q[t - 1] - max(-dq, 0.0)) / q[t - 1], 1e-12)
    entry, lev, lev_tier, slot_w = level_inputs(bars, params)
    long_share, _ = side_shares(bars, opened, entry.mean(axis=1), params)
    table = params.margin_table
    assert table is not None

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
        # 2. close: positions already open shrink (OI fell, and/or turnover)
        for lv in active:
            lv["notional"] *= shrink[t]
        # 3. open
        if opened[t] > 0:
            for k in range(slot_w.size):
                e, lv_k = entry[t, k], lev[t, k]
                mmr = table.mmr_for(float(lv_k), params.typical_position_usd)
                for side, share in (("long", long_share[t]), ("short", 1.0 - long_share[t])):
                    # entry times one factor, grouped as the model groups it: a level that sits
                    # exactly on a bar's close or high (100.5 * 1.02 / 1.005 = 102) must round to
                    # the same float in both, or the ties below put it in different bars
                    if side == "long":
                        price = e * ((1 - 1 / lv_k) / (1 - mmr))
                    else:
                        price = e * ((1 + 1 / lv_k) / (1 + mmr))
                    notional = opened[t] * share * slot_w[k]
                    rule = params.open_bar_sweep
                    if side == "long":
                        ref = bars.low[t] if rule == "range" else bars.close[t]
                        beyond = rule != "none" and price >= ref
                    else:
                        ref = bars.high[t] if rule == "range" else bars.close[t]
                        beyond = rule != "none" and price <= ref
                    if beyond:
                        (swept_long if side == "long" else swept_short)[t] += notional
                    else:
                        active.append(dict(side=side, price=price, notional=notional, tier=int(lev_tier[t, k]), t0=t))
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
