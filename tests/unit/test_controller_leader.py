"""Leader election over a Lease (fnsession.kube.leader), against an in-memory Lease API with the
API server's optimistic concurrency (a write at a stale resourceVersion is a 409) and fake clocks:
one holder at a time, a standby takes over only after the lease duration of silence (or at once
after a release), a holder that cannot renew stops acting before the lease could be taken from it
and acts again only on a Lease nobody wrote meanwhile."""

from __future__ import annotations

import copy
import itertools
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


class Stop(Exception):
    pass


def drive(clock: Clock, script: Any) -> Any:
    """A fake asyncio.sleep for leader.py: advances the clock, then lets ``script(t)`` change the
    world (or raise Stop to end keep()); returns the original to put back."""
    import fnsession.kube.leader as leader

    async def advance(seconds: float) -> None:
        clock.t += seconds
        script(clock.t)

    original = leader.asyncio.sleep
    leader.asyncio.sleep = advance  # type: ignore[assignment]
    return original


def undrive(original: Any) -> None:
    import fnsession.kube.leader as leader
    leader.asyncio.sleep = original  # type: ignore[assignment]


async def test_a_holder_that_cannot_renew_stops_acting_within_the_renew_deadline_and_acts_again_after() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, clock, "op-a"), elector(api, clock, "op-b")
    await a.acquire()
    assert a.acting.is_set() and not a.paused
    assert not await b.try_acquire_or_renew()  # b stands by, having seen the record
    down_at, back_at = clock.t + 1, clock.t + 1 + 30  # the API server away for 30 s, twice the lease duration
    seen: list[tuple[float, bool]] = []

    def world(t: float) -> None:
        api.down = down_at <= t < back_at
        seen.append((t, a.acting.is_set()))
        if t > back_at + 5:
            raise Stop

    original = drive(clock, world)
    try:
        with pytest.raises(Stop):
            await a.keep()  # never LostLease: nobody could write the Lease meanwhile
    finally:
        undrive(original)
    # seen[i] is the state before the attempt at seen[i][0]; seen[i + 1], the state after it
    after = [(t, acting) for (t, _), (_, acting) in itertools.pairwise(seen)]
    stopped = next(t for t, acting in after if not acting)
    assert 10 <= stopped - (down_at - 1) < 15, "stops acting past the renew deadline, before the lease duration"
    again = next(t for t, acting in after if t > stopped and acting)
    assert back_at <= again <= back_at + a.config.outage_retry + 0.01, "acts again within a retry of the return"
    assert a.leading and not a.paused and api.lease["spec"]["holderIdentity"] == "op-a"  # type: ignore[index]
    # the standby, blind for the outage, gives the holder a full lease duration from its return
    clock.t = back_at + 0.1
    api.down = False
    assert not await b.try_acquire_or_renew()


async def test_a_paused_holder_whose_lease_was_written_meanwhile_exits_even_if_it_looks_free() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, clock, "op-a"), elector(api, clock, "op-b")
    await a.acquire()
    assert not await b.try_acquire_or_renew()
    cut = clock.t + 1  # a alone is cut off (a partition): b can still write

    def world(t: float) -> None:
        if t >= cut and api.lease["spec"]["holderIdentity"] == "op-a":  # type: ignore[index]
            api.down = True
        if t >= cut + 16 and api.down:  # b took it after the lease duration, then released it
            api.down = False
            assert b.observed is not None
            lease = copy.deepcopy(api.lease)
            spec = {**b._new_record(b.observed, clock.wall()), "holderIdentity": None}
            api._store({**lease, "spec": spec})  # type: ignore[dict-item]
        if t > cut + 60:
            raise Stop

    original = drive(clock, world)
    try:
        with pytest.raises(LostLease, match="written by another replica"):
            await a.keep()
    finally:
        undrive(original)
    assert not a.leading and not a.acting.is_set()
    assert api.writes[-1] is None, "a never wrote again: the Lease is free for a standby"


async def test_a_paused_holder_never_runs_what_waits_on_may_act() -> None:
    import asyncio
    api, clock = FakeLeases(), Clock()
    a = elector(api, clock, "op-a")
    await a.acquire()
    ran: list[str] = []

    async def handler() -> None:
        await a.may_act()
        ran.append("ran")

    a.acting.clear()  # what keep() does past the renew deadline
    task = asyncio.create_task(handler())
    await asyncio.sleep(0.01)
    assert ran == [] and a.paused
    a.acting.set()
    await asyncio.wait_for(task, 1)
    assert ran == ["ran"]


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
    with pytest.raises(ValueError, match="0 < outage_retry"):
        LeaseConfig(identity="x", outage_retry=0)
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
