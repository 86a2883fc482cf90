"""The retrain flow: one pass of the loop, wiring only (the logic lives in src/loraops/<stage>/).

Steps:
 0. preflight  base model and tokenizer loadable, CUDA where the settings need it, LoRA targets vLLM
               can serve: one line each, before any side effect
 1. prepare    validate, quality-check and split the raw data (fails loudly on bad data)
 2. version    track the prepared data with DVC and push it to the remote
 3. train      render the Axolotl config (preset + params.yaml) and train the adapter with the launcher
               of train.launcher: local (resumable from checkpoints) or a SageMaker training job
 4. register   log the run to MLflow and register the adapter as a new model version
 5. evaluate   through the running vLLM server: candidate vs base, RAG (BM25) and the champion (from
               the registry alias) on the test split, every score per example with bootstrap intervals;
               forgetting of the general tasks with lm-evaluation-harness
 6. gate       pure decision on interval bounds (gain, non-inferiority, forgetting, overfitting, review)
 7. report     HTML report with plots, evaluation.json and examples.jsonl on the run; the decision on
               the model version (tags, description)
 8. promote    on pass, move the champion alias (or challenger, with gate.auto_promote: false); the alias
               sync hook makes vLLM serve the new adapter under the stable name without a restart

The `evaluate` flow runs steps 5-8 for a version that is already registered.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from loraops.basemodel.build import resolve_base_model
from loraops.basemodel.skills import training_corpus
from loraops.config import Params, load_params
from loraops.data.prepare import PrepareResult, prepare
from loraops.data.versioning import DataVersion, version_data
from loraops.envs import repo_root
from loraops.errors import ConfigError
from loraops.evaluate.economics import BreakEven, break_even
from loraops.evaluate.procedure import (
    canary_from_evaluation,
    evaluate_version,
    general_tasks,
    summary_line,
)
from loraops.evaluate.report import render_report, write_report
from loraops.evaluate.runner import CompletionClient
from loraops.evaluate.suite import EvalReport, read_jsonl
from loraops.gate.decision import GateDecision, decide, gate_inputs
from loraops.gate.judge import RUN_TAG, TrainingFacts
from loraops.gate.promote import apply_decision
from loraops.gate.record import record_decision
from loraops.loop.rules import lineage_tags, replay_records
from loraops.registry.tracking import MetricStream, ModelVersionInfo, Registry, RunHandle
from loraops.serving.policy import CANARY_TAG
from loraops.stack.local import StackUrls, serving_credentials, stack_urls, vllm_client
from loraops.train.preflight import check_training
from loraops.train.render import parse_metrics_line
from loraops.train.run import TrainResult, launcher_for, train_adapter
from loraops.train.settings import effective_sequence_len, effective_settings
from loraops.vcs import git_commit
from loraops.workspace import Workspace


@task(name="preflight", cache_policy=NO_CACHE)
def preflight_task(ws: Workspace, params: Params, base_model: str, evaluate: bool) -> None:
    for line in check_training(
        ws.root, params.train, base_model=base_model, max_lora_rank=params.serving.max_lora_rank
    ):
        get_run_logger().info("preflight: %s", line)
    if evaluate:  # the forgetting tasks must exist before hours of training, not after
        tasks, _ = general_tasks(params, params.base_model.source == "build", ws.runs / "preflight")
        get_run_logger().info("preflight: forgetting measured on %s", ", ".join(tasks))


@task(name="prepare-data", cache_policy=NO_CACHE)
def prepare_task(ws: Workspace, params: Params, base_model: str) -> PrepareResult:
    tokenizer_dir = Path(base_model) if Path(base_model).is_dir() else None
    sequence_len = effective_sequence_len(ws.root, params.train)
    result = prepare(ws, params.data, tokenizer_dir=tokenizer_dir, sequence_len=sequence_len)
    get_run_logger().info("prepared data: %s", result.summary())
    return result


@task(name="version-data", cache_policy=NO_CACHE)
def version_task(ws: Workspace, params: Params) -> DataVersion:
    version = version_data(ws, params.data)
    get_run_logger().info("data version %s", version.tag())
    return version


@task(name="train-adapter", cache_policy=NO_CACHE)
def train_task(
    ws: Workspace,
    params: Params,
    base_model: str,
    prepared: PrepareResult,
    run_dir: Path,
    run: RunHandle,
) -> TrainResult:
    logger = get_run_logger()
    metrics = MetricStream(run)

    remote = params.train.launcher != "local"

    def show(line: str) -> None:
        if line.startswith("[loraops]"):
            logger.info(line.removeprefix("[loraops] "))
            return
        parsed = parse_metrics_line(line)
        if remote and parsed is None and line.strip() and "it/s]" not in line and "%|" not in line:
            logger.info("[job] %s", line)  # the job's CloudWatch log, without progress bars
            return
        if parsed and "loss" in parsed:
            if metrics.step % 10 == 1:
                logger.info(
                    "train step %d epoch %.2f loss %.4f",
                    metrics.step,
                    parsed.get("epoch", 0.0),
                    parsed["loss"],
                )
        elif parsed and "eval_loss" in parsed:
            logger.info("val   epoch %.2f loss %.4f", parsed.get("epoch", 0.0), parsed["eval_loss"])

    replay_file = params.train.replay_file
    replay = replay_records(
        params.train.replay_fraction,
        prepared.counts.get("train", 0),
        params.train.seed,
        pool=lambda: (
            read_jsonl(ws.root / replay_file) if replay_file else training_corpus(params.base_model.recipe)
        ),
    )
    if replay:
        logger.info("replaying %d general examples against forgetting", len(replay))
    launcher = launcher_for(
        ws.root, params.train, data_remote=params.data.remote, model_name=params.registry.model_name
    )
    logger.info("training with the %s launcher (%s data)", launcher.name, prepared.format)
    try:
        result = train_adapter(
            ws.root,
            params.train,
            base_model=base_model,
            train_file=prepared.files["train"],
            val_file=prepared.files["val"],
            run_dir=run_dir,
            replay_records=replay,
            on_line=show,
            on_metrics=metrics.add,
            data_format=prepared.format,
            launcher=launcher,
        )
    finally:
        metrics.flush()
    warning = result.overfitting_warning()
    if warning:
        logger.warning(warning)
    cost = f"; cost {result.cost.summary()}" if result.cost else ""
    logger.info("trained in %.0f s%s; adapter at %s", result.duration_s, cost, result.adapter_dir)
    return result


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    ws: Workspace,
    params: Params,
    registry: Registry,
    version: ModelVersionInfo,
    prepared: PrepareResult,
    base_model: str,
    run_dir: Path,
) -> EvalReport:
    logger = get_run_logger()
    urls = stack_urls(params)
    server = vllm_client(ws, params)
    report = evaluate_version(
        server=server,
        client=CompletionClient(
            urls.replica,
            timeout_s=params.evaluate.request_timeout_s,
            concurrency=params.evaluate.concurrency,
            api_key=server.api_key,
        ),
        registry=registry,
        params=params,
        version=version,
        files=prepared.files,
        base_model=base_model,
        work_dir=run_dir / "evaluation",
        cache_dir=ws.cache / "lm_eval",
        on_progress=logger.info,
    )
    logger.info(summary_line(report))
    return report


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(params: Params, report: EvalReport, facts: TrainingFacts) -> GateDecision:
    logger = get_run_logger()
    decision = decide(gate_inputs(report, facts.history), params.gate)
    for check in decision.checks:
        logger.info(check.line())
    logger.info(decision.summary())
    return decision


@task(name="report", cache_policy=NO_CACHE)
def report_task(
    params: Params,
    run: RunHandle,
    version: ModelVersionInfo,
    report: EvalReport,
    decision: GateDecision,
    facts: TrainingFacts,
    links: dict[str, str],
    out_dir: Path,
) -> tuple[Path, BreakEven | None]:
    """evaluation.json, examples.jsonl (per example and model), report.html: logged to the run."""
    economics = None
    if "rag" in report.task.runs:
        economics = break_even(
            training_usd=facts.cost_usd,
            adapter_tokens=report.task.runs["candidate"].mean_tokens(),
            rag_tokens=report.task.runs["rag"].mean_tokens(),
            prices=params.cost,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluation = {
        "report": report.to_json(),
        "gate": decision.to_json(),
        "economics": economics.to_json() if economics else None,
        "history": facts.history,
    }
    (out_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=1, default=str))
    with (out_dir / "examples.jsonl").open("w", encoding="utf-8") as fh:
        for row in report.example_rows():
            fh.write(json.dumps(row) + "\n")
    html = render_report(
        report,
        title=f"{version.name} version {version.version}",
        decision=decision.to_json(),
        history=facts.history,
        economics=economics,
        links=links,
        train_summary=facts.summary,
    )
    path = write_report(html, out_dir / "report.html")
    run.log_artifacts(out_dir, "evaluation")
    get_run_logger().info("report: %s", path)
    return path, economics


@flow(name="retrain", log_prints=True)
def retrain(
    workspace: str | None = None,
    skip_if_unchanged: bool = False,
    launcher: str | None = None,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Prepare, version, train, register, evaluate, gate and (on pass) promote one adapter.

    With ``skip_if_unchanged`` (scheduled runs), stop after versioning when a registered version was
    already trained on exactly this data version. ``launcher`` overrides train.launcher for this run;
    with ``evaluate=False`` the run ends once the adapter is registered (`loraops train`).
    """
    logger = get_run_logger()
    ws = Workspace.from_env(workspace)
    ws.ensure()
    params = with_launcher(load_params(ws.params_file), launcher)
    urls = stack_urls(params)
    base_model = resolve_base_model(params.base_model.source, params.base_model.recipe, ws.models)
    settings = effective_settings(ws.root, params.train)

    preflight_task(ws, params, base_model, evaluate)
    prepared = prepare_task(ws, params, base_model)
    data_version = version_task(ws, params)

    registry = Registry(urls.mlflow, params.registry)
    if skip_if_unchanged and prepared.unchanged:
        trained_on = [v for v in registry.versions() if v.tags.get("data_version") == data_version.tag()]
        if trained_on:
            logger.info(
                "data unchanged since version %s was trained on it: nothing to do", trained_on[0].version
            )
            return {"skipped": True, "version": trained_on[0].version, "data_version": data_version.tag()}

    run_dir = ws.runs / time.strftime("%Y%m%d-%H%M%S")
    lineage = lineage_tags(
        data_version,
        workspace_commit=git_commit(ws.root),
        code_commit=git_commit(repo_root()),
        base_model_source=params.base_model.source,
        base_model_path=base_model,
        base_model_name=params.base_model.name(),
    )
    with registry.run(run_name=f"retrain-{run_dir.name}", tags=lineage) as run:
        run.log_params(params.train.model_dump(mode="json", exclude={"overrides", "sagemaker"}))
        run.log_params({"data.train_examples": prepared.counts.get("train", 0)})
        run.log_params({f"effective.{k}": v for k, v in settings.described().items()})
        trained = train_task(ws, params, base_model, prepared, run_dir, run)
        run.log_metrics(trained.final_metrics)
        run.set_tags(trained.run_tags())
        run.log_artifacts(trained.adapter_dir, "adapter")
        run.log_artifact(trained.config_path, "axolotl")
        for report_file in prepared.report_paths():
            run.log_artifact(report_file, "data-report")
        if trained.log_file.is_file():
            run.log_artifact(trained.log_file, "train-log")
        job_file = run_dir / "training-job.json"
        if job_file.is_file():
            run.log_artifact(job_file, "train-log")
        version = registry.register_adapter(
            run.run_id,
            "adapter",
            tags={**lineage, **trained.run_tags()},
            served_on=params.base_model.name(),  # the stack of this base model serves it
        )
        logger.info("registered %s version %s", version.name, version.version)
        trained_summary = {
            "launcher": trained.launcher,
            "cost": trained.cost.summary() if trained.cost else None,
            "cost_usd": trained.cost.usd if trained.cost else None,
            "resumed_from_step": trained.resumed_from_step,
            "duration_s": trained.duration_s,
            **{k: v for k, v in trained.details.items() if isinstance(v, str | int | float | bool)},
        }
        registered = {
            "model_name": version.name,
            "version": version.version,
            "run_id": run.run_id,
            "run_url": registry.run_url(run.run_id),
            "version_url": registry.version_url(version.version),
            "data_version": data_version.tag(),
            "lineage": lineage,
            "trained": trained_summary,
        }
        if not evaluate:
            return registered

        judged = judge_version(
            ws, params, registry, run, version, prepared, base_model, run_dir, TrainingFacts.of(trained)
        )

    return {**registered, **judged}


