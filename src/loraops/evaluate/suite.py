"""Evaluation of a candidate adapter: the task against its baselines, and general skills before/after.

On the task's test split, the same examples are asked of every model in the evaluation, through the
server applications call: the base model, the RAG baseline (base model + retrieved training examples),
the current champion (the version the registry's alias names, under its immutable version name) and
the candidate. Every answer is scored per example (evaluate.metrics), so each score has a bootstrap
interval and each comparison is a paired difference on identical examples (evaluate.stats). General
skills are measured with lm-evaluation-harness (evaluate.harness) for the base model and the candidate.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from loraops.evaluate.metrics import FormatCheck, score_answers
from loraops.evaluate.params import EvalParams
from loraops.evaluate.rag import Retriever, rag_request
from loraops.evaluate.runner import Completion
from loraops.evaluate.stats import Estimate, bootstrap_mean, paired_difference
from loraops.prompts import alpaca_prompt

# A request: a prompt for the completions endpoint (alpaca data, rendered exactly as in training), or
# the conversation so far for the chat endpoint (chat data: the server applies the tokenizer's template,
# the one Axolotl trained with).
Request = str | list[dict[str, str]]
ROLES = ("base", "rag", "champion", "candidate")  # report order
HEADLINE = ("task", "token_f1", "rouge_l", "format", "json_valid", "repetition")


class Completer(Protocol):
    def complete_many(
        self,
        model: str,
        prompts: Sequence[Request],
        max_tokens: int,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[Completion]: ...


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def request_of(record: dict[str, Any]) -> Request:
    """What the model is asked for one prepared record: chat (``messages``) or alpaca."""
    if "messages" in record:
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"][:-1]]
    return alpaca_prompt(record["instruction"], record.get("input") or "")


def reference_of(record: dict[str, Any]) -> str:
    """The expected answer: the last assistant turn, or ``output``."""
    if "messages" in record:
        return str(record["messages"][-1]["content"])
    return str(record["output"])


def question_of(record: dict[str, Any]) -> str:
    """The user's question, for reports and the demo (the last user turn, or the instruction)."""
    if "messages" in record:
        return str(next(m["content"] for m in reversed(record["messages"]) if m["role"] == "user"))
    return str(record["instruction"])


@dataclass(frozen=True)
class Bootstrap:
    resamples: int = 2000
    level: float = 0.95

    def mean(self, values: Sequence[float]) -> Estimate:
        return bootstrap_mean(values, resamples=self.resamples, level=self.level)

    def paired(self, a: Sequence[float], b: Sequence[float]) -> Estimate:
        return paired_difference(a, b, resamples=self.resamples, level=self.level)


@dataclass(frozen=True)
class ModelAnswers:
    """One model's answers to the test examples, scored per example."""

    role: str
    model: str  # the served name that was asked
    answers: list[str]
    scores: list[dict[str, float]]
    prompt_tokens: list[int] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)  # per answer, with `concurrency` in flight

    def values(self, metric: str) -> list[float]:
        return [s.get(metric, 0.0) for s in self.scores]

    def metric_names(self) -> list[str]:
        names = {k for s in self.scores for k in s}
        return [m for m in HEADLINE if m in names] + sorted(n for n in names if n not in HEADLINE)

    def mean_tokens(self) -> tuple[float, float]:
        n = max(len(self.prompt_tokens), 1)
        return sum(self.prompt_tokens) / n, sum(self.completion_tokens) / max(len(self.completion_tokens), 1)


@dataclass(frozen=True)
class TaskEvaluation:
    """The test examples and each model's scored answers to them."""

    questions: list[str]
    references: list[str]
    runs: dict[str, ModelAnswers]
    bootstrap: Bootstrap = Bootstrap()

    def estimate(self, role: str, metric: str = "task") -> Estimate:
        return self.bootstrap.mean(self.runs[role].values(metric))

    def paired(self, metric: str, role: str, other: str) -> Estimate:
        """role minus other on the same examples."""
        return self.bootstrap.paired(self.runs[role].values(metric), self.runs[other].values(metric))


@dataclass(frozen=True)
class GeneralEvaluation:
    """General skills per task (lm-eval), each example's score, for the base model and the candidate."""

    base: dict[str, list[float]]
    candidate: dict[str, list[float]]
    bootstrap: Bootstrap = Bootstrap()

    @property
    def tasks(self) -> list[str]:
        return sorted(self.base)

    def score(self, role: str, task: str | None = None) -> Estimate:
        per_task = self.base if role == "base" else self.candidate
        values = per_task[task] if task else [v for t in self.tasks for v in per_task[t]]
        return self.bootstrap.mean(values)

    def drop(self, task: str | None = None) -> Estimate:
        """base minus candidate on the same examples (positive: the candidate forgot)."""
        tasks = [task] if task else self.tasks
        base = [v for t in tasks for v in self.base[t]]
        cand = [v for t in tasks for v in self.candidate.get(t, [0.0] * len(self.base[t]))]
        return self.bootstrap.paired(base, cand)


