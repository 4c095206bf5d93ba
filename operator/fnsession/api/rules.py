"""Validation rules stated once, enforced twice.

A rule that crosses fields (idle timeout not above the TTL, storage only for SESSION_EXCLUSIVE, ...)
is written here as a CEL expression for the CRD *and* as a Python predicate for the models, with one
message. The CRD generator copies the CEL into ``x-kubernetes-validations`` so ``kubectl apply``
refuses a bad manifest with no webhook; the models run the predicate so the gateway and the operator
refuse the same input with the same words. A unit test runs every rule's Python side over the same
table of bad manifests that the integration test sends to the API server.

Transition rules (``oldSelf``) only exist on the CEL side: immutability is the API server's job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# FC's session id: 1-64 characters, a letter, digit or underscore first.
SESSION_ID_PATTERN = r"^[a-zA-Z0-9_][a-zA-Z0-9_-]*$"
SESSION_ID_MAX = 64
# FC's affinity header: 5-40 characters, a letter first, then letters, digits, '-' or '_'; no x-fc- prefix.
HEADER_NAME_PATTERN = r"^[a-zA-Z][a-zA-Z0-9_-]*$"
HEADER_NAME_MIN, HEADER_NAME_MAX = 5, 40
RESERVED_HEADER_PREFIX = "x-fc-"
TTL_MIN, TTL_MAX = 1, 21600
IDLE_MIN, IDLE_MAX = 0, 21600
CONCURRENCY_MIN, CONCURRENCY_MAX = 1, 200
# Kubernetes object names the sessions refer to (RFC 1123 subdomain / label).
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# MCP_SSE: the path of the SSE stream on the instance (FC's sseEndpointPath): absolute, no query.
SSE_PATH_PATTERN = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$"
QUALIFIER_PATTERN = r"^[a-zA-Z0-9_][a-zA-Z0-9_-]*$"
MAX_ID = 2147483647  # POSIX uid/gid as Kubernetes accepts them (int32)


@dataclass(frozen=True)
class Rule:
    """One rule: ``cel`` over ``self`` (the object the rule is attached to), ``check`` over the same
    object as plain data with the API's field names (a dict, or a list for a rule on a list);
    ``message`` names the field and the rule."""

    cel: str
    message: str
    check: Callable[[Any], bool] | None = None
    field_path: str | None = None
    reason: str = "FieldValueInvalid"

    def as_cel(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason != "FieldValueInvalid":
            out["reason"] = self.reason
        return out

    def violated_by(self, obj: dict[str, Any]) -> bool:
        return self.check is not None and not self.check(obj)


def relative_without_dotdot(path: str) -> bool:
    return not path.startswith("/") and ".." not in path.split("/")


# --- rules attached to single fields ---------------------------------------------------------------

HEADER_NOT_RESERVED = Rule(
    cel=f"!self.lowerAscii().startsWith('{RESERVED_HEADER_PREFIX}')",
    message=f"affinityHeaderFieldName must not start with '{RESERVED_HEADER_PREFIX}' (in any case): FC reserves that prefix",
    check=lambda v: not str(v).lower().startswith(RESERVED_HEADER_PREFIX),
)
SUBPATH_RELATIVE = Rule(
    cel="!self.startsWith('/') && !self.split('/').exists(p, p == '..')",
    message="subPath must be a relative path with no '..' segment",
    check=lambda v: relative_without_dotdot(str(v)),
)
MOUNT_PATH_ABSOLUTE = Rule(
    cel="self.startsWith('/') && !self.split('/').exists(p, p == '..')",
    message="mountPath must be an absolute path with no '..' segment",
    check=lambda v: str(v).startswith("/") and ".." not in str(v).split("/"),
)
FENCED_ONE_WAY = Rule(
    cel="self || !oldSelf",
    message="fenced can only change from false to true",
    reason="FieldValueForbidden",
)

# --- rules on objects ------------------------------------------------------------------------------

IDLE_NOT_ABOVE_TTL = Rule(
    cel="!has(self.sessionIdleTimeoutInSeconds) || !has(self.sessionTTLInSeconds) || "
        "self.sessionIdleTimeoutInSeconds <= self.sessionTTLInSeconds",
    message="sessionIdleTimeoutInSeconds must not exceed sessionTTLInSeconds",
    check=lambda o: o.get("sessionIdleTimeoutInSeconds") is None or o.get("sessionTTLInSeconds") is None
        or o["sessionIdleTimeoutInSeconds"] <= o["sessionTTLInSeconds"],
    field_path=".sessionIdleTimeoutInSeconds",
)
HEADER_REQUIRED_FOR_HEADER_FIELD = Rule(
    cel="self.sessionAffinity != 'HEADER_FIELD' || has(self.sessionAffinityConfig.affinityHeaderFieldName)",
    message="sessionAffinityConfig.affinityHeaderFieldName is required when sessionAffinity is HEADER_FIELD",
    check=lambda o: o.get("sessionAffinity") != "HEADER_FIELD"
        or bool((o.get("sessionAffinityConfig") or {}).get("affinityHeaderFieldName")),
    field_path=".sessionAffinityConfig",
    reason="FieldValueRequired",
)
HEADER_ONLY_FOR_HEADER_FIELD = Rule(
    cel="self.sessionAffinity == 'HEADER_FIELD' || !has(self.sessionAffinityConfig.affinityHeaderFieldName)",
    message="sessionAffinityConfig.affinityHeaderFieldName is allowed only when sessionAffinity is HEADER_FIELD",
    check=lambda o: o.get("sessionAffinity") == "HEADER_FIELD"
        or not (o.get("sessionAffinityConfig") or {}).get("affinityHeaderFieldName"),
    field_path=".sessionAffinityConfig.affinityHeaderFieldName",
    reason="FieldValueForbidden",
)
SSE_PATH_ONLY_FOR_MCP_SSE = Rule(
    cel="self.sessionAffinity == 'MCP_SSE' || !has(self.sessionAffinityConfig.sseEndpointPath)",
    message="sessionAffinityConfig.sseEndpointPath is allowed only when sessionAffinity is MCP_SSE",
    check=lambda o: o.get("sessionAffinity") == "MCP_SSE"
        or not (o.get("sessionAffinityConfig") or {}).get("sseEndpointPath"),
    field_path=".sessionAffinityConfig.sseEndpointPath",
    reason="FieldValueForbidden",
)
STORAGE_ONLY_FOR_EXCLUSIVE = Rule(
    cel="!has(self.sessionStorage) || self.instanceIsolation == 'SESSION_EXCLUSIVE'",
    message="sessionStorage is allowed only when instanceIsolation is SESSION_EXCLUSIVE",
    check=lambda o: o.get("sessionStorage") is None or o.get("instanceIsolation") == "SESSION_EXCLUSIVE",
    field_path=".sessionStorage",
    reason="FieldValueForbidden",
)
WARM_NOT_ABOVE_MAX = Rule(
    cel="self.warmInstances <= self.maxInstances",
    message="warmInstances must not exceed maxInstances",
    check=lambda o: o.get("warmInstances", 0) <= o.get("maxInstances", 100),
    field_path=".warmInstances",
)
RANGE_ORDERED = Rule(
    cel="self.min <= self.max",
    message="min must not exceed max",
    check=lambda o: o["min"] <= o["max"],
    field_path=".min",
)
MOUNT_PATHS_UNIQUE = Rule(
    cel="self.all(m, self.exists_one(n, n.mountPath == m.mountPath))",
    message="mounts must not repeat a mountPath",
    check=lambda mounts: len({m.get("mountPath") for m in mounts}) == len(mounts),
)


def _unchanged(name: str) -> Rule:
    return Rule(
        cel=f"has(self.{name}) == has(oldSelf.{name}) && (!has(self.{name}) || self.{name} == oldSelf.{name})",
        message=f"{name} is immutable: only sessionTTLInSeconds, sessionIdleTimeoutInSeconds, fenced, paused, "
                f"enableAutoPause and enableAutoResume can change",
        field_path=f".{name}",
        reason="FieldValueForbidden",
    )


SESSION_IMMUTABLE = tuple(_unchanged(n) for n in ("functionName", "qualifier", "sessionId", "disableSessionIdReuse", "storage"))
