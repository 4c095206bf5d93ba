"""FC's session model on the wire, mapped to and from FunctionSession objects (pure functions).

- ``CreateSessionInput`` → a FunctionSession spec; FC's ``nasConfig`` maps to session storage:
  ``serverAddr`` ``<claimName>:/<subPath>`` names the PersistentVolumeClaim and the tenant
  directory, ``mountDir`` is where it appears, ``userId``/``groupId`` are the POSIX identity.
- a FunctionSession → FC's ``Session`` JSON (what GetSession, ListSessions, CreateSession, UpdateSession,
  PauseSession and ResumeSession return), ``enableAutoPause`` / ``enableAutoResume`` included.
- the session id of a request: the affinity header (HEADER_FIELD) or the ``x-fc-cookie-session-id``
  cookie (GENERATED_COOKIE), with FC's 400 for an invalid id; ids the gateway makes are 32 hex
  characters, as FC's.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

from fnsession.api.rules import IDLE_MAX, IDLE_MIN, SESSION_ID_MAX, SESSION_ID_PATTERN, TTL_MAX, TTL_MIN
from fnsession.gateway import errors
from fnsession.gateway.errors import FCError

COOKIE = "x-fc-cookie-session-id"
MCP_ANNOTATION = "fnsession.dev/mcp-session-id"  # the MCP id of a FunctionSession the gateway opened (mcp.py)
LABEL_SESSION_ID_HASH = "fnsession.dev/session-id-hash"
_ID = re.compile(SESSION_ID_PATTERN)


def new_session_id() -> str:
    return secrets.token_hex(16)


def check_session_id(session_id: str) -> str:
    """FC's rules for a client's session id, with FC's messages."""
    if not isinstance(session_id, str):
        raise errors.session_id_invalid()
    if len(session_id) > SESSION_ID_MAX:
        raise errors.session_id_too_long(session_id)
    if not _ID.fullmatch(session_id):  # fullmatch: "$" alone would let a trailing newline through
        raise errors.session_id_invalid()
    return session_id


def session_id_hash(session_id: str) -> str:
    """A label value for an id (ids may hold characters labels cannot)."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:40]


def object_name(function: str, session_id: str, earlier: Iterable[str] | None = None) -> str:
    """A FunctionSession name for a session the gateway creates: unique per lifecycle, since an
    expired record with the same id may still exist. Given the names of the id's ``earlier`` records,
    the name follows from them: two gateways creating one id at the same moment make the same name,
    and the API server takes one create (the other gets 409); else it is random."""
    if earlier is None:
        suffix = secrets.token_hex(3)
    else:
        suffix = hashlib.sha256("\n".join(sorted(earlier)).encode()).hexdigest()[:6]
    return f"{function[:200]}-{session_id_hash(session_id)[:10]}-{suffix}"


def _int_field(body: Mapping[str, Any], field: str, low: int, high: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FCError(400, "InvalidArgument", f"{field} must be an integer from {low} to {high}, got {value!r}")
    return value


def nas_to_storage(nas: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """FC's nasConfig as session storage; an empty mountPoints list means no storage (the SDK sends one)."""
    if not nas or not nas.get("mountPoints"):
        return None
    mounts = []
    for i, point in enumerate(nas["mountPoints"]):
        server, mount_dir = point.get("serverAddr") or "", point.get("mountDir")
        claim, sep, path = server.partition(":")
        if not sep or not claim or not mount_dir:
            raise FCError(400, "InvalidArgument", f"nasConfig.mountPoints[{i}]: serverAddr must be '<claimName>:/<subPath>' "
                                                  f"and mountDir a path, got serverAddr={server!r}, mountDir={mount_dir!r}")
        mounts.append({"claimName": claim, "subPath": path.strip("/") or ".", "mountPath": mount_dir})
    for field in ("userId", "groupId"):
        if not isinstance(nas.get(field), int) or isinstance(nas.get(field), bool):
            raise FCError(400, "InvalidArgument", f"nasConfig.{field} must be an integer (the tenant's POSIX id)")
    return {"runAsUser": nas["userId"], "runAsGroup": nas["groupId"], "mounts": mounts}


