"""Bad manifests, shared by the unit tests (the models refuse them) and the integration tests (the API
server refuses them at ``kubectl apply``, naming the field and the rule, and creates nothing).

Each case is a good manifest with one change. ``field`` is the path the API server's error must
name; ``says`` is a fragment of the rule its message must state.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

DELETE = object()

GOOD_FUNCTION: dict[str, Any] = {
    "apiVersion": "fnsession.dev/v1alpha1",
    "kind": "Function",
    "metadata": {"name": "good-fn"},
    "spec": {
        "template": {"spec": {"containers": [{"name": "fn", "image": "localhost/fnsession-sample-function:dev"}]}},
        "sessionAffinity": "HEADER_FIELD",
        "sessionAffinityConfig": {"affinityHeaderFieldName": "x-session-id", "sessionConcurrencyPerInstance": 2,
                                  "sessionTTLInSeconds": 3600, "sessionIdleTimeoutInSeconds": 600},
    },
}

GOOD_EXCLUSIVE_FUNCTION: dict[str, Any] = {
    **copy.deepcopy(GOOD_FUNCTION),
    "metadata": {"name": "good-exclusive-fn"},
}
GOOD_EXCLUSIVE_FUNCTION["spec"]["instanceIsolation"] = "SESSION_EXCLUSIVE"
GOOD_EXCLUSIVE_FUNCTION["spec"]["sessionStorage"] = {
    "allowedClaims": ["tenant-data"], "uidRange": {"min": 1000, "max": 1999}, "gidRange": {"min": 1000, "max": 1999}}

GOOD_SESSION: dict[str, Any] = {
    "apiVersion": "fnsession.dev/v1alpha1",
    "kind": "FunctionSession",
    "metadata": {"name": "good-session"},
    "spec": {
        "functionName": "good-exclusive-fn",
        "sessionId": "tenant-1001_a",
        "sessionTTLInSeconds": 600,
        "sessionIdleTimeoutInSeconds": 60,
        "storage": {"runAsUser": 1001, "runAsGroup": 1001,
                    "mounts": [{"claimName": "tenant-data", "subPath": "tenants/1001", "mountPath": "/data"}]},
    },
}


@dataclass(frozen=True)
class Case:
    id: str
    base: dict[str, Any]
    changes: dict[str, Any]
    field: str
    says: str
    rule: str | None = None  # the message of a rule in fnsession.api.rules, when one is the reason

    def manifest(self, name: str | None = None) -> dict[str, Any]:
        out = copy.deepcopy(self.base)
        for path, value in self.changes.items():
            set_path(out, path, value)
        if name:
            out["metadata"]["name"] = name
        return out


def set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = obj[int(part)] if isinstance(obj, list) else obj.setdefault(part, {})
    if isinstance(obj, list):
        obj[int(last)] = value
    elif value is DELETE:
        obj.pop(last, None)
    else:
        obj[last] = value


HDR = "spec.sessionAffinityConfig.affinityHeaderFieldName"
CFG = "spec.sessionAffinityConfig"
HEADER_PREFIX = "must not start with 'x-fc-'"
IDLE_TTL = "sessionIdleTimeoutInSeconds must not exceed sessionTTLInSeconds"
SUBPATH = "subPath must be a relative path with no '..' segment"
MOUNTPATH = "mountPath must be an absolute path with no '..' segment"
F, X, S = GOOD_FUNCTION, GOOD_EXCLUSIVE_FUNCTION, GOOD_SESSION
M0 = "spec.storage.mounts.0"

CREATE_CASES: list[Case] = [
    # Function: the affinity header (FC's rules)
    Case("header-x-fc-prefix", F, {HDR: "x-fc-session"}, HDR, HEADER_PREFIX, rule=HEADER_PREFIX),
    Case("header-X-FC-prefix-upper", F, {HDR: "X-FC-Session"}, HDR, HEADER_PREFIX, rule=HEADER_PREFIX),
    Case("header-X-Fc-prefix-mixed", F, {HDR: "X-Fc-abc1"}, HDR, HEADER_PREFIX, rule=HEADER_PREFIX),
    Case("header-too-short", F, {HDR: "abcd"}, HDR, "at least 5 chars"),
    Case("header-too-long", F, {HDR: "a" * 41}, HDR, "40"),
    Case("header-starts-with-digit", F, {HDR: "1session"}, HDR, "should match"),
    Case("header-starts-with-dash", F, {HDR: "-session"}, HDR, "should match"),
    Case("header-with-space", F, {HDR: "my session"}, HDR, "should match"),
    Case("header-with-dot", F, {HDR: "my.session"}, HDR, "should match"),
    Case("header-with-colon", F, {HDR: "session:id"}, HDR, "should match"),
    Case("header-required-for-HEADER_FIELD", F, {HDR: DELETE}, CFG, "affinityHeaderFieldName is required",
         rule="sessionAffinityConfig.affinityHeaderFieldName is required when sessionAffinity is HEADER_FIELD"),
    Case("header-forbidden-for-cookie", F, {"spec.sessionAffinity": "GENERATED_COOKIE"}, HDR,
         "allowed only when sessionAffinity is HEADER_FIELD",
         rule="sessionAffinityConfig.affinityHeaderFieldName is allowed only when sessionAffinity is HEADER_FIELD"),
    Case("sse-path-forbidden-for-header", F, {f"{CFG}.sseEndpointPath": "/sse"}, f"{CFG}.sseEndpointPath",
         "allowed only when sessionAffinity is MCP_SSE",
         rule="sessionAffinityConfig.sseEndpointPath is allowed only when sessionAffinity is MCP_SSE"),
    Case("sse-path-relative", F, {"spec.sessionAffinity": "MCP_SSE", HDR: DELETE, f"{CFG}.sseEndpointPath": "sse"},
         f"{CFG}.sseEndpointPath", "should match"),
    Case("sse-path-with-query", F, {"spec.sessionAffinity": "MCP_SSE", HDR: DELETE, f"{CFG}.sseEndpointPath": "/sse?x=1"},
         f"{CFG}.sseEndpointPath", "should match"),
    # Function: ranges
    Case("concurrency-zero", F, {f"{CFG}.sessionConcurrencyPerInstance": 0}, f"{CFG}.sessionConcurrencyPerInstance", "greater than or equal to 1"),
    Case("concurrency-negative", F, {f"{CFG}.sessionConcurrencyPerInstance": -3}, f"{CFG}.sessionConcurrencyPerInstance", "greater than or equal to 1"),
    Case("concurrency-201", F, {f"{CFG}.sessionConcurrencyPerInstance": 201}, f"{CFG}.sessionConcurrencyPerInstance", "less than or equal to 200"),
    Case("concurrency-not-integer", F, {f"{CFG}.sessionConcurrencyPerInstance": "twenty"}, f"{CFG}.sessionConcurrencyPerInstance", "integer"),
    Case("fn-ttl-zero", F, {f"{CFG}.sessionTTLInSeconds": 0}, f"{CFG}.sessionTTLInSeconds", "greater than or equal to 1"),
    Case("fn-ttl-too-long", F, {f"{CFG}.sessionTTLInSeconds": 21601}, f"{CFG}.sessionTTLInSeconds", "less than or equal to 21600"),
    Case("fn-idle-negative", F, {f"{CFG}.sessionIdleTimeoutInSeconds": -1}, f"{CFG}.sessionIdleTimeoutInSeconds", "greater than or equal to 0"),
    Case("fn-idle-too-long", F, {f"{CFG}.sessionIdleTimeoutInSeconds": 21601}, f"{CFG}.sessionIdleTimeoutInSeconds", "less than or equal to 21600"),
    Case("fn-idle-above-ttl", F, {f"{CFG}.sessionIdleTimeoutInSeconds": 3601}, f"{CFG}.sessionIdleTimeoutInSeconds", IDLE_TTL, rule=IDLE_TTL),
    Case("fn-default-idle-above-ttl", F, {f"{CFG}.sessionIdleTimeoutInSeconds": DELETE, f"{CFG}.sessionTTLInSeconds": 60},
         f"{CFG}.sessionIdleTimeoutInSeconds", IDLE_TTL, rule=IDLE_TTL),
    Case("fn-id-reuse-not-bool", F, {f"{CFG}.disableSessionIdReuse": "yes"}, f"{CFG}.disableSessionIdReuse", "boolean"),
    # Function: enums, required fields, template, scaling, storage policy
    Case("affinity-unknown", F, {"spec.sessionAffinity": "COOKIE"}, "spec.sessionAffinity", "Unsupported value"),
    Case("header-forbidden-for-mcp", F, {"spec.sessionAffinity": "MCP_STREAMABLE"}, HDR,
         "allowed only when sessionAffinity is HEADER_FIELD",
         rule="sessionAffinityConfig.affinityHeaderFieldName is allowed only when sessionAffinity is HEADER_FIELD"),
    Case("affinity-missing", F, {"spec.sessionAffinity": DELETE}, "spec.sessionAffinity", "Required value"),
    Case("isolation-unknown", F, {"spec.instanceIsolation": "EXCLUSIVE"}, "spec.instanceIsolation", "Unsupported value"),
    Case("template-missing", F, {"spec.template": DELETE}, "spec.template", "Required value"),
    Case("template-no-containers", F, {"spec.template.spec.containers": []}, "spec.template.spec.containers", "at least 1 items"),
    Case("port-zero", F, {"spec.port": 0}, "spec.port", "greater than or equal to 1"),
    Case("port-too-high", F, {"spec.port": 70000}, "spec.port", "less than or equal to 65535"),
    Case("max-instances-zero", F, {"spec.scaling": {"maxInstances": 0}}, "spec.scaling.maxInstances", "greater than or equal to 1"),
    Case("warm-above-max", F, {"spec.scaling": {"maxInstances": 2, "warmInstances": 3}}, "spec.scaling.warmInstances",
         "warmInstances must not exceed maxInstances", rule="warmInstances must not exceed maxInstances"),
    Case("scale-in-delay-negative", F, {"spec.scaling": {"scaleInDelaySeconds": -1}}, "spec.scaling.scaleInDelaySeconds", "greater than or equal to 0"),
    Case("storage-policy-on-shared", X, {"spec.instanceIsolation": "SHARED"}, "spec.sessionStorage",
         "allowed only when instanceIsolation is SESSION_EXCLUSIVE",
         rule="sessionStorage is allowed only when instanceIsolation is SESSION_EXCLUSIVE"),
    Case("storage-uid-range-reversed", X, {"spec.sessionStorage.uidRange": {"min": 2000, "max": 1000}},
         "spec.sessionStorage.uidRange.min", "min must not exceed max", rule="min must not exceed max"),
    Case("storage-no-claims", X, {"spec.sessionStorage.allowedClaims": []}, "spec.sessionStorage.allowedClaims", "at least 1 items"),
    Case("storage-bad-claim-name", X, {"spec.sessionStorage.allowedClaims": ["Tenant_Data"]}, "spec.sessionStorage.allowedClaims[0]", "should match"),
    Case("storage-negative-gid", X, {"spec.sessionStorage.gidRange": {"min": -1, "max": 10}}, "spec.sessionStorage.gidRange.min", "greater than or equal to 0"),
    # FunctionSession: the session id (FC's rules)
    Case("paused-not-bool", S, {"spec.paused": "yes"}, "spec.paused", "boolean"),
    Case("auto-resume-not-bool", S, {"spec.enableAutoResume": "on"}, "spec.enableAutoResume", "boolean"),
    Case("id-empty", S, {"spec.sessionId": ""}, "spec.sessionId", "at least 1 chars"),
    Case("id-65-chars", S, {"spec.sessionId": "a" * 65}, "spec.sessionId", "64"),
    Case("id-starts-with-dash", S, {"spec.sessionId": "-abc"}, "spec.sessionId", "should match"),
    Case("id-with-space", S, {"spec.sessionId": "a b"}, "spec.sessionId", "should match"),
    Case("id-with-slash", S, {"spec.sessionId": "a/b"}, "spec.sessionId", "should match"),
    Case("id-with-dot", S, {"spec.sessionId": "a.b"}, "spec.sessionId", "should match"),
    Case("id-non-ascii", S, {"spec.sessionId": "séance"}, "spec.sessionId", "should match"),
    Case("id-not-string", S, {"spec.sessionId": 12345}, "spec.sessionId", "string"),
    # FunctionSession: references and timeouts
    Case("function-missing", S, {"spec.functionName": DELETE}, "spec.functionName", "Required value"),
    Case("function-bad-name", S, {"spec.functionName": "Bad_Name"}, "spec.functionName", "should match"),
    Case("qualifier-with-space", S, {"spec.qualifier": "v 1"}, "spec.qualifier", "should match"),
    Case("session-ttl-zero", S, {"spec.sessionTTLInSeconds": 0}, "spec.sessionTTLInSeconds", "greater than or equal to 1"),
    Case("session-ttl-too-long", S, {"spec.sessionTTLInSeconds": 99999}, "spec.sessionTTLInSeconds", "less than or equal to 21600"),
    Case("session-idle-negative", S, {"spec.sessionIdleTimeoutInSeconds": -5}, "spec.sessionIdleTimeoutInSeconds", "greater than or equal to 0"),
    Case("session-idle-above-ttl", S, {"spec.sessionIdleTimeoutInSeconds": 601}, "spec.sessionIdleTimeoutInSeconds", IDLE_TTL, rule=IDLE_TTL),
    Case("fenced-not-bool", S, {"spec.fenced": "true"}, "spec.fenced", "boolean"),
    # FunctionSession: storage
    Case("subpath-absolute", S, {f"{M0}.subPath": "/tenants/1001"}, "spec.storage.mounts[0].subPath", SUBPATH, rule=SUBPATH),
    Case("subpath-dotdot-middle", S, {f"{M0}.subPath": "tenants/../1002"}, "spec.storage.mounts[0].subPath", SUBPATH, rule=SUBPATH),
    Case("subpath-dotdot-start", S, {f"{M0}.subPath": "../other"}, "spec.storage.mounts[0].subPath", SUBPATH, rule=SUBPATH),
    Case("subpath-dotdot-only", S, {f"{M0}.subPath": ".."}, "spec.storage.mounts[0].subPath", SUBPATH, rule=SUBPATH),
    Case("subpath-empty", S, {f"{M0}.subPath": ""}, "spec.storage.mounts[0].subPath", "at least 1 chars"),
    Case("mountpath-relative", S, {f"{M0}.mountPath": "data"}, "spec.storage.mounts[0].mountPath", MOUNTPATH, rule=MOUNTPATH),
    Case("mountpath-dotdot", S, {f"{M0}.mountPath": "/data/../etc"}, "spec.storage.mounts[0].mountPath", MOUNTPATH, rule=MOUNTPATH),
    Case("mount-claim-missing", S, {f"{M0}.claimName": DELETE}, "spec.storage.mounts[0].claimName", "Required value"),
    Case("mountpath-repeated", S, {"spec.storage.mounts": [
        {"claimName": "tenant-data", "subPath": "a", "mountPath": "/data"},
        {"claimName": "tenant-data", "subPath": "b", "mountPath": "/data"}]},
         "spec.storage.mounts", "mounts must not repeat a mountPath", rule="mounts must not repeat a mountPath"),
    Case("run-as-user-negative", S, {"spec.storage.runAsUser": -1}, "spec.storage.runAsUser", "greater than or equal to 0"),
    Case("run-as-group-missing", S, {"spec.storage.runAsGroup": DELETE}, "spec.storage.runAsGroup", "Required value"),
]


@dataclass(frozen=True)
class UpdateCase:
    """A good session, then an update: refused (``says`` set) or accepted (``says`` None)."""

    id: str
    changes: dict[str, Any]
    says: str | None
    field: str = ""
    before: dict[str, Any] = dataclasses.field(default_factory=dict)


def immutable(name: str) -> str:
    return f"{name} is immutable"


UPDATE_CASES: list[UpdateCase] = [
    UpdateCase("change-function", {"spec.functionName": "other-fn"}, immutable("functionName"), "spec.functionName"),
    UpdateCase("change-session-id", {"spec.sessionId": "other-id"}, immutable("sessionId"), "spec.sessionId"),
    UpdateCase("remove-session-id", {"spec.sessionId": DELETE}, immutable("sessionId"), "spec.sessionId"),
    UpdateCase("add-session-id", {"spec.sessionId": "late-id"}, immutable("sessionId"), "spec.sessionId",
               before={"spec.sessionId": DELETE}),
    UpdateCase("change-qualifier", {"spec.qualifier": "v2"}, immutable("qualifier"), "spec.qualifier"),
    UpdateCase("change-id-reuse", {"spec.disableSessionIdReuse": True}, immutable("disableSessionIdReuse"), "spec.disableSessionIdReuse"),
    UpdateCase("change-storage-uid", {"spec.storage.runAsUser": 1002}, immutable("storage"), "spec.storage"),
    UpdateCase("remove-storage", {"spec.storage": DELETE}, immutable("storage"), "spec.storage"),
    UpdateCase("unfence", {"spec.fenced": False}, "fenced can only change from false to true", "spec.fenced",
               before={"spec.fenced": True}),
    UpdateCase("unfence-by-removal", {"spec.fenced": DELETE}, "fenced can only change from false to true", "spec.fenced",
               before={"spec.fenced": True}),
    # allowed: the two timeouts and fencing
    UpdateCase("update-timeouts", {"spec.sessionTTLInSeconds": 1200, "spec.sessionIdleTimeoutInSeconds": 120}, None),
    UpdateCase("fence", {"spec.fenced": True}, None),
]
