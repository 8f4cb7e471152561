"""The measured map: real liquidation prices, longs below and shorts above, coverage stated, its own kind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis import chart, commentary
from analysis.errors import DataError, InputError
from analysis.measured.measured_map import MeasuredParams, build_measured, leverage_tiers
from analysis.measured.shapes import AssetCtx, Position
from analysis.measured.snapshot import Snapshot, from_json
from analysis.metrics import read
from measured_helpers import T0, address, synthetic_snapshot


def pos(i, szi, liq, value, lev=10.0, polled=T0, coin="BTC"):
    return Position(address(i), coin, szi, 90_000.0, liq, value, "cross", lev, value / lev, polled)


def snap(*positions, mark=90_000.0, oi=1_000.0):
    return Snapshot(T0, ("BTC",), {"BTC": AssetCtx("BTC", mark, oi)}, tuple(positions), {"tracked": len(positions)})


def test_levels_sit_at_the_real_liquidation_prices_by_side_and_leverage():
    m = build_measured(snap(pos(1, 2.0, 81_000.0, 180_000.0, lev=10), pos(2, -1.0, 99_500.0, 90_000.0, lev=40),
                            pos(3, 1.0, 88_000.0, 90_000.0, lev=3)), "BTC")
    assert m.kind == "measured" and not m.is_estimate and m.venues == ("hyperliquid",)
    assert m.tiers == leverage_tiers((5.0, 10.0, 25.0, 50.0)) == ("≤5x", "5–10x", "10–25x", "25–50x", ">50x")
    lb, sb = m.long_by_bin(), m.short_by_bin()
    assert lb.sum() == 270_000.0 and sb.sum() == 90_000.0
    assert np.all(m.centers[lb > 0] < m.price) and np.all(m.centers[sb > 0] > m.price)

    def bin_of(px):
        return int((px - m.grid_lo) // m.bin_width)

    assert m.long[0, bin_of(81_000.0), 1] == 180_000.0  # 10x: the 5-10x tier
    assert m.long[0, bin_of(88_000.0), 0] == 90_000.0  # 3x: <=5x
    assert m.short[0, bin_of(99_500.0), 3] == 90_000.0  # 40x: 25-50x


def test_coverage_is_tracked_notional_over_open_interest_and_is_stated():
    # OI 1,000 BTC a side at 90,000 = $90M; tracked longs $180k + $90k, short $90k
    m = build_measured(snap(pos(1, 2.0, 81_000.0, 180_000.0), pos(2, -1.0, 99_500.0, 90_000.0),
                            pos(3, 1.0, None, 90_000.0)), "BTC")
    assert m.params["oi_usd"] == 90_000_000.0
    assert m.params["tracked_usd"] == 360_000.0
    assert m.params["coverage"] == pytest.approx(360_000 / (2 * 90_000_000))
    assert m.params["coverage_long"] == pytest.approx(270_000 / 90_000_000)
    assert m.params["coverage_short"] == pytest.approx(90_000 / 90_000_000)
    assert m.params["positions_no_liquidation_price"] == 1 and m.params["positions_on_map"] == 2
    assert any("0.2% of open interest" in n and "a sample" in n for n in m.notes)
    assert any("no liquidation price" in n for n in m.notes)
    one_sided = build_measured(snap(pos(1, 2.0, 81_000.0, 180_000.0)), "BTC", params=MeasuredParams(oi_one_sided=False))
    assert one_sided.params["coverage"] == pytest.approx(180_000 / 90_000_000)


def test_crossed_and_stale_positions_are_left_off_and_counted():
    m = build_measured(snap(pos(1, 1.0, 91_000.0, 90_000.0),  # a long "liquidating" above price: price moved since
                            pos(2, -1.0, 89_000.0, 90_000.0),  # and a short below it
                            pos(3, 1.0, 80_000.0, 90_000.0, polled=T0 - 7_200_000),  # two hours old
                            pos(4, 1.0, 80_000.0, 90_000.0)), "BTC")
    assert m.params["positions_crossed"] == 2 and m.params["positions_stale"] == 1 and m.params["positions_on_map"] == 1
    assert m.total_long == 90_000.0 and m.total_short == 0.0
    assert any("polled before price passed" in n for n in m.notes) and any("left out" in n for n in m.notes)


def test_no_mark_price_is_a_clear_refusal_and_bad_params_too():
    with pytest.raises(DataError, match="no mark price for ETH"):
        build_measured(snap(pos(1, 1.0, 80_000.0, 1.0)), "ETH")
    for bad in (dict(bin_pct=0), dict(grid_pct=2), dict(leverage_edges=(10.0, 5.0)), dict(max_age_s=0)):
        with pytest.raises(InputError):
            MeasuredParams(**bad)


def test_chart_text_and_json_say_measured_and_coverage_never_estimated():
    m = build_measured(synthetic_snapshot(), "BTC")
    r = read(m)
    fig = chart.build_figure(m, r)
    texts = {t.get_gid(): t.get_text() for t in fig.texts if t.get_gid() in ("title", "footer")}
    titles = " ".join(t.get_text() for t in fig.texts if t.get_gid() == "title")
    assert "measured liquidation map" in titles and "of OI" in titles
    footer = texts["footer"]
    assert footer.startswith("Measured: real liquidation prices of") and "not the whole market" in footer
    everything = " ".join(t.get_text() for t in fig.texts).lower()
    assert "estimated" not in everything
    assert chart.render(m, r, size_px=(400, 225))[:8] == b"\x89PNG\r\n\x1a\n"
    text = commentary.summary(r, m)
    assert "estimated" not in text.lower()
    assert "Measured from tracked positions" in commentary.footer(m)
    doc = m.to_json()
    assert doc["kind"] == "measured" and doc["params"]["coverage"] == m.params["coverage"]
    json.dumps(doc)


def test_snapshot_round_trips_and_refuses_garbage_clearly():
    s = synthetic_snapshot(50)
    back = from_json(json.loads(json.dumps(s.to_json())))
    assert back.positions == s.positions and back.asset_ctxs["BTC"].mark_px == 90_000.0 and back.time_ms == s.time_ms
    good = s.to_json()
    cases = [
        ({"format": "other"}, "not a liqmap positions file"),
        ({**good, "version": 9}, "version"),
        ({**good, "coins": []}, "coins"),
        ({**good, "positions": [{**good["positions"][0], "user": "0x12"}]}, "positions[0]: user"),
        ({**good, "positions": [{**good["positions"][0], "szi": float("nan")}]}, "positions[0]: szi"),
        ({**good, "positions": [{**good["positions"][0], "leverage_type": "portfolio"}]}, "leverage_type"),
        ({**good, "asset_ctxs": {"BTC": {"mark_px": -1, "open_interest": 1}}}, "mark_px"),
    ]
    for doc, where in cases:
        with pytest.raises(InputError, match=where.replace("[", r"\[").replace("]", r"\]")):
            from_json(doc)
