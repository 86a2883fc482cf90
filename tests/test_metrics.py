import json

import pytest

from loraops.evaluate.metrics import score_exact, score_json_fields, score_skills

REF = json.dumps({"category": "billing", "priority": "high", "product": "mail plus"})


def test_json_fields_counts_fully_right_answers_and_per_field_accuracy():
    answers = [
        REF,
        ' {"category": "billing", "priority": "low", "product": "mail plus"} trailing',
        "not json at all",
        '{"category": "billing", "priority": "high", "product": "mail plus", "extra": 1}',
    ]
    score = score_json_fields(answers, [REF] * 4)
    assert score.n == 4
    assert score.score == pytest.approx(0.5)
    assert score.json_valid == pytest.approx(0.75)
    assert score.field_accuracy == {"category": 0.75, "priority": 0.5, "product": 0.75}


def test_json_fields_rejects_length_mismatch():
    with pytest.raises(ValueError):
        score_json_fields(["{}"], [REF, REF])


def test_json_array_is_not_a_record():
    assert score_json_fields(["[1, 2]"], [REF]).json_valid == 0.0


def test_exact_and_skills():
    assert score_exact([" a ", "b"], ["a", "c"]).score == 0.5
    skills = score_skills([("spell", "c-a-t", "c-a-t"), ("spell", "x", "d-o-g"), ("upper", "A", "A")])
    assert skills.per_skill == {"spell": 0.5, "upper": 1.0}
    assert skills.mean == pytest.approx(0.75)
