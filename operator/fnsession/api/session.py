"""``FunctionSession``: one session, its binding to an instance and its lifecycle.

Everything in ``spec`` but the two timeouts, ``fenced``, ``paused`` and the two auto-pause flags is
immutable (CEL transition rules);
``status`` is written only by the operator, so GitOps tools never see drift in ``spec``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from fnsession.api import rules as r
from fnsession.api.base import ApiModel, cel, checked
from fnsession.api.common import Condition

SessionStatusValue = Literal["Pending", "Active", "Paused", "Expired", "Deleted"]


class Mount(ApiModel):
    claim_name: str = Field(max_length=253, pattern=r.DNS_SUBDOMAIN_PATTERN,
                            description="A PersistentVolumeClaim the Function's sessionStorage allows.")
    sub_path: Annotated[str, checked(r.SUBPATH_RELATIVE)] = Field(
        min_length=1, max_length=1024, json_schema_extra=cel(r.SUBPATH_RELATIVE),
        description="The tenant directory inside the volume: relative, no '..'. Made owned by the session's uid/gid, mode 0700.")
    mount_path: Annotated[str, checked(r.MOUNT_PATH_ABSOLUTE)] = Field(
        min_length=1, max_length=1024, json_schema_extra=cel(r.MOUNT_PATH_ABSOLUTE),
        description="Where the tenant directory appears in the instance.")
    read_only: bool = False


class SessionStorage(ApiModel):
    """Per-session storage under the session's own POSIX identity (SESSION_EXCLUSIVE functions only)."""

    run_as_user: int = Field(ge=0, le=r.MAX_ID, description="The instance runs as this uid; 0 only if the Function allows it.")
    run_as_group: int = Field(ge=0, le=r.MAX_ID, description="The instance runs as this gid; 0 only if the Function allows it.")
    mounts: Annotated[list[Mount], checked(r.MOUNT_PATHS_UNIQUE)] = Field(
        default_factory=list, max_length=16, json_schema_extra=cel(r.MOUNT_PATHS_UNIQUE))


class FunctionSessionSpec(ApiModel):
    __rules__ = (r.IDLE_NOT_ABOVE_TTL, *r.SESSION_IMMUTABLE)

    function_name: str = Field(min_length=1, max_length=253, pattern=r.DNS_SUBDOMAIN_PATTERN,
                               description="The Function (same namespace) this session runs on.")
    qualifier: str = Field("LATEST", min_length=1, max_length=128, pattern=r.QUALIFIER_PATTERN)
    session_id: str | None = Field(
        None, min_length=1, max_length=r.SESSION_ID_MAX, pattern=r.SESSION_ID_PATTERN,
        description="The id clients send; metadata.name when absent. 1-64 characters: letters, digits, '_' and '-', not starting with '-'.")
    session_ttl_in_seconds: int | None = Field(
        None, ge=r.TTL_MIN, le=r.TTL_MAX, alias="sessionTTLInSeconds",
        description="Hard lifetime from creation; the Function's when absent. May be updated.")
    session_idle_timeout_in_seconds: int | None = Field(
        None, ge=r.IDLE_MIN, le=r.IDLE_MAX,
        description="Expire after this long with no request (0: never); the Function's when absent. May be updated.")
    disable_session_id_reuse: bool | None = Field(None, description="The Function's when absent.")
    fenced: bool = Field(
        False, json_schema_extra=cel(r.FENCED_ONE_WAY),
        description="Set to true to fence the session at once (it expires with reason Fenced); cannot be undone.")
    storage: SessionStorage | None = None
    paused: bool = Field(
        False, description="true pauses the session: its instance (or its slot on a shared one) is released, its "
                           "record, id, timeouts and storage are kept; false resumes it on an instance again. "
                           "Changes both ways while the session lives; ignored once it is Expired.")
    enable_auto_pause: bool = Field(
        False, description="The idle timeout pauses the session (status Paused, reason AutoPaused) instead of "
                           "expiring it; the TTL still ends it.")
    enable_auto_resume: bool = Field(
        False, description="A request for the Paused session resumes it and is held until the session is "
                           "routable again; without it such a request gets FC's SessionPaused error.")


class Instance(ApiModel):
    model_config = ApiModel.model_config | {"frozen": False}

    pod_name: str | None = None
    pod_ip: str | None = Field(None, alias="podIP")
    port: int | None = None
    container_id: str | None = None
    node: str | None = None


class FunctionSessionStatus(ApiModel):
    model_config = ApiModel.model_config | {"frozen": False}

    session_status: SessionStatusValue | None = None
    session_id: str | None = None
    session_affinity_type: str | None = None
    created_time: str | None = None
    last_modified_time: str | None = None
    last_activity_time: str | None = None
    expire_time: str | None = None
    instance: Instance | None = None
    conditions: list[Condition] | None = None
    observed_generation: int | None = None
