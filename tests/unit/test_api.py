"""The API models: defaults, the shared table of bad manifests, and the CRDs they generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from fnsession.api import crds, rules
from fnsession.api.function import FunctionSpec
from fnsession.api.session import FunctionSessionSpec
from tests.cases import CREATE_CASES, GOOD_EXCLUSIVE_FUNCTION, GOOD_FUNCTION, GOOD_SESSION, Case

REPO = Path(__file__).resolve().parents[2]
SPECS: dict[str, type[BaseModel]] = {"Function": FunctionSpec, "FunctionSession": FunctionSessionSpec}


def validate(manifest: dict) -> BaseModel:
    # strict JSON mode, as the API server sees it: "yes" is not a boolean, "20" not an integer
    return SPECS[manifest["kind"]].model_validate_json(json.dumps(manifest["spec"]), strict=True)


@pytest.mark.parametrize("manifest", [GOOD_FUNCTION, GOOD_EXCLUSIVE_FUNCTION, GOOD_SESSION], ids=lambda m: m["metadata"]["name"])
def test_good_manifests_are_accepted(manifest: dict) -> None:
    validate(manifest)


def test_function_defaults_are_fcs() -> None:
    spec = FunctionSpec.model_validate({"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}},
                                        "sessionAffinity": "GENERATED_COOKIE"})
    cfg = spec.session_affinity_config
    assert (cfg.session_concurrency_per_instance, cfg.session_ttl_in_seconds, cfg.session_idle_timeout_in_seconds) == (20, 21600, 1800)
    assert cfg.disable_session_id_reuse is False
    assert (spec.instance_isolation, spec.port) == ("SHARED", 9000)
    assert (spec.scaling.max_instances, spec.scaling.warm_instances, spec.scaling.scale_in_delay_seconds) == (100, 0, 60)
    assert spec.sessions_per_instance == 20


def test_exclusive_functions_hold_one_session_per_instance() -> None:
    assert validate(GOOD_EXCLUSIVE_FUNCTION).sessions_per_instance == 1


def test_the_table_has_at_least_50_distinct_bad_manifests() -> None:
    assert len(CREATE_CASES) >= 50
    assert len({c.id for c in CREATE_CASES}) == len(CREATE_CASES)
    assert len({json.dumps(c.manifest(), sort_keys=True) for c in CREATE_CASES}) == len(CREATE_CASES)


@pytest.mark.parametrize("case", CREATE_CASES, ids=lambda c: c.id)
def test_models_refuse_every_bad_manifest(case: Case) -> None:
    with pytest.raises(ValidationError) as err:
        validate(case.manifest())
    if case.rule:
        assert case.rule in str(err.value)


def test_wire_form_round_trips_with_fcs_field_names() -> None:
    wire = validate(GOOD_SESSION).wire()  # type: ignore[attr-defined]
    assert wire["sessionTTLInSeconds"] == 600 and wire["storage"]["mounts"][0]["subPath"] == "tenants/1001"
    assert FunctionSessionSpec.model_validate(wire).wire() == wire


@pytest.mark.parametrize("value,ok", [("x-session-id", True), ("X-FC-foo", False), ("x-fC-a1234", False),
                                       ("xfc-session", True), ("x-fcsession", True)])
def test_reserved_header_prefix_rule(value: str, ok: bool) -> None:
    assert (not rules.HEADER_NOT_RESERVED.violated_by(value)) is ok


@pytest.mark.parametrize("path,ok", [("a", True), ("a/b/c", True), ("a..b", True), ("..a", True), ("a/./b", True),
                                      ("/a", False), ("..", False), ("a/..", False), ("a/../b", False), ("../a", False)])
def test_subpath_rule(path: str, ok: bool) -> None:
    assert (not rules.SUBPATH_RELATIVE.violated_by(path)) is ok


def test_crds_in_the_repo_are_generated_from_the_models() -> None:
    """Fails when crds/ and the models drift: run `make crds` and commit."""
    generated = crds.all_crds()
    on_disk = {p.name for p in (REPO / "crds").glob("*.yaml")}
    assert on_disk == set(generated), "crds/ holds files the models do not generate (or misses some)"
    for name, obj in generated.items():
        assert (REPO / "crds" / name).read_text() == crds.render(obj), f"crds/{name} drifted: run `make crds`"


def test_crds_carry_every_rule_and_keep_kopf_status() -> None:
    text = "".join(crds.render(o) for o in crds.all_crds().values())
    every = [v for v in vars(rules).values() if isinstance(v, rules.Rule)] + list(rules.SESSION_IMMUTABLE)
    for rule in every:
        assert yaml.safe_dump(rule.cel, width=10**6).strip().strip("'\"")[:30] in text or rule.cel in text, rule.cel
    for obj in crds.all_crds().values():
        status = obj["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["properties"]["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
        assert obj["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_structural_schema_has_no_json_schema_leftovers() -> None:
    def walk(node: object) -> None:
        if isinstance(node, dict):
            assert not {"$ref", "$defs", "anyOf", "title"} & set(node), node
            assert node.get("additionalProperties") is None, node
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    for obj in crds.all_crds().values():
        walk(obj["spec"]["versions"][0]["schema"])


def test_the_mcp_example_functions_are_valid_and_say_where_the_sse_stream_is() -> None:
    docs = [d for d in yaml.safe_load_all((REPO / "examples" / "function-mcp.yaml").read_text()) if d]
    specs = {d["metadata"]["name"]: validate(d) for d in docs}
    assert specs["mcp-streamable"].session_affinity == "MCP_STREAMABLE"  # type: ignore[attr-defined]
    assert specs["mcp-sse"].session_affinity_config.sse_endpoint_path == "/mcp/sse"  # type: ignore[attr-defined]
    assert specs["mcp-streamable"].session_affinity_config.sse_endpoint_path is None  # type: ignore[attr-defined]


def test_a_session_may_be_paused_with_the_auto_flags_and_they_default_to_false() -> None:
    plain = FunctionSessionSpec.model_validate({"functionName": "f"})
    assert (plain.paused, plain.enable_auto_pause, plain.enable_auto_resume) == (False, False, False)
    spec = FunctionSessionSpec.model_validate({"functionName": "f", "paused": True, "enableAutoPause": True, "enableAutoResume": True})
    assert spec.wire()["paused"] is True and spec.wire()["enableAutoResume"] is True
