"""ReplicaGroup on its own: round robin, failover bookkeeping, health rechecks, admission."""

from __future__ import annotations

import asyncio

import pytest

from hpcserve_jupyter.jupyter.replicas import NoReplica, Overloaded, ReplicaGroup

pytestmark = pytest.mark.timeout(30)


def group(urls, healthy=(), **kw) -> ReplicaGroup:
    async def health(url: str) -> bool:
        return url in healthy

    return ReplicaGroup(list(urls), health=health, **kw)


async def test_round_robin_skips_replicas_out_of_service():
    g = group(["a", "b", "c"], max_failures=2)
    picks = []
    for _ in range(6):
        r = await g.acquire()
        picks.append(r.url)
        g.release(r)
    assert picks == ["a", "b", "c", "a", "b", "c"]
    b = g.replicas[1]
    g.failed(b)
    assert not b.out
    g.failed(b)
    assert b.out
    picks = []
    for _ in range(4):
        r = await g.acquire()
        picks.append(r.url)
        g.release(r)
    assert "b" not in picks and set(picks) == {"a", "c"}
    r = await g.acquire(frozenset({"a"}))
    assert r.url == "c"
    g.release(r)


async def test_out_of_service_replica_returns_after_its_health_check():
    healthy: set[str] = set()
    g = group(["a"], healthy=healthy, max_failures=1, recheck_interval=0.05)
    g.failed(g.replicas[0])
    with pytest.raises(NoReplica, match="out of service"):
        await g.acquire()  # rechecked at once, still unhealthy
    healthy.add("a")
    await asyncio.sleep(0.06)
    r = await g.acquire()
    assert r.url == "a" and not r.out and r.failures == 0
    g.release(r)


async def test_admission_limit_fifo_queue_and_overload():
    g = group(["a", "b"], max_inflight=1, max_queue=2, queue_timeout=5)
    held = [await g.acquire(), await g.acquire()]
    assert {r.url for r in held} == {"a", "b"}
    order: list[int] = []

    async def queued(i: int):
        r = await g.acquire()
        order.append(i)
        return r

    w1 = asyncio.ensure_future(queued(1))
    await asyncio.sleep(0)
    w2 = asyncio.ensure_future(queued(2))
    await asyncio.sleep(0.01)
    assert g.queued == 2
    with pytest.raises(Overloaded) as exc:
        await g.acquire()
    assert exc.value.retry_after >= 1
    # cheap requests bypass the limit
    extra = await g.acquire(admit=False)
    g.release(extra)
    g.release(held[0])
    r1 = await w1
    assert r1.url == held[0].url and order == [1]
    g.release(held[1])
    r2 = await w2
    assert order == [1, 2]
    g.release(r1)
    g.release(r2)
    assert all(r.inflight == 0 for r in g.replicas) and g.queued == 0


async def test_queue_timeout_and_cancellation_free_the_place():
    g = group(["a"], max_inflight=1, max_queue=1, queue_timeout=0.1)
    held = await g.acquire()
    with pytest.raises(Overloaded, match="waited"):
        await g.acquire()
    assert g.queued == 0
    g.queue_timeout = 5
    waiter = asyncio.ensure_future(g.acquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert g.queued == 0
    g.release(held)
    assert g.replicas[0].inflight == 0


async def test_endpoints_update_keeps_counters():
    g = group(["a", "b"])
    r = await g.acquire()
    assert r.url == "a"
    g.update(["a", "c"])
    assert g.replicas[0] is r and r.inflight == 1
    assert [x.url for x in g.replicas] == ["a", "c"]
    g.release(r)
    assert r.inflight == 0


async def test_degraded_replicas_leave_the_rotation_until_the_manager_clears_them():
    """The manager's health probes mark replicas degraded (a hung engine accepts connections,
    so no connection error would take it out); its own health check does not bring it back."""
    g = group(["a", "b"], healthy={"a", "b"})
    g.update(["a", "b"], degraded=["b"])
    picks = []
    for _ in range(4):
        r = await g.acquire()
        picks.append(r.url)
        g.release(r)
    assert picks == ["a"] * 4
    assert [x["degraded"] for x in g.view()["replicas"]] == [False, True]
    g.update(["a", "b"], degraded=["a", "b"])
    with pytest.raises(NoReplica, match="fail their health checks"):
        await g.acquire()  # "b" passes the group's own check: still out
    g.update(["a", "b"], degraded=[])
    r = await g.acquire()
    assert r.url in ("a", "b")
    g.release(r)
