"""FC's errors: HTTP status, ``Code`` and the message FC sends for each error of its session API, as
the JSON object FC's SDK reads: ``{"Code", "Message", "RequestId"}``.

The SDK raises ClientException for 4xx and ServerException for 5xx and keeps ``Code`` as
``e.code``; a body that is not a JSON object loses the status code (the SDK raises without it), so every
error leaves the gateway through :meth:`FCError.body`.
"""

from __future__ import annotations

import json

from fnsession.api.rules import SESSION_ID_MAX, SESSION_ID_PATTERN


class FCError(Exception):
    """An error as FC answers it: HTTP ``status``, ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after_ms = retry_after_ms  # sent as x-acs-retry-after: FC's SDK raises ThrottlingException

    def headers(self, request_id: str) -> dict[str, str]:
        out = {"x-fc-request-id": request_id}
        if self.retry_after_ms is not None:
            out["x-acs-retry-after"] = str(self.retry_after_ms)
        return out

    def body(self, request_id: str) -> bytes:
        return json.dumps({"Code": self.code, "Message": self.message, "RequestId": request_id}).encode()


# --- the session API's errors, messages as FC words them ----------------------------------------

def no_session_affinity() -> FCError:
    return FCError(400, "InvalidArgument", "function has no session affinity config")


def unsupported_affinity() -> FCError:
    return FCError(400, "InvalidArgument",
                   "the sessionAffinity of function is invalid, only supports GENERATED_COOKIE and HEADER_FIELD")


def storage_needs_exclusive() -> FCError:
    return FCError(400, "InvalidArgument", "session storage mounts are only supported for session exclusive function")


def internal() -> FCError:
    return FCError(500, "InternalError", "an internal error has occurred. Please retry")


def session_exists(session_id: str) -> FCError:
    return FCError(400, "SessionAlreadyExists", f"sessionId {session_id} already exists")


def session_id_too_long(session_id: str) -> FCError:
    return FCError(400, "InvalidArgument",
                   f"SessionID exceeds the maximum allowed length (max: {SESSION_ID_MAX}, actual: '{len(session_id)}')")


def session_id_invalid() -> FCError:
    return FCError(400, "InvalidArgument", f"The provided sessionID is invalid (allowed:'{SESSION_ID_PATTERN}')")


def session_not_found(session_id: str) -> FCError:
    return FCError(404, "SessionNotFound",
                   f"session {session_id} does not exist, deleted by the user or expired and removed by the system")


# --- pause and resume ----------------------------------------------------------------------------------

def session_paused(session_id: str) -> FCError:
    return FCError(409, "SessionPaused",
                   f"session {session_id} is Paused and does not accept invocations: resume it (ResumeSession) "
                   f"or create it with enableAutoResume")


def session_not_active(session_id: str, state: str) -> FCError:
    return FCError(400, "InvalidArgument", f"session {session_id} is {state}: only an Active session can be paused")


def session_not_paused(session_id: str, state: str) -> FCError:
    return FCError(400, "InvalidArgument", f"session {session_id} is {state}: only a Paused session can be resumed")


def memory_pause_unsupported() -> FCError:
    return FCError(400, "InvalidArgument",
                   "fileSystemOnly=false (saving the instance's memory as well) is not supported: fnsession pauses "
                   "by keeping the session's file system (its storage mounts) and releasing the instance; "
                   "leave fileSystemOnly out or set it to true")


# --- authentication ----------------------------------------------------------------------------------

def unauthenticated(why: str) -> FCError:
    return FCError(401, "InvalidAccessKeyId.NotFound" if why.startswith("access key") else "Unauthorized", why)


def signature_mismatch() -> FCError:
    return FCError(401, "SignatureDoesNotMatch",
                   "the request signature does not match the signature computed with the access key's secret")


def instance_busy(limit: int) -> FCError:
    return FCError(429, "ResourceThrottled",
                   f"the session's instance already has {limit} requests in flight (FC's limit per instance); "
                   f"retry after the x-acs-retry-after milliseconds", retry_after_ms=1000)


def forbidden(why: str) -> FCError:
    return FCError(403, "AccessDenied", why)


# --- the data plane's own refusals (http.py): FC's error object, the rule named ---------------------

def repeated_header(name: str) -> FCError:
    if name == "cookie":
        return FCError(400, "InvalidArgument", "the Cookie header names the session cookie more than once")
    return FCError(400, "InvalidArgument", f"the header {name} is repeated: a request may carry it once")


def bad_request(why: str) -> FCError:
    return FCError(400, "InvalidArgument", why)


def head_too_large(limit: int) -> FCError:
    return FCError(431, "RequestHeaderFieldsTooLarge", f"the request head is larger than {limit} bytes")


def version_not_supported(version: str) -> FCError:
    said = f"HTTP/{version}" if version else "the request's HTTP version"
    return FCError(505, "HTTPVersionNotSupported", f"{said} is not supported: HTTP/1.0 and HTTP/1.1 are")


def request_timeout(what: str, seconds: float) -> FCError:
    return FCError(408, "RequestTimeout", f"the {what} did not arrive within {seconds:g} seconds")


def too_many_connections(limit: int) -> FCError:
    return FCError(503, "ServiceUnavailable", f"the gateway already holds {limit} client connections "
                                              f"(--max-connections); retry later", retry_after_ms=1000)


def function_timeout(address: str, seconds: float) -> FCError:
    return FCError(504, "FunctionTimeout", f"the session's instance {address} did not answer within {seconds:g} seconds")


def bad_answer(address: str, why: str) -> FCError:
    return FCError(502, "FunctionNotReachable", f"the session's instance {address}: {why}")
