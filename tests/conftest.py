"""Suite-wide rules.

``FNSESSION_REQUIRE_ALL=1`` (set by ``make test`` and CI) turns every skip into a failure: on the
project's own cluster each test must really run, so a missing image, kwok node or cluster is a red
build rather than a quietly shorter suite. Integration tests marked ``disruptive`` (they stop and
start the cluster) run after all others.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ALL = os.environ.get("FNSESSION_REQUIRE_ALL") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but FNSESSION_REQUIRE_ALL=1 requires every test to run: {reason}"
