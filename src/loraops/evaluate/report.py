"""The evaluation report: one self-contained HTML page (PNG plots inline) per evaluated version.

What an engineer reads before moving an alias: the gate's verdict and each check, every metric of
base / RAG / champion / candidate with 95% intervals, the paired differences, forgetting per general
task, the training and validation loss curves, answers side by side, and the cost comparison with its
break-even. Logged to MLflow with the run; `loraops report VERSION` prints where it is.
"""

from __future__ import annotations

import base64
import io
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from loraops.evaluate.comparison import Approach, Verdict
from loraops.evaluate.economics import BreakEven
from loraops.evaluate.suite import EvalReport

ROLE_COLORS = {"base": "#8a8a8a", "rag": "#d08a2e", "champion": "#6a51a3", "candidate": "#2b7bba"}
PLOTTED_METRICS = ("task", "token_f1", "rouge_l", "format", "json_valid")


def _env() -> jinja2.Environment:
    def load(name: str) -> str:
        for package in ("loraops.evaluate", "loraops.data"):
            path = resources.files(package).joinpath("templates").joinpath(name)
            if path.is_file():
                return path.read_text("utf-8")
        raise jinja2.TemplateNotFound(name)

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(load), autoescape=True, trim_blocks=True, lstrip_blocks=True
    )
    env.filters["pct"] = lambda x: f"{100 * float(x):.1f}%"
    env.filters["num"] = lambda x: f"{float(x):+.3f}"
    return env


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metrics_plot(report: EvalReport) -> str:
    """Each metric, each model, with its interval."""
    plt = _pyplot()
    metrics = [
        m for m in PLOTTED_METRICS if any(m in report.task.runs[r].metric_names() for r in report.roles)
    ]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / max(len(report.roles), 1)
    for i, role in enumerate(report.roles):
        xs: list[float] = []
        ys: list[float] = []
        errs: list[list[float]] = [[], []]
        for j, metric in enumerate(metrics):
            est = report.task.estimate(role, metric)
            xs.append(j + (i - (len(report.roles) - 1) / 2) * width)
            ys.append(est.mean)
            errs[0].append(est.mean - est.low)
            errs[1].append(est.high - est.mean)
        ax.bar(xs, ys, width * 0.9, yerr=errs, capsize=3, color=ROLE_COLORS.get(role, "#444"), label=role)
    ax.set_xticks(range(len(metrics)), ["task score" if m == "task" else m for m in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean (95% interval)")
    ax.legend(ncol=len(report.roles), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return _png(fig)


def differences_plot(report: EvalReport) -> str:
    """Paired task-score differences of the candidate against each baseline."""
    plt = _pyplot()
    comparisons = report.comparisons()
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * max(len(comparisons), 1)))
    for y, (other, est) in enumerate(comparisons.items()):
        ax.errorbar(
            est.mean,
            y,
            xerr=[[est.mean - est.low], [est.high - est.mean]],
            fmt="o",
            capsize=4,
            color=ROLE_COLORS.get(other, "#444"),
        )
    ax.axvline(0, color="#999", lw=1)
    ax.set_yticks(range(len(comparisons)), [f"candidate - {o}" for o in comparisons])
    ax.set_xlabel("difference in task score, paired on the same examples (95% interval)")
    return _png(fig)


def forgetting_plot(report: EvalReport) -> str:
    plt = _pyplot()
    tasks = report.general.tasks
    fig, ax = plt.subplots(figsize=(8, 3))
    for i, role in enumerate(("base", "candidate")):
        ests = [report.general.score(role, t) for t in tasks]
        xs = [j + (i - 0.5) * 0.38 for j in range(len(tasks))]
        ax.bar(
            xs,
            [e.mean for e in ests],
            0.36,
            color=ROLE_COLORS[role],
            label=role,
            yerr=[[e.mean - e.low for e in ests], [e.high - e.mean for e in ests]],
            capsize=3,
        )
    ax.set_xticks(range(len(tasks)), [t.removeprefix("loraops_general_") for t in tasks], rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (95% interval)")
    ax.legend(fontsize=8)
    return _png(fig)


def loss_plot(history: list[dict[str, float]]) -> str | None:
    train = [(h.get("epoch", i), h["loss"]) for i, h in enumerate(history) if "loss" in h]
    val = [(h.get("epoch", i), h["eval_loss"]) for i, h in enumerate(history) if "eval_loss" in h]
    if not train and not val:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3))
    if train:
        ax.plot(*zip(*train, strict=True), lw=1, color="#2b7bba", label="training loss")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", color="#d62728", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return _png(fig)


def render_report(
    report: EvalReport,
    *,
    title: str,
    decision: dict[str, Any],
    history: list[dict[str, float]],
    economics: BreakEven | None,
    links: dict[str, str],
    train_summary: dict[str, Any],
    approaches: list[Approach] | None = None,
    verdicts: list[Verdict] | None = None,
    concurrency: int = 8,
) -> str:
    """The HTML page (self-contained: plots inline as PNG)."""
    rows = []
    for role in report.roles:
        run = report.task.runs[role]
        rows.append(
            {
                "role": role,
                "model": run.model,
                "metrics": {m: report.task.estimate(role, m) for m in run.metric_names()},
                "tokens": run.mean_tokens(),
            }
        )
    metric_names = [m for m in report.task.runs["candidate"].metric_names()]
    samples = []
    for i in range(min(report.samples, len(report.task.questions))):
        samples.append(
            {
                "question": report.task.questions[i],
                "reference": report.task.references[i],
                "answers": {r: report.task.runs[r].answers[i] for r in report.roles},
                "right": {r: report.task.runs[r].scores[i].get("task", 0.0) for r in report.roles},
            }
        )
    forgetting = [
        {
            "task": t,
            "base": report.general.score("base", t),
            "candidate": report.general.score("candidate", t),
            "drop": report.general.drop(t),
        }
        for t in report.general.tasks
    ]
    return (
        _env()
        .get_template("evaluation.html.jinja")
        .render(
            title=title,
            decision=decision,
            rows=rows,
            metric_names=metric_names,
            comparisons=report.comparisons(),
            forgetting=forgetting,
            overall_drop=report.general.drop(),
            samples=samples,
            roles=report.roles,
            economics=economics,
            approaches=approaches or [],
            verdicts=verdicts or [],
            concurrency=concurrency,
            links=links,
            train=train_summary,
            plots={
                "metrics": metrics_plot(report),
                "differences": differences_plot(report),
                "forgetting": forgetting_plot(report),
                "loss": loss_plot(history),
            },
            champion_version=report.champion_version,
            level=report.task.bootstrap.level,
        )
    )


def write_report(html: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
