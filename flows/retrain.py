"""The retrain flow: one pass of the loop, wiring only (the order and the rules live in
loraops.loop.pipeline, each step's logic in src/loraops/<stage>/).

Steps, each a Prefect task (the run's graph in the Prefect UI shows all of them):
 0. preflight  the services the run needs answer (MLflow, vLLM, the alias sync hook); base model and
               tokenizer loadable, CUDA where the settings need it, LoRA targets vLLM can serve
 1. prepare    validate, quality-check and split the raw data (fails loudly on bad data), when DVC says
               the `prepare` stage of dvc.yaml is stale
 2. version    track the prepared data with DVC and push it to the remote
 3. champion   the version the champion alias points at, and the data it was trained on: unchanged data
               ends the run here as skipped (unless forced)
 4. train      render the Axolotl config (preset + params.yaml) and train with the launcher of
               train.launcher (local, resumable from checkpoints, or a SageMaker job); logged to MLflow
 5. register   the adapter becomes a new version of the registered model, with its lineage
 6. evaluate   through the running vLLM server: candidate vs base, RAG (BM25) and the champion on the
               test split, with bootstrap intervals; forgetting of the general tasks (lm-evaluation-harness)
 7. gate       pure decision on interval bounds (gain, non-inferiority, forgetting, overfitting, review)
 8. report     HTML report with plots, evaluation.json and examples.jsonl on the run
 9. record     the decision on the model version (tags, description), the serving canary
10. promote    on pass, move the champion alias (or challenger, with gate.auto_promote: false); the alias
               sync hook makes vLLM serve the new adapter under the stable name without a restart

Unattended rules: one retrain per registered model at a time (a Prefect global concurrency limit;
schedule.on_overlap says whether a second trigger waits or is skipped); steps that talk to services are
retried with backoff after transient errors only (loraops.loop.rules.is_transient); train and register
are cached on data version + params + code, so a rerun after a failure later on (evaluation, say)
resumes there without training again (`--force` refreshes them); a failed or refused run is notified
(params.yaml `notify:`).

The `evaluate` flow runs steps 6-10 for a version that is already registered.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from loraops.basemodel.skills import training_corpus
from loraops.config import Params, load_params
from loraops.data.prepare import PrepareResult
from loraops.data.versioning import DataVersion, prepare_data, version_data
from loraops.envs import repo_root
from loraops.errors import ConfigError, StackError
from loraops.evaluate.comparison import approaches, decision_table
from loraops.evaluate.comparison import summary as comparison_summary
from loraops.evaluate.economics import break_even
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
from loraops.loop.pipeline import (
    Champion,
    Registered,
    ReportFiles,
    RetrainOutcome,
    Trained,
    judge,
    run_retrain,
)
from loraops.loop.rules import (
    is_transient,
    lineage_tags,
    replay_records,
    services_needed,
    unreachable,
)
from loraops.loop.runlog import training_log
from loraops.notify import Notice, notify
from loraops.registry.tracking import MetricStream, Registry
from loraops.services import http_ok
from loraops.serving.policy import CANARY_TAG
from loraops.serving.vllm import VllmClient
from loraops.stack.local import serving_credentials, stack_urls, vllm_client
from loraops.train.preflight import check_training
from loraops.train.run import launcher_for, train_adapter
from loraops.train.self_replay import base_answers_replay
from loraops.train.settings import effective_sequence_len, effective_settings
from loraops.vcs import git_commit
from loraops.workspace import Workspace


@dataclass(frozen=True)
class Context:
    """What every step of one run works with."""

    ws: Workspace
    params: Params
    base_model: str
    registry: Registry


def _retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    return is_transient(state.result(raise_on_failure=False))


def code_fingerprint(ws: Workspace) -> str:
    """Hash of the code and presets a training depends on: loraops' sources and the workspace's
    axolotl_configs (a commit alone misses uncommitted edits)."""
    digest = hashlib.sha256()
    package = repo_root() / "src" / "loraops"
    for root in (package, ws.root / "axolotl_configs"):
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".yaml", ".yml", ".jinja") and path.is_file():
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _training_key(context: TaskRunContext, arguments: dict[str, Any]) -> str:
    """Same workspace, data version, training params, base model, code and MLflow: same adapter."""
    ctx: Context = arguments["ctx"]
    data: DataVersion = arguments["data"]
    parts = [
        str(ctx.ws.root),
        data.dvc_hash,
        ctx.params.train.model_dump_json(),
        ctx.params.base_model.model_dump_json(),
        ctx.registry.tracking_uri,
        ctx.params.registry.model_name,
        code_fingerprint(ctx.ws),
    ]
    trained: Trained | None = arguments.get("trained")
    if trained is not None:
        parts.append(trained.run_id)
    return f"{context.task.name}-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


@task(name="preflight", cache_policy=NO_CACHE)
def preflight_task(ctx: Context, evaluate: bool) -> None:
    logger = get_run_logger()
    params = ctx.params
    urls = stack_urls(params)
    needed = services_needed(
        urls.mlflow, urls.server, urls.sync, evaluate=evaluate, promotes=params.gate.auto_promote
    )
    down = unreachable(needed, lambda url: http_ok(url, timeout=5))
    if down:
        raise StackError(
            f"not reachable: {', '.join(down)}; nothing was changed",
            hint="start the stack with `loraops up` (or fix stack.* in params.yaml) and run again",
        )
    logger.info("preflight: %s answer", ", ".join(needed) or "no services needed")
    for line in check_training(
        ctx.ws.root, params.train, base_model=ctx.base_model, max_lora_rank=params.serving.max_lora_rank
    ):
        logger.info("preflight: %s", line)
    if evaluate:  # the forgetting tasks must exist before hours of training, not after
        tasks, _ = general_tasks(params, params.base_model.source == "build", ctx.ws.runs / "preflight")
        logger.info("preflight: forgetting measured on %s", ", ".join(tasks))


@task(name="prepare-data", cache_policy=NO_CACHE)
def prepare_task(ctx: Context) -> PrepareResult:
    """Prepare only when DVC says the `prepare` stage of dvc.yaml is stale (`dvc status`)."""
    tokenizer_dir = Path(ctx.base_model) if Path(ctx.base_model).is_dir() else None
    sequence_len = effective_sequence_len(ctx.ws.root, ctx.params.train)
    result = prepare_data(ctx.ws, ctx.params.data, tokenizer_dir=tokenizer_dir, sequence_len=sequence_len)
    get_run_logger().info("prepared data: %s", result.summary())
    return result


@task(name="version-data", cache_policy=NO_CACHE)
def version_task(ctx: Context) -> DataVersion:
    version = version_data(ctx.ws, ctx.params.data)
    get_run_logger().info("data version %s", version.tag())
    return version


@task(name="champion", cache_policy=NO_CACHE)
def champion_task(ctx: Context) -> Champion | None:
    found = ctx.registry.champion()
    if found is None:
        registry = ctx.params.registry
        get_run_logger().info(
            "no champion yet (%s@%s is not set)", registry.model_name, registry.champion_alias
        )
        return None
    get_run_logger().info("champion: version %s (data %s)", found.version, found.tags.get("data_version"))
    return found.version, dict(found.tags)


def _completion_client(ctx: Context, server: VllmClient) -> CompletionClient:
    """The evaluation client on the stack's server, with params' timeout and concurrency."""
    evaluate = ctx.params.evaluate
    return CompletionClient(
        stack_urls(ctx.params).replica,
        timeout_s=evaluate.request_timeout_s,
        concurrency=evaluate.concurrency,
        api_key=server.api_key,
    )


def _self_replay(ctx: Context, count: int) -> list[dict[str, Any]]:
    """The served base model's own answers to general instructions (train/self_replay.py)."""
    client = _completion_client(ctx, vllm_client(ctx.ws, ctx.params))
    base_name = ctx.params.base_model.name()
    get_run_logger().info("replay: asking %s for its own answers to general instructions", base_name)
    return base_answers_replay(
        lambda chats, max_tokens: client.complete_many(base_name, chats, max_tokens),
        count=count,
        base_model=ctx.base_model,
        cache_dir=ctx.ws.cache / "replay",
        seed=ctx.params.train.seed,
    )


