"""The `loraops` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from loraops.errors import LoraopsError, StackError
from loraops.workspace import Workspace

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
    from loraops.basemodel.build import resolve_base_model

    if params.base_model.source == "build":
        say(f"base model: recipe {params.base_model.recipe.name} (built once, then cached in {ws.models})")
    return resolve_base_model(
        params.base_model.source, params.base_model.recipe, ws.models, on_line=_build_progress()
    )


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
        write_demo_dataset(raw, data_format="chat" if params.data.format == "chat" else "alpaca")
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


def _run_flow(ws: Workspace, **flow_args: Any) -> dict[str, Any]:
    from loraops.flows import load_flow

    _quiet_known_errors()

    retrain = load_flow("retrain")
    result: dict[str, Any] = retrain(workspace=str(ws.root), **flow_args)
    return result


def cmd_up(args: argparse.Namespace) -> int:
    from loraops.stack import local

    ws = _workspace(args)
    params = _params(ws)
    _check_envs()
    local.check_ports(ws, params)
    base = _base_model(ws, params)
    say("starting MLflow, Prefect, vLLM and the alias sync hook (first start ~30-60 s)")
    urls = local.up(ws, params, base)
    _print_urls(urls)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from loraops.stack import local

    ws = _workspace(args)
    stopped = local.down(ws)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from loraops.stack import local

    ws = _workspace(args)
    running = local.status(ws)
    if not running:
        print("no loraops service is running (make demo or loraops up starts them)")
    for svc in running:
        print(f"{svc.name:8s} pid {svc.pid:<7d} port {svc.port:<5d} log {svc.log_file}")
    return 0


def _print_urls(urls: Any) -> None:
    print(f"  MLflow UI : {urls.mlflow}")
    print(f"  Prefect UI: {urls.prefect_ui}")
    print(f"  endpoint  : {urls.endpoint}  (OpenAI-compatible)")


def _ask(endpoint: str, model: str, messages: list[dict[str, str]]) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=endpoint, api_key="loraops")
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
    from loraops.stack.process import http_ok

    ws = _workspace(args)
    params = _params(ws)
    urls = local.stack_urls(params)
    if not http_ok(urls.server + "/health"):
        raise StackError(f"no model server answers at {urls.endpoint}", hint="run `loraops up` first")
    _use_prefect(urls)
    say("running the retrain flow (progress below; also in the Prefect UI)")
    result = _run_flow(ws, skip_if_unchanged=getattr(args, "skip_if_unchanged", False))
    if result.get("skipped"):
        print(f"== skipped: data {result['data_version']} unchanged, already in version {result['version']}")
        return 0
    print()
    print(f"== gate: {result['gate_summary']}")
    for line in result["gate_lines"]:
        print(f"   {line}")
    if result.get("economics"):
        print(f"== cost: {result['economics']}")
    print(f"== report: {result['report']}")
    if result.get("alias") and not result["promoted"]:
        print(f"== version {result['version']} is now {result['alias']!r}: promote it in the MLflow UI")
    print(f"== registered {result['model_name']} version {result['version']} (data {result['data_version']})")
    print(f"   run    : {result['run_url']}")
    print(f"   version: {result['version_url']}")
    if show_answer:
        prompt, messages = _example_request(ws, params)
        stable, base = params.registry.model_name, params.base_model.name()
        print("== asking the endpoint with the openai client")
        print(f"   prompt: {prompt!r}")
        if result["promoted"] or _has_champion(urls, params):
            print(f"   {stable!r} (stable name) -> {_ask(urls.endpoint, stable, messages)}")
        else:
            print(f"   {stable!r}: no champion yet, nothing is served under the stable name")
        print(f"   {base!r} (base model) -> {_ask(urls.endpoint, base, messages)}")
    print("== services (still running; `make down` stops them)")
    _print_urls(urls)
    return 0 if result["promoted"] else GATE_REFUSED


def cmd_train(args: argparse.Namespace) -> int:
    """prepare -> version -> train (local or SageMaker) -> register: no evaluation, no promotion."""
    from loraops.stack import local

    ws = _workspace(args)
    params = _params(ws)
    _check_envs()
    _ensure_demo_data(ws, params)
    launcher = args.launcher or params.train.launcher
    say("starting MLflow and Prefect if they are not running (training registers the adapter)")
    urls = local.up_control_plane(ws, params)
    _use_prefect(urls)
    say(f"running the retrain flow up to registration, training with the {launcher} launcher")
    result = _run_flow(ws, launcher=args.launcher, evaluate=False)
    trained = result["trained"]
    lineage = result["lineage"]
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
    print(f"== registered {result['model_name']} version {result['version']}")
    for label, value in rows:
        print(f"   {label:<10s}: {value}")
    print(f"   {'run':<10s}: {result['run_url']}")
    print(f"   {'version':<10s}: {result['version_url']}")
    return 0


def _has_champion(urls: Any, params: Any) -> bool:
    from loraops.serving.vllm import VllmClient

    return VllmClient(urls.server).served_path(params.registry.model_name) is not None


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


def cmd_schedule(args: argparse.Namespace) -> int:
    """Serve the retrain flow as a Prefect deployment on a cron schedule (runs until interrupted)."""
    from loraops.flows import load_flow
    from loraops.stack import local

    ws = _workspace(args)
    params = _params(ws)
    _use_prefect(local.stack_urls(params))
    retrain = load_flow("retrain")
    say(f"serving deployment retrain/scheduled with cron {args.cron!r} (Ctrl-C stops it)")
    retrain.serve(
        name="scheduled",
        cron=args.cron,
        parameters={"workspace": str(ws.root), "skip_if_unchanged": True},
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraops", description=__doc__)
    parser.add_argument("--workspace", help="project directory with params.yaml (default: current directory)")
    sub = parser.add_subparsers(dest="command", required=True)
    commands: list[tuple[str, Callable[[argparse.Namespace], int], str]] = [
        ("demo", cmd_demo, "set up, start the stack, run the retrain flow once and ask the endpoint"),
        ("up", cmd_up, "start MLflow, Prefect, vLLM and the alias sync hook"),
        ("down", cmd_down, "stop the services started by up/demo"),
        ("status", cmd_status, "list the running services"),
        ("base-model", cmd_base_model, "build (or find) the base model and print its path"),
    ]
    for name, func, help_text in commands:
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
    retrain = sub.add_parser("retrain", help="run the retrain flow once against the running stack")
    retrain.add_argument(
        "--skip-if-unchanged", action="store_true", help="do nothing when this data was already trained on"
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
    train.set_defaults(func=cmd_train)
    schedule = sub.add_parser("schedule", help="run the retrain flow on a cron schedule (Prefect deployment)")
    schedule.add_argument("--cron", default="0 3 * * *", help="cron expression (default: 03:00 daily)")
    schedule.set_defaults(func=cmd_schedule)
    promote = sub.add_parser("promote", help="point the champion alias at a model version (also: MLflow UI)")
    promote.add_argument("version", type=int)
    promote.set_defaults(func=cmd_promote)
    try:
        from loraops.data.commands import add_data_commands
    except ImportError:  # pragma: no cover - data commands are part of the package
        pass
    else:
        add_data_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
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
