"""The rate-limit budget and the poll schedule, on a fake clock: never over 1200 × share weight in any
60 s, the weight accounted exactly, large positions polled more often than small ones, bounded memory."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx
import pytest

from analysis.errors import InputError
from analysis.measured.addresses import AddressBook, normalise_address
from analysis.measured.budget import PollParams, PollScheduler, WeightBudget
from analysis.measured.info import InfoClient
from analysis.measured.tracker import Tracker, TrackerParams
from fake_clock import FakeTime
from measured_helpers import address

META = {"universe": [{"name": "BTC", "szDecimals": 5, "maxLeverage": 40}]}


def max_window(log: list[tuple[float, int]], window: float = 60.0) -> int:
    """The largest weight any half-open window of ``window`` seconds holds (a sweep over start times)."""
    best, j, acc = 0, 0, 0
    for i in range(len(log)):
        acc += log[i][1]
        while log[i][0] - log[j][0] >= window:
            acc -= log[j][1]
            j += 1
        best = max(best, acc)
    return best


async def test_acquire_never_exceeds_the_budget_in_any_window_and_charges_exactly():
    t = FakeTime()
    budget = WeightBudget(limit=1200, share=0.8, clock=t.clock, sleep=t.sleep)
    assert budget.capacity == 960
    log: list[tuple[float, int]] = []

    async def worker(weights):
        for w in weights:
            await budget.acquire(w)
            log.append((t.t, w))

    start = t.t
    await asyncio.gather(*(worker([2] * 600), worker([2, 2, 20] * 100), worker([2] * 300)))
    assert budget.charged == sum(w for _, w in log) == 2 * 600 + 24 * 100 + 2 * 300
    assert max_window(log) <= 960
    # and it is not wasteful: 4,200 weight at 960 a minute takes a little over four minutes
    assert 4 * 60 <= t.t - start <= 5 * 60


async def test_charged_extras_make_later_requests_wait_and_a_weight_over_the_capacity_is_refused():
    t = FakeTime()
    budget = WeightBudget(limit=100, share=1.0, clock=t.clock, sleep=t.sleep)
    await budget.acquire(60)
    budget.charge(40)  # a response's per-item extra
    before = t.t
    await budget.acquire(2)
    assert t.t - before == pytest.approx(60.0)
    with pytest.raises(InputError):
        await budget.acquire(101)
    for bad in (dict(limit=0), dict(share=0), dict(share=1.5), dict(window_s=0)):
        with pytest.raises(InputError):
            WeightBudget(**bad)


def test_intervals_shrink_with_notional_and_bad_schedules_are_refused():
    p = PollParams()
    assert [p.interval(x) for x in (5e6, 2e5, 2e4, 50.0, 0.0)] == [60.0, 300.0, 900.0, 1800.0, 3600.0]
    for bad in (dict(intervals=()), dict(intervals=((0.0, 60.0), (1e6, 30.0))), dict(intervals=((1e6, 600.0), (0.0, 60.0))),
                dict(empty_s=0), dict(new_share=1.0)):
        with pytest.raises(InputError):
            PollParams(**bad)


def test_new_accounts_wait_for_due_known_ones_and_the_heap_stays_bounded():
    s = PollScheduler(capacity_per_min=960)
    s.add("a")
    assert s.next(0.0) == ("a", 0.0)
    s.take("a")
    s.done("a", 0.0, 5e6)  # due again at 60
    s.add("b")
    assert s.next(10.0) == ("b", 10.0)  # nobody known is due: the new one
    assert s.next(61.0) == ("a", 60.0)  # a known account that is due comes first
    for i in range(1000):
        s.done("a", 61.0 + i, 5e6)
    assert len(s._heap) < 100  # stale entries are dropped


def fake_venue(t: FakeTime, sizes: dict[str, float], calls: list[tuple[float, str, str]]):
    """A Hyperliquid /info on the fake clock: BTC longs of the given USD per account, 90,000 mark."""

    def handler(req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content)
        calls.append((t.t, body["type"], body.get("user", "")))
        if body["type"] == "metaAndAssetCtxs":
            return httpx.Response(200, json=[META, [{"markPx": "90000.0", "openInterest": "30000.0"}]])
        usd = sizes.get(body["user"], 0.0)
        positions = [] if usd <= 0 else [{"type": "oneWay", "position": {
            "coin": "BTC", "szi": str(usd / 90000), "entryPx": "90000.0", "liquidationPx": "81000.0",
            "positionValue": str(usd), "leverage": {"type": "cross", "value": 10}, "marginUsed": str(usd / 10)}}]
        return httpx.Response(200, json={"assetPositions": positions, "time": 1764000000000})

    return handler


async def run_tracker(t: FakeTime, sizes: dict[str, float], seconds: float, *, share: float = 0.8,
                      poll: PollParams | None = None, max_addresses: int = 10_000):
    calls: list[tuple[float, str, str]] = []
    budget = WeightBudget(share=share, clock=t.clock, sleep=t.sleep)
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake_venue(t, sizes, calls))) as c:
        info = InfoClient(c, budget=budget)
        tr = Tracker(info, ["BTC"], params=TrackerParams(max_addresses=max_addresses, seed_vaults=(), seed_recent_trades=False),
                     scheduler=PollScheduler(poll, capacity_per_min=budget.capacity), clock=t.clock, sleep=t.sleep)
        await tr.refresh_ctxs()
        tr.discovered(list(sizes))
        end = t.t + seconds
        while t.t < end:
            if await tr.poll_one() is None:
                break
    return tr, budget, calls


async def test_large_positions_are_polled_more_often_within_the_budget():
    t = FakeTime()
    sizes = {address(1): 5e6, address(2): 2e5, address(3): 2e4, address(4): 500.0}
    sizes.update({address(100 + i): 0.0 for i in range(50)})
    tr, budget, calls = await run_tracker(t, sizes, 3600.0)
    polls = Counter(u for _, kind, u in calls if kind == "clearinghouseState")
    # an hour: $5M every minute, $200k every 5 minutes, $20k every 15, $500 every 30, empty accounts hourly
    assert 59 <= polls[address(1)] <= 61
    assert 12 <= polls[address(2)] <= 13
    assert 4 <= polls[address(3)] <= 5
    assert 2 <= polls[address(4)] <= 3
    assert all(1 <= polls[address(100 + i)] <= 2 for i in range(50))
    log = [(at, 20 if kind == "metaAndAssetCtxs" else 2) for at, kind, _ in calls]
    assert max_window(log) <= budget.capacity
    assert tr.info.weight == budget.charged == sum(w for _, w in log)  # every request accounted, exactly
    snap = tr.snapshot()
    assert sorted(p.user for p in snap.positions) == sorted([address(1), address(2), address(3), address(4)])
    assert snap.accounts["weight"] == budget.charged


async def test_an_overloaded_schedule_stretches_but_keeps_large_positions_first():
    """The scheduler and budget alone (no HTTP): 3000 small accounts need twice the allowed weight."""
    t = FakeTime()
    budget = WeightBudget(share=0.25, clock=t.clock, sleep=t.sleep)  # 300 a minute
    s = PollScheduler(PollParams(intervals=((1e6, 60.0), (0.0, 600.0)), empty_s=600.0), capacity_per_min=budget.capacity)
    sizes = {address(1): 5e6}
    sizes.update({address(10 + i): 2e4 for i in range(3000)})  # 3000 × 2 weight / 600 s = 600 a minute
    for a in sizes:
        s.add(a)
    log, polls = [], Counter()
    end = t.t + 3600.0
    while t.t < end:
        a, due = s.next(t.t)
        if due > t.t:
            await t.sleep(due - t.t)
        s.take(a)
        await budget.acquire(2)
        log.append((t.t, 2))
        polls[a] += 1
        s.done(a, t.t, sizes[a])
    assert budget.capacity == 300 and max_window(log) <= 300
    assert s.stretch() > 2.5 and s.known == 3001
    small = [polls[address(10 + i)] for i in range(3000)]
    assert min(small) >= 1  # everyone was polled
    assert polls[address(1)] >= 5 * max(small)  # the whale is still polled far more often than any small account
    assert len(log) * 2 <= 300 * 61  # within the budget's weight over the hour


def test_addresses_are_validated_and_the_book_evicts_the_least_useful():
    assert normalise_address("0x" + "AB" * 20) == "0x" + "ab" * 20
    for bad in ("0x123", "0x" + "g" * 40, 42, None, "0x" + "1" * 41):
        assert normalise_address(bad) is None
    book = AddressBook(10, evict_batch=0.2)
    for i in range(10):
        book.add(address(i), float(i))
    book.polled(address(0), 0.0)  # polled, nothing open
    book.polled(address(1), 1e6)  # a big position
    new, evicted = book.add(address(99), 100.0)
    assert new == address(99)
    assert evicted == [address(0), address(2)]  # the empty account first, then the oldest never polled
    assert address(1) in book and len(book) == 9
    assert book.add("not an address", 1.0) == (None, []) and book.refused == 1
    with pytest.raises(InputError):
        AddressBook(0)


async def test_evicted_accounts_leave_the_schedule_and_the_positions():
    t = FakeTime()
    sizes = {address(i): 1e5 for i in range(1, 6)}
    tr, _, _ = await run_tracker(t, sizes, 60.0, max_addresses=5)
    assert len(tr.positions) == 5
    tr.book.polled(address(1), 0.0)  # pretend the first closed its position
    tr.discovered([address(50)])
    assert address(1) not in tr.book and address(1) not in tr.scheduler and address(1) not in tr.positions
    assert address(50) in tr.scheduler


def test_the_default_budget_and_the_sources_limiter_fit_one_ip_together():
    from analysis.measured.budget import DEFAULT_SHARE, IP_LIMIT_PER_MIN, WeightBudget
    from analysis.sources.hyperliquid import SOURCE_WEIGHT_PER_MIN

    assert WeightBudget().capacity == int(IP_LIMIT_PER_MIN * DEFAULT_SHARE)
    assert WeightBudget().capacity + SOURCE_WEIGHT_PER_MIN < IP_LIMIT_PER_MIN
