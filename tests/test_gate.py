"""The gate (pure): bounds of paired intervals decide, overfitting warns or blocks, review can be required."""

from loraops.evaluate.stats import Estimate
from loraops.gate.decision import GateInputs, Review, decide
from loraops.gate.params import GateParams, OverfittingParams

PARAMS = GateParams(
    min_task_score=0.7,
    min_gain_over_base=0.2,
    non_inferiority_margin=0.1,
    max_skill_drop=0.1,
    max_mean_drop=0.05,
)


def est(mean: float, half: float = 0.05, n: int = 100) -> Estimate:
    return Estimate(mean, mean - half, mean + half, n)


def inputs(**changes) -> GateInputs:
    values = {
        "task_score": est(0.9),
        "gain_over_base": est(0.8),
        "gain_over_champion": None,
        "gain_over_rag": est(0.5),
        "forgetting": {"spell": est(0.01, 0.02), "upper": est(0.0, 0.01)},
        "forgetting_overall": est(0.005, 0.02),
        "repetition": 0.0,
        "train_loss": 0.5,
        "eval_losses": [0.9, 0.7, 0.65],
    }
    values.update(changes)
    return GateInputs(**values)


def test_a_good_candidate_without_champion_passes():
    decision = decide(inputs(), PARAMS)
    assert decision.passed and decision.verdict == "PASS"
    names = {c.name for c in decision.checks}
    assert {"task_score", "gain_over_base", "vs_champion", "forgetting", "mean_forgetting"} <= names
    assert {"train_val_gap", "val_loss_rise", "repetition"} <= names
    assert decision.summary() == "gate PASS: every check passed"


def test_low_task_score_fails_with_the_failing_check_named():
    decision = decide(inputs(task_score=est(0.5)), PARAMS)
    assert [c.name for c in decision.failed] == ["task_score"]
    assert decision.summary().startswith("gate FAIL: task_score: 50.0% of 100")


def test_improvement_over_base_is_judged_on_the_lower_bound():
    assert decide(inputs(gain_over_base=Estimate(0.25, 0.21, 0.29, 100)), PARAMS).passed
    # the same mean, but so uncertain that a gain below 0.2 is not ruled out
    decision = decide(inputs(gain_over_base=Estimate(0.25, 0.1, 0.4, 100)), PARAMS)
    assert [c.name for c in decision.failed] == ["gain_over_base"] and decision.failed[0].value == 0.1


def test_non_inferiority_to_the_champion():
    tie = Estimate(0.0, 0.0, 0.0, 67)  # a reproducible retrain: the same answers everywhere
    assert decide(inputs(gain_over_champion=tie), PARAMS).passed
    worse = Estimate(-0.12, -0.2, -0.05, 67)
    assert [c.name for c in decide(inputs(gain_over_champion=worse), PARAMS).failed] == ["vs_champion"]


def test_forgetting_is_judged_on_the_upper_bound_of_the_drop():
    decision = decide(inputs(forgetting={"spell": Estimate(0.06, 0.02, 0.12, 40)}), PARAMS)
    assert [c.name for c in decision.failed] == ["forgetting"]
    assert "on spell" in decision.failed[0].detail
    assert [c.name for c in decide(inputs(forgetting_overall=est(0.03)), PARAMS).failed] == [
        "mean_forgetting"
    ]


def test_overfitting_warns_by_default_and_blocks_when_asked():
    rising = inputs(eval_losses=[0.7, 0.6, 0.9], train_loss=0.1, repetition=0.5)
    warned = decide(rising, PARAMS)
    assert warned.passed and {c.name for c in warned.warnings} == {"val_loss_rise", "repetition"}
    strict = PARAMS.model_copy(update={"overfitting": OverfittingParams(action="fail")})
    assert {c.name for c in decide(rising, strict).failed} == {"val_loss_rise", "repetition"}


def test_rag_is_a_check_only_when_a_minimum_is_set():
    assert "gain_over_rag" not in {c.name for c in decide(inputs(), PARAMS).checks}
    with_rag = PARAMS.model_copy(update={"min_gain_over_rag": 0.6})
    assert [c.name for c in decide(inputs(), with_rag).failed] == ["gain_over_rag"]


def test_required_review_waits_then_judges_the_approval_share():
    params = PARAMS.model_copy(update={"require_review": True, "min_review_approval": 0.8})
    waiting = decide(inputs(), params)
    assert not waiting.passed and waiting.awaiting_review and waiting.verdict == "AWAITING REVIEW"
    assert decide(inputs(review=Review(approved=9, reviewed=10)), params).passed
    rejected = decide(inputs(review=Review(approved=6, reviewed=10)), params)
    assert not rejected.passed and not rejected.awaiting_review
    # a candidate that fails other checks is a FAIL, not awaiting review
    assert not decide(inputs(task_score=est(0.5)), params).awaiting_review