@task(name="train-adapter", cache_key_fn=_training_key, persist_result=True)
def train_task(ctx: Context, prepared: PrepareResult, data: DataVersion) -> Trained:
    """Train on one MLflow run (params, per-step metrics, adapter, config, logs logged to it)."""
    logger = get_run_logger()
    ws, params = ctx.ws, ctx.params
    run_dir = ws.runs / time.strftime("%Y%m%d-%H%M%S")
    lineage = _lineage(ctx, data)
    replay_file = params.train.replay_file
    train_count = prepared.counts.get("train", 0)

    def replay_pool() -> list[dict[str, Any]]:
        if replay_file:
            return read_jsonl(ws.root / replay_file)
        if params.base_model.source == "build":
            return training_corpus(params.base_model.recipe)
        return _self_replay(ctx, round(params.train.replay_fraction * train_count))

    replay = replay_records(params.train.replay_fraction, train_count, params.train.seed, pool=replay_pool)
    if replay:
        logger.info("replaying %d general examples against forgetting", len(replay))
    launcher = launcher_for(
        ws.root, params.train, data_remote=params.data.remote, model_name=params.registry.model_name
    )
    logger.info("training with the %s launcher (%s data)", launcher.name, prepared.format)
    with ctx.registry.run(run_name=f"retrain-{run_dir.name}", tags=lineage) as run:
        run.log_params(params.train.model_dump(mode="json", exclude={"overrides", "sagemaker"}))
        run.log_params({"data.train_examples": prepared.counts.get("train", 0)})
        settings = effective_settings(ws.root, params.train)
        run.log_params({f"effective.{k}": v for k, v in settings.described().items()})
        metrics = MetricStream(run)
        try:
            result = train_adapter(
                ws.root,
                params.train,
                base_model=ctx.base_model,
                train_file=prepared.files["train"],
                val_file=prepared.files["val"],
                run_dir=run_dir,
                replay_records=replay,
                on_line=training_log(
                    logger.info, lambda: metrics.step, remote=params.train.launcher != "local"
                ),
                on_metrics=metrics.add,
                data_format=prepared.format,
                launcher=launcher,
            )
        finally:
            metrics.flush()
        run.log_metrics(result.final_metrics)
        run.set_tags(result.run_tags())
        run.log_artifacts(result.adapter_dir, "adapter")
        run.log_artifact(result.config_path, "axolotl")
        for report_file in prepared.report_paths():
            run.log_artifact(report_file, "data-report")
        if result.log_file.is_file():
            run.log_artifact(result.log_file, "train-log")
        if (run_dir / "training-job.json").is_file():
            run.log_artifact(run_dir / "training-job.json", "train-log")
    warning = result.overfitting_warning()
    if warning:
        logger.warning(warning)
    cost = f"; cost {result.cost.summary()}" if result.cost else ""
    logger.info("trained in %.0f s%s; adapter at %s", result.duration_s, cost, result.adapter_dir)
    return Trained(result, run.run_id)


