"""A decision lands on the MLflow model version (real server): tags, description, challenger alias,
stored evaluation re-judged with a review."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from loraops.config import Params
from loraops.evaluate.suite import Bootstrap, EvalReport, GeneralEvaluation, ModelAnswers, TaskEvaluation
from loraops.gate.decision import Review, decide, gate_inputs
from loraops.gate.judge import RUN_TAG, load_evaluation, rejudge
from loraops.gate.params import GateParams
from loraops.gate.promote import apply_decision
from loraops.gate.record import record_decision
from test_registry import make_adapter, new_registry

if TYPE_CHECKING:
    from fixtures_mlflow import MlflowServer

pytest_plugins = ["fixtures_mlflow"]
pytestmark = pytest.mark.e2e  # a real MLflow server


def _report(candidate_right: int, n: int = 40) -> EvalReport:
    def run(role: str, right: int) -> ModelAnswers:
        return ModelAnswers(
            role, role, ["x"] * n, [{"task": float(i < right), "repetition": 0.0} for i in range(n)]
        )

    task = TaskEvaluation(
        ["q"] * n, ["r"] * n, {"base": run("base", 0), "candidate": run("candidate", candidate_right)}
    )
    general = GeneralEvaluation({"skill": [1.0] * n}, {"skill": [1.0] * n}, Bootstrap())
    return EvalReport(task, general)


def test_a_pass_without_auto_promote_sets_the_challenger_and_the_version_says_why(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    registry = new_registry(mlflow_server)
    with registry.run(run_name="train") as run:
        run.log_artifacts(make_adapter(tmp_path / "a", "one"), "adapter")
        version = registry.register_adapter(run.run_id, "adapter")
    report = _report(candidate_right=36)
    decision = decide(gate_inputs(report, []), GateParams())
    assert decision.passed
    record_decision(
        registry, version.version, decision, report, report_uri="mlflow-artifacts:/r.html", cost="$0.01"
    )
    params = Params.model_validate(
        {"registry": registry.params.model_dump(), "gate": {"auto_promote": False}}
    )
    alias, served = apply_decision(registry, params, version, decision.passed, urls=None)  # type: ignore[arg-type]
    assert (alias, served) == ("challenger", None)
    info = registry.get_version(version.version)
    assert info.aliases == ("challenger",) and registry.champion() is None
    assert info.tags["gate"] == "passed" and info.tags["report"] == "mlflow-artifacts:/r.html"
    assert info.tags["gate.check.gain_over_base"].startswith("ok +0.")
    described = registry.client.get_model_version(registry.params.model_name, version.version).description
    assert described.startswith("**Gate PASS**") and "| candidate (candidate) | 0.900" in described
    refused = decide(gate_inputs(_report(candidate_right=4), []), GateParams())
    assert apply_decision(registry, params, version, refused.passed, urls=None) == (None, None)  # type: ignore[arg-type]


def test_a_stored_evaluation_is_judged_again_with_the_review(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    registry = new_registry(mlflow_server)
    report = _report(candidate_right=36)
    gate = GateParams(require_review=True, min_review_approval=0.8)
    first = decide(gate_inputs(report, []), gate)
    assert first.awaiting_review and not first.passed
    stored = tmp_path / "evaluation.json"
    stored.write_text(json.dumps({"report": report.to_json(), "gate": first.to_json(), "history": []}))
    with registry.run(run_name="train") as run:
        run.log_artifacts(make_adapter(tmp_path / "a", "two"), "adapter")
        run.log_artifact(stored, "evaluation")
        version = registry.register_adapter(run.run_id, "adapter")
    registry.tag_version(version.version, {RUN_TAG: run.run_id})
    loaded = load_evaluation(registry, registry.get_version(version.version), tmp_path / "cache")
    assert loaded.report.task.runs["candidate"].values("task") == report.task.runs["candidate"].values("task")
    assert rejudge(loaded, gate, Review(9, 10)).passed
    assert not rejudge(loaded, gate, Review(5, 10)).passed
