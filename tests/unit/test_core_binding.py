"""Binding plans: fill instances up to the limit, never past it, pack load, respect maxInstances."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from fnsession.core.binding import (
    Bind,
    CreateInstance,
    InstanceLoad,
    Wait,
    instance_for,
    instances_to_remove,
    next_scale_in,
    warm_deficit,
)

T0 = datetime(2026, 11, 22, tzinfo=UTC)


def test_first_session_creates_an_instance() -> None:
    assert instance_for([], 2, 10) == CreateInstance()


def test_fullest_ready_instance_with_room_wins() -> None:
    loads = [InstanceLoad("a", True, 1), InstanceLoad("b", True, 3), InstanceLoad("c", True, 4)]
    assert instance_for(loads, 4, 10) == Bind("b", ready=True)


def test_ready_instance_is_preferred_to_a_starting_one() -> None:
    loads = [InstanceLoad("a", False, 0), InstanceLoad("b", True, 1)]
    assert instance_for(loads, 2, 10) == Bind("b", ready=True)


def test_a_starting_instance_with_room_is_reserved_before_creating_another() -> None:
    loads = [InstanceLoad("a", True, 2), InstanceLoad("b", False, 1)]
    assert instance_for(loads, 2, 10) == Bind("b", ready=False)


def test_full_instances_trigger_a_new_one_the_seeds_third_session() -> None:
    # seeds 002/003: 2 sessions per instance, the third session lands on a new instance
    assert instance_for([InstanceLoad("a", True, 2)], 2, 10) == CreateInstance()


def test_max_instances_makes_the_session_wait_and_says_why() -> None:
    plan = instance_for([InstanceLoad("a", True, 2), InstanceLoad("b", True, 2)], 2, 2)
    assert isinstance(plan, Wait) and plan.reason == "MaxInstancesReached"
    assert "maxInstances is 2" in plan.message


def test_deleting_instances_take_nothing_and_do_not_count() -> None:
    loads = [InstanceLoad("a", True, 0, deleting=True)]
    assert instance_for(loads, 2, 1) == CreateInstance()


@given(st.lists(st.integers(1, 8), min_size=1, max_size=300), st.integers(1, 5), st.integers(1, 30))
def test_never_above_the_limit_never_above_max(arrivals: list[int], per: int, max_instances: int) -> None:
    """Apply plans one by one (as the per-Function lock serialises them), with pods becoming ready
    at random points: no instance ever exceeds its limit and instances never exceed maxInstances."""
    loads: dict[str, InstanceLoad] = {}
    waiting = 0
    for n, ready_every in enumerate(arrivals):
        plan = instance_for(loads.values(), per, max_instances)
        if isinstance(plan, CreateInstance):
            name = f"i{len(loads):04d}"
            loads[name] = InstanceLoad(name, False, 1)
        elif isinstance(plan, Bind):
            cur = loads[plan.instance]
            loads[plan.instance] = InstanceLoad(cur.name, cur.ready, cur.sessions + 1)
        else:
            waiting += 1
        if n % ready_every == 0:
            loads = {k: InstanceLoad(v.name, True, v.sessions) for k, v in loads.items()}
        assert all(i.sessions <= per for i in loads.values())
        assert len(loads) <= max_instances
    bound = sum(i.sessions for i in loads.values())
    assert bound + waiting == len(arrivals)
    assert waiting == 0 or bound == per * max_instances


def test_warm_deficit_counts_empty_instances_and_respects_max() -> None:
    loads = [InstanceLoad("a", True, 0), InstanceLoad("b", False, 0), InstanceLoad("c", True, 1)]
    assert warm_deficit(loads, 3, 10) == 1
    assert warm_deficit(loads, 2, 10) == 0
    assert warm_deficit(loads, 5, 4) == 1


def test_empty_instances_go_after_the_delay_but_warm_ones_stay() -> None:
    delay = timedelta(seconds=60)
    loads = [InstanceLoad("a", True, 0, empty_since=T0), InstanceLoad("b", True, 0, empty_since=T0 + timedelta(seconds=30)),
             InstanceLoad("c", True, 1)]
    assert instances_to_remove(loads, 0, delay, T0 + timedelta(seconds=59)) == []
    assert instances_to_remove(loads, 0, delay, T0 + timedelta(seconds=60)) == ["a"]
    assert instances_to_remove(loads, 0, delay, T0 + timedelta(seconds=90)) == ["a", "b"]
    assert instances_to_remove(loads, 1, delay, T0 + timedelta(seconds=90)) == ["b"]
    assert next_scale_in(loads, 0, delay) == T0 + timedelta(seconds=60)
    assert next_scale_in(loads, 2, delay) is None
