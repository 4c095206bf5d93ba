"""FC's session API (CreateSession, GetSession, ListSessions, UpdateSession, DeleteSession) over
FunctionSession objects, so that ``kubectl`` and the REST API are two views of the same sessions.

Framework-free: each operation takes decoded arguments and returns (status, JSON) or raises
:class:`~fnsession.gateway.errors.FCError`; the HTTP layer (server.py) only parses and writes.
A refused create loses nothing: the object it made is deleted again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

from kubernetes_asyncio.client.exceptions import ApiException

from fnsession.api.names import FUNCTION, GROUP, SESSION, VERSION
from fnsession.core.pods import LABEL_FUNCTION
from fnsession.gateway import errors, fc
from fnsession.gateway.errors import FCError
from fnsession.kube.client import Clients

CREATE_WAIT_SECONDS = 30.0
REFUSALS = {"StorageNotAllowed", "DuplicateSessionId", "SessionIdReuseDisabled", "MaxInstancesReached"}


def function_not_found(name: str) -> FCError:
    return FCError(404, "FunctionNotFound", f"function {name} does not exist")


class Changes(Protocol):
    def next_change(self, ns: str, name: str) -> asyncio.Future[dict[str, Any]]:
        """Resolves with the object at its next watch event."""

    def function_spec(self, ns: str, name: str) -> dict[str, Any] | None:
        """A Function's spec as the watch last saw it; None when it has not seen the Function."""


