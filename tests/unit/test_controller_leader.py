"""Leader election over a Lease (fnsession.kube.leader), against an in-memory Lease API with the
API server's optimistic concurrency (a write at a stale resourceVersion is a 409) and fake clocks:
one holder at a time, a standby takes over only after the lease duration of silence (or at once
after a release), a holder that cannot renew gives up before the lease could be taken from it."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from fnsession.kube.leader import LeaderElector, LeaseConfig, LostLease


class FakeLeases:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False  # the API server unreachable
        self.writes: list[str | None] = []

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("API server unreachable")

    async def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> Any:
        self._check()
        if self.lease is None:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.lease)

    async def create_namespaced_lease(self, namespace: str, body: Any, **_: Any) -> Any:
        self._check()
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        return self._store(body)

    async def replace_namespaced_lease(self, name: str, namespace: str, body: Any, **_: Any) -> Any:
        self._check()
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        self.writes.append(body["spec"]["holderIdentity"])
        return self.lease


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=self.t)


def elector(api: FakeLeases, clock: Clock, identity: str) -> LeaderElector:
    return LeaderElector(api, LeaseConfig(identity=identity), clock=clock, wall=clock.wall)


async def test_the_first_candidate_creates_the_lease_and_the_second_stands_by() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, clock, "op-a"), elector(api, clock, "op-b")
    assert await a.try_acquire_or_renew()
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == "op-a"
    assert api.lease["spec"]["leaseDurationSeconds"] == 15 and api.lease["spec"]["leaseTransitions"] == 0
    assert not await b.try_acquire_or_renew()
    assert b.holder == "op-a" and b.last_contact == clock.t  # a standby that reaches the API
    clock.t += 14.9
    assert not await b.try_acquire_or_renew()  # the lease duration since b saw it is not over
    assert api.writes == ["op-a"]


async def test_a_renewing_holder_keeps_the_lease_however_long() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, clock, "op-a"), elector(api, clock, "op-b")
    assert await a.try_acquire_or_renew()
    acquired = api.lease["spec"]["acquireTime"]  # type: ignore[index]
    for _ in range(30):  # 60 s of renewals every 2 s; b looks every 2 s too
        clock.t += 2
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
    assert set(api.writes) == {"op-a"} and len(api.writes) == 31
    spec = api.lease["spec"]  # type: ignore[index]
    assert spec["acquireTime"] == acquired != spec["renewTime"] and spec["leaseTransitions"] == 0


async def test_the_standby_takes_over_after_the_lease_duration_of_silence_counted_from_when_it_saw_the_change() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, clock, "op-a"), elector(api, clock, "op-b")
    assert await a.try_acquire_or_renew()
    acquired = api.lease["spec"]["acquireTime"]  # type: ignore[index]
    clock.t += 1
    assert await a.try_acquire_or_renew()  # the last renewal; then a is killed
    clock.t += 1
    assert not await b.try_acquire_or_renew()  # b sees the record change now (t0)
    clock.t += 14
    assert not await b.try_acquire_or_renew()  # 14 s after b saw it: not yet
    clock.t += 1.01
    assert await b.try_acquire_or_renew()      # 15 s: b takes it
    spec = api.lease["spec"]  # type: ignore[index]
    assert spec["holderIdentity"] == "op-b" and spec["leaseTransitions"] == 1 and spec["acquireTime"] != acquired
    # a (if it were still alive) finds the Lease gone to b and stops at once
    with pytest.raises(LostLease, match="held by op-b"):
        clock.t += 0.5
        a.config = LeaseConfig(identity="op-a", retry_period=0.001, renew_deadline=10, lease_duration=15)
        await a.keep()
    assert not a.leading


async def test_two_candidates_racing_for_an_expired_lease_one_wins() -> None:
    api, clock = FakeLeases(), Clock()
    a, b, c = (elector(api, clock, n) for n in ("op-a", "op-b", "op-c"))
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew() and not await c.try_acquire_or_renew()
    clock.t += 16
    # b and c both read the expired record, then both write at the version they read
    lease_b, lease_c = await api.read_namespaced_lease("x", "y"), await api.read_namespaced_lease("x", "y")
    won_b = await b._write(lease_b, b._new_record(b.observed, clock.wall()), clock.t)
    won_c = await c._write(lease_c, c._new_record(c.observed, clock.wall()), clock.t)
    assert (won_b, won_c) == (True, False)
    assert api.lease["spec"]["holderIdentity"] == "op-b"  # type: ignore[index]


async def test_a_released_lease_is_taken_at_once() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, clock, "op-a"), elector(api, clock, "op-b")
    await a.acquire()
    assert a.leading
    assert not await b.try_acquire_or_renew()
    assert await a.release() and not a.leading
    clock.t += 0.5
    assert await b.try_acquire_or_renew()
    assert not await a.release()  # not the holder any more: nothing written
    assert api.writes == ["op-a", None, "op-b"]


async def test_a_holder_that_cannot_renew_gives_up_within_the_renew_deadline() -> None:
    api, clock = FakeLeases(), Clock()
    cfg = LeaseConfig(identity="op-a", lease_duration=15, renew_deadline=10, retry_period=2)
    a = LeaderElector(api, cfg, clock=clock, wall=clock.wall)
    await a.acquire()
    api.down = True
    renewed_at = clock.t
    import fnsession.kube.leader as leader

    async def advance(seconds: float) -> None:
        clock.t += seconds

    original = leader.asyncio.sleep
    leader.asyncio.sleep = advance  # type: ignore[assignment]
    try:
        with pytest.raises(LostLease, match="could not renew"):
            await a.keep()
    finally:
        leader.asyncio.sleep = original  # type: ignore[assignment]
    gave_up = clock.t - renewed_at
    assert 10 <= gave_up < 15, gave_up  # before anyone could take the lease from it
    assert not a.leading


async def test_a_holder_rides_out_failed_renewals_shorter_than_the_deadline() -> None:
    api, clock = FakeLeases(), Clock()
    a = elector(api, clock, "op-a")
    await a.acquire()
    api.down = True
    clock.t += 6
    assert not await a.try_acquire_or_renew()
    api.down = False
    clock.t += 2
    assert await a.try_acquire_or_renew() and a.last_renew == clock.t


def test_the_timings_must_be_ordered_and_the_identity_set() -> None:
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        LeaseConfig(identity="x", lease_duration=10, renew_deadline=10, retry_period=2)
    with pytest.raises(ValueError, match="identity"):
        LeaseConfig(identity="")


async def test_the_standby_looks_again_just_as_the_lease_runs_out() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, clock, "op-a"), elector(api, clock, "op-b")
    assert await a.try_acquire_or_renew()  # then a dies
    import fnsession.kube.leader as leader

    async def advance(seconds: float) -> None:
        assert seconds <= 2.4
        clock.t += seconds

    original = leader.asyncio.sleep
    leader.asyncio.sleep = advance  # type: ignore[assignment]
    start = clock.t
    try:
        await b.acquire()
    finally:
        leader.asyncio.sleep = original  # type: ignore[assignment]
    assert b.leading and 15 <= clock.t - start <= 15.2, clock.t - start
