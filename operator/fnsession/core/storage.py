"""What a session's storage may use, judged against its Function's policy: the checks CEL cannot
make because they need the Function (sessionStorage against spec.storage). Each problem names the
field and the rule."""

from __future__ import annotations

from fnsession.api.function import FunctionSpec
from fnsession.api.session import SessionStorage


def storage_violations(function_name: str, function: FunctionSpec, storage: SessionStorage | None) -> list[str]:
    if storage is None:
        return []
    if function.instance_isolation != "SESSION_EXCLUSIVE":
        return [f"spec.storage: session storage needs a Function with instanceIsolation SESSION_EXCLUSIVE; "
                f"Function {function_name} is {function.instance_isolation}"]
    policy = function.session_storage
    if policy is None:
        return [f"spec.storage: Function {function_name} has no spec.sessionStorage, so its sessions may mount nothing"]
    problems = []
    for field, value, allowed in (("runAsUser", storage.run_as_user, policy.uid_range),
                                  ("runAsGroup", storage.run_as_group, policy.gid_range)):
        if value == 0 and not policy.allow_root_ids:
            problems.append(f"spec.storage.{field}: 0 (root) is refused unless Function {function_name} "
                            f"sets sessionStorage.allowRootIds")
        elif value not in allowed:
            problems.append(f"spec.storage.{field}: {value} is outside Function {function_name}'s "
                            f"sessionStorage.{'uidRange' if field == 'runAsUser' else 'gidRange'} "
                            f"{allowed.min}-{allowed.max}")
    for i, mount in enumerate(storage.mounts):
        if mount.claim_name not in policy.allowed_claims:
            problems.append(f"spec.storage.mounts[{i}].claimName: {mount.claim_name!r} is not in Function "
                            f"{function_name}'s sessionStorage.allowedClaims {policy.allowed_claims}")
    return problems