def judge_version(
    ws: Workspace,
    params: Params,
    registry: Registry,
    run: RunHandle,
    version: ModelVersionInfo,
    prepared: PrepareResult,
    base_model: str,
    run_dir: Path,
    facts: TrainingFacts,
) -> dict[str, Any]:
    """evaluate -> gate -> report -> record on the version -> promote (on pass): the flows' common end."""
    logger = get_run_logger()
    urls = stack_urls(params)
    report = evaluate_task(ws, params, registry, version, prepared, base_model, run_dir)
    run.log_metrics(report.metrics())
    decision = gate_task(params, report, facts)
    links = {"run": registry.run_url(run.run_id), "version": registry.version_url(version.version)}
    report_path, economics = report_task(
        params, run, version, report, decision, facts, links, run_dir / "evaluation-files"
    )
    if economics is not None:
        run.log_metrics({"economics.break_even_days": min(economics.days, 1e9)})
        logger.info("cost: %s", economics.statement())
    record_decision(
        registry,
        version.version,
        decision,
        report,
        report_uri=run.artifact_uri("evaluation/report.html"),
        cost=facts.cost_summary,
    )
    canary = canary_from_evaluation(report, prepared.files["test"], params.evaluate)
    registry.tag_version(
        version.version,
        {"report.local": str(report_path), RUN_TAG: run.run_id, CANARY_TAG: canary.to_tag()},
    )
    token = serving_credentials(ws, params).admin_token
    alias, served = promote_task(registry, params, version, decision, urls, token)
    return {
        "gate": decision.to_json(),
        "gate_summary": decision.summary(),
        "gate_lines": [c.line() for c in decision.checks],
        "promoted": alias == params.registry.champion_alias,
        "alias": alias,
        "served_path": served,
        "scores": report.metrics(),
        "report": str(report_path),
        "economics": economics.statement() if economics else None,
    }


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(
    registry: Registry,
    params: Params,
    version: ModelVersionInfo,
    decision: GateDecision,
    urls: StackUrls,
    token: str,
) -> tuple[str | None, str | None]:
    logger = get_run_logger()
    alias, served = apply_decision(registry, params, version, decision.passed, urls, token)
    if alias == params.registry.champion_alias:
        logger.info("%s now serves version %s", params.registry.model_name, version.version)
    elif alias is not None:
        logger.info("version %s passed: alias %s (gate.auto_promote is off)", version.version, alias)
    else:
        logger.info("version %s was not promoted: %s", version.version, decision.summary())
    return alias, served


