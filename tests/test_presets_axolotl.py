"""Every shipped preset, rendered with default params, passes Axolotl's own config validation.

Runs ``loraops.train.axolotl_check`` in the trainer environment (Axolotl 0.19.0). CUDA presets are
validated with a GPU's capabilities (bf16, tf32), since Axolotl lets a CPU host check them that way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraops.envs import require, run_streaming, trainer_env
from loraops.errors import StageError
from loraops.train.params import TrainParams
from loraops.train.render import load_preset, render_axolotl_config, write_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p for p in (ROOT / "axolotl_configs").glob("*.yaml") if not p.name.startswith("base_"))


def _axolotl_check(cpu: list[Path], gpu: list[Path]) -> tuple[dict[str, str], bool]:
    trainer = require(trainer_env())
    lines: list[str] = []
    args: list[str | Path] = [trainer.python, "-m", "loraops.train.axolotl_check", *cpu]
    for path in gpu:
        args += ["--gpu-config", path]
    failed = False
    try:
        run_streaming(args, env=trainer.environ(), on_line=lines.append, what="axolotl_check")
    except StageError:
        failed = True
    return json.loads(next(line for line in reversed(lines) if line.startswith("{"))), failed


def test_shipped_presets_pass_axolotls_validation_and_a_broken_one_does_not(tmp_path: Path) -> None:
    cpu, gpu = [], []
    for preset in PRESETS:
        device = "cuda" if "gpu" in preset.name else "cpu"
        cfg = render_axolotl_config(
            load_preset(preset),
            TrainParams(device=device, axolotl_config=f"axolotl_configs/{preset.name}"),
            base_model=str(tmp_path / "model"),
            train_file=tmp_path / "train.jsonl",
            val_file=tmp_path / "val.jsonl",
            output_dir=tmp_path / preset.stem / "out",
            data_format="chat" if device == "cuda" else "alpaca",
        )
        (gpu if device == "cuda" else cpu).append(write_config(cfg, tmp_path / f"{preset.stem}.yaml"))
    broken = load_preset(PRESETS[0])
    broken.update(
        adapter="qlora", load_in_4bit=False, base_model="m", datasets=[{"path": "d", "type": "alpaca"}]
    )
    cpu.append(write_config(broken, tmp_path / "broken.yaml"))

    results, failed = _axolotl_check(cpu, gpu)
    assert failed  # the broken config makes the check exit non-zero
    broken_result = results.pop(str(tmp_path / "broken.yaml"))
    assert "load_in_4bit" in broken_result or "qlora" in broken_result.lower(), broken_result
    assert results == {str(p): "ok" for p in cpu[:-1] + gpu}
    assert len(gpu) >= 2 and len(cpu) >= 2  # LoRA + QLoRA on GPU; the tiny CPU preset and the broken one
