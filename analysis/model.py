"""The liquidation model: rebuild leveraged positions from open-interest flow, then remove the
ones price has reached.

For each bar, in time order (see docs/methodology.md for the why of every step):

1. **Consume.** Long levels at or above the bar's low and short levels at or below its high are
   liquidated: removed, and their notional booked as *swept* in that bar.
2. **Close.** Positions already open shrink: by the OI decline (``q_t / q_{t-1}`` when OI fell,
   ``q`` the OI in contracts by default) and by turnover (a share ``1 - exp(-a_t*dt/holding_days)``
   of every position closes each bar, ``a_t`` the bar's activity: its range relative to the
   recent typical range, to the power ``turnover_activity``).
3. **Open.** The OI increase plus the turnover reopens, times ``oi_scale``, opens at the bar's
   entry prices, split between longs and shorts by the side model and spread over a continuous
   leverage distribution. Each lands at its isolated-margin liquidation price
   ``long: E(1-1/L)/(1-mmr)``, ``short: E(1+1/L)/(1+mmr)``. A level already at or beyond the
   bar's close is swept in the same bar (every entry of a bar happens before its close).

The implementation is vectorized: a level opened at bar t0 is swept at the first later bar whose
low (high) crosses it, found for all levels at once by binary lifting over a sparse table of
range minima; its notional then is its weight times the product of shrink factors since t0.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time as _time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import numpy as np

from .bars import Bars, iso
from .errors import DataError, InputError
from .liqmap import GRID_PCT, MAX_BINS, LiquidationMap, PricePath, SweptSeries, bin_levels, left_off_note, nice_width, price_grid
from .margin import MarginTable, table_for

__all__ = [
    "ModelParams", "SideModel", "OiUnits", "OpenBarSweep", "build_map", "ModelRun", "run_model", "map_from_run",
    "Levels", "build_levels", "side_shares", "entry_prices", "activity", "oi_flow", "FlowInputs", "flow_inputs",
    "flow_from_inputs", "level_inputs", "mmr_of", "clip_wicks",
    "parse_overrides", "split_overrides", "non_default_params", "fit_leverage", "ExcessLeverage", "margin_table_of",
    "Slots", "SlotSweeps", "slot_prices", "levels_from_slots", "LevelIndex", "select_rows", "sweep_rule", "mmr_steps",
    "run_with_slots",
]

SideModel = Literal["auto", "taker", "neutral", "price_direction"]
OiUnits = Literal["usd", "coin"]
OpenBarSweep = Literal["close", "none", "range"]
ExcessLeverage = Literal["proportional", "highest"]


MAX_TIERS = 20  # leverage tiers a parameter set may list


@dataclass(frozen=True)
class ModelParams:
    """Every assumption of the model, with its default. See docs/methodology.md for the why.

    The defaults are the settings the backtest against realized liquidations supports
    (docs/methodology.md, "Backtest"); the live map uses them too.

    leverage / leverage_weights
        Leverage tiers and the share of new notional at each (normalised to sum to 1).
    leverage_spread
        0 keeps discrete tiers. Above 0 each tier L becomes a band ``L*exp(+-leverage_spread)``
        (log units), so the distribution is continuous; 0.4 makes neighbouring bands of the default
        tiers meet (half the log-distance between them is 0.35..0.46). Levels keep their tier's label.
    levels_per_hour
        Lattice mode (> 0, the default): about this many levels per hour and side, at least one per
        tier and bar (5m bars: 5 per bar; 1h bars: 60). Each bar's levels sit at stratified
        positions within each tier's band and, with ``entry_points > 1``, over the bar's range,
        shifted from bar to bar by a low-discrepancy sequence of the bar's open time, so the
        continuous distribution is covered over time at a fixed cost per hour.
        0 is grid mode: every bar gets the full grid of ``entry_points`` x ``leverage_nodes`` x tiers.
    leverage_nodes
        Grid mode only: leverages per tier, spaced evenly in log-space across the band.
    entry_points
        1: every position of a bar opens at its VWAP (typical price without volume). N > 1: entries
        spread over the bar's low..high range (grid mode: N evenly spaced points; lattice mode:
        continuously, N only switches the spread on).
    side_model
        How new notional splits into longs and shorts: ``taker`` (aggressive flow decides),
        ``neutral`` (50/50), ``price_direction`` (the bar's body over its range), ``auto`` (taker
        when the bars carry taker flow, else neutral).
    taker_net_scale
        Sensitivity of the taker model: long share = 0.5 + 0.5*tanh(scale * net_taker_usd / opened).
    oi_units
        ``coin``: OI flow is measured in contracts (OI in USD / close), so a price move alone opens
        or closes nothing; opened contracts are valued at the close. ``usd``: raw USD OI changes,
        which also move with price (mark-to-market).
    holding_days
        Mean holding time of a position. Each bar, the share ``1 - exp(-dt/holding_days)`` of every
        active position closes and the same amount reopens at the bar's prices (turnover that net
        OI does not show). 0 switches turnover off: positions live until OI falls or price hits them.
    turnover_activity, max_activity
        Turnover follows trading activity: the rate ``dt/holding_days`` is multiplied by the bar's
        activity ``x_t / x_ref``, ``x_t = ((high - low)/close)^turnover_activity`` and ``x_ref`` the
        exponentially weighted mean of ``x`` over the bars before it (time constant
        ``holding_days``), so activity averages about 1 and the mean holding time stays about
        ``holding_days``. 2 follows the mixture-of-distributions view of prices (a bar's variance,
        so its squared range, grows with the volume traded in it); 0 is a constant rate. Activity
        is capped at ``max_activity``, so one flash wick cannot turn the whole book over.
    oi_scale
        Multiplies opened notional, e.g. to scale one venue's OI to the whole market.
    open_bar_sweep
        Which levels are swept in the bar that opens them: ``close`` (levels at or beyond the bar's
        close: every entry happens before the close), ``range`` (at or beyond its low/high), ``none``.
    typical_position_usd, margin_table
        Which maintenance-margin bracket prices the levels; ``margin_table=None`` uses the shipped
        table for the symbol. A live report passes the venue's own tiers here (``analysis.sources.tiers``).
    max_leverage, excess_leverage
        The cap is ``max_leverage`` or the margin table's maximum (the symbol's real maximum when the
        table is the venue's), whichever is lower. Leverage tiers above it are dropped and their
        weight goes to the remaining tiers: ``proportional`` (in proportion to their weights) or
        ``highest`` (all to the highest remaining tier). With no tier at or below it, one tier at the
        cap itself carries all the weight. The spread band of a kept tier is not clipped (a tier at
        the cap still spreads above it by ``leverage_spread``), so a symbol whose maximum is at or
        above the highest tier is priced exactly as before. See :func:`fit_leverage`.
    bin_pct, bin_width
        Price-grid bin width: ``bin_width`` if given, else a round number near ``price * bin_pct``.
    grid_pct, max_bins
        The map covers levels within ``grid_pct`` of the current price (1.0: 0 .. 2x price); levels
        beyond are left off and the notes say how much notional that was. A grid needing more than
        ``max_bins`` bins is refused (DataError), so memory never depends on the numbers.
    max_wick
        A bar whose high is more than ``max_wick`` times ``max(open, close)``, or whose low is less
        than ``min(open, close) / max_wick``, holds a bad print: that wick is clipped to the body
        before the model runs, and the notes list it. 100 keeps real crashes of -99% and spikes of
        100x; ``inf`` switches clipping off.
    min_bars, max_gap_bars
        Validation: shortest usable series, longest tolerated run of missing bars.
    """

    leverage: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0, 100.0)
    leverage_weights: tuple[float, ...] = (0.30, 0.30, 0.20, 0.12, 0.08)
    leverage_spread: float = 0.4
    levels_per_hour: float = 60.0
    leverage_nodes: int = 3
    entry_points: int = 3
    side_model: SideModel = "auto"
    taker_net_scale: float = 1.0
    oi_units: OiUnits = "coin"
    holding_days: float = 14.0
    turnover_activity: float = 2.0
    max_activity: float = 100.0
    oi_scale: float = 1.0
    open_bar_sweep: OpenBarSweep = "close"
    typical_position_usd: float = 100_000.0
    margin_table: MarginTable | None = None
    max_leverage: float = 200.0
    excess_leverage: ExcessLeverage = "proportional"
    bin_pct: float = 0.001
    bin_width: float | None = None
    grid_pct: float = GRID_PCT
    max_bins: int = MAX_BINS
    max_wick: float = 100.0
    min_bars: int = 12
    max_gap_bars: int = 6

    def __post_init__(self) -> None:
        if len(self.leverage) == 0 or len(self.leverage) != len(self.leverage_weights):
            raise InputError("leverage tiers and leverage_weights must be non-empty and of equal length")
        if any(not (1.0 <= lv <= 200.0) for lv in self.leverage):
            raise InputError("leverage tiers must lie between 1x and 200x")
        if any(w < 0 for w in self.leverage_weights) or sum(self.leverage_weights) <= 0:
            raise InputError("leverage_weights must be non-negative and not all zero")
        if self.side_model not in ("auto", "taker", "neutral", "price_direction"):
            raise InputError(f"unknown side model {self.side_model!r}; use auto, taker, neutral or price_direction")
        if self.entry_points < 1 or self.leverage_nodes < 1:
            raise InputError("entry_points and leverage_nodes must be at least 1")
        if not (0 <= self.leverage_spread <= 2):
            raise InputError("leverage_spread must be between 0 and 2 (log units)")
        if self.oi_scale <= 0 or self.bin_pct <= 0 or (self.bin_width is not None and self.bin_width <= 0):
            raise InputError("oi_scale, bin_pct and bin_width must be positive")
        if self.oi_units not in ("coin", "usd"):
            raise InputError(f"unknown oi_units {self.oi_units!r}; use coin or usd")
        if not (1.0 <= self.max_leverage <= 200.0):
            raise InputError("max_leverage must lie between 1x and 200x")
        if self.excess_leverage not in ("proportional", "highest"):
            raise InputError(f"unknown excess_leverage {self.excess_leverage!r}; use proportional or highest")
        if self.open_bar_sweep not in ("close", "range", "none"):
            raise InputError(f"unknown open_bar_sweep {self.open_bar_sweep!r}; use close, range or none")
        if not (self.holding_days >= 0 and math.isfinite(self.holding_days)):
            raise InputError("holding_days must be a finite number >= 0 (0 switches turnover off)")
        if not (0 <= self.turnover_activity <= 4):
            raise InputError("turnover_activity must be between 0 (constant turnover) and 4")
        if not (1 <= self.max_activity <= 1e6):
            raise InputError("max_activity must be between 1 and 1,000,000")
        if not (math.isfinite(self.grid_pct) and self.grid_pct > 0):
            raise InputError("grid_pct must be a positive fraction of the price (1.0 = 100%)")
        if not (1 <= self.max_bins <= 10_000_000):
            raise InputError("max_bins must be between 1 and 10,000,000")
        if not self.max_wick > 1:
            raise InputError("max_wick must be above 1 (inf switches wick clipping off)")
        if not (0 <= self.levels_per_hour <= 10_000):
            raise InputError("levels_per_hour must be between 0 (grid mode) and 10000")
        # bounds on the knobs that size the work, so no setting can make memory or time unbounded
        if len(self.leverage) > MAX_TIERS:
            raise InputError(f"at most {MAX_TIERS} leverage tiers")
        if self.entry_points > 64 or self.leverage_nodes > 64:
            raise InputError("entry_points and leverage_nodes must be at most 64")
        if not (1 <= self.min_bars <= 1_000_000 and 0 <= self.max_gap_bars <= 1_000_000):
            raise InputError("min_bars must be 1..1,000,000 and max_gap_bars 0..1,000,000")
        if not (1e-5 <= self.bin_pct <= 0.5):
            raise InputError("bin_pct must be between 0.00001 and 0.5")
        if not (0 < self.oi_scale <= 1e6 and 0 <= self.taker_net_scale <= 1e6 and 0 <= self.typical_position_usd <= 1e12):
            raise InputError("oi_scale must be in (0, 1e6], taker_net_scale in [0, 1e6], typical_position_usd in [0, 1e12]")

    @property
    def tier_labels(self) -> tuple[str, ...]:
        return tuple(f"{lv:g}x" for lv in self.leverage)

    def leverage_grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(leverage, weight, tier index) of every leverage node; weights sum to 1."""
        tiers = np.asarray(self.leverage, dtype=float)
        w = np.asarray(self.leverage_weights, dtype=float)
        w = w / w.sum()
        if self.leverage_spread == 0 or self.leverage_nodes == 1:
            return tiers, w, np.arange(tiers.size)
        u = np.linspace(-1.0, 1.0, self.leverage_nodes)
        lev = np.clip(tiers[:, None] * np.exp(self.leverage_spread * u)[None, :], 1.0, 200.0)
        weights = np.repeat(w / self.leverage_nodes, self.leverage_nodes).reshape(lev.shape)
        tier = np.repeat(np.arange(tiers.size), self.leverage_nodes)
        return lev.ravel(), weights.ravel(), tier

    def with_overrides(self, items: Iterable[str]) -> ModelParams:
        """A copy with ``key=value`` overrides applied (see :func:`parse_overrides`)."""
        return replace(self, **parse_overrides(items, self))

    def non_default(self) -> dict[str, Any]:
        """The described values (see :meth:`describe`) that differ from the defaults."""
        return non_default_params(self.describe())

    def describe(self) -> dict:
        """The parameters as plain JSON-able values (for reports and the JSON output)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # every value immutable: asdict's copies not needed
        d["margin_table"] = self.margin_table.name if self.margin_table else "default for symbol"
        d["leverage"] = list(self.leverage)
        d["leverage_weights"] = list(self.leverage_weights)
        return d


# -- overrides (liqmap backtest/report --set, LIQMAP_MODEL) ----------------------------------------

#: Choices of the named (Literal) parameters.
_CHOICES: dict[str, tuple[str, ...]] = {
    "side_model": get_args(SideModel), "oi_units": get_args(OiUnits), "open_bar_sweep": get_args(OpenBarSweep),
    "excess_leverage": get_args(ExcessLeverage),
}
#: Parameters that may be ``none`` and those that may be ``inf`` (documented in ModelParams).
_NONE_OK = ("bin_width",)
_INF_OK = ("max_wick",)
_NOT_SETTABLE = ("margin_table",)


def _expected(key: str, default: Any) -> str:
    if key in _CHOICES:
        return "one of " + ", ".join(_CHOICES[key])
    if isinstance(default, tuple):
        return "comma-separated finite numbers, e.g. 5,10,25"
    if isinstance(default, int) and not isinstance(default, bool):
        return "an integer"
    extra = " or none" if key in _NONE_OK else " or inf" if key in _INF_OK else ""
    return f"a finite number{extra}"


def _number(key: str, raw: str) -> float:
    value = float(raw)  # ValueError for text; accepts nan/inf, refused below
    if math.isnan(value) or (math.isinf(value) and not (key in _INF_OK and value > 0)):
        raise ValueError(raw)
    return value


def _whole(raw: str) -> int:
    """An integer, also written as ``3.0``; ValueError for anything else (long strings too: no knob needs them)."""
    value = float(raw) if len(raw) <= 40 else math.nan
    if not math.isfinite(value) or value != int(value):
        raise ValueError(raw)
    return int(value)


def parse_overrides(items: Iterable[str], base: ModelParams | None = None) -> dict[str, Any]:
    """``["holding_days=7", "leverage=5,10,25"]`` -> ``{"holding_days": 7.0, "leverage": (5.0, 10.0, 25.0)}``.

    The one parser of model overrides (``liqmap backtest --set``, ``liqmap report --set`` and the
    bot's ``LIQMAP_MODEL``). Values are read as the field's type; an unknown key, a value of the
    wrong type, ``nan``, ``inf`` (except ``max_wick``) or ``none`` (except ``bin_width``) is an
    :class:`InputError` naming the key and what it expects. Ranges are checked by ``ModelParams``.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(ModelParams)}
    settable = [k for k in defaults if k not in _NOT_SETTABLE]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or key not in settable:
            raise InputError(f"cannot set {str(item)[:40]!r}; write key=value with a key among: {', '.join(settable)}")
        default = defaults[key]
        try:
            value: Any
            if key in _CHOICES:
                if raw not in _CHOICES[key]:
                    raise ValueError(raw)
                value = raw
            elif isinstance(default, tuple):
                value = tuple(_number(key, x.strip()) for x in raw.split(","))
            elif isinstance(default, int) and not isinstance(default, bool):
                value = _whole(raw)
            elif key in _NONE_OK and raw.lower() == "none":
                value = None
            else:
                value = _number(key, raw)
        except ValueError:
            raise InputError(f"{key}: cannot read {raw[:20]!r}; expected {_expected(key, default)}") from None
        out[key] = value
    replace(base or ModelParams(), **out)  # range checks now, naming the parameter (InputError)
    return out