def storage_to_nas(storage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not storage:
        return None
    return {"userId": storage.get("runAsUser"), "groupId": storage.get("runAsGroup"), "mountPoints": [
        {"serverAddr": f"{m['claimName']}:/{m['subPath']}", "mountDir": m["mountPath"], "enableTLS": False}
        for m in storage.get("mounts", [])]}


def _bool_field(body: Mapping[str, Any], field: str) -> bool | None:
    value = body.get(field)
    if value is not None and not isinstance(value, bool):
        raise FCError(400, "InvalidArgument", f"{field} must be a boolean, got {value!r}")
    return value


AUTO_PAUSE_FIELDS = {"enableAutoPause": "enableAutoPause", "enableAutoResume": "enableAutoResume"}


def auto_pause_flags(body: Mapping[str, Any]) -> dict[str, bool]:
    """``enableAutoPause`` / ``enableAutoResume`` of a CreateSessionInput or UpdateSessionInput, as spec fields."""
    out = {}
    for field, spec_field in AUTO_PAUSE_FIELDS.items():
        value = _bool_field(body, field)
        if value is not None:
            out[spec_field] = value
    return out


def file_system_only(raw: str | None) -> bool:
    """PauseSession's and ResumeSession's ``fileSystemOnly`` query parameter (FC's SDK sends Python's
    ``True``/``False``); absent means true: fnsession keeps the file system, never the memory."""
    if raw is None or raw == "":
        return True
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise FCError(400, "InvalidArgument", f"fileSystemOnly must be true or false, got {raw!r}")


def create_input_to_spec(function: str, qualifier: str | None, body: Mapping[str, Any] | None) -> dict[str, Any]:
    """``CreateSessionInput`` (may be empty) → FunctionSession spec; FC's 400 for what it refuses."""
    body = body or {}
    session_id = body.get("sessionId")
    spec: dict[str, Any] = {"functionName": function, "qualifier": qualifier or "LATEST",
                            "sessionId": check_session_id(session_id) if session_id is not None else new_session_id()}
    ttl = _int_field(body, "sessionTTLInSeconds", TTL_MIN, TTL_MAX)
    idle = _int_field(body, "sessionIdleTimeoutInSeconds", IDLE_MIN, IDLE_MAX)
    if ttl is not None and idle is not None and idle > ttl:
        raise FCError(400, "InvalidArgument", "sessionIdleTimeoutInSeconds must not exceed sessionTTLInSeconds")
    if ttl is not None:
        spec["sessionTTLInSeconds"] = ttl
    if idle is not None:
        spec["sessionIdleTimeoutInSeconds"] = idle
    if body.get("disableSessionIdReuse") is not None:
        spec["disableSessionIdReuse"] = bool(body["disableSessionIdReuse"])
    spec.update(auto_pause_flags(body))
    storage = nas_to_storage(body.get("nasConfig"))
    if storage is not None:
        spec["storage"] = storage
    return spec


def session_json(obj: Mapping[str, Any], function_defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A FunctionSession as FC's ``Session`` JSON. ``function_defaults``: the Function's
    ``sessionAffinityConfig``, for timeouts the session leaves to it."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    defaults = function_defaults or {}
    state = status.get("sessionStatus")
    out: dict[str, Any] = {
        # an MCP session: the id its instance named (mcp.py), else FC's own
        "sessionId": ((obj["metadata"].get("annotations") or {}).get(MCP_ANNOTATION) or status.get("sessionId")
                      or spec.get("sessionId") or obj["metadata"]["name"]),
        "functionName": spec.get("functionName"),
        "qualifier": spec.get("qualifier", "LATEST"),
        "sessionAffinityType": status.get("sessionAffinityType"),
        "sessionTTLInSeconds": spec.get("sessionTTLInSeconds", defaults.get("sessionTTLInSeconds")),
        "sessionIdleTimeoutInSeconds": spec.get("sessionIdleTimeoutInSeconds", defaults.get("sessionIdleTimeoutInSeconds")),
        "disableSessionIdReuse": spec.get("disableSessionIdReuse", defaults.get("disableSessionIdReuse", False)),
        "createdTime": status.get("createdTime"),
        "lastModifiedTime": status.get("lastModifiedTime"),
        # FC knows Active, Paused and Expired; a session not yet on a Ready instance is not FC-visible as such
        "sessionStatus": state,
        "containerId": (status.get("instance") or {}).get("containerId"),
        "enableAutoPause": bool(spec.get("enableAutoPause", False)),
        "enableAutoResume": bool(spec.get("enableAutoResume", False)),
    }
    nas = storage_to_nas(spec.get("storage"))
    if nas is not None:
        out["nasConfig"] = nas
    return {k: v for k, v in out.items() if v is not None}


def request_session_id(affinity: str, header_name: str | None, headers: Mapping[str, str]) -> str | None:
    """The session id a request names (None: none given, the gateway makes one). ``headers``: lower-case keys."""
    if affinity == "HEADER_FIELD":
        if header_name is None:
            raise errors.no_session_affinity()
        value = headers.get(header_name.lower())
        return None if value is None else check_session_id(value.strip())
    if affinity == "GENERATED_COOKIE":
        return cookie_session_id(headers.get("cookie"))
    raise errors.unsupported_affinity()


def cookie_session_id(cookie_header: str | None) -> str | None:
    """The session cookie's id, if well-formed (clients never choose cookie ids: a malformed one is
    treated as absent, so the request gets a new server-chosen session)."""
    if not cookie_header:
        return None
    try:
        jar = SimpleCookie(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    if morsel is None or not morsel.value:
        return None
    value = morsel.value
    return value if len(value) <= SESSION_ID_MAX and _ID.fullmatch(value) else None


def set_cookie(session_id: str, ttl_seconds: int) -> str:
    return f"{COOKIE}={session_id}; Max-Age={ttl_seconds}; Path=/; HttpOnly"


def query_param(raw_query: str, name: str) -> str | None:
    """One parameter of a raw query string (the first, decoded), or None."""
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        if key == name:
            return value
    return None
