"""The commented params.yaml of a new task's workspace (pure): the template workspace's settings (the stack's
base model, training and gate), the task's own names and data facts, and where the stack runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from loraops.scaffold.infer import TaskShape


@dataclass(frozen=True)
class StackLink:
    """A running stack a new workspace joins: its URLs and the serving secrets' files."""

    workspace: str
    tracking_uri: str
    prefect_api_url: str
    sync_url: str
    serving_host: str
    serving_port: int
    api_key_file: str
    admin_token_file: str


@dataclass(frozen=True)
class OwnPorts:
    """Free ports for a workspace that runs its own stack."""

    serving: int
    mlflow: int
    prefect: int
    sync: int
    worker: int


def _block(comment: str, section: str, values: Any) -> str:
    body = yaml.safe_dump({section: values}, sort_keys=False, default_flow_style=False, width=100)
    lines = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    return f"{lines}{body}\n"


def scaled_epochs(epochs: int, template_examples: int, examples: int) -> int:
    """Epochs for ``examples`` that keep about the optimizer steps the template's settings were chosen
    for (``epochs`` over ``template_examples``), between 1 and ``epochs``."""
    return max(1, min(epochs, round(epochs * template_examples / max(examples, 1))))


def joining_cron(cron: str | None, taken: Sequence[str] = ()) -> str | None:
    """The cron of a task joining a stack whose task runs at ``cron``: the first hour after it that no
    cron in ``taken`` (the stack's other deployments) uses, so tasks train one after the other on the
    stack's cores. A cron whose hour is not a plain number is kept as it is."""
    if not cron:
        return cron
    fields = cron.split()
    if len(fields) != 5 or not fields[1].isdigit():
        return cron
    busy = {int(f[1]) for f in (c.split() for c in taken) if len(f) == 5 and f[1].isdigit()}
    hour = int(fields[1])
    for step in range(1, 25):
        fields[1] = str((hour + step) % 24)
        if int(fields[1]) not in busy:
            break
    return " ".join(fields)


def task_params_text(
    *,
    model: str,
    raw: str,
    shape: TaskShape,
    max_tokens: int,
    template: dict[str, Any],
    link: StackLink | None,
    ports: OwnPorts | None,
    created: str,
    taken_crons: Sequence[str] = (),
    template_examples: int | None = None,
) -> str:
    """params.yaml for task ``model``: ``template`` (a workspace's params, as loaded from YAML) gives the
    base model, training, evaluation and gate settings; the task's data gives the rest."""
    out = [
        f"# loraops parameters of the task {model!r}, written by `loraops init` on {created}.\n"
        "# Every key is validated: a typo or a bad value stops a run with file:line and the key. Unset keys\n"
        "# take the defaults documented in the schema (src/loraops/config.py and each stage's params.py).\n\n"
    ]
    source = f"the workspace {link.workspace}" if link else "loraops' default workspace"
    if "base_model" in template:
        out.append(
            _block(
                f"--- base model: the one of {source}.\n"
                "An adapter only runs on the base model it was trained on: keep it as the stack serves it.",
                "base_model",
                template["base_model"],
            )
        )
    old_data = template.get("data") or {}
    data: dict[str, Any] = {"raw": raw, "prepared_dir": "data/prepared", "format": shape.format}
    data["task"] = shape.size_class
    if "split" in old_data:
        data["split"] = old_data["split"]
    data["remote"] = {"name": "local", "url": ".loraops/dvc-remote"}
    out.append(
        _block(
            f"--- data: {shape.examples} {shape.format} examples in {raw} (read by `loraops init`).\n"
            "data.task sets the size guidance of the quality report (style 100-500, domain 1k-10k,\n"
            "complex 10k-100k examples). remote.url: a directory, or s3://bucket/prefix.",
            "data",
            data,
        )
    )
    if "train" in template:
        train = dict(template["train"])
        note = ""
        if template_examples and "num_epochs" in train:
            epochs = scaled_epochs(int(train["num_epochs"]), template_examples, shape.examples)
            if epochs != train["num_epochs"]:
                note = (
                    f"\nnum_epochs {epochs} instead of its {train['num_epochs']}: {shape.examples} examples "
                    f"against its {template_examples}, so about as many steps (more over-trains: forgetting)."
                )
                train["num_epochs"] = epochs
        out.append(
            _block(
                f"--- training: the settings of {source} (rendered on the Axolotl preset).{note}",
                "train",
                train,
            )
        )
    out.append(
        _block(
            "--- registry: the stable name applications call, and the MLflow experiment of its runs.",
            "registry",
            {"model_name": model, "champion_alias": "champion", "experiment": model},
        )
    )
    evaluate = {
        k: v for k, v in (template.get("evaluate") or {}).items() if k not in ("format", "task_metric")
    }
    evaluate = {"task_metric": shape.task_metric, **evaluate, "max_tokens": max_tokens}
    if shape.json_schema is not None:
        evaluate["format"] = {"json_schema": shape.json_schema}
    out.append(
        _block(
            "--- evaluation: base, RAG, champion and candidate on the same test examples.\n"
            + (
                "Every answer in the data is a JSON object: json_fields scores the fields, and this schema\n"
                "(read from the answers: enums for categories) is the format check. Edit it if it is too\n"
                "narrow."
                if shape.json_schema is not None
                else "The answers are not JSON: exact_match compares them whole (trimmed)."
            )
            + f"\nmax_tokens fits the longest answer ({len(shape.longest_answer)} characters), with room.",
            "evaluate",
            evaluate,
        )
    )
    for section, comment in (
        ("gate", f"--- the promotion gate: the thresholds of {source}."),
        ("cost", "--- cost, for the break-even against RAG in the report."),
        ("notify", "--- notices of failed or refused runs."),
    ):
        if section in template:
            out.append(_block(comment, section, template[section]))
    serving = dict(template.get("serving") or {})
    if link is not None:
        serving.update(
            host=link.serving_host,
            port=link.serving_port,
            api_key_file=link.api_key_file,
            admin_token_file=link.admin_token_file,
        )
        out.append(
            _block(
                f"--- serving: the vLLM of {link.workspace}, which serves this task too (and its secrets).",
                "serving",
                serving,
            )
        )
        out.append(
            _block(
                f"--- the stack of {link.workspace}: its MLflow, Prefect and sync hook. `loraops up` here\n"
                "registers this task's deployment there and starts nothing.",
                "stack",
                {
                    "tracking_uri": link.tracking_uri,
                    "prefect_api_url": link.prefect_api_url,
                    "sync_url": link.sync_url,
                },
            )
        )
    else:
        assert ports is not None
        serving["port"] = ports.serving
        out.append(_block("--- serving: this workspace's own vLLM (a free port).", "serving", serving))
        out.append(
            _block(
                "--- this workspace's own stack (free ports, chosen by `loraops init`).",
                "stack",
                {
                    "mlflow_port": ports.mlflow,
                    "prefect_port": ports.prefect,
                    "sync_port": ports.sync,
                    "worker_port": ports.worker,
                },
            )
        )
    schedule = dict(template.get("schedule") or {})
    schedule.pop("deployment", None)
    if link is not None:
        schedule["cron"] = joining_cron(schedule.get("cron", "0 3 * * *"), taken_crons)
    out.append(
        _block(
            f"--- unattended retraining: the deployment retrain/{model} on the stack's worker"
            + (", at an hour no other task of the stack uses." if link is not None else "."),
            "schedule",
            schedule,
        )
    )
    return "".join(out)
