"""The API calls of `fnsession access-key create`: whether the ServiceAccount a key will act as exists,
and the key's Secret in the gateway's namespace."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from fnsession.kube.client import Clients


async def service_account_exists(clients: Clients, namespace: str, name: str) -> bool:
    try:
        await clients.core.read_namespaced_service_account(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def create_secret(clients: Clients, namespace: str, secret: dict[str, Any]) -> None:
    """Create ``secret`` (a Secret as the API writes it: metadata name and labels, type, stringData)."""
    meta = secret["metadata"]
    await clients.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=meta["name"], labels=meta.get("labels")), type=secret.get("type"),
        string_data=secret["stringData"]))
