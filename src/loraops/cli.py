"""The `loraops` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraops.errors import ConfigError, LoraopsError, StackError, StageError
from loraops.workspace import Workspace

if TYPE_CHECKING:
    from loraops.loop.pipeline import RetrainOutcome

_T0 = time.monotonic()
# `loraops retrain` exits with this when the gate refused the candidate (for scripts); `demo` exits 0.
GATE_REFUSED = 3


def say(message: str) -> None:
    print(f"[loraops {time.monotonic() - _T0:6.1f}s] {message}", flush=True)


def _workspace(args: argparse.Namespace) -> Workspace:
    ws = Workspace.from_env(args.workspace)
    os.environ["LORAOPS_WORKSPACE"] = str(ws.root)
    return ws


def _params(ws: Workspace) -> Any:
    from loraops.config import load_params

    return load_params(ws.params_file)


def _check_envs() -> None:
    from loraops.envs import require, server_env, trainer_env

    require(trainer_env())
    require(server_env())


def _base_model(ws: Workspace, params: Any) -> str:
    from loraops.basemodel.gguf import is_gguf_source

    if params.base_model.source == "build":
        say(f"base model: recipe {params.base_model.recipe.name} (built once, then cached in {ws.models})")
    elif is_gguf_source(params.base_model.source):
        say(f"base model: {params.base_model.source} (converted once, then cached in {ws.models})")
    return params.base_model.resolve(ws.models, on_line=_build_progress())


def _build_progress(every: int = 10) -> Callable[[str], None]:
    """Shows the build's own steps, and every ``every``-th logged pre-training loss (Axolotl logs
    every 10 steps), instead of Axolotl's whole output (that goes to the build log)."""
    from loraops.train.render import parse_metrics_line

    logged = 0

    def show(line: str) -> None:
        nonlocal logged
        if line.startswith("[basemodel]"):
            say(line.removeprefix("[basemodel] "))
            return
        metrics = parse_metrics_line(line)
        if metrics and "loss" in metrics:
            logged += 1
            if logged % every == 0:
                say(f"  pre-training epoch {metrics.get('epoch', 0.0):.2f}  loss {metrics['loss']:.4f}")

    return show


def _ensure_demo_data(ws: Workspace, params: Any) -> None:
    from loraops.data.demo import write_demo_dataset
    from loraops.data.params import DataParams
    from loraops.errors import DataError

    raw = ws.root / params.data.raw
    if raw.exists():
        return
    if params.data.raw == DataParams().raw:
        chat = params.data.format == "chat"
        write_demo_dataset(raw, n=params.data.demo_tickets, data_format="chat" if chat else "alpaca")
        say(f"generated the demo dataset {raw.relative_to(ws.root)}")
        return
    raise DataError(f"{raw}: data file not found", hint="fix data.raw in params.yaml or create the file")


def _use_prefect(urls: Any) -> None:
    os.environ["PREFECT_API_URL"] = urls.prefect_api
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")


class _NoTracebackForKnownErrors(logging.Filter):
    """Prefect logs a failed task with its traceback; for our own one-line errors that is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], LoraopsError):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_known_errors() -> None:
    quiet = _NoTracebackForKnownErrors()
    for name in (
        "prefect",
        "prefect.flow_runs",
        "prefect.task_runs",
        "prefect.flow_engine",
        "prefect.task_engine",
    ):
        logger = logging.getLogger(name)
        logger.addFilter(quiet)
        for handler in logger.handlers:
            handler.addFilter(quiet)


def _run_flow(ws: Workspace, flow: str = "retrain", **flow_args: Any) -> RetrainOutcome:
    from loraops.flows import load_flow

    _quiet_known_errors()

    run = load_flow("retrain", flow)
    outcome: RetrainOutcome = run(workspace=str(ws.root), **flow_args)
    return outcome


def _print_judgement(outcome: RetrainOutcome) -> None:
    """The gate's verdict, each check, the cost comparison, where the report is, what moved."""
    judged = outcome.judgement
    if judged is None:
        return
    print()
    print(f"== gate: {judged.summary}")
    for line in judged.checks:
        print(f"   {line}")
    if judged.economics:
        print(f"== cost: {judged.economics}")
    print(f"== report: {judged.report}")
    if judged.alias and not judged.promoted and outcome.registered:
        print(f"== version {outcome.registered.version} is now {judged.alias!r}: promote it in the MLflow UI")


