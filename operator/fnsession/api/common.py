"""Types both kinds share: Kubernetes conditions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fnsession.api.base import ApiModel


class Condition(ApiModel):
    """A condition as the Kubernetes API conventions define it (metav1.Condition)."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=1024)
    message: str = Field("", max_length=32768)
    last_transition_time: str
    observed_generation: int | None = Field(None, ge=0)
