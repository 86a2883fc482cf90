"""The program a loraops SageMaker training job runs inside its container (``train`` in the image).

SageMaker's container contract, which this follows:

    /opt/ml/input/config/hyperparameters.json   the job's HyperParameters (string values)
    /opt/ml/input/config/resourceconfig.json    {"current_host": "algo-1", "hosts": [...]}
    /opt/ml/input/data/<channel>/               each input channel, copied from S3
    /opt/ml/checkpoints/                        synced to CheckpointConfig.S3Uri while the job runs and
                                                restored from it when a spot job restarts
    /opt/ml/model/                              uploaded as model.tar.gz when the job ends
    /opt/ml/output/failure                      its text becomes the job's FailureReason

Channels of a loraops job: ``config`` (job.json: the TrainJob spec; replay.jsonl), ``train`` and
``val`` (the prepared files, read from the DVC remote: one object each) and optionally ``base_model``.
Axolotl's output_dir is the checkpoint directory, so every checkpoint reaches S3 and a restarted job
resumes from the last complete one. The root is ``$LORAOPS_SM_ROOT`` (default /opt/ml), so the same
program runs for real in a temporary directory laid out like /opt/ml (the tests, the emulator).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraops.envs import PythonEnv
from loraops.errors import LoraopsError
from loraops.train.artifacts import (
    checkpoint_progress,
    collect_adapter,
    drop_incomplete_checkpoints,
    last_checkpoint,
)
from loraops.train.axolotl_runner import run_axolotl_train
from loraops.train.job import TrainJob
from loraops.train.local import resume_line
from loraops.train.render import write_config

DEFAULT_ROOT = "/opt/ml"
CONFIG_CHANNEL = "config"
SPEC_FILE = "job.json"
MAIN_PROCESS_PORT = 29500


@dataclass(frozen=True)
class ContainerPaths:
    """The /opt/ml layout under ``root``."""

    root: Path

    @classmethod
    def from_env(cls) -> ContainerPaths:
        return cls(Path(os.environ.get("LORAOPS_SM_ROOT", DEFAULT_ROOT)))

    @property
    def hyperparameters(self) -> Path:
        return self.root / "input" / "config" / "hyperparameters.json"

    @property
    def resource_config(self) -> Path:
        return self.root / "input" / "config" / "resourceconfig.json"

    def channel(self, name: str) -> Path:
        return Path(os.environ.get(f"SM_CHANNEL_{name.upper()}", self.root / "input" / "data" / name))

    @property
    def model(self) -> Path:
        return Path(os.environ.get("SM_MODEL_DIR", self.root / "model"))

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def failure(self) -> Path:
        return self.root / "output" / "failure"


def channel_file(paths: ContainerPaths, channel: str, preferred: str | None = None) -> Path | None:
    """The one data file of a channel. A channel read from the DVC remote holds a single object named
    by its content hash, so any single file is it; ``preferred`` wins when several are there."""
    folder = paths.channel(channel)
    if not folder.is_dir():
        return None
    if preferred and (folder / preferred).is_file():
        return folder / preferred
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if len(files) != 1:
        raise LoraopsError(
            f"channel {channel!r} at {folder} holds {len(files)} files, expected one",
            hint="point the channel's S3Uri at a single object",
        )
    return files[0]


def hosts(paths: ContainerPaths) -> tuple[str, list[str]]:
    """(this host, all hosts) from resourceconfig.json; one host when it is absent."""
    if not paths.resource_config.is_file():
        return "algo-1", ["algo-1"]
    data = json.loads(paths.resource_config.read_text("utf-8"))
    return str(data.get("current_host", "algo-1")), [str(h) for h in data.get("hosts", ["algo-1"])]


def gpus_per_host() -> int:
    if os.environ.get("SM_NUM_GPUS", "").isdigit():
        return int(os.environ["SM_NUM_GPUS"])
    found = shutil.which("nvidia-smi")
    if not found:
        return 0
    import subprocess

    listing = subprocess.run([found, "-L"], capture_output=True, text=True, check=False).stdout
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def launcher_args(current: str, all_hosts: list[str], gpus: int) -> tuple[str, list[str]]:
    """Axolotl's launcher and its accelerate arguments for this host (multi-GPU / multi-node)."""
    processes = max(gpus, 1) * len(all_hosts)
    if processes == 1:
        return "python", []
    return "accelerate", [
        "--num_processes",
        str(processes),
        "--num_machines",
        str(len(all_hosts)),
        "--machine_rank",
        str(all_hosts.index(current)),
        "--main_process_ip",
        all_hosts[0],
        "--main_process_port",
        str(MAIN_PROCESS_PORT),
    ]


