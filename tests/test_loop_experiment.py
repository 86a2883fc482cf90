"""The files the DVC experiment stages pass along (loraops.loop.experiment)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraops.errors import StageError
from loraops.loop.experiment import evaluation_metrics, train_record, version_from, write_json
from loraops.loop.pipeline import Judgement, Registered, RetrainOutcome

REGISTERED = Registered("support-triage", "7", "run7", "http://r", "http://v", "abc@def")


def _outcome(passed: bool) -> RetrainOutcome:
    judged = Judgement(
        passed=passed,
        summary="gate",
        checks=(),
        alias=None,
        promoted=False,
        served_path=None,
        report="r.html",
        economics=None,
        scores={"candidate.score": 0.81234567, "candidate.score.low": 0.7, "candidate.field.category": 0.9},
    )
    return RetrainOutcome("support-triage", "abc@def", "1", registered=REGISTERED, judgement=judged)


def test_train_record_round_trips_the_version(tmp_path: Path) -> None:
    path = tmp_path / "metrics" / "train.json"
    write_json(path, train_record(REGISTERED))
    assert json.loads(path.read_text())["run_id"] == "run7"
    assert version_from(path) == "7"


def test_evaluation_metrics_hold_the_verdict_and_the_main_scores() -> None:
    metrics = evaluation_metrics(_outcome(passed=False))
    assert metrics == {
        "version": 7,
        "gate": "failed",
        "gate_passed": False,
        "promoted": False,
        "candidate.score": 0.812346,
    }


def test_a_file_without_a_version_names_the_file_and_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "train.json"
    bad.write_text("{}")
    with pytest.raises(StageError, match=r"train\.json: no model version in it") as err:
        version_from(bad)
    assert "loraops train --output" in str(err.value.hint)
