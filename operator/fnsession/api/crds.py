"""CustomResourceDefinitions generated from the models: the one source of truth for the schema.

``python -m fnsession.api.crds [DIR]`` (``make crds``) writes ``crds/``; a unit test fails when the
files and the models drift. The generator turns pydantic's JSON schema into a Kubernetes structural
schema: references inlined, optionals unwrapped, free-form objects marked
``x-kubernetes-preserve-unknown-fields``, CEL rules kept, and ``status.kopf`` preserved (kopf keeps
its progress there; a strict status schema would make the API server drop it and kopf re-handle the
object forever).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from fnsession.api.function import FunctionSpec, FunctionStatus
from fnsession.api.names import FUNCTION, GROUP, SESSION, VERSION, Kind
from fnsession.api.session import FunctionSessionSpec, FunctionSessionStatus

HEADER = "# Generated from operator/fnsession/api by `make crds` (python -m fnsession.api.crds). Do not edit.\n"
DROP = {"title", "additionalProperties", "$defs"}


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Kubernetes structural schema from a pydantic JSON schema (see module docstring)."""
    defs = schema.get("$defs", {}) if defs is None else defs
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)
    if "anyOf" in schema:
        variants = [v for v in schema["anyOf"] if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {schema}")
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if rest.get("default", 0) is None:
            del rest["default"]
        merged = structural(variants[0], defs)
        merged_rules = merged.get("x-kubernetes-validations", []) + rest.pop("x-kubernetes-validations", [])
        merged.update(rest)
        if merged_rules:
            merged["x-kubernetes-validations"] = merged_rules
        return structural(merged, defs)

    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in DROP or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {name: structural(prop, defs) for name, prop in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        else:
            out[key] = value
    if schema.get("type") == "object" and schema.get("additionalProperties") not in (None, False):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def root_schema(spec: type[BaseModel], status: type[BaseModel]) -> dict[str, Any]:
    spec_schema = structural(spec.model_json_schema(by_alias=True, mode="validation"))
    status_schema = structural(status.model_json_schema(by_alias=True, mode="validation"))
    status_schema.setdefault("properties", {})["kopf"] = {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        "description": "The operator's own progress records (kopf).",
    }
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }


def column(name: str, path: str, type_: str = "string", priority: int = 0, description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        out["priority"] = priority
    if description:
        out["description"] = description
    return out


COLUMNS: dict[str, list[dict[str, Any]]] = {
    FUNCTION.kind: [
        column("Affinity", ".spec.sessionAffinity"),
        column("Isolation", ".spec.instanceIsolation"),
        column("Instances", ".status.instances", "integer"),
        column("Ready", ".status.readyInstances", "integer"),
        column("Sessions", ".status.activeSessions", "integer", description="Active sessions"),
        column("Pending", ".status.pendingSessions", "integer", priority=1),
        column("Age", ".metadata.creationTimestamp", "date"),
    ],
    SESSION.kind: [
        column("Status", ".status.sessionStatus"),
        column("Function", ".spec.functionName"),
        column("Session-Id", ".status.sessionId", priority=1),
        column("Instance", ".status.instance.podName"),
        # a string: kubectl shows future dates in "date" columns as <invalid>
        column("Expires", ".status.expireTime", description="When the session expires (TTL or idle timeout)"),
        column("Age", ".metadata.creationTimestamp", "date"),
    ],
}


def crd(kind: Kind, spec: type[BaseModel], status: type[BaseModel]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "fnsession"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind, "listKind": f"{kind.kind}List", "plural": kind.plural,
                "singular": kind.kind.lower(), "shortNames": [kind.short], "categories": ["fnsession"],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": COLUMNS[kind.kind],
                "schema": {"openAPIV3Schema": root_schema(spec, status)},
            }],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD object."""
    return {
        f"{GROUP}_{FUNCTION.plural}.yaml": crd(FUNCTION, FunctionSpec, FunctionStatus),
        f"{GROUP}_{SESSION.plural}.yaml": crd(SESSION, FunctionSessionSpec, FunctionSessionStatus),
    }


def render(obj: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(obj, sort_keys=False, width=120)


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, obj in all_crds().items():
        path = directory / name
        path.write_text(render(obj))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for path in write(Path(args[0] if args else "crds")):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
