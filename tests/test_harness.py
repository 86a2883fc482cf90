"""The general suite as lm-eval tasks: shipped files match the recipe; per-example results come back."""

from __future__ import annotations

import json
from pathlib import Path

from loraops.basemodel.recipe import DEFAULT_RECIPE
from loraops.basemodel.skills import general_suite
from loraops.evaluate.harness import GROUP, SHIPPED_TASKS, read_samples, write_general_tasks
from loraops.evaluate.params import EvalParams


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_shipped_tasks_are_what_the_default_recipe_generates(tmp_path: Path) -> None:
    params = EvalParams()
    names = write_general_tasks(
        general_suite(DEFAULT_RECIPE, params.general_per_skill), tmp_path, max_tokens=params.max_tokens
    )
    assert names == [f"{GROUP}_{skill}" for skill in DEFAULT_RECIPE.skills]
    shipped = SHIPPED_TASKS / GROUP
    assert _files(shipped) == _files(tmp_path), (
        "regenerate with write_general_tasks (see lm_eval_tasks/README.md)"
    )
    rows = (shipped / "data" / "count_up.jsonl").read_text().splitlines()
    assert len(rows) == params.general_per_skill
    assert json.loads(rows[0])["prompt"].endswith("### Response:\n")


def test_per_example_scores_come_back_in_document_order(tmp_path: Path) -> None:
    out = tmp_path / "out" / "loraops-tiny"
    out.mkdir(parents=True)
    samples = [
        {"doc_id": 2, "exact_match": 0.0},
        {"doc_id": 0, "exact_match": 1.0},
        {"doc_id": 1, "exact_match": 1.0},
    ]
    (out / "samples_loraops_general_count_up_2026-11-27T10-11-03.5.jsonl").write_text(
        "".join(json.dumps(s) + "\n" for s in samples)
    )
    (out / "samples_arc_easy_2026-11-27T10-11-03.5.jsonl").write_text(
        json.dumps({"doc_id": 0, "acc": 1.0}) + "\n"
    )
    assert read_samples(tmp_path / "out") == {"arc_easy": [1.0], "loraops_general_count_up": [1.0, 1.0, 0.0]}
