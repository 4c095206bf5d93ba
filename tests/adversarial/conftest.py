"""Every adversarial case on both paths (``c``: _lane.c's scans and read callbacks; ``llhttp``: all of
it in Python) and both loops (asyncio, uvloop)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.adversarial.harness import World, make_world
from tests.unit.test_gateway_http import event_loop_policy  # noqa: F401 - a fixture: asyncio and uvloop

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(params=["c", "llhttp"])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    w = await make_world(request.param)
    yield w
    for close in reversed(w.closers):
        close()
    await w.api_close()  # type: ignore[attr-defined]
