"""Fine-tune vs RAG vs base: the measured table and who wins what (evaluate.comparison)."""

from __future__ import annotations

import math

from loraops.evaluate.comparison import approaches, decision_table, percentile, summary
from loraops.evaluate.economics import BreakEven, CostParams, break_even
from loraops.evaluate.report import render_report
from loraops.evaluate.suite import EvalReport, GeneralEvaluation, ModelAnswers, TaskEvaluation

PRICES = CostParams(usd_per_1m_prompt_tokens=1.0, usd_per_1m_completion_tokens=2.0, requests_per_day=1000)


def _run(role: str, right: list[int], prompt: int, latencies: list[float]) -> ModelAnswers:
    n = len(right)
    return ModelAnswers(
        role=role,
        model=role,
        answers=["a"] * n,
        scores=[{"task": float(r), "format": 1.0} for r in right],
        prompt_tokens=[prompt] * n,
        completion_tokens=[20] * n,
        latencies_s=latencies,
    )


def _report(adapter_right: list[int], rag_right: list[int]) -> EvalReport:
    n = len(adapter_right)
    runs = {
        "base": _run("base", [0] * n, 60, [1.0] * n),
        "rag": _run("rag", rag_right, 260, [2.0 + i / n for i in range(n)]),
        "candidate": _run("candidate", adapter_right, 60, [0.5 + i / n for i in range(n)]),
    }
    return EvalReport(
        TaskEvaluation(["q"] * n, ["r"] * n, runs), GeneralEvaluation({"t": [1.0]}, {"t": [1.0]})
    )


def _economics(report: EvalReport) -> BreakEven:
    return break_even(
        training_usd=0.01,
        adapter_tokens=report.task.runs["candidate"].mean_tokens(),
        rag_tokens=report.task.runs["rag"].mean_tokens(),
        prices=PRICES,
    )


def test_percentiles_interpolate_between_order_statistics() -> None:
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([0.0, 10.0], 0.95) == 9.5
    assert math.isnan(percentile([], 0.5))


def test_each_approach_gets_its_quality_tokens_latency_and_price() -> None:
    measured = {a.role: a for a in approaches(_report([1] * 40, [1, 0] * 20), PRICES)}
    assert list(measured) == ["base", "rag", "candidate"]
    rag, adapter = measured["rag"], measured["candidate"]
    assert adapter.quality.mean == 1.0 and rag.quality.mean == 0.5 and rag.quality.n == 40
    assert rag.prompt_tokens == 260 and adapter.prompt_tokens == 60
    assert adapter.latency_p50_s < adapter.latency_p95_s < rag.latency_p50_s
    assert math.isclose(rag.usd_per_1k, 1000 * (260 * 1.0 + 20 * 2.0) / 1e6)


def test_the_decision_table_names_the_winner_of_each_criterion_from_the_figures() -> None:
    report = _report([1] * 40, [1, 0] * 20)
    economics = _economics(report)
    verdicts = {v.criterion: v for v in decision_table(report, PRICES, economics)}
    assert verdicts["task quality"].winner == "candidate"  # +50 points, interval above 0
    assert verdicts["format compliance"].winner == "tie"  # both 100%
    assert verdicts["latency p50"].winner == "candidate" and "x)" in verdicts["latency p50"].evidence
    assert verdicts["prompt tokens per request"].winner == "candidate"
    assert verdicts["cost per 1k requests ($)"].winner == "candidate"
    assert (
        verdicts["up-front cost"].winner == "rag"
        and economics.payback() in verdicts["up-front cost"].evidence
    )
    line = summary(list(verdicts.values()))
    assert line.startswith("adapter wins task quality, latency p50") and "RAG wins up-front cost" in line


def test_rag_wins_quality_when_the_adapter_is_clearly_worse() -> None:
    verdicts = {v.criterion: v for v in decision_table(_report([1, 0, 0, 0] * 10, [1] * 40), PRICES, None)}
    assert verdicts["task quality"].winner == "rag"
    assert "up-front cost" not in verdicts  # no break-even without the economics


def test_no_table_without_a_rag_baseline() -> None:
    report = _report([1] * 10, [1] * 10)
    del report.task.runs["rag"]
    assert decision_table(report, PRICES, None) == []
    assert [a.role for a in approaches(report, PRICES)] == ["base", "candidate"]


def test_the_report_shows_the_measured_table_and_who_wins_what() -> None:
    report = _report([1] * 40, [1, 0] * 20)
    economics = _economics(report)
    measured = approaches(report, PRICES)
    html = render_report(
        report,
        title="m version 1",
        decision={"passed": True, "checks": [], "summary": "gate PASS"},
        history=[],
        economics=economics,
        links={},
        train_summary={},
        approaches=measured,
        verdicts=decision_table(report, PRICES, economics),
        concurrency=8,
    )
    assert "Fine-tune vs RAG vs the base model" in html and "Which approach wins on what" in html
    adapter = next(a for a in measured if a.role == "candidate")
    assert f"{adapter.latency_p95_s:.2f}" in html and "fine-tuned adapter" in html
    assert "with 8 requests in flight" in html and economics.payback() in html
