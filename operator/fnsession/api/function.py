"""``Function``: the instances a session runs on, and the session policy.

Field names and ranges are FC's (``sessionAffinityConfig`` mirrors FC's ``SessionAffinityConfig``);
what FC configures elsewhere (instance template, scaling, storage policy) is Kubernetes-shaped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from fnsession.api import rules as r
from fnsession.api.base import ApiModel, cel, checked
from fnsession.api.common import Condition

# The constraints sit inside the type: beside an after-validator, pydantic keeps them out of the schema.
HeaderName = Annotated[str, StringConstraints(min_length=r.HEADER_NAME_MIN, max_length=r.HEADER_NAME_MAX,
                                              pattern=r.HEADER_NAME_PATTERN), checked(r.HEADER_NOT_RESERVED)]
SessionAffinity = Literal["HEADER_FIELD", "GENERATED_COOKIE", "MCP_STREAMABLE", "MCP_SSE"]
MCP_AFFINITIES = ("MCP_STREAMABLE", "MCP_SSE")  # the instance makes the id; no CreateSession for these (FC)
SSE_ENDPOINT_DEFAULT = "/sse"  # FC's default sseEndpointPath
InstanceIsolation = Literal["SHARED", "SESSION_EXCLUSIVE"]


class SessionAffinityConfig(ApiModel):
    """How sessions are recognised and how long they live (FC's ``SessionAffinityConfig``)."""

    __rules__ = (r.IDLE_NOT_ABOVE_TTL,)

    affinity_header_field_name: HeaderName | None = Field(
        None, json_schema_extra=cel(r.HEADER_NOT_RESERVED),
        description="HEADER_FIELD only: the request header that carries the session id. "
                    "5-40 characters, a letter first, then letters, digits, '-' or '_'; not starting with x-fc-.")
    session_concurrency_per_instance: int = Field(
        20, ge=r.CONCURRENCY_MIN, le=r.CONCURRENCY_MAX,
        description="How many sessions share one instance (SHARED isolation); a full instance makes a new one.")
    session_ttl_in_seconds: int = Field(
        21600, ge=r.TTL_MIN, le=r.TTL_MAX, alias="sessionTTLInSeconds",
        description="Hard lifetime of a session, counted from its creation whatever its activity.")
    session_idle_timeout_in_seconds: int = Field(
        1800, ge=r.IDLE_MIN, le=r.IDLE_MAX,
        description="A session with no request for this long expires; 0 means no idle timeout. Not above the TTL.")
    disable_session_id_reuse: bool = Field(
        False, description="Refuse the id of an expired session for 3 days (until it is deleted).")
    sse_endpoint_path: str | None = Field(
        None, min_length=1, max_length=256, pattern=r.SSE_PATH_PATTERN,
        description="MCP_SSE only: the instance's path of the SSE stream whose first event, endpoint, announces "
                    "the message URL with the session id (its sessionId query parameter). /sse when absent.")


class Scaling(ApiModel):
    __rules__ = (r.WARM_NOT_ABOVE_MAX,)

    max_instances: int = Field(100, ge=1, le=10000, description="Instances never exceed this; sessions wait Pending.")
    warm_instances: int = Field(0, ge=0, le=10000, description="Instances kept ready with no session.")
    scale_in_delay_seconds: int = Field(60, ge=0, le=86400, description="How long an empty instance lives on.")


class IdRange(ApiModel):
    __rules__ = (r.RANGE_ORDERED,)

    min: int = Field(ge=0, le=r.MAX_ID)
    max: int = Field(ge=0, le=r.MAX_ID)

    def __contains__(self, value: int) -> bool:
        return self.min <= value <= self.max


class SessionStoragePolicy(ApiModel):
    """What session storage may use: which claims, which uid/gid (SESSION_EXCLUSIVE only)."""

    allowed_claims: list[Annotated[str, Field(max_length=253, pattern=r.DNS_SUBDOMAIN_PATTERN)]] = Field(
        min_length=1, max_length=64, description="PersistentVolumeClaims (in the session's namespace) sessions may mount.")
    uid_range: IdRange = Field(description="runAsUser of a session must fall in this range.")
    gid_range: IdRange = Field(description="runAsGroup of a session must fall in this range.")
    allow_root_ids: bool = Field(False, description="Allow uid or gid 0 (refused otherwise, even inside the ranges).")
    tenant_init_image: str | None = Field(
        None, max_length=512,
        description="Image that makes the tenant directory owned by the session's uid/gid, mode 0700 "
                    "(needs /bin/sh, chown, chmod). Defaults to the operator's tenant-init image.")


class PodTemplate(ApiModel):
    """A PodTemplateSpec; only ``spec.containers`` is checked here, the rest is the Pod API's."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    metadata: dict[str, Any] | None = Field(None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    spec: PodSpecPart


class PodSpecPart(ApiModel):
    model_config = ApiModel.model_config | {"extra": "allow"}

    containers: list[dict[str, Any]] = Field(min_length=1, description="At least one container; the first serves the port.")


class FunctionSpec(ApiModel):
    __rules__ = (r.HEADER_REQUIRED_FOR_HEADER_FIELD, r.HEADER_ONLY_FOR_HEADER_FIELD, r.SSE_PATH_ONLY_FOR_MCP_SSE,
                 r.STORAGE_ONLY_FOR_EXCLUSIVE)

    template: PodTemplate = Field(description="The instance pod (a PodTemplateSpec).")
    port: int = Field(9000, ge=1, le=65535, description="The HTTP port instances serve.")
    session_affinity: SessionAffinity = Field(
        description="HEADER_FIELD: a header carries the session id; GENERATED_COOKIE: the gateway sets a cookie; "
                    "MCP_STREAMABLE: the Mcp-Session-Id the instance returns to initialize; MCP_SSE: the sessionId "
                    "of the message URL the instance announces on its SSE stream (sseEndpointPath).")
    session_affinity_config: SessionAffinityConfig = Field(
        default_factory=SessionAffinityConfig, json_schema_extra={"default": SessionAffinityConfig().wire()})
    instance_isolation: InstanceIsolation = Field(
        "SHARED", description="SHARED: sessions share instances; SESSION_EXCLUSIVE: one session per instance, "
                              "destroyed with it, and the only mode with session storage.")
    scaling: Scaling = Field(default_factory=Scaling, json_schema_extra={"default": Scaling().wire()})
    session_storage: SessionStoragePolicy | None = Field(None, description="What session storage may use.")

    @property
    def sessions_per_instance(self) -> int:
        if self.instance_isolation == "SESSION_EXCLUSIVE":
            return 1
        return self.session_affinity_config.session_concurrency_per_instance


class FunctionStatus(ApiModel):
    model_config = ApiModel.model_config | {"frozen": False}

    instances: int | None = Field(None, description="Instance pods that exist.")
    ready_instances: int | None = None
    active_sessions: int | None = None
    pending_sessions: int | None = None
    conditions: list[Condition] | None = None
    observed_generation: int | None = None


PodTemplate.model_rebuild()
