"""The promotion gate: a pure function of scores and thresholds."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from loraops.evaluate.metrics import SkillScores, TaskScore
from loraops.gate.params import GateParams


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    threshold: float
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: list[Check]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        parts = [
            f"{c.name}={c.value:.3f} ({'<=' if c.name.endswith('forgetting') else '>='}{c.threshold:.3f})"
            for c in self.checks
        ]
        return f"gate {verdict}: " + ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}


def decide(
    *,
    candidate: TaskScore,
    base: TaskScore,
    champion: TaskScore | None,
    base_general: SkillScores,
    candidate_general: SkillScores,
    params: GateParams,
) -> GateDecision:
    checks = [
        Check(
            "task_score",
            candidate.score,
            params.min_task_score,
            candidate.score >= params.min_task_score,
            f"candidate answers {candidate.score:.1%} of {candidate.n} test examples right",
        ),
        Check(
            "gain_over_base",
            candidate.score - base.score,
            params.min_gain_over_base,
            candidate.score - base.score >= params.min_gain_over_base,
            f"base model scores {base.score:.1%} on the same examples",
        ),
    ]
    if champion is None:
        checks.append(Check("gain_over_champion", 0.0, params.champion_margin, True, "no champion yet"))
    else:
        gain = candidate.score - champion.score
        checks.append(
            Check(
                "gain_over_champion",
                gain,
                params.champion_margin,
                gain >= params.champion_margin,
                f"current champion scores {champion.score:.1%}",
            )
        )
    drops = {
        skill: base_general.per_skill[skill] - candidate_general.per_skill.get(skill, 0.0)
        for skill in base_general.per_skill
    }
    worst_skill, worst = max(drops.items(), key=lambda kv: kv[1], default=("none", 0.0))
    checks.append(
        Check(
            "forgetting",
            worst,
            params.max_skill_drop,
            worst <= params.max_skill_drop,
            f"largest drop on a general skill: {worst_skill}",
        )
    )
    mean_drop = base_general.mean - candidate_general.mean
    checks.append(
        Check(
            "mean_forgetting",
            mean_drop,
            params.max_mean_drop,
            mean_drop <= params.max_mean_drop,
            f"general mean {base_general.mean:.1%} -> {candidate_general.mean:.1%}",
        )
    )
    return GateDecision(passed=all(c.passed for c in checks), checks=checks)
