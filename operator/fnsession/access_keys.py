"""FC access keys for the gateway: each is a Secret in the gateway's namespace that maps a key id to
its secret and to the Kubernetes identity (a ServiceAccount, in its namespace) the key acts as.
RBAC on that ServiceAccount then decides what the key may do."""

from __future__ import annotations

import asyncio
import re
import secrets
import string
from typing import Any

from fnsession.api.rules import DNS_LABEL_PATTERN
from fnsession.kube import access_keys as api
from fnsession.kube.client import connect

LABEL = "fnsession.dev/access-key-id"
DNS_LABEL = re.compile(DNS_LABEL_PATTERN)


def new_key_id() -> str:
    return "FNS" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(17))


def create(namespace: str, service_account: str, keys_namespace: str) -> tuple[str, str]:
    """Mint a key for ``service_account`` in ``namespace``; returns (id, secret)."""
    for what, value in (("--namespace", namespace), ("--service-account", service_account)):
        if len(value) > 63 or not DNS_LABEL.match(value):
            raise ValueError(f"{what} {value!r} is not a Kubernetes name (lower-case letters, digits, '-')")
    key_id, secret = new_key_id(), secrets.token_urlsafe(30)
    asyncio.run(_store(namespace, service_account, keys_namespace, key_secret(key_id, secret, namespace, service_account)))
    return key_id, secret


def key_secret(key_id: str, secret: str, namespace: str, service_account: str) -> dict[str, Any]:
    """The Secret that holds a key: what the gateway reads to verify a signature and act as the account."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": f"fnsession-ak-{key_id.lower()}", "labels": {LABEL: key_id, "app.kubernetes.io/part-of": "fnsession"}},
            "stringData": {"accessKeyId": key_id, "accessKeySecret": secret, "namespace": namespace, "serviceAccount": service_account}}


async def _store(namespace: str, service_account: str, keys_namespace: str, secret: dict[str, Any]) -> None:
    clients = await connect()
    try:
        if not await api.service_account_exists(clients, namespace, service_account):
            raise ValueError(f"ServiceAccount {namespace}/{service_account} does not exist; create it first "
                             f"(kubectl -n {namespace} create serviceaccount {service_account})")
        await api.create_secret(clients, keys_namespace, secret)
    finally:
        await clients.close()
