"""The heap's upkeep (fnsession.controller.memory): survivors frozen out of the collector's walk
every 10 s, a full collection (and malloc_trim) every 15 minutes or as soon as a mass delete halved
the live sessions, never more often than that."""

from __future__ import annotations

from fnsession.controller.memory import Heap


class Calls:
    def __init__(self) -> None:
        self.t = 0.0
        self.log: list[str] = []

    def heap(self) -> Heap:
        return Heap(clock=lambda: self.t, collect=lambda: self.log.append("collect"), freeze=lambda: self.log.append("freeze"),
                    unfreeze=lambda: self.log.append("unfreeze"), trim=lambda: self.log.append("trim"))


def test_survivors_are_frozen_every_10_s_and_collected_in_full_every_15_minutes() -> None:
    c = Calls()
    heap = c.heap()
    did = []
    for second in range(1, 901):
        c.t = second
        did.append(heap.tick(5000))
    assert did.count("freeze") == 89 and did.count("full") == 1 and did[-1] == "full"
    assert c.log[-4:] == ["unfreeze", "collect", "trim", "freeze"]


def test_a_mass_delete_is_collected_and_trimmed_at_once_but_small_changes_are_not() -> None:
    c = Calls()
    heap = c.heap()
    for live in (200, 800, 300, 100):  # under 1,000 at the peak: nothing to give back
        c.t += 1
        assert heap.tick(live) is None
    for live in (5000, 20000, 15000, 10001):
        c.t += 1
        assert heap.tick(live) is None
    c.t += 1
    assert heap.tick(9999) == "full"  # below half the peak of 20,000
    c.t += 1
    assert heap.tick(9000) is None and heap.peak == 9999  # the peak starts again from there
