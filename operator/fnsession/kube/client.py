"""One API client per process, from the in-cluster service account or a kubeconfig."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.config import ConfigException

READS = frozenset({"GET", "HEAD", "OPTIONS"})


class GatedApiClient(client.ApiClient):
    """An API client whose writes (every method but GET, HEAD, OPTIONS) first wait for ``gate``:
    the operator's leader writes only while it may act (:meth:`fnsession.kube.leader.LeaderElector.may_act`).
    Reads never wait: a paused leader keeps its watches and its view of the cluster current."""

    def __init__(self, gate: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self.gate = gate

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if method not in READS:
            await self.gate()
        return await super().request(method, url, *args, **kwargs)


@dataclass
class Clients:
    api: client.ApiClient
    core: client.CoreV1Api
    custom: client.CustomObjectsApi

    async def close(self) -> None:
        await self.api.close()


async def connect(write_gate: Callable[[], Awaitable[None]] | None = None) -> Clients:
    """Clients for the in-cluster service account, else the kubeconfig. With ``write_gate``, every
    write first awaits it (see :class:`GatedApiClient`)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]  # kubernetes_asyncio leaves it unannotated
    except ConfigException:
        await config.load_kube_config()
    api = client.ApiClient() if write_gate is None else GatedApiClient(write_gate)
    return Clients(api=api, core=client.CoreV1Api(api), custom=client.CustomObjectsApi(api))


def coordination_api(clients: Clients) -> client.CoordinationV1Api:
    """Leases (leader election, the gateway's nonce claims)."""
    return client.CoordinationV1Api(clients.api)
