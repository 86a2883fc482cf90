"""params.yaml `evaluate:` section: what the candidate is measured on, against what, how surely."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FormatParams(BaseModel):
    """What a well-formed answer looks like (the `format` metric): a JSON Schema or a regex."""

    model_config = ConfigDict(extra="forbid")

    json_schema: dict[str, Any] | None = Field(
        None,
        description="JSON Schema the JSON object in the answer must satisfy (jsonschema, draft 2020-12).",
    )
    regex: str | None = Field(None, description="Regular expression the whole (trimmed) answer must match.")

    @model_validator(mode="after")
    def _check(self) -> FormatParams:
        from loraops.evaluate.metrics import FormatCheck

        try:
            FormatCheck(self.json_schema, self.regex)
        except Exception as exc:
            raise ValueError(f"invalid format check: {str(exc).splitlines()[0]}") from None
        return self


class ForgettingParams(BaseModel):
    """General capability before/after, measured with lm-evaluation-harness through the server."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] | None = Field(
        None,
        description="lm-eval tasks or groups. Unset with the built base model: its general suite "
        "(loraops_general). For a real instruct model offline: [loraops_instruct] (shipped, selected with "
        "SmolLM2-135M-Instruct; evaluate/instruct_suite.py builds it for another model). With internet, "
        "standard tasks, e.g. [arc_easy, hellaswag].",
    )
    limit: int | None = Field(None, ge=1, description="Examples per task (lm-eval --limit); unset: all.")
    include_path: str | None = Field(
        None,
        description="A directory of your own lm-eval task YAMLs (unset for a group loraops ships).",
    )
    api: Literal["completions", "chat"] = Field(
        "completions",
        description="completions: prompts as the tasks write them (lm-eval's local-completions). chat: "
        "each question as a user turn through /v1/chat/completions, in the model's chat template.",
    )


class EvalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_metric: Literal["json_fields", "exact_match"] = Field(
        "json_fields",
        description="json_fields: answer parsed as JSON, scored as the share of records with every field "
        "right; exact_match: whole answer equals the reference (whitespace-trimmed).",
    )
    format: FormatParams | None = Field(None, description="Format compliance check (the `format` metric).")
    max_tokens: int = Field(48, ge=1, description="Generation budget per answer.")
    max_test_examples: int | None = Field(None, ge=1, description="Cap on test examples (None: all).")
    general_per_skill: int = Field(
        100,
        ge=5,
        description="General-suite examples per skill (forgetting): at 100 the gate tells 2% from 15%.",
    )
    forgetting: ForgettingParams = Field(default_factory=ForgettingParams)
    rag_k: int = Field(
        3,
        ge=0,
        le=16,
        description="Training examples retrieved (BM25) into the RAG baseline's prompt; 0: no RAG.",
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Level of the bootstrap intervals.")
    bootstrap_resamples: int = Field(2000, ge=200, description="Resamples of each bootstrap interval.")
    concurrency: int = Field(8, ge=1, description="Requests in flight against the server.")
    request_timeout_s: float = Field(60.0, gt=0, description="Timeout of one request.")
    samples_in_report: int = Field(10, ge=0, description="Answers shown side by side in the report.")
