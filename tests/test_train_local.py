"""The local launcher on the real tiny base model: a run killed with its parent resumes from its last
checkpoint instead of starting over, records what it cost, and training is reproducible: the killed and
resumed run and an uninterrupted run of the same job give the same adapter, tensor for tensor."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_CACHE
from loraops.basemodel.build import resolve_base_model
from loraops.basemodel.recipe import DEFAULT_RECIPE
from loraops.data.demo import generate_tickets
from loraops.train.params import TrainParams
from loraops.train.run import train_adapter

pytestmark = [pytest.mark.slow, pytest.mark.base_model]
MAX_STEPS = 60
# Checkpoints every 4 steps; the loss of every step is logged, so the steps a run trained can be counted.
OVERRIDES = {
    "max_steps": MAX_STEPS,
    "save_strategy": "steps",
    "save_steps": 4,
    "logging_steps": 1,
    "eval_strategy": "no",
}


def _workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "axolotl_configs", ws / "axolotl_configs")
    records = generate_tickets(80, seed=3)
    (ws / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:72]))
    (ws / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[72:]))
    return ws


def _params() -> TrainParams:
    return TrainParams(num_epochs=1, micro_batch_size=8, learning_rate=0.003, overrides=OVERRIDES)


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    base = resolve_base_model("build", DEFAULT_RECIPE, SHARED_CACHE / "models")
    ws = _workspace(tmp_path)
    first = textwrap.dedent(
        f"""
        from pathlib import Path
        from loraops.train.params import TrainParams
        from loraops.train.run import train_adapter
        params = TrainParams.model_validate({_params().model_dump(mode="json", exclude_unset=True)!r})
        ws = Path({str(ws)!r})
        train_adapter(ws, params, base_model={base!r}, train_file=ws / "train.jsonl",
                      val_file=ws / "val.jsonl", run_dir=ws / "run-1")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", first], env=dict(os.environ), start_new_session=True)
    checkpoints = ws / ".loraops" / "runs" / "train"
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("*/output/checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, "the first run ended before writing a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # the flow run's process dies; Axolotl must die with it
    proc.wait(timeout=30)

    def axolotl_left() -> str:
        found = subprocess.run(
            ["pgrep", "-f", str(ws / "run-1" / "axolotl.yaml")], capture_output=True, text=True
        )
        return found.stdout.strip()

    deadline = time.monotonic() + 60  # the kernel delivers the parent-death signal; exit takes a moment
    while axolotl_left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert axolotl_left() == "", "Axolotl outlived the killed run"

    lines: list[str] = []
    result = train_adapter(
        ws,
        _params().model_copy(update={"local_usd_per_hour": 3.6}),
        base_model=base,
        train_file=ws / "train.jsonl",
        val_file=ws / "val.jsonl",
        run_dir=ws / "run-2",
        on_line=lines.append,
    )
    resumed = result.resumed_from_step
    assert resumed is not None and 4 <= resumed < MAX_STEPS
    assert any("Using auto-resume functionality to resume from checkpoint" in line for line in lines)
    trained_steps = sum(1 for h in result.history if "loss" in h)
    assert trained_steps == MAX_STEPS - resumed  # it went on from the checkpoint, not from step 0
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert not list(checkpoints.glob("*/output")), "a finished job's checkpoints are removed"
    assert result.cost is not None and result.cost.usd == pytest.approx(result.duration_s / 1000, rel=0.01)
    assert result.run_tags()["train.resumed_from_step"] == str(resumed)

    straight = train_adapter(
        ws,
        _params(),
        base_model=base,
        train_file=ws / "train.jsonl",
        val_file=ws / "val.jsonl",
        run_dir=ws / "run-3",
    )
    assert straight.resumed_from_step is None
    resumed_tensors = tensors(result.adapter_dir / "adapter_model.safetensors")
    straight_tensors = tensors(straight.adapter_dir / "adapter_model.safetensors")
    assert len(straight_tensors) > 10 and resumed_tensors.keys() == straight_tensors.keys()
    different = [name for name in straight_tensors if straight_tensors[name] != resumed_tensors[name]]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"


def tensors(path: Path) -> dict[str, bytes]:
    """Each tensor's raw bytes, read with the safetensors layout (header length, JSON header, data)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    data = raw[8 + size :]
    return {
        name: data[spec["data_offsets"][0] : spec["data_offsets"][1]]
        for name, spec in header.items()
        if name != "__metadata__"
    }