class SessionAPI:
    """``changes``: the gateway's watch of FunctionSessions and Functions, so that a create learns the
    session is Active from the watch event rather than by polling, and a Function the watch has seen
    costs no read; without it, it polls and reads."""

    def __init__(self, clients: Clients, create_wait: float = CREATE_WAIT_SECONDS, changes: Changes | None = None) -> None:
        self.clients = clients
        self.create_wait = create_wait
        self.changes = changes

    # --- reads of the API server ---------------------------------------------------------------

    async def function(self, ns: str, name: str) -> dict[str, Any]:
        try:
            return await self.clients.custom.get_namespaced_custom_object(GROUP, VERSION, ns, FUNCTION.plural, name)
        except ApiException as exc:
            if exc.status == 404:
                raise function_not_found(name) from None
            raise

    async def function_spec(self, ns: str, name: str) -> dict[str, Any]:
        """The Function's spec: from the gateway's watch when it has seen the Function, else read (FC's 404)."""
        spec = self.changes.function_spec(ns, name) if self.changes is not None else None
        return spec if spec is not None else (await self.function(ns, name))["spec"]

    async def records(self, ns: str, function: str, session_id: str | None = None) -> list[dict[str, Any]]:
        """The function's FunctionSessions (with one id), oldest first."""
        selector = f"{LABEL_FUNCTION}={function}"
        if session_id is not None:
            selector += f",{fc.LABEL_SESSION_ID_HASH}={fc.session_id_hash(session_id)}"
        items = (await self.clients.custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, SESSION.plural, label_selector=selector))["items"]
        if session_id is not None:
            items = [i for i in items if fc.session_json(i)["sessionId"] == session_id]
        # creation order: the operator's createdTime has sub-second precision, creationTimestamp only seconds
        return sorted(items, key=lambda i: ((i.get("status") or {}).get("createdTime") or i["metadata"]["creationTimestamp"],
                                            i["metadata"]["name"]))

    @staticmethod
    def state(obj: Mapping[str, Any]) -> str | None:
        return (obj.get("status") or {}).get("sessionStatus")

    async def live(self, ns: str, function: str, session_id: str) -> dict[str, Any] | None:
        return next((o for o in await self.records(ns, function, session_id) if self.state(o) != "Expired"), None)

    # --- operations ------------------------------------------------------------------------------

    async def create(self, ns: str, function: str, qualifier: str | None, body: Mapping[str, Any] | None) -> dict[str, Any]:
        fspec = await self.function_spec(ns, function)
        if fspec.get("sessionAffinity") not in ("HEADER_FIELD", "GENERATED_COOKIE"):
            raise errors.unsupported_affinity()
        spec = fc.create_input_to_spec(function, qualifier, body)
        if "storage" in spec and fspec.get("instanceIsolation") != "SESSION_EXCLUSIVE":
            raise errors.storage_needs_exclusive()
        records = await self.records(ns, function, spec["sessionId"])
        if any(self.state(o) != "Expired" for o in records):
            raise errors.session_exists(spec["sessionId"])
        # named after the id's earlier records: a create of the same id elsewhere at the same moment
        # (another gateway replica or worker) makes the same name, and one of the two gets 409
        obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": SESSION.kind, "spec": spec, "metadata": {
            "name": fc.object_name(function, spec["sessionId"], [o["metadata"]["name"] for o in records]),
            "labels": {LABEL_FUNCTION: function, fc.LABEL_SESSION_ID_HASH: fc.session_id_hash(spec["sessionId"])},
            "annotations": {"fnsession.dev/created-by": "gateway"}}}
        try:
            made = await self.clients.custom.create_namespaced_custom_object(GROUP, VERSION, ns, SESSION.plural, obj)
        except ApiException as exc:
            if exc.status == 409:  # created meanwhile by someone else, under the same name
                raise errors.session_exists(spec["sessionId"]) from None
            raise self.refused_by_api(exc) from None
        name = made["metadata"]["name"]
        try:
            active = await self.until_active(ns, name)
        except BaseException:
            await self.delete_object(ns, name)  # a refused or abandoned create leaves nothing behind
            raise
        return fc.session_json(active, fspec.get("sessionAffinityConfig"))

    async def until_active(self, ns: str, name: str) -> dict[str, Any]:
        """Wait (bounded) for the operator to bind the session; FC's error when it refuses."""
        deadline, pause = time.monotonic() + self.create_wait, 0.005
        seen: dict[str, Any] | None = None
        while True:
            change = self.changes.next_change(ns, name) if self.changes is not None else None
            obj = seen or await self.clients.custom.get_namespaced_custom_object(GROUP, VERSION, ns, SESSION.plural, name)
            seen = None
            status = obj.get("status") or {}
            if status.get("sessionStatus") == "Active":
                if change is not None:
                    change.cancel()  # not waited for: nothing keeps it
                return obj
            reason, message = self.pending_reason(status)
            if reason in REFUSALS:
                raise FCError(429 if reason == "MaxInstancesReached" else 400,
                              "ResourceThrottled" if reason == "MaxInstancesReached" else "InvalidArgument", message)
            if time.monotonic() > deadline:
                raise FCError(503, "ServiceUnavailable",
                              f"the session was not bound to an instance within {self.create_wait:.0f} s ({reason or 'no status yet'})")
            if change is None:
                await asyncio.sleep(pause)
            else:  # the watch event, or a read again after a while if it is slow
                try:
                    seen = await asyncio.wait_for(change, 0.25)
                except asyncio.TimeoutError:
                    pass
            pause = min(pause * 2, 0.2)

    @staticmethod
    def pending_reason(status: Mapping[str, Any]) -> tuple[str | None, str]:
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        return ready.get("reason"), ready.get("message", "")

    async def get(self, ns: str, function: str, session_id: str) -> dict[str, Any]:
        fspec = await self.function_spec(ns, function)
        obj = await self.live(ns, function, session_id)
        if obj is None or self.state(obj) != "Active":  # GetSession finds Active sessions only
            raise errors.session_not_found(session_id)
        return fc.session_json(obj, fspec.get("sessionAffinityConfig"))

    async def list(self, ns: str, function: str, params: Mapping[str, str]) -> dict[str, Any]:
        """Active and Expired sessions (or one of them), oldest first, ``limit`` a page; ``nextToken``
        names the last session of the previous page."""
        fspec = await self.function_spec(ns, function)
        limit = self.limit(params.get("limit"))
        wanted = params.get("sessionStatus") or None
        if wanted not in (None, "Active", "Expired"):
            raise FCError(400, "InvalidArgument", f"sessionStatus must be Active or Expired, got {wanted!r}")
        states = (wanted,) if wanted else ("Active", "Expired")
        qualifier = params.get("qualifier") or None
        matching = [o for o in await self.records(ns, function, params.get("sessionId") or None)
                    if self.state(o) in states and (qualifier is None or o["spec"].get("qualifier", "LATEST") == qualifier)]
        start = 0
        if params.get("nextToken"):
            after = self.decode_token(params["nextToken"])
            start = next((i + 1 for i, o in enumerate(matching) if o["metadata"]["name"] == after), len(matching))
        page = matching[start:start + limit]
        out: dict[str, Any] = {"sessions": [fc.session_json(o, fspec.get("sessionAffinityConfig")) for o in page]}
        if start + limit < len(matching):
            out["nextToken"] = self.encode_token(page[-1]["metadata"]["name"])
        return out

    @staticmethod
    def limit(raw: str | None) -> int:
        if raw in (None, ""):
            return 20
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if not 1 <= value <= 100:
            raise FCError(400, "InvalidArgument", f"limit must be an integer from 1 to 100, got {raw!r}")
        return value

    @staticmethod
    def encode_token(name: str) -> str:
        return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")

    @staticmethod
    def decode_token(token: str) -> str:
        try:
            return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            raise FCError(400, "InvalidArgument", "nextToken is not a token this API returned") from None

    async def update(self, ns: str, function: str, session_id: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        fspec = await self.function_spec(ns, function)
        obj = await self.live(ns, function, session_id)
        if obj is None or self.state(obj) != "Active":
            raise errors.session_not_found(session_id)
        body = body or {}
        unknown = set(body) - {"sessionTTLInSeconds", "sessionIdleTimeoutInSeconds", "disableSessionIdReuse"}
        if unknown:
            raise FCError(400, "InvalidArgument", f"UpdateSession changes only the timeouts; cannot change {sorted(unknown)}")
        reuse = body.get("disableSessionIdReuse")
        if reuse is not None and bool(reuse) != bool(fc.session_json(obj, fspec.get("sessionAffinityConfig"))["disableSessionIdReuse"]):
            raise FCError(400, "InvalidArgument", "disableSessionIdReuse cannot be changed after the session is created")
        probe = fc.create_input_to_spec(function, None, {"sessionId": session_id, **{k: v for k, v in body.items() if k != "disableSessionIdReuse"}})
        patch = {k: probe[k] for k in ("sessionTTLInSeconds", "sessionIdleTimeoutInSeconds") if k in probe}
        name = obj["metadata"]["name"]
        if patch:
            try:
                obj = await self.clients.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, ns, SESSION.plural, name, {"spec": patch}, _content_type="application/merge-patch+json")
            except ApiException as exc:
                raise self.refused_by_api(exc) from None
            obj = await self.until_observed(ns, name, obj["metadata"]["generation"])
        return fc.session_json(obj, fspec.get("sessionAffinityConfig"))

    async def until_observed(self, ns: str, name: str, generation: int, wait: float = 2.0) -> dict[str, Any]:
        """The object once the operator has taken the update in (new deadline, lastModifiedTime)."""
        deadline = time.monotonic() + wait
        while True:
            obj = await self.clients.custom.get_namespaced_custom_object(GROUP, VERSION, ns, SESSION.plural, name)
            if (obj.get("status") or {}).get("observedGeneration") == generation or time.monotonic() > deadline:
                return obj
            await asyncio.sleep(0.02)

    async def delete(self, ns: str, function: str, session_id: str) -> None:
        """Every record of the id goes: the session (if live) and expired ones, which lifts a
        disableSessionIdReuse refusal; the same id then starts a new session."""
        await self.function_spec(ns, function)
        records = await self.records(ns, function, session_id)
        if not records:
            raise errors.session_not_found(session_id)
        for obj in records:
            await self.delete_object(ns, obj["metadata"]["name"])

    async def delete_object(self, ns: str, name: str) -> None:
        try:
            await self.clients.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, SESSION.plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    @staticmethod
    def refused_by_api(exc: ApiException) -> FCError:
        """The API server's refusal (CRD schema, CEL) as FC's 400, with its message."""
        try:
            message = json.loads(exc.body).get("message", exc.reason)
        except (TypeError, ValueError):
            message = exc.reason
        if exc.status in (400, 422):
            return FCError(400, "InvalidArgument", message)
        return errors.internal()
