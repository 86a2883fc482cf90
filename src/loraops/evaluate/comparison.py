"""Fine-tune vs RAG vs the bare base model, on the same test examples, in measured numbers (pure).

For each approach: task quality with its interval, prompt and completion tokens per request (the
server's usage report), answer latency p50/p95 (each request timed by the evaluation client, with
``evaluate.concurrency`` requests in flight on the same server) and the price of 1,000 requests. The
decision table then says which approach wins on each criterion and by how much: the seed guide's
"when does fine-tuning pay off" table, filled in with this run's figures. Quality differences are
paired on the examples and judged on their interval (a win needs the whole interval on one side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loraops.evaluate.economics import BreakEven, CostParams, per_1k_usd
from loraops.evaluate.stats import Estimate

if TYPE_CHECKING:
    from loraops.evaluate.suite import EvalReport

APPROACHES = {
    "base": "base model",
    "rag": "RAG (base + retrieved examples)",
    "candidate": "fine-tuned adapter",
}


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, linear between order statistics; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Approach:
    """One way to do the task, as measured on the test examples."""

    role: str
    label: str
    quality: Estimate
    prompt_tokens: float
    completion_tokens: float
    latency_p50_s: float
    latency_p95_s: float
    usd_per_1k: float

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "label": self.label,
            "quality": self.quality.to_json(),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_p50_s": self.latency_p50_s,
            "latency_p95_s": self.latency_p95_s,
            "usd_per_1k": self.usd_per_1k,
        }


@dataclass(frozen=True)
class Verdict:
    """One row of the decision table: the criterion, who wins it, and the figures behind that."""

    criterion: str
    winner: str
    evidence: str


def approaches(report: EvalReport, prices: CostParams) -> list[Approach]:
    """Base, RAG and the adapter (those that were evaluated), measured on the same test examples."""
    out = []
    for role, label in APPROACHES.items():
        run = report.task.runs.get(role)
        if run is None:
            continue
        prompt, completion = run.mean_tokens()
        out.append(
            Approach(
                role=role,
                label=label,
                quality=report.task.estimate(role),
                prompt_tokens=prompt,
                completion_tokens=completion,
                latency_p50_s=percentile(run.latencies_s, 0.5),
                latency_p95_s=percentile(run.latencies_s, 0.95),
                usd_per_1k=per_1k_usd(prompt, completion, prices),
            )
        )
    return out


def _lower_wins(criterion: str, a: Approach, b: Approach, value: float, other: float, unit: str) -> Verdict:
    if math.isnan(value) or math.isnan(other) or value == other:
        return Verdict(criterion, "tie", f"{a.label} {value:{unit}}, {b.label} {other:{unit}}")
    winner, loser, best, worst = (a, b, value, other) if value < other else (b, a, other, value)
    ratio = f" ({worst / best:.1f}x)" if best > 0 else ""
    return Verdict(
        criterion, winner.role, f"{winner.label} {best:{unit}} vs {loser.label} {worst:{unit}}{ratio}"
    )


def decision_table(report: EvalReport, prices: CostParams, economics: BreakEven | None) -> list[Verdict]:
    """Adapter vs RAG on quality, format, latency, prompt size, price per request and up-front cost."""
    measured = {a.role: a for a in approaches(report, prices)}
    if "candidate" not in measured or "rag" not in measured:
        return []
    adapter, rag = measured["candidate"], measured["rag"]
    rows = []
    for metric, criterion in (("task", "task quality"), ("format", "format compliance")):
        if metric not in report.task.runs["candidate"].metric_names():
            continue
        diff = report.task.paired(metric, "candidate", "rag")
        winner = "candidate" if diff.low > 0 else "rag" if diff.high < 0 else "tie"
        a, r = report.task.estimate("candidate", metric), report.task.estimate("rag", metric)
        rows.append(
            Verdict(criterion, winner, f"adapter {a.mean:.1%}, RAG {r.mean:.1%}; adapter - RAG {diff}")
        )
    rows.append(_lower_wins("latency p50", adapter, rag, adapter.latency_p50_s, rag.latency_p50_s, ".2f"))
    rows.append(_lower_wins("latency p95", adapter, rag, adapter.latency_p95_s, rag.latency_p95_s, ".2f"))
    rows.append(
        _lower_wins(
            "prompt tokens per request", adapter, rag, adapter.prompt_tokens, rag.prompt_tokens, ".0f"
        )
    )
    rows.append(
        _lower_wins("cost per 1k requests ($)", adapter, rag, adapter.usd_per_1k, rag.usd_per_1k, ".4f")
    )
    if economics is not None:
        training = f"${economics.training_usd:.4f}"
        evidence = f"RAG needs no training; the adapter's {training} is recovered {economics.payback()}"
        rows.append(Verdict("up-front cost", "rag", evidence))
    return rows


def summary(verdicts: list[Verdict]) -> str:
    """One line: what the adapter wins, what RAG wins."""
    wins = {who: [v.criterion for v in verdicts if v.winner == who] for who in ("candidate", "rag", "tie")}
    parts = [
        f"adapter wins {', '.join(wins['candidate']) or 'nothing'}",
        f"RAG wins {', '.join(wins['rag']) or 'nothing'}",
    ]
    if wins["tie"]:
        parts.append(f"no clear winner on {', '.join(wins['tie'])}")
    return "; ".join(parts)
