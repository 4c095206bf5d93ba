"""One API client per process, from the in-cluster service account or a kubeconfig."""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes_asyncio import client, config
from kubernetes_asyncio.config import ConfigException


@dataclass
class Clients:
    api: client.ApiClient
    core: client.CoreV1Api
    custom: client.CustomObjectsApi

    async def close(self) -> None:
        await self.api.close()


async def connect() -> Clients:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]  # kubernetes_asyncio leaves it unannotated
    except ConfigException:
        await config.load_kube_config()
    api = client.ApiClient()
    return Clients(api=api, core=client.CoreV1Api(api), custom=client.CustomObjectsApi(api))


def coordination_api(clients: Clients) -> client.CoordinationV1Api:
    """Leases (leader election, the gateway's nonce claims)."""
    return client.CoordinationV1Api(clients.api)
