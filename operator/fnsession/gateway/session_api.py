"""FC's session API (CreateSession, GetSession, ListSessions, UpdateSession, DeleteSession,
PauseSession, ResumeSession) over FunctionSession objects, so that ``kubectl`` and the REST API are
two views of the same sessions: a pause sets ``spec.paused``, as ``kubectl patch`` does.

Framework-free: each operation takes decoded arguments and returns (status, JSON) or raises
:class:`~fnsession.gateway.errors.FCError`; the HTTP layer (server.py) only parses and writes.
A refused create loses nothing: the object it made is deleted again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from fnsession.api.function import MCP_AFFINITIES
from fnsession.api.names import FUNCTION, GROUP, SESSION, VERSION
from fnsession.core.pausing import RESUME_ANNOTATION
from fnsession.core.pods import LABEL_FUNCTION
from fnsession.core.status import stamp
from fnsession.gateway import errors, fc
from fnsession.gateway.errors import FCError
from fnsession.gateway.routes import Follow, Seen
from fnsession.kube import objects
from fnsession.kube.client import Clients
from fnsession.kube.objects import ApiException

CREATE_WAIT_SECONDS = 30.0
LIVE = ("Active", "Paused")  # what GetSession, UpdateSession and the pause API find
REFUSALS = {"StorageNotAllowed", "DuplicateSessionId", "SessionIdReuseDisabled", "MaxInstancesReached"}


def function_not_found(name: str) -> FCError:
    return FCError(404, "FunctionNotFound", f"function {name} does not exist")


class Changes(Protocol):
    def following(self, ns: str, name: str) -> contextlib.AbstractContextManager[Follow]:
        """The object's watch events while the block runs: its newest object at each (routes.Follow)."""

    def function_spec(self, ns: str, name: str) -> dict[str, Any] | None:
        """A Function's spec as the watch last saw it; None when it has not seen the Function."""

    def seen(self, ns: str, function: str, session_id: str) -> Seen | None:
        """The id's live session as the watch last saw it; None when it has seen none."""

    def none_seen(self, ns: str, function: str, session_id: str) -> bool:
        """Whether the watch, up and listed, has no live session of the id."""


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
            return await objects.get(self.clients, FUNCTION, ns, name)
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
        items = await objects.list_in(self.clients, SESSION, ns, label_selector=selector)
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

    async def create(self, ns: str, function: str, qualifier: str | None, body: Mapping[str, Any] | None,
                     opened_by_instance: bool = False) -> dict[str, Any]:
        """CreateSession (HEADER_FIELD and GENERATED_COOKIE only, as FC); ``opened_by_instance``: the
        gateway's own create for an MCP session, whose id the instance names afterwards (mcp.py)."""
        fspec = await self.function_spec(ns, function)
        affinity = fspec.get("sessionAffinity")
        if affinity not in ("HEADER_FIELD", "GENERATED_COOKIE") and not (opened_by_instance and affinity in MCP_AFFINITIES):
            raise errors.unsupported_affinity()
        spec = fc.create_input_to_spec(function, qualifier, body)
        if "storage" in spec and fspec.get("instanceIsolation") != "SESSION_EXCLUSIVE":
            raise errors.storage_needs_exclusive()
        # named after the id's earlier records: a create of the same id elsewhere at the same moment
        # (another gateway replica or worker) makes the same name, and one of the two gets 409
        obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": SESSION.kind, "spec": spec, "metadata": {
            "labels": {LABEL_FUNCTION: function, fc.LABEL_SESSION_ID_HASH: fc.session_id_hash(spec["sessionId"])},
            "annotations": {"fnsession.dev/created-by": "gateway"}}}
        made: dict[str, Any] | None = None
        with contextlib.ExitStack() as following:  # (each name's watch events followed from before its create)
            follow: Follow | None = None
            if self.changes is not None and self.changes.none_seen(ns, function, spec["sessionId"]):
                # the watch has no live record of the id: the name of an id's first record, without listing
                # them (a list filters every session of the namespace); a 409 means some record has it
                follow = following.enter_context(self.following(ns, fc.object_name(function, spec["sessionId"], [])))
                made = await self.create_named(ns, obj, function, spec["sessionId"], [], conflict_is_taken=False)
            if made is None:
                records = await self.records(ns, function, spec["sessionId"])
                if any(self.state(o) != "Expired" for o in records):
                    raise errors.session_exists(spec["sessionId"])
                earlier = [o["metadata"]["name"] for o in records]
                follow = following.enter_context(self.following(ns, fc.object_name(function, spec["sessionId"], earlier)))
                made = await self.create_named(ns, obj, function, spec["sessionId"], earlier, conflict_is_taken=True)
                assert made is not None
            name = made["metadata"]["name"]
            try:  # (the object as the create returned it, then the events: no read of it)
                active = await self.until_active(ns, name, made, follow=follow)
            except BaseException:
                await self.delete_object(ns, name)  # a refused or abandoned create leaves nothing behind
                raise
        return fc.session_json(active, fspec.get("sessionAffinityConfig"))

    async def create_named(self, ns: str, obj: dict[str, Any], function: str, session_id: str, earlier: list[str],
                           conflict_is_taken: bool) -> dict[str, Any] | None:
        """``obj`` created under the name that follows from the id's ``earlier`` records; on 409, FC's
        SessionAlreadyExists when ``conflict_is_taken`` (created meanwhile by someone else, under the
        same name), else None (the caller lists the records and names it again)."""
        obj["metadata"]["name"] = fc.object_name(function, session_id, earlier)
        try:
            made: dict[str, Any] = await objects.create(self.clients, SESSION, ns, obj)
        except ApiException as exc:
            if exc.status == 409:
                if conflict_is_taken:
                    raise errors.session_exists(session_id) from None
                return None
            raise self.refused_by_api(exc) from None
        return made

    async def until_active(self, ns: str, name: str, first: dict[str, Any] | None = None,
                           follow: Follow | None = None) -> dict[str, Any]:
        """Wait (bounded) for the operator to bind the session; FC's error when it refuses. ``first``:
        the object as a write just returned it (saves the first read); ``follow``: its events, followed
        since before that write (else from now)."""
        deadline, pause = time.monotonic() + self.create_wait, 0.005
        seen: dict[str, Any] | None = first
        with contextlib.nullcontext(follow) if follow is not None else self.following(ns, name) as follow:
            while True:
                obj = seen or await objects.get(self.clients, SESSION, ns, name)
                status = obj.get("status") or {}
                if status.get("sessionStatus") == "Active":
                    return obj
                reason, message = self.pending_reason(status)
                if reason in REFUSALS:
                    raise FCError(429 if reason == "MaxInstancesReached" else 400,
                                  "ResourceThrottled" if reason == "MaxInstancesReached" else "InvalidArgument", message)
                if time.monotonic() > deadline:
                    raise FCError(503, "ServiceUnavailable",
                                  f"the session was not bound to an instance within {self.create_wait:.0f} s ({reason or 'no status yet'})")
                if follow is None:
                    await asyncio.sleep(pause)
                    seen = None
                else:  # the watch event, or a read again after a while if it is slow
                    seen = await follow.next(0.25)
                pause = min(pause * 2, 0.2)

    def following(self, ns: str, name: str) -> contextlib.AbstractContextManager[Follow | None]:
        """The object's watch events (None without a watch: then the waits poll)."""
        return self.changes.following(ns, name) if self.changes is not None else contextlib.nullcontext()

    @staticmethod
    def pending_reason(status: Mapping[str, Any]) -> tuple[str | None, str]:
        ready: Mapping[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        return ready.get("reason"), ready.get("message", "")

    async def get(self, ns: str, function: str, session_id: str) -> dict[str, Any]:
        fspec = await self.function_spec(ns, function)
        obj = await self.live(ns, function, session_id)
        if obj is None or self.state(obj) not in LIVE:  # GetSession finds Active and Paused sessions
            raise errors.session_not_found(session_id)
        return fc.session_json(obj, fspec.get("sessionAffinityConfig"))

    async def list(self, ns: str, function: str, params: Mapping[str, str]) -> dict[str, Any]:
        """Active, Paused and Expired sessions (or one of them), oldest first, ``limit`` a page; ``nextToken``
        names the last session of the previous page."""
        fspec = await self.function_spec(ns, function)
        limit = self.limit(params.get("limit"))
        wanted = params.get("sessionStatus") or None
        if wanted not in (None, "Active", "Paused", "Expired"):
            raise FCError(400, "InvalidArgument", f"sessionStatus must be Active, Paused or Expired, got {wanted!r}")
        states = (wanted,) if wanted else ("Active", "Paused", "Expired")
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
        if obj is None or self.state(obj) not in LIVE:
            raise errors.session_not_found(session_id)
        body = body or {}
        unknown = set(body) - {"sessionTTLInSeconds", "sessionIdleTimeoutInSeconds", "disableSessionIdReuse", *fc.AUTO_PAUSE_FIELDS}
        if unknown:
            raise FCError(400, "InvalidArgument", f"UpdateSession changes only the timeouts, enableAutoPause and "
                                                  f"enableAutoResume; cannot change {sorted(unknown)}")
        reuse = body.get("disableSessionIdReuse")
        if reuse is not None and bool(reuse) != bool(fc.session_json(obj, fspec.get("sessionAffinityConfig"))["disableSessionIdReuse"]):
            raise FCError(400, "InvalidArgument", "disableSessionIdReuse cannot be changed after the session is created")
        probe = fc.create_input_to_spec(function, None, {"sessionId": session_id, **{k: v for k, v in body.items() if k != "disableSessionIdReuse"}})
        patch = {k: probe[k] for k in ("sessionTTLInSeconds", "sessionIdleTimeoutInSeconds", *fc.AUTO_PAUSE_FIELDS) if k in probe}
        name = obj["metadata"]["name"]
        if patch:
            try:
                obj = await objects.patch(self.clients, SESSION, ns, name, {"spec": patch})
            except ApiException as exc:
                raise self.refused_by_api(exc) from None
            obj = await self.until_observed(ns, name, obj["metadata"]["generation"])
        return fc.session_json(obj, fspec.get("sessionAffinityConfig"))

    # --- pause and resume (spec.paused; core/pausing.py says what the operator does) ----------------------

    async def paused_record(self, ns: str, function: str, session_id: str, qualifier: str | None) -> dict[str, Any]:
        """The live record of an id for the pause API: FC's 404 for none (or another qualifier's)."""
        await self.function_spec(ns, function)
        obj = await self.live(ns, function, session_id)
        if obj is None or (qualifier and obj["spec"].get("qualifier", "LATEST") != qualifier):
            raise errors.session_not_found(session_id)
        return obj

    async def pause(self, ns: str, function: str, session_id: str, params: Mapping[str, str]) -> dict[str, Any]:
        """PauseSession: ``spec.paused: true``, answered once the operator says Paused (its compute released)."""
        if not fc.file_system_only(params.get("fileSystemOnly")):
            raise errors.memory_pause_unsupported()
        await self.function_spec(ns, function)
        change = {"spec": {"paused": True}}
        with contextlib.ExitStack() as following:  # (the object's events followed from before the write)
            patched, follow = await self.patch_seen(ns, function, session_id, ("Active",), params.get("qualifier"),
                                                    change, following)
            if patched is None:  # not seen so by the watch, or changed since: as the API server has it
                obj = await self.paused_record(ns, function, session_id, params.get("qualifier"))
                if self.state(obj) != "Active":
                    raise errors.session_not_active(session_id, self.state(obj) or "Pending")
                follow = following.enter_context(self.following(ns, obj["metadata"]["name"]))
                patched = await self.patch(ns, obj["metadata"]["name"], change)
            done = await self.until(ns, patched["metadata"]["name"], lambda o: self.state(o) in ("Paused", "Expired"),
                                    self.create_wait, "paused", patched, follow)
        return fc.session_json(done, (await self.function_spec(ns, function)).get("sessionAffinityConfig"))

    async def resume(self, ns: str, function: str, session_id: str, params: Mapping[str, str]) -> dict[str, Any]:
        """ResumeSession: ``spec.paused: false`` and a resume request (for a session the idle timeout
        paused), answered once it is Active again, within the create wait."""
        if not fc.file_system_only(params.get("fileSystemOnly")):
            raise errors.memory_pause_unsupported()
        await self.function_spec(ns, function)
        with contextlib.ExitStack() as following:  # (the object's events followed from before the write)
            patched, follow = await self.patch_seen(ns, function, session_id, ("Paused",), params.get("qualifier"),
                                                    self.resume_change(), following)
            if patched is not None:
                active = await self.until_active(ns, patched["metadata"]["name"], patched, follow)
            else:  # not seen so by the watch, or changed since: as the API server has it
                obj = await self.paused_record(ns, function, session_id, params.get("qualifier"))
                if self.state(obj) != "Paused":
                    raise errors.session_not_paused(session_id, self.state(obj) or "Pending")
                active = await self.resume_object(ns, obj)
        return fc.session_json(active, (await self.function_spec(ns, function)).get("sessionAffinityConfig"))

    @staticmethod
    def resume_change() -> dict[str, Any]:
        """``spec.paused: false``, and a resume request for a session the idle timeout paused."""
        return {"metadata": {"annotations": {RESUME_ANNOTATION: stamp(datetime.now(UTC))}}, "spec": {"paused": False}}

    async def resume_object(self, ns: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        name, patched = obj["metadata"]["name"], None
        with self.following(ns, name) as follow:  # (its events followed from before the write)
            if self.state(obj) == "Paused":
                patched = await self.patch(ns, name, self.resume_change())
            return await self.until_active(ns, name, patched, follow)

    async def patch_seen(self, ns: str, function: str, session_id: str, states: tuple[str, ...], qualifier: str | None,
                         change: dict[str, Any], following: contextlib.ExitStack,
                         ) -> tuple[dict[str, Any] | None, Follow | None]:
        """``change`` written to the id's live session as the gateway's watch last saw it, when that was
        in one of ``states`` (and of ``qualifier``), over the version seen: (the object it is now, its
        watch events, followed in ``following`` from before the write, so that the operator's answer
        cannot come in between the write's answer and the wait). (None, None) when the watch saw it
        otherwise or not at all, or it changed since (the API server's 409): then the caller lists the
        id's records, as without a watch, and answers from what it finds. Saves the list on the common
        path and changes nothing a list would not have let it change."""
        seen = self.changes.seen(ns, function, session_id) if self.changes is not None else None
        if seen is None or seen.state not in states or (qualifier and seen.qualifier != qualifier):
            return None, None
        body = {**change, "metadata": {**change.get("metadata", {}), "resourceVersion": seen.version}}
        follow = following.enter_context(self.following(ns, seen.name))
        try:
            patched: dict[str, Any] = await objects.patch(self.clients, SESSION, ns, seen.name, body)
        except ApiException as exc:
            if exc.status in (404, 409):
                return None, None  # (the events followed meanwhile are left unread until ``following`` ends)
            raise self.refused_by_api(exc) from None
        return patched, follow

    async def create_or_resume(self, ns: str, function: str, qualifier: str | None,
                               body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """A request's session: a passive create, or, when its id names a Paused session, that session
        resumed (``enableAutoResume``; FC's SessionPaused without it). (Session JSON, resumed?)"""
        fspec = await self.function_spec(ns, function)
        if fspec.get("sessionAffinity") in ("HEADER_FIELD", "GENERATED_COOKIE") and "sessionId" in body:
            # the watch saw it Paused with enableAutoResume: resumed without the create's list first
            seen = self.changes.seen(ns, function, body["sessionId"]) if self.changes is not None else None
            if seen is not None and seen.auto_resume:
                with contextlib.ExitStack() as following:
                    patched, follow = await self.patch_seen(ns, function, body["sessionId"], ("Paused",), None,
                                                            self.resume_change(), following)
                    if patched is not None:
                        active = await self.until_active(ns, patched["metadata"]["name"], patched, follow)
                        return fc.session_json(active, fspec.get("sessionAffinityConfig")), True
        try:
            return await self.create(ns, function, qualifier, body), False
        except FCError as err:
            if err.code != "SessionAlreadyExists":
                raise
            obj = await self.live(ns, function, body["sessionId"])
            if obj is None or not self.resumable(obj):
                raise
        active = await self.resume_object(ns, obj)
        return fc.session_json(active, (await self.function_spec(ns, function)).get("sessionAffinityConfig")), True

    async def paused(self, ns: str, function: str, session_id: str) -> bool:
        """Whether the id names a Paused session (or one resuming)."""
        seen = self.changes.seen(ns, function, session_id) if self.changes is not None else None
        if seen is not None and seen.state == "Paused" and seen.auto_resume:
            return True  # (create_or_resume finds out again, as the API server has it)
        obj = await self.live(ns, function, session_id)
        return obj is not None and self.resumable(obj)

    def resumable(self, obj: Mapping[str, Any]) -> bool:
        """Paused, or Pending on its way back from a pause; FC's SessionPaused when Paused without
        ``enableAutoResume``."""
        state, status = self.state(obj), obj.get("status") or {}
        resuming = state == "Pending" and any(c.get("type") == "Paused" for c in status.get("conditions") or [])
        if state == "Paused" and not obj["spec"].get("enableAutoResume"):
            raise errors.session_paused(fc.session_json(obj)["sessionId"])
        return state == "Paused" or resuming

    async def patch(self, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            patched: dict[str, Any] = await objects.patch(self.clients, SESSION, ns, name, body)
        except ApiException as exc:
            if exc.status == 404:
                raise errors.session_not_found(name) from None
            raise self.refused_by_api(exc) from None
        return patched

    async def until(self, ns: str, name: str, done: Callable[[Mapping[str, Any]], bool], wait: float, what: str,
                    first: dict[str, Any] | None = None, follow: Follow | None = None) -> dict[str, Any]:
        """The object once ``done`` holds for it (watch events, else reads), within ``wait`` seconds;
        ``first``: the object as a write just returned it; ``follow``: its events, followed since before
        that write (else from now)."""
        deadline = time.monotonic() + wait
        seen: dict[str, Any] | None = first
        with contextlib.nullcontext(follow) if follow is not None else self.following(ns, name) as follow:
            while True:
                obj = seen or await objects.get(self.clients, SESSION, ns, name)
                if done(obj):
                    return obj
                if time.monotonic() > deadline:
                    raise FCError(503, "ServiceUnavailable", f"the session was not {what} within {wait:.0f} s")
                if follow is None:
                    await asyncio.sleep(0.02)
                    seen = None
                else:
                    seen = await follow.next(0.25)

    async def until_observed(self, ns: str, name: str, generation: int, wait: float = 2.0) -> dict[str, Any]:
        """The object once the operator has taken the update in (new deadline, lastModifiedTime)."""
        deadline = time.monotonic() + wait
        while True:
            obj = await objects.get(self.clients, SESSION, ns, name)
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
            await objects.delete(self.clients, SESSION, ns, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    @staticmethod
    def refused_by_api(exc: ApiException) -> FCError:
        """The API server's refusal (CRD schema, CEL) as FC's 400, with its message."""
        try:
            message = json.loads(exc.body or b"").get("message", exc.reason)
        except (TypeError, ValueError):
            message = exc.reason
        if exc.status in (400, 422):
            return FCError(400, "InvalidArgument", message)
        return errors.internal()
