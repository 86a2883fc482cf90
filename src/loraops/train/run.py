"""The training stage: render the Axolotl config, run Axolotl, collect the adapter and its metrics."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraops.errors import StageError
from loraops.train.axolotl_runner import run_axolotl_train
from loraops.train.params import TrainParams
from loraops.train.render import load_preset, parse_metrics_line, render_axolotl_config, write_config

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class TrainResult:
    adapter_dir: Path
    config_path: Path
    log_file: Path
    duration_s: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def final_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        losses = [h["loss"] for h in self.history if "loss" in h]
        evals = [h["eval_loss"] for h in self.history if "eval_loss" in h]
        if losses:
            out["train.loss.final"] = losses[-1]
        if evals:
            out["train.eval_loss.final"] = evals[-1]
            out["train.eval_loss.best"] = min(evals)
        for h in self.history:
            if "train_runtime" in h:
                out["train.runtime_s"] = h["train_runtime"]
        out["train.wall_s"] = self.duration_s
        return out

    def overfitting_warning(self) -> str | None:
        """Val loss rising at the end while training loss falls is the classic overfitting sign."""
        evals = [h["eval_loss"] for h in self.history if "eval_loss" in h]
        if len(evals) >= 2 and evals[-1] > min(evals) * 1.05:
            return (
                f"validation loss rose from {min(evals):.3f} to {evals[-1]:.3f}: the adapter may be "
                "overfitting; consider fewer epochs or more data"
            )
        return None


def replay_sample(
    records: Sequence[dict[str, Any]], fraction: float, train_count: int, seed: int
) -> list[dict[str, Any]]:
    """A seeded sample of general examples, ``fraction`` of the training split in size."""
    wanted = min(len(records), round(fraction * train_count))
    return random.Random(seed).sample(list(records), wanted) if wanted > 0 else []


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
) -> TrainResult:
    preset = load_preset(workspace_root / params.axolotl_config)
    output_dir = run_dir / "axolotl-output"
    replay_file = None
    if replay_records:
        replay_file = run_dir / "replay.jsonl"
        replay_file.parent.mkdir(parents=True, exist_ok=True)
        with replay_file.open("w", encoding="utf-8") as fh:
            for r in replay_records:
                record = {"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}
                fh.write(json.dumps(record) + "\n")
    cfg = render_axolotl_config(
        preset,
        params,
        base_model=base_model,
        train_file=train_file,
        val_file=val_file,
        output_dir=output_dir,
        replay_file=replay_file,
    )
    config_path = write_config(cfg, run_dir / "axolotl.yaml")
    log_file = run_dir / "axolotl.log"
    history: list[dict[str, float]] = []

    def collect(line: str) -> None:
        metrics = parse_metrics_line(line)
        if metrics is not None:
            history.append(metrics)
        if on_line is not None:
            on_line(line)

    started = time.monotonic()
    run_axolotl_train(
        config_path,
        log_file=log_file,
        launcher=params.launcher,
        on_line=collect,
        cpu_threads=params.cpu_threads if params.device == "cpu" else None,
    )
    duration = time.monotonic() - started
    adapter_dir = run_dir / "adapter"
    if params.adapter == "full":
        if not (output_dir / "config.json").exists():
            raise StageError(f"Axolotl finished but wrote no model to {output_dir}", hint=f"see {log_file}")
        shutil.copytree(output_dir, adapter_dir, ignore=shutil.ignore_patterns("checkpoint-*"))
    else:
        missing = [f for f in ADAPTER_FILES if not (output_dir / f).exists()]
        if missing:
            raise StageError(
                f"Axolotl finished but the adapter is incomplete (missing {', '.join(missing)})",
                hint=f"see {log_file}",
            )
        adapter_dir.mkdir(parents=True, exist_ok=True)
        for name in ADAPTER_FILES:
            shutil.copy2(output_dir / name, adapter_dir / name)
        readme = output_dir / "README.md"
        if readme.exists():
            shutil.copy2(readme, adapter_dir / "README.md")
    return TrainResult(adapter_dir, config_path, log_file, duration, history)
