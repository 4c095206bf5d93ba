"""The API calls of the gateway's authentication: TokenReview (who a bearer token is),
SubjectAccessReview (what RBAC allows them), the access keys' Secrets, and the Leases that claim a
signed request's nonce once for every gateway process. ``api`` arguments are kubernetes_asyncio's
API objects, made by the ``*_api`` functions here (unit tests pass fakes)."""

from __future__ import annotations

import base64
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from fnsession.kube.client import Clients, coordination_api

__all__ = ["access_review", "authentication_api", "authorization_api", "coordination_api", "create_lease",
           "delete_leases_older", "secrets_data", "token_review"]


def authentication_api(clients: Clients) -> client.AuthenticationV1Api:
    return client.AuthenticationV1Api(clients.api)


def authorization_api(clients: Clients) -> client.AuthorizationV1Api:
    return client.AuthorizationV1Api(clients.api)


async def token_review(api: Any, token: str, audiences: list[str] | None = None, **kwargs: Any) -> Any:
    """The review's status: ``authenticated``, ``user`` (username, uid, groups, extra) and ``audiences``
    (``audiences``: those the token must be for, else the API server's own)."""
    review = await api.create_token_review(client.V1TokenReview(
        spec=client.V1TokenReviewSpec(token=token, audiences=audiences)), **kwargs)
    return review.status


async def access_review(api: Any, *, user: str, groups: list[str], uid: str | None, extra: dict[str, list[str]] | None,
                        group: str, resource: str, verb: str, namespace: str) -> bool:
    """Whether RBAC allows ``user`` to ``verb`` ``resource`` of ``group`` in ``namespace``."""
    review = await api.create_subject_access_review(client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user, groups=groups, uid=uid, extra=extra,
            resource_attributes=client.V1ResourceAttributes(
                group=group, resource=resource, verb=verb, namespace=namespace))))
    return bool(review.status.allowed)


async def secrets_data(clients: Clients, namespace: str, label_selector: str) -> list[dict[str, str]]:
    """The data of the Secrets in ``namespace`` with the label selector, decoded (base64)."""
    secrets = await clients.core.list_namespaced_secret(namespace, label_selector=label_selector)
    return [{k: base64.b64decode(v).decode() for k, v in (s.data or {}).items()} for s in secrets.items]


async def create_lease(api: Any, namespace: str, name: str, labels: dict[str, str], **options: Any) -> bool:
    """Create an empty Lease; False when one of that name exists (409). ``options``: the client's."""
    lease = client.V1Lease(metadata=client.V1ObjectMeta(name=name, labels=labels))
    try:
        await api.create_namespaced_lease(namespace, lease, **options)
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


async def delete_leases_older(api: Any, namespace: str, label_selector: str, cutoff: float) -> int:
    """Delete the Leases with the label selector created before ``cutoff`` (Unix time); how many went."""
    leases = await api.list_namespaced_lease(namespace, label_selector=label_selector)
    deleted = 0
    for lease in leases.items:
        if lease.metadata.creation_timestamp.timestamp() < cutoff:
            try:
                await api.delete_namespaced_lease(lease.metadata.name, namespace)
                deleted += 1
            except ApiException as exc:
                if exc.status != 404:
                    raise
    return deleted
