"""bot.cluster_store: validation before any query, the shared per-server cap, the natural key,
list/remove/resume, pausing, and the compare-and-set of the alert state (real SQLite file)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from analysis.cluster_alerts import AlertState
from analysis.errors import InputError
from bot.cluster_store import ClusterStore
from bot.store import Store

UTC = timezone.utc
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
G, C, U = 111, 222, 333


@pytest.fixture
async def store(url):
    s = await Store.open(url, max_per_guild=4)
    yield s
    await s.close()


@pytest.fixture
def clusters(store):
    return ClusterStore(store)


async def add(clusters, **kw):
    args = dict(symbol="BTC", window="7d", exchange="all", kind="approaching", created_by=U, now=NOW)
    args.update(kw)
    return await clusters.add(args.pop("guild", G), args.pop("channel", C), **args)


async def test_add_stores_defaults_and_canonical_values(clusters):
    a = await add(clusters, symbol="eth/usdt", exchange="BYBIT", kind=" Swept ", min_usd=2e6, minutes=30)
    assert (a.symbol, a.exchange, a.kind, a.within_pct, a.min_usd, a.minutes) == ("ETHUSDT", "bybit", "swept", None,
                                                                                  2e6, 30)
    assert a.cooldown_s == 3600 and a.phase is None and not a.paused
    assert a.params.near_pct == 0.5 and a.params.usd == 2e6 and a.cooldown == timedelta(hours=1)
    assert await clusters.get(a.id) == a


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"kind": "near"}, "choose approaching or swept"),
        ({"within_pct": 50.0}, "within_pct must be a number from 0.1 to 10"),
        ({"min_usd": 5e6}, "apply to swept alerts only"),
        ({"kind": "swept", "minutes": 1000}, "minutes must be a whole number from 5 to 240"),
        ({"kind": "swept", "min_usd": float("inf")}, "min_usd must be from"),
        ({"cooldown_s": 10}, "cooldown must be 1 minute(s) to 7 days"),
        ({"window": "2h"}, "window"),
        ({"exchange": "kraken"}, "unknown exchange 'kraken'; choose one of all"),
        ({"symbol": "BTC;DROP"}, "symbol"),
        ({"guild": 2**64}, "server id must be a positive Discord id"),
        ({"channel": 0}, "channel id must be a positive Discord id"),
    ],
)
async def test_refusals_say_what_is_valid_and_store_nothing(clusters, kw, needle):
    with pytest.raises(InputError) as e:
        await add(clusters, **kw)
    assert needle in str(e.value)
    assert await clusters.list(G) == []


async def test_cap_counts_daily_skew_and_cluster_alerts_together(store, clusters):
    await store.add_daily(G, C, symbols="BTC", window="1d", exchange="all", time="01:00", timezone="UTC",
                          created_by=U, now=NOW)
    await store.add_skew_alert(G, C, symbol="BTC", window="1d", exchange="all", created_by=U)
    await add(clusters)
    await add(clusters, kind="swept")
    assert await store.count_subscriptions(G) == 4
    with pytest.raises(InputError, match="already has 4 subscriptions \\(daily reports, skew and cluster alerts"):
        await add(clusters, symbol="ETH")
    with pytest.raises(InputError, match="limit is 4"):
        await store.add_skew_alert(G, C, symbol="ETH", window="1d", exchange="all", created_by=U)
    await add(clusters, guild=555, channel=999)  # other servers are not affected
    a = (await clusters.list(G))[0]
    await clusters.remove(G, a.id)
    await add(clusters, symbol="ETH")


async def test_the_same_alert_twice_is_refused_naming_the_first(clusters):
    a = await add(clusters)
    with pytest.raises(InputError, match=f"that approaching cluster alert for BTCUSDT 7d on all already exists in this "
                                         f"channel \\(id {a.id}\\)"):
        await add(clusters, within_pct=2.0)
    b = await add(clusters, kind="swept")  # another kind is another alert
    assert b.id != a.id


async def test_remove_resume_and_other_servers_ids(clusters):
    a = await add(clusters)
    for bad in (a.id + 100, 0, 2**31):
        with pytest.raises(InputError, match="no cluster alert with id"):
            await clusters.remove(G, bad)
    with pytest.raises(InputError, match="no cluster alert with id"):
        await clusters.remove(999, a.id)  # not this server's
    assert await clusters.set_state(a.id, expected=AlertState(), new=AlertState("near", 101.5, "short", NOW))
    assert await clusters.pause(a.id, "missing permissions: Embed Links", now=NOW)
    assert not await clusters.pause(a.id, "again")
    (p,) = await clusters.list(G)
    assert p.paused and p.paused_reason == "missing permissions: Embed Links" and p.phase == "near"
    assert await clusters.active() == []
    r = await clusters.resume(G, a.id)
    assert not r.paused and r.phase is None and r.level is None  # the next check is a baseline
    assert r.last_announced_at == NOW  # the cooldown still counts from the last notice
    gone = await clusters.remove(G, a.id)
    assert gone.id == a.id and await clusters.list(G) == []


async def test_set_state_is_a_compare_and_set(clusters):
    a = await add(clusters)
    near = AlertState("near", 101.25, "short", NOW)
    assert await clusters.set_state(a.id, expected=AlertState(), new=near)
    # a second process that read the old state loses
    assert not await clusters.set_state(a.id, expected=AlertState(), new=AlertState("armed"))
    assert (await clusters.get(a.id)).state == near
    # putting the old state back (a failed send) works only from the state written
    assert await clusters.set_state(a.id, expected=near, new=AlertState())
    assert (await clusters.get(a.id)).state == AlertState()
    assert not await clusters.set_state(2**40, expected=AlertState(), new=near)


async def test_pause_channel_pauses_only_that_channels_alerts(clusters):
    a = await add(clusters)
    b = await add(clusters, channel=C + 1)
    assert await clusters.pause_channel(C, "channel deleted or not visible") == 1
    assert [x.id for x in await clusters.active()] == [b.id]
    assert (await clusters.get(a.id)).paused
    assert await clusters.pause_channel(2**64, "x") == 0
