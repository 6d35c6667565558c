"""ReadyHealth on its own: probes only when due, degraded after N failures in a row, cleared
by a passing probe, a degraded endpoint kept across a restart until it passes. The probe is a
function of the test (the manager's is an HTTP GET, exercised by R14 on real engines)."""

from __future__ import annotations

import asyncio

import pytest

from hpcserve_jupyter.readiness import ReadyHealth

pytestmark = pytest.mark.timeout(30)


class Engines:
    def __init__(self) -> None:
        self.hung: set[str] = set()
        self.probed: list[str] = []
        self.verdicts: list[tuple[str, list[str], str]] = []
        self.degraded: list[str] = []

    async def probe(self, url: str, path: str, key: str) -> bool:
        self.probed.append(url)
        return url not in self.hung

    def verdict(self, sid: str, bad: list[str], reason: str) -> None:
        self.verdicts.append((sid, bad, reason))
        self.degraded = bad


async def rounds(h: ReadyHealth, e: Engines, n: int, urls: list[str]) -> None:
    for _ in range(n):
        await asyncio.sleep(h.interval * 1.1)
        h.consider("s1", urls, "/health", "k", e.degraded)
        await h.settled()


def test_degraded_after_failures_in_a_row_and_healthy_again():
    asyncio.run(_degraded_then_healthy())


async def _degraded_then_healthy() -> None:
    e = Engines()
    h = ReadyHealth(e.probe, e.verdict, interval=0.05, failures=2)
    urls = ["http://a", "http://b"]
    h.consider("s1", urls, "/health", "k", [])
    assert e.probed == []  # just became ready: the first probe is one interval away
    await rounds(h, e, 2, urls)
    assert e.verdicts == [] and len(e.probed) == 4
    e.hung.add("http://b")
    await rounds(h, e, 1, urls)
    assert e.verdicts == []  # one failure is not yet degraded
    await rounds(h, e, 1, urls)
    assert e.verdicts[-1][1] == ["http://b"] and "1 of its 2 replicas" in e.verdicts[-1][2]
    await rounds(h, e, 2, urls)
    assert len(e.verdicts) == 1  # said once while it stays so
    e.hung.clear()
    await rounds(h, e, 1, urls)
    assert e.verdicts[-1][1] == [] and e.verdicts[-1][2] == ""
    await h.close()


def test_a_degraded_endpoint_stays_so_after_a_restart_until_it_passes():
    asyncio.run(_kept_after_restart())


async def _kept_after_restart() -> None:
    e = Engines()
    e.degraded = ["http://a"]  # as the store says after a server restart
    e.hung.add("http://a")
    h = ReadyHealth(e.probe, e.verdict, interval=0.05, failures=3)
    await rounds(h, e, 2, ["http://a"])
    assert e.verdicts == []  # its failures count anew, but it is not cleared meanwhile
    e.hung.clear()
    await rounds(h, e, 1, ["http://a"])
    assert e.verdicts == [("s1", [], "")]
    await h.close()
