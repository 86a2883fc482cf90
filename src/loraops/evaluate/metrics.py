"""Scoring of generated answers (pure)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


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


@dataclass(frozen=True)
class TaskScore:
    """Scores of one model on the task's test split."""

    n: int
    score: float  # the gate's task score: share of answers that are entirely right
    json_valid: float = 0.0
    field_accuracy: dict[str, float] = field(default_factory=dict)

    def as_metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}.score": self.score, f"{prefix}.json_valid": self.json_valid}
        out.update({f"{prefix}.field.{k}": v for k, v in self.field_accuracy.items()})
        return out


def score_json_fields(answers: Sequence[str], references: Sequence[str]) -> TaskScore:
    """An answer is right when it parses to a JSON object whose fields all equal the reference's."""
    if len(answers) != len(references):
        raise ValueError("answers and references differ in length")
    n = len(answers)
    if n == 0:
        return TaskScore(0, 0.0)
    right = valid = 0
    per_field: dict[str, int] = defaultdict(int)
    field_names: set[str] = set()
    for answer, reference in zip(answers, references, strict=True):
        expected = json.loads(reference)
        field_names.update(expected)
        got = first_json_object(answer.strip())
        if got is None:
            continue
        valid += 1
        for key, value in expected.items():
            if got.get(key) == value:
                per_field[key] += 1
        if all(got.get(k) == v for k, v in expected.items()):
            right += 1
    return TaskScore(
        n=n,
        score=right / n,
        json_valid=valid / n,
        field_accuracy={k: per_field[k] / n for k in sorted(field_names)},
    )


def score_exact(answers: Sequence[str], references: Sequence[str]) -> TaskScore:
    if len(answers) != len(references):
        raise ValueError("answers and references differ in length")
    n = len(answers)
    right = sum(a.strip() == r.strip() for a, r in zip(answers, references, strict=True))
    return TaskScore(n=n, score=right / n if n else 0.0)


@dataclass(frozen=True)
class SkillScores:
    """Exact-match accuracy per general skill (the forgetting suite)."""

    per_skill: dict[str, float]

    @property
    def mean(self) -> float:
        return sum(self.per_skill.values()) / len(self.per_skill) if self.per_skill else 0.0

    def as_metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}.general.{k}": v for k, v in self.per_skill.items()}
        out[f"{prefix}.general.mean"] = self.mean
        return out


def score_skills(items: Iterable[tuple[str, str, str]]) -> SkillScores:
    """items: (skill, answer, reference)."""
    right: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for skill, answer, reference in items:
        total[skill] += 1
        right[skill] += int(answer.strip() == reference.strip())
    return SkillScores({s: right[s] / total[s] for s in sorted(total)})