def _require_server(urls: Any) -> None:
    from loraops.services import http_ok

    if not http_ok(urls.server + "/health"):
        raise StackError(f"no model server answers at {urls.endpoint}", hint="run `loraops up` first")


def cmd_up(args: argparse.Namespace) -> int:
    from loraops.stack import local

    ws = _workspace(args)
    params = _params(ws)
    _check_envs()
    local.check_ports(ws, params)
    base = _base_model(ws, params)
    if local.uses_shared_stack(params):
        say(f"using the serving stack behind {params.stack.sync_url} (vLLM and its hook run elsewhere)")
    else:
        say("starting MLflow, Prefect, vLLM and the alias sync hook (first start ~30-60 s)")
    urls = local.up(ws, params, base, on_event=say)
    _print_urls(urls)
    _print_deployment(_up_worker(ws, params, urls))
    return 0


def _up_worker(ws: Workspace, params: Any, urls: Any) -> Any:
    from loraops.stack.deploy import up_worker

    _use_prefect(urls)  # before Prefect is first imported: it reads its settings once
    return up_worker(ws, params, urls, on_event=say)


def _print_deployment(info: Any) -> None:
    when = f"cron {info.cron!r} ({info.timezone})" if info.cron else "no schedule (runs when triggered)"
    print(f"  retrain   : deployment {info.name}, {when}, work pool {info.work_pool!r}")
    print(f"              {info.url}  (Run there, or `prefect deployment run {info.name}`)")


def cmd_down(args: argparse.Namespace) -> int:
    from loraops.stack import local

    ws = _workspace(args)
    stopped = local.down(ws)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """The services, then the model: versions, scores, gate decisions, aliases, what each replica serves,
    the champion's data vs the prepared data, the last and the next retrain, and the URLs."""
    from loraops.data.versioning import locked_hash
    from loraops.gate.promote import sync_status
    from loraops.registry.tracking import Registry
    from loraops.stack import local
    from loraops.stack.prefect_api import retrain_deployments, retrain_runs
    from loraops.status import ModelStatus, Sourced, replica_rows, sourced, version_rows

    ws = _workspace(args)
    params = _params(ws)
    running = local.status(ws)
    print("== services of this workspace")
    if not running:
        print("   none running (make demo or loraops up starts them)")
    for svc in running:
        print(f"   {svc.name:8s} pid {svc.pid:<7d} port {svc.port:<5d} log {svc.log_file}")
    urls = local.stack_urls(params)
    registry = Registry(urls.mlflow, params.registry)

    def score_of(version: Any) -> float | None:
        run_id = version.tags.get("evaluation.run_id") or version.run_id
        return registry.client.get_run(run_id).data.metrics.get("candidate.score") if run_id else None

    def served() -> list[Any]:
        token = local.serving_credentials(ws, params).admin_token
        answer = sync_status(urls.sync, token, params.registry.model_name)
        if not answer:
            raise StackError(f"the sync hook at {urls.sync} did not answer for {params.registry.model_name}")
        return replica_rows(answer)

    runs = sourced(lambda: retrain_runs(urls.prefect_api, urls.prefect_ui, str(ws.root)))
    status = ModelStatus(
        model=params.registry.model_name,
        champion_alias=params.registry.champion_alias,
        versions=sourced(lambda: version_rows(registry.versions()[: args.versions], score_of)),
        replicas=sourced(served),
        prepared_data=locked_hash(ws, params.data),
        last_run=Sourced(runs.value[0], runs.error) if runs.value else runs,
        next_run=Sourced(runs.value[1], runs.error) if runs.value else runs,
        urls={
            "MLflow UI": registry.model_url(),
            "Prefect UI": urls.prefect_ui,
            "endpoint": urls.endpoint,
            "sync hook": f"{urls.sync}/status?model={params.registry.model_name}",
        },
    )
    for line in status.lines(args.versions):
        print(line)
    deployments = sourced(lambda: retrain_deployments(urls.prefect_api))
    if deployments.error:
        print(f"== retrain deployments on this stack: unknown ({deployments.error})")
    else:
        print(f"== retrain deployments on this stack ({len(deployments.value)}, one per model)")
        for row in deployments.value:
            print(row.line())
    return 0


