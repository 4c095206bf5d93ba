"""Reads and writes of fnsession's own objects (Functions, FunctionSessions) and the listing of the
pods it made: one API call each, the objects as the API server's JSON (dicts). Errors are the API
client's :class:`ApiException` (``status``: the HTTP status, None when there was no answer), which
callers catch from here rather than from the client library."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from fnsession.api.names import GROUP, VERSION, Kind
from fnsession.kube.client import Clients

__all__ = ["MERGE_PATCH", "ApiException", "create", "delete", "get", "list_all", "list_in", "list_pods", "patch",
           "patch_status"]

MERGE_PATCH = "application/merge-patch+json"


async def get(clients: Clients, kind: Kind, ns: str, name: str, **options: Any) -> dict[str, Any]:
    """``options``: the client's, e.g. ``_request_timeout``."""
    found: dict[str, Any] = await clients.custom.get_namespaced_custom_object(GROUP, VERSION, ns, kind.plural, name,
                                                                               **options)
    return found


async def list_in(clients: Clients, kind: Kind, ns: str, **options: Any) -> list[dict[str, Any]]:
    """The objects of one namespace (``options``: ``label_selector`` ...)."""
    listing = await clients.custom.list_namespaced_custom_object(GROUP, VERSION, ns, kind.plural, **options)
    items: list[dict[str, Any]] = listing["items"]
    return items


async def list_all(clients: Clients, kind: Kind, **options: Any) -> list[dict[str, Any]]:
    """The objects of every namespace."""
    listing = await clients.custom.list_cluster_custom_object(GROUP, VERSION, kind.plural, **options)
    items: list[dict[str, Any]] = listing["items"]
    return items


async def create(clients: Clients, kind: Kind, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    made: dict[str, Any] = await clients.custom.create_namespaced_custom_object(GROUP, VERSION, ns, kind.plural, body)
    return made


async def patch(clients: Clients, kind: Kind, ns: str, name: str, body: dict[str, Any], **options: Any) -> dict[str, Any]:
    """A JSON merge patch of the object (spec, metadata)."""
    patched: dict[str, Any] = await clients.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, kind.plural, name, body,
        _content_type=MERGE_PATCH, **options)  # type: ignore[call-arg]  # the client takes it; its annotations leave it out
    return patched


async def patch_status(clients: Clients, kind: Kind, ns: str, name: str, body: dict[str, Any],
                       **options: Any) -> dict[str, Any]:
    """A JSON merge patch of the status subresource (``body``: ``{"status": ...}``, and
    ``{"metadata": {"resourceVersion": ...}}`` to write only over that version: else 409)."""
    patched: dict[str, Any] = await clients.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, kind.plural, name, body,
        _content_type=MERGE_PATCH, **options)  # type: ignore[call-arg]  # the client takes it; its annotations leave it out
    return patched


async def delete(clients: Clients, kind: Kind, ns: str, name: str) -> None:
    await clients.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, kind.plural, name)


async def list_pods(clients: Clients, label_selector: str) -> list[dict[str, Any]]:
    """Pods of every namespace with the label selector, as JSON dicts (as watch events carry them)."""
    pods = await clients.core.list_pod_for_all_namespaces(label_selector=label_selector)
    return [clients.api.sanitize_for_serialization(pod) for pod in pods.items]
