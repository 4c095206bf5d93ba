"""The base of every API model: camelCase on the wire, unknown fields refused, rules from ``rules``.

Field rules are attached with :func:`checked`, object rules by listing them in ``__rules__``; both
reach the CRD through the JSON schema (``x-kubernetes-validations``) and run in Python on validation.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel

from fnsession.api.rules import Rule

CEL_KEY = "x-kubernetes-validations"


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    __rules__: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema: dict[str, Any] = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        rules = [r.as_cel() for r in cls.__dict__.get("__rules__", ())]
        if rules:
            target[CEL_KEY] = rules
        return schema

    @model_validator(mode="after")
    def _object_rules(self) -> ApiModel:
        rules = type(self).__dict__.get("__rules__", ())
        if rules:
            wire = self.model_dump(by_alias=True, exclude_none=True)
            for rule in rules:
                if rule.violated_by(wire):
                    raise ValueError(rule.message)
        return self

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def checked(rule: Rule) -> AfterValidator:
    """An ``Annotated`` marker running ``rule`` on one field's value (its CEL goes in the field's schema)."""

    def check(value: Any) -> Any:
        if value is not None and rule.violated_by(_wire(value)):
            raise ValueError(rule.message)
        return value

    return AfterValidator(check)


def _wire(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True)
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


def cel(*rules: Rule) -> dict[str, Any]:
    """``json_schema_extra`` for a field carrying ``rules``."""
    return {CEL_KEY: [r.as_cel() for r in rules]}
