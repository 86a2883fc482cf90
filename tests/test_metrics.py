import json

import pytest

from loraops.evaluate.metrics import FormatCheck, repetition, rouge_l, score_answer, score_answers, token_f1

REF = json.dumps({"category": "billing", "priority": "high", "product": "mail plus"})
SCHEMA = {
    "type": "object",
    "required": ["category", "priority", "product"],
    "additionalProperties": False,
    "properties": {
        "category": {"type": "string"},
        "priority": {"enum": ["high", "medium", "low"]},
        "product": {},
    },
}


def test_json_fields_scores_each_answer_and_field():
    answers = [
        REF,
        ' {"category": "billing", "priority": "low", "product": "mail plus"} trailing',
        "not json at all",
        '{"category": "billing", "priority": "high", "product": "mail plus", "extra": 1}',
    ]
    scores = score_answers(answers, [REF] * 4)
    assert [s["task"] for s in scores] == [1.0, 0.0, 0.0, 1.0]
    assert [s["json_valid"] for s in scores] == [1.0, 1.0, 0.0, 1.0]
    assert [s["field.priority"] for s in scores] == [1.0, 0.0, 0.0, 1.0]
    assert scores[0]["token_f1"] == 1.0 and scores[0]["rouge_l"] == 1.0 and scores[2]["token_f1"] == 0.0


def test_answers_and_references_must_align_and_arrays_are_not_records():
    with pytest.raises(ValueError, match="1 answers for 2 references"):
        score_answers(["{}"], [REF, REF])
    assert score_answer("[1, 2]", REF)["json_valid"] == 0.0


def test_exact_match_token_f1_and_rouge_l_follow_their_definitions():
    assert score_answer(" a ", "a", task_metric="exact_match")["task"] == 1.0
    # SQuAD F1: articles and punctuation removed, bag of tokens: 2 common of 3 and 2 -> P 2/3, R 1
    assert token_f1("The cat sat down.", "cat sat") == pytest.approx(0.8)
    # ROUGE-L: LCS 'cat sat' of 4 and 2 tokens -> P 0.5, R 1 -> F 2/3
    assert rouge_l("the cat sat down", "cat sat") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="unknown task metric"):
        score_answer("a", "a", task_metric="bleu")


def test_format_compliance_by_json_schema_or_regex():
    schema = FormatCheck(json_schema=SCHEMA)
    assert schema.ok(REF)
    assert not schema.ok('{"category": "billing", "priority": "urgent", "product": "x"}')  # not in the enum
    assert not schema.ok('{"category": "billing"}')
    assert score_answer(REF, REF, format_check=schema)["format"] == 1.0
    assert "format" not in score_answer(REF, REF)  # no check configured, no metric
    regex = FormatCheck(regex=r"[a-z]+-[a-z]+")
    assert regex.ok(" one-two ") and not regex.ok("one two")
    with pytest.raises(Exception, match=r"is not valid under any of the given schemas"):
        FormatCheck(json_schema={"type": "nonsense"})


def test_repetition_is_the_share_of_repeated_trigrams():
    assert repetition("a b c d e") == 0.0
    assert repetition("go on go on go on go on") == pytest.approx(1 - 2 / 6)
    assert repetition("short") == 0.0