def hyperparameters(paths: ContainerPaths) -> dict[str, str]:
    if not paths.hyperparameters.is_file():
        return {}
    data = json.loads(paths.hyperparameters.read_text("utf-8"))
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def load_job(paths: ContainerPaths) -> tuple[TrainJob, dict[str, Any]]:
    spec_file = paths.channel(CONFIG_CHANNEL) / hyperparameters(paths).get("loraops_spec", SPEC_FILE)
    if not spec_file.is_file():
        raise LoraopsError(f"no {SPEC_FILE} in the {CONFIG_CHANNEL!r} channel ({spec_file})")
    spec = json.loads(spec_file.read_text("utf-8"))
    names: dict[str, str] = spec.get("files", {})
    files: dict[str, Path] = {}
    for name in ("train", "val"):
        if name in names:
            found = channel_file(paths, name, names[name])
            if found is None:
                raise LoraopsError(f"channel {name!r} is missing ({paths.channel(name)})")
            files[name] = found
    if "replay" in names:
        files["replay"] = paths.channel(CONFIG_CHANNEL) / names["replay"]
    base_dir = paths.channel("base_model")
    base = str(base_dir) if base_dir.is_dir() and any(base_dir.iterdir()) else None
    return TrainJob.from_spec(spec, files, base_model=base), spec


def run(paths: ContainerPaths) -> None:
    """Train the job of the config channel; leave the adapter in the model directory."""
    job, spec = load_job(paths)
    current, all_hosts = hosts(paths)
    output_dir = paths.checkpoints
    output_dir.mkdir(parents=True, exist_ok=True)
    removed = drop_incomplete_checkpoints(output_dir)
    for path in removed:
        print(f"[loraops] removed the incomplete {path.name}", flush=True)
    resume = last_checkpoint(output_dir)
    if resume is not None:
        step, max_steps = checkpoint_progress(resume)
        print(resume_line(step, max_steps, resume.path.name), flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="loraops-job-"))
    cfg = job.render(output_dir=output_dir, prepared_path=scratch / "prepared-dataset")
    config_path = write_config(cfg, scratch / "axolotl.yaml")
    launcher, extra = launcher_args(current, all_hosts, gpus_per_host())
    print(
        f"[loraops] job {spec.get('fingerprint', '?')} on {current} of {len(all_hosts)} host(s), {launcher}",
        flush=True,
    )
    run_axolotl_train(
        config_path,
        log_file=scratch / "axolotl.log",
        launcher=launcher,
        launcher_extra=extra,
        env=PythonEnv("container", Path(sys.prefix)),
        on_line=lambda line: print(line, flush=True),
        cpu_threads=job.params.cpu_threads if job.params.device == "cpu" else None,
    )
    if current != all_hosts[0]:
        return  # the leader writes the model
    paths.model.mkdir(parents=True, exist_ok=True)
    collect_adapter(output_dir, paths.model, log_hint="see the job's CloudWatch log")
    shutil.copy2(config_path, paths.model / "axolotl.yaml")
    print(f"[loraops] adapter written to {paths.model}", flush=True)


def main() -> int:
    paths = ContainerPaths.from_env()
    try:
        run(paths)
    except (LoraopsError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:1000]
        paths.failure.parent.mkdir(parents=True, exist_ok=True)
        paths.failure.write_text(reason, encoding="utf-8")
        print(f"[loraops] failed: {reason}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
