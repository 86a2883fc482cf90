"""The promotion gate: a pure function of interval estimates and thresholds.

Improvements are judged on the lower bound of a paired bootstrap interval, drops on the upper bound,
so a check passes only when the evaluation rules out the bad case (evaluate/stats.py has the method,
tests/test_gate_simulation.py its false-pass and false-fail rates). Overfitting signs warn or block,
by params; an expert review, when required, must have approved enough of the reviewed answers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from loraops.evaluate.stats import Estimate
from loraops.gate.params import GateParams

Severity = Literal["fail", "warn"]


@dataclass(frozen=True)
class Check:
    name: str
    value: float  # what was compared: a bound, or a point value where no interval applies
    threshold: float
    passed: bool
    detail: str
    severity: Severity = "fail"
    direction: Literal[">=", "<="] = ">="
    estimate: Estimate | None = None

    def line(self) -> str:
        mark = "ok  " if self.passed else ("FAIL" if self.severity == "fail" else "warn")
        return (
            f"{mark} {self.name:<22s} {self.value:+.3f} {self.direction} {self.threshold:+.3f}  {self.detail}"
        )


@dataclass(frozen=True)
class Review:
    """Expert verdicts on a sample of the candidate's answers."""

    approved: int
    reviewed: int

    @property
    def share(self) -> float:
        return self.approved / self.reviewed if self.reviewed else 0.0


@dataclass(frozen=True)
class GateInputs:
    """What the gate judges, all from the evaluation of one candidate (see ``gate_inputs``)."""

    task_score: Estimate
    gain_over_base: Estimate
    gain_over_champion: Estimate | None
    gain_over_rag: Estimate | None
    forgetting: dict[str, Estimate]  # per general task: base - candidate
    forgetting_overall: Estimate
    repetition: float
    train_loss: float | None = None
    eval_losses: list[float] = field(default_factory=list)
    review: Review | None = None


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: list[Check]
    awaiting_review: bool = False

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed and c.severity == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if not c.passed and c.severity == "warn"]

    @property
    def verdict(self) -> str:
        if self.passed:
            return "PASS"
        return "AWAITING REVIEW" if self.awaiting_review else "FAIL"

    def summary(self) -> str:
        why = "; ".join(f"{c.name}: {c.detail}" for c in self.failed) or "every check passed"
        warn = f" (warnings: {', '.join(c.name for c in self.warnings)})" if self.warnings else ""
        return f"gate {self.verdict}: {why}{warn}"

    def to_json(self) -> dict[str, Any]:
        checks = []
        for c in self.checks:
            item = asdict(c)
            item["estimate"] = c.estimate.to_json() if c.estimate else None
            checks.append(item)
        return {
            "passed": self.passed,
            "verdict": self.verdict,
            "awaiting_review": self.awaiting_review,
            "checks": checks,
        }


def _lower(name: str, est: Estimate, threshold: float, what: str) -> Check:
    return Check(
        name,
        est.low,
        threshold,
        est.low >= threshold,
        f"{what}: {est.mean:+.3f} [{est.low:+.3f}, {est.high:+.3f}] on {est.n} examples (lower bound judged)",
        estimate=est,
    )


def _upper(name: str, est: Estimate, threshold: float, what: str) -> Check:
    return Check(
        name,
        est.high,
        threshold,
        est.high <= threshold,
        f"{what}: {est.mean:+.3f} [{est.low:+.3f}, {est.high:+.3f}] (upper bound judged)",
        direction="<=",
        estimate=est,
    )


