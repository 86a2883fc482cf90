"""The outcome of a training stage, whichever launcher ran it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraops.train.cost import RunCost


@dataclass
class TrainResult:
    """The adapter directory, the rendered config, the log, the metrics and what the run cost."""

    adapter_dir: Path
    config_path: Path
    log_file: Path
    duration_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    launcher: str = "local"
    cost: RunCost | None = None
    resumed_from_step: int | None = None
    details: dict[str, Any] = field(default_factory=dict)  # job name, instance type, durations, ...

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
        for key, value in self.details.items():
            if key.endswith("_s") and isinstance(value, int | float):
                out[f"train.{key}"] = float(value)
        if self.cost is not None:
            out.update(self.cost.as_metrics())
        return out

    def run_tags(self) -> dict[str, str]:
        """Tags for the MLflow run: where it trained and what it cost."""
        tags = {"train.launcher": self.launcher}
        for key in ("instance_type", "instance_count", "job_name", "job_arn", "spot", "device"):
            if key in self.details:
                tags[f"train.{key}"] = str(self.details[key])
        if self.resumed_from_step is not None:
            tags["train.resumed_from_step"] = str(self.resumed_from_step)
        if self.cost is not None:
            tags["train.cost"] = self.cost.summary()
        return tags

    def overfitting_warning(self) -> str | None:
        """Val loss rising at the end while training loss falls is the classic overfitting sign."""
        evals = [h["eval_loss"] for h in self.history if "eval_loss" in h]
        if len(evals) >= 2 and evals[-1] > min(evals) * 1.05:
            return (
                f"validation loss rose from {min(evals):.3f} to {evals[-1]:.3f}: the adapter may be "
                "overfitting; consider fewer epochs or more data"
            )
        return None
