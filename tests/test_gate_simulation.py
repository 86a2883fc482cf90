"""How often the gate errs at the configured sample size, by simulation.

Method: for each scenario, ``TRIALS`` evaluations are simulated. Two models answer the same ``n``
examples; each example has a shared difficulty u ~ U(0, 1) and a model with accuracy p is right when
its draw is below p, where the second model reuses the first model's draw with probability ``rho``
(how often the two agree for reasons of the example itself: a retrain of the same recipe agrees on
most examples) and draws afresh otherwise. The gate's check is then applied to the paired bootstrap
interval exactly as in production (evaluate.stats, gate.decision). A scenario where the check should
fail sits exactly at its threshold (the hardest case for a false pass); one where it should pass is
what a trustworthy gate must let through. Both error rates must be at most 5%.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SMOLLM2_PARAMS, TINY_PARAMS
from loraops.config import load_params
from loraops.data.demo import write_demo_dataset
from loraops.data.prepare import prepare
from loraops.evaluate.instruct_suite import GROUP as INSTRUCT
from loraops.evaluate.instruct_suite import SHIPPED as INSTRUCT_DIR
from loraops.evaluate.instruct_suite import SKILLS
from loraops.evaluate.stats import paired_difference
from loraops.gate.params import GateParams
from loraops.workspace import Workspace

TRIALS = 500
RESAMPLES = 1000


def _answers(
    rng: np.random.Generator, n: int, p_a: float, p_b: float, rho: float
) -> tuple[np.ndarray, np.ndarray]:
    first = rng.random(n)
    second = np.where(rng.random(n) < rho, first, rng.random(n))
    return (first < p_a).astype(float), (second < p_b).astype(float)


def _rate(check, *, n: int, p_a: float, p_b: float, rho: float, seed: int) -> float:
    """Share of trials in which ``check(paired estimate)`` passes."""
    rng = np.random.default_rng(seed)
    passes = 0
    for trial in range(TRIALS):
        a, b = _answers(rng, n, p_a, p_b, rho)
        est = paired_difference(a.tolist(), b.tolist(), resamples=RESAMPLES, seed=trial)
        passes += bool(check(est))
    return passes / TRIALS


@pytest.fixture(scope="module")
def gate() -> GateParams:
    return load_params(ROOT / "params.yaml").gate


@pytest.fixture(scope="module")
def test_examples(tmp_path_factory: pytest.TempPathFactory) -> int:
    """The demo's test split as `make demo` prepares it (params.yaml: its generated tickets and split,
    duplicates removed)."""
    params = load_params(ROOT / "params.yaml")
    ws = Workspace(tmp_path_factory.mktemp("demo-split"))
    write_demo_dataset(ws.root / params.data.raw, n=params.data.demo_tickets, data_format=params.data.format)
    result = prepare(ws, params.data, tokenizer_dir=None, sequence_len=params.train.sequence_len)
    return result.counts["test"]


def _suite_sizes(params_file: Path) -> list[int]:
    """Examples per general task: the shipped instruct suite's files, or the built model's per-skill size."""
    params = load_params(params_file)
    if params.evaluate.forgetting.tasks == [INSTRUCT]:
        return [len((INSTRUCT_DIR / "data" / f"{s}.jsonl").read_text().splitlines()) for s in SKILLS]
    return [params.evaluate.general_per_skill] * 5


SUITES = {"SmolLM2 (loraops_instruct)": SMOLLM2_PARAMS, "tiny (loraops_general)": TINY_PARAMS}


def test_non_inferiority_to_the_champion(gate: GateParams, test_examples: int) -> None:
    margin = gate.non_inferiority_margin

    def check(e):
        return e.low >= -margin

    # an equally good retrain (agreeing on 90% of the examples) must pass
    false_fail = 1 - _rate(check, n=test_examples, p_a=0.9, p_b=0.9, rho=0.9, seed=1)
    # a candidate worse than the champion by exactly the margin must fail
    false_pass = _rate(check, n=test_examples, p_a=0.9 - margin, p_b=0.9, rho=0.9, seed=2)
    assert false_fail <= 0.05, false_fail
    assert false_pass <= 0.05, false_pass


def test_improvement_over_the_base_model(gate: GateParams, test_examples: int) -> None:
    threshold = gate.min_gain_over_base

    def check(e):
        return e.low >= threshold

    false_pass = _rate(check, n=test_examples, p_a=0.1 + threshold, p_b=0.1, rho=0.5, seed=3)
    false_fail = 1 - _rate(check, n=test_examples, p_a=0.8, p_b=0.1, rho=0.5, seed=4)
    assert false_pass <= 0.05, false_pass
    assert false_fail <= 0.05, false_fail


def _forgetting_errors(limit: float, n: int, ok_accuracy: float, seed: int) -> tuple[float, float]:
    """(false pass, false fail) of a drop check judged on its upper bound: a candidate that lost exactly
    ``limit`` must fail; one at ``ok_accuracy`` (the base answers all n right) must pass."""

    def check(e):  # drop = base - candidate; the check passes when its upper bound is within the limit
        return e.high <= limit

    false_pass = _rate(check, n=n, p_a=1.0, p_b=1.0 - limit, rho=0.9, seed=seed)
    false_fail = 1 - _rate(check, n=n, p_a=1.0, p_b=ok_accuracy, rho=0.9, seed=seed + 1)
    return false_pass, false_fail


@pytest.mark.parametrize("params_file", SUITES.values(), ids=SUITES.keys())
def test_forgetting_of_one_general_task(gate: GateParams, params_file: Path) -> None:
    false_pass, false_fail = _forgetting_errors(
        gate.max_skill_drop, min(_suite_sizes(params_file)), 0.98, seed=5
    )
    assert false_pass <= 0.05, false_pass
    assert false_fail <= 0.05, false_fail


@pytest.mark.parametrize("params_file", SUITES.values(), ids=SUITES.keys())
def test_mean_forgetting_over_the_whole_suite(gate: GateParams, params_file: Path) -> None:
    """The overall drop is judged on every general example pooled (GeneralEvaluation.drop)."""
    false_pass, false_fail = _forgetting_errors(
        gate.max_mean_drop, sum(_suite_sizes(params_file)), 0.99, seed=7
    )
    assert false_pass <= 0.05, false_pass
    assert false_fail <= 0.05, false_fail
