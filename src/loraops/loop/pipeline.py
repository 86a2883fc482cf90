"""The retrain loop as one function over its steps.

``run_retrain`` decides the order and the rules (skip unchanged data, stop after registration, judge,
notify); the steps do the side effects. The Prefect flow (flows/retrain.py) implements each step as a
task, so the run's graph shows every one of them; tests implement them with small fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from loraops.gate.judge import TrainingFacts
from loraops.loop.rules import skip_reason
from loraops.notify import Event, Notice

if TYPE_CHECKING:
    from loraops.data.prepare import PrepareResult
    from loraops.data.versioning import DataVersion
    from loraops.evaluate.suite import EvalReport
    from loraops.gate.decision import GateDecision
    from loraops.train.result import TrainResult

Champion = tuple[str, Mapping[str, str]]  # (version, its tags)


@dataclass(frozen=True)
class Trained:
    """A finished training and the MLflow run it was logged to."""

    result: TrainResult
    run_id: str


@dataclass(frozen=True)
class Registered:
    """A model version the run registered (or judged), with its links and lineage."""

    model_name: str
    version: str
    run_id: str
    run_url: str
    version_url: str
    data_version: str
    lineage: Mapping[str, str] = field(default_factory=dict)
    trained: Mapping[str, Any] = field(default_factory=dict)  # launcher, cost, resumed_from_step, job ...


@dataclass(frozen=True)
class ReportFiles:
    """Where the evaluation report is and the break-even statement against RAG (if RAG was measured)."""

    report: str
    economics: str | None


@dataclass(frozen=True)
class Judgement:
    """The gate's decision on a version and what it moved."""

    passed: bool
    summary: str
    checks: tuple[str, ...]
    alias: str | None
    promoted: bool
    served_path: str | None
    report: str
    economics: str | None
    scores: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RetrainOutcome:
    """What one run of the loop did: skipped, registered only, or registered and judged."""

    model_name: str
    data_version: str | None
    champion_before: str | None
    skipped: str | None = None
    registered: Registered | None = None
    judgement: Judgement | None = None

    @property
    def state(self) -> Literal["skipped", "registered", "promoted", "passed", "refused"]:
        """One word for the outcome (also the notification event where one is sent)."""
        if self.skipped is not None:
            return "skipped"
        if self.judgement is None:
            return "registered"
        if not self.judgement.passed:
            return "refused"
        return "promoted" if self.judgement.promoted else "passed"

    @property
    def gate_passed(self) -> bool:
        """True unless the gate judged and refused (a skip or a registration is not a refusal)."""
        return self.judgement is None or self.judgement.passed

    def notice(self, flow_run_url: str | None = None) -> Notice | None:
        """The notification this outcome calls for (refused, promoted, skipped), None for the rest."""
        event: Event
        if self.state == "refused" and self.judgement is not None:
            event, message = "refused", self.judgement.summary
        elif self.state == "promoted":
            event, message = "promoted", "now served under the stable name"
        elif self.state == "skipped" and self.skipped is not None:
            event, message = "skipped", self.skipped
        else:
            return None
        version = self.registered.version if self.registered else self.champion_before
        run_url = self.registered.run_url if self.registered else None
        return Notice(event, self.model_name, message, version, flow_run_url, run_url)


class JudgeSteps(Protocol):
    """evaluate -> gate -> report -> record -> promote: the end shared by the retrain and evaluate flows."""

    def evaluate(self, registered: Registered, prepared: PrepareResult) -> EvalReport: ...

    def gate(self, report: EvalReport, facts: TrainingFacts) -> GateDecision: ...

    def report(
        self, registered: Registered, report: EvalReport, decision: GateDecision, facts: TrainingFacts
    ) -> ReportFiles: ...

    def record(
        self,
        registered: Registered,
        report: EvalReport,
        decision: GateDecision,
        facts: TrainingFacts,
        prepared: PrepareResult,
        files: ReportFiles,
    ) -> None: ...

    def promote(self, registered: Registered, decision: GateDecision) -> tuple[str | None, str | None]: ...


class RetrainSteps(JudgeSteps, Protocol):
    """Every side effect of one retrain, in the order ``run_retrain`` calls them."""

    def preflight(self) -> None: ...

    def prepare(self) -> PrepareResult: ...

    def version(self) -> DataVersion: ...

    def champion(self) -> Champion | None: ...

    def train(self, prepared: PrepareResult, data: DataVersion) -> Trained: ...

    def register(self, trained: Trained, data: DataVersion, prepared: PrepareResult) -> Registered: ...


def judge(
    steps: JudgeSteps,
    registered: Registered,
    prepared: PrepareResult,
    facts: TrainingFacts,
    champion_alias: str,
) -> Judgement:
    """Evaluate, gate, report, record the decision on the version, then promote on a pass."""
    report = steps.evaluate(registered, prepared)
    decision = steps.gate(report, facts)
    files = steps.report(registered, report, decision, facts)
    steps.record(registered, report, decision, facts, prepared, files)
    alias, served = steps.promote(registered, decision)
    return Judgement(
        passed=decision.passed,
        summary=decision.summary(),
        checks=tuple(c.line() for c in decision.checks),
        alias=alias,
        promoted=alias == champion_alias,
        served_path=served,
        report=files.report,
        economics=files.economics,
        scores=report.metrics(),
    )


def run_retrain(
    steps: RetrainSteps,
    *,
    model_name: str,
    champion_alias: str,
    force: bool = False,
    evaluate: bool = True,
    on_event: Callable[[str], None] = lambda _: None,
) -> RetrainOutcome:
    """One pass of the loop: preflight, prepare, version; skip when the champion was trained on this
    data (unless ``force``); else train, register and (with ``evaluate``) judge and promote."""
    steps.preflight()
    prepared = steps.prepare()
    data = steps.version()
    champion = steps.champion()
    before = champion[0] if champion else None
    reason = skip_reason(champion, data, force)
    if reason is not None:
        on_event(f"nothing to train: {reason}")
        return RetrainOutcome(model_name, data.tag(), before, skipped=reason)
    trained = steps.train(prepared, data)
    registered = steps.register(trained, data, prepared)
    if not evaluate:
        return RetrainOutcome(model_name, data.tag(), before, registered=registered)
    facts = TrainingFacts.of(trained.result)
    judgement = judge(steps, registered, prepared, facts, champion_alias)
    return RetrainOutcome(model_name, data.tag(), before, registered=registered, judgement=judgement)
