"""The operator's Event recorder (fnsession.kube.events): the same Event on the same object becomes
a count on the first one, a token bucket bounds how many are posted in a burst and over time, the
queue is bounded, and nothing it does waits on the API."""

from __future__ import annotations

import asyncio
from typing import Any

from fnsession.kube.events import EventRecorder, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def obj(name: str, uid: str = "") -> dict[str, Any]:
    return {"apiVersion": "fnsession.dev/v1alpha1", "kind": "FunctionSession",
            "metadata": {"name": name, "namespace": "ns", "uid": uid or f"uid-{name}"}}


class Api:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str]] = []
        self.bumped: list[tuple[str, int]] = []
        self.gone: set[str] = set()

    async def post(self, o: dict[str, Any], reason: str, message: str, type_: str) -> str | None:
        self.posted.append((o["metadata"]["name"], reason))
        return f"ev{len(self.posted)}"

    async def bump(self, ns: str, name: str, count: int) -> bool:
        if name in self.gone:
            return False
        self.bumped.append((name, count))
        return True


def recorder(api: Api, clock: Clock, **kw: Any) -> tuple[EventRecorder, list[str]]:
    outcomes: list[str] = []
    return EventRecorder(api.post, api.bump, clock=clock, counter=outcomes.append, **kw), outcomes


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert [bucket.take() for _ in range(7)] == [True] * 5 + [False] * 2
    clock.t += 0.1
    assert bucket.take() and not bucket.take()  # one token per 100 ms
    clock.t += 100
    assert sum(bucket.take() for _ in range(50)) == 5  # never more than the burst saved up


async def test_the_same_event_on_the_same_object_is_a_count_on_the_first() -> None:
    api, clock = Api(), Clock()
    rec, outcomes = recorder(api, clock)
    for _ in range(3):
        rec.record(obj("a"), reason="InstanceLost", message="instance p is gone", type_="Warning")
    rec.record(obj("a"), reason="Bound", message="bound to p2")
    rec.record(obj("b"), reason="InstanceLost", message="instance p is gone", type_="Warning")
    await rec.flush()
    assert api.posted == [("a", "InstanceLost"), ("a", "Bound"), ("b", "InstanceLost")]
    assert api.bumped == [("ev1", 2), ("ev1", 3)]
    assert outcomes.count("posted") == 3 and outcomes.count("aggregated") == 2
    # past the window, or once the first is gone, it is a new Event again
    clock.t += 601
    rec.record(obj("a"), reason="Bound", message="bound to p2")
    api.gone.add("ev3")
    rec.record(obj("b"), reason="InstanceLost", message="instance p is gone", type_="Warning")
    await rec.flush()
    assert api.posted[3:] == [("a", "Bound"), ("b", "InstanceLost")]


async def test_20000_sessions_at_once_post_a_bounded_number_of_events() -> None:
    api, clock = Api(), Clock()
    rec, outcomes = recorder(api, clock, rate=20, burst=200, queue=5000)
    for i in range(20000):  # all in the same instant: Bound on 20,000 sessions
        rec.record(obj(f"s{i}"), reason="Bound", message="bound")
    await rec.flush()
    assert len(api.posted) == 200 and outcomes.count("dropped") == 19800
    for _ in range(10):  # then 10 s of 50 more a second: 20 a second get through
        clock.t += 1
        for i in range(50):
            rec.record(obj(f"t{clock.t}-{i}"), reason="Bound", message="bound")
    await rec.flush()
    assert len(api.posted) == 200 + 200
    assert len(rec.posted) <= rec.dedup_size


async def test_recording_never_waits_and_the_queue_is_bounded() -> None:
    api, clock = Api(), Clock()
    gate = asyncio.Event()

    async def slow_post(o: dict[str, Any], reason: str, message: str, type_: str) -> str | None:
        await gate.wait()
        return await api.post(o, reason, message, type_)

    rec = EventRecorder(slow_post, api.bump, clock=clock, rate=1000, burst=1000, queue=10, workers=2)
    workers = asyncio.create_task(rec.run())
    for i in range(50):
        rec.record(obj(f"s{i}"), reason="Bound", message="bound")  # returns at once though nothing is posted
    await asyncio.sleep(0.01)
    assert rec.busy == 2 and rec.queue.qsize() == 8  # 10 queued, 40 dropped; the two workers hold two
    assert sum(rec.dropped.values()) == 40
    gate.set()
    await asyncio.wait_for(rec.queue.join(), 2)
    workers.cancel()
    assert len(api.posted) == 10