def _lineage(ctx: Context, data: DataVersion) -> dict[str, str]:
    return lineage_tags(
        data,
        workspace_commit=git_commit(ctx.ws.root),
        code_commit=git_commit(repo_root()),
        base_model_source=ctx.params.base_model.source,
        base_model_path=ctx.base_model,
        base_model_name=ctx.params.base_model.name(),
    )


@task(name="register", cache_key_fn=_training_key, persist_result=True)
def register_task(ctx: Context, trained: Trained, data: DataVersion) -> Registered:
    registry, result = ctx.registry, trained.result
    lineage = _lineage(ctx, data)
    version = registry.register_adapter(
        trained.run_id,
        "adapter",
        tags={**lineage, **result.run_tags()},
        served_on=ctx.params.base_model.name(),  # the stack of this base model serves it
    )
    get_run_logger().info("registered %s version %s", version.name, version.version)
    summary = {
        "launcher": result.launcher,
        "cost": result.cost.summary() if result.cost else None,
        "cost_usd": result.cost.usd if result.cost else None,
        "resumed_from_step": result.resumed_from_step,
        "duration_s": result.duration_s,
        **{k: v for k, v in result.details.items() if isinstance(v, str | int | float | bool)},
    }
    return Registered(
        model_name=version.name,
        version=version.version,
        run_id=trained.run_id,
        run_url=registry.run_url(trained.run_id),
        version_url=registry.version_url(version.version),
        data_version=data.tag(),
        lineage=lineage,
        trained=summary,
    )


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(ctx: Context, registered: Registered, prepared: PrepareResult) -> EvalReport:
    logger = get_run_logger()
    params = ctx.params
    server = vllm_client(ctx.ws, params)
    report = evaluate_version(
        server=server,
        client=_completion_client(ctx, server),
        registry=ctx.registry,
        params=params,
        version=ctx.registry.get_version(registered.version),
        files=prepared.files,
        base_model=ctx.base_model,
        work_dir=ctx.ws.runs / f"evaluate-v{registered.version}",
        cache_dir=ctx.ws.cache / "lm_eval",
        on_progress=logger.info,
    )
    ctx.registry.attach(registered.run_id).log_metrics(report.metrics())
    logger.info(summary_line(report))
    return report


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(ctx: Context, report: EvalReport, facts: TrainingFacts) -> GateDecision:
    logger = get_run_logger()
    decision = decide(gate_inputs(report, facts.history), ctx.params.gate)
    for check in decision.checks:
        logger.info(check.line())
    logger.info(decision.summary())
    return decision


