"""The evaluation of one registered version on the running server (the flow's evaluate step).

The candidate is loaded under ``<model>-candidate-v<N>`` and the current champion, the version the
registry's champion alias names (not whatever the stable name serves), under its immutable name
``<model>-v<N>``; both are unloaded afterwards unless they were served already. The task is asked of
base, RAG, champion and candidate; general skills of base and candidate go through lm-eval.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraops.errors import ConfigError
from loraops.evaluate.harness import GROUP, SHIPPED_TASKS, run_lm_eval, write_general_tasks
from loraops.evaluate.metrics import FormatCheck
from loraops.evaluate.params import EvalParams
from loraops.evaluate.suite import (
    Completer,
    EvalReport,
    GeneralEvaluation,
    evaluate_task,
    read_jsonl,
    request_of,
)
from loraops.serving.names import version_name
from loraops.serving.policy import Canary, pick_canary

if TYPE_CHECKING:
    from loraops.config import Params
    from loraops.registry.tracking import ModelVersionInfo, Registry
    from loraops.serving.vllm import VllmClient


def candidate_name(model: str, version: str) -> str:
    return f"{model}-candidate-v{version}"


@contextlib.contextmanager
def served(server: VllmClient, name: str, path: Callable[[], Path]) -> Iterator[str]:
    """Serve the adapter at ``path()`` under ``name`` for the block (left alone if already served)."""
    if server.served_path(name) is not None:
        yield name
        return
    server.load_adapter(name, path())
    try:
        yield name
    finally:
        server.unload_adapter(name)


def general_tasks(params: Params, base_is_built: bool, work_dir: Path) -> tuple[list[str], Path | None]:
    """The lm-eval tasks of the forgetting check, and the directory of their YAMLs when they are ours."""
    forgetting = params.evaluate.forgetting
    if forgetting.tasks:
        if forgetting.include_path:
            return list(forgetting.tasks), Path(forgetting.include_path).resolve()
        shipped = [SHIPPED_TASKS / t for t in forgetting.tasks if (SHIPPED_TASKS / t).is_dir()]
        return list(forgetting.tasks), shipped[0] if shipped else None
    if not base_is_built:
        raise ConfigError(
            "evaluate.forgetting.tasks is not set, and the general suite of the built model does not apply "
            f"to {params.base_model.source}",
            hint="set evaluate.forgetting.tasks: [loraops_instruct] with api: chat for an instruct model "
            "offline, or standard lm-eval tasks (e.g. [arc_easy, hellaswag], limit: 200) with internet",
        )
    from loraops.basemodel.skills import general_suite

    include = work_dir / "lm_eval_tasks"
    write_general_tasks(
        general_suite(params.base_model.recipe, params.evaluate.general_per_skill),
        include,
        max_tokens=params.evaluate.max_tokens,
    )
    return [GROUP], include


def cache_key(base_model: str, tasks: list[str], include: Path | None, limit: int | None) -> str:
    """Names what a base model's lm-eval scores depend on: the model, the tasks and their files, the limit."""
    digest = hashlib.sha256(json.dumps([base_model, sorted(tasks), limit]).encode())
    if include is not None:
        for path in sorted(p for p in include.rglob("*") if p.is_file()):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def evaluate_version(
    *,
    server: VllmClient,
    client: Completer,
    registry: Registry,
    params: Params,
    version: ModelVersionInfo,
    files: dict[str, Path],
    base_model: str,
    work_dir: Path,
    cache_dir: Path | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> EvalReport:
    """Candidate vs base, RAG and the champion on the test split; forgetting with lm-eval.

    ``cache_dir`` keeps the base model's general scores, keyed by the base model, the tasks (their
    files' content) and the limit, so that retrains do not measure the same base model again."""
    model = params.registry.model_name
    base_name = params.base_model.name()
    champion = registry.champion()
    if champion is not None and champion.version == version.version:
        champion = None  # re-evaluating the champion itself: no comparison with itself
    downloads = work_dir / "adapters"
    models: dict[str, str] = {"base": base_name}
    if params.evaluate.rag_k > 0:
        models["rag"] = base_name
    tasks, include = general_tasks(params, params.base_model.source == "build", work_dir)
    base_dir = Path(base_model)
    tokenizer = str(base_dir) if base_dir.is_dir() else None
    completions = f"{server.base_url}/v1/completions"

    def download(v: str) -> Callable[[], Path]:
        return lambda: registry.download_adapter(v, downloads / f"v{v}")

    with contextlib.ExitStack() as stack:
        models["candidate"] = stack.enter_context(
            served(server, candidate_name(model, version.version), download(version.version))
        )
        if champion is not None:
            models["champion"] = stack.enter_context(
                served(server, version_name(model, champion.version), download(champion.version))
            )
        task = evaluate_task(
            client,
            models=models,
            test_records=read_jsonl(files["test"]),
            train_records=read_jsonl(files["train"]),
            params=params.evaluate,
            on_progress=on_progress,
        )
        general: dict[str, dict[str, list[float]]] = {}
        # The base model's general scores change only with the base model and the tasks: measured once.
        forgetting = params.evaluate.forgetting
        base_key = cache_key(base_model, [*tasks, f"api={forgetting.api}"], include, forgetting.limit)
        cached = cache_dir / f"base-{base_key}.json" if cache_dir is not None else None
        if cached is not None and cached.is_file():
            general["base"] = json.loads(cached.read_text("utf-8"))
            if on_progress is not None:
                on_progress(f"general skills [base: {base_name}]: measured before ({cached.name})")
        for role in ("base", "candidate"):
            if role in general:
                continue
            if on_progress is not None:
                on_progress(f"general skills [{role}: {models[role]}] with lm-eval ({', '.join(tasks)})")
            general[role] = run_lm_eval(
                model=models[role],
                completions_url=completions,
                tasks=tasks,
                out_dir=work_dir / "lm_eval" / role,
                include_path=include,
                tokenizer=tokenizer,
                limit=forgetting.limit,
                concurrency=params.evaluate.concurrency,
                api_key=server.api_key,
                api=forgetting.api,
            )
        if cached is not None and not cached.is_file():
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(general["base"]), encoding="utf-8")
    return EvalReport(
        task,
        GeneralEvaluation(general["base"], general["candidate"], task.bootstrap),
        champion.version if champion is not None else None,
        params.evaluate.samples_in_report,
    )


def summary_line(report: EvalReport) -> str:
    """One log line: each role's task score with its interval, and the general drop."""
    parts = [f"{role} {report.task.estimate(role)}" for role in report.roles]
    return f"task score: {', '.join(parts)}; general drop {report.general.drop()}"


def load_report(data: dict[str, Any]) -> EvalReport:
    return EvalReport.from_json(data)


def canary_from_evaluation(report: EvalReport, test_file: Path, params: EvalParams) -> Canary:
    """The serving canary of the evaluated candidate: the first test request it answered in the expected
    format (JSON Schema / regex, else valid JSON for json_fields), with that format to check again."""
    records = read_jsonl(test_file)
    if params.max_test_examples is not None:
        records = records[: params.max_test_examples]
    fmt = FormatCheck(params.format.json_schema, params.format.regex) if params.format else None
    candidate = report.task.runs["candidate"]
    good = [s.get("format", s.get("json_valid", 1.0)) >= 1.0 for s in candidate.scores]
    return pick_canary([request_of(r) for r in records], good, fmt, candidate.completion_tokens)