@flow(name="evaluate", log_prints=True)
def evaluate(workspace: str | None = None, version: str = "") -> dict[str, Any]:
    """Evaluate, gate and (on pass) promote an already registered version, on the current test split:
    a version registered from outside loraops, or a re-run after the data or the thresholds changed."""
    ws = Workspace.from_env(workspace)
    ws.ensure()
    params = load_params(ws.params_file)
    urls = stack_urls(params)
    base_model = resolve_base_model(params.base_model.source, params.base_model.recipe, ws.models)
    prepared = prepare_task(ws, params, base_model)
    registry = Registry(urls.mlflow, params.registry)
    info = registry.get_version(version)
    facts = TrainingFacts.from_run(registry, info.run_id)
    run_dir = ws.runs / f"evaluate-v{info.version}-{time.strftime('%Y%m%d-%H%M%S')}"
    with registry.run(run_name=f"evaluate-v{info.version}", tags={"evaluated_version": info.version}) as run:
        judged = judge_version(ws, params, registry, run, info, prepared, base_model, run_dir, facts)
    return {
        "model_name": info.name,
        "version": info.version,
        "run_id": run.run_id,
        "run_url": registry.run_url(run.run_id),
        "version_url": registry.version_url(info.version),
        **judged,
    }


def with_launcher(params: Params, launcher: str | None) -> Params:
    """params with train.launcher replaced for one run (`loraops train --launcher ...`)."""
    if launcher is None or launcher == params.train.launcher:
        return params
    if launcher not in ("local", "sagemaker"):
        raise ConfigError(f"unknown launcher {launcher!r}", hint="use local or sagemaker")
    if launcher == "sagemaker" and params.train.sagemaker is None:
        raise ConfigError(
            "--launcher sagemaker needs a train.sagemaker section in params.yaml",
            hint="add role_arn, image_uri and s3_prefix (see README: training on SageMaker)",
        )
    train = params.train.model_copy(update={"launcher": launcher})
    return params.model_copy(update={"train": train})
