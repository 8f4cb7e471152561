"""Binance's open-interest budget: the named budget, its priority queue, held-back symbols, coalescing.

Offline: the fake Binance of tests/fake_binance.py over the bundled real sample, a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import httpx
import pytest

from analysis import commentary
from analysis.sources.binance import KLINES, OI_BUDGET, OI_HIST, BinanceSource
from analysis.sources.budget import ASKED, OTHER, SUBSCRIBED, BudgetParams, Demand, HeldBack, RequestBudget
from analysis.sources.cache import BarCache
from analysis.sources.http import RateLimiter
from analysis.windows import WINDOWS
from discord_safe import EVIL, assert_inert
from fake_binance import FakeBinance
from fake_clock import FakeTime

STEP = 300_000
# a slow budget so tests can drain it: 5 steady per 5 minutes (1 a minute) plus a burst of 5
SLOW = BudgetParams("binance openInterestHist", 10, 300.0, margin=0.5)


class Clock:
    def __init__(self, now_ms: int) -> None:
        self.ms = now_ms
        self.mono = 0.0
        self.gate: asyncio.Event | None = None  # when set up, every wait also waits for the test to open it

    def now_ms(self) -> int:
        return self.ms

    def clock(self) -> float:
        return self.mono

    async def sleep(self, s: float) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.mono += s
        await asyncio.sleep(0)


@pytest.fixture
def world(sample_bars):
    frame = sample_bars.to_frame()
    clock = Clock(int(frame["time"].iloc[-1]) + STEP + 30_000)
    return FakeBinance(frame, clock.now_ms), clock


def source(fake, clock, params: BudgetParams = SLOW, **kw) -> BinanceSource:
    budget = RequestBudget(params, clock=clock.clock, sleep=clock.sleep, wall=lambda: 1_000_000.0 + clock.mono)
    return BinanceSource(transport=fake.transport, cache=BarCache(None), sleep=clock.sleep, clock=clock.clock,
                         now_ms=clock.now_ms, oi_budget=budget, **kw)


async def settle(src: BinanceSource, rounds: int = 200) -> None:
    """Let queued refreshes run (the fake clock jumps over the budget's waits)."""
    for _ in range(rounds):
        if not src._refreshing:
            return
        await asyncio.sleep(0)
    raise AssertionError("the queued refresh never finished")


# -- the budget itself -----------------------------------------------------------------------------

def test_the_documented_budget_is_named_with_a_margin():
    assert (OI_BUDGET.limit, OI_BUDGET.window_s, OI_BUDGET.margin) == (1000, 300.0, 0.9)
    assert OI_BUDGET.rate_per_s == pytest.approx(3.0) and OI_BUDGET.burst == 100
    assert OI_BUDGET.describe() == "binance openInterestHist: 1,000 requests per 5 min (900 steady + 100 burst)"
    with pytest.raises(ValueError):
        BudgetParams("x", 10, 60.0, margin=1.0)


async def test_no_five_minute_window_ever_sees_more_than_the_limit():
    ft = FakeTime(0.0)
    budget = RequestBudget(OI_BUDGET, clock=ft.clock, sleep=ft.sleep)
    stamps = []
    for _ in range(3000):
        await budget.take()
        stamps.append(ft.t)
    worst = max(sum(1 for t in stamps if a <= t < a + 300.0) for a in stamps)
    assert worst <= 1000  # burst + steady, never the limit exceeded
    assert worst >= 990  # and the budget is used, not wasted
    assert (stamps[-1] - stamps[100]) == pytest.approx((3000 - 101) / 3.0, rel=1e-6)  # 3 a second once the burst is spent
    assert budget.taken == 3000


async def test_takes_are_served_subscribed_first_then_most_asked_then_the_rest():
    ft = FakeTime(0.0)
    demand = Demand(clock=ft.clock)
    demand.set_subscribed({"SOLUSDT"})
    demand.asked("ETHUSDT")
    for _ in range(3):
        demand.asked("XRPUSDT")
    budget = RequestBudget(SLOW, clock=ft.clock, sleep=ft.sleep)
    budget.limiter.charge(SLOW.burst)  # drained: every take waits for the refill
    served: list[str] = []

    async def one(sym: str) -> None:
        await budget.take(demand.priority(sym))
        served.append(sym)

    await asyncio.gather(*(one(s) for s in ("DOGEUSDT", "ETHUSDT", "XRPUSDT", "SOLUSDT", "ADAUSDT")))
    assert served == ["SOLUSDT", "XRPUSDT", "ETHUSDT", "DOGEUSDT", "ADAUSDT"]
    assert demand.priority("SOLUSDT")[0] == SUBSCRIBED and demand.priority("ETHUSDT")[0] == ASKED
    assert demand.priority("ADAUSDT") == (OTHER, 0)


async def test_a_waiter_that_leaves_gives_its_token_to_the_next():
    ft = FakeTime(0.0)
    budget = RequestBudget(SLOW, clock=ft.clock, sleep=ft.sleep)
    budget.limiter.charge(SLOW.burst)
    first = asyncio.ensure_future(budget.take())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await budget.take()
    assert budget.taken == 1 and budget.waiting == 0


def test_the_asked_counter_is_bounded_and_decays():
    ft = FakeTime(0.0)
    d = Demand(max_symbols=3, half_life_s=100.0, clock=ft.clock)
    for sym, n in (("A", 5), ("B", 4), ("C", 3)):
        for _ in range(n):
            d.asked(sym)
    d.asked("D")  # the table is full: D takes the least counted slot (C's 3) and climbs past it
    assert len(d._counts) == 3 and d.count("C") == 0 and d.count("D") == 4 and d.count("A") == 5
    assert d.priority("A") < d.priority("D") < d.priority("ZZZ")
    ft.t += 100.0
    assert d.count("A") == 2.5  # halved after one half-life
    ft.t += 1000.0
    assert d.count("A") == 0 and d.priority("A") == (OTHER, 0)  # long ago is not recent


def test_eta_counts_the_queue_ahead_and_the_balance():
    ft = FakeTime(0.0)
    lim = RateLimiter(SLOW.rate_per_s, SLOW.burst, clock=ft.clock, sleep=ft.sleep)
    budget = RequestBudget(SLOW, limiter=lim)
    assert budget.eta_s(need=5) == 0.0  # the burst covers it
    assert budget.eta_s(need=6) == pytest.approx(60.0)  # one more: a minute of refill
    lim.pause(500)
    assert budget.eta_s(need=1) >= 500  # a server-ordered pause counts


# -- every OI request charged; 429 and 418 pause the budget ------------------------------------------

async def test_every_attempt_is_charged_and_a_429_retry_after_pauses_the_budget(world):
    fake, clock = world
    src = source(fake, clock)
    fake.inject(OI_HIST, httpx.Response(429, headers={"Retry-After": "7"}, json={"code": -1003, "msg": "Too many"}))
    bars = await src.bars("BTCUSDT", WINDOWS["1d"])
    assert len(bars) == 288 and fake.count(OI_HIST) == 2
    assert clock.mono >= 7  # waited as told
    # both attempts came out of the 5-token burst (7 s refill at 1/min is ~0.12)
    assert 2.9 < src.oi_limiter.tokens < 3.3


@pytest.mark.parametrize("status", [429, 418])
async def test_a_long_retry_after_pauses_the_budget_for_every_symbol(world, status):
    fake, clock = world
    src = source(fake, clock, params=OI_BUDGET)
    fake.inject(OI_HIST, httpx.Response(status, headers={"Retry-After": "500"}, json={"code": -1003, "msg": "Too many"}))
    with pytest.raises(Exception) as ei:
        await src.bars("BTCUSDT", WINDOWS["1d"])
    assert getattr(ei.value, "retry_after", 0) >= 499
    assert src.oi_limiter.wait_s(1) >= 499  # the budget itself is paused, not only this request
    assert src.oi_budget.eta_s(need=1) >= 499


# -- held back --------------------------------------------------------------------------------------

async def test_a_never_fetched_symbol_is_held_back_with_an_eta_then_served(world, caplog):
    fake, clock = world
    src = source(fake, clock)
    src.oi_limiter.charge(SLOW.burst)  # the budget is spent: the next request waits a minute
    clock.gate = asyncio.Event()  # and that minute does not pass until the test says so
    caplog.set_level(logging.INFO, logger="analysis.sources.budget")
    with pytest.raises(HeldBack) as ei:
        await src.bars("BTCUSDT", WINDOWS["1d"])
    text = str(ei.value)
    assert "BTCUSDT is queued behind Binance's open-interest request budget" in text
    assert "(10 requests per 5 minutes per IP, shared by every map this bot makes)" in text
    assert text.endswith("its data should be ready in about 60 s")
    assert ei.value.retry_after == pytest.approx(60.0)
    with pytest.raises(HeldBack):  # asked again meanwhile: the same hold, not a second fetch or log line
        await src.bars("BTCUSDT", WINDOWS["1d"])
    holds = [r for r in caplog.records if "held back by the budget" in r.getMessage()]
    assert len(holds) == 1
    assert [h.key for h in src.oi_budget.held()] == ["BTCUSDT 5m"] and not src.oi_budget.held()[0].stale
    assert fake.count(OI_HIST) == 0 and src.oi_budget.waiting == 1  # queued, once
    clock.gate.set()  # the minute passes
    await settle(src)  # the queued refresh goes on without anyone waiting
    assert fake.count(OI_HIST) == 1
    bars = await src.bars("BTCUSDT", WINDOWS["1d"])
    assert len(bars) == 288 and fake.count(OI_HIST) == 1  # served from what the queued refresh fetched
    assert src.oi_budget.held() == []
    assert any("no longer held back" in r.getMessage() for r in caplog.records)


async def test_a_cached_symbol_is_served_stale_while_held_back(world):
    fake, clock = world
    src = source(fake, clock)
    clock.ms -= 3 * STEP
    first = await src.bars("BTCUSDT", WINDOWS["1d"])
    clock.ms += 3 * STEP  # three new bars closed
    src.oi_limiter.charge(SLOW.burst)
    src.oi_limiter.charge(SLOW.burst)  # deep in debt: minutes away
    stale = await src.bars("BTCUSDT", WINDOWS["1d"])
    assert int(stale.time[-1]) == int(first.time[-1])  # the last data, not a failure
    note = next(n for n in stale.notes if n.startswith("stale: held back"))
    assert "Binance's open-interest request budget" in note and "a refresh is queued" in note
    assert src.oi_budget.held()[0].stale
    await settle(src)
    fresh = await src.bars("BTCUSDT", WINDOWS["1d"])
    assert int(fresh.time[-1]) == int(first.time[-1]) + 3 * STEP
    assert not any(n.startswith("stale") for n in fresh.notes)


async def test_the_report_service_names_binance_held_back_and_maps_the_other_venue(world, sample_bars):
    from analysis.report import ReportService
    from analysis.sources import SAMPLE_PATH, CsvSource

    fake, clock = world
    src = source(fake, clock)
    src.oi_limiter.charge(SLOW.burst)
    other = CsvSource(SAMPLE_PATH, venue="bybit", symbol="BTCUSDT")
    service = ReportService({"binance": src, "bybit": other}, now_ms=clock.now_ms)
    rep = await service.report("BTCUSDT", "1d")
    assert rep.venues == ("bybit",) and "queued behind Binance's open-interest request budget" in rep.missing["binance"]


def test_the_bot_says_when_a_held_back_symbol_will_be_ready():
    from bot.app import error_message

    exc = HeldBack("binance", OI_HIST, "BTCUSDT is queued behind Binance's open-interest request budget; "
                   "its data should be ready in about 4 min", retry_after=240.0)
    text, bug = error_message(exc)
    assert not bug and text.startswith("BTCUSDT is queued behind") and "<t:" in text and "ask again then" in text
    assert "unavailable right now" not in text


# -- coalescing ---------------------------------------------------------------------------------------

async def test_concurrent_refreshes_of_one_symbol_share_one_fetch(world):
    fake, clock = world
    src = source(fake, clock, params=OI_BUDGET)
    one, seven = await asyncio.gather(src.bars("BTCUSDT", WINDOWS["1d"]), src.bars("BTCUSDT", WINDOWS["7d"]))
    assert len(one) == 288 and len(seven) == 2016
    # the 7d request joined the 1d refresh, then fetched only the 6 days before it: 1 + 4 OI pages, not 1 + 5
    assert fake.count(OI_HIST) == 5 and fake.count(KLINES) == 3


async def test_a_refresh_already_made_for_the_newest_bar_is_not_repeated(world, sample_bars):
    fake, clock = world
    src = source(fake, clock, params=OI_BUDGET)
    newest = int(sample_bars.time[-1])
    fake.drop_oi_times = {newest}  # the venue has not published the newest OI point yet
    bars = await src.bars("BTCUSDT", WINDOWS["1d"])
    assert int(bars.time[-1]) == newest - STEP
    n = fake.count()
    for _ in range(5):  # every request meanwhile: no request to the venue
        await src.bars("BTCUSDT", WINDOWS["1d"])
    assert fake.count() == n
    fake.drop_oi_times = set()
    clock.mono += src.refresh_min_s  # after the freshness interval, it is asked once more
    bars = await src.bars("BTCUSDT", WINDOWS["1d"])
    assert int(bars.time[-1]) == newest and fake.count(OI_HIST) - 1 == 1


# -- /about -------------------------------------------------------------------------------------------

class _Health:
    async def check(self):
        return {}

    async def close(self) -> None:
        pass


async def test_about_counts_the_held_back_symbols_and_names_the_first_few(world):
    from bot.cogs.about import AboutCog
    from bot.pacer import posting_capacity
    from datetime import timedelta

    fake, clock = world
    src = source(fake, clock)
    for i in range(7):
        src.oi_budget.hold(f"SYM{i}USDT 5m", 120.0, stale=i % 2 == 0)
    cap = posting_capacity({0: 100_000}, 45.0, timedelta(hours=2))
    bot = SimpleNamespace(settings=SimpleNamespace(sources=SimpleNamespace(source="live")),
                          service=SimpleNamespace(venues=("binance",), sources={"binance": src}),
                          scheduler=SimpleNamespace(capacity=cap))
    cog = AboutCog(bot, health=_Health())
    held = cog._held_back()
    assert SLOW.describe() == "binance openInterestHist: 10 requests per 5 min (5 steady + 5 burst)"
    assert held == ((SLOW.describe(), 7, tuple(f"SYM{i}USDT 5m" for i in range(5))),)
    facts = commentary.AboutFacts(method_url="https://example.org/m", venues=("binance",), source="live",
                                  held_back=held, posting=cog._posting())
    text = commentary.about(facts)
    assert "Held back by binance openInterestHist: 10 requests per 5 min" in text
    assert "7 (SYM0USDT 5m, SYM1USDT 5m, SYM2USDT 5m, SYM3USDT 5m, SYM4USDT 5m and 2 more)" in text
    assert "324,000 channels due in one minute fit" in text and "100,000 posts" in text


def test_about_escapes_held_back_keys():
    facts = commentary.AboutFacts(method_url="https://example.org/m", venues=("binance",), source="live",
                                  held_back=(("a budget", 1, (EVIL,)),))
    line = next(x for x in commentary.about(facts).splitlines() if "Held back" in x)
    assert_inert(line)
