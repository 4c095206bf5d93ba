"""kopf's diff base as the operator configures it (controller/handlers.py): a FunctionSession's
change (pause, resume, new timeouts, an annotation) is no update for kopf, so kopf writes no new diff
base after it; a Function's spec change still is one (its on.update handler runs)."""

from __future__ import annotations

from typing import Any

import kopf
from kopf._cogs.structs import diffs, patches

from fnsession.controller.handlers import SessionEssenceUnchanging


def session(**spec: Any) -> kopf.Body:
    return kopf.Body({"apiVersion": "fnsession.dev/v1alpha1", "kind": "FunctionSession",
                      "metadata": {"name": "s", "namespace": "ns", "annotations": {}},
                      "spec": {"functionName": "echo", "sessionId": "s-1", **spec}})


def stored_after_create(storage: SessionEssenceUnchanging, body: kopf.Body) -> kopf.Body:
    """The object as kopf leaves it after its create handler: the diff base in status.kopf."""
    patch = patches.Patch()
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    return kopf.Body({**dict(body), "status": dict(patch)["status"]})


def test_a_session_is_marked_handled_but_its_changes_are_no_update_for_kopf() -> None:
    storage = SessionEssenceUnchanging()
    assert storage.fetch(body=session()) is None  # never handled: kopf's create handler runs
    created = stored_after_create(storage, session())
    old = storage.fetch(body=created)
    assert old is not None  # handled: never created again
    changed = session(paused=True, sessionTTLInSeconds=60, enableAutoResume=True)
    changed["metadata"]["annotations"]["fnsession.dev/resume-requested"] = "2026-12-04T00:00:00.000000Z"
    assert not diffs.diff(old, storage.build(body=kopf.Body({**dict(changed), "status": created["status"]})))


def test_a_functions_spec_change_is_still_an_update() -> None:
    storage = SessionEssenceUnchanging()
    function = kopf.Body({"apiVersion": "fnsession.dev/v1alpha1", "kind": "Function", "metadata": {"name": "echo"},
                          "spec": {"scaling": {"warmInstances": 1}}})
    created = stored_after_create(storage, function)
    scaled = kopf.Body({**dict(created), "spec": {"scaling": {"warmInstances": 2}}})
    assert diffs.diff(storage.fetch(body=created), storage.build(body=scaled))
