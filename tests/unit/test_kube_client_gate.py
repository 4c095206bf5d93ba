"""The operator's API client writes only through the leader's gate (fnsession.kube.client.GatedApiClient):
a write waits while the gate is shut, a read never does. No network: the REST layer is a recorder."""

from __future__ import annotations

import asyncio
from typing import Any

from fnsession.kube.client import GatedApiClient


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, method: str) -> Any:
        async def call(url: str, **_: Any) -> str:
            self.calls.append(f"{method} {url}")
            return method
        return call

    async def close(self) -> None:
        pass


async def test_writes_wait_for_the_gate_and_reads_do_not() -> None:
    gate = asyncio.Event()
    api = GatedApiClient(gate.wait)
    await api.rest_client.close()
    api.rest_client = Recorder()
    assert await asyncio.wait_for(api.request("GET", "/api/v1/pods"), 1) == "GET"
    writes = [asyncio.create_task(api.request(m, "/x")) for m in ("POST", "PUT", "PATCH", "DELETE")]
    await asyncio.sleep(0.01)
    assert api.rest_client.calls == ["GET /api/v1/pods"] and not any(w.done() for w in writes)
    gate.set()
    assert await asyncio.wait_for(asyncio.gather(*writes), 1) == ["POST", "PUT", "PATCH", "DELETE"]
    assert api.rest_client.calls[1:] == ["POST /x", "PUT /x", "PATCH /x", "DELETE /x"]
