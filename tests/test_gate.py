from loraops.evaluate.metrics import SkillScores, TaskScore
from loraops.gate.decision import decide
from loraops.gate.params import GateParams

BASE_GENERAL = SkillScores({"spell": 0.9, "upper": 0.8})


def _decide(candidate: float, base: float = 0.0, champion: float | None = None, general=None):
    return decide(
        candidate=TaskScore(100, candidate),
        base=TaskScore(100, base),
        champion=None if champion is None else TaskScore(100, champion),
        base_general=BASE_GENERAL,
        candidate_general=general or SkillScores({"spell": 0.88, "upper": 0.8}),
        params=GateParams(min_task_score=0.7, min_gain_over_base=0.2, max_skill_drop=0.1, max_mean_drop=0.05),
    )


def test_good_candidate_without_champion_passes():
    decision = _decide(0.9)
    assert decision.passed
    assert {c.name for c in decision.checks} == {
        "task_score",
        "gain_over_base",
        "gain_over_champion",
        "forgetting",
        "mean_forgetting",
    }
    assert "PASS" in decision.summary()


def test_low_task_score_fails_with_the_failing_check_named():
    decision = _decide(0.5)
    assert not decision.passed
    assert [c.name for c in decision.failed] == ["task_score"]


def test_small_gain_over_base_fails():
    decision = _decide(0.8, base=0.7)
    assert [c.name for c in decision.failed] == ["gain_over_base"]


def test_worse_than_champion_fails_and_equal_passes():
    assert [c.name for c in _decide(0.8, champion=0.85).failed] == ["gain_over_champion"]
    assert _decide(0.85, champion=0.85).passed


def test_forgetting_one_skill_fails_even_if_task_is_great():
    decision = _decide(1.0, general=SkillScores({"spell": 0.5, "upper": 0.8}))
    failed = {c.name: c for c in decision.failed}
    assert "forgetting" in failed
    assert "spell" in failed["forgetting"].detail
    assert abs(failed["forgetting"].value - 0.4) < 1e-9


def test_skill_missing_in_candidate_counts_as_forgotten():
    decision = _decide(1.0, general=SkillScores({"spell": 0.9}))
    assert not decision.passed
