"""Recording a gate decision where an engineer looks: on the MLflow model version (tags, description)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loraops.gate.decision import GateDecision

if TYPE_CHECKING:
    from loraops.evaluate.suite import EvalReport
    from loraops.registry.tracking import Registry


def gate_tag(decision: GateDecision) -> str:
    """The version's `gate` tag: passed, failed or awaiting-review."""
    if decision.passed:
        return "passed"
    return "awaiting-review" if decision.awaiting_review else "failed"


def version_tags(decision: GateDecision, report_uri: str | None) -> dict[str, str]:
    tags = {"gate": gate_tag(decision), "gate.summary": decision.summary()[:5000]}
    for check in decision.checks:
        state = "ok" if check.passed else ("warn" if check.severity == "warn" else "fail")
        tags[f"gate.check.{check.name}"] = (
            f"{state} {check.value:+.3f} {check.direction} {check.threshold:+.3f}"
        )
    if report_uri:
        tags["report"] = report_uri
    return tags


def describe(decision: GateDecision, report: EvalReport, *, report_uri: str | None, cost: str | None) -> str:
    """The version description (Markdown, shown on the MLflow version page)."""
    task = report.task
    lines = [f"**Gate {decision.verdict}**: {decision.summary().split(': ', 1)[1]}", ""]
    lines.append("| model | task score (95% interval) |")
    lines.append("| --- | --- |")
    for role in report.roles:
        est = task.estimate(role)
        lines.append(f"| {role} ({task.runs[role].model}) | {est.mean:.3f} [{est.low:.3f}, {est.high:.3f}] |")
    lines.append("")
    for other, est in report.comparisons().items():
        lines.append(f"- candidate - {other}: {est.mean:+.3f} [{est.low:+.3f}, {est.high:+.3f}] (paired)")
    drop = report.general.drop()
    lines.append(f"- general skills drop: {drop.mean:+.3f} [{drop.low:+.3f}, {drop.high:+.3f}]")
    for check in decision.checks:
        if not check.passed:
            lines.append(f"- {'FAIL' if check.severity == 'fail' else 'warn'} {check.name}: {check.detail}")
    if cost:
        lines.append(f"- training cost: {cost}")
    if report_uri:
        lines.append(f"- report: {report_uri} (`loraops report VERSION` prints its local path)")
    return "\n".join(lines)


def record_decision(
    registry: Registry,
    version: str,
    decision: GateDecision,
    report: EvalReport,
    *,
    report_uri: str | None,
    cost: str | None,
) -> None:
    """Tags and description of the version say the verdict, the checks and where the report is."""
    registry.tag_version(version, version_tags(decision, report_uri))
    registry.set_version_description(version, describe(decision, report, report_uri=report_uri, cost=cost))
