"""params.yaml `data:` section: where the raw data is, how it is split, reviewed, judged and versioned."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Level = Literal["error", "warning", "ignore"]


class SplitParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    val_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Share of examples in the validation split."
    )
    test_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Share of examples in the test split."
    )
    salt: str = Field(
        default="loraops",
        description="Mixed into the split hash. Changing it reshuffles every example: keep it fixed.",
    )

    @model_validator(mode="after")
    def _check(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave room for a training split (< 1)")
        return self


class ReviewParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    all_below: int = Field(
        default=1000, ge=0, description="Datasets with fewer examples than this are reviewed in full."
    )
    fraction: float = Field(
        default=0.15,
        gt=0.0,
        le=1.0,
        description="Share of examples sampled for review in larger datasets (10-20%).",
    )
    max_examples: int | None = Field(
        default=None, ge=1, description="Upper bound on the review sample (unset: no bound)."
    )
    salt: str = Field(
        default="review", description="Mixed into the sampling hash; the sample is deterministic."
    )


class Threshold(BaseModel):
    """A quality finding is an error when its share of examples exceeds ``error_above``, else a warning."""

    model_config = ConfigDict(extra="forbid")

    error_above: float = Field(
        description="Share of examples (0-1) above which the finding is an error; 0: any occurrence."
    )
    level: Level = Field(
        default="warning",
        description="What the finding is at or below the threshold: warning, error or ignore.",
    )


class PolicyParams(BaseModel):
    """Which findings stop `prepare` (errors) and which are only reported (warnings)."""

    model_config = ConfigDict(extra="forbid")

    too_long: Threshold = Field(
        default_factory=lambda: Threshold(error_above=0.0),
        description="Examples longer than train.sequence_len (Axolotl drops them silently). Allowed ones "
        "are left out of the prepared splits.",
    )
    exact_duplicates: Threshold = Field(
        default_factory=lambda: Threshold(error_above=0.2),
        description="Byte-identical examples (after the first occurrence).",
    )
    near_duplicates: Threshold = Field(
        default_factory=lambda: Threshold(error_above=0.3),
        description="Examples identical after normalisation (case, punctuation, whitespace).",
    )
    contradictions: Threshold = Field(
        default_factory=lambda: Threshold(error_above=0.05),
        description="Examples sharing a normalised input with a different normalised output.",
    )
    drop_exact_duplicates: bool = Field(
        default=True, description="Keep only the first of byte-identical examples in the prepared splits."
    )
    unknown_fields: Level = Field(default="warning", description="Fields the format does not define.")
    blank_lines: Level = Field(default="warning", description="Empty lines between records.")
    replacement_characters: Level = Field(
        default="warning", description="U+FFFD in a text, the trace of an earlier failed decoding."
    )
    min_examples: int = Field(default=1, ge=1, description="Fewer valid examples than this is an error.")
    size_guidance: Level = Field(
        default="warning", description="Dataset size outside the range advised for data.task."
    )
    min_label_share: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="A value of a categorical field rarer than this share is reported as imbalance.",
    )
    label_imbalance: Level = Field(default="warning", description="Level of the label-imbalance finding.")
    max_line_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Longest accepted line; bounds memory on broken files."
    )


class RemoteParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="local", pattern=r"^[A-Za-z0-9_-]+$", description="DVC remote name.")
    url: str = Field(
        default=".loraops/dvc-remote",
        description="A directory (relative to the workspace, or absolute) or s3://bucket/prefix.",
    )
    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, moto, ...); unset: AWS S3."
    )

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")


class DataParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    raw: str = Field(
        default="data/raw/tickets.jsonl", description="Raw JSONL dataset, relative to the workspace."
    )
    demo_tickets: int = Field(
        default=800,
        ge=20,
        description="Tickets in the generated demo dataset (made when `raw` is the default and missing).",
    )
    prepared_dir: str = Field(
        default="data/prepared",
        description="Where train/val/test.jsonl and the reports are written (DVC-tracked).",
    )
    format: Literal["auto", "alpaca", "chat"] = Field(
        default="auto",
        description="alpaca: instruction/input/output (Axolotl type alpaca); chat: messages with roles "
        "system/user/assistant (Axolotl type chat_template); auto: detected from the records.",
    )
    task: Literal["style", "domain", "complex"] = Field(
        default="style",
        description="Kind of task, for the size guidance: style 100-500, domain 1k-10k, complex 10k-100k.",
    )
    split: SplitParams = Field(default_factory=SplitParams, description="Train/val/test split.")
    review: ReviewParams = Field(default_factory=ReviewParams, description="Sample for domain experts.")
    policy: PolicyParams = Field(
        default_factory=PolicyParams, description="Which findings are errors and which are warnings."
    )
    remote: RemoteParams = Field(default_factory=RemoteParams, description="DVC remote of the prepared data.")
