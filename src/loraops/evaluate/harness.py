"""Forgetting measured with lm-evaluation-harness, against the same vLLM server that serves the adapters.

The embedded base model's general suite (five digit skills, ``basemodel.skills.general_suite``) is a
group of lm-eval tasks, ``loraops_general``, one per skill: local JSONL files and task YAMLs
(``generate_until``, greedy, exact match), so it runs offline. ``write_general_tasks`` writes them;
the default recipe's copy ships in ``lm_eval_tasks/`` (a test keeps it equal to what the recipe
generates). For a real base model the tasks are a params change: ``evaluate.forgetting.tasks: [arc_easy,
hellaswag]`` with ``limit``, run the same way (their datasets must be in the local Hugging Face cache).

lm-eval runs in the trainer environment (it comes with Axolotl) as ``lm_eval run --model
local-completions``: the OpenAI-compatible completions endpoint, by served model name, so the base model
and the candidate adapter are measured through the server applications use. ``--log_samples`` keeps
each example's result, which the paired bootstrap of the drop needs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from loraops.envs import require, run_streaming, trainer_env
from loraops.errors import StageError
from loraops.prompts import alpaca_prompt

GROUP = "loraops_general"
Api = Literal["completions", "chat"]
SHIPPED_TASKS = Path(__file__).parent / "lm_eval_tasks"
# The metric lm-eval reports per sample for each kind of task (first found wins).
SAMPLE_METRICS = ("exact_match", "acc_norm", "acc")


def task_name(skill: str) -> str:
    return f"{GROUP}_{skill}"


def write_general_tasks(records: Sequence[dict[str, Any]], dest: Path, *, max_tokens: int = 48) -> list[str]:
    """One lm-eval task per skill of the general suite, and their group; returns the task names."""
    by_skill: dict[str, list[dict[str, str]]] = {}
    for r in records:
        by_skill.setdefault(r["skill"], []).append(
            {"prompt": alpaca_prompt(r["instruction"], r.get("input") or ""), "output": r["output"]}
        )
    (dest / "data").mkdir(parents=True, exist_ok=True)
    names = []
    for skill, rows in by_skill.items():
        name = task_name(skill)
        data = dest / "data" / f"{skill}.jsonl"
        data.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), encoding="utf-8")
        task = {
            "task": name,
            "tag": [GROUP],
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": f"data/{skill}.jsonl"}},
            "test_split": "test",
            "output_type": "generate_until",
            "doc_to_text": "{{prompt}}",
            "doc_to_target": "{{output}}",
            "target_delimiter": "",
            "generation_kwargs": {
                "until": ["\n"],
                "max_gen_toks": max_tokens,
                "do_sample": False,
                "temperature": 0.0,
            },
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1, "description": f"loraops general suite, skill {skill}"},
        }
        (dest / f"{skill}.yaml").write_text(yaml.safe_dump(task, sort_keys=False), encoding="utf-8")
        names.append(name)
    group = {
        "group": GROUP,
        "task": names,
        "aggregate_metric_list": [{"metric": "exact_match", "aggregation": "mean", "weight_by_size": True}],
        "metadata": {"version": 1},
    }
    (dest / f"_{GROUP}.yaml").write_text(yaml.safe_dump(group, sort_keys=False), encoding="utf-8")
    return names


def read_samples(out_dir: Path) -> dict[str, list[float]]:
    """Per task, each example's score (in doc order) from lm-eval's ``samples_<task>_*.jsonl`` files."""
    per_task: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(out_dir.rglob("samples_*.jsonl")):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        for line in path.read_text("utf-8").splitlines():
            if not line.strip():
                continue
            sample = json.loads(line)
            metric = next((m for m in SAMPLE_METRICS if m in sample), None)
            if metric is None:
                continue
            per_task.setdefault(task, []).append((int(sample["doc_id"]), float(sample[metric])))
    return {task: [v for _, v in sorted(rows)] for task, rows in sorted(per_task.items())}


def run_lm_eval(
    *,
    model: str,
    completions_url: str,
    tasks: Sequence[str],
    out_dir: Path,
    include_path: Path | None = None,
    tokenizer: str | None = None,
    limit: int | None = None,
    concurrency: int = 8,
    api_key: str | None = None,
    api: Api = "completions",
    on_line: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Evaluate one served model on ``tasks`` with lm-eval; per task, each example's score.

    ``completions_url`` is the server's ``/v1/completions``. ``api="chat"`` asks through
    ``/v1/chat/completions`` instead, each question as a user turn that the server wraps in the model's
    chat template (how an instruct model is used). ``api_key`` is the server's (lm-eval sends
    ``OPENAI_API_KEY`` as bearer token). ``out_dir`` is emptied first: lm-eval writes timestamped files
    beside an earlier run's, and a re-evaluation of the same version would read both."""
    trainer = require(trainer_env())
    chat_url = completions_url.removesuffix("/completions") + "/chat/completions"
    url = chat_url if api == "chat" else completions_url
    model_args = [
        f"model={model}",
        f"base_url={url}",
        f"num_concurrent={concurrency}",
        "max_retries=3",
        "tokenized_requests=False",
    ]
    if tokenizer and api == "completions":
        model_args += ["tokenizer_backend=huggingface", f"tokenizer={tokenizer}"]
    cmd: list[str | Path] = [
        trainer.python,
        "-m",
        "lm_eval",
        "run",
        "--model",
        "local-chat-completions" if api == "chat" else "local-completions",
        "--model_args",
        ",".join(model_args),
        "--tasks",
        *tasks,
        "--output_path",
        out_dir,
        "--log_samples",
    ]
    if api == "chat":
        cmd.append("--apply_chat_template")
    if include_path is not None:
        cmd += ["--include_path", include_path]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    run_streaming(
        cmd,
        env=trainer.environ({"OPENAI_API_KEY": api_key or "loraops"}),
        cwd=include_path,
        log_file=out_dir / "lm_eval.log",
        on_line=on_line,
        what=f"lm-eval on {model}",
    )
    found = read_samples(out_dir)
    missing = [t for t in tasks if t not in found and not any(k.startswith(f"{t}_") for k in found)]
    if missing:
        raise StageError(
            f"lm-eval wrote no per-example results for {', '.join(missing)}",
            hint=f"see {out_dir / 'lm_eval.log'}",
        )
    return found