_ITEM_SPLIT = re.compile(r"[;\n]|,(?=\s*[A-Za-z_]\w*\s*=)")


def split_overrides(text: str) -> list[str]:
    """``"holding_days=7, leverage=5,10"`` -> ``["holding_days=7", "leverage=5,10"]``.

    Items are separated by ``;``, a newline, or a comma followed by ``key=`` (so tuple values keep
    their commas). Empty text gives no items.
    """
    return [part.strip() for part in _ITEM_SPLIT.split(str(text)) if part.strip()]


@functools.cache
def _default_described() -> dict[str, Any]:
    return ModelParams().describe()


def non_default_params(described: Mapping[str, Any]) -> dict[str, Any]:
    """The configured parameters that differ from the defaults.

    ``described`` is a map's ``params`` (which carries them as ``non_default_params``, set by
    :func:`build_map`) or a ``ModelParams.describe()`` dict; other keys are ignored.
    """
    stored = described.get("non_default_params")
    if isinstance(stored, Mapping):
        return dict(stored)
    defaults = _default_described()
    # the margin table is chosen per venue and symbol (its own block in the map's params), not configured
    return {k: v for k, v in described.items() if k in defaults and k != "margin_table" and v != defaults[k]}


# -- the per-bar inputs ----------------------------------------------------------------------------

