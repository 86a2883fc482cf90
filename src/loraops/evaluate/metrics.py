"""Scoring of one generated answer against its reference (pure).

Every answer gets the same set of per-example scores, kept per example (JSONL artifact) so that every
aggregate can carry a bootstrap interval and every comparison can be paired on identical examples:

* ``task``: the project's task metric, 1 or 0: ``json_fields`` (the answer parses to a JSON object whose
  fields all equal the reference's) or ``exact_match`` (whitespace-trimmed equality);
* ``json_valid`` and ``field.<name>`` (json_fields only): a JSON object at all; each field right;
* ``token_f1``: SQuAD's token F1 (lower-cased, punctuation and articles removed, bag of tokens);
* ``rouge_l``: ROUGE-L F-measure (Google's rouge-score package, the reference implementation);
* ``format``: the answer satisfies the project's JSON Schema (jsonschema) or regex, when one is set;
* ``repetition``: share of the answer's word 3-grams that repeat an earlier one (degenerate loops).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

TASK_METRICS = ("json_fields", "exact_match")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (models often add text around it), or None."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def normalize_tokens(text: str) -> list[str]:
    """SQuAD normalisation: lower case, no punctuation, no articles, whitespace tokens."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()


def token_f1(answer: str, reference: str) -> float:
    """Harmonic mean of token precision and recall (bag of tokens, SQuAD's definition)."""
    got, want = normalize_tokens(answer), normalize_tokens(reference)
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens)."""
    return float(_rouge().score(reference, answer)["rougeL"].fmeasure)


def repetition(answer: str, n: int = 3) -> float:
    """Share of word n-grams that already occurred earlier in the answer (0: none repeat)."""
    words = answer.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


@dataclass(frozen=True)
class FormatCheck:
    """What a well-formed answer looks like: a JSON Schema, or a regex the whole answer must match."""

    json_schema: dict[str, Any] | None = None
    regex: str | None = None

    def __post_init__(self) -> None:
        if self.json_schema is not None:
            from jsonschema import Draft202012Validator

            Draft202012Validator.check_schema(self.json_schema)
        if self.regex is not None:
            re.compile(self.regex)

    def ok(self, answer: str) -> bool:
        if self.json_schema is not None:
            from jsonschema import Draft202012Validator

            value = first_json_object(answer)
            if value is None or not Draft202012Validator(self.json_schema).is_valid(value):
                return False
        return not (self.regex is not None and re.fullmatch(self.regex, answer.strip(), flags=re.S) is None)


def score_answer(
    answer: str, reference: str, *, task_metric: str = "json_fields", format_check: FormatCheck | None = None
) -> dict[str, float]:
    """Every per-example score of one answer (see the module docstring)."""
    scores: dict[str, float] = {}
    if task_metric == "json_fields":
        expected = json.loads(reference)
        got = first_json_object(answer.strip())
        scores["json_valid"] = float(got is not None)
        for key, value in expected.items():
            scores[f"field.{key}"] = float(got is not None and got.get(key) == value)
        scores["task"] = float(got is not None and all(got.get(k) == v for k, v in expected.items()))
    elif task_metric == "exact_match":
        scores["task"] = float(answer.strip() == reference.strip())
    else:
        raise ValueError(f"unknown task metric {task_metric!r} (expected one of {', '.join(TASK_METRICS)})")
    scores["token_f1"] = token_f1(answer, reference)
    scores["rouge_l"] = rouge_l(answer, reference)
    scores["repetition"] = repetition(answer)
    if format_check is not None:
        scores["format"] = float(format_check.ok(answer))
    return scores


def score_answers(
    answers: Sequence[str],
    references: Sequence[str],
    *,
    task_metric: str = "json_fields",
    format_check: FormatCheck | None = None,
) -> list[dict[str, float]]:
    """``score_answer`` for each pair; the two sequences must be aligned."""
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers for {len(references)} references")
    return [
        score_answer(a, r, task_metric=task_metric, format_check=format_check)
        for a, r in zip(answers, references, strict=True)
    ]


def exact(answer: str, reference: str) -> float:
    """1.0 when the trimmed answer equals the trimmed reference (the general suite's metric)."""
    return float(answer.strip() == reference.strip())