@task(name="report", cache_policy=NO_CACHE)
def report_task(
    ctx: Context,
    registered: Registered,
    report: EvalReport,
    decision: GateDecision,
    facts: TrainingFacts,
) -> ReportFiles:
    """evaluation.json, examples.jsonl (per example and model), report.html: logged to the run."""
    run = ctx.registry.attach(registered.run_id)
    economics = None
    if "rag" in report.task.runs:
        economics = break_even(
            training_usd=facts.cost_usd,
            adapter_tokens=report.task.runs["candidate"].mean_tokens(),
            rag_tokens=report.task.runs["rag"].mean_tokens(),
            prices=ctx.params.cost,
        )
    measured = approaches(report, ctx.params.cost)
    verdicts = decision_table(report, ctx.params.cost, economics)
    out_dir = ctx.ws.runs / f"evaluation-v{registered.version}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluation = {
        "report": report.to_json(),
        "gate": decision.to_json(),
        "economics": economics.to_json() if economics else None,
        "approaches": [a.to_json() for a in measured],
        "decision_table": [vars(v) for v in verdicts],
        "history": facts.history,
    }
    (out_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=1, default=str))
    with (out_dir / "examples.jsonl").open("w", encoding="utf-8") as fh:
        for row in report.example_rows():
            fh.write(json.dumps(row) + "\n")
    html = render_report(
        report,
        title=f"{registered.model_name} version {registered.version}",
        decision=decision.to_json(),
        history=facts.history,
        economics=economics,
        links={"run": registered.run_url, "version": registered.version_url},
        train_summary=facts.summary,
        approaches=measured,
        verdicts=verdicts,
        concurrency=ctx.params.evaluate.concurrency,
    )
    path = write_report(html, out_dir / "report.html")
    run.log_artifacts(out_dir, "evaluation")
    run.log_metrics(
        {
            f"{a.role}.latency_{q}_s": value
            for a in measured
            for q, value in (("p50", a.latency_p50_s), ("p95", a.latency_p95_s))
            if not math.isnan(value)
        }
    )
    if economics is not None:
        run.log_metrics({"economics.break_even_days": min(economics.days, 1e9)})
        get_run_logger().info("cost: %s", economics.statement())
    if verdicts:
        get_run_logger().info("fine-tune vs RAG: %s", comparison_summary(verdicts))
    get_run_logger().info("report: %s", path)
    return ReportFiles(str(path), economics.statement() if economics else None)


@task(name="record", cache_policy=NO_CACHE)
def record_task(
    ctx: Context,
    registered: Registered,
    report: EvalReport,
    decision: GateDecision,
    facts: TrainingFacts,
    prepared: PrepareResult,
    report_path: str,
) -> None:
    """The decision, the report's location and the serving canary, on the model version."""
    run = ctx.registry.attach(registered.run_id)
    # the canary first: the serving hook warms a passed version when its gate tag is set, with this canary
    canary = canary_from_evaluation(report, prepared.files["test"], ctx.params.evaluate)
    ctx.registry.tag_version(
        registered.version,
        {"report.local": report_path, RUN_TAG: registered.run_id, CANARY_TAG: canary.to_tag()},
    )
    record_decision(
        ctx.registry,
        registered.version,
        decision,
        report,
        report_uri=run.artifact_uri("evaluation/report.html"),
        cost=facts.cost_summary,
    )


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(
    ctx: Context, registered: Registered, decision: GateDecision
) -> tuple[str | None, str | None]:
    logger = get_run_logger()
    params = ctx.params
    token = serving_credentials(ctx.ws, params).admin_token
    version = ctx.registry.get_version(registered.version)
    alias, served = apply_decision(ctx.registry, params, version, decision.passed, stack_urls(params), token)
    if alias == params.registry.champion_alias:
        logger.info("%s now serves version %s", params.registry.model_name, version.version)
    elif alias is not None:
        logger.info("version %s passed: alias %s (gate.auto_promote is off)", version.version, alias)
    else:
        logger.info("version %s was not promoted: %s", version.version, decision.summary())
    return alias, served


