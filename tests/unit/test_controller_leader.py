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
    def __init__(self, clock: Clock | None = None) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False  # the API server unreachable
        self.status: int | None = None  # answer every request with this HTTP error instead
        self.writes: list[str | None] = []
        self.clock = clock
        self.read_delay = self.write_delay = 0.0  # how long a request takes (on the fake clock)
        self.lose_answer = False  # a write is stored, but its answer never arrives

    async def _take(self, delay: float, timeout: float | None) -> None:
        if self.down:
            raise ConnectionError("API server unreachable")
        if self.status is not None:
            raise ApiException(status=self.status, reason="Service Unavailable")
        if delay and self.clock is not None:
            self.clock.t += min(delay, timeout or delay)
            if timeout is not None and delay > timeout:
                raise TimeoutError("request timed out")

    async def read_namespaced_lease(self, name: str, namespace: str, _request_timeout: float | None = None, **_: Any) -> Any:
        await self._take(self.read_delay, _request_timeout)
        if self.lease is None:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.lease)

    async def create_namespaced_lease(self, namespace: str, body: Any, _request_timeout: float | None = None, **_: Any) -> Any:
        await self._take(self.write_delay, _request_timeout)
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        return self._answer(self._store(body))

    async def replace_namespaced_lease(self, name: str, namespace: str, body: Any,
                                       _request_timeout: float | None = None, **_: Any) -> Any:
        await self._take(self.write_delay, _request_timeout)
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        return self._answer(self._store(body))

    def _answer(self, stored: dict[str, Any]) -> dict[str, Any]:
        if self.lose_answer:
            raise TimeoutError("the answer was lost")
        return stored

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


def elector(api: FakeLeases, clock: Clock, identity: str, sleep: Any = None, **config: Any) -> LeaderElector:
    return LeaderElector(api, LeaseConfig(identity=identity, **config), clock=clock, wall=clock.wall,
                         **({"sleep": sleep} if sleep is not None else {}))


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


class Driver:
    """The elector's sleep: advances the fake clock, then lets ``script(t)`` change the world (or
    raise Stop to end keep()); records the holder's state at every wake."""

    def __init__(self, clock: Clock, script: Any) -> None:
        self.clock, self.script = clock, script

    async def sleep(self, seconds: float) -> None:
        self.clock.t += seconds
        self.script(self.clock.t)


def record_clears(e: LeaderElector, clock: Clock) -> list[float]:
    """When ``e`` stops acting, on the fake clock."""
    cleared: list[float] = []
    clear = e.acting.clear

    def recorded() -> None:
        if e.acting.is_set():
            cleared.append(clock.t)
        clear()

    e.acting.clear = recorded  # type: ignore[method-assign]
    return cleared


async def test_a_holder_that_cannot_renew_stops_acting_at_the_renew_deadline_and_acts_again_after() -> None:
    clock = Clock()
    api = FakeLeases(clock)
    down_at, back_at = clock.t + 1, clock.t + 1 + 30  # the API server away for 30 s, twice the lease duration
    seen: list[tuple[float, bool]] = []

    def world(t: float) -> None:
        api.down = down_at <= t < back_at
        seen.append((t, a.acting.is_set()))
        if t > back_at + 5:
            raise Stop

    # retries every 0.7 s once failing: the deadline (t+10) falls between two of them (t+9.7, t+10.4)
    a = elector(api, clock, "op-a", Driver(clock, world).sleep, outage_retry=0.7)
    await a.acquire()
    renewed_at = clock.t
    cleared = record_clears(a, clock)
    assert a.acting.is_set() and not a.paused
    with pytest.raises(Stop):
        await a.keep()  # never LostLease: nobody could write the Lease meanwhile
    assert cleared == [renewed_at + 10], "stops acting at the renew deadline, before anyone could take the Lease"
    # seen[i] is the state before the attempt at seen[i][0]; seen[i + 1], the state after it
    after = [(t, acting) for (t, _), (_, acting) in itertools.pairwise(seen)]
    again = next(t for t, acting in after if t > cleared[0] and acting)
    assert back_at <= again <= back_at + a.config.outage_retry + 0.01, "acts again within a retry of the return"
    assert a.leading and not a.paused and api.lease["spec"]["holderIdentity"] == "op-a"  # type: ignore[index]


