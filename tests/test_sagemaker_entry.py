"""The in-job entry point's container contract, without training (test_e2e_sagemaker.py trains)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from loraops.envs import require, trainer_env
from loraops.errors import LoraopsError
from loraops.train.sagemaker_entry import ContainerPaths, channel_file, hosts, launcher_args


def test_one_host_one_gpu_trains_in_process_and_several_use_accelerate() -> None:
    assert launcher_args("algo-1", ["algo-1"], 1) == ("python", [])
    launcher, args = launcher_args("algo-2", ["algo-1", "algo-2"], 8)
    assert launcher == "accelerate"
    assert args == [
        "--num_processes", "16", "--num_machines", "2", "--machine_rank", "1",
        "--main_process_ip", "algo-1", "--main_process_port", "29500",
    ]  # fmt: skip


def test_channels_and_resource_config_are_read_the_sagemaker_way(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    assert hosts(paths) == ("algo-1", ["algo-1"])
    paths.resource_config.parent.mkdir(parents=True)
    paths.resource_config.write_text(json.dumps({"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}))
    assert hosts(paths) == ("algo-2", ["algo-1", "algo-2"])
    train = paths.channel("train")
    train.mkdir(parents=True)
    (train / "2bc6cf1cded49429d09e13066919da").write_text("{}\n")  # a DVC object, named by its hash
    assert channel_file(paths, "train", "train.jsonl") == train / "2bc6cf1cded49429d09e13066919da"
    (train / "other").write_text("{}\n")
    with pytest.raises(LoraopsError, match="holds 2 files, expected one"):
        channel_file(paths, "train", "train.jsonl")
    assert channel_file(paths, "val") is None


def test_a_failing_job_writes_its_reason_where_sagemaker_reads_it(tmp_path: Path) -> None:
    trainer = require(trainer_env())
    (tmp_path / "input" / "data" / "config").mkdir(parents=True)  # no job.json in the config channel
    proc = subprocess.run(
        [trainer.python, "-m", "loraops.train.sagemaker_entry"],
        env=trainer.environ({"LORAOPS_SM_ROOT": str(tmp_path)}),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 1
    reason = (tmp_path / "output" / "failure").read_text()
    assert "no job.json in the 'config' channel" in reason and "\n" not in reason