class FlowSteps:
    """The loop's steps as Prefect tasks (retries after transient errors; train/register cached)."""

    def __init__(self, ctx: Context, *, evaluate: bool, force: bool, promote: bool = True) -> None:
        self.ctx = ctx
        self._evaluate = evaluate
        self._promotes = promote  # False: judged and recorded, no alias moves (a DVC experiment)
        schedule = ctx.params.schedule
        retry: dict[str, Any] = {
            "retries": schedule.retries,
            "retry_delay_seconds": schedule.retry_delays() or 0,
            "retry_condition_fn": _retry_on_transient,
        }
        storage = ctx.ws.state / "prefect" / "results"  # a Path: Prefect stores results there as files
        self._version = version_task.with_options(**retry)
        self._champion = champion_task.with_options(**retry)
        self._train = train_task.with_options(result_storage=storage, refresh_cache=force)
        self._register = register_task.with_options(result_storage=storage, refresh_cache=force, **retry)
        self._evaluate_task = evaluate_task.with_options(**retry)
        self._report = report_task.with_options(**retry)
        self._record = record_task.with_options(**retry)
        self._promote = promote_task.with_options(**retry)

    def preflight(self) -> None:
        preflight_task(self.ctx, self._evaluate)

    def prepare(self) -> PrepareResult:
        return prepare_task(self.ctx)

    def version(self) -> DataVersion:
        return self._version(self.ctx)

    def champion(self) -> Champion | None:
        return self._champion(self.ctx)

    def train(self, prepared: PrepareResult, data: DataVersion) -> Trained:
        return self._train(self.ctx, prepared, data)

    def register(self, trained: Trained, data: DataVersion, prepared: PrepareResult) -> Registered:
        return self._register(self.ctx, trained, data)

    def evaluate(self, registered: Registered, prepared: PrepareResult) -> EvalReport:
        return self._evaluate_task(self.ctx, registered, prepared)

    def gate(self, report: EvalReport, facts: TrainingFacts) -> GateDecision:
        return gate_task(self.ctx, report, facts)

    def report(
        self, registered: Registered, report: EvalReport, decision: GateDecision, facts: TrainingFacts
    ) -> ReportFiles:
        return self._report(self.ctx, registered, report, decision, facts)

    def record(
        self,
        registered: Registered,
        report: EvalReport,
        decision: GateDecision,
        facts: TrainingFacts,
        prepared: PrepareResult,
        files: ReportFiles,
    ) -> None:
        self._record(self.ctx, registered, report, decision, facts, prepared, files.report)

    def promote(self, registered: Registered, decision: GateDecision) -> tuple[str | None, str | None]:
        if not self._promotes:
            get_run_logger().info(
                "version %s: no alias moved (promote=False); the gate's decision is recorded on it",
                registered.version,
            )
            return None, None
        return self._promote(self.ctx, registered, decision)


def _context(workspace: str | None, launcher: str | None = None) -> Context:
    ws = Workspace.from_env(workspace)
    ws.ensure()
    params = with_launcher(load_params(ws.params_file), launcher)
    base_model = params.base_model.resolve(ws.models)
    return Context(ws, params, base_model, Registry(stack_urls(params).mlflow, params.registry))


def _flow_run_url() -> str | None:
    from prefect.runtime import flow_run

    url = flow_run.ui_url
    return str(url) if url else None


def _notify(params: Params, notice: Notice | None) -> None:
    if notice is None:
        return
    problem = notify(params.notify, notice)
    if problem:
        get_run_logger().warning(problem)
    elif params.notify.webhook_url and notice.event in params.notify.events:
        get_run_logger().info("notified %s: %s", params.notify.webhook_url, notice.event)