def _print_urls(urls: Any) -> None:
    print(f"  MLflow UI : {urls.mlflow}")
    print(f"  Prefect UI: {urls.prefect_ui}")
    print(f"  endpoint  : {urls.endpoint}  (OpenAI-compatible)")


def _ask(endpoint: str, api_key: str, model: str, messages: list[dict[str, str]]) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=endpoint, api_key=api_key)
    resp = client.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=48,
        temperature=0.0,
    )
    return (resp.choices[0].message.content or "").strip()


def _example_request(ws: Workspace, params: Any) -> tuple[str, list[dict[str, str]]]:
    """The first test example as a chat request (its conversation so far, or its instruction as the
    user turn), and the question to show."""
    from loraops.evaluate.suite import question_of

    test_file = ws.root / params.data.prepared_dir / "test.jsonl"
    with test_file.open(encoding="utf-8") as fh:
        record = json.loads(fh.readline())
    if "messages" in record:
        messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"][:-1]]
    else:
        messages = [{"role": "user", "content": record["instruction"]}]
    return question_of(record), messages


def cmd_retrain(args: argparse.Namespace, *, show_answer: bool = True) -> int:
    from loraops.stack import local

    ws = _workspace(args)
    params = _params(ws)
    urls = local.stack_urls(params)
    _require_server(urls)
    _use_prefect(urls)
    say("running the retrain flow (progress below; also in the Prefect UI)")
    outcome = _run_flow(ws, force=getattr(args, "force", False))
    if outcome.skipped is not None:
        print(f"== skipped: {outcome.skipped} (`loraops retrain --force` trains anyway)")
    else:
        _print_judgement(outcome)
        registered = outcome.registered
        assert registered is not None
        name, version = registered.model_name, registered.version
        print(f"== registered {name} version {version} (data {registered.data_version})")
        print(f"   run    : {registered.run_url}")
        print(f"   version: {registered.version_url}")
    if show_answer:
        prompt, messages = _example_request(ws, params)
        stable, base = params.registry.model_name, params.base_model.name()
        print("== asking the endpoint with the openai client")
        print(f"   prompt: {prompt!r}")
        creds = local.serving_credentials(ws, params)
        print(f"   api key: {creds.api_key_file} (Authorization: Bearer <key>)")
        if _has_champion(ws, params):
            print(f"   {stable!r} (stable name) -> {_ask(urls.endpoint, creds.api_key, stable, messages)}")
        else:
            print(f"   {stable!r}: no champion yet, nothing is served under the stable name")
        print(f"   {base!r} (base model) -> {_ask(urls.endpoint, creds.api_key, base, messages)}")
    print("== services (still running; `make down` stops them)")
    _print_urls(urls)
    return 0 if outcome.gate_passed else GATE_REFUSED


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate, gate and (on pass) promote a registered version on the current test split."""
    from loraops.stack import local

    ws = _workspace(args)
    params = _params(ws)
    urls = local.stack_urls(params)
    _require_server(urls)
    _use_prefect(urls)
    version = _version_arg(args)
    say(f"evaluating {params.registry.model_name} version {version} (progress below; also in Prefect)")
    outcome = _run_flow(ws, "evaluate", version=version, promote=not args.no_promote)
    _print_judgement(outcome)
    registered = outcome.registered
    assert registered is not None
    if args.no_promote:
        print(f"== not promoted (--no-promote): the gate's decision is recorded on version {version}")
    if args.metrics:
        from loraops.loop.experiment import evaluation_metrics, write_json

        write_json(Path(args.metrics), evaluation_metrics(outcome))
    print(f"   run    : {registered.run_url}")
    print(f"   version: {registered.version_url}")
    # with --metrics the verdict is in the file: a refusal is a result (a DVC stage must not fail on it)
    return 0 if outcome.gate_passed or args.metrics else GATE_REFUSED


def _version_arg(args: argparse.Namespace) -> str:
    """The version to evaluate: the argument, or the one in the --version-from file."""
    if args.version_from:
        from loraops.loop.experiment import version_from

        return version_from(Path(args.version_from))
    if args.version is None:
        raise StageError("no version to evaluate", hint="name one (loraops evaluate 3) or use --version-from")
    return str(args.version)


def cmd_register(args: argparse.Namespace) -> int:
    """Register an adapter trained elsewhere as a new version (checked first: safetensors, rank, targets)."""
    from pathlib import Path

    from loraops.registry.tracking import Registry
    from loraops.serving.adapters import check_adapter_dir
    from loraops.stack import local

    ws = _workspace(args)
    params = _params(ws)
    urls = local.stack_urls(params)
    adapter = Path(args.adapter_dir).resolve()
    info = check_adapter_dir(adapter, max_lora_rank=params.serving.max_lora_rank)
    registry = Registry(urls.mlflow, params.registry)
    tags = {"source": "external", "adapter.path": str(adapter), "adapter.rank": str(info.rank)}
    if args.base_model:
        tags["base_model"] = args.base_model
    with registry.run(run_name=f"register-{adapter.name}", tags=tags) as run:
        run.log_artifacts(adapter, "adapter")
        version = registry.register_adapter(
            run.run_id, "adapter", tags=tags, served_on=params.base_model.name()
        )
    print(f"registered {version.name} version {version.version} from {adapter}")
    print(f"   evaluate and gate it: loraops evaluate {version.version}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Print the path of a version's HTML report (downloaded from MLflow when not on this machine)."""
    from pathlib import Path

    from loraops.gate.judge import evaluation_run
    from loraops.registry.tracking import Registry
    from loraops.stack import local

    ws = _workspace(args)
    params = _params(ws)
    registry = Registry(local.stack_urls(params).mlflow, params.registry)
    version = registry.get_version(str(args.version))
    local_copy = version.tags.get("report.local")
    if local_copy and Path(local_copy).is_file():
        print(local_copy)
        return 0
    dest = ws.state / "reports" / f"v{version.version}"
    print(registry.download_run_file(evaluation_run(version), "evaluation/report.html", dest))
    return 0


