"""params.yaml `gate:` section: the thresholds of the promotion decision, judged on interval bounds."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OverfittingParams(BaseModel):
    """Signs that the adapter learned the training split rather than the task."""

    model_config = ConfigDict(extra="forbid")

    max_train_val_gap: float = Field(
        1.0, ge=0, description="Largest final validation loss minus final training loss."
    )
    max_val_loss_rise: float = Field(
        0.05,
        ge=0,
        description="Largest rise of the last validation loss above its best, relative (0.05 = 5%).",
    )
    max_repetition: float = Field(
        0.2, ge=0, le=1, description="Largest mean share of repeated word 3-grams in the candidate's answers."
    )
    action: Literal["warn", "fail"] = Field(
        "warn", description="warn: shown in the decision, does not block it; fail: blocks the promotion."
    )


class GateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_task_score: float = Field(0.7, ge=0, le=1, description="Candidate task score must reach this.")
    min_gain_over_base: float = Field(
        0.2,
        ge=-1,
        le=1,
        description="The lower bound of the paired difference candidate - base must reach this.",
    )
    non_inferiority_margin: float = Field(
        0.15,
        ge=0,
        le=1,
        description="Against the current champion: the lower bound of candidate - champion must be at least "
        "-margin (the candidate may not be worse by more than this). At ~70 test examples smaller "
        "margins make an equally good retrain fail too often (tests/test_gate_simulation.py).",
    )
    min_gain_over_rag: float | None = Field(
        None, ge=-1, le=1, description="If set: the lower bound of candidate - RAG baseline must reach this."
    )
    max_skill_drop: float = Field(
        0.15, ge=0, le=1, description="Forgetting: the upper bound of any general task's drop vs the base."
    )
    max_mean_drop: float = Field(
        0.08, ge=0, le=1, description="Forgetting: the upper bound of the overall general drop vs the base."
    )
    overfitting: OverfittingParams = Field(default_factory=OverfittingParams)
    require_review: bool = Field(
        False, description="Promote only after experts reviewed a sample (`loraops review export/import`)."
    )
    min_review_approval: float = Field(
        0.8, ge=0, le=1, description="With require_review: the share of reviewed answers approved."
    )
    auto_promote: bool = Field(
        True,
        description="true: a pass moves the champion alias (served under the stable name); false: the "
        "challenger alias, for an engineer to promote in the MLflow UI.",
    )