@contextlib.contextmanager
def _notify_failure(params: Params, version: str | None = None) -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _notify(params, Notice("failed", params.registry.model_name, first, version, _flow_run_url()))
        raise


SKIP_AFTER_S = 30.0


def retrain_limit(model_name: str) -> str:
    """The Prefect global concurrency limit that keeps one retrain per registered model at a time."""
    return f"retrain-{model_name}"


def _ensure_limit(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it meanwhile
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextlib.contextmanager
def one_retrain_at_a_time(params: Params) -> Iterator[bool]:
    """Hold this model's retrain slot for the block; yields False when schedule.on_overlap is skip
    and another retrain of the model holds it (the block then must not train)."""
    from prefect.concurrency.sync import concurrency

    name = retrain_limit(params.registry.model_name)
    _ensure_limit(name)
    wait = params.schedule.on_overlap == "wait"
    # skip: a slot that stays taken for SKIP_AFTER_S is another run's (acquiring a free one takes
    # seconds on a busy host, so "at once" would skip runs that could have run)
    timeout = params.schedule.wait_timeout_s if wait else SKIP_AFTER_S
    slot = concurrency(name, occupy=1, timeout_seconds=timeout, strict=True)
    try:
        slot.__enter__()
    except TimeoutError:
        yield False
        return
    try:
        yield True
    finally:
        slot.__exit__(None, None, None)


@flow(name="retrain", log_prints=True)
def retrain(
    workspace: str | None = None,
    force: bool = False,
    launcher: str | None = None,
    evaluate: bool = True,
) -> RetrainOutcome:
    """Prepare, version, train, register, evaluate, gate and (on pass) promote one adapter.

    Training is skipped when the champion was trained on exactly this data version, unless ``force``.
    ``launcher`` overrides train.launcher for this run; with ``evaluate=False`` the run ends once the
    adapter is registered (`loraops train`).
    """
    logger = get_run_logger()
    ctx = _context(workspace, launcher)
    params = ctx.params
    model = params.registry.model_name
    with _notify_failure(params), one_retrain_at_a_time(params) as mine:
        if not mine:
            reason = f"another retrain of {model} is running (schedule.on_overlap: skip)"
            logger.info("skipped: %s", reason)
            outcome = RetrainOutcome(model, None, None, skipped=reason)
        else:
            outcome = run_retrain(
                FlowSteps(ctx, evaluate=evaluate, force=force),
                model_name=model,
                champion_alias=params.registry.champion_alias,
                force=force,
                evaluate=evaluate,
                on_event=logger.info,
            )
    _notify(params, outcome.notice(_flow_run_url()))
    return outcome


@flow(name="evaluate", log_prints=True)
def evaluate(workspace: str | None = None, version: str = "", promote: bool = True) -> RetrainOutcome:
    """Evaluate, gate and (on pass) promote an already registered version, on the current test split:
    a version registered from outside loraops, or a re-run after the data or the thresholds changed.
    With ``promote=False`` (a DVC experiment) the decision is recorded on the version, no alias moves."""
    ctx = _context(workspace)
    params, registry = ctx.params, ctx.registry
    with _notify_failure(params, version):
        steps = FlowSteps(ctx, evaluate=True, force=False, promote=promote)
        steps.preflight()
        prepared = steps.prepare()
        info = registry.get_version(version)
        champion = registry.champion()
        facts = TrainingFacts.from_run(registry, info.run_id)
        tags = {"evaluated_version": info.version}
        with registry.run(run_name=f"evaluate-v{info.version}", tags=tags) as run:
            registered = Registered(
                model_name=info.name,
                version=info.version,
                run_id=run.run_id,
                run_url=registry.run_url(run.run_id),
                version_url=registry.version_url(info.version),
                data_version=info.tags.get("data_version", "unknown"),
            )
            judgement = judge(steps, registered, prepared, facts, params.registry.champion_alias)
    outcome = RetrainOutcome(
        info.name,
        registered.data_version,
        champion.version if champion else None,
        registered=registered,
        judgement=judgement,
    )
    _notify(params, outcome.notice(_flow_run_url()))
    return outcome


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