def cmd_review_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from loraops.gate.review import export_csv

    ws = _workspace(args)
    _registry, version, stored = _stored_evaluation(ws, args.version)
    out = Path(args.out) if args.out else ws.state / "reviews" / f"{version.name}-v{version.version}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(export_csv(stored.report, args.n), encoding="utf-8")
    print(out)
    print(
        "   fill in the verdict column (approve / reject), then: "
        f"loraops review import {version.version} {out}"
    )
    return 0


def cmd_review_import(args: argparse.Namespace) -> int:
    """Record the experts' verdicts on the version, judge it again, and promote it if it passes now."""
    from pathlib import Path

    from loraops.gate.judge import rejudge
    from loraops.gate.promote import apply_decision
    from loraops.gate.record import version_tags
    from loraops.gate.review import read_verdicts
    from loraops.stack import local

    ws = _workspace(args)
    params = _params(ws)
    registry, version, stored = _stored_evaluation(ws, args.version)
    sheet = read_verdicts(Path(args.file))
    review = sheet.review
    registry.tag_version(
        version.version,
        {
            "review.approved": review.approved,
            "review.reviewed": review.reviewed,
            "review.share": f"{review.share:.3f}",
        },
    )
    registry.attach(stored.run_id).log_artifact(Path(args.file), "review")
    decision = rejudge(stored, params.gate, review)
    registry.tag_version(version.version, version_tags(decision, version.tags.get("report")))
    print(f"review: {review.approved} of {review.reviewed} approved ({review.share:.0%})")
    print(f"== gate: {decision.summary()}")
    for check in decision.checks:
        print(f"   {check.line()}")
    if not params.gate.require_review:
        print("== recorded (gate.require_review is off, so the review does not move any alias)")
        return 0 if decision.passed else GATE_REFUSED
    token = local.serving_credentials(ws, params).admin_token
    alias, _ = apply_decision(registry, params, version, decision.passed, local.stack_urls(params), token)
    if alias:
        print(f"== {params.registry.model_name}@{alias} -> version {version.version}")
    return 0 if decision.passed else GATE_REFUSED


def _stored_evaluation(ws: Workspace, version: str) -> tuple[Any, Any, Any]:
    from loraops.gate.judge import load_evaluation
    from loraops.registry.tracking import Registry
    from loraops.stack import local

    params = _params(ws)
    registry = Registry(local.stack_urls(params).mlflow, params.registry)
    info = registry.get_version(str(version))
    return registry, info, load_evaluation(registry, info, ws.state / "evaluations")


