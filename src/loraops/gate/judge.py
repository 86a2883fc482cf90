"""Judging a version again from its stored evaluation (after an expert review, or with new thresholds).

The evaluation of a version is kept on its MLflow run (``evaluation/evaluation.json``: every answer's
scores, the training history, the decision): the gate is a pure function of it, so re-judging costs no
model call and gives the same decision for the same inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraops.errors import StageError
from loraops.evaluate.suite import EvalReport
from loraops.gate.decision import GateDecision, Review, decide, gate_inputs
from loraops.gate.params import GateParams

if TYPE_CHECKING:
    from loraops.registry.tracking import ModelVersionInfo, Registry

EVALUATION_ARTIFACT = "evaluation/evaluation.json"
RUN_TAG = "evaluation.run_id"


@dataclass(frozen=True)
class StoredEvaluation:
    report: EvalReport
    history: list[dict[str, float]]
    decision: dict[str, Any]
    run_id: str


def evaluation_run(version: ModelVersionInfo) -> str:
    run_id = version.tags.get(RUN_TAG) or version.run_id
    if not run_id:
        raise StageError(
            f"version {version.version} has not been evaluated",
            hint=f"run `loraops evaluate {version.version}`",
        )
    return run_id


def load_evaluation(registry: Registry, version: ModelVersionInfo, cache_dir: Path) -> StoredEvaluation:
    """The stored evaluation of ``version`` (downloaded from its run)."""
    run_id = evaluation_run(version)
    try:
        path = registry.download_run_file(run_id, EVALUATION_ARTIFACT, cache_dir / f"v{version.version}")
    except StageError:
        raise StageError(
            f"version {version.version} has no stored evaluation on run {run_id}",
            hint=f"run `loraops evaluate {version.version}`",
        ) from None
    data = json.loads(path.read_text("utf-8"))
    return StoredEvaluation(
        EvalReport.from_json(data["report"]), data.get("history", []), data["gate"], run_id
    )


def rejudge(stored: StoredEvaluation, params: GateParams, review: Review | None) -> GateDecision:
    return decide(gate_inputs(stored.report, stored.history, review), params)


@dataclass(frozen=True)
class TrainingFacts:
    """What the gate and the report need about how a version was trained."""

    history: list[dict[str, float]]
    cost_usd: float
    cost_summary: str | None
    summary: dict[str, str]

    @classmethod
    def of(cls, result: Any) -> TrainingFacts:
        """From a ``train.result.TrainResult`` of this run."""
        return cls(
            history=list(result.history),
            cost_usd=result.cost.usd if result.cost else 0.0,
            cost_summary=result.cost.summary() if result.cost else None,
            summary={**result.run_tags(), "wall time": f"{result.duration_s:.0f} s"},
        )

    @classmethod
    def from_run(cls, registry: Registry, run_id: str | None) -> TrainingFacts:
        """From the MLflow run that trained a registered version (losses logged per step while training).
        A version registered from outside has no such run: no history, no cost."""
        if not run_id:
            return cls([], 0.0, None, {"training": "registered from outside loraops"})
        run = registry.client.get_run(run_id)
        history: list[dict[str, float]] = []
        for key, name in (("train.loss", "loss"), ("train.eval_loss", "eval_loss")):
            epochs = dict(registry.metric_history(run_id, "train.epoch"))
            for step, value in registry.metric_history(run_id, key):
                history.append({name: value, "epoch": epochs.get(step, float(step))})
        history.sort(key=lambda h: h["epoch"])
        tags = {k: v for k, v in run.data.tags.items() if k.startswith("train.")}
        return cls(history, float(run.data.metrics.get("cost.usd", 0.0)), tags.get("train.cost"), tags)
