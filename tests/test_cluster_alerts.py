"""analysis.cluster_alerts: the approaching/swept state machines on a fake clock, gaps, and the text."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from analysis.cluster_alerts import (
    AlertState,
    ClusterAlertParams,
    alert_text,
    major_clusters,
    realized_near,
    step_approaching,
    step_swept,
)
from analysis.errors import InputError
from analysis.metrics import SKEW_CLASSES, Cluster, Reading
from analysis.tape.events import Gap, LiquidationEvent

UTC = timezone.utc
T0 = datetime(2026, 6, 22, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def cluster(price: float, side: str = "short", notional: float = 80e6, significant: bool = True,
            ref: float = 100.0) -> Cluster:
    return Cluster(side, price, price * 0.997, price * 1.003, (price / ref - 1) * 100, notional, "25x", significant)


def reading(price: float, clusters: tuple[Cluster, ...], symbol: str = "BTCUSDT") -> Reading:
    return Reading(symbol=symbol, price=price, venues=("binance", "bybit"), kind="estimated", window="7d", band=0.05,
                   distances=(0.01,), cum_long=(0.0,), cum_short=(0.0,), long_in_band=1e6, short_in_band=1e6,
                   imbalance=1.0, skew=SKEW_CLASSES["balanced"], clusters=clusters, nearest_long=None,
                   nearest_short=None, thresholds=(), total_long=1e6, total_short=1e6)


def event(price: float, usd: float, side: str = "short", t: int = 0, venue: str = "bybit") -> LiquidationEvent:
    return LiquidationEvent(venue, "BTCUSDT", t, side, price, usd / price, usd, venue != "bybit", f"{venue}-{t}-{price}")


CLUSTERS = (cluster(101.0), cluster(95.0, "long"), cluster(110.0, notional=5e6, significant=False))
APPROACH = ClusterAlertParams("approaching", within_pct=1.0)  # re-arms beyond 1.5%


def run_prices(prices, params=APPROACH, cooldown=timedelta(0), state=AlertState(), step=timedelta(minutes=15)):
    """Feed one reading per price on a fake clock; return the outcomes and the final state."""
    out, now = [], T0
    for p in prices:
        d = step_approaching(state, reading(p, CLUSTERS), params, now=now, cooldown=cooldown)
        out.append(d.outcome)
        state = d.state
        now += step
    return out, state


def test_the_first_reading_is_a_baseline_and_announces_nothing():
    outcomes, state = run_prices([100.5])  # 0.5% below the 101 cluster
    assert outcomes == ["baseline"] and state.phase == "near" and state.level == 101.0
    outcomes, state = run_prices([98.0])
    assert outcomes == ["baseline"] and state.phase == "armed"


def test_price_hovering_at_the_edge_fires_once_and_rearms_only_beyond_the_exit_distance():
    edge = 101.0 / 1.01  # exactly 1% below the cluster
    hover = [98.0, edge + 0.01, edge - 0.01, edge + 0.01, edge - 0.01, edge + 0.01, edge - 0.02]
    outcomes, state = run_prices(hover)
    assert outcomes == ["baseline", "fire", "unchanged", "unchanged", "unchanged", "unchanged", "unchanged"]
    assert state.phase == "near"
    # 1.4% away: inside the re-arm distance (1.5%), still no new alert when it comes back
    outcomes, state = run_prices([101.0 / 1.014, edge + 0.01], state=state)
    assert outcomes == ["unchanged", "unchanged"]
    # beyond 1.5%: re-armed; coming back within 1% fires again
    outcomes, state = run_prices([101.0 / 1.016, edge + 0.01], state=state)
    assert outcomes == ["rearmed", "fire"]


def test_without_hysteresis_the_same_prices_would_flap():
    # the same walk with the exit distance equal to the entry: every crossing would re-arm and fire
    params = ClusterAlertParams("approaching", within_pct=1.0, rearm_factor=1.05)
    edge = 101.0 / 1.01
    outcomes, _ = run_prices([98.0, edge + 0.01, 101.0 / 1.0106, edge + 0.01, 101.0 / 1.0106, edge + 0.01], params)
    assert outcomes.count("fire") == 3  # the factor is what stops it: 1.5 gives one (test above)


def test_cooldown_holds_an_alert_and_announces_it_when_it_ends_if_still_near():
    cd = timedelta(minutes=60)
    state = AlertState("armed", None, None, last_announced_at=T0 - timedelta(minutes=30))
    d = step_approaching(state, reading(100.5, CLUSTERS), APPROACH, now=T0, cooldown=cd)
    assert d.outcome == "cooldown" and d.state == state  # still armed, nothing stored
    d = step_approaching(state, reading(100.5, CLUSTERS), APPROACH, now=T0 + timedelta(minutes=30), cooldown=cd)
    assert d.outcome == "fire" and d.state.last_announced_at == T0 + timedelta(minutes=30)
    assert d.cluster is not None and d.cluster.price == 101.0 and d.distance_pct == pytest.approx(100 * (101 / 100.5 - 1))


def test_only_major_clusters_count():
    far_minor = (cluster(100.5, significant=False),)
    d = step_approaching(AlertState("armed"), reading(100.0, far_minor), APPROACH, now=T0, cooldown=HOUR)
    assert d.outcome == "unchanged" and major_clusters(reading(100.0, CLUSTERS)) == list(CLUSTERS[:2])


def test_a_second_cluster_fires_after_the_first_is_left_behind():
    # near the 101 short cluster, then price falls to the 95 long cluster: 6% from 101 re-arms and fires
    state = AlertState("near", 101.0, "short", T0 - HOUR)
    d = step_approaching(state, reading(95.5, CLUSTERS), APPROACH, now=T0, cooldown=timedelta(minutes=30))
    assert d.outcome == "fire" and d.state.level == 95.0 and d.state.side == "long"


# -- swept ------------------------------------------------------------------------------------------

SWEPT = ClusterAlertParams("swept", within_pct=0.5, min_usd=2e6, minutes=30)  # re-arms below $1.33M
REF = reading(100.0, CLUSTERS)


def test_realized_near_counts_only_the_clusters_side_within_the_tolerance():
    events = [event(101.2, 1e6), event(100.6, 1e6), event(101.0, 5e6, side="long"), event(103.0, 9e6),
              event(float("nan"), 1e9), event(101.0, float("inf"))]
    assert realized_near(events, cluster(101.0), 0.5) == 2e6


def test_swept_fires_once_for_a_cluster_and_rearms_when_the_window_empties():
    burst = [event(101.0, 1.5e6, t=1), event(101.3, 1e6, t=2)]
    state = AlertState("armed")
    d = step_swept(state, REF, burst, [], SWEPT, now=T0, cooldown=timedelta(0))
    assert d.fire and d.realized_usd == 2.5e6 and d.cluster is not None and d.cluster.price == 101.0
    state = d.state
    # the same events still in the window: no second alert
    d = step_swept(state, REF, burst, [], SWEPT, now=T0 + timedelta(minutes=15), cooldown=timedelta(0))
    assert d.outcome == "unchanged"
    # half of it left the window (1.5M >= 2M / 1.5): still no re-arm
    d = step_swept(state, REF, burst[:1], [], SWEPT, now=T0 + timedelta(minutes=30), cooldown=timedelta(0))
    assert d.outcome == "unchanged" and d.state.phase == "swept"
    d = step_swept(state, REF, [], [], SWEPT, now=T0 + timedelta(minutes=45), cooldown=timedelta(0))
    assert d.outcome == "rearmed" and d.state.phase == "armed"


def test_swept_does_not_rearm_while_a_gap_could_hide_events():
    state = AlertState("swept", 101.0, "short", T0 - HOUR)
    gap = Gap("bybit", None, int(T0.timestamp() * 1000) - 60_000, None, "reconnecting")
    d = step_swept(state, REF, [], [gap], SWEPT, now=T0, cooldown=timedelta(0))
    assert d.outcome == "unchanged" and d.state.phase == "swept" and d.gaps == (gap,)
    d = step_swept(state, REF, [], [], SWEPT, now=T0, cooldown=timedelta(0))
    assert d.outcome == "rearmed"


def test_swept_below_the_amount_or_away_from_clusters_is_quiet_and_waits_without_a_reference():
    state = AlertState("armed")
    small = [event(101.0, 1.9e6)]
    elsewhere = [event(103.0, 50e6)]
    for events in (small, elsewhere):
        assert step_swept(state, REF, events, [], SWEPT, now=T0, cooldown=timedelta(0)).outcome == "unchanged"
    assert step_swept(state, None, small * 3, [], SWEPT, now=T0, cooldown=timedelta(0)).outcome == "waiting"


def test_swept_on_the_long_side_and_a_cooldown():
    state = AlertState("armed", last_announced_at=T0 - timedelta(minutes=10))
    events = [event(95.1, 3e6, side="long")]
    d = step_swept(state, REF, events, [], SWEPT, now=T0, cooldown=timedelta(minutes=60))
    assert d.outcome == "cooldown" and d.state == state
    d = step_swept(state, REF, events, [], SWEPT, now=T0 + HOUR, cooldown=timedelta(minutes=60))
    assert d.fire and d.cluster is not None and d.cluster.side == "long"


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"kind": "soon"}, "choose approaching or swept"),
        ({"kind": "approaching", "within_pct": 0.0}, "within_pct must be a number from 0.1 to 10"),
        ({"kind": "approaching", "within_pct": float("nan")}, "within_pct must be a number from 0.1 to 10"),
        ({"kind": "approaching", "min_usd": 1e6}, "apply to swept alerts only"),
        ({"kind": "swept", "min_usd": 5.0}, "min_usd must be from $10K to $10B"),
        ({"kind": "swept", "minutes": 1}, "minutes must be a whole number from 5 to 240"),
        ({"kind": "swept", "minutes": True}, "minutes must be a whole number"),
        ({"kind": "swept", "rearm_factor": 1.0}, "rearm_factor must be from 1.05 to 5"),
    ],
)
def test_params_refuse_what_is_not_valid_saying_what_is(kw, needle):
    with pytest.raises(InputError, match=needle.replace("$", r"\$")):
        ClusterAlertParams(**kw)


def test_defaults_per_kind():
    a, s = ClusterAlertParams("approaching"), ClusterAlertParams("swept")
    assert (a.near_pct, a.exit_pct) == (1.0, 1.5)
    assert (s.near_pct, s.usd, s.window_minutes) == (0.5, 1e6, 60)


# -- text -------------------------------------------------------------------------------------------

def test_approaching_text_is_positioning_only_and_escaped():
    r = reading(100.5, CLUSTERS, symbol="BTC_<@&1>*x")
    d = step_approaching(AlertState("armed"), r, APPROACH, now=T0, cooldown=HOUR)
    text = alert_text(d, r, APPROACH, data_end_ms=int(T0.timestamp() * 1000))
    assert text.startswith("**BTC\\_") and "<@&1>" not in text and "\\*x" in text
    assert "within 0.5% of a major liquidation cluster" in text
    assert "estimated short cluster above price: ~$80M around $101.00 (+0.5%)" in text
    assert "re-arms once price is more than 1.5% from $101.00" in text
    assert "Estimated from OI flow · Binance + Bybit · 7d window · data to 12:00 UTC" in text
    for word in ("target", "fuel", "will ", "expect", "likely"):
        assert word not in text.lower()


def test_swept_text_names_the_feeds_coverage_and_the_gaps():
    burst = [event(101.0, 2.5e6, t=1)]
    window = (int((T0 - timedelta(minutes=30)).timestamp() * 1000), int(T0.timestamp() * 1000))
    gap = Gap("binance", None, window[0] + 60_000, window[0] + 300_000, "reconnect")
    d = step_swept(AlertState("armed"), REF, burst, [gap], SWEPT, now=T0, cooldown=HOUR, window=window)
    text = alert_text(d, REF, SWEPT, feeds=("binance", "bybit", "okx"), reference_end_ms=window[0])
    assert "$2.5M of short liquidations realized near $101.00 in the last 30 min" in text
    assert "map read before this window (data to 11:30 UTC) had an estimated short cluster" in text
    assert "Feeds: Bybit complete; Binance, OKX sampled" in text and "lower bound" in text
    assert "Feed gaps in this window (Binance 11:31 UTC–11:35 UTC)" in text
    assert len(text) <= 2000