def cmd_train(args: argparse.Namespace) -> int:
    """prepare -> version -> train (local or SageMaker) -> register: no evaluation, no promotion."""
    from loraops.stack import local

    ws = _workspace(args)
    params = _params(ws)
    _check_envs()
    _ensure_demo_data(ws, params)
    launcher = args.launcher or params.train.launcher
    say("starting MLflow and Prefect if they are not running (training registers the adapter)")
    urls = local.up_control_plane(ws, params, on_event=say)
    _use_prefect(urls)
    say(f"running the retrain flow up to registration, training with the {launcher} launcher")
    outcome = _run_flow(ws, launcher=args.launcher, evaluate=False, force=True)
    registered = outcome.registered
    assert registered is not None
    trained, lineage = registered.trained, registered.lineage
    job = f", job {trained['job_name']}" if "job_name" in trained else ""
    resumed = trained.get("resumed_from_step")
    rows = [
        ("launcher", f"{trained['launcher']}{job}"),
        ("cost", trained["cost"] or "unknown (no price for this instance type)"),
        ("resumed", f"from step {resumed}" if resumed is not None else "no (trained from the start)"),
        ("data", lineage["data_version"]),
        ("base model", lineage["base_model"]),
        ("code", lineage["code_commit"]),
    ]
    if trained["launcher"] != "local":
        instances = f"{trained.get('instance_count', 1)} x {trained.get('instance_type')}"
        rows.insert(1, ("instances", f"{instances}, spot {trained.get('spot')}"))
    print()
    print(f"== registered {registered.model_name} version {registered.version}")
    for label, value in rows:
        print(f"   {label:<10s}: {value}")
    print(f"   {'run':<10s}: {registered.run_url}")
    print(f"   {'version':<10s}: {registered.version_url}")
    if args.output:
        from loraops.loop.experiment import train_record, write_json

        write_json(Path(args.output), train_record(registered))
    return 0


def _has_champion(ws: Any, params: Any) -> bool:
    from loraops.stack import local

    return local.vllm_client(ws, params).served_path(params.registry.model_name) is not None


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    ws = _workspace(args)
    params = _params(ws)
    _check_envs()
    _ensure_demo_data(ws, params)
    cmd_up(args)
    code = cmd_retrain(args)
    if code == GATE_REFUSED:  # the loop ran as designed; the refusal and its reasons were printed above
        say("the gate kept the current champion: a refusal is an outcome of the loop, not an error")
    say(f"demo finished in {time.monotonic() - started:.0f} s")
    return 0 if code == GATE_REFUSED else code