async def test_a_slow_api_server_cannot_keep_a_holder_acting_past_its_deadline() -> None:
    clock = Clock()
    api = FakeLeases(clock)

    def world(t: float) -> None:
        if t > start + 30:
            raise Stop

    a = elector(api, clock, "op-a", Driver(clock, world).sleep)
    await a.acquire()
    start = renewed_at = clock.t
    cleared = record_clears(a, clock)
    api.read_delay, api.write_delay = 1.0, 60  # reads answered in a second, writes never
    with pytest.raises(Stop):
        await a.keep()
    # each request's timeout is cut to what is left before the deadline: the attempt begun at t+7.5
    # (a 1 s read, then a write with the usual 4 s timeout) would carry the holder to t+12.5
    assert cleared and cleared[0] <= renewed_at + a.config.renew_deadline + 0.06, cleared
    assert a.paused


@pytest.mark.parametrize("outage", ["unreachable", "HTTP 503"])
async def test_a_standby_blind_for_an_outage_does_not_count_it_against_the_holder(outage: str) -> None:
    clock = Clock()
    api = FakeLeases(clock)
    a, b = elector(api, clock, "op-a"), elector(api, clock, "op-b")
    assert await a.try_acquire_or_renew()  # the holder's last renewal; then it is cut off with everyone
    clock.t += 0.5
    assert not await b.try_acquire_or_renew()  # b sees the record
    seen_at = clock.t
    if outage == "unreachable":
        api.down = True
    else:
        api.status = 503
    for _ in range(15):  # 30 s of failed reads every 2 s
        clock.t += 2
        assert not await b.try_acquire_or_renew()
    api.down, api.status = False, None
    back = clock.t + 0.5
    clock.t = back
    assert not await b.try_acquire_or_renew(), "not at the return: the holder could not renew either"
    blind = back - (seen_at + 2)
    clock.t = seen_at + blind + 14.9
    assert not await b.try_acquire_or_renew()
    clock.t = seen_at + blind + 15.1
    assert await b.try_acquire_or_renew(), "a lease duration later, not counting the outage, b takes it"


async def test_a_standby_with_flaky_reads_still_takes_over_from_a_dead_holder() -> None:
    clock = Clock()
    api = FakeLeases(clock)
    a, b = elector(api, clock, "op-a"), elector(api, clock, "op-b")
    assert await a.try_acquire_or_renew()  # then a dies
    start = clock.t
    for attempt in range(1, 100):
        clock.t += 2
        api.down = attempt % 7 == 0  # one read in seven fails
        if await b.try_acquire_or_renew():
            break
    assert b.holder == "op-b" and clock.t - start <= 22, clock.t - start


async def test_a_lost_answer_to_our_own_renewal_is_not_taken_for_a_takeover() -> None:
    clock = Clock()
    api = FakeLeases(clock)
    a = elector(api, clock, "op-a")
    await a.acquire()
    clock.t += 2
    api.lose_answer = True
    assert not await a.try_acquire_or_renew()  # stored, but we never heard
    api.lose_answer = False
    clock.t += 0.5
    assert await a.try_acquire_or_renew() and not a.lost
    assert a.own_version == api.lease["metadata"]["resourceVersion"]  # type: ignore[index]


async def test_a_holder_whose_lease_was_deleted_exits() -> None:
    clock = Clock()
    api = FakeLeases(clock)

    async def tick(seconds: float) -> None:
        clock.t += seconds
        if clock.t > 1100:
            raise Stop

    a = elector(api, clock, "op-a", tick)
    await a.acquire()
    api.lease = None  # deleted by someone: another replica may already have created it again
    with pytest.raises(LostLease, match="written by another replica"):
        await a.keep()
    assert api.writes == ["op-a"], "a did not create it again"


