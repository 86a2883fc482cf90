"""params.yaml `gate:` section: the thresholds of the promotion decision."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_task_score: float = Field(0.7, ge=0, le=1, description="Candidate task score must reach this.")
    min_gain_over_base: float = Field(
        0.2, ge=-1, le=1, description="Candidate minus base task score must reach this."
    )
    max_skill_drop: float = Field(
        0.15, ge=0, le=1, description="Largest allowed drop of any general skill vs the base (forgetting)."
    )
    max_mean_drop: float = Field(
        0.08, ge=0, le=1, description="Largest allowed drop of the mean general score vs the base."
    )
    champion_margin: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="Candidate must beat the current champion's task score by at least this "
        "(negative: tolerate a small loss).",
    )