@dataclass(frozen=True)
class EvalReport:
    """Everything the gate and the report read about one candidate."""

    task: TaskEvaluation
    general: GeneralEvaluation
    champion_version: str | None = None
    samples: int = 10

    @property
    def roles(self) -> list[str]:
        return [r for r in ROLES if r in self.task.runs]

    def comparisons(self) -> dict[str, Estimate]:
        """Paired task-score differences of the candidate against each baseline."""
        return {
            other: self.task.paired("task", "candidate", other)
            for other in self.roles
            if other != "candidate"
        }

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow: each role's metrics with intervals, the paired differences, forgetting."""
        out: dict[str, float] = {}
        for role in self.roles:
            run = self.task.runs[role]
            for metric in run.metric_names():
                est = self.task.estimate(role, metric)
                name = "score" if metric == "task" else metric
                out[f"{role}.{name}"] = est.mean
                if metric in HEADLINE:
                    out[f"{role}.{name}.low"], out[f"{role}.{name}.high"] = est.low, est.high
            out[f"{role}.prompt_tokens"], out[f"{role}.completion_tokens"] = run.mean_tokens()
        for other, est in self.comparisons().items():
            out[f"diff.candidate_vs_{other}"] = est.mean
            out[f"diff.candidate_vs_{other}.low"], out[f"diff.candidate_vs_{other}.high"] = est.low, est.high
        for role in ("base", "candidate"):
            for task in self.general.tasks:
                out[f"{role}.general.{task}"] = self.general.score(role, task).mean
            out[f"{role}.general.mean"] = self.general.score(role).mean
        overall = self.general.drop()
        out["forgetting.drop"], out["forgetting.drop.high"] = overall.mean, overall.high
        for task in self.general.tasks:
            out[f"forgetting.{task}.drop"] = self.general.drop(task).mean
        return out

    def example_rows(self) -> list[dict[str, Any]]:
        """One row per test example and model: the per-example results (a JSONL artifact)."""
        rows = []
        for i, (question, reference) in enumerate(
            zip(self.task.questions, self.task.references, strict=True)
        ):
            for role in self.roles:
                run = self.task.runs[role]
                rows.append(
                    {
                        "example": i,
                        "role": role,
                        "model": run.model,
                        "question": question,
                        "reference": reference,
                        "answer": run.answers[i],
                        "scores": run.scores[i],
                        "prompt_tokens": run.prompt_tokens[i] if run.prompt_tokens else None,
                    }
                )
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "questions": self.task.questions,
            "references": self.task.references,
            "runs": {role: vars(run) for role, run in self.task.runs.items()},
            "general": {"base": self.general.base, "candidate": self.general.candidate},
            "champion_version": self.champion_version,
            "bootstrap": vars(self.task.bootstrap),
            "samples": self.samples,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalReport:
        bootstrap = Bootstrap(**data["bootstrap"])
        runs = {role: ModelAnswers(**run) for role, run in data["runs"].items()}
        return cls(
            TaskEvaluation(data["questions"], data["references"], runs, bootstrap),
            GeneralEvaluation(data["general"]["base"], data["general"]["candidate"], bootstrap),
            data.get("champion_version"),
            int(data.get("samples", 10)),
        )


def evaluate_task(
    client: Completer,
    *,
    models: dict[str, str],
    test_records: Sequence[dict[str, Any]],
    train_records: Sequence[dict[str, Any]],
    params: EvalParams,
    on_progress: Callable[[str], None] | None = None,
) -> TaskEvaluation:
    """Ask each model in ``models`` (role -> served name; role ``rag`` means the base model with
    retrieved examples) the same test examples and score every answer."""
    if params.max_test_examples is not None:
        test_records = test_records[: params.max_test_examples]
    references = [reference_of(r) for r in test_records]
    plain = [request_of(r) for r in test_records]
    fmt = FormatCheck(params.format.json_schema, params.format.regex) if params.format else None
    runs: dict[str, ModelAnswers] = {}
    for role in ROLES:
        if role not in models:
            continue
        requests = plain
        if role == "rag":
            neighbours = Retriever(train_records).top_k(test_records, params.rag_k)
            requests = [rag_request(r, n) for r, n in zip(test_records, neighbours, strict=True)]

        def progress(done: int, total: int, role: str = role) -> None:
            if on_progress is not None:
                on_progress(f"task [{role}: {models[role]}]: {done}/{total}")

        got = client.complete_many(models[role], requests, params.max_tokens, progress)
        answers = [c.text for c in got]
        runs[role] = ModelAnswers(
            role=role,
            model=models[role],
            answers=answers,
            scores=score_answers(answers, references, task_metric=params.task_metric, format_check=fmt),
            prompt_tokens=[c.prompt_tokens for c in got],
            completion_tokens=[c.completion_tokens for c in got],
            latencies_s=[c.latency_s for c in got],
        )
    return TaskEvaluation(
        [question_of(r) for r in test_records],
        references,
        runs,
        Bootstrap(params.bootstrap_resamples, params.confidence),
    )