def cmd_base_model(args: argparse.Namespace) -> int:
    ws = _workspace(args)
    params = _params(ws)
    _check_envs()
    path = _base_model(ws, params)
    print(path)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from loraops.registry.tracking import Registry
    from loraops.stack import local

    ws = _workspace(args)
    params = _params(ws)
    urls = local.stack_urls(params)
    registry = Registry(urls.mlflow, params.registry)
    registry.set_champion(str(args.version))
    print(f"{params.registry.model_name}@{params.registry.champion_alias} -> version {args.version}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Move champion back to the version it served before (or --to N) and wait until it is served."""
    from loraops.gate.promote import previous_version, promote_and_wait
    from loraops.registry.tracking import Registry
    from loraops.stack import local

    ws = _workspace(args)
    params = _params(ws)
    urls = local.stack_urls(params)
    registry = Registry(urls.mlflow, params.registry)
    alias = params.registry.champion_alias
    current = registry.champion()
    history = registry.alias_history(alias)
    target = str(args.to) if args.to else previous_version(history, current.version if current else None)
    if target is None:
        raise StageError(
            f"{params.registry.model_name}@{alias} has no earlier version to go back to "
            f"(history: {', '.join(history) or 'empty'})",
            hint="name one with `loraops rollback --to N`",
        )
    started = time.monotonic()
    token = local.serving_credentials(ws, params).admin_token
    promote_and_wait(registry, params, registry.get_version(target), urls, token)
    was = f"v{current.version}" if current else "nothing"
    print(
        f"== rolled back {params.registry.model_name}@{alias}: {was} -> v{target}, "
        f"served {time.monotonic() - started:.1f} s after the alias moved"
    )
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """A new task's workspace from its data, on the nearest running stack; prints the next two commands."""
    from loraops.scaffold.create import init_workspace

    data = args.data
    if data is None:
        if not sys.stdin.isatty():
            raise ConfigError("no training data given", hint="--data FILE (JSONL, alpaca or chat records)")
        data = input("training data (a JSONL file of alpaca or chat records): ").strip()
    started = time.monotonic()
    result = init_workspace(
        Path(args.directory),
        Path(data),
        model=args.model_name,
        data_format=args.format,
        stack=Path(args.stack) if args.stack else None,
        standalone=args.standalone,
    )
    shape = result.shape
    say(f"task {result.model}: {shape.examples} {shape.format} examples, scored by {shape.task_metric}")
    if shape.json_schema is not None:
        fields = ", ".join(shape.json_schema["properties"])
        say(f"every answer is a JSON object: the format check requires its fields ({fields})")
    if result.link is not None:
        say(f"on the stack of {result.link.workspace}: its MLflow, Prefect, vLLM and sync hook")
    else:
        say("no running stack found: this workspace runs its own (free ports chosen)")
    say(f"workspace {result.root}: params.yaml, data/raw, axolotl_configs, dvc.yaml; git and DVC initialised")
    say(f"made in {time.monotonic() - started:.1f} s; next:")
    for command in result.next_commands():
        print(f"  {command}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    """Register the retrain deployment from params.yaml `schedule:` and start the worker that runs it;
    with --run, also start one run now, as the Prefect UI's "Run" does, and wait for it."""
    from loraops.stack import local
    from loraops.stack.deploy import deployment_name, trigger_retrain, wait_for_run

    ws = _workspace(args)
    params = _params(ws)
    urls = local.stack_urls(params)
    _require_server(urls)
    info = _up_worker(ws, params, urls)
    _print_deployment(info)
    if not args.run:
        return 0
    run_id = trigger_retrain(urls.prefect_api, deployment_name(params))
    say(f"started flow run {urls.prefect_ui}/runs/flow-run/{run_id} on the worker; waiting for it")
    state = wait_for_run(urls.prefect_api, run_id)
    print(f"== flow run {run_id}: {state}")
    return 0 if state == "Completed" else 1


def _describe_subcommands(sub: Any) -> None:
    """Each subcommand's --help starts with its one-line help (argparse shows it only in the list)."""
    add = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("description", kwargs.get("help"))
        parser: argparse.ArgumentParser = add(name, **kwargs)
        if getattr(parser, "_subparsers", None) is None:
            original = parser.add_subparsers

            def nested(**sub_kwargs: Any) -> Any:
                inner = original(**sub_kwargs)
                _describe_subcommands(inner)
                return inner

            parser.add_subparsers = nested  # type: ignore[method-assign]
        return parser

    sub.add_parser = add_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraops",
        description="Keep fine-tuned LoRA adapters fresh, safe and served: Prefect runs the loop, DVC "
        "versions the data, Axolotl trains, MLflow registers, a gate decides, vLLM serves.",
        epilog="Start with `loraops demo`; `loraops COMMAND --help` explains each command's options.",
    )
    parser.add_argument("--workspace", help="project directory with params.yaml (default: current directory)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _describe_subcommands(sub)
    commands: list[tuple[str, Callable[[argparse.Namespace], int], str]] = [
        ("demo", cmd_demo, "set up, start the stack, run the retrain flow once and ask the endpoint"),
        ("up", cmd_up, "start MLflow, Prefect, vLLM and the alias sync hook"),
        ("down", cmd_down, "stop the services started by up/demo"),
        ("base-model", cmd_base_model, "build (or find) the base model and print its path"),
    ]
    for name, func, help_text in commands:
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
    status = sub.add_parser(
        "status",
        help="the services, the model's versions, scores, gate decisions, aliases, what vLLM serves, "
        "the last and next retrain",
    )
    status.add_argument("--versions", type=int, default=10, help="newest versions to list (default 10)")
    status.set_defaults(func=cmd_status)
    retrain = sub.add_parser("retrain", help="run the retrain flow once against the running stack")
    retrain.add_argument(
        "--force",
        action="store_true",
        help="train even when the champion was trained on the same data version (default: skip)",
    )
    retrain.set_defaults(func=cmd_retrain)
    train = sub.add_parser(
        "train", help="prepare, version, train and register an adapter (no evaluation, no promotion)"
    )
    train.add_argument(
        "--launcher",
        choices=["local", "sagemaker"],
        help="where to train (default: train.launcher in params.yaml)",
    )
    train.add_argument(
        "--output", metavar="FILE", help="also write the registered version, run and data version as JSON"
    )
    train.set_defaults(func=cmd_train)
    schedule = sub.add_parser(
        "schedule",
        help="register the retrain deployment (cron from params.yaml schedule:) and start its worker",
    )
    schedule.add_argument(
        "--run", action="store_true", help="also run the deployment once now on the worker and wait for it"
    )
    schedule.set_defaults(func=cmd_schedule)
    evaluate = sub.add_parser(
        "evaluate", help="evaluate, gate and (on pass) promote a registered version on the current test split"
    )
    evaluate.add_argument("version", type=int, nargs="?", help="model version number (see `loraops status`)")
    evaluate.add_argument(
        "--version-from", metavar="FILE", help="take the version from this `loraops train --output` file"
    )
    evaluate.add_argument(
        "--no-promote",
        action="store_true",
        help="judge and record the decision on the version, move no alias (DVC experiments)",
    )
    evaluate.add_argument(
        "--metrics",
        metavar="FILE",
        help="write the gate's verdict and the main scores (a DVC metrics file); a refusal then exits 0",
    )
    evaluate.set_defaults(func=cmd_evaluate)
    init = sub.add_parser(
        "init",
        help="create a new task's workspace from its training data (on the running stack, if any)",
    )
    init.add_argument("directory", help="the new workspace (absent or empty)")
    init.add_argument("--data", metavar="FILE", help="the task's training data, JSONL (asked when omitted)")
    init.add_argument("--model-name", help="registered model and stable name (default: the directory's name)")
    init.add_argument(
        "--format", choices=("alpaca", "chat"), help="check the records' format (default: read from the data)"
    )
    init.add_argument(
        "--stack", metavar="WORKSPACE", help="the workspace whose stack to use (default: the nearest running)"
    )
    init.add_argument("--standalone", action="store_true", help="run a stack of its own (free ports chosen)")
    init.set_defaults(func=cmd_init)
    register = sub.add_parser(
        "register", help="register an adapter directory trained elsewhere as a new version"
    )
    register.add_argument("adapter_dir", help="a PEFT LoRA directory (adapter_config.json + safetensors)")
    register.add_argument("--base-model", help="the base model it was trained on (recorded as a tag)")
    register.set_defaults(func=cmd_register)
    report = sub.add_parser("report", help="print the path of a version's HTML evaluation report")
    report.add_argument("version", type=int, help="model version number")
    report.set_defaults(func=cmd_report)
    review = sub.add_parser("review", help="expert review of a version's answers (CSV out, verdicts in)")
    review_sub = review.add_subparsers(dest="review_command", required=True)
    review_export = review_sub.add_parser("export", help="write a CSV of sampled answers to review")
    review_export.add_argument("version", type=int, help="model version whose answers are sampled")
    review_export.add_argument("-n", type=int, default=None, help="examples to sample (default: 15%%, >= 10)")
    review_export.add_argument("--out", help="CSV path (default: .loraops/reviews/MODEL-vN.csv)")
    review_export.set_defaults(func=cmd_review_export)
    review_import = review_sub.add_parser(
        "import", help="read the verdicts back, judge again, promote on pass"
    )
    review_import.add_argument("version", type=int, help="model version the verdicts are for")
    review_import.add_argument("file", help="the filled-in CSV")
    review_import.set_defaults(func=cmd_review_import)
    promote = sub.add_parser("promote", help="point the champion alias at a model version (also: MLflow UI)")
    promote.add_argument("version", type=int, help="model version to serve under the stable name")
    promote.set_defaults(func=cmd_promote)
    rollback = sub.add_parser(
        "rollback", help="move champion back to the version it served before, and wait until it is served"
    )
    rollback.add_argument("--to", type=int, default=None, help="this version instead of the previous one")
    rollback.set_defaults(func=cmd_rollback)
    try:
        from loraops.data.commands import add_data_commands
    except ImportError:  # pragma: no cover - data commands are part of the package
        pass
    else:
        from functools import partial

        from loraops.data.commands import default_context

        add_data_commands(sub, partial(default_context, on_line=_build_progress()))
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except LoraopsError as err:
        print(f"loraops: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loraops: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
