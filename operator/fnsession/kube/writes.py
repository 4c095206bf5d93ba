"""Writes the operator makes outside kopf's handler patches: session status, pods, Events.

Every function here is one API call; callers decide when (and how rarely) to make them.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from fnsession.api.names import GROUP, SESSION, VERSION
from fnsession.kube.client import Clients

log = logging.getLogger(__name__)
MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "fnsession-operator"


async def patch_session_status(clients: Clients, namespace: str, name: str, status: dict[str, Any]) -> bool:
    """Merge ``status`` into the session's status; False when the session is gone."""
    try:
        await clients.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, SESSION.plural, name, {"status": status},
            _content_type=MERGE_PATCH)  # type: ignore[call-arg]  # the client takes it; its annotations leave it out
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


async def delete_session(clients: Clients, namespace: str, name: str) -> bool:
    try:
        await clients.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, SESSION.plural, name)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


async def create_pod(clients: Clients, pod: dict[str, Any]) -> None:
    await clients.core.create_namespaced_pod(pod["metadata"]["namespace"], pod)  # type: ignore[arg-type]  # a dict serialises as the model


def namespace_terminating(exc: BaseException) -> bool:
    """The API refused a create because the namespace is being deleted."""
    return isinstance(exc, ApiException) and exc.status == 403 and "being terminated" in str(exc.body or exc.reason or "")


async def delete_pod(clients: Clients, namespace: str, name: str, *, grace_seconds: int | None = None) -> bool:
    """Delete a pod (``grace_seconds=0``: kill at once, the fencing path); False when already gone."""
    try:
        if grace_seconds is None:
            await clients.core.delete_namespaced_pod(name, namespace)
        else:
            await clients.core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace_seconds)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


async def post_event(clients: Clients, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal") -> str | None:
    """A Kubernetes Event on ``obj`` (what `kubectl describe` shows); its name, None if it failed.
    Failures are logged, not raised: an Event is a courtesy to the user, never a reason to fail the
    work it describes. The operator posts through :class:`fnsession.kube.events.EventRecorder`."""
    meta = obj["metadata"]
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    event_name = f"{meta['name']}.{uuid.uuid4().hex[:12]}"
    body = {
        "metadata": {"name": event_name, "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid")},
        "reason": reason, "message": message[:1024], "type": type_,
        "source": {"component": COMPONENT}, "reportingComponent": COMPONENT, "reportingInstance": COMPONENT,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }
    try:
        # _preload_content=False: the raw response (its annotations say the model it would have made)
        answer: Any = await clients.core.create_namespaced_event(meta["namespace"], body,  # type: ignore[arg-type]
                                                                 _preload_content=False)
        text = await answer.read()  # not parsed into a model: nothing reads the echo of an Event
        if not 200 <= answer.status < 300:
            raise RuntimeError(f"{answer.status} {text[:200]!r}")
        return event_name
    except Exception as exc:  # noqa: BLE001 - RBAC, API server health, timeouts: never fail the work
        log.warning("could not post Event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], getattr(exc, "reason", exc))
        return None


async def bump_event(clients: Clients, namespace: str, name: str, count: int) -> bool:
    """The same Event again: its count and lastTimestamp patched (as client-go aggregates); False
    when it is gone or the patch failed (then a new one is posted)."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    try:
        answer: Any = await clients.core.patch_namespaced_event(name, namespace, {"count": count, "lastTimestamp": now},
                                                                _preload_content=False)
        text = await answer.read()
        if not 200 <= answer.status < 300:
            raise RuntimeError(f"{answer.status} {text[:200]!r}")
        return True
    except Exception as exc:  # noqa: BLE001
        log.debug("could not update Event %s/%s: %s", namespace, name, getattr(exc, "reason", exc))
        return False