def entry_prices(bars: Bars, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Entry prices, shape (n_bars, points), and their weights (points,).

    One point: VWAP (quote volume / volume) where the bar has volume, else the typical price
    (H+L+C)/3. Several: evenly spaced over each bar's low..high range, equal weights.
    """
    if points == 1:
        typical = (bars.high + bars.low + bars.close) / 3.0
        entry = typical
        if bars.volume is not None and bars.quote_volume is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                vwap = bars.quote_volume / bars.volume
            ok = (bars.volume > 0) & np.isfinite(vwap) & (vwap >= bars.low) & (vwap <= bars.high)
            entry = np.where(ok, vwap, typical)
        return entry[:, None], np.ones(1)
    q = (np.arange(points) + 0.5) / points
    return bars.low[:, None] + q[None, :] * (bars.high - bars.low)[:, None], np.full(points, 1.0 / points)


def side_shares(bars: Bars, d_oi: np.ndarray, entry: np.ndarray, params: ModelParams) -> tuple[np.ndarray, str]:
    """Long share of each bar's new notional (shorts get the rest), and the side model used."""
    model = params.side_model
    has_taker = bars.taker_net is not None or (bars.taker_buy is not None and bars.volume is not None)
    if model == "auto":
        model = "taker" if has_taker else "neutral"
    if model == "neutral":
        return np.full(len(bars), 0.5), model
    if model == "price_direction":
        rng = bars.high - bars.low
        with np.errstate(divide="ignore", invalid="ignore"):
            body = np.where(rng > 0, (bars.close - bars.open) / rng, 0.0)
        return 0.5 + 0.5 * np.clip(body, -1.0, 1.0), model
    if not has_taker:
        raise DataError(f"{bars.venue} {bars.symbol}: the taker side model needs taker flow, which these bars lack")
    net = bars.taker_net if bars.taker_net is not None else 2.0 * bars.taker_buy - bars.volume
    net_usd = net * entry
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(d_oi > 0, params.taker_net_scale * net_usd / d_oi, 0.0)
    return 0.5 + 0.5 * np.tanh(x), model


def activity(bars: Bars, params: ModelParams) -> np.ndarray:
    """Each bar's turnover multiplier ``min(x_t / x_ref, max_activity)`` (see ``turnover_activity``).

    ``x = (relative range)^turnover_activity``; ``x_ref`` is its exponentially weighted mean over
    the bars *before* t (weights ``(1-k)^age``, ``k = 1 - exp(-interval/holding_days)``, normalised
    over the bars there are), so the multiplier is causal. The first bar, and any bar with no
    earlier range, gets 1.
    """
    if params.turnover_activity == 0 or params.holding_days <= 0 or len(bars) == 0:
        return np.ones(len(bars))
    return _activity_of(_range_x(bars, params), bars.interval_ms, params)


def _range_x(bars: Bars, params: ModelParams) -> np.ndarray:
    """Per bar: ``x = (relative range)^turnover_activity`` (the bar's own prices only)."""
    return ((bars.high - bars.low) / bars.close) ** params.turnover_activity


def _activity_of(x: np.ndarray, interval_ms_: int, params: ModelParams) -> np.ndarray:
    """:func:`activity` from the bars' ``x`` (:func:`_range_x`), turnover on."""
    n = x.size
    log_d = -interval_ms_ / (params.holding_days * 86_400_000.0)
    ewm = _decayed_sum(x, log_d) / _weight_sums(n, log_d)
    ref = np.empty(n)
    ref[0] = 0.0
    ref[1:] = ewm[:-1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = np.where(ref > 0, x / np.where(ref > 0, ref, 1.0), 1.0)
    return np.minimum(out, params.max_activity)


@functools.lru_cache(maxsize=32)
def _powers(block: int, log_d: float) -> tuple[np.ndarray, np.ndarray]:
    """``(d^k, d^-k)`` for ``k < block`` (read-only; cached: every run of a window size and interval uses the same)."""
    k = np.arange(block, dtype=np.float64)
    down, up = np.exp(k * log_d), np.exp(-k * log_d)
    down.flags.writeable = up.flags.writeable = False
    return down, up


@functools.lru_cache(maxsize=32)
def _weight_sums(n: int, log_d: float) -> np.ndarray:
    """``sum_{j<t} d^j`` for ``t = 1..n``: the EWM's normalisation (read-only, cached like :func:`_powers`)."""
    t = np.arange(1, n + 1, dtype=np.float64)
    out = np.expm1(t * log_d) / math.expm1(log_d)
    out.flags.writeable = False
    return out


def _decayed_sum(x: np.ndarray, log_d: float) -> np.ndarray:
    """``s_t = sum_{j<=t} d^(t-j) x_j`` for ``x >= 0``, ``d = exp(log_d) < 1``, without a loop over bars.

    Within a chunk ``s_{c+i} = d^i * cumsum(x_{c+k} d^-k)_i + d^(i+1) s_{c-1}``; chunks are short
    enough that ``d^-k`` stays below 1e87, so nothing overflows and (all terms positive) nothing cancels.
    """
    n = x.size
    if log_d < -27.0:  # d < 2e-12: earlier bars weigh nothing
        return x.astype(np.float64, copy=True)
    block = max(1, min(n, int(200.0 / -log_d)))
    down, up = _powers(block, log_d)
    out = np.empty(n)
    carry = 0.0
    for c in range(0, n, block):
        seg = x[c : c + block]
        m = seg.size
        out[c : c + m] = np.cumsum(seg * up[:m]) * down[:m] + carry * math.exp(log_d) * down[:m]
        carry = float(out[c + m - 1])
    return out


def oi_flow(bars: Bars, params: ModelParams) -> tuple[np.ndarray, np.ndarray]:
    """Per bar: USD notional of positions opened, and the factor by which older positions shrink.

    With turnover share tau (see ``holding_days`` and :func:`activity`) and OI quantity q (contracts or USD):
    opened = max(dq, 0) + tau*q[t-1]; shrink = ((1-tau)*q[t-1] - max(-dq, 0)) / q[t-1].
    Survivors plus opened equal q[t], so the model's book follows OI.
    """
    return flow_from_inputs(flow_inputs(bars, params), bars.interval_ms, params)


@dataclass(frozen=True, eq=False)
class FlowInputs:
    """What :func:`oi_flow` needs of each bar on its own, ``(n,)`` each: the OI quantity ``q``, its rise
    ``up`` and fall ``down`` since the bar before, the time step as a share of ``holding_days``
    (``step``), the activity's ``x`` (:func:`_range_x`; None when constant) and the USD value of one
    unit of ``q`` (``usd``). Index 0 of the pairwise ones is unused. Slices of a series' inputs are
    the inputs of its slices, so an incremental run computes only its new bars' (the rest of the
    flow depends on where the window starts: :func:`flow_from_inputs`)."""

    q: np.ndarray
    up: np.ndarray
    down: np.ndarray
    step: np.ndarray | None
    x: np.ndarray | None
    usd: np.ndarray | None


def flow_inputs(bars: Bars, params: ModelParams, prev: tuple[float, int] | None = None) -> FlowInputs:
    """The per-bar inputs of ``bars``; ``prev``: ``q`` and time of the bar before them, for the
    pairwise ones of the first (else its are 0)."""
    q = bars.oi_usd / bars.close if params.oi_units == "coin" else bars.oi_usd
    if prev is not None:
        dq, dt = np.diff(q, prepend=prev[0]), np.diff(bars.time, prepend=prev[1])
        up, down = np.maximum(dq, 0.0), np.maximum(-dq, 0.0)
    else:
        dq, dt = np.diff(q), np.diff(bars.time, prepend=bars.time[:1])
        up, down = np.zeros(q.size), np.zeros(q.size)
        up[1:], down[1:] = np.maximum(dq, 0.0), np.maximum(-dq, 0.0)
    step = None
    if params.holding_days > 0:
        step = dt / (params.holding_days * 86_400_000.0)
    x = _range_x(bars, params) if params.turnover_activity != 0 and params.holding_days > 0 else None
    return FlowInputs(q, up, down, step, x, bars.close if params.oi_units == "coin" else None)


def flow_from_inputs(inp: FlowInputs, interval_ms_: int, params: ModelParams) -> tuple[np.ndarray, np.ndarray]:
    """:func:`oi_flow` of a window from its bars' :class:`FlowInputs`."""
    q = inp.q
    n = q.size
    tau: float | np.ndarray = 0.0
    if params.holding_days > 0 and inp.step is not None:  # per actual time step, so a gap counts all its missing bars
        act = np.ones(n) if inp.x is None or n == 0 else _activity_of(inp.x, interval_ms_, params)
        rate = inp.step[1:] * act[1:]
        tau = -np.expm1(-rate)
    opened = np.zeros(n)
    opened[1:] = inp.up[1:] + tau * q[:-1]
    shrink = np.ones(n)
    shrink[1:] = np.maximum(((1.0 - tau) * q[:-1] - inp.down[1:]) / q[:-1], 1e-12)
    usd = inp.usd if inp.usd is not None else 1.0
    return opened * usd * params.oi_scale, shrink


# -- levels ---------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Levels:
    """Every level the model opened, flat arrays of equal length (one side)."""

    t0: np.ndarray
    price: np.ndarray
    weight: np.ndarray
    tier: np.ndarray


# R2 low-discrepancy constants (1/phi2, 1/phi2^2, phi2 the plastic number): bar i's sample set is
# shifted by frac(i*R2), so consecutive bars fill the (leverage, entry) square evenly.
_R2 = (0.7548776662466927, 0.5698402909980532)


def _lattice_multiplier(k: int) -> int:
    """Generator of a rank-1 (Fibonacci-like) lattice of ``k`` points: near k/phi, coprime with k."""
    if k <= 2:
        return 1
    a = max(1, int(round(k / 1.618033988749895)))
    while math.gcd(a, k) != 1:
        a += 1
    return a


def samples_per_bar(params: ModelParams, interval_ms_: int) -> int:
    """Levels opened per bar and side in lattice mode (0 in grid mode)."""
    if params.levels_per_hour <= 0:
        return 0
    return max(1, int(round(params.levels_per_hour * interval_ms_ / 3_600_000)))


def level_inputs(bars: Bars, params: ModelParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Entry price, leverage and tier of every level slot, each (n_bars, K), and slot weights (K,).

    Grid mode (``levels_per_hour == 0``): the product of :func:`entry_prices` and
    :meth:`ModelParams.leverage_grid`, the same for every bar. Lattice mode: K slots per bar whose
    (leverage quantile, entry quantile) points are a stratified lattice shifted per bar by a
    low-discrepancy sequence of the bar's absolute index (its open time / interval), so the same
    bar gets the same levels whatever the window, and over many bars the leverage distribution
    and the spread of entries over each bar's range are covered continuously.
    """
    n = len(bars)
    k_lat = samples_per_bar(params, bars.interval_ms)
    if k_lat == 0:
        entry, entry_w = entry_prices(bars, params.entry_points)
        lev, lev_w, lev_tier = params.leverage_grid()
        j, m = entry_w.size, lev.size
        e = np.repeat(entry, m, axis=1)
        lv = np.broadcast_to(np.tile(lev, j), (n, j * m))
        tier = np.broadcast_to(np.tile(lev_tier, j), (n, j * m))
        return e, lv, tier, (entry_w[:, None] * lev_w[None, :]).ravel()
    tiers, m, j, v0, tier_row, slot_w = _lattice(params.leverage, params.leverage_weights, k_lat)
    idx = (bars.time // bars.interval_ms).astype(np.float64)
    shift_u = np.mod(idx * _R2[0], 1.0)[:, None]
    shift_v = np.mod(idx * _R2[1], 1.0)[:, None]
    r = (j[None, :] + shift_u) / m  # (n, m): stratified positions within each tier's band
    v = np.mod(v0 + shift_v, 1.0)  # (n, m): entry quantiles
    band = np.exp(params.leverage_spread * (2.0 * r - 1.0))  # (n, m): one exp per bar and position, not per tier
    if m == 1:  # the same products as the broadcast below, in (n, T) rows rather than length-1 ones
        lev = np.multiply.outer(band[:, 0], tiers)
    else:
        lev = tiers[None, :, None] * band[:, None, :]  # (n, T, m)
    lev = np.clip(lev, 1.0, 200.0, out=lev).reshape(n, tiers.size * m)
    tier = np.broadcast_to(tier_row, (n, tiers.size * m))
    if params.entry_points == 1:
        entry = np.broadcast_to(entry_prices(bars, 1)[0], (n, tiers.size * m))
    else:
        q = np.broadcast_to(v[:, None, :], (n, tiers.size, m)).reshape(n, tiers.size * m)
        span = np.repeat(bars.high - bars.low, q.shape[1]).reshape(q.shape)  # flat passes, not K-wide rows
        entry = np.repeat(bars.low, q.shape[1]).reshape(q.shape) + q * span
    return entry, lev, tier, slot_w.copy()


@functools.lru_cache(maxsize=64)
def _lattice(leverage: tuple[float, ...], weights: tuple[float, ...], k_lat: int
             ) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What the lattice of :func:`level_inputs` shares by every bar: the tiers, positions per tier ``m``,
    ``j = 0..m-1``, the unshifted entry quantiles ``(1, m)``, each slot's tier and weight (read-only;
    cached per tier set, as an incremental update opens one bar at a time)."""
    tiers = np.asarray(leverage, dtype=float)
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    m = max(1, k_lat // tiers.size)  # positions per tier and bar
    j = np.arange(m, dtype=np.float64)
    a = _lattice_multiplier(m)
    v0 = np.mod(j * a, m)[None, :] / m
    tier_row = np.repeat(np.arange(tiers.size), m)
    slot_w = np.repeat(w / m, m)
    for x in (tiers, j, v0, tier_row, slot_w):
        x.flags.writeable = False
    return tiers, m, j, v0, tier_row, slot_w


def margin_table_of(params: ModelParams, symbol: str, price: float) -> MarginTable:
    """The table that prices ``symbol``: ``params.margin_table`` or the shipped one, caps in USD at ``price``."""
    return (params.margin_table or table_for(symbol)).in_usd(price)


def fit_leverage(params: ModelParams, table: MarginTable) -> ModelParams:
    """``params`` fitted to the symbol's table: leverage tiers above ``min(max_leverage, table max)``
    dropped, their weight redistributed (``excess_leverage``; none left: one tier at the cap), the
    cap kept in ``max_leverage`` and ``table`` in ``margin_table``. Unchanged tiers when none is
    above the cap."""
    cap = min(params.max_leverage, table.max_leverage)
    lev = list(params.leverage)
    w = [float(x) for x in params.leverage_weights]
    keep = [i for i, x in enumerate(lev) if x <= cap]
    if not keep:  # every tier is above the cap: one tier at the cap
        return replace(params, leverage=(cap,), leverage_weights=(1.0,), max_leverage=cap, margin_table=table)
    if len(keep) < len(lev):
        total = sum(w)
        kept = [w[i] for i in keep]
        if params.excess_leverage == "highest":
            top = max(range(len(keep)), key=lambda k: lev[keep[k]])
            kept[top] += total - sum(kept)
        elif sum(kept) > 0:
            kept = [x * total / sum(kept) for x in kept]
        else:
            kept = [total / len(kept)] * len(kept)
        params = replace(params, leverage=tuple(lev[i] for i in keep), leverage_weights=tuple(kept))
    return replace(params, max_leverage=cap, margin_table=table)


def mmr_steps(table: MarginTable, position_usd: float) -> tuple[tuple[float, float], ...]:
    """The rate of :meth:`MarginTable.mmr_for` at ``position_usd`` as a step function of leverage:
    ``((-inf, r0), (x1, r1), ...)``, rate ``r_i`` for leverages above ``x_i``; only the steps where it changes."""
    steps = sorted({float(b.max_leverage) for b in table.brackets})
    values = [table.mmr_for(x, position_usd) for x in steps] + [table.mmr_for(steps[-1] * 2, position_usd)]
    out = [(-math.inf, values[0])]
    for i in range(1, len(values)):
        if values[i] != values[i - 1]:
            out.append((steps[i - 1], values[i]))
    return tuple(out)


def mmr_of(table: MarginTable, leverage: np.ndarray, position_usd: float,
           steps: tuple[tuple[float, float], ...] | None = None) -> np.ndarray:
    """:meth:`MarginTable.mmr_for` over an array of leverages.

    For a fixed position size the rate is a step function of leverage that can only change at
    the brackets' maximum leverages; it is evaluated once per step, and the array gets one masked
    pass per step where the rate actually changes (one pass for the BTC table at $100k).
    """
    lev = np.asarray(leverage, dtype=float)
    steps = steps if steps is not None else mmr_steps(table, position_usd)  # given: the caller's, already found
    out = np.full(lev.shape, steps[0][1])
    for above, value in steps[1:]:
        out[lev > above] = value  # leverages in (steps[i-1], steps[i]] and beyond
    return out


@dataclass(frozen=True, eq=False)
class Slots:
    """Every level slot of every bar, both sides, before the opening filter (bar 0 and bars whose
    OI did not rise open nothing). ``price_*`` are ``(n, K)``; ``tier`` and ``slot_w`` ``(K,)``;
    ``entry_mean`` the bar's mean entry price (``None`` unless the side model values taker flow)."""

    price_long: np.ndarray
    price_short: np.ndarray
    tier: np.ndarray
    slot_w: np.ndarray
    entry_mean: np.ndarray | None


def slot_prices(bars: Bars, params: ModelParams, table: MarginTable,
                steps: tuple[tuple[float, float], ...] | None = None) -> Slots:
    """The liquidation price of every slot of every bar (each bar's own prices only, so the slots of
    a bar are the same whatever window it is in). ``params`` fitted (:func:`fit_leverage`); ``steps``:
    ``mmr_steps(table, params.typical_position_usd)`` if the caller has it."""
    entry, lev, tier, slot_w = level_inputs(bars, params)
    mmr = mmr_of(table, lev, params.typical_position_usd, steps)
    inv = 1.0 / lev
    price_long = entry * ((1.0 - inv) / (1.0 - mmr))
    price_short = entry * ((1.0 + inv) / (1.0 + mmr))
    needs_entry = params.side_model in ("auto", "taker")  # only the taker model values flow at entry
    tier_row = np.ascontiguousarray(tier[0]) if len(bars) else np.asarray(tier).reshape(-1, slot_w.size)[:0].ravel()
    return Slots(price_long, price_short, tier_row, slot_w, entry.mean(axis=1) if needs_entry else None)


def _opening_rows(d_oi: np.ndarray) -> tuple[np.ndarray, slice | None]:
    """The bars that open levels, and the slice they form when contiguous to the end (no copies then)."""
    opening = np.flatnonzero(d_oi > 0)
    n = d_oi.size
    if opening.size and opening.size == n - int(opening[0]):
        return opening, slice(int(opening[0]), n)
    return opening, None


def select_rows(a: np.ndarray, opening: np.ndarray, rows: slice | None) -> np.ndarray:
    """Rows ``opening`` of an ``(n, K)`` array, flat (a view when they are a slice)."""
    return (a[rows] if rows is not None else a.take(opening, axis=0)).reshape(-1)


#: ``(opening bars, t0, tier, slot weight)`` per level: what :func:`levels_from_slots` can reuse
LevelIndex = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def levels_from_slots(
    slots: Slots, d_oi: np.ndarray, long_share: np.ndarray, index: LevelIndex | None = None,
) -> tuple[Levels, Levels, LevelIndex, slice | None]:
    """Both sides' levels: the slots of the bars that open (``d_oi > 0``), weighted by the bar's
    opened notional, side share and slot weight. Also returns the index (opening bars, and per level
    t0, tier, slot weight) and the slice the opening bars form when contiguous.

    ``index``: the index of an earlier call, reused (not copied) when the opening bars are the same
    (an incremental run's usual case)."""
    opening, rows = _opening_rows(d_oi)
    k = slots.slot_w.size
    if index is None or not np.array_equal(index[0], opening):
        index = (opening, np.repeat(opening, k), np.tile(slots.tier, opening.size), np.tile(slots.slot_w, opening.size))
    _, t0, tier, slot_w = index
    opened = d_oi[rows] if rows is not None else d_oi[opening]

    def side(share: np.ndarray, price: np.ndarray) -> Levels:
        sh = share[rows] if rows is not None else share[opening]
        weight = np.repeat(opened * sh, k)  # then times the slot weight: flat passes, not k-wide rows
        np.multiply(weight, slot_w, out=weight)
        return Levels(t0, select_rows(price, opening, rows), weight, tier)

    return side(long_share, slots.price_long), side(1.0 - long_share, slots.price_short), index, rows


def build_levels(bars: Bars, params: ModelParams) -> tuple[Levels, Levels, np.ndarray, dict]:
    """Open the levels of every bar. Returns (longs, shorts, log shrink cumsum, info)."""
    longs, shorts, log_c, info, _ = _build_levels(bars, params)
    return longs, shorts, log_c, info


def _build_levels(bars: Bars, params: ModelParams) -> tuple[Levels, Levels, np.ndarray, dict, Slots]:
    d_oi, shrink = oi_flow(bars, params)
    log_c = np.cumsum(np.log(shrink))
    table = margin_table_of(params, bars.symbol, bars.price)
    slots = slot_prices(bars, params, table)
    long_share, side_used = side_shares(bars, d_oi, slots.entry_mean if slots.entry_mean is not None else bars.close, params)
    longs, shorts, _, _ = levels_from_slots(slots, d_oi, long_share)
    info = {"side_model": side_used, "margin_table": table.name, "levels_per_bar": int(slots.slot_w.size)}
    return longs, shorts, log_c, info, slots


def _first_at_or_below(series: np.ndarray, start: np.ndarray, thresh: np.ndarray) -> np.ndarray:
    """For each query, the first index t >= start with series[t] <= thresh; len(series) if none.

    Binary lifting over a sparse table of range minima: O((n + q) log n), no loop over q. Each
    table is padded with -inf where its window would run past the end, so a jump is taken exactly
    when the whole window it skips stays above the threshold (and a position never passes n).
    """
    n = series.size
    out = np.full(start.size, n, dtype=np.int64)
    if n == 0 or start.size == 0:
        return out
    suffix_min = np.empty(n + 1)
    suffix_min[:n] = np.minimum.accumulate(series[::-1])[::-1]
    suffix_min[n] = np.inf
    live = np.flatnonzero(suffix_min.take(start, mode="clip") <= thresh)  # ever touched (start >= 0)
    if live.size == 0:
        return out
    pos = start.take(live).astype(np.int64)
    np.minimum(pos, n, out=pos)
    th = thresh.take(live)
    levels = max(1, n.bit_length())
    tables = np.empty((levels, n + 1))
    tables[0, :n] = series
    tables[0, n] = -np.inf
    for k in range(1, levels):
        half, m = 1 << (k - 1), n - (1 << k) + 1
        np.minimum(tables[k - 1, :m], tables[k - 1, half : half + m], out=tables[k, :m])
        tables[k, m:] = -np.inf
    vals = np.empty(pos.size)
    move = np.empty(pos.size, dtype=bool)
    step = np.empty(pos.size, dtype=np.int64)
    for k in range(levels - 1, -1, -1):
        tables[k].take(pos, mode="clip", out=vals)  # pos <= n always: clip only skips the bounds check
        np.greater(vals, th, out=move)
        np.left_shift(move, k, out=step, dtype=np.int64)  # 0 or 2^k: an unmasked add
        pos += step
    out[live] = pos
    return out


def clip_wicks(bars: Bars, max_wick: float) -> tuple[Bars, list[str]]:
    """Bars with bad-print wicks clipped to the body, and a note per side that had any.

    A high above ``max_wick * max(open, close)`` becomes ``max(open, close)``; a low below
    ``min(open, close) / max_wick`` becomes ``min(open, close)``. Each bar is judged on its own
    prices, so the model stays causal.
    """
    top, bottom = np.maximum(bars.open, bars.close), np.minimum(bars.open, bars.close)
    hi_bad = bars.high > max_wick * top
    lo_bad = bars.low < bottom / max_wick
    if not (hi_bad.any() or lo_bad.any()):
        return bars, []
    notes = []
    for name, bad, raw, body in (("high", hi_bad, bars.high, top), ("low", lo_bad, bars.low, bottom)):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            notes.append(
                f"{bars.venue}: {int(bad.sum())} bar(s) with a {name} more than {max_wick:g}x beyond the bar's "
                f"open/close treated as bad prints and clipped to it (max_wick; first at {iso(bars.time[i])}: "
                f"{name} {raw[i]:.6g} -> {body[i]:.6g})"
            )
    return replace(bars, high=np.where(hi_bad, top, bars.high), low=np.where(lo_bad, bottom, bars.low)), notes


@dataclass(frozen=True, eq=False)
class ModelRun:
    """One run of the model over a series: the levels of both sides and the bar each is swept in.

    What both the snapshot map (:func:`build_map`) and the map states over time
    (:func:`analysis.heatmap.build_states`) are computed from. ``bars`` are the validated bars
    with bad-print wicks clipped; ``t_long``/``t_short`` hold each level's sweep bar
    (``len(bars)`` when never swept); ``log_c`` is the log shrink cumsum, so a level opened at
    ``t0`` still holds ``weight * exp(log_c[t] - log_c[t0])`` at the end of bar ``t < sweep``.
    """

    bars: Bars
    longs: Levels
    shorts: Levels
    t_long: np.ndarray
    t_short: np.ndarray
    log_c: np.ndarray
    info: dict
    gaps: list
    clip_notes: list[str]
    params: ModelParams | None = None  # as fitted to the symbol's margin table (see fit_leverage)


def run_model(bars: Bars, params: ModelParams) -> ModelRun:
    """Validate and clip ``bars``, open every level and find the bar that sweeps it."""
    return run_with_slots(bars, params)[0]


@dataclass(frozen=True, eq=False)
class SlotSweeps:
    """Every slot of a run (:class:`Slots`) and the bar each is swept in, ``(n, K)`` each (``n``:
    never); what :mod:`analysis.model_state` keeps to extend a run by new bars."""

    slots: Slots
    t_long: np.ndarray
    t_short: np.ndarray
    table_steps: tuple[tuple[float, float], ...]


def sweep_rule(bars: Bars, params: ModelParams) -> tuple[np.ndarray, np.ndarray, bool]:
    """The open-bar sweep's reference prices (longs, shorts) and whether it applies at all."""
    rule = params.open_bar_sweep
    return (bars.low if rule == "range" else bars.close), (bars.high if rule == "range" else bars.close), rule != "none"


def run_with_slots(bars: Bars, params: ModelParams) -> tuple[ModelRun, SlotSweeps]:
    """:func:`run_model`, and every slot of every bar with its sweep bar (what a :class:`~analysis.model_state.ModelState` keeps)."""
    gaps = bars.validate(min_bars=params.min_bars, max_gap_bars=params.max_gap_bars)
    bars, clip_notes = clip_wicks(bars, params.max_wick)
    n = len(bars)
    params = fit_leverage(params, margin_table_of(params, bars.symbol, bars.price))
    longs, shorts, log_c, info, slots = _build_levels(bars, params)
    k = slots.slot_w.size

    # Sweep bar of every slot: the opening bar itself when the level is beyond that bar's close,
    # else the first later bar whose low (longs) / high (shorts) reaches it. Shorts use -high so
    # both are "<=". Found for every bar's slots, then kept for the bars that open.
    t0 = np.repeat(np.arange(n, dtype=np.int64), k)
    start = np.minimum(t0 + 1, n)
    ref_long, ref_short, applies = sweep_rule(bars, params)

    def sweep_bar(touch: np.ndarray, thresh: np.ndarray, now: np.ndarray) -> np.ndarray:
        out = _first_at_or_below(touch, start, thresh.reshape(-1))
        if applies:
            hit = now.reshape(-1)
            out[hit] = t0[hit]
        return out.reshape(n, k)

    t_long = sweep_bar(bars.low, slots.price_long, slots.price_long >= ref_long[:, None])
    t_short = sweep_bar(-bars.high, -slots.price_short, slots.price_short <= ref_short[:, None])
    d_oi_rows = longs.t0[::k] if k else longs.t0
    rows = slice(int(d_oi_rows[0]), n) if d_oi_rows.size and d_oi_rows.size == n - int(d_oi_rows[0]) else None
    run = ModelRun(bars, longs, shorts, select_rows(t_long, d_oi_rows, rows), select_rows(t_short, d_oi_rows, rows),
                   log_c, info, gaps, clip_notes, params)
    table = params.margin_table or table_for(bars.symbol)
    return run, SlotSweeps(slots, t_long, t_short, mmr_steps(table.in_usd(bars.price), params.typical_position_usd))


def build_map(
    bars: Bars,
    params: ModelParams | None = None,
    *,
    window: str = "",
    now_ms: int | None = None,
) -> LiquidationMap:
    """Run the model over ``bars`` and return the estimated :class:`LiquidationMap`.

    ``window`` is a label for the output (e.g. ``"7d"``); ``now_ms`` stamps the generation time.
    Raises :class:`DataError` if the bars cannot carry a map.
    """
    params = params or ModelParams()
    return map_from_run(run_model(bars, params), params, window=window, now_ms=now_ms)


def margin_notes(venue: str, params: ModelParams, fitted: ModelParams, now_ms: int) -> list[str]:
    """The map's notes on margin: which table priced ``venue`` (and how old it is), and the tiers
    dropped above the symbol's maximum leverage."""
    table = fitted.margin_table or MarginTable("unknown", ())
    notes = [table.source_note(venue, now_ms)]
    dropped = [t for t in params.tier_labels if t not in fitted.tier_labels]
    if dropped:
        notes.append(f"{venue}: maximum leverage {fitted.max_leverage:g}x: the {', '.join(dropped)} tier(s) dropped, "
                     f"their weight given to {', '.join(fitted.tier_labels)} ({params.excess_leverage})")
    return notes


def map_from_run(run: ModelRun, params: ModelParams, *, window: str = "", now_ms: int | None = None) -> LiquidationMap:
    """The snapshot map at the last bar of a :func:`run_model` run (what :func:`build_map` returns)."""
    bars, longs, shorts, log_c, info, gaps = run.bars, run.longs, run.shorts, run.log_c, run.info, run.gaps
    n = len(bars)
    t_long, t_short = run.t_long, run.t_short

    swept_series = []
    prior_series = []  # only levels opened in an earlier bar: on the map when the sweeping bar opened
    remaining = []
    to_end = np.exp(log_c[n - 1] - log_c)  # a never-swept level's shrink since its bar: one exp per bar
    for lv, t_sw in ((longs, t_long), (shorts, t_short)):
        swept = t_sw < n
        hit, kept_ = np.flatnonzero(swept), np.flatnonzero(~swept)
        t_hit, t0_hit = t_sw.take(hit), lv.t0.take(hit)
        # notional at the sweep: shrunk through bars t0+1 .. T-1 (consumption precedes closing)
        upto = np.maximum(t_hit - 1, t0_hit)
        amount = lv.weight.take(hit) * np.exp(log_c.take(upto) - log_c.take(t0_hit))
        swept_series.append(np.bincount(t_hit, weights=amount, minlength=n)[:n])
        prior = t_hit > t0_hit
        prior_series.append(np.bincount(t_hit[prior], weights=amount[prior], minlength=n)[:n])
        remaining.append((lv.price.take(kept_), lv.weight.take(kept_) * to_end.take(lv.t0.take(kept_)), lv.tier.take(kept_)))

    price = bars.price
    width = params.bin_width or nice_width(price * params.bin_pct)
    lo_bound, hi_bound = price * (1 - params.grid_pct), price * (1 + params.grid_pct)
    kept, off = [], []
    for p_, w_, tier_ in remaining:
        inside = (p_ >= lo_bound) & (p_ <= hi_bound)
        if inside.all():  # the common case: no copies
            kept.append((p_, w_, tier_))
            off.append(0.0)
            continue
        kept.append((p_[inside], w_[inside], tier_[inside]))
        off.append(float(w_[~inside].sum()))
    prices = np.concatenate([kept[0][0], kept[1][0]])
    lo = float(prices.min()) if prices.size else price
    hi = float(prices.max()) if prices.size else price
    grid_lo, n_bins = price_grid(price, width, lo, hi, max_bins=params.max_bins)
    fitted = run.params or params
    n_tiers = len(fitted.leverage)

    def bin_side(p: np.ndarray, w: np.ndarray, tier: np.ndarray) -> np.ndarray:
        return bin_levels(p, w, tier, n_tiers, grid_lo, width, n_bins)

    notes = list(bars.notes) + run.clip_notes
    off_note = left_off_note(off[0], off[1], price, params.grid_pct)
    if off_note:
        notes.append(off_note)
    if gaps:
        missing = sum(g.missing for g in gaps)
        notes.append(
            f"{len(gaps)} gap(s) in the {bars.venue} data ({missing} bar(s) missing); "
            "OI change across a gap is booked after it and the unseen price path sweeps nothing"
        )
    generated = int(now_ms if now_ms is not None else _time.time() * 1000)
    notes += margin_notes(bars.venue, params, fitted, generated)
    p = params.describe()
    p.update(info)  # what was used (side model, margin table) may differ from what was configured ("auto")
    p["non_default_params"] = params.non_default()  # as configured: what a front end shows as overrides
    table = fitted.margin_table or table_for(bars.symbol)
    p["margin"] = {bars.venue: {**table.source_json(generated), "leverage_cap": fitted.max_leverage,
                                "tiers_used": list(fitted.tier_labels),
                                "tiers_dropped": [t for t in params.tier_labels if t not in fitted.tier_labels]}}
    return LiquidationMap(
        symbol=bars.symbol,
        venues=(bars.venue,),
        kind="estimated",
        price=price,
        bin_width=width,
        grid_lo=grid_lo,
        tiers=fitted.tier_labels,
        long=bin_side(*kept[0]),
        short=bin_side(*kept[1]),
        window=window,
        start_ms=bars.start_ms,
        end_ms=bars.end_ms,
        generated_ms=generated,
        swept=SweptSeries(bars.time.copy(), swept_series[0], swept_series[1], prior_series[0], prior_series[1]),
        notes=tuple(notes),
        params=p,
        path=PricePath(bars.time.copy(), bars.high.copy(), bars.low.copy(), bars.interval_ms),
        provenance={bars.venue: dict(bars.provenance)} if bars.provenance else {},
    )
