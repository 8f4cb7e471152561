"""Commentary: number formats, the sanitiser, each skew class's wording, levels, notes, daily/notice, limits."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jinja2 import UndefinedError

from analysis import commentary
from analysis.commentary import (
    EMBED_LIMIT, MESSAGE_LIMIT, TRUNCATED, _env, _fit, _md_safe, daily, footer, near_sentence, notice, price_str,
    skew_sentence, summary, usd,
)
from analysis.errors import DataError, InputError
from analysis.liqmap import LiquidationMap
from analysis.metrics import SKEW_CLASSES, Cluster, Reading, Threshold, classify, read
from analysis.model import build_map

PRICE = 64_592.2
END_MS = 1_782_128_700_000  # 2026-06-22 11:45 UTC
MD_CHARS = set("\\*_~`|[]<>")


def make_map(*, kind: str = "estimated", venues: tuple[str, ...] = ("binance",), tiers=("5x", "25x", "100x"),
             notes: tuple[str, ...] = (), window: str = "7d") -> LiquidationMap:
    shape = (len(venues), 10, len(tiers))
    return LiquidationMap(
        symbol="BTCUSDT", venues=venues, kind=kind, price=PRICE, bin_width=50.0, grid_lo=64_350.0, tiers=tiers,
        long=np.zeros(shape), short=np.zeros(shape), window=window, start_ms=END_MS - 7 * 86_400_000,
        end_ms=END_MS, generated_ms=END_MS, notes=notes,
    )


def make_reading(short: float, long: float, *, skew: str | None = None, symbol: str = "BTCUSDT",
                 clusters: tuple[Cluster, ...] = (), thresholds: tuple[Threshold, ...] = (),
                 notes: tuple[str, ...] = (), kind: str = "estimated", price: float = PRICE) -> Reading:
    ratio = short / long if long > 0 else (math.inf if short > 0 else math.nan)
    near = lambda side: min((c for c in clusters if c.side == side and c.significant),  # noqa: E731
                            key=lambda c: abs(c.distance_pct), default=None)
    return Reading(
        symbol=symbol, price=price, venues=("binance",), kind=kind, window="7d", band=0.05,
        distances=(0.01, 0.02, 0.05, 0.10),
        cum_long=(long * 0.1, long * 0.3, long, long * 1.5), cum_short=(short * 0.1, short * 0.3, short, short * 1.5),
        long_in_band=long, short_in_band=short, imbalance=ratio,
        skew=SKEW_CLASSES[skew] if skew else classify(ratio), clusters=clusters,
        nearest_long=near("long"), nearest_short=near("short"), thresholds=thresholds,
        total_long=long * 2, total_short=short * 2, notes=notes,
    )


def cluster(side: str, price: float, notional: float, tier: str = "25x") -> Cluster:
    return Cluster(side, price, price - 100, price + 100, (price / PRICE - 1) * 100, notional, tier, True)


def threshold(side: str, price: float, notional: float) -> Threshold:
    return Threshold(side, price, (price / PRICE - 1) * 100, notional)


def bad_numbers(text: str) -> list[str]:
    """Words that would mean a number leaked unformatted: nan, inf, n/a."""
    return re.findall(r"\b(?:nan|inf|infinity)\b|n/a", text, re.IGNORECASE)


def unescaped(text: str) -> set[str]:
    """Markdown characters in ``text`` that are not preceded by an escaping backslash."""
    out, i = set(), 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] in MD_CHARS:
            out.add(text[i])
        i += 1
    return out


# -- numbers --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (2.1e9, "$2.1B"), (350e6, "$350M"), (12_400, "$12.4K"), (850, "$850"), (0, "$0"), (0.4, "$0"),
    (999.6, "$1K"), (99_949, "$99.9K"), (99_951, "$100K"), (999.96e6, "$1B"), (1.0239e9, "$1.02B"),
    (44.32e6, "$44.3M"), (-3e6, "−$3M"), (math.nan, "n/a"), (math.inf, "n/a"), (None, "n/a"),
])
def test_usd(value, text):
    assert usd(value) == text


@pytest.mark.parametrize("value, text", [
    (64_592.2, "$64,592"), (61_700, "$61,700"), (999.6, "$999.60"), (999.996, "$1,000"), (145.234, "$145.23"), (999.4, "$999.40"),
    (2.3456, "$2.346"), (0.0812, "$0.0812"), (0.00001234, "$0.00001234"), (0, "n/a"), (-5, "n/a"),
    (math.nan, "n/a"),
])
def test_price_str(value, text):
    assert price_str(value) == text


# -- sanitiser ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, safe", [
    ("**bold** _it_", r"\*\*bold\*\* \_it\_"),
    ("~~s~~ `c` ||sp||", r"\~\~s\~\~ \`c\` \|\|sp\|\|"),
    ("[click](http://x)", r"\[click\](http://x)"),
    ("# head", r"\# head"), ("> quote", r"\> quote"), ("- item", r"\- item"), ("1. item", r"1\. item"),
    ("back\\slash", "back\\\\slash"),
    ("okx missing: HTTP 429", "okx missing: HTTP 429"),
])
def test_md_safe_escapes_markdown(raw, safe):
    assert _md_safe(raw) == safe


@pytest.mark.parametrize("raw", [
    "@everyone look", "@here now", "<@123456789012345678> hi", "<@!123456789012345678>", "<@&987654321> role",
    "<#123456> channel", "</liqmap:123456>", "@EVERYONE", "a\n@everyone", "<@12345", "x <t:1700000000:R>",
])
def test_md_safe_neutralises_mentions(raw):
    safe = _md_safe(raw)
    assert not re.search(r"@(everyone|here)", safe, re.IGNORECASE)
    assert not re.search(r"<@|<#|</", safe.replace("\\<", ""))
    assert "\n" not in safe


def test_md_safe_one_line_and_clipped():
    assert _md_safe("a\nb\r\nc\u202ed\x00e") == "a b c d e"
    assert len(_md_safe("x" * 5000, 50)) == 50


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_md_safe_never_leaves_live_markdown_or_mentions(raw):
    safe = _md_safe(raw)
    assert unescaped(safe) == set()
    assert "\n" not in safe and "\r" not in safe
    assert not re.search(r"@(everyone|here)", safe, re.IGNORECASE)
    assert not re.match(r"\s*[#>\-+]", safe)


def test_user_strings_are_sanitised_in_every_output():
    evil = "@everyone <@123456789012345678> **x**"
    r = make_reading(2e8, 1e8, symbol="EVIL_COIN", notes=(f"okx missing: {evil}",))
    m = make_map(venues=("bin_ance", "<@&42>"), notes=r.notes)
    for text in (summary(r, m, with_footer=True), daily(r, m, with_footer=True), notice(SKEW_CLASSES["balanced"], r, m),
                 footer(m)):
        assert "@everyone" not in text and "<@" not in text
    s = summary(r, m, with_footer=True)
    assert r"EVIL\_COIN" in s and r"\*\*x\*\*" in s and r"bin\_ance" in s
    assert "bin_ance" in footer(m)  # embed footers render no markdown: no backslashes there


# -- skew wording ---------------------------------------------------------------------------------

def test_heavily_short_wording():
    text = skew_sentence(make_reading(2.1e9, 0.4e9))
    assert text == ("Shorts heavily stacked above price ($2.1B within +5%), thin long exposure below "
                    "($400M within −5%): 5.2× more shorts.")


def test_heavily_long_reads_as_more_longs_not_a_fraction():
    r = make_reading(0.4e9, 2.1e9)
    assert r.skew.key == "heavily_long"
    text = skew_sentence(r)
    assert text == ("Longs heavily stacked below price ($2.1B within −5%), thin short exposure above "
                    "($400M within +5%): 5.2× more longs.")
    assert "0.1" not in text


@pytest.mark.parametrize("short, long, key, expected", [
    (180e6, 100e6, "short",
     "Shorts outweigh longs: $180M of shorts within +5% vs $100M of longs within −5% (1.8× more shorts)."),
    (100e6, 180e6, "long",
     "Longs outweigh shorts: $180M of longs within −5% vs $100M of shorts within +5% (1.8× more longs)."),
    (100e6, 125e6, "balanced",
     "Balanced: $100M of shorts within +5% vs $125M of longs within −5% (1.2× more longs)."),
    (125e6, 100e6, "balanced",
     "Balanced: $125M of shorts within +5% vs $100M of longs within −5% (1.2× more shorts)."),
    (103e6, 100e6, "balanced", "Balanced: $103M of shorts within +5% vs $100M of longs within −5% (roughly even)."),
])
def test_mild_and_balanced_wording(short, long, key, expected):
    r = make_reading(short, long)
    assert r.skew.key == key
    assert skew_sentence(r) == expected


def test_every_class_has_its_own_wording():
    pairs = {"heavily_short": (5e8, 1e8), "short": (2e8, 1e8), "balanced": (1e8, 1e8), "long": (1e8, 2e8),
             "heavily_long": (1e8, 5e8)}
    openings = set()
    for key, (s, lo) in pairs.items():
        r = make_reading(s, lo)
        assert r.skew.key == key
        openings.add(skew_sentence(r).split(":")[0].split("(")[0])
    assert set(SKEW_CLASSES) == set(pairs)
    assert len(openings) == len(pairs)


def test_ratio_rounds_down_so_it_never_claims_the_next_class():
    r = make_reading(2.98e8, 1e8)  # 2.98x: short-skewed, not heavily (threshold 3.0)
    assert r.skew.key == "short"
    assert "2.9× more shorts" in skew_sentence(r)
    r = make_reading(1e8, 1.49e8)  # 1/1.49 is just above 1/1.5: balanced, not long-skewed
    assert r.skew.key == "balanced"
    assert "1.4× more longs" in skew_sentence(r)


def test_extreme_ratio_is_capped_not_overflowed():
    assert skew_sentence(make_reading(11_723.0, 6.5e-305)).endswith("over 1,000× more shorts.")
    assert skew_sentence(make_reading(3e8, 2e5)).endswith("over 1,000× more shorts.")
    assert skew_sentence(make_reading(2.5e8, 1e7)).endswith("25× more shorts.")


def test_near_price_line_only_when_lopsided_and_not_already_said():
    r = replace(make_reading(1.9e8, 2.36e8), cum_short=(53.2e6, 8e7, 1.9e8, 3e8), cum_long=(2.9e6, 2.6e7, 2.36e8, 3e8))
    assert r.skew.key == "balanced"
    assert near_sentence(r) == ("Closest to price, shorts dominate: $53.2M within +1% vs $2.9M of longs within −1% "
                                "(18× more shorts).")
    assert near_sentence(r).splitlines()[0] in summary(r, make_map())
    # the headline already says "heavily short": no second line saying the same
    assert near_sentence(replace(r, skew=SKEW_CLASSES["heavily_short"])) is None
    # lopsided the other way than a heavily short headline: worth saying
    flipped = replace(r, cum_short=(1e6,) + r.cum_short[1:], cum_long=(5e6,) + r.cum_long[1:],
                      skew=SKEW_CLASSES["heavily_short"])
    assert near_sentence(flipped).startswith("Closest to price, longs dominate: $5M within −1% vs $1M of shorts")
    assert near_sentence(replace(r, cum_short=(5e6,) + r.cum_short[1:])) is None  # under 3x
    assert near_sentence(replace(r, cum_long=(0.0,) + r.cum_long[1:])) == (
        "Closest to price, only shorts: $53.2M within +1%, no longs within −1%.")
    assert near_sentence(make_reading(0, 0)) is None
    assert "Closest to price" not in summary(make_reading(1e8, 1e8), make_map())


def test_empty_reading():
    r = make_reading(0, 0)
    assert r.empty
    assert skew_sentence(r) == "No estimated liquidation levels within ±5% of $64,592."
    assert skew_sentence(replace(r, kind="coinglass")) == "No CoinGlass liquidation levels within ±5% of $64,592."
    s = summary(r, make_map())
    assert "×" not in s and not bad_numbers(s) and "Cumulative" not in s  # no table of zeros


@pytest.mark.parametrize("short, long, side", [(3e8, 0, "shorts"), (0, 3e8, "longs")])
def test_one_sided_reading_has_no_infinite_ratio(short, long, side):
    r = make_reading(short, long)
    text = skew_sentence(r)
    assert not bad_numbers(text) and "×" not in text
    assert text.startswith(f"Only {side} near price: $300M of {side}")
    s = summary(r, make_map())
    assert not bad_numbers(s)


def test_nan_reading_is_refused_not_read_as_zero():
    r = make_reading(1e8, 1e8)
    with pytest.raises(DataError, match="long_in_band"):
        summary(replace(r, long_in_band=math.nan), make_map())
    with pytest.raises(DataError, match="price"):
        notice(SKEW_CLASSES["balanced"], replace(r, price=0.0), make_map())
    with pytest.raises(DataError, match="previous reading"):
        daily(r, make_map(), previous=replace(r, short_in_band=-1.0))


# -- levels, table, notes, footer -----------------------------------------------------------------

def levels_reading(**kw) -> Reading:
    return make_reading(
        1.2e8, 1.5e8,
        clusters=(cluster("short", 66_400, 37e6, "25x"), cluster("long", 61_900, 44e6, "10x")),
        thresholds=(threshold("short", 66_550, 120e6), threshold("long", 61_700, 150e6),
                    threshold("short", 70_400, 190e6), threshold("long", 57_800, 250e6),
                    threshold("short", 75_000, 300e6)),
        **kw,
    )


def test_threshold_and_cluster_sentences():
    s = summary(levels_reading(), make_map())
    assert "• If BTC breaks $66,550 (+3.0%), about $120M of shorts sit in between." in s
    assert "• A drop below $61,700 (−4.5%) would run through about $150M of longs." in s
    assert "• Nearest major cluster: ~$37M around $66,400 (+2.8%), led by 25x." in s
    assert "• Nearest major cluster: ~$44M around $61,900 (−4.2%), led by 10x." in s
    # the summary keeps the two nearest levels per side; the daily report shows more
    assert "$70,400" in s and "$75,000" not in s
    assert "$75,000" in daily(levels_reading(), make_map())
    assert s.index("Shorts above price") < s.index("$66,550") < s.index("Longs below price") < s.index("$61,700")


def test_tier_clause_needs_more_than_one_tier():
    s = summary(levels_reading(), make_map(tiers=("all",)))
    assert "led by" not in s and "~$37M around $66,400 (+2.8%)." in s


def test_non_finite_levels_are_skipped():
    r = levels_reading()
    r = replace(r, thresholds=r.thresholds + (Threshold("short", math.nan, math.nan, 5e6),),
                nearest_long=replace(r.nearest_long, notional=math.inf))
    s = summary(r, make_map())
    assert "n/a" not in s and "Nearest major cluster: ~$44M" not in s


def test_cumulative_table_is_short_and_in_a_code_block():
    s = summary(levels_reading(), make_map())
    block = s.split("```")[1].strip("\n").splitlines()
    assert block[0].split() == ["within", "longs", "below", "shorts", "above"]
    assert [row.split()[0] for row in block[1:]] == ["±1%", "±2%", "±5%", "±10%"]
    assert block[3].split()[1:] == [usd(1.5e8), usd(1.2e8)]
    assert max(len(line) for line in block) <= 40


def test_notes_missing_venue_first_and_capped():
    notes = ("data: bundled sample, ending 2026-06-22T11:45Z", "1 gap(s) in the binance data",
             "okx missing: HTTP 503 from /api/v5/rubik", *(f"extra note {i}" for i in range(6)))
    s = summary(make_reading(1e8, 1e8, notes=notes), make_map(notes=notes))
    lines = s.splitlines()
    first = next(i for i, ln in enumerate(lines) if "missing" in ln)
    assert lines[first] == "⚠️ okx missing: HTTP 503 from /api/v5/rubik"
    assert lines[first - 1] == ""
    assert lines[first + 1] == "ℹ️ data: bundled sample, ending 2026-06-22T11:45Z"
    assert "… and 4 more note(s) in the JSON output." in s


def test_estimated_and_coinglass_are_labelled():
    est = summary(levels_reading(), make_map(), with_footer=True)
    assert est.endswith("\n\n*Estimated from OI flow · Binance · 7d window · data to 2026-06-22 11:45 UTC*")
    assert "Cumulative estimated liquidations" in est
    # by default the embed footer carries the provenance, so the description does not repeat it
    assert summary(levels_reading(), make_map()).endswith("```")
    assert "Estimated from OI flow" not in daily(levels_reading(), make_map())
    assert daily(levels_reading(), make_map(), with_footer=True).endswith("11:45 UTC*")
    cg_map = make_map(kind="coinglass", venues=("coinglass",))
    cg = summary(levels_reading(kind="coinglass"), cg_map, with_footer=True)
    assert "Estimated" not in cg and "estimated" not in cg
    assert "Cumulative liquidations (CoinGlass)" in cg
    assert footer(cg_map) == "CoinGlass · 7d window · data to 2026-06-22 11:45 UTC"
    assert footer(make_map(venues=("binance", "bybit", "okx"))) == (
        "Estimated from OI flow · Binance + Bybit + OKX · 7d window · data to 2026-06-22 11:45 UTC")


# -- daily and notice -----------------------------------------------------------------------------

def test_daily_headline_and_change_since_yesterday():
    prev = make_reading(1e8, 1e8, price=63_100.0)
    today = make_reading(5e8, 1.2e8)
    d = daily(today, make_map(), previous=prev)
    assert d.startswith("**BTCUSDT daily liquidation map · 2026-06-22 (UTC)**\n"
                        "$64,592 · 7d map · **heavily short-skewed**")
    assert "Shorts heavily stacked above price ($500M within +5%)" in d
    assert "• Skew: balanced → heavily short-skewed" in d
    assert "• Price: $63,100 → $64,592 (+2.4%)" in d
    assert "• Shorts within +5%: $100M → $500M (+400%)" in d
    assert "• Longs within −5%: $100M → $120M (+20%)" in d
    assert "Since the last report" not in daily(today, make_map())
    notes = ("okx missing: timeout",)
    d = daily(replace(today, notes=notes), make_map(notes=notes), previous=prev, with_footer=True)
    assert d.index("**Since the last report**") < d.index("⚠️ okx missing: timeout") < d.index("*Estimated from OI flow")


def test_daily_change_edge_cases():
    today = make_reading(2e8, 1e8)
    d = daily(today, make_map(), previous=make_reading(0, 1e8))
    assert "• Shorts within +5%: $0 → $200M (new)" in d and not bad_numbers(d)
    d = daily(today, make_map(), previous=replace(make_reading(2e8, 1e8), band=0.03))
    assert "Totals and clusters not compared: the band changed from ±3% to ±5%." in d and "Shorts within" not in d
    assert "• Skew: unchanged (short-skewed)" in daily(today, make_map(), previous=today)
    d = daily(today, make_map(), previous=replace(make_reading(2e8, 1e8), window="1d"))
    assert "the map window changed from 1d to 7d" in d and "Shorts within" not in d
    # a venue missing today would shrink the totals: say so instead of reporting a drop
    d = daily(today, make_map(), previous=replace(make_reading(2e8, 1e8), venues=("binance", "okx")))
    assert "Totals and clusters not compared: the venues changed from Binance + OKX to Binance." in d
    assert "Shorts within" not in d
    d = daily(today, make_map(), previous=replace(make_reading(2e8, 1e8), kind="coinglass"))
    assert "the map kind changed from coinglass to estimated" in d
    with pytest.raises(InputError, match="ETHUSDT"):
        daily(today, make_map(), previous=make_reading(1e8, 1e8, symbol="ETHUSDT"))


def test_notice_names_the_change_with_numbers():
    r = levels_reading()
    r = replace(r, short_in_band=2.1e9, long_in_band=0.4e9, skew=SKEW_CLASSES["heavily_short"])
    n = notice(SKEW_CLASSES["balanced"], r, make_map())
    lines = n.splitlines()
    assert lines[0] == "**BTCUSDT skew changed: balanced → heavily short-skewed**"
    assert lines[1] == "$64,592 · 7d map"
    assert lines[2].endswith("5.2× more shorts.")
    assert "• If BTC breaks $66,550 (+3.0%), about $120M of shorts sit in between." in lines
    assert "• A drop below $61,700 (−4.5%) would run through about $150M of longs." in lines
    assert lines[-1].startswith("*Estimated from OI flow")
    assert len(n) <= MESSAGE_LIMIT
    assert notice(r.skew, r, make_map()).startswith("**BTCUSDT skew unchanged: heavily short-skewed**")


def test_notice_keeps_warnings_not_provenance():
    notes = ("data: bundled sample, ending 2026-06-22T11:45Z", "okx missing: timeout", "2 gap(s) in the binance data")
    n = notice(SKEW_CLASSES["short"], levels_reading(notes=notes), make_map(notes=notes))
    assert "⚠️ okx missing: timeout" in n and "⚠️ 2 gap(s) in the binance data" in n
    assert "bundled sample" not in n


def test_notice_falls_back_to_the_cluster_without_thresholds():
    r = replace(levels_reading(), thresholds=())
    n = notice(SKEW_CLASSES["short"], r, make_map())
    assert "• Nearest major short cluster: ~$37M around $66,400 (+2.8%), led by 25x." in n


# -- limits ---------------------------------------------------------------------------------------

def test_fit_cuts_at_a_line_and_closes_code_blocks():
    text = "head\n```\n" + "\n".join(f"row {i:05d} " + "x" * 40 for i in range(500)) + "\n```\ntail"
    out = _fit(text, 1000)
    assert len(out) <= 1000 and out.endswith(TRUNCATED)
    body = out[: -len(TRUNCATED)].rstrip("\n").splitlines()
    assert body[-1] == "```" and out.count("```") == 2
    assert all(line in text.splitlines() for line in body)
    assert _fit("short", 1000) == "short"
    for raw in ("a" + "\\\\" * 3000, "\\\\" * 3000):  # one huge line of escaped backslashes
        cut = _fit(raw, 101).split("\n")[0]
        assert cut and (len(cut) - len(cut.rstrip("\\"))) % 2 == 0


def test_summary_truncates_safely_when_over_the_limit(monkeypatch):
    monkeypatch.setattr(commentary, "EMBED_LIMIT", 700)
    s = summary(levels_reading(notes=tuple(f"note {i} " + "y" * 150 for i in range(5))), make_map())
    assert len(s) <= 700 and s.endswith(TRUNCATED)
    assert s.count("```") % 2 == 0


def pathological() -> tuple[Reading, LiquidationMap]:
    n = 5000
    cl = tuple(cluster("short" if i % 2 else "long", PRICE * (1 + (i + 1) * 1e-4 * (1 if i % 2 else -1)), 1e6 + i,
                       "t" * 500) for i in range(n))
    th = tuple(threshold(c.side, c.price, c.notional) for c in cl)
    notes = tuple(f"venue{i} missing: " + "@everyone " * 100 for i in range(300))
    r = replace(make_reading(3e12, 1e3, symbol="X" * 10_000, clusters=cl, thresholds=th, notes=notes),
                distances=tuple(np.linspace(0.001, 0.5, 200)), cum_long=(1e9,) * 200, cum_short=(2e9,) * 200,
                window="w" * 1000)
    m = make_map(venues=tuple(f"v{i}" * 50 for i in range(200)), notes=notes)
    return r, m


def test_pathological_map_stays_within_discord_limits():
    r, m = pathological()
    assert len(summary(r, m)) <= EMBED_LIMIT
    assert len(daily(r, m, previous=r)) <= EMBED_LIMIT
    assert len(notice(SKEW_CLASSES["balanced"], r, m)) <= MESSAGE_LIMIT
    assert len(footer(m)) <= 256 + 64  # embed footer limit is 2048; keep it one short line
    assert "@everyone" not in summary(r, m)


@settings(max_examples=150, deadline=None)
@given(
    short=st.floats(0, 1e13, allow_nan=False), long=st.floats(0, 1e13, allow_nan=False),
    key=st.sampled_from(list(SKEW_CLASSES)), symbol=st.text(max_size=40).filter(lambda t: not bad_numbers(t)),
    notes=st.lists(st.text(max_size=400).filter(lambda t: not bad_numbers(t)), max_size=8),
)
def test_any_reading_renders_within_limits(short, long, key, symbol, notes):
    r = levels_reading(symbol=symbol, notes=tuple(notes))
    r = replace(r, short_in_band=short, long_in_band=long, skew=SKEW_CLASSES[key])
    m = make_map(notes=tuple(notes))
    s, d, n = summary(r, m), daily(r, m, previous=r), notice(SKEW_CLASSES["balanced"], r, m)
    assert len(s) <= EMBED_LIMIT and len(d) <= EMBED_LIMIT and len(n) <= MESSAGE_LIMIT
    for text in (s, d, n):
        assert not bad_numbers(text)
        assert "@everyone" not in text and "@here" not in text


def test_templates_take_no_logic_and_refuse_missing_values():
    with pytest.raises(UndefinedError):
        _env.get_template("summary.md.j2").render(headline="x")
    assert _env.autoescape is False and _env.trim_blocks and _env.lstrip_blocks


# -- the real sample ------------------------------------------------------------------------------

@pytest.mark.parametrize("window, days", [("1d", 1), ("7d", 7), ("30d", 30)])
def test_real_sample_summary_states_the_reading(sample_bars, window, days):
    m = build_map(sample_bars.last(days * 86_400_000), window=window)
    r = read(m)
    s = summary(r, m)
    assert s.startswith(f"**BTCUSDT** {price_str(r.price)} · {window} map · **{r.skew.label}**")
    assert usd(r.short_in_band) in s and usd(r.long_in_band) in s
    pct = commentary._pct
    for t in [t for t in r.thresholds if t.side == "short"][:2]:
        assert f"breaks {price_str(t.price)} ({pct(t.distance_pct)}), about {usd(t.notional)} of shorts" in s
    for t in [t for t in r.thresholds if t.side == "long"][:2]:
        assert f"below {price_str(t.price)} ({pct(t.distance_pct)}) would run through about {usd(t.notional)}" in s
    for c in (r.nearest_long, r.nearest_short):
        assert f"~{usd(c.notional)} around {price_str(c.price)}" in s
    assert (near_sentence(r) or "") in s
    assert not bad_numbers(s)
    assert len(s) <= EMBED_LIMIT


# -- outside text in whole messages (audit issue 8, item 4) -----------------------------------------

def test_md_safe_text_neutralises_outside_text_but_keeps_our_channel_links_and_addresses():
    from analysis.commentary import md_safe_text

    from discord_safe import EVIL, assert_inert

    text = md_safe_text(f"I can't see <#42>; the venue said: {EVIL} (see https://example.org/a_b_c)")
    assert_inert(text)
    assert "<#42>" in text and "https://example.org/a_b_c" in text  # still usable
    assert "evil.example" in text  # the address stays visible, it just is not a masked link
    assert len(md_safe_text("x" * 5000, 100)) <= 100


def test_missing_venues_escapes_each_venue_and_reason():
    from analysis.commentary import missing_venues

    from discord_safe import EVIL, assert_inert

    text = missing_venues({"binance": EVIL, "by`bit": "HTTP 503"})
    lines = text.split("\n")
    assert len(lines) == 2 and lines[0].startswith("**binance**: ")
    for line in lines:
        assert_inert(line)
    assert len(missing_venues({f"v{i}": "HTTP 503 " * 30 for i in range(40)}, 1024)) <= 1024


# -- heatmap_summary ---------------------------------------------------------------------------------

def _sample_states(window: str = "1d"):
    import asyncio

    from analysis.heatmap import build_states
    from analysis.sources import SampleSource
    from analysis.windows import parse_window

    bars = asyncio.run(SampleSource().bars("BTCUSDT", parse_window(window)))
    return build_states(bars, window=window)


def test_heatmap_summary_says_what_it_shows_and_matches_the_states():
    from analysis.commentary import heatmap_summary

    s = _sample_states("7d")
    text = heatmap_summary(s)
    lines = text.splitlines()
    assert lines[0] == f"**BTCUSDT** {price_str(s.price)} · 7d liquidation heatmap · **estimated**"
    assert "Time runs left to right" in lines[1] and "A band ends where price swept it" in lines[1]
    long_now, short_now = s.long[:, -1].sum(), s.short[:, -1].sum()
    assert f"Active now: {usd(long_now)} of longs below price · {usd(short_now)} of shorts above." in text
    # the largest band per side is on its side of the price, with its distance
    for label, sign in (("Largest long band", "−"), ("Largest short band", "+")):
        (line,) = [ln for ln in lines if ln.startswith(label)]
        assert f"({sign}" in line
    assert "Binance" in text and "columns of 1 h" in text and "data to 2026-06-22" in text
    assert "heatmap: one column per" not in text  # the provenance note is the line above already
    for word in ("squeeze", "target", "will ", "expect"):
        assert word not in text.lower()  # describes positioning, never predicts price
    assert len(text) <= EMBED_LIMIT


def test_heatmap_summary_escapes_outside_text_and_respects_its_limit():
    from analysis.commentary import heatmap_summary

    from discord_safe import EVIL, assert_inert

    s = replace(_sample_states(), symbol=EVIL, venues=(EVIL,), window="1d",
                notes=tuple(f"okx missing: {EVIL} {i}" for i in range(10)))
    text = heatmap_summary(s)
    for line in text.splitlines():
        assert_inert(line)
    assert "… and 7 more note(s)" in text
    assert len(heatmap_summary(s, limit=300)) <= 300


def test_heatmap_summary_of_states_without_a_price_is_a_data_error():
    from analysis.commentary import heatmap_summary

    with pytest.raises(DataError, match="no valid current price"):
        heatmap_summary(replace(_sample_states(), price=float("nan")))
