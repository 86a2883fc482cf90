"""The files the DVC experiment stages (`train` and `evaluate` of dvc.yaml) pass along.

`loraops train --output FILE` writes what it registered; `loraops evaluate --version-from FILE` reads
the version back; `loraops evaluate --metrics FILE` writes the gate's verdict and the main scores as a
DVC metrics file, so `dvc exp show` lists them per experiment.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from loraops.errors import StageError
from loraops.files import write_text_atomic
from loraops.loop.pipeline import Registered, RetrainOutcome

# the scores `dvc exp show` lists (of report.metrics(): every role's score and format compliance, the
# paired gains with their lower bounds, the general skills, the forgetting drop)
MAIN_SCORE = re.compile(
    r"^(candidate|base|rag|champion)\.(score|format|general\.mean)$"
    r"|^diff\.candidate_vs_(base|rag|champion)(\.low)?$"
    r"|^forgetting\.drop(\.high)?$"
)


def train_record(registered: Registered) -> dict[str, Any]:
    """What `loraops train --output` writes: the registered version, its run and its data."""
    return {
        "model": registered.model_name,
        "version": int(registered.version),
        "run_id": registered.run_id,
        "data_version": registered.data_version,
    }


def evaluation_metrics(outcome: RetrainOutcome) -> dict[str, Any]:
    """What `loraops evaluate --metrics` writes: the version, the gate's verdict, the main scores."""
    judged, registered = outcome.judgement, outcome.registered
    if judged is None or registered is None:
        raise StageError("the evaluation ended without a gate decision: no metrics to write")
    scores = {k: round(v, 6) for k, v in sorted(judged.scores.items()) if MAIN_SCORE.match(k)}
    return {
        "version": int(registered.version),
        "gate": "passed" if judged.passed else "failed",
        "gate_passed": judged.passed,
        "promoted": judged.promoted,
        **scores,
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` (parents created; replaced atomically)."""
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")


def version_from(path: Path) -> str:
    """The model version in a file written by `loraops train --output`."""
    try:
        version = json.loads(path.read_text("utf-8"))["version"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StageError(
            f"{path}: no model version in it ({type(exc).__name__}: {exc})",
            hint="write it with `loraops train --output FILE` (the `train` stage of dvc.yaml does)",
        ) from exc
    return str(version)
