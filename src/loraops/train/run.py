"""The training stage: build the job, hand it to the launcher params.yaml chose, return its result."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from loraops.data.records import Format
from loraops.train.job import TrainJob
from loraops.train.local import LocalLauncher
from loraops.train.params import TrainParams
from loraops.train.render import parse_metrics_line
from loraops.train.result import TrainResult
from loraops.workspace import Workspace

__all__ = ["Launcher", "TrainResult", "launcher_for", "replay_sample", "train_adapter", "write_replay"]


class Launcher(Protocol):
    """Runs one training job somewhere and brings its adapter back to ``run_dir/adapter``."""

    name: str

    def train(
        self, job: TrainJob, run_dir: Path, *, on_line: Callable[[str], None] | None = None
    ) -> TrainResult: ...


def replay_sample(
    records: Sequence[dict[str, Any]], fraction: float, train_count: int, seed: int
) -> list[dict[str, Any]]:
    """A seeded sample of general examples, ``fraction`` of the training split in size."""
    wanted = min(len(records), round(fraction * train_count))
    return random.Random(seed).sample(list(records), wanted) if wanted > 0 else []


def write_replay(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """The replay examples as JSONL: conversations as they are (a real model's own answers, rendered with
    its chat template), anything else as alpaca (the built model's general suite)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            if "messages" in r:
                record: dict[str, Any] = {"messages": r["messages"]}
            else:
                record = {"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}
            fh.write(json.dumps(record) + "\n")
    return path


def launcher_for(workspace_root: Path, params: TrainParams, **kwargs: Any) -> Launcher:
    """The launcher `train.launcher` names (``kwargs`` go to the SageMaker launcher: data location)."""
    if params.launcher == "sagemaker":
        from loraops.train.sagemaker import SageMakerLauncher

        assert params.sagemaker is not None  # TrainParams refuses launcher: sagemaker without it
        return SageMakerLauncher(params.sagemaker, Workspace(workspace_root), **kwargs)
    return LocalLauncher(Workspace(workspace_root).runs / "train")


def train_adapter(
    workspace_root: Path,
    params: TrainParams,
    *,
    base_model: str,
    train_file: Path,
    val_file: Path | None,
    run_dir: Path,
    replay_records: Sequence[dict[str, Any]] = (),
    on_line: Callable[[str], None] | None = None,
    on_metrics: Callable[[dict[str, float]], None] | None = None,
    data_format: Format = "alpaca",
    launcher: Launcher | None = None,
) -> TrainResult:
    """Train one adapter on the prepared files with the preset and params; ``on_metrics`` gets each
    logged step's metrics while training runs (for live tracking)."""
    replay_file = write_replay(replay_records, run_dir / "replay.jsonl") if replay_records else None
    job = TrainJob.build(
        workspace_root,
        params,
        base_model=base_model,
        data_format=data_format,
        train_file=train_file,
        val_file=val_file,
        replay_file=replay_file,
    )

    def forward(line: str) -> None:
        if on_metrics is not None and (metrics := parse_metrics_line(line)) is not None:
            on_metrics(metrics)
        if on_line is not None:
            on_line(line)

    chosen = launcher or launcher_for(workspace_root, params)
    run_dir.mkdir(parents=True, exist_ok=True)
    return chosen.train(job, run_dir, on_line=forward)
