"""params.yaml `evaluate:` section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EvalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_metric: Literal["json_fields", "exact_match"] = Field(
        "json_fields",
        description="json_fields: answer parsed as JSON, scored as the share of records with every field "
        "right; exact_match: whole answer equals the reference (whitespace-trimmed).",
    )
    max_tokens: int = Field(48, ge=1, description="Generation budget per answer.")
    max_test_examples: int | None = Field(None, ge=1, description="Cap on test examples (None: all).")
    general_per_skill: int = Field(40, ge=5, description="General-suite examples per skill (forgetting).")
    concurrency: int = Field(8, ge=1, description="Requests in flight against the server.")
    request_timeout_s: float = Field(60.0, gt=0, description="Timeout of one request.")
