"""Session deadlines: TTL hard from creation, idle reset by activity and capped by the TTL."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from fnsession.core.deadlines import DeadlineQueue, Expiry, expire_deadline

T0 = datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=UTC)


def s(n: float) -> timedelta:
    return timedelta(seconds=n)


def test_ttl_counts_from_creation_whatever_the_activity() -> None:
    assert expire_deadline(T0, 60, T0 + s(59), 30) == Expiry(T0 + s(60), "TTL")


def test_idle_timeout_counts_from_last_activity() -> None:
    assert expire_deadline(T0, 3600, T0 + s(100), 30) == Expiry(T0 + s(130), "IdleTimeout")


def test_no_activity_means_idle_counts_from_creation() -> None:
    assert expire_deadline(T0, 3600, None, 30) == Expiry(T0 + s(30), "IdleTimeout")


def test_zero_idle_timeout_disables_it() -> None:
    assert expire_deadline(T0, 600, None, 0) == Expiry(T0 + s(600), "TTL")


def test_ttl_wins_a_tie() -> None:
    assert expire_deadline(T0, 60, T0 + s(30), 30) == Expiry(T0 + s(60), "TTL")


def test_sub_second_precision_is_kept() -> None:
    assert expire_deadline(T0, 1, None, 0).at.microsecond == 123456


@given(ttl=st.integers(1, 21600), idle=st.integers(0, 21600), activity=st.one_of(st.none(), st.floats(-10, 30000)))
def test_never_beyond_ttl_never_before_activity_plus_idle_unless_ttl(ttl: int, idle: int, activity: float | None) -> None:
    last = None if activity is None else T0 + s(activity)
    expiry = expire_deadline(T0, ttl, last, idle)
    assert expiry.at <= T0 + s(ttl)
    if expiry.reason == "IdleTimeout":
        assert idle > 0 and expiry.at == max(last or T0, T0) + s(idle) < T0 + s(ttl)
    else:
        assert expiry.at == T0 + s(ttl)


def test_queue_pops_due_keys_in_order_and_keeps_later_ones() -> None:
    q: DeadlineQueue[str] = DeadlineQueue()
    q.schedule("b", T0 + s(2))
    q.schedule("a", T0 + s(1))
    q.schedule("c", T0 + s(3))
    assert q.next_at() == T0 + s(1)
    assert q.pop_due(T0 + s(2)) == ["a", "b"]
    assert len(q) == 1 and "c" in q and q.next_at() == T0 + s(3)


def test_reschedule_supersedes_and_cancel_removes() -> None:
    q: DeadlineQueue[str] = DeadlineQueue()
    q.schedule("a", T0 + s(1))
    q.schedule("a", T0 + s(10))  # activity pushed it back
    q.schedule("b", T0 + s(5))
    q.cancel("b")
    assert q.pop_due(T0 + s(9)) == []
    assert q.deadline("a") == T0 + s(10)
    assert q.pop_due(T0 + s(10)) == ["a"]
    assert len(q) == 0 and q.next_at() is None


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 1000), st.booleans()), max_size=300))
def test_queue_matches_a_plain_dict(ops: list[tuple[int, int, bool]]) -> None:
    """Any sequence of schedules and cancels: popping everything gives exactly the latest deadlines."""
    q: DeadlineQueue[int] = DeadlineQueue()
    model: dict[int, datetime] = {}
    for key, at, cancel in ops:
        if cancel:
            q.cancel(key)
            model.pop(key, None)
        else:
            q.schedule(key, T0 + s(at))
            model[key] = T0 + s(at)
    assert len(q) == len(model)
    cutoff = T0 + s(500)
    due = q.pop_due(cutoff)
    assert set(due) == {k for k, at in model.items() if at <= cutoff}
    assert [model[k] for k in due] == sorted(model[k] for k in due)
    assert set(q.pop_due(T0 + s(10**6))) == {k for k, at in model.items() if at > cutoff}


def test_queue_stays_compact_under_many_reschedules() -> None:
    q: DeadlineQueue[int] = DeadlineQueue()
    rng = random.Random(7)
    for _ in range(100_000):
        q.schedule(rng.randrange(1000), T0 + s(rng.randrange(10_000)))
    assert len(q) == 1000
    assert len(q._heap) <= 2 * 1000 + 64 + 1
