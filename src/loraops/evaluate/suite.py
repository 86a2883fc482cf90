"""Evaluation of a candidate adapter against the base model and the champion, on the same examples."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from loraops.evaluate.metrics import SkillScores, TaskScore, score_exact, score_json_fields, score_skills
from loraops.evaluate.params import EvalParams
from loraops.prompts import alpaca_prompt

# A request: a prompt for the completions endpoint (alpaca data, rendered exactly as in training), or
# the conversation so far for the chat endpoint (chat data: the server applies the tokenizer's template,
# the one Axolotl trained with).
Request = str | list[dict[str, str]]


class Completer(Protocol):
    def complete_many(
        self,
        model: str,
        prompts: Sequence[Request],
        max_tokens: int,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[str]: ...


@dataclass(frozen=True)
class EvalReport:
    base: TaskScore
    candidate: TaskScore
    champion: TaskScore | None
    base_general: SkillScores
    candidate_general: SkillScores
    samples: list[dict[str, str]]

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        out.update(self.base.as_metrics("base"))
        out.update(self.candidate.as_metrics("candidate"))
        if self.champion is not None:
            out.update(self.champion.as_metrics("champion"))
        out.update(self.base_general.as_metrics("base"))
        out.update(self.candidate_general.as_metrics("candidate"))
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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


def _prompts(records: Sequence[dict[str, Any]]) -> list[Request]:
    return [request_of(r) for r in records]


def _task_score(metric: str, answers: Sequence[str], refs: Sequence[str]) -> TaskScore:
    return score_json_fields(answers, refs) if metric == "json_fields" else score_exact(answers, refs)


def evaluate_candidate(
    client: Completer,
    *,
    base_name: str,
    candidate_name: str,
    champion_name: str | None,
    test_records: Sequence[dict[str, Any]],
    general_records: Sequence[dict[str, Any]],
    params: EvalParams,
    on_progress: Callable[[str], None] | None = None,
) -> EvalReport:
    if params.max_test_examples is not None:
        test_records = test_records[: params.max_test_examples]
    refs = [reference_of(r) for r in test_records]
    prompts = _prompts(test_records)

    def ask(model: str, batch: list[Request], what: str) -> list[str]:
        def progress(done: int, total: int) -> None:
            if on_progress is not None:
                on_progress(f"{what} [{model}]: {done}/{total}")

        return client.complete_many(model, batch, params.max_tokens, progress)

    answers = {name: ask(name, prompts, "task") for name in (base_name, candidate_name)}
    champion = None
    if champion_name is not None:
        champion = _task_score(params.task_metric, ask(champion_name, prompts, "task"), refs)

    general_prompts = _prompts(general_records)
    skills = [r["skill"] for r in general_records]
    general_refs = [r["output"] for r in general_records]
    general = {}
    for name in (base_name, candidate_name):
        got = ask(name, general_prompts, "general")
        general[name] = score_skills(zip(skills, got, general_refs, strict=True))

    samples = [
        {
            "prompt": question_of(r),
            "reference": reference_of(r),
            "base": answers[base_name][i],
            "candidate": answers[candidate_name][i],
        }
        for i, r in enumerate(test_records[:10])
    ]
    return EvalReport(
        base=_task_score(params.task_metric, answers[base_name], refs),
        candidate=_task_score(params.task_metric, answers[candidate_name], refs),
        champion=champion,
        base_general=general[base_name],
        candidate_general=general[candidate_name],
        samples=samples,
    )