async def test_a_paused_holder_whose_lease_was_written_meanwhile_exits_even_if_it_looks_free() -> None:
    clock = Clock()
    api = FakeLeases(clock)
    b = elector(api, clock, "op-b")
    cut = clock.t + 1  # a alone is cut off (a partition): b can still write

    def world(t: float) -> None:
        if t >= cut and api.lease["spec"]["holderIdentity"] == "op-a":  # type: ignore[index]
            api.down = True
        if t >= cut + 16 and api.down:  # b took it after the lease duration, then released it
            assert a.paused, "a stopped acting before b could take the Lease"
            api.down = False
            assert b.observed is not None
            lease = copy.deepcopy(api.lease)
            spec = {**b._new_record(b.observed, clock.wall()), "holderIdentity": None}
            api._store({**lease, "spec": spec})  # type: ignore[dict-item]
        if t > cut + 60:
            raise Stop

    a = elector(api, clock, "op-a", Driver(clock, world).sleep)
    await a.acquire()
    assert not await b.try_acquire_or_renew()
    with pytest.raises(LostLease, match="written by another replica"):
        await a.keep()
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

    a.acting.clear()  # what keep() does at the renew deadline
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

    async def advance(seconds: float) -> None:
        assert seconds <= 2.4
        clock.t += seconds

    a, b = elector(api, clock, "op-a"), elector(api, clock, "op-b", advance)
    assert await a.try_acquire_or_renew()  # then a dies
    start = clock.t
    await b.acquire()
    assert b.leading and 15 <= clock.t - start <= 15.2, clock.t - start


async def test_a_standby_whose_attempts_fail_does_not_spin() -> None:
    api, clock = FakeLeases(), Clock()
    pauses: list[float] = []

    async def advance(seconds: float) -> None:
        pauses.append(seconds)
        clock.t += seconds
        if len(pauses) > 20:
            raise Stop

    a, b = elector(api, clock, "op-a"), elector(api, clock, "op-b", advance)
    assert await a.try_acquire_or_renew()
    clock.t += 1
    assert not await b.try_acquire_or_renew()
    clock.t += 20  # the lease looks expired to b; then every request of b fails with a 500
    api.status = 500
    with pytest.raises(Stop):
        await b.acquire()
    assert min(pauses) >= b.config.retry_period, pauses


async def test_a_standby_counts_the_lease_duration_from_when_its_read_returned() -> None:
    clock = Clock()
    api = FakeLeases(clock)
    a, b = elector(api, clock, "op-a"), elector(api, clock, "op-b")
    assert await a.try_acquire_or_renew()  # then a dies
    api.read_delay = 3  # b's read takes 3 s: the record it brings back may be as fresh as its end
    assert not await b.try_acquire_or_renew()
    returned, api.read_delay = clock.t, 0
    clock.t = returned + 14.9
    assert not await b.try_acquire_or_renew()
    clock.t = returned + 15.1
    assert await b.try_acquire_or_renew()


async def test_a_clean_stop_gives_the_lease_up_in_kopfs_cleanup_before_kopf_has_stopped() -> None:
    """SIGTERM: kopf's cleanup handler releases the Lease (and stops acting) at once, not after kopf's
    own stop, which takes seconds and may outlast the pod's grace period (then the standby waited
    out the whole lease)."""
    import asyncio
    from types import SimpleNamespace

    import kopf

    from fnsession.controller import handlers
    from fnsession.controller.app import Health

    api, clock = FakeLeases(), Clock()

    async def tick(seconds: float) -> None:
        clock.t += seconds
        await asyncio.sleep(0)

    a, b = elector(api, clock, "op-a", sleep=tick), elector(api, clock, "op-b")
    await a.acquire()
    keeper = asyncio.create_task(a.keep())  # as app.py runs it beside kopf
    await asyncio.sleep(0)
    order: list[str] = []

    async def close() -> None:
        order.append(f"clients closed, holder {api.lease['spec']['holderIdentity']}")  # type: ignore[index]

    task = asyncio.create_task(asyncio.sleep(60))
    memo = kopf.Memo(health=Health(a), tasks=[task], gc_timer=SimpleNamespace(uninstall=lambda: order.append("gc")),
                     service=SimpleNamespace(clients=SimpleNamespace(close=close)))
    await handlers.cleanup(memo=memo)
    assert order == ["gc", "clients closed, holder None"] and task.cancelling()
    assert not a.leading and not a.acting.is_set(), "the old leader may still act"
    assert await b.try_acquire_or_renew(), "the standby could not take the released Lease at once"
    await asyncio.wait_for(keeper, 1)  # it ends quietly: no renewal, no LostLease (which exits with 1)
    assert keeper.exception() is None and api.lease["spec"]["holderIdentity"] == "op-b"  # type: ignore[index]