def decide(inputs: GateInputs, params: GateParams) -> GateDecision:
    """Every check of the gate; the candidate passes when no check of severity ``fail`` failed."""
    checks = [
        Check(
            "task_score",
            inputs.task_score.mean,
            params.min_task_score,
            inputs.task_score.mean >= params.min_task_score,
            f"{inputs.task_score.mean:.1%} of {inputs.task_score.n} test examples right "
            f"[{inputs.task_score.low:.1%}, {inputs.task_score.high:.1%}]",
            estimate=inputs.task_score,
        ),
        _lower("gain_over_base", inputs.gain_over_base, params.min_gain_over_base, "candidate - base"),
    ]
    if inputs.gain_over_champion is None:
        checks.append(Check("vs_champion", 0.0, -params.non_inferiority_margin, True, "no champion yet"))
    else:
        checks.append(
            _lower(
                "vs_champion",
                inputs.gain_over_champion,
                -params.non_inferiority_margin,
                "candidate - champion",
            )
        )
    if params.min_gain_over_rag is not None and inputs.gain_over_rag is not None:
        checks.append(
            _lower("gain_over_rag", inputs.gain_over_rag, params.min_gain_over_rag, "candidate - RAG")
        )
    if inputs.forgetting:
        worst_task, worst = max(inputs.forgetting.items(), key=lambda kv: kv[1].high)
        checks.append(_upper("forgetting", worst, params.max_skill_drop, f"largest drop, on {worst_task}"))
    checks.append(_upper("mean_forgetting", inputs.forgetting_overall, params.max_mean_drop, "overall drop"))
    checks += _overfitting(inputs, params)
    awaiting = False
    if params.require_review:
        review = inputs.review
        if review is None or review.reviewed == 0:
            awaiting = True
            checks.append(
                Check(
                    "review",
                    0.0,
                    params.min_review_approval,
                    False,
                    "awaiting expert review: `loraops review export`, then `loraops review import`",
                )
            )
        else:
            checks.append(
                Check(
                    "review",
                    review.share,
                    params.min_review_approval,
                    review.share >= params.min_review_approval,
                    f"experts approved {review.approved} of {review.reviewed} reviewed answers",
                )
            )
    passed = all(c.passed for c in checks if c.severity == "fail")
    blocked_only_by_review = awaiting and all(
        c.passed for c in checks if c.name != "review" and c.severity == "fail"
    )
    return GateDecision(passed=passed, checks=checks, awaiting_review=blocked_only_by_review)


def _overfitting(inputs: GateInputs, params: GateParams) -> list[Check]:
    rules = params.overfitting
    checks = []
    if inputs.train_loss is not None and inputs.eval_losses:
        gap = inputs.eval_losses[-1] - inputs.train_loss
        checks.append(
            Check(
                "train_val_gap",
                gap,
                rules.max_train_val_gap,
                gap <= rules.max_train_val_gap,
                f"final validation loss {inputs.eval_losses[-1]:.3f}, training loss {inputs.train_loss:.3f} "
                "(mean of the last tenth of the steps)",
                severity=rules.action,
                direction="<=",
            )
        )
    if len(inputs.eval_losses) >= 2:
        best = min(inputs.eval_losses)
        rise = (inputs.eval_losses[-1] - best) / best if best > 0 else 0.0
        checks.append(
            Check(
                "val_loss_rise",
                rise,
                rules.max_val_loss_rise,
                rise <= rules.max_val_loss_rise,
                f"validation loss ended at {inputs.eval_losses[-1]:.3f}, best was {best:.3f}",
                severity=rules.action,
                direction="<=",
            )
        )
    checks.append(
        Check(
            "repetition",
            inputs.repetition,
            rules.max_repetition,
            inputs.repetition <= rules.max_repetition,
            f"{inputs.repetition:.1%} of the answers' word 3-grams repeat",
            severity=rules.action,
            direction="<=",
        )
    )
    return checks


def gate_inputs(report: Any, history: list[dict[str, float]], review: Review | None = None) -> GateInputs:
    """The gate's inputs from an ``evaluate.suite.EvalReport`` and the training history."""
    task = report.task
    losses = [h["loss"] for h in history if "loss" in h]
    tail = losses[-max(1, len(losses) // 10) :]  # the last tenth of the steps: one step's loss is noisy
    return GateInputs(
        task_score=task.estimate("candidate", "task"),
        gain_over_base=task.paired("task", "candidate", "base"),
        gain_over_champion=task.paired("task", "candidate", "champion") if "champion" in task.runs else None,
        gain_over_rag=task.paired("task", "candidate", "rag") if "rag" in task.runs else None,
        forgetting={t: report.general.drop(t) for t in report.general.tasks},
        forgetting_overall=report.general.drop(),
        repetition=task.estimate("candidate", "repetition").mean,
        train_loss=sum(tail) / len(tail) if tail else None,
        eval_losses=[h["eval_loss"] for h in history if "eval_loss" in h],
        review=review,
    )
