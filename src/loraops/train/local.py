"""The local launcher: Axolotl in this machine's trainer environment, resumable from its checkpoints.

Checkpoints live in ``<work_root>/<job fingerprint>/output``: a rerun of the same job (same preset,
settings, base model and data) after a kill finds them and Axolotl resumes from the last complete one;
a changed job gets a directory of its own. The directory is removed once the adapter is collected, so
the next run of a finished job trains anew.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from loraops.envs import PythonEnv
from loraops.train.artifacts import (
    checkpoint_progress,
    collect_adapter,
    drop_incomplete_checkpoints,
    last_checkpoint,
)
from loraops.train.axolotl_runner import run_axolotl_train
from loraops.train.cost import local_cost
from loraops.train.job import TrainJob
from loraops.train.render import parse_metrics_line, write_config
from loraops.train.result import TrainResult

RESUME_MARKER = "[loraops] resuming from"


def resume_line(step: int, max_steps: int | None, name: str) -> str:
    """The line both launchers print when a run continues from a checkpoint (parsed back by the flow)."""
    of = f" of {max_steps}" if max_steps else ""
    return f"{RESUME_MARKER} {name} (step {step}{of})"


def parse_resume_line(line: str) -> int | None:
    if RESUME_MARKER not in line or "(step " not in line:
        return None
    digits = line.split("(step ", 1)[1].split(")", 1)[0].split(" ", 1)[0]
    return int(digits) if digits.isdigit() else None


class LocalLauncher:
    """Trains on this machine; a killed run's rerun resumes from its last checkpoint."""

    name = "local"

    def __init__(self, work_root: Path, *, env: PythonEnv | None = None) -> None:
        self.work_root = work_root
        self.env = env

    def work_dir(self, job: TrainJob) -> Path:
        return self.work_root / job.fingerprint()

    def train(
        self, job: TrainJob, run_dir: Path, *, on_line: Callable[[str], None] | None = None
    ) -> TrainResult:
        params = job.params
        started = time.monotonic()
        work = self.work_dir(job)
        output_dir = work / "output"
        drop_incomplete_checkpoints(output_dir)
        resume = last_checkpoint(output_dir)
        cfg = job.render(output_dir=output_dir, prepared_path=work / "prepared-dataset")
        config_path = write_config(cfg, run_dir / "axolotl.yaml")
        log_file = run_dir / "axolotl.log"
        history: list[dict[str, float]] = []

        def collect(line: str) -> None:
            metrics = parse_metrics_line(line)
            if metrics is not None:
                history.append(metrics)
            if on_line is not None:
                on_line(line)

        if resume is not None:
            step, max_steps = checkpoint_progress(resume)
            collect(resume_line(step, max_steps, resume.path.name))
        render_s = time.monotonic() - started
        run_axolotl_train(
            config_path,
            log_file=log_file,
            launcher=params.axolotl_launcher,
            env=self.env,
            on_line=collect,
            cpu_threads=params.cpu_threads if params.device == "cpu" else None,
        )
        process_s = time.monotonic() - started - render_s
        adapter_dir = collect_adapter(output_dir, run_dir / "adapter", log_hint=f"see {log_file}")
        shutil.rmtree(work, ignore_errors=True)
        duration = time.monotonic() - started
        return TrainResult(
            adapter_dir=adapter_dir,
            config_path=config_path,
            log_file=log_file,
            duration_s=duration,
            history=history,
            launcher=self.name,
            cost=local_cost(duration, params.local_usd_per_hour),
            resumed_from_step=resume.step if resume is not None else None,
            details={
                "device": params.device,
                "instance_type": "local",
                "render_s": render_s,
                "process_s": process_s,
            },
        )
