"""The registry's session -> instance index agrees with the instances' own sets whatever the order
of takes, releases and instances going away (checked against a scan over every instance)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from fnsession.core.registry import FunctionState, Instance


def scan(fn: FunctionState, session: str) -> Instance | None:
    return next((i for i in fn.instances.values() if session in i.sessions), None)


def test_instance_of_matches_a_scan_through_takes_releases_and_lost_instances() -> None:
    rng = random.Random(7)
    fn = FunctionState("ns", "f")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    sessions = [f"s{i}" for i in range(40)]
    for step in range(5000):
        op, s = rng.random(), rng.choice(sessions)
        if op < 0.45:
            if scan(fn, s) is None:
                fn.take_slot(f"pod{rng.randrange(6)}-{step // 1000}", s)
        elif op < 0.9:
            inst = fn.release(s, now)
            assert inst is None or s not in inst.sessions
        elif fn.instances:
            fn.instances.pop(rng.choice(sorted(fn.instances)))  # a pod deleted under its sessions
        for name in sessions:
            assert fn.instance_of(name) is scan(fn, name), (step, name)
    assert len(fn.bound) <= len(sessions)
